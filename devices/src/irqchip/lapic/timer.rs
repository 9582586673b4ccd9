//! The LAPIC timer (SDM Vol. 3 §11.5.4): one-shot, periodic and
//! TSC-deadline modes, all computed from host time through the VM's
//! [`GuestClock`]: the count is never decremented, it is derived from the
//! ticks of the [`APIC_TIMER_HZ`] clock elapsed since it was loaded.

use std::time::Instant;

use crate::irqchip::clock::{GuestClock, APIC_TIMER_HZ};

/// The LVT timer's mode field (bits 18:17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
    /// Encoding 11b: the timer doesn't run (as KVM).
    Reserved,
}

impl TimerMode {
    pub fn from_lvt(lvt: u32) -> Self {
        match (lvt >> 17) & 3 {
            0 => Self::OneShot,
            1 => Self::Periodic,
            2 => Self::TscDeadline,
            _ => Self::Reserved,
        }
    }

    fn counts(self) -> bool {
        matches!(self, Self::OneShot | Self::Periodic)
    }
}

/// Periodic expiries come at most this often (in timer ticks): 200 µs, KVM's
/// default `min_timer_period_us`. A guest asking for count 1 with divider 1
/// (25 MHz) would otherwise get an interrupt at every block boundary and
/// never make progress.
pub const MIN_PERIOD_TICKS: u64 = APIC_TIMER_HZ / 5000;

/// The divide configuration register's divisor (SDM Figure 11-10): bits 3
/// and 1:0 encode 2, 4, ... 128, and 111b means 1.
pub fn divisor(dcr: u32) -> u64 {
    let code = (dcr & 3) | ((dcr >> 1) & 4);
    1 << ((code + 1) & 7)
}

#[derive(Debug, Clone, Default)]
pub struct Timer {
    initial: u32,
    divide_config: u32,
    /// The timer-clock tick at which the count was (notionally) loaded
    /// with `initial`.
    base: u64,
    /// A one-shot or periodic count is running.
    running: bool,
    /// The tick of the next expiry while running.
    next: u64,
    /// IA32_TSC_DEADLINE on the [`GuestClock`] time base; 0 = disarmed.
    tsc_deadline: u64,
}

impl Timer {
    pub fn initial(&self) -> u32 {
        self.initial
    }

    pub fn divide_config(&self) -> u32 {
        self.divide_config
    }

    /// Ticks in one full count (up to 2^32 × 128, no overflow in u64).
    fn period(&self) -> u64 {
        u64::from(self.initial) * divisor(self.divide_config)
    }

    /// The initial-count register was written at tick `now` (rounded up).
    pub fn write_initial(&mut self, value: u32, mode: TimerMode, now: u64) {
        // §11.5.4.1: ignored in TSC-deadline mode.
        if mode == TimerMode::TscDeadline {
            return;
        }
        self.initial = value;
        self.base = now;
        self.running = value != 0 && mode.counts();
        self.next = now.saturating_add(self.period());
    }

    /// The divider changed at tick `now`: keep the current count and, in
    /// periodic mode, the phase, counting at the new rate from here on.
    pub fn write_divide(&mut self, value: u32, mode: TimerMode, now: u64) {
        let value = value & 0xb;
        if !self.running || !mode.counts() || self.initial == 0 {
            self.divide_config = value;
            return;
        }
        let elapsed = now.saturating_sub(self.base) / divisor(self.divide_config);
        let consumed = match mode {
            TimerMode::Periodic => elapsed % u64::from(self.initial),
            _ => elapsed.min(u64::from(self.initial)),
        };
        self.divide_config = value;
        self.base = now.saturating_sub(consumed * divisor(value));
        self.next = self.base.saturating_add(self.period());
    }

    /// The current-count register at tick `now` (rounded down).
    pub fn current(&self, mode: TimerMode, now: u64) -> u32 {
        if !self.running || !mode.counts() || self.initial == 0 {
            return 0;
        }
        let elapsed = now.saturating_sub(self.base) / divisor(self.divide_config);
        let initial = u64::from(self.initial);
        let count = match mode {
            TimerMode::Periodic => initial - elapsed % initial,
            _ => initial.saturating_sub(elapsed),
        };
        // count <= initial, which is a u32.
        u32::try_from(count).unwrap_or(0)
    }

    /// The LVT mode changed at tick `now`.
    pub fn mode_changed(&mut self, old: TimerMode, new: TimerMode, now: u64) {
        if (old == TimerMode::TscDeadline) != (new == TimerMode::TscDeadline) {
            // Switching to or from TSC-deadline mode disarms the timer
            // (§11.5.4.1; KVM also clears the initial count).
            *self = Timer { divide_config: self.divide_config, ..Timer::default() };
        } else if old == TimerMode::Periodic && new == TimerMode::OneShot && self.running {
            // Finish the current period as a one-shot count.
            let period = self.period().max(1);
            self.base += now.saturating_sub(self.base) / period * period;
            self.next = self.base.saturating_add(self.period());
        } else if !new.counts() {
            self.running = false;
        }
    }

    pub fn set_tsc_deadline(&mut self, tsc: u64, mode: TimerMode) {
        // §11.5.4.1: writes are ignored outside TSC-deadline mode.
        if mode == TimerMode::TscDeadline {
            self.tsc_deadline = tsc;
        }
    }

    pub fn tsc_deadline(&self, mode: TimerMode) -> u64 {
        if mode == TimerMode::TscDeadline {
            self.tsc_deadline
        } else {
            0
        }
    }

    /// Periodic: the first expiry after tick `now`, at least
    /// [`MIN_PERIOD_TICKS`] away.
    fn reschedule(&mut self, now: u64) {
        let period = self.period().max(1);
        let k = now.saturating_sub(self.base) / period + 1;
        self.next = self.base.saturating_add(k.saturating_mul(period));
        if period < MIN_PERIOD_TICKS {
            self.next = self.next.max(now.saturating_add(MIN_PERIOD_TICKS));
        }
    }

    /// Advances the timer to `now` (timer tick `tick`, TSC `tsc`); returns
    /// whether it expired (the caller delivers the LVT vector if unmasked).
    pub fn poll(&mut self, mode: TimerMode, tick: u64, tsc: u64) -> bool {
        match mode {
            TimerMode::OneShot if self.running && tick >= self.next => {
                self.running = false;
                true
            }
            TimerMode::Periodic if self.running && tick >= self.next => {
                // Expiries missed by a late poll coalesce into this one.
                self.reschedule(tick);
                true
            }
            TimerMode::TscDeadline if self.tsc_deadline != 0 && tsc >= self.tsc_deadline => {
                // The timer disarms itself after firing (§11.5.4.1).
                self.tsc_deadline = 0;
                true
            }
            _ => false,
        }
    }

    /// The LVT was unmasked: expiries that passed while it was masked are
    /// gone, not delivered late.
    pub fn resync(&mut self, mode: TimerMode, tick: u64, tsc: u64) {
        self.poll(mode, tick, tsc);
    }

    /// When the timer next expires, if armed.
    pub fn next_deadline(&self, mode: TimerMode, clock: &GuestClock) -> Option<Instant> {
        match mode {
            TimerMode::OneShot | TimerMode::Periodic if self.running => {
                Some(clock.instant_for_ticks(self.next, APIC_TIMER_HZ))
            }
            TimerMode::TscDeadline if self.tsc_deadline != 0 => Some(clock.instant_for_tsc(self.tsc_deadline)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisors() {
        let d: Vec<u64> = [0, 1, 2, 3, 8, 9, 0xa, 0xb].iter().map(|&c| divisor(c)).collect();
        assert_eq!(d, [2, 4, 8, 16, 32, 64, 128, 1]);
    }

    #[test]
    fn one_shot_counts_down_and_stops() {
        let mut t = Timer::default();
        t.write_divide(0xb, TimerMode::OneShot, 0);
        t.write_initial(100, TimerMode::OneShot, 1000);
        assert_eq!(t.current(TimerMode::OneShot, 1030), 70);
        assert!(!t.poll(TimerMode::OneShot, 1099, 0));
        assert!(t.poll(TimerMode::OneShot, 1100, 0));
        assert!(!t.poll(TimerMode::OneShot, 5000, 0));
        assert_eq!(t.current(TimerMode::OneShot, 1200), 0);
    }

    #[test]
    fn periodic_reloads_coalesces_and_keeps_phase_across_divide_changes() {
        let mut t = Timer::default();
        t.write_divide(0, TimerMode::Periodic, 0); // ÷2
        t.write_initial(5000, TimerMode::Periodic, 0);
        assert_eq!(t.current(TimerMode::Periodic, 10_002), 4999);
        assert!(t.poll(TimerMode::Periodic, 10_000, 0));
        // Three periods late: one expiry, next one on the original grid.
        assert!(t.poll(TimerMode::Periodic, 45_000, 0));
        assert_eq!(t.next, 50_000);
        // 3000 of 5000 counts done at ÷2; the other 2000 take 2000 ticks at ÷1.
        t.write_divide(0xb, TimerMode::Periodic, 46_000);
        assert_eq!(t.current(TimerMode::Periodic, 46_000), 2000);
        assert_eq!(t.next, 48_000);
    }

    #[test]
    fn tiny_periods_are_throttled() {
        let mut t = Timer::default();
        t.write_divide(0xb, TimerMode::Periodic, 0);
        t.write_initial(1, TimerMode::Periodic, 0);
        assert!(t.poll(TimerMode::Periodic, 1, 0));
        assert_eq!(t.next, 1 + MIN_PERIOD_TICKS);
    }

    #[test]
    fn mode_switches() {
        let mut t = Timer::default();
        t.write_initial(100, TimerMode::OneShot, 0);
        t.set_tsc_deadline(5, TimerMode::OneShot);
        assert_eq!(t.tsc_deadline(TimerMode::TscDeadline), 0);
        t.mode_changed(TimerMode::OneShot, TimerMode::TscDeadline, 10);
        assert_eq!((t.initial(), t.running), (0, false));
        t.write_initial(100, TimerMode::TscDeadline, 10);
        assert_eq!(t.initial(), 0);
        t.set_tsc_deadline(500, TimerMode::TscDeadline);
        assert!(!t.poll(TimerMode::TscDeadline, 0, 499));
        assert!(t.poll(TimerMode::TscDeadline, 0, 500));
        assert_eq!(t.tsc_deadline(TimerMode::TscDeadline), 0);
        t.set_tsc_deadline(600, TimerMode::TscDeadline);
        t.mode_changed(TimerMode::TscDeadline, TimerMode::Periodic, 0);
        assert_eq!(t.tsc_deadline(TimerMode::TscDeadline), 0);
        t.write_initial(10, TimerMode::Reserved, 0);
        assert!(!t.poll(TimerMode::Reserved, 1 << 40, 0));
    }
}
