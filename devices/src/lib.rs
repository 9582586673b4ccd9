//! rxvmm's PC device model, shared by every accelerator.
//!
//! Devices sit on an [`IoBus`] (one for port I/O, one for MMIO). Each device
//! guards its own state, so vCPU threads dispatch exits straight to it with no
//! VM-wide lock. Devices raise interrupts through [`IrqLine`] and end the VM
//! through [`VmExitSignal`]; they never know which engine runs the guest.

pub mod acpi;
pub mod bus;
pub mod exit;
pub mod irq;
pub mod irqchip;
pub mod legacy;
pub mod pvpanic;
pub mod virtio;

pub use bus::{BusDevice, BusError, IoBus};
pub use exit::{ExitReason, VmExitSignal};
pub use irq::IrqLine;
