//! Interrupt controllers and timers for engines without in-kernel ones
//! (TCG): a local APIC per vCPU on an [`ApicBus`], the IOAPIC, the 8259
//! pair, the 8254 PIT, and the [`GuestClock`] all guest time derives from.
//!
//! Nothing here runs on its own: no threads, no host timers. The vCPU
//! threads drive it: they dispatch LAPIC MMIO/MSR accesses to the bus, take
//! interrupts at instruction boundaries, and sleep in HLT until
//! [`IrqChip::next_deadline`] or a [`CpuWakeup`] call, then [`IrqChip::poll`].
//! Under KVM none of this is used: the kernel has its own.

pub mod apic_bus;
pub mod clock;
pub mod ioapic;
pub mod lapic;
pub mod message;
pub mod pic;
pub mod pit;

use std::sync::{Arc, Weak};
use std::time::Instant;

pub use apic_bus::{ApicBus, ApicBusError, CpuWakeup, EoiListener, ExtIntSource};
pub use clock::{GuestClock, APIC_TIMER_HZ, CRYSTAL_HZ, PIT_HZ, TSC_CRYSTAL_RATIO, TSC_HZ};
pub use ioapic::{Ioapic, IoapicIrqLine, IOAPIC_MMIO_SIZE, IOAPIC_PINS};
pub use lapic::{ApicBaseChange, ApicError, ApicMode, Lapic, XAPIC_MMIO_SIZE};
pub use message::{DeliveryMode, DestMode, InterruptMessage, Shorthand};
pub use pic::{Pic, PicOutput};
pub use pit::Pit;

use crate::IrqLine;

/// The vCPU whose thread polls the PIT (the BSP, which always runs).
pub const PIT_POLL_CPU: u8 = 0;
/// ISA IRQs (0-15) reach both the 8259 and the same-numbered IOAPIC pin:
/// the MADT has no interrupt source overrides.
const ISA_IRQS: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IrqChipError {
    #[error(transparent)]
    ApicBus(#[from] ApicBusError),
    /// GSIs are IOAPIC pins 0-23.
    #[error("no interrupt line for GSI {0}")]
    Gsi(u32),
}

/// A VM's interrupt controllers and timers, wired together.
pub struct IrqChip {
    pub clock: Arc<GuestClock>,
    pub apic_bus: Arc<ApicBus>,
    pub ioapic: Arc<Ioapic>,
    pub pic: Arc<Pic>,
    pub pit: Arc<Pit>,
}

impl IrqChip {
    /// Everything for `vcpus` vCPUs, the IOAPIC with ID `vcpus` (as in the
    /// MADT), the PIT's channel 0 on ISA IRQ 0.
    pub fn new(vcpus: u8) -> Result<Self, IrqChipError> {
        Self::with_clock(Arc::new(GuestClock::new()), vcpus)
    }

    pub fn with_clock(clock: Arc<GuestClock>, vcpus: u8) -> Result<Self, IrqChipError> {
        let apic_bus = Arc::new(ApicBus::new(clock.clone(), vcpus)?);
        let ioapic = Arc::new(Ioapic::new(apic_bus.clone(), vcpus));
        let pic = Arc::new(Pic::new());
        // Back-references are weak: the bus owns neither the IOAPIC nor the
        // 8259, which hold it strongly.
        apic_bus.set_eoi_listener(Arc::downgrade(&ioapic) as Weak<dyn EoiListener>);
        apic_bus.set_extint_source(Arc::downgrade(&pic) as Weak<dyn ExtIntSource>);
        pic.connect(Arc::downgrade(&apic_bus) as Weak<dyn PicOutput>);
        let irq0 = Arc::new(IsaIrqLine { ioapic: ioapic.clone(), pic: pic.clone(), irq: 0 });
        let pit = Arc::new(Pit::new(clock.clone(), irq0));
        Ok(IrqChip { clock, apic_bus, ioapic, pic, pit })
    }

    /// Interrupt line `gsi` for a device (the engine's `Vm::irq_line`):
    /// ISA IRQs 0-15 go to the 8259 and the IOAPIC, 16-23 to the IOAPIC.
    pub fn irq_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>, IrqChipError> {
        if gsi as usize >= IOAPIC_PINS {
            return Err(IrqChipError::Gsi(gsi));
        }
        if gsi < ISA_IRQS {
            Ok(Arc::new(IsaIrqLine { ioapic: self.ioapic.clone(), pic: self.pic.clone(), irq: gsi }))
        } else {
            Ok(Arc::new(IoapicIrqLine::new(self.ioapic.clone(), gsi)))
        }
    }

    /// When vCPU `cpu` must next call [`Self::poll`]: its LAPIC timer and,
    /// on [`PIT_POLL_CPU`], the PIT.
    pub fn next_deadline(&self, cpu: u8) -> Option<Instant> {
        let lapic = self.apic_bus.next_timer_deadline(cpu);
        let pit = if cpu == PIT_POLL_CPU { self.pit.next_deadline() } else { None };
        match (lapic, pit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires vCPU `cpu`'s timers that are due at `now`.
    pub fn poll(&self, cpu: u8, now: Instant) {
        self.apic_bus.poll_timer(cpu, now);
        if cpu == PIT_POLL_CPU {
            self.pit.poll(now);
        }
    }
}

/// An ISA IRQ line: one edge on the 8259 input and on the IOAPIC pin. The
/// guest unmasks whichever controller it uses (Linux leaves the 8259, which
/// starts fully masked, alone).
pub struct IsaIrqLine {
    ioapic: Arc<Ioapic>,
    pic: Arc<Pic>,
    irq: u32,
}

impl IrqLine for IsaIrqLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.pic.pulse(self.irq);
        self.ioapic.pulse(self.irq);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
