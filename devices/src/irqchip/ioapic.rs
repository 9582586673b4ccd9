//! The I/O APIC (Intel 82093AA datasheet): 24 interrupt pins, each routed
//! by a redirection table entry (RTE) to a vector on the APIC bus.
//!
//! Registers are reached indirectly: the guest writes a register index to
//! IOREGSEL (offset 0x00) and accesses it through IOWIN (offset 0x10).
//! Version 0x11 has no EOI register: level-triggered pins learn of the end
//! of their interrupt from the LAPICs' EOI broadcast.
//!
//! Pin levels are logical ("asserted"): like KVM and QEMU, the polarity bit
//! is stored but not applied, since our devices raise lines, not voltages.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::apic_bus::{ApicBus, EoiListener};
use super::message::{DeliveryMode, DestMode};
use crate::{BusDevice, IrqLine};

pub const IOAPIC_PINS: usize = 24;
/// Version 0x11, maximum redirection entry 23 (bits 23:16).
pub const IOAPIC_VERSION: u32 = 0x0017_0011;
/// The size of the register window the IOAPIC decodes.
pub const IOAPIC_MMIO_SIZE: u64 = 0x1000;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARBITRATION: u8 = 0x02;
const REG_REDTBL: u8 = 0x10;

// Redirection table entry bits (datasheet §3.2.4).
const RTE_DEST_LOGICAL: u64 = 1 << 11;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
/// Vector, delivery mode, destination mode, polarity, trigger mode, mask,
/// destination; delivery status and remote IRR are read-only.
const RTE_WRITABLE: u64 = 0xff00_0000_0001_afff;

struct State {
    ioregsel: u8,
    /// 4-bit IOAPIC ID (bits 27:24 of register 0).
    id: u8,
    redtbl: [u64; IOAPIC_PINS],
    /// Asserted input lines, one bit per pin.
    lines: u32,
}

/// The IOAPIC: a [`BusDevice`] for its MMIO window at 0xFEC0_0000
/// ([`IOAPIC_MMIO_SIZE`] bytes).
pub struct Ioapic {
    apic_bus: Arc<ApicBus>,
    state: Mutex<State>,
}

impl Ioapic {
    /// An IOAPIC with ID `id` (the MADT's) and every pin masked.
    pub fn new(apic_bus: Arc<ApicBus>, id: u8) -> Self {
        Ioapic {
            apic_bus,
            state: Mutex::new(State { ioregsel: 0, id: id & 0xf, redtbl: [RTE_MASKED; IOAPIC_PINS], lines: 0 }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pin `gsi`'s redirection entry.
    pub fn redirection_entry(&self, gsi: u32) -> Option<u64> {
        self.lock().redtbl.get(gsi as usize).copied()
    }

    /// Sends pin `pin`'s interrupt if its entry lets it: unmasked and, for
    /// a level-triggered pin, not still awaiting EOI. Called with the state
    /// locked: the IOAPIC → LAPIC lock order is the bus's only one.
    fn service(&self, state: &mut State, pin: usize) {
        let rte = state.redtbl[pin];
        let level = rte & RTE_LEVEL != 0;
        if rte & RTE_MASKED != 0 || (level && rte & RTE_REMOTE_IRR != 0) {
            return;
        }
        let delivered = self.apic_bus.deliver_ioapic(
            (rte >> 56) as u8,
            DestMode::from_bit(rte & RTE_DEST_LOGICAL != 0),
            rte as u8,
            DeliveryMode::from_bits((rte >> 8) as u32),
            level,
        );
        if level && delivered {
            state.redtbl[pin] |= RTE_REMOTE_IRR;
        }
    }

    /// Drives input `gsi` to `level` (asserted or not). An edge pin fires on
    /// a rising edge; a level pin fires while asserted, once per EOI.
    pub fn set_irq(&self, gsi: u32, level: bool) {
        let pin = gsi as usize;
        if pin >= IOAPIC_PINS {
            log::debug!("IOAPIC: no pin for GSI {gsi}");
            return;
        }
        let mut state = self.lock();
        let mask = 1u32 << pin;
        let was = state.lines & mask != 0;
        if level {
            state.lines |= mask;
        } else {
            state.lines &= !mask;
        }
        let level_triggered = state.redtbl[pin] & RTE_LEVEL != 0;
        // Datasheet §3.2.4: an edge on a masked pin is discarded, not held.
        if level && (level_triggered || !was) {
            self.service(&mut state, pin);
        }
    }

    /// One edge on `gsi` (an edge-triggered source's interrupt).
    pub fn pulse(&self, gsi: u32) {
        self.set_irq(gsi, true);
        self.set_irq(gsi, false);
    }

    fn read_register(&self, state: &State) -> u32 {
        match state.ioregsel {
            REG_ID => u32::from(state.id) << 24,
            REG_VERSION => IOAPIC_VERSION,
            REG_ARBITRATION => u32::from(state.id) << 24,
            sel => match rte_index(sel) {
                Some((pin, high)) => (state.redtbl[pin] >> if high { 32 } else { 0 }) as u32,
                None => 0,
            },
        }
    }

    fn write_register(&self, state: &mut State, value: u32) {
        match state.ioregsel {
            REG_ID => state.id = ((value >> 24) & 0xf) as u8,
            sel => {
                let Some((pin, high)) = rte_index(sel) else { return };
                let old = state.redtbl[pin];
                let mut new = if high {
                    (old & 0xffff_ffff) | u64::from(value) << 32
                } else {
                    (old & !0xffff_ffff) | u64::from(value)
                };
                new = (new & RTE_WRITABLE) | (old & RTE_REMOTE_IRR);
                // An edge pin has no remote IRR. Linux relies on this to
                // clear a stuck one on IOAPICs without an EOI register: it
                // flips the pin to edge and back (`__eoi_ioapic_pin`).
                if new & RTE_LEVEL == 0 {
                    new &= !RTE_REMOTE_IRR;
                }
                state.redtbl[pin] = new;
                // An asserted level pin fires as soon as it may (unmasked).
                if new & RTE_LEVEL != 0 && state.lines & (1 << pin) != 0 {
                    self.service(state, pin);
                }
            }
        }
    }
}

/// The pin and half (high dword?) that register index `sel` selects.
fn rte_index(sel: u8) -> Option<(usize, bool)> {
    let index = usize::from(sel.checked_sub(REG_REDTBL)?);
    (index < 2 * IOAPIC_PINS).then_some((index / 2, index % 2 == 1))
}

impl EoiListener for Ioapic {
    /// A LAPIC ended level-triggered `vector`: clear the remote IRR of the
    /// pins using it, and fire again those still asserted.
    fn end_of_interrupt(&self, vector: u8) {
        let mut state = self.lock();
        for pin in 0..IOAPIC_PINS {
            let rte = state.redtbl[pin];
            if rte as u8 != vector || rte & RTE_REMOTE_IRR == 0 {
                continue;
            }
            state.redtbl[pin] &= !RTE_REMOTE_IRR;
            if state.lines & (1 << pin) != 0 {
                self.service(&mut state, pin);
            }
        }
    }
}

impl BusDevice for Ioapic {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let state = self.lock();
        let value = match offset & !3 {
            IOREGSEL => u32::from(state.ioregsel),
            IOWIN => self.read_register(&state),
            _ => 0,
        };
        drop(state);
        let bytes = value.to_le_bytes();
        data.fill(0);
        for (d, s) in data.iter_mut().zip(bytes.iter().skip((offset & 3) as usize)) {
            *d = *s;
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut state = self.lock();
        match offset & !3 {
            IOREGSEL => {
                if let (0, Some(&sel)) = (offset & 3, data.first()) {
                    state.ioregsel = sel;
                }
            }
            IOWIN => {
                // Registers are 32 bits; a narrower write replaces its bytes.
                let mut bytes = self.read_register(&state).to_le_bytes();
                for (d, s) in bytes.iter_mut().skip((offset & 3) as usize).zip(data) {
                    *d = *s;
                }
                self.write_register(&mut state, u32::from_le_bytes(bytes));
            }
            _ => {}
        }
    }
}

/// An IOAPIC input as a device's [`IrqLine`]: each trigger is one edge.
pub struct IoapicIrqLine {
    pub ioapic: Arc<Ioapic>,
    pub gsi: u32,
}

impl IoapicIrqLine {
    pub fn new(ioapic: Arc<Ioapic>, gsi: u32) -> Self {
        IoapicIrqLine { ioapic, gsi }
    }
}

impl IrqLine for IoapicIrqLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.ioapic.pulse(self.gsi);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
