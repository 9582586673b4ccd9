//! The 8254 programmable interval timer (Intel 8254 datasheet) at ports
//! 0x40-0x43, and system control port B (0x61) whose bit 0 gates channel 2
//! and whose bit 5 reads channel 2's output.
//!
//! Counters are computed from host time through the VM's [`GuestClock`] at
//! [`PIT_HZ`], never decremented by guest instructions, so Linux's TSC
//! calibration against channel 2 (`pit_calibrate_tsc`, `quick_pit_calibrate`:
//! gate on through port 0x61, mode 0, poll OUT2 or the count) measures the
//! real rate. Channel 0's OUT rising edges raise IRQ 0; the PIT has no
//! thread: a vCPU sleeps until [`Pit::next_deadline`] and calls
//! [`Pit::poll`].
//!
//! Simplifications: a new count takes effect at once in every mode (the
//! 8254 waits for the end of the period in modes 2 and 3), and counting
//! starts on the write rather than on the next clock edge.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::clock::{GuestClock, PIT_HZ};
use crate::{BusDevice, IrqLine};

pub const PIT_BASE_PORT: u64 = 0x40;
pub const PIT_PORT_LEN: u64 = 4;
pub const PORT_B: u64 = 0x61;

/// Channel 0 interrupts come at most this often (in PIT ticks, ~50 µs, the
/// limit KVM's in-kernel PIT applies), so a tiny count can't swamp a vCPU.
const MIN_IRQ_PERIOD_TICKS: u64 = PIT_HZ / 20_000;

// Port B bits.
const PORT_B_GATE2: u8 = 0x01;
const PORT_B_SPEAKER: u8 = 0x02;
/// Parity/channel-check enables: stored, no effect.
const PORT_B_CHECKS: u8 = 0x0c;
const PORT_B_REFRESH: u8 = 0x10;
const PORT_B_OUT2: u8 = 0x20;

/// Counter register access (control word bits 5:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Lsb = 1,
    Msb = 2,
    LsbMsb = 3,
}

#[derive(Debug, Clone)]
struct Channel {
    mode: u8,
    bcd: bool,
    access: Access,
    /// The count in binary: 1..=65536 (10000 in BCD); a written 0 means the
    /// maximum.
    reload: u64,
    gate: bool,
    /// A count was written since the control word.
    loaded: bool,
    /// The PIT tick counting started at with `reload` (None: waiting for a
    /// count or, in modes 1 and 5, for a gate trigger).
    start: Option<u64>,
    /// Ticks counted when the gate suspended counting (modes 0, 2, 3, 4).
    frozen: Option<u64>,
    /// The LSB of an LSB-then-MSB write.
    write_lsb: Option<u8>,
    /// The next live read in LSB-then-MSB access returns the MSB.
    read_msb_next: bool,
    /// A latched count and whether its LSB was read already.
    latch: Option<(u16, bool)>,
    status_latch: Option<u8>,
}

impl Channel {
    fn new(gate: bool) -> Self {
        Channel {
            mode: 0,
            bcd: false,
            access: Access::LsbMsb,
            reload: 0x10000,
            gate,
            loaded: false,
            start: None,
            frozen: None,
            write_lsb: None,
            read_msb_next: false,
            latch: None,
            status_latch: None,
        }
    }

    fn modulus(&self) -> u64 {
        if self.bcd {
            10_000
        } else {
            0x10000
        }
    }

    /// Ticks counted since the count started, if it has.
    fn elapsed(&self, now: u64) -> Option<u64> {
        let start = self.start?;
        Some(self.frozen.unwrap_or_else(|| now.saturating_sub(start)))
    }

    /// The counting element (binary), as the datasheet's mode descriptions
    /// have it.
    fn count(&self, now: u64) -> u64 {
        let n = self.reload;
        let Some(d) = self.elapsed(now) else { return n % self.modulus() };
        match self.mode {
            // Mode 3 counts down by two each half period.
            3 => n - (2 * d) % n,
            2 => n - d % n,
            // Modes 0, 1, 4, 5 wrap through the modulus after terminal count.
            _ => (n + self.modulus() - d % self.modulus()) % self.modulus(),
        }
    }

    fn out(&self, now: u64) -> bool {
        let n = self.reload;
        let Some(d) = self.elapsed(now) else { return self.mode != 0 };
        match self.mode {
            0 | 1 => d >= n,
            // A suspended mode 2/3 counter holds OUT high.
            2 | 3 if self.frozen.is_some() => true,
            // Low for one clock as the count passes 1.
            2 => n < 2 || d % n != n - 1,
            3 => d % n < n.div_ceil(2),
            // Low for one clock at terminal count.
            _ => d != n,
        }
    }

    /// The first tick after `now` at which OUT rises (the IRQ 0 edge).
    fn next_rising_edge(&self, now: u64) -> Option<u64> {
        let start = self.start?;
        if self.frozen.is_some() {
            return None;
        }
        let (n, d) = (self.reload, now.saturating_sub(start));
        match self.mode {
            0 | 1 => (d < n).then_some(start + n),
            2 | 3 => Some(start + (d / n + 1) * n),
            _ => (d <= n).then_some(start + n + 1),
        }
    }

    fn status(&self, now: u64) -> u8 {
        u8::from(self.out(now)) << 7
            | u8::from(!self.loaded) << 6
            | (self.access as u8) << 4
            | self.mode << 1
            | u8::from(self.bcd)
    }

    fn latch_count(&mut self, now: u64) {
        // A second latch before the first is read is ignored.
        if self.latch.is_none() {
            self.latch = Some((self.read_value(now), false));
        }
    }

    /// The counter as the guest reads it (BCD-encoded in BCD mode).
    fn read_value(&self, now: u64) -> u16 {
        let count = self.count(now) % self.modulus();
        if self.bcd {
            (0..4).rev().fold(0, |acc, digit| acc << 4 | (count / 10u64.pow(digit) % 10) as u16)
        } else {
            count as u16
        }
    }

    fn control(&mut self, value: u8) {
        let access = match (value >> 4) & 3 {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::LsbMsb,
        };
        // Modes 6 and 7 are aliases of 2 and 3.
        let mode = match (value >> 1) & 7 {
            m @ 6..=7 => m - 4,
            m => m,
        };
        *self = Channel { mode, bcd: value & 1 != 0, access, ..Channel::new(self.gate) };
    }

    fn load(&mut self, raw: u16, now: u64) {
        let value = if self.bcd {
            (0..4).fold(0u64, |acc, i| acc * 10 + u64::from((raw >> (12 - 4 * i)) & 0xf).min(9))
        } else {
            u64::from(raw)
        };
        self.reload = if value == 0 { self.modulus() } else { value };
        self.loaded = true;
        self.frozen = None;
        self.start = match self.mode {
            // Hardware-triggered modes wait for a gate rising edge.
            1 | 5 => None,
            _ => Some(now),
        };
        if !self.gate && matches!(self.mode, 0 | 2 | 3 | 4) {
            self.frozen = Some(0);
        }
    }

    fn write(&mut self, value: u8, now: u64) {
        match self.access {
            Access::Lsb => self.load(value.into(), now),
            Access::Msb => self.load(u16::from(value) << 8, now),
            Access::LsbMsb => match self.write_lsb.take() {
                Some(lsb) => self.load(u16::from(lsb) | u16::from(value) << 8, now),
                None => self.write_lsb = Some(value),
            },
        }
    }

    fn read(&mut self, now: u64) -> u8 {
        if let Some(status) = self.status_latch.take() {
            return status;
        }
        if let Some((value, lsb_done)) = self.latch {
            let [lsb, msb] = value.to_le_bytes();
            return match self.access {
                Access::Lsb => {
                    self.latch = None;
                    lsb
                }
                Access::Msb => {
                    self.latch = None;
                    msb
                }
                Access::LsbMsb if !lsb_done => {
                    self.latch = Some((value, true));
                    lsb
                }
                Access::LsbMsb => {
                    self.latch = None;
                    msb
                }
            };
        }
        let [lsb, msb] = self.read_value(now).to_le_bytes();
        match self.access {
            Access::Lsb => lsb,
            Access::Msb => msb,
            Access::LsbMsb => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    lsb
                } else {
                    msb
                }
            }
        }
    }

    /// The gate input changed (datasheet "Gate Pin Operations Summary").
    fn set_gate(&mut self, gate: bool, now: u64) {
        if gate == self.gate {
            return;
        }
        self.gate = gate;
        match self.mode {
            1 | 5 if gate && self.loaded => {
                self.start = Some(now);
                self.frozen = None;
            }
            2 | 3 if gate && self.loaded => {
                // A rising gate reloads the counter.
                self.start = Some(now);
                self.frozen = None;
            }
            0 | 2 | 3 | 4 if !gate => self.frozen = self.elapsed(now),
            0 | 4 => {
                if let (Some(counted), Some(_)) = (self.frozen.take(), self.start) {
                    self.start = Some(now.saturating_sub(counted));
                }
            }
            _ => {}
        }
    }
}

struct State {
    channels: [Channel; 3],
    speaker: bool,
    checks: u8,
    refresh: bool,
    /// The PIT tick of channel 0's next OUT rising edge.
    next_irq: Option<u64>,
}

/// The 8254 and port 0x61.
pub struct Pit {
    clock: Arc<GuestClock>,
    irq0: Arc<dyn IrqLine>,
    state: Mutex<State>,
}

impl Pit {
    /// A PIT whose channel 0 raises `irq0`. Channels wait for the guest to
    /// program them (no firmware here does it for them).
    pub fn new(clock: Arc<GuestClock>, irq0: Arc<dyn IrqLine>) -> Self {
        Pit {
            clock,
            irq0,
            state: Mutex::new(State {
                // Channels 0 and 1 have their gates tied high on a PC.
                channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
                speaker: false,
                checks: 0,
                refresh: false,
                next_irq: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tick(&self, now: Instant) -> u64 {
        self.clock.ticks_at(now, PIT_HZ)
    }

    /// Counting starts on the first tick boundary at or after a write, so
    /// an expiry is never earlier than the programmed count.
    fn start_tick(&self) -> u64 {
        self.clock.ticks_at_ceil(Instant::now(), PIT_HZ)
    }

    /// The port 0x61 device, sharing this PIT's state.
    pub fn port_b(self: &Arc<Self>) -> Arc<dyn BusDevice> {
        Arc::new(PortB(self.clone()))
    }

    /// When channel 0 next raises IRQ 0, if programmed to.
    pub fn next_deadline(&self) -> Option<Instant> {
        let next = self.lock().next_irq?;
        Some(self.clock.instant_for_ticks(next, PIT_HZ))
    }

    /// Brings channel 0 up to `now`, raising IRQ 0 once if an edge passed
    /// (edges missed by a late poll coalesce, as lost timer ticks do).
    pub fn poll(&self, now: Instant) -> bool {
        let tick = self.tick(now);
        {
            let mut state = self.lock();
            if state.next_irq.is_none_or(|t| tick < t) {
                return false;
            }
            let after = tick.saturating_add(MIN_IRQ_PERIOD_TICKS - 1);
            state.next_irq = state.channels[0].next_rising_edge(after);
        }
        if let Err(e) = self.irq0.trigger() {
            log::warn!("PIT: raising IRQ 0: {e}");
        }
        true
    }

    fn read_counter(&self, channel: usize) -> u8 {
        let tick = self.tick(Instant::now());
        self.lock().channels.get_mut(channel).map_or(0xff, |c| c.read(tick))
    }

    fn write_counter(&self, channel: usize, value: u8) {
        let tick = self.start_tick();
        let mut state = self.lock();
        if let Some(c) = state.channels.get_mut(channel) {
            c.write(value, tick);
        }
        if channel == 0 {
            state.next_irq = state.channels[0].next_rising_edge(tick);
        }
    }

    fn write_control(&self, value: u8) {
        let tick = self.tick(Instant::now());
        let mut state = self.lock();
        let select = usize::from(value >> 6);
        if select == 3 {
            // Read-back (datasheet "Read-Back Command"): bits 3:1 select
            // channels; bit 5 clear latches counts, bit 4 clear statuses.
            for (i, c) in state.channels.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                if value & 0x10 == 0 && c.status_latch.is_none() {
                    c.status_latch = Some(c.status(tick));
                }
                if value & 0x20 == 0 {
                    c.latch_count(tick);
                }
            }
            return;
        }
        let channel = &mut state.channels[select];
        if value & 0x30 == 0 {
            channel.latch_count(tick);
        } else {
            channel.control(value);
            if select == 0 {
                state.next_irq = None;
            }
        }
    }

    fn read_port_b(&self) -> u8 {
        let tick = self.tick(Instant::now());
        let mut state = self.lock();
        // The refresh bit toggles on every read: loops that wait for a
        // toggle always progress.
        state.refresh = !state.refresh;
        let c2 = &state.channels[2];
        let mut value = state.checks;
        for (on, bit) in [
            (c2.gate, PORT_B_GATE2),
            (state.speaker, PORT_B_SPEAKER),
            (state.refresh, PORT_B_REFRESH),
            (c2.out(tick), PORT_B_OUT2),
        ] {
            if on {
                value |= bit;
            }
        }
        value
    }

    fn write_port_b(&self, value: u8) {
        let tick = self.start_tick();
        let mut state = self.lock();
        state.speaker = value & PORT_B_SPEAKER != 0;
        state.checks = value & PORT_B_CHECKS;
        state.channels[2].set_gate(value & PORT_B_GATE2 != 0, tick);
    }
}

impl BusDevice for Pit {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let Some((first, rest)) = data.split_first_mut() else { return };
        rest.fill(0);
        // The control word register is write-only.
        *first = match offset {
            0..=2 => self.read_counter(offset as usize),
            _ => 0,
        };
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0..=2 => self.write_counter(offset as usize, value),
            3 => self.write_control(value),
            _ => {}
        }
    }
}

/// System control port B (0x61).
struct PortB(Arc<Pit>);

impl BusDevice for PortB {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let Some((first, rest)) = data.split_first_mut() else { return };
        rest.fill(0);
        *first = if offset == 0 { self.0.read_port_b() } else { 0xff };
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if let (0, Some(&value)) = (offset, data.first()) {
            self.0.write_port_b(value);
        }
    }
}

#[cfg(test)]
mod tests;
