//! The pvpanic device (QEMU's ISA `pvpanic`, ACPI `QEMU0001`): the guest
//! kernel's panic notifier writes to it, so a panic ends the VM with the
//! guest-crash exit code instead of a reboot or a hang.

use std::sync::Arc;

use crate::{BusDevice, ExitReason, VmExitSignal};

/// Bit 0: the guest kernel panicked.
pub const PANICKED: u8 = 1 << 0;
/// Bit 1: a crash kernel is loaded and will take over (kdump).
pub const CRASH_LOADED: u8 = 1 << 1;

/// One byte: reads report the events we understand, writes report one.
pub struct PvPanic {
    exit: Arc<VmExitSignal>,
}

impl PvPanic {
    pub fn new(exit: Arc<VmExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for PvPanic {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        // Linux's driver reads the capability byte and only notifies those.
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = PANICKED;
        }
    }

    fn write(&self, _offset: u64, data: &[u8]) {
        let value = data.first().copied().unwrap_or(0);
        if value & PANICKED != 0 {
            self.exit.request(ExitReason::GuestCrash("guest kernel panicked (pvpanic)".into()));
        } else if value != 0 {
            log::debug!("pvpanic: ignoring event {value:#x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_write_is_a_guest_crash_and_reads_report_capability() {
        let exit = Arc::new(VmExitSignal::new().unwrap());
        let dev = PvPanic::new(exit.clone());
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        assert_eq!(b, [PANICKED]);
        dev.write(0, &[CRASH_LOADED]);
        assert_eq!(exit.reason(), None);
        dev.write(0, &[PANICKED]);
        assert!(matches!(exit.reason(), Some(ExitReason::GuestCrash(m)) if m.contains("panicked")));
    }
}
