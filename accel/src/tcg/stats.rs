//! Engine statistics (QEMU's `info jit`): what was translated, compiled and
//! run. Each vCPU counts in a plain [`TcgStats`] and adds it to the
//! process-wide totals when it is dropped; the JIT and the block cache add
//! directly. [`stats`] reads the totals; the binary logs them at exit under
//! the `rxvmm::tcg` target (`RUST_LOG=rxvmm::tcg=debug`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Declares [`TcgStats`] and [`Counter`] from one list of fields.
macro_rules! counters {
    ($($(#[$doc:meta])* $field:ident => $counter:ident,)*) => {
        /// A snapshot of the counters.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct TcgStats {
            $($(#[$doc])* pub $field: u64,)*
        }

        /// One counter of [`TcgStats`], as an index into the totals.
        #[derive(Debug, Clone, Copy)]
        pub(crate) enum Counter {
            $($counter,)*
        }

        impl TcgStats {
            fn fields(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($field), self.$field),)*].into_iter()
            }

            fn from_totals(get: impl Fn(Counter) -> u64) -> TcgStats {
                TcgStats { $($field: get(Counter::$counter),)* }
            }

            /// Adds these counts to the process-wide totals.
            pub(crate) fn add_to_totals(&self) {
                $(add(Counter::$counter, self.$field);)*
            }
        }
    };
}

counters! {
    /// Blocks translated from guest code, and the time it took.
    blocks_translated => BlocksTranslated,
    translate_ns => TranslateNs,
    /// Blocks compiled to host code by the JIT, the time, the code size.
    blocks_compiled => BlocksCompiled,
    compile_ns => CompileNs,
    jit_code_bytes => JitCodeBytes,
    /// Block runs by the interpreter and as host code (chained ones too).
    runs_interpreted => RunsInterpreted,
    runs_compiled => RunsCompiled,
    /// Guest instructions in the blocks run (a block left early by an
    /// exception counts whole).
    guest_insns => GuestInsns,
    /// Block lookups in the vCPU loop: found in the jump cache, confirmed
    /// there after a TLB change, looked up in the VM-wide cache.
    jump_cache_hits => JumpCacheHits,
    jump_cache_rechecks => JumpCacheRechecks,
    cache_lookups => CacheLookups,
    /// Pages whose translated code was dropped because it was written.
    invalidated_pages => InvalidatedPages,
}

impl fmt::Display for TcgStats {
    /// One line of `key=value` pairs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.fields().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={value}")?;
        }
        Ok(())
    }
}

const COUNTERS: usize = Counter::InvalidatedPages as usize + 1;

static TOTALS: [AtomicU64; COUNTERS] = [const { AtomicU64::new(0) }; COUNTERS];

/// Adds `n` to a process-wide counter.
pub(crate) fn add(counter: Counter, n: u64) {
    if n != 0 {
        TOTALS[counter as usize].fetch_add(n, Ordering::Relaxed);
    }
}

/// The totals so far: every vCPU dropped so far, plus the JIT's and the
/// block caches' live counts.
pub fn stats() -> TcgStats {
    TcgStats::from_totals(|c| TOTALS[c as usize].load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_print_as_one_line() {
        let before = stats();
        TcgStats { runs_compiled: 5, guest_insns: 50, ..Default::default() }.add_to_totals();
        let after = stats();
        assert!(after.runs_compiled >= before.runs_compiled + 5);
        assert!(after.guest_insns >= before.guest_insns + 50);
        let line = TcgStats { blocks_translated: 3, invalidated_pages: 1, ..Default::default() }.to_string();
        assert!(line.starts_with("blocks_translated=3 translate_ns=0 "), "{line}");
        assert!(line.ends_with(" invalidated_pages=1"), "{line}");
    }
}
