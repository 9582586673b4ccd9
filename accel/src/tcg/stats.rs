//! Engine statistics (QEMU's `info jit`): what was translated, compiled and
//! run. Each vCPU counts in plain fields and adds them to the process-wide
//! totals when it is dropped; the JIT and the block cache count directly.
//! [`stats`] reads the totals; the binary logs them at exit under the
//! `rxvmm::tcg` target (`RUST_LOG=rxvmm::tcg=debug`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcgStats {
    /// Blocks translated from guest code, and the time it took.
    pub blocks_translated: u64,
    pub translate_ns: u64,
    /// Blocks compiled to host code by the JIT, the time, the code size.
    pub blocks_compiled: u64,
    pub compile_ns: u64,
    pub jit_code_bytes: u64,
    /// Block runs by the interpreter and as host code.
    pub runs_interpreted: u64,
    pub runs_compiled: u64,
    /// Guest instructions in the blocks run (a block left early by an
    /// exception counts whole).
    pub guest_insns: u64,
    /// Block lookups: found in the vCPU's jump cache, confirmed there after
    /// a TLB change, found in the VM-wide cache, or translated.
    pub jump_cache_hits: u64,
    pub jump_cache_rechecks: u64,
    pub cache_lookups: u64,
    /// Pages whose translated code was dropped because it was written.
    pub invalidated_pages: u64,
}

impl fmt::Display for TcgStats {
    /// One line of `key=value` pairs (the bench parses it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self;
        write!(
            f,
            "blocks_translated={} translate_ms={} blocks_compiled={} compile_ms={} jit_code_kib={} \
             runs_interpreted={} runs_compiled={} guest_insns={} jump_cache_hits={} jump_cache_rechecks={} \
             cache_lookups={} invalidated_pages={}",
            s.blocks_translated,
            s.translate_ns / 1_000_000,
            s.blocks_compiled,
            s.compile_ns / 1_000_000,
            s.jit_code_bytes / 1024,
            s.runs_interpreted,
            s.runs_compiled,
            s.guest_insns,
            s.jump_cache_hits,
            s.jump_cache_rechecks,
            s.cache_lookups,
            s.invalidated_pages
        )
    }
}

/// The process-wide totals, one atomic per [`TcgStats`] field.
pub(crate) struct Totals([AtomicU64; COUNTERS]);

const COUNTERS: usize = Counter::InvalidatedPages as usize + 1;

/// Field indexes into [`Totals`].
#[derive(Clone, Copy)]
pub(crate) enum Counter {
    BlocksTranslated,
    TranslateNs,
    BlocksCompiled,
    CompileNs,
    JitCodeBytes,
    RunsInterpreted,
    RunsCompiled,
    GuestInsns,
    JumpCacheHits,
    JumpCacheRechecks,
    CacheLookups,
    InvalidatedPages,
}

static TOTALS: Totals = Totals([const { AtomicU64::new(0) }; COUNTERS]);

/// Adds `n` to a process-wide counter.
pub(crate) fn add(counter: Counter, n: u64) {
    if n != 0 {
        TOTALS.0[counter as usize].fetch_add(n, Ordering::Relaxed);
    }
}

/// The totals so far (every vCPU dropped so far, plus the JIT's and the
/// block caches' live counts).
pub fn stats() -> TcgStats {
    let g = |c: Counter| TOTALS.0[c as usize].load(Ordering::Relaxed);
    use Counter::*;
    TcgStats {
        blocks_translated: g(BlocksTranslated),
        translate_ns: g(TranslateNs),
        blocks_compiled: g(BlocksCompiled),
        compile_ns: g(CompileNs),
        jit_code_bytes: g(JitCodeBytes),
        runs_interpreted: g(RunsInterpreted),
        runs_compiled: g(RunsCompiled),
        guest_insns: g(GuestInsns),
        jump_cache_hits: g(JumpCacheHits),
        jump_cache_rechecks: g(JumpCacheRechecks),
        cache_lookups: g(CacheLookups),
        invalidated_pages: g(InvalidatedPages),
    }
}

/// A vCPU's own counts (no atomics on the hot path), flushed into the
/// totals by [`VcpuCounts::flush`].
#[derive(Debug, Default)]
pub(crate) struct VcpuCounts {
    pub runs_interpreted: u64,
    pub runs_compiled: u64,
    pub guest_insns: u64,
    pub jump_cache_hits: u64,
    pub jump_cache_rechecks: u64,
    pub cache_lookups: u64,
}

impl VcpuCounts {
    pub fn flush(&mut self) {
        use Counter::*;
        let c = std::mem::take(self);
        add(RunsInterpreted, c.runs_interpreted);
        add(RunsCompiled, c.runs_compiled);
        add(GuestInsns, c.guest_insns);
        add(JumpCacheHits, c.jump_cache_hits);
        add(JumpCacheRechecks, c.jump_cache_rechecks);
        add(CacheLookups, c.cache_lookups);
    }
}
