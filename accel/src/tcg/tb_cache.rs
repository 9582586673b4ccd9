//! Translation blocks and their caches.
//!
//! - [`TbCache`]: VM-wide, shared by every vCPU, keyed by the block's
//!   physical PC, its CS-relative PC, CS base and the hflags bits that
//!   change the meaning of code. Blocks on a page whose code was
//!   overwritten are dropped when [`TbCache::sync_invalidations`] drains
//!   [`CodePages`].
//! - [`JumpCache`]: per vCPU, direct-mapped by linear PC in front of it (no
//!   lock, no page walk). Dropped on every TLB flush (linear→physical may
//!   have changed) and whenever the cache's invalidation generation moves.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::interp;
use super::ir::Op;
use super::mmu::CodePages;

/// Guest code translated to IR.
#[derive(Debug)]
pub struct TranslationBlock {
    /// CS-relative PC of the first instruction.
    pub pc: u64,
    pub cs_base: u64,
    /// `hflags & TB_KEY_MASK` at translation.
    pub hflags: u64,
    pub phys_pc: u64,
    /// Physical page addresses the code bytes come from (1 or 2).
    pub pages: Vec<u64>,
    /// Bytes of guest code covered.
    pub guest_len: u64,
    ops: Vec<Op>,
    num_temps: usize,
    label_pos: Vec<usize>,
}

impl TranslationBlock {
    /// Builds a block; IR that fails [`interp::validate`] (a translator bug)
    /// is replaced by a block that raises #UD, logged.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pc: u64,
        cs_base: u64,
        hflags: u64,
        phys_pc: u64,
        pages: Vec<u64>,
        guest_len: u64,
        ops: Vec<Op>,
        num_temps: usize,
        label_pos: Vec<usize>,
    ) -> Self {
        let (ops, num_temps, label_pos) = match interp::validate(&ops, num_temps, &label_pos) {
            Ok(()) => (ops, num_temps, label_pos),
            Err(why) => {
                log::error!("TCG: translator produced bad IR at {pc:#x}: {why}");
                let raise = super::ir::ExitKind::Raise(super::exception::Exception::ud());
                (vec![Op::InsnStart { pc, len: 1 }, Op::ExitTb { kind: raise }], 0, Vec::new())
            }
        };
        TranslationBlock { pc, cs_base, hflags, phys_pc, pages, guest_len, ops, num_temps, label_pos }
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
    pub fn num_temps(&self) -> usize {
        self.num_temps
    }
    pub fn label_pos(&self) -> &[usize] {
        &self.label_pos
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TbKey {
    phys_pc: u64,
    pc: u64,
    cs_base: u64,
    hflags: u64,
}

/// FxHash (rustc's): keys are a few integers from the guest, so a
/// multiply-rotate hash is plenty and far cheaper than SipHash. A guest can
/// at worst make its own lookups slower.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Default)]
struct Blocks {
    map: FxMap<TbKey, Arc<TranslationBlock>>,
    /// Physical page → keys of the blocks with code on it.
    by_page: FxMap<u64, Vec<TbKey>>,
}

/// The VM's translated code.
pub struct TbCache {
    blocks: RwLock<Blocks>,
    code_pages: Arc<CodePages>,
    /// Bumped whenever blocks are dropped: jump caches compare it.
    generation: AtomicU64,
}

impl TbCache {
    pub fn new(code_pages: Arc<CodePages>) -> Self {
        TbCache { blocks: RwLock::default(), code_pages, generation: AtomicU64::new(0) }
    }

    pub fn code_pages(&self) -> &Arc<CodePages> {
        &self.code_pages
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Drops the blocks on pages whose code was overwritten. Cheap when
    /// nothing was (one atomic load).
    #[inline]
    pub fn sync_invalidations(&self, seen_code_generation: &mut u64) {
        let g = self.code_pages.generation();
        if g != *seen_code_generation {
            self.drop_invalidated(g, seen_code_generation);
        }
    }

    #[cold]
    fn drop_invalidated(&self, g: u64, seen_code_generation: &mut u64) {
        *seen_code_generation = g;
        let pages = self.code_pages.take_invalidated();
        if pages.is_empty() {
            return;
        }
        let mut blocks = self.blocks.write().unwrap_or_else(PoisonError::into_inner);
        for page in pages {
            let Some(keys) = blocks.by_page.remove(&(page << 12)) else { continue };
            for k in keys {
                blocks.map.remove(&k);
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn lookup(&self, phys_pc: u64, pc: u64, cs_base: u64, hflags: u64) -> Option<Arc<TranslationBlock>> {
        let blocks = self.blocks.read().unwrap_or_else(PoisonError::into_inner);
        blocks.map.get(&TbKey { phys_pc, pc, cs_base, hflags }).cloned()
    }

    /// Adds `tb` (or returns the block another vCPU added first).
    pub fn insert(&self, tb: TranslationBlock) -> Arc<TranslationBlock> {
        let key = TbKey { phys_pc: tb.phys_pc, pc: tb.pc, cs_base: tb.cs_base, hflags: tb.hflags };
        let mut blocks = self.blocks.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = blocks.map.get(&key) {
            return existing.clone();
        }
        let tb = Arc::new(tb);
        for &page in &tb.pages {
            blocks.by_page.entry(page).or_default().push(key);
        }
        blocks.map.insert(key, tb.clone());
        tb
    }

    /// Drops every block (tests, debugging).
    pub fn clear(&self) {
        let mut blocks = self.blocks.write().unwrap_or_else(PoisonError::into_inner);
        *blocks = Blocks::default();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn len(&self) -> usize {
        self.blocks.read().unwrap_or_else(PoisonError::into_inner).map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const JUMP_CACHE_SIZE: usize = 4096;

/// A key no block has: `hflags` keys are masked by `TB_KEY_MASK`.
const NO_HFLAGS: u64 = u64::MAX;

/// One jump-cache entry. The key is stored inline so a lookup reads one
/// cache line and never the block itself.
#[derive(Clone)]
struct Slot {
    pc: u64,
    cs_base: u64,
    hflags: u64,
    tb: Option<Arc<TranslationBlock>>,
}

const EMPTY_SLOT: Slot = Slot { pc: 0, cs_base: 0, hflags: NO_HFLAGS, tb: None };

/// Per-vCPU direct-mapped cache: linear PC → block.
pub struct JumpCache {
    slots: Vec<Slot>,
    generation: u64,
}

impl Default for JumpCache {
    fn default() -> Self {
        JumpCache { slots: vec![EMPTY_SLOT; JUMP_CACHE_SIZE], generation: 0 }
    }
}

impl JumpCache {
    #[inline]
    fn slot(linear_pc: u64) -> usize {
        ((linear_pc ^ (linear_pc >> 12)) as usize) & (JUMP_CACHE_SIZE - 1)
    }

    /// The slot holding the block for `pc` if cached and still valid for
    /// this mode (see [`Self::block`]).
    #[inline]
    pub fn find(&mut self, cache_generation: u64, pc: u64, cs_base: u64, hflags: u64) -> Option<usize> {
        if cache_generation != self.generation {
            self.flush();
            self.generation = cache_generation;
            return None;
        }
        let i = Self::slot(cs_base.wrapping_add(pc));
        let s = &self.slots[i];
        (s.pc == pc && s.cs_base == cs_base && s.hflags == hflags && s.tb.is_some()).then_some(i)
    }

    /// The block for `pc` if cached and still valid for this mode.
    pub fn get(&mut self, cache_generation: u64, pc: u64, cs_base: u64, hflags: u64) -> Option<&Arc<TranslationBlock>> {
        let i = self.find(cache_generation, pc, cs_base, hflags)?;
        self.slots[i].tb.as_ref()
    }

    /// The block in slot `i` (from [`Self::find`] or [`Self::put`]): a
    /// borrow, so running it costs no reference-count traffic on a block
    /// that other vCPUs run too.
    #[inline]
    pub fn block(&self, i: usize) -> Option<&TranslationBlock> {
        self.slots.get(i)?.tb.as_deref()
    }

    /// Caches `tb`; returns its slot.
    pub fn put(&mut self, tb: Arc<TranslationBlock>) -> usize {
        let i = Self::slot(tb.cs_base.wrapping_add(tb.pc));
        self.slots[i] = Slot { pc: tb.pc, cs_base: tb.cs_base, hflags: tb.hflags, tb: Some(tb) };
        i
    }

    /// Forgets every mapping. The blocks stay referenced until their slots
    /// are reused: a flush (every CR3 write) then costs no atomic reference
    /// count updates on blocks other vCPUs share.
    pub fn flush(&mut self) {
        self.slots.iter_mut().for_each(|s| s.hflags = NO_HFLAGS);
    }
}
