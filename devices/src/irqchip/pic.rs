//! The two cascaded 8259A PICs of a PC (Intel 8259A datasheet): master at
//! ports 0x20/0x21 (IRQ 0-7), slave at 0xA0/0xA1 (IRQ 8-15) on the master's
//! IRQ 2, plus the edge/level control registers (ELCR) at 0x4D0/0x4D1.
//!
//! Enough for real-mode guests and for Linux's probe (which writes the
//! master's mask and reads it back). Our hardware-reduced ACPI tables tell
//! Linux there is no 8259, so it normally never initialises it; every line
//! is masked until a guest does (real power-on state is undefined).
//! The master's INT output reaches the CPU through LINT0 in ExtINT mode:
//! [`PicOutput`] wakes the vCPU, which takes the vector with [`Pic::intack`]
//! (through [`crate::irqchip::ApicBus::take_interrupt`]).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use super::apic_bus::ExtIntSource;
use crate::{BusDevice, IrqLine};

pub const PIC_MASTER_PORT: u64 = 0x20;
pub const PIC_SLAVE_PORT: u64 = 0xa0;
pub const ELCR_PORT: u64 = 0x4d0;
/// Each of the three ranges above is two ports wide.
pub const PIC_PORT_LEN: u64 = 2;
/// IRQs 0-2 (timer, keyboard, cascade) and 8, 13 (RTC, FPU) are always edge
/// triggered on PIIX-style chipsets.
const ELCR_WRITABLE: [u8; 2] = [0xf8, 0xde];
const CASCADE_IRQ: u8 = 2;

/// The master's INT pin.
pub trait PicOutput: Send + Sync {
    /// INT went high.
    fn intr_raised(&self);
}

/// One 8259A.
#[derive(Debug, Default, Clone)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    /// Input levels as last seen, for edge detection.
    last_irr: u8,
    elcr: u8,
    vector_base: u8,
    /// Rotation: the IRQ with the highest priority is `priority_add`.
    priority_add: u8,
    /// 0: operational, 1-3: waiting for ICW2-4.
    init_state: u8,
    needs_icw4: bool,
    single: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    special_mask: bool,
    /// OCW3 RIS: port 0 reads ISR instead of IRR.
    read_isr: bool,
    /// OCW3 P: the next read is a poll (an INTA in disguise).
    poll: bool,
}

impl Chip {
    fn new() -> Self {
        Chip { imr: 0xff, ..Chip::default() }
    }

    /// Priority 0 (highest) to 7 of the best IRQ in `mask`; 8 if none.
    fn priority(&self, mask: u8) -> u8 {
        (0..8).find(|p| mask & (1 << ((p + self.priority_add) & 7)) != 0).unwrap_or(8)
    }

    /// The IRQ the chip would signal now, if any: the best unmasked request
    /// above everything in service (datasheet "Fully Nested Mode").
    fn pending(&self, is_master: bool) -> Option<u8> {
        let priority = self.priority(self.irr & !self.imr);
        if priority == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        // Special fully nested mode lets the slave interrupt its own
        // in-service IRQ through the master's cascade input.
        if self.special_fully_nested && is_master {
            in_service &= !(1 << CASCADE_IRQ);
        }
        (priority < self.priority(in_service)).then_some((priority + self.priority_add) & 7)
    }

    fn set_input(&mut self, irq: u8, level: bool) {
        let mask = 1 << irq;
        if self.elcr & mask != 0 {
            // Level-triggered: the request follows the line.
            if level {
                self.irr |= mask;
            } else {
                self.irr &= !mask;
            }
        } else if level && self.last_irr & mask == 0 {
            self.irr |= mask;
        }
        if level {
            self.last_irr |= mask;
        } else {
            self.last_irr &= !mask;
        }
    }

    /// The INTA cycle's bookkeeping for `irq`.
    fn ack(&mut self, irq: u8) {
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= 1 << irq;
        }
        // A level request stays until the device drops the line.
        if self.elcr & (1 << irq) == 0 {
            self.irr &= !(1 << irq);
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            // ICW1 (datasheet "Initialization Command Words"): edge
            // detection reset, IMR cleared, IRQ 7 lowest priority, special
            // mask off, status read = IRR. LTIM is ignored: the ELCR rules.
            *self = Chip {
                elcr: self.elcr,
                irr: self.irr & self.elcr,
                init_state: 1,
                needs_icw4: value & 1 != 0,
                single: value & 2 != 0,
                ..Chip::default()
            };
        } else if value & 0x08 != 0 {
            // OCW3.
            if value & 0x04 != 0 {
                self.poll = true;
            }
            if value & 0x02 != 0 {
                self.read_isr = value & 1 != 0;
            }
            if value & 0x40 != 0 {
                self.special_mask = value & 0x20 != 0;
            }
        } else {
            // OCW2: R, SL, EOI in bits 7:5, the IRQ level in 2:0.
            let irq = value & 7;
            match value >> 5 {
                0 => self.rotate_on_auto_eoi = false,
                4 => self.rotate_on_auto_eoi = true,
                // Non-specific EOI (with rotation for 5).
                cmd @ (1 | 5) => {
                    let priority = self.priority(self.isr);
                    if priority != 8 {
                        let irq = (priority + self.priority_add) & 7;
                        self.isr &= !(1 << irq);
                        if cmd == 5 {
                            self.priority_add = (irq + 1) & 7;
                        }
                    }
                }
                3 => self.isr &= !(1 << irq),
                6 => self.priority_add = (irq + 1) & 7,
                7 => {
                    self.isr &= !(1 << irq);
                    self.priority_add = (irq + 1) & 7;
                }
                _ => {}
            }
        }
    }

    fn write_data(&mut self, value: u8) {
        self.init_state = match self.init_state {
            0 => {
                self.imr = value; // OCW1
                0
            }
            1 => {
                self.vector_base = value & 0xf8; // ICW2
                match (self.single, self.needs_icw4) {
                    (false, _) => 2,
                    (true, true) => 3,
                    (true, false) => 0,
                }
            }
            // ICW3: the cascade wiring is fixed here.
            2 if self.needs_icw4 => 3,
            2 => 0,
            _ => {
                // ICW4: SFNM (bit 4), AEOI (bit 1); buffered mode and
                // 8080 mode don't matter to a CPU that only sees vectors.
                self.special_fully_nested = value & 0x10 != 0;
                self.auto_eoi = value & 0x02 != 0;
                0
            }
        };
    }
}

struct State {
    /// Master, slave.
    chips: [Chip; 2],
    /// The master's INT output as last signalled.
    int: bool,
}

impl State {
    /// Propagates the slave's INT to the master's IRQ 2 and returns the
    /// master's INT.
    fn update(&mut self) -> bool {
        // The slave's INT is a level into the master's IR2: it holds until
        // the INTA cycle, and a request that went away before then leaves
        // no stale cascade request behind.
        let slave_int = self.chips[1].pending(false).is_some();
        let master = &mut self.chips[0];
        if slave_int {
            master.irr |= 1 << CASCADE_IRQ;
        } else {
            master.irr &= !(1 << CASCADE_IRQ);
        }
        master.pending(true).is_some()
    }

    /// An INTA cycle (or poll): the vector of the best request, or the
    /// chip's IRQ 7 vector when the request went away (a spurious IRQ).
    fn intack(&mut self) -> u8 {
        self.update();
        let vector = match self.chips[0].pending(true) {
            Some(CASCADE_IRQ) => {
                let slave = &mut self.chips[1];
                let vector = match slave.pending(false) {
                    Some(irq) => {
                        slave.ack(irq);
                        slave.vector_base | irq
                    }
                    None => slave.vector_base | 7,
                };
                self.chips[0].ack(CASCADE_IRQ);
                vector
            }
            Some(irq) => {
                self.chips[0].ack(irq);
                self.chips[0].vector_base | irq
            }
            None => self.chips[0].vector_base | 7,
        };
        self.update();
        vector
    }
}

/// The master/slave pair.
pub struct Pic {
    state: Mutex<State>,
    output: OnceLock<Weak<dyn PicOutput>>,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    pub fn new() -> Self {
        Pic { state: Mutex::new(State { chips: [Chip::new(), Chip::new()], int: false }), output: OnceLock::new() }
    }

    /// Connects the master's INT pin (once).
    pub fn connect(&self, output: Weak<dyn PicOutput>) {
        if self.output.set(output).is_err() {
            log::warn!("8259: output already connected");
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state, then signals a rising INT (outside the lock:
    /// the receiver takes LAPIC locks, and LAPIC holders call back into us).
    /// While INT stays high the CPU keeps taking interrupts without prompts.
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, rose) = {
            let mut state = self.lock();
            let result = f(&mut state);
            let int = state.update();
            let rose = int && !state.int;
            state.int = int;
            (result, rose)
        };
        if rose {
            if let Some(out) = self.output.get().and_then(Weak::upgrade) {
                out.intr_raised();
            }
        }
        result
    }

    /// Drives ISA IRQ `irq` (0-15) to `level`.
    pub fn set_irq(&self, irq: u32, level: bool) {
        let Ok(irq) = u8::try_from(irq) else { return };
        if irq >= 16 || irq == CASCADE_IRQ {
            return;
        }
        self.with_state(|s| s.chips[usize::from(irq >> 3)].set_input(irq & 7, level));
    }

    /// One edge on IRQ `irq`.
    pub fn pulse(&self, irq: u32) {
        self.set_irq(irq, true);
        self.set_irq(irq, false);
    }

    /// Whether the master's INT output is asserted.
    pub fn has_interrupt(&self) -> bool {
        self.lock().update()
    }

    /// The CPU's interrupt acknowledge: the vector to take.
    pub fn intack(&self) -> u8 {
        self.with_state(State::intack)
    }

    /// The port range devices for the I/O bus: master (0x20), slave (0xA0)
    /// and ELCR (0x4D0), each [`PIC_PORT_LEN`] wide.
    pub fn ports(self: &Arc<Self>) -> [(u64, Arc<dyn BusDevice>); 3] {
        let port = |kind| Arc::new(PicPort { pic: self.clone(), kind }) as Arc<dyn BusDevice>;
        [
            (PIC_MASTER_PORT, port(PortKind::Master)),
            (PIC_SLAVE_PORT, port(PortKind::Slave)),
            (ELCR_PORT, port(PortKind::Elcr)),
        ]
    }

    fn read_port(&self, kind: PortKind, offset: u64) -> u8 {
        self.with_state(|s| {
            let chip = match kind {
                PortKind::Elcr => return s.chips.get(offset as usize).map_or(0xff, |c| c.elcr),
                PortKind::Master => 0,
                PortKind::Slave => 1,
            };
            if s.chips[chip].poll {
                // OCW3 poll: acknowledge like INTA, report 0x80 | IRQ.
                s.chips[chip].poll = false;
                s.update();
                return match s.chips[chip].pending(chip == 0) {
                    Some(irq) => {
                        s.chips[chip].ack(irq);
                        0x80 | irq
                    }
                    None => 0,
                };
            }
            let c = &s.chips[chip];
            match (offset, c.read_isr) {
                (0, true) => c.isr,
                (0, false) => c.irr,
                _ => c.imr,
            }
        })
    }

    fn write_port(&self, kind: PortKind, offset: u64, value: u8) {
        self.with_state(|s| {
            let chip = match kind {
                PortKind::Elcr => {
                    if let (Some(c), Some(mask)) =
                        (s.chips.get_mut(offset as usize), ELCR_WRITABLE.get(offset as usize))
                    {
                        c.elcr = value & mask;
                    }
                    return;
                }
                PortKind::Master => &mut s.chips[0],
                PortKind::Slave => &mut s.chips[1],
            };
            match offset {
                0 => chip.write_command(value),
                _ => chip.write_data(value),
            }
        });
    }
}

impl ExtIntSource for Pic {
    fn has_interrupt(&self) -> bool {
        Pic::has_interrupt(self)
    }

    fn intack(&self) -> u8 {
        Pic::intack(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortKind {
    Master,
    Slave,
    Elcr,
}

/// One of the PIC's port ranges on the I/O bus (the bus passes offsets from
/// each range's base, so each range needs its own device).
pub struct PicPort {
    pic: Arc<Pic>,
    kind: PortKind,
}

impl BusDevice for PicPort {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if let Some((first, rest)) = data.split_first_mut() {
            *first = self.pic.read_port(self.kind, offset);
            rest.fill(0);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            self.pic.write_port(self.kind, offset, value);
        }
    }
}

/// An ISA IRQ as a device's [`IrqLine`] into the 8259 only.
pub struct PicIrqLine {
    pub pic: Arc<Pic>,
    pub irq: u32,
}

impl IrqLine for PicIrqLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.pic.pulse(self.irq);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
