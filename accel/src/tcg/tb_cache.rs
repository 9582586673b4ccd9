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
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use super::chain::{ChainStore, Links};
use super::ir::Op;
use super::jit::{CompiledBlock, Compiler, Jit, JitError};
use super::mmu::CodePages;
use super::JitPolicy;
use super::{bytecode, interp};

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
    /// IR ops the block was lowered to (statistics; the IR itself is
    /// dropped once compiled, the block's largest part).
    ir_len: usize,
    /// The ops in the interpreter's compiled form, what both the
    /// interpreter and the JIT work from.
    code: bytecode::Code,
    /// Runs so far, until the block is hot.
    runs: AtomicU32,
    /// Host code, once the block is hot (`None`: the JIT declined it).
    compiled: OnceLock<Option<CompiledBlock>>,
    /// Where its compiled direct jumps may chain to.
    links: Links,
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
        let code = bytecode::compile(&ops, num_temps, &label_pos);
        TranslationBlock {
            pc,
            cs_base,
            hflags,
            phys_pc,
            pages,
            guest_len,
            ir_len: ops.len(),
            code,
            runs: AtomicU32::new(0),
            compiled: OnceLock::new(),
            links: Links::default(),
        }
    }

    /// The block as the interpreter runs it.
    pub fn code(&self) -> &bytecode::Code {
        &self.code
    }

    /// Whether the block has been offered to the JIT: `Some(code)` when it
    /// was (`None` inside: declined), `None` when not yet.
    #[inline]
    pub fn compiled_block(&self) -> Option<Option<CompiledBlock>> {
        self.compiled.get().copied()
    }

    /// Counts a run of the block (interpreted); returns the count.
    #[inline]
    pub fn count_run(&self) -> u32 {
        self.runs.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// Compiles the block with `jit` unless that was done already.
    #[cold]
    pub fn compile_with(&self, jit: &Jit) -> Option<CompiledBlock> {
        if let Some(c) = self.compiled.get() {
            return *c;
        }
        self.set_compiled(jit.compile(&self.code, self.links.address()))
    }

    /// Records what compiling the block gave (the first result stands).
    pub fn set_compiled(&self, result: Result<CompiledBlock, JitError>) -> Option<CompiledBlock> {
        let c = match result {
            Ok(c) => Some(c),
            Err(e) => {
                log::debug!("TCG: block at {:#x} stays interpreted: {e}", self.pc);
                None
            }
        };
        *self.compiled.get_or_init(|| c)
    }

    /// The compiled entry point, if the block has been compiled.
    pub fn compiled_entry(&self) -> Option<u64> {
        self.compiled.get().copied().flatten().map(CompiledBlock::entry)
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    /// IR ops the block was lowered to.
    pub fn ir_len(&self) -> usize {
        self.ir_len
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
    /// Compiles blocks as the VM's policy says; `None` when disabled or
    /// unavailable on this host.
    compiler: Option<Compiler>,
    chains: ChainStore,
}

impl TbCache {
    pub fn new(code_pages: Arc<CodePages>, jit: JitPolicy) -> Self {
        TbCache {
            blocks: RwLock::default(),
            code_pages,
            generation: AtomicU64::new(0),
            compiler: Compiler::new(jit),
            chains: ChainStore::default(),
        }
    }

    pub fn code_pages(&self) -> &Arc<CodePages> {
        &self.code_pages
    }

    /// Links between compiled blocks.
    pub fn chains(&self) -> &ChainStore {
        &self.chains
    }

    /// The JIT, when compiling.
    pub fn compiler(&self) -> Option<&Compiler> {
        self.compiler.as_ref()
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
        super::stats::add(super::stats::Counter::InvalidatedPages, pages.len() as u64);
        let mut blocks = self.blocks.write().unwrap_or_else(PoisonError::into_inner);
        for page in pages {
            let Some(keys) = blocks.by_page.remove(&(page << 12)) else { continue };
            for k in keys {
                if let Some(tb) = blocks.map.remove(&k) {
                    self.chains.retire(tb);
                }
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
        for (_, tb) in std::mem::take(&mut *blocks).map {
            self.chains.retire(tb);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn len(&self) -> usize {
        self.blocks.read().unwrap_or_else(PoisonError::into_inner).map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const JUMP_CACHE_SIZE: usize = 16384;

/// One jump-cache entry. The key is stored inline so a lookup reads one
/// cache line and never the block itself. `tag` is the block's hflags key
/// with the cache's flush epoch above bit 32 (hflags keys fit in 32 bits):
/// a flush moves the epoch instead of touching 4096 entries.
#[derive(Clone)]
struct Slot {
    pc: u64,
    cs_base: u64,
    tag: u64,
    /// The TLB epoch at which `pc` last translated to the block's page.
    tlb_epoch: u64,
    tb: Option<Arc<TranslationBlock>>,
}

/// A tag no lookup has (epoch 0 is never current).
const EMPTY_SLOT: Slot = Slot { pc: 0, cs_base: 0, tag: 0, tlb_epoch: 0, tb: None };

const _: () = assert!(super::state::hflags::TB_KEY_MASK >> 32 == 0);

/// What [`JumpCache::find`] found.
pub enum Found {
    /// The block in this slot runs as is.
    Hit(usize),
    /// The block in this slot is right for the PC and mode, but the TLB
    /// changed since its code was last translated: check that the code
    /// still maps to the same physical page(s), then [`JumpCache::confirm`].
    Recheck(usize),
    Miss,
}

/// Per-vCPU direct-mapped cache: linear PC → block (QEMU's tb_jmp_cache).
///
/// Unlike QEMU's, it is not flushed when the TLB is (every CR3 write, and
/// Linux switches CR3 for each text patch): an entry remembers the TLB
/// epoch at which its PC last translated to the block's physical page, and
/// after any TLB change it is re-checked once against the TLB, which is
/// much cheaper than finding every block again in the VM-wide cache.
pub struct JumpCache {
    slots: Vec<Slot>,
    generation: u64,
    epoch: u64,
}

impl Default for JumpCache {
    fn default() -> Self {
        JumpCache { slots: vec![EMPTY_SLOT; JUMP_CACHE_SIZE], generation: 0, epoch: 1 }
    }
}

impl JumpCache {
    #[inline]
    fn slot(linear_pc: u64) -> usize {
        ((linear_pc ^ (linear_pc >> 12)) as usize) & (JUMP_CACHE_SIZE - 1)
    }

    #[inline]
    fn tag(&self, hflags: u64) -> u64 {
        hflags | self.epoch << 32
    }

    /// Looks up the block for `pc` in this mode. `cache_generation` is the
    /// VM-wide cache's (blocks dropped for self-modifying code), `tlb_epoch`
    /// the vCPU's TLB's.
    #[inline]
    pub fn find(&mut self, cache_generation: u64, pc: u64, cs_base: u64, hflags: u64, tlb_epoch: u64) -> Found {
        if cache_generation != self.generation {
            self.flush();
            self.generation = cache_generation;
            return Found::Miss;
        }
        let i = Self::slot(cs_base.wrapping_add(pc));
        let s = &self.slots[i];
        if s.pc != pc || s.cs_base != cs_base || s.tag != self.tag(hflags) || s.tb.is_none() {
            Found::Miss
        } else if s.tlb_epoch == tlb_epoch {
            Found::Hit(i)
        } else {
            Found::Recheck(i)
        }
    }

    /// The block for `pc` in this mode if [`Self::find`] would return a
    /// `Hit` (nothing is flushed or changed here).
    #[inline]
    pub fn find_hit(
        &self,
        cache_generation: u64,
        pc: u64,
        cs_base: u64,
        hflags: u64,
        tlb_epoch: u64,
    ) -> Option<&Arc<TranslationBlock>> {
        if cache_generation != self.generation {
            return None;
        }
        let s = &self.slots[Self::slot(cs_base.wrapping_add(pc))];
        let hit = s.pc == pc && s.cs_base == cs_base && s.tag == self.tag(hflags) && s.tlb_epoch == tlb_epoch;
        s.tb.as_ref().filter(|_| hit)
    }

    /// The block in slot `i` passed its recheck at `tlb_epoch`.
    pub fn confirm(&mut self, i: usize, tlb_epoch: u64) {
        if let Some(s) = self.slots.get_mut(i) {
            s.tlb_epoch = tlb_epoch;
        }
    }

    /// The block in slot `i` (from [`Self::find`] or [`Self::put`]): a
    /// borrow, so running it costs no reference-count traffic on a block
    /// that other vCPUs run too.
    #[inline]
    pub fn block(&self, i: usize) -> Option<&Arc<TranslationBlock>> {
        self.slots.get(i)?.tb.as_ref()
    }

    /// Caches `tb`, whose code the TLB maps at `tlb_epoch`; returns its slot.
    pub fn put(&mut self, tb: Arc<TranslationBlock>, tlb_epoch: u64) -> usize {
        let i = Self::slot(tb.cs_base.wrapping_add(tb.pc));
        self.slots[i] = Slot { pc: tb.pc, cs_base: tb.cs_base, tag: self.tag(tb.hflags), tlb_epoch, tb: Some(tb) };
        i
    }

    /// Forgets every mapping. O(1): the epoch moves. The blocks stay
    /// referenced until their slots are reused, which also spares a flush
    /// the atomic reference-count updates on blocks other vCPUs share.
    pub fn flush(&mut self) {
        self.epoch += 1;
        if self.epoch >> 32 != 0 {
            self.slots.iter_mut().for_each(|s| s.tag = 0);
            self.epoch = 1;
        }
    }
}
