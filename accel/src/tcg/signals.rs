//! What other threads tell a vCPU: kicks, "an interrupt may be pending",
//! INIT and SIPI. One object per vCPU, shared with its kicker and the APIC
//! bus (as its [`CpuWakeup`]).
//!
//! The vCPU thread checks one atomic word at every block boundary and
//! parks on the condvar while halted or waiting for SIPI. A waker sets its
//! bit and then, only if the thread said it is going to sleep, notifies
//! under the mutex; the thread announces sleep under that mutex and
//! re-checks the bits before waiting (both sides SeqCst, Dekker-style), so
//! no wake-up is lost and a running vCPU costs its wakers no lock.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

use devices::irqchip::CpuWakeup;

use crate::VcpuKicker;

/// Bits of [`VcpuSignals::pending`].
mod bit {
    pub const KICK: u32 = 1 << 0;
    /// An interrupt or NMI may have become deliverable: ask the APIC bus.
    pub const IRQ: u32 = 1 << 1;
    pub const INIT: u32 = 1 << 2;
    pub const SIPI: u32 = 1 << 3;
    /// This vCPU reprogrammed a timer: re-read the next deadline.
    pub const TIMERS: u32 = 1 << 4;
}

/// The shared half of a TCG vCPU.
pub struct VcpuSignals {
    pending: AtomicU32,
    /// The vector of the latched SIPI (valid with [`bit::SIPI`]).
    sipi_vector: AtomicU32,
    /// Between INIT (or power-up of an AP) and the SIPI that ends it: only
    /// then is a SIPI latched, as on hardware, so the second SIPI of the
    /// INIT-SIPI-SIPI sequence can't linger and restart the CPU later.
    waiting_for_sipi: AtomicBool,
    /// The vCPU thread is about to wait (or waits) on `wake`.
    sleeping: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl VcpuSignals {
    /// Signals for a vCPU that starts running (the BSP) or waits for SIPI.
    pub fn new(waiting_for_sipi: bool) -> Self {
        VcpuSignals {
            pending: AtomicU32::new(0),
            sipi_vector: AtomicU32::new(0),
            waiting_for_sipi: AtomicBool::new(waiting_for_sipi),
            sleeping: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    fn signal(&self, bits: u32) {
        self.pending.fetch_or(bits, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.wake.notify_all();
        }
    }

    /// Whether anything at all is pending: the one check per block.
    #[inline]
    /// The pending-signal word, for compiled code that polls it.
    pub(crate) fn pending_word(&self) -> *const u32 {
        self.pending.as_ptr()
    }

    pub(crate) fn any(&self) -> bool {
        self.pending.load(Ordering::Relaxed) != 0
    }

    fn take(&self, b: u32) -> bool {
        self.pending.load(Ordering::Relaxed) & b != 0 && self.pending.fetch_and(!b, Ordering::SeqCst) & b != 0
    }

    pub(crate) fn take_kick(&self) -> bool {
        self.take(bit::KICK)
    }

    /// Clears the interrupt hint; the caller then asks the APIC bus.
    pub(crate) fn take_irq(&self) -> bool {
        self.take(bit::IRQ)
    }

    pub(crate) fn take_timers(&self) -> bool {
        self.take(bit::TIMERS)
    }

    /// A timer this vCPU polls was reprogrammed (by it, or by another vCPU
    /// for the PIT): it re-reads its next deadline, waking if parked.
    pub(crate) fn timers_changed(&self) {
        self.signal(bit::TIMERS);
    }

    pub(crate) fn take_init(&self) -> bool {
        self.take(bit::INIT)
    }

    /// Takes a latched SIPI; the vCPU stops waiting for one.
    pub(crate) fn take_sipi(&self) -> Option<u8> {
        if self.pending.load(Ordering::SeqCst) & bit::SIPI == 0 {
            return None;
        }
        // Stop latching first: a second SIPI racing with this is either
        // taken now or dropped, never left behind.
        self.waiting_for_sipi.store(false, Ordering::SeqCst);
        self.take(bit::SIPI).then(|| self.sipi_vector.load(Ordering::SeqCst) as u8)
    }

    /// Parks the vCPU thread until any signal or `deadline`. The caller
    /// has taken (and acted on) the signals pending before.
    pub(crate) fn park(&self, deadline: Option<Instant>) {
        let wake_on = u32::MAX;
        let mut g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.sleeping.store(true, Ordering::SeqCst);
        while self.pending.load(Ordering::SeqCst) & wake_on == 0 {
            match deadline {
                None => g = self.wake.wait(g).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    g = self.wake.wait_timeout(g, d - now).unwrap_or_else(PoisonError::into_inner).0;
                }
            }
        }
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

impl VcpuKicker for VcpuSignals {
    fn kick(&self) {
        self.signal(bit::KICK);
    }
}

impl CpuWakeup for VcpuSignals {
    fn interrupt_pending(&self) {
        self.signal(bit::IRQ);
    }

    fn init(&self) {
        self.waiting_for_sipi.store(true, Ordering::SeqCst);
        self.signal(bit::INIT);
    }

    fn startup(&self, vector: u8) {
        if self.waiting_for_sipi.load(Ordering::SeqCst) {
            self.sipi_vector.store(u32::from(vector), Ordering::SeqCst);
            self.signal(bit::SIPI);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn sipi_is_latched_only_while_waiting_for_one() {
        let s = VcpuSignals::new(false);
        s.startup(0x10);
        assert_eq!(s.take_sipi(), None, "a running CPU ignores SIPI");
        s.init();
        s.startup(0x10);
        s.startup(0x11);
        assert!(s.take_init());
        assert_eq!(s.take_sipi(), Some(0x11));
        s.startup(0x12);
        assert_eq!(s.take_sipi(), None, "the second SIPI after start is dropped");
    }

    #[test]
    fn park_wakes_on_signals_and_times_out() {
        let s = Arc::new(VcpuSignals::new(false));
        let t = Instant::now();
        s.park(Some(t + Duration::from_millis(20)));
        assert!(t.elapsed() >= Duration::from_millis(20));
        s.interrupt_pending();
        s.park(None);
        assert!(s.take_irq());
        let s2 = s.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            s2.kick();
        });
        s.park(None);
        assert!(s.take_kick());
        h.join().unwrap();
    }
}
