//! The hardware-reduced ACPI sleep control/status and reset register.
//!
//! One byte at port 0x600 serves as the FADT's X_SLEEP_CONTROL_REG,
//! X_SLEEP_STATUS_REG and RESET_REG (as Cloud Hypervisor's
//! AcpiShutdownDevice does).

use std::sync::Arc;

use crate::{BusDevice, ExitReason, VmExitSignal};

/// The I/O port the FADT points its sleep and reset registers at.
pub const ACPI_POWER_PORT: u16 = 0x600;
/// The SLP_TYP the DSDT's `\_S5_` package gives for soft-off.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The value the FADT tells the guest to write to reset the machine.
pub const RESET_VALUE: u8 = 1;

/// Sleep control register: SLP_TYP field position and mask.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
/// Sleep control register: SLP_EN.
const SLP_EN: u8 = 1 << 5;
/// What a guest writes to enter S5: `(5 << 2) | (1 << 5)`.
pub const S5_SLEEP_CONTROL: u8 = (S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN;

/// Power-off and reset requests from the guest's ACPI driver.
pub struct AcpiPower {
    exit: Arc<VmExitSignal>,
}

impl AcpiPower {
    pub fn new(exit: Arc<VmExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPower {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        // No wake status to report.
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if offset != 0 {
            log::debug!("acpi power: ignoring write at offset {offset}");
            return;
        }
        if value == RESET_VALUE {
            log::info!("guest requested an ACPI reset");
            self.exit.request(ExitReason::Reset);
        } else if value & SLP_EN != 0 && (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == S5_SLEEP_TYPE {
            log::info!("guest requested ACPI power-off (S5)");
            self.exit.request(ExitReason::Poweroff);
        } else {
            // E.g. clearing WAK_STS (0x80) before sleeping, or other sleep states.
            log::debug!("acpi power: ignoring write {value:#x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (AcpiPower, Arc<VmExitSignal>) {
        let exit = Arc::new(VmExitSignal::new().unwrap());
        (AcpiPower::new(exit.clone()), exit)
    }

    #[test]
    fn s5_powers_off() {
        let (d, exit) = dev();
        assert_eq!(S5_SLEEP_CONTROL, 0x34);
        d.write(0, &[0x80]); // WAK_STS clear, as Linux does first
        assert_eq!(exit.reason(), None);
        d.write(0, &[S5_SLEEP_CONTROL]);
        assert_eq!(exit.reason(), Some(ExitReason::Poweroff));
    }

    #[test]
    fn reset_value_resets() {
        let (d, exit) = dev();
        d.write(0, &[RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn other_values_are_ignored() {
        let (d, exit) = dev();
        for v in (0..=0xffu8).filter(|&v| v != RESET_VALUE) {
            if v & SLP_EN != 0 && (v >> 2) & 7 == 5 {
                continue;
            }
            d.write(0, &[v]);
        }
        d.write(0, &[]);
        d.write(1, &[RESET_VALUE]);
        let mut buf = [0xffu8; 2];
        d.read(0, &mut buf);
        assert_eq!(buf, [0, 0]);
        assert_eq!(exit.reason(), None);
    }
}
