//! Block chaining (QEMU's `tb_add_jump`): a compiled block whose direct
//! jump (`GotoTb`) leads to another compiled block jumps to it without
//! returning to the vCPU loop, through a link the loop records the first
//! time it dispatches that edge.
//!
//! A link is followed only while it is provably what a lookup would find:
//! - the target starts in the same linear page as the source and lies
//!   within one physical page, the source's first: the page's mapping was
//!   checked when the chain was entered, and instructions that change
//!   mappings end their block with a lookup;
//! - same CS base and mode flags (the target's key);
//! - no code was invalidated since the link was made ([`CodePages`]'s
//!   generation, compared by the compiled code);
//! - a budget of chained jumps and the vCPU's pending signals bound how long
//!   interrupts and timers wait.
//!
//! Links and blocks stay allocated for the VM's lifetime (an invalidated
//! block is retired, not freed), so a stale link is never a dangling
//! pointer, only a link whose generation no longer matches.
//!
//! [`CodePages`]: super::mmu::CodePages

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::bytecode::Code;
use super::state::hflags;
use super::tb_cache::TranslationBlock;

/// Chained jumps a compiled chain may take before it returns to the vCPU
/// loop (which then checks timers and interrupts).
pub const CHAIN_BUDGET: u64 = 64;

/// One edge. Read by compiled code: the layout is fixed.
#[repr(C)]
#[derive(Debug)]
pub struct ChainLink {
    /// The target's compiled entry point.
    pub func: u64,
    /// The target block and its code, for the exit that ends the chain.
    pub tb: *const TranslationBlock,
    pub code: *const Code,
    /// `CodePages` generation the link is valid at.
    pub generation: u64,
    /// Guest instructions of the target (statistics).
    pub insns: u64,
}

/// A block's two outgoing edges (`GotoTb` slots 0 and 1).
#[derive(Debug, Default)]
pub struct Links([AtomicPtr<ChainLink>; 2]);

impl Links {
    /// Where slot 0 lives (compiled code reads slot `n` at `+ 8 * n`).
    pub fn address(&self) -> u64 {
        self.0.as_ptr() as u64
    }
}

/// Owns every link and retired block of a VM.
#[derive(Default)]
pub struct ChainStore {
    /// Boxed: compiled code holds their addresses while the vector grows.
    #[allow(clippy::vec_box)]
    links: Mutex<Vec<Box<ChainLink>>>,
    retired: Mutex<Vec<Arc<TranslationBlock>>>,
}

// SAFETY: the raw pointers in the links point to blocks this store (or the
// block cache) keeps alive and immutable; sharing them is sharing `&`s.
unsafe impl Send for ChainStore {}
unsafe impl Sync for ChainStore {}

impl ChainStore {
    /// Keeps an invalidated block allocated (links may still name it).
    pub fn retire(&self, tb: Arc<TranslationBlock>) {
        self.retired.lock().unwrap_or_else(PoisonError::into_inner).push(tb);
    }

    /// Links `from`'s `slot` to `to` at generation `generation`, if the
    /// rules of the module documentation allow it and `to` is compiled.
    pub fn link(&self, from: &TranslationBlock, slot: u8, to: &TranslationBlock, generation: u64) {
        let Some(func) = to.compiled_entry() else { return };
        let Some(edge) = from.links().0.get(usize::from(slot)) else { return };
        let page = |tb: &TranslationBlock| tb.cs_base.wrapping_add(tb.pc) >> 12;
        let chainable = from.hflags & hflags::TF == 0
            && to.cs_base == from.cs_base
            && to.hflags == from.hflags
            && page(to) == page(from)
            && to.pages.len() == 1
            && from.pages.first() == to.pages.first();
        if !chainable {
            return;
        }
        // A live link to the same block is already there (the chain stopped
        // for its budget or a signal): keep it rather than pile up copies.
        let current = edge.load(Ordering::Acquire);
        // SAFETY: a non-null link pointer is one of this store's boxes,
        // never freed while the store lives.
        if let Some(l) = unsafe { current.as_ref() } {
            if l.generation == generation && std::ptr::eq(l.tb, to) {
                return;
            }
        }
        let link =
            Box::new(ChainLink { func, tb: to, code: to.code(), generation, insns: to.code().insn_count() as u64 });
        let ptr = std::ptr::from_ref(link.as_ref()).cast_mut();
        self.links.lock().unwrap_or_else(PoisonError::into_inner).push(link);
        edge.store(ptr, Ordering::Release);
    }
}
