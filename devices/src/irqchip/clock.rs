//! The guest time base: one clock per VM from which the TSC, the LAPIC
//! timers and the PIT all derive, so every guest-visible timer agrees.
//!
//! Time is host `CLOCK_MONOTONIC` (`Instant`) since the VM's start, scaled to
//! each device's frequency with exact integer arithmetic. Nothing counts
//! guest instructions: a timer fires when host time says so, however fast or
//! slow the engine runs the guest.

use std::time::{Duration, Instant};

/// The invariant TSC frequency, 2 GHz.
///
/// A round number that is a whole multiple of [`CRYSTAL_HZ`] (CPUID 0x15
/// reports TSC = crystal × 80/1) and of 1 MHz (CPUID 0x16 reports 2000 MHz),
/// and exact in nanoseconds (2 ticks per ns), so TSC values convert to host
/// instants without rounding. Close to real CPUs, so guest delay loops
/// calibrated from it behave sensibly.
pub const TSC_HZ: u64 = 2_000_000_000;
/// The core crystal clock (CPUID 0x15 ECX), which is also the LAPIC timer's
/// input clock: Linux sets `lapic_timer_period` from CPUID 0x15 instead of
/// calibrating, so the LAPIC must tick at exactly this rate.
pub const CRYSTAL_HZ: u64 = 25_000_000;
/// TSC ticks per crystal tick (CPUID 0x15 EBX/EAX = 80/1).
pub const TSC_CRYSTAL_RATIO: u64 = TSC_HZ / CRYSTAL_HZ;
/// The LAPIC timer's input clock before its divider.
pub const APIC_TIMER_HZ: u64 = CRYSTAL_HZ;
/// The 8254 PIT's input clock (a PC's 14.31818 MHz / 12).
pub const PIT_HZ: u64 = 1_193_182;

const _: () = assert!(TSC_HZ.is_multiple_of(CRYSTAL_HZ));
const _: () = assert!(TSC_HZ.is_multiple_of(1_000_000));

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// A deadline this far away is as good as never (a guest may ask for
/// TSC-deadline u64::MAX); used only if `Instant` can't represent the real one.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The VM's clock, shared (`Arc`) by its vCPUs and timer devices.
#[derive(Debug, Clone, Copy)]
pub struct GuestClock {
    start: Instant,
}

impl Default for GuestClock {
    fn default() -> Self {
        Self::new()
    }
}

impl GuestClock {
    /// A clock whose TSC reads 0 now.
    pub fn new() -> Self {
        Self { start: Instant::now() }
    }

    /// A clock that started at `start` (tests, restored VMs).
    pub fn with_start(start: Instant) -> Self {
        Self { start }
    }

    /// The instant the TSC read 0.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The TSC now. `Instant` is monotonic, so this never goes backwards,
    /// on any thread.
    pub fn tsc(&self) -> u64 {
        self.tsc_at(Instant::now())
    }

    /// The TSC at `t` (0 for instants before the start).
    pub fn tsc_at(&self, t: Instant) -> u64 {
        self.ticks_at(t, TSC_HZ)
    }

    /// The first instant at which the TSC reads at least `tsc`.
    pub fn instant_for_tsc(&self, tsc: u64) -> Instant {
        self.instant_for_ticks(tsc, TSC_HZ)
    }

    /// Whole ticks of a `hz` clock elapsed between the start and `t`.
    pub fn ticks_at(&self, t: Instant, hz: u64) -> u64 {
        let ns = t.saturating_duration_since(self.start).as_nanos();
        u64::try_from(ns * u128::from(hz) / NANOS_PER_SEC).unwrap_or(u64::MAX)
    }

    /// Like [`Self::ticks_at`] but rounded up: the first tick boundary at or
    /// after `t`. Timers load their count on it, so an expiry computed from
    /// it is never earlier than `t` plus the programmed interval.
    pub fn ticks_at_ceil(&self, t: Instant, hz: u64) -> u64 {
        let ns = t.saturating_duration_since(self.start).as_nanos();
        u64::try_from((ns * u128::from(hz)).div_ceil(NANOS_PER_SEC)).unwrap_or(u64::MAX)
    }

    /// The first instant at which [`Self::ticks_at`] reaches `ticks`
    /// (rounded up, so a deadline computed here is never early).
    pub fn instant_for_ticks(&self, ticks: u64, hz: u64) -> Instant {
        let ns = (u128::from(ticks) * NANOS_PER_SEC).div_ceil(u128::from(hz.max(1)));
        let after = Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
        self.start.checked_add(after).or_else(|| self.start.checked_add(FAR_FUTURE)).unwrap_or(self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_counts_at_tsc_hz_and_converts_back() {
        let start = Instant::now();
        let clock = GuestClock::with_start(start);
        let t = start + Duration::from_millis(3);
        assert_eq!(clock.tsc_at(t), 3 * TSC_HZ / 1000);
        assert_eq!(clock.instant_for_tsc(3 * TSC_HZ / 1000), t);
        if let Some(before) = start.checked_sub(Duration::from_millis(1)) {
            assert_eq!(clock.tsc_at(before), 0);
        }
        assert_eq!(clock.ticks_at(t, PIT_HZ), 3579);
    }

    #[test]
    fn deadlines_round_up_and_ticks_round_down() {
        let start = Instant::now();
        let clock = GuestClock::with_start(start);
        // One PIT tick is 838.1 ns: the deadline must not be at 838 ns.
        let d = clock.instant_for_ticks(1, PIT_HZ);
        assert_eq!(d - start, Duration::from_nanos(839));
        assert_eq!(clock.ticks_at(d, PIT_HZ), 1);
        assert_eq!(clock.ticks_at(d - Duration::from_nanos(1), PIT_HZ), 0);
        assert_eq!(clock.ticks_at_ceil(start + Duration::from_nanos(1), PIT_HZ), 1);
        assert_eq!(clock.ticks_at_ceil(start, PIT_HZ), 0);
    }

    #[test]
    fn tsc_never_goes_backwards_and_huge_deadlines_do_not_panic() {
        let clock = GuestClock::new();
        let mut last = clock.tsc();
        for _ in 0..1000 {
            let now = clock.tsc();
            assert!(now >= last);
            last = now;
        }
        assert!(clock.instant_for_tsc(u64::MAX) > Instant::now());
        assert!(clock.instant_for_ticks(u64::MAX, 1) > Instant::now());
        assert!(clock.instant_for_ticks(5, 0) >= clock.start());
    }
}
