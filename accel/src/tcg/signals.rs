//! What other threads tell a vCPU: kicks, pending interrupts, INIT/SIPI.
//! One object per vCPU, shared with its kicker, the VM and (next) the LAPIC.
//!
//! The vCPU thread checks the atomics at every block boundary and parks on
//! the condvar while halted or waiting for SIPI. Every wake-up source sets
//! its atomic *then* notifies under the mutex, and the thread re-checks the
//! atomics under the same mutex before waiting, so no wake-up is lost.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

use crate::VcpuKicker;

/// Pending external interrupt vectors (a 256-bit set), raised by the
/// interrupt controller side and taken by the vCPU when it can deliver.
#[derive(Default)]
pub struct InterruptInput {
    pending: [AtomicU64; 4],
}

impl InterruptInput {
    fn set(&self, vector: u8, on: bool) {
        let (word, bit) = (usize::from(vector / 64), 1u64 << (vector % 64));
        if on {
            self.pending[word].fetch_or(bit, Ordering::SeqCst);
        } else {
            self.pending[word].fetch_and(!bit, Ordering::SeqCst);
        }
    }

    pub fn any(&self) -> bool {
        self.pending.iter().any(|w| w.load(Ordering::Acquire) != 0)
    }

    /// Removes and returns the highest pending vector (highest priority).
    pub fn take_highest(&self) -> Option<u8> {
        for (i, w) in self.pending.iter().enumerate().rev() {
            let mut v = w.load(Ordering::Acquire);
            while v != 0 {
                let bit = 63 - v.leading_zeros();
                match w.compare_exchange(v, v & !(1 << bit), Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Some((i * 64) as u8 + bit as u8),
                    Err(now) => v = now,
                }
            }
        }
        None
    }
}

/// No SIPI pending.
const NO_SIPI: u32 = u32::MAX;

/// The shared half of a TCG vCPU.
pub struct VcpuSignals {
    kicked: AtomicBool,
    pub interrupts: InterruptInput,
    init: AtomicBool,
    sipi: AtomicU32,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Default for VcpuSignals {
    fn default() -> Self {
        VcpuSignals {
            kicked: AtomicBool::new(false),
            interrupts: InterruptInput::default(),
            init: AtomicBool::new(false),
            sipi: AtomicU32::new(NO_SIPI),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }
}

impl VcpuSignals {
    fn notify(&self) {
        let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.wake.notify_all();
    }

    /// Makes external interrupt `vector` pending (edge: delivered once).
    pub fn raise(&self, vector: u8) {
        self.interrupts.set(vector, true);
        self.notify();
    }

    /// Withdraws a pending `vector` not yet delivered.
    pub fn lower(&self, vector: u8) {
        self.interrupts.set(vector, false);
    }

    /// INIT IPI: the vCPU resets and waits for SIPI.
    pub fn init(&self) {
        self.init.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Startup IPI with `vector`: a vCPU waiting for SIPI starts in real
    /// mode at `vector << 12`. Ignored by a running vCPU.
    pub fn sipi(&self, vector: u8) {
        self.sipi.store(u32::from(vector), Ordering::SeqCst);
        self.notify();
    }

    pub(crate) fn take_kick(&self) -> bool {
        self.kicked.swap(false, Ordering::SeqCst)
    }

    pub(crate) fn kick_pending(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    pub(crate) fn take_init(&self) -> bool {
        self.init.swap(false, Ordering::SeqCst)
    }

    pub(crate) fn take_sipi(&self) -> Option<u8> {
        let v = self.sipi.swap(NO_SIPI, Ordering::SeqCst);
        u8::try_from(v).ok()
    }

    fn sipi_pending(&self) -> bool {
        self.sipi.load(Ordering::Acquire) != NO_SIPI
    }

    /// Parks the calling vCPU thread until `ready()` or a kick/INIT/SIPI.
    pub(crate) fn park_until(&self, ready: impl Fn(&Self) -> bool) {
        let mut g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !(self.kick_pending() || self.init.load(Ordering::Acquire) || self.sipi_pending() || ready(self)) {
            g = self.wake.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl VcpuKicker for VcpuSignals {
    fn kick(&self) {
        self.kicked.store(true, Ordering::SeqCst);
        self.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_vector_first_and_taken_once() {
        let i = InterruptInput::default();
        i.set(0x20, true);
        i.set(0xec, true);
        assert_eq!(i.take_highest(), Some(0xec));
        assert_eq!(i.take_highest(), Some(0x20));
        assert_eq!(i.take_highest(), None);
    }
}
