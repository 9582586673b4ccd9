//! The i8042 PS/2 controller at ports 0x60 and 0x64, kept to what a microVM needs:
//! the reset line (command 0xFE) and answers to the probe commands so a guest
//! that looks for a controller finds a quiet one at once instead of timing out.
//!
//! There is no keyboard or mouse behind it and no IRQ 1/12: the keyboard ACKs
//! bytes into the output buffer, and the AUX channel reports itself broken so
//! Linux gives up on it immediately (its AUX probe would otherwise wait 250 ms
//! for an IRQ 12 that never comes). With our FADT not claiming an 8042, Linux
//! under ACPI skips the probe entirely; all of this matters for `acpi=off`.
//!
//! Port 0x61 between them (system control port B) is not the i8042's: it
//! gates PIT channel 2 and reads its output, so it lives with the PIT
//! ([`crate::irqchip::Pit::port_b`]). Register the data port at 0x60 and
//! [`I8042::command_port`] at 0x64, one port each.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::{BusDevice, ExitReason, VmExitSignal};

/// Offset of the data port (0x60).
pub const DATA_OFFSET: u64 = 0;
/// Offset of the command (write) / status (read) port (0x64).
pub const COMMAND_OFFSET: u64 = 4;
/// "Pulse output line 0" — the CPU reset line.
pub const CMD_RESET_CPU: u8 = 0xFE;

// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
const STATUS_KBD_UNLOCKED: u8 = 0x10;
const STATUS_AUX_DATA: u8 = 0x20;

// Controller configuration byte ("CTR") bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM_FLAG: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

// Output port bits: bit 0 low holds the CPU in reset, bit 1 is the A20 gate.
const OUTPUT_PORT_RESET: u8 = 0x01;
const OUTPUT_PORT_A20: u8 = 0x02;

/// What offsets other than the data and command ports read: an open ISA bus.
/// Were the device still registered over 0x60-0x64, port 0x61 would read
/// OUT2 (bit 5) high, so Linux's PIT calibration loop ends instead of spinning.
const OPEN_BUS: u8 = 0xff;

// Keyboard replies.
const KBD_ACK: u8 = 0xFA;
const KBD_SELF_TEST_OK: u8 = 0xAA;
const KBD_ECHO: u8 = 0xEE;

/// Replies never queue deeper than this; each command produces at most 3.
const MAX_OUTPUT: usize = 16;

/// Commands whose parameter byte arrives next on the data port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataTarget {
    Keyboard,
    WriteCtr,
    WriteOutputPort,
    KbdOutputBuffer,
    AuxOutputBuffer,
    AuxDevice,
    IgnoredRam,
}

struct State {
    ctr: u8,
    output_port: u8,
    /// Bytes for the guest; `true` marks bytes from the AUX channel.
    output: VecDeque<(u8, bool)>,
    last_data: u8,
    next_data: DataTarget,
    last_was_command: bool,
}

impl State {
    fn push(&mut self, byte: u8, aux: bool) {
        if self.output.len() < MAX_OUTPUT {
            self.output.push_back((byte, aux));
        } else {
            log::debug!("i8042: output buffer full, dropping {byte:#x}");
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_KBD_UNLOCKED;
        if self.ctr & CTR_SYSTEM_FLAG != 0 {
            status |= STATUS_SYSTEM_FLAG;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        match self.output.front() {
            Some((_, true)) => status |= STATUS_OUTPUT_FULL | STATUS_AUX_DATA,
            Some((_, false)) => status |= STATUS_OUTPUT_FULL,
            None => {}
        }
        status
    }

    /// Handles a controller command; returns true if it resets the CPU.
    fn command(&mut self, cmd: u8) -> bool {
        self.last_was_command = true;
        self.next_data = DataTarget::Keyboard;
        match cmd {
            0x20 => self.push(self.ctr, false),
            // Other internal RAM bytes read as zero.
            0x21..=0x3f => self.push(0, false),
            0x60 => self.next_data = DataTarget::WriteCtr,
            0x61..=0x7f => self.next_data = DataTarget::IgnoredRam,
            0xa7 => self.ctr |= CTR_AUX_DISABLE,
            0xa8 => self.ctr &= !CTR_AUX_DISABLE,
            // AUX interface test: "clock line stuck low" — no mouse here.
            0xa9 => self.push(0x01, false),
            0xaa => {
                self.ctr |= CTR_SYSTEM_FLAG;
                self.push(0x55, false);
            }
            // Keyboard interface test: passed.
            0xab => self.push(0x00, false),
            0xad => self.ctr |= CTR_KBD_DISABLE,
            0xae => self.ctr &= !CTR_KBD_DISABLE,
            0xc0 | 0xe0 => self.push(0x00, false),
            0xd0 => self.push(self.output_port, false),
            0xd1 => self.next_data = DataTarget::WriteOutputPort,
            0xd2 => self.next_data = DataTarget::KbdOutputBuffer,
            0xd3 => self.next_data = DataTarget::AuxOutputBuffer,
            0xd4 => self.next_data = DataTarget::AuxDevice,
            // Pulse output lines: a clear bit 0 pulses the reset line.
            0xf0..=0xff => return cmd & 0x01 == 0,
            _ => log::debug!("i8042: ignoring command {cmd:#x}"),
        }
        false
    }

    /// Handles a data-port write; returns true if it resets the CPU.
    fn data(&mut self, value: u8) -> bool {
        self.last_was_command = false;
        let target = std::mem::replace(&mut self.next_data, DataTarget::Keyboard);
        match target {
            DataTarget::WriteCtr => self.ctr = value,
            DataTarget::WriteOutputPort => {
                self.output_port = value;
                return value & OUTPUT_PORT_RESET == 0;
            }
            DataTarget::KbdOutputBuffer => self.push(value, false),
            // The AUX loopback is reported broken (see the module docs), so a
            // probing guest decides at once that there is no AUX port.
            DataTarget::AuxOutputBuffer => self.push(0xff, true),
            DataTarget::AuxDevice | DataTarget::IgnoredRam => {}
            DataTarget::Keyboard => match value {
                0xff => {
                    self.push(KBD_ACK, false);
                    self.push(KBD_SELF_TEST_OK, false);
                }
                // Identify: an MF2 keyboard.
                0xf2 => {
                    self.push(KBD_ACK, false);
                    self.push(0xab, false);
                    self.push(0x83, false);
                }
                0xee => self.push(KBD_ECHO, false),
                _ => self.push(KBD_ACK, false),
            },
        }
        false
    }

    fn read_data(&mut self) -> u8 {
        // An empty buffer reads back the last byte, as the hardware does.
        if let Some((byte, _)) = self.output.pop_front() {
            self.last_data = byte;
        }
        self.last_data
    }
}

/// The i8042 controller; resets the VM through its [`VmExitSignal`].
pub struct I8042 {
    exit: Arc<VmExitSignal>,
    state: Mutex<State>,
}

impl I8042 {
    pub fn new(exit: Arc<VmExitSignal>) -> Self {
        Self {
            exit,
            state: Mutex::new(State {
                // What firmware leaves behind: translation on, keyboard IRQ
                // enabled, self-test passed, AUX disabled.
                ctr: CTR_XLATE | CTR_SYSTEM_FLAG | CTR_KBD_INT | CTR_AUX_DISABLE,
                output_port: OUTPUT_PORT_RESET | OUTPUT_PORT_A20,
                output: VecDeque::new(),
                last_data: 0,
                next_data: DataTarget::Keyboard,
                last_was_command: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The command/status port as a device of its own, for registering at
    /// 0x64: the bus hands each range offsets from its own base.
    pub fn command_port(self: &Arc<Self>) -> I8042CommandPort {
        I8042CommandPort(self.clone())
    }
}

/// Port 0x64 of an [`I8042`] registered separately from its data port.
pub struct I8042CommandPort(Arc<I8042>);

impl BusDevice for I8042CommandPort {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match offset {
            0 => self.0.read(COMMAND_OFFSET, data),
            _ => data.fill(OPEN_BUS),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset == 0 {
            self.0.write(COMMAND_OFFSET, data);
        }
    }
}

impl BusDevice for I8042 {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut state = self.lock();
        let value = match offset {
            DATA_OFFSET => state.read_data(),
            COMMAND_OFFSET => state.status(),
            _ => OPEN_BUS,
        };
        if let Some((first, rest)) = data.split_first_mut() {
            *first = value;
            rest.fill(0);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        let reset = {
            let mut state = self.lock();
            match offset {
                DATA_OFFSET => state.data(value),
                COMMAND_OFFSET => state.command(value),
                _ => false,
            }
        };
        if reset {
            log::info!("i8042: guest pulsed the CPU reset line");
            self.exit.request(ExitReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (I8042, Arc<VmExitSignal>) {
        let exit = Arc::new(VmExitSignal::new().unwrap());
        (I8042::new(exit.clone()), exit)
    }

    fn rd(d: &I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    /// Sends a controller command and collects its reply, as Linux's
    /// `i8042_command` does.
    fn command(d: &I8042, cmd: u8, param: Option<u8>) -> Vec<u8> {
        d.write(COMMAND_OFFSET, &[cmd]);
        if let Some(p) = param {
            d.write(DATA_OFFSET, &[p]);
        }
        let mut reply = Vec::new();
        while rd(d, COMMAND_OFFSET) & STATUS_OUTPUT_FULL != 0 {
            reply.push(rd(d, DATA_OFFSET));
        }
        reply
    }

    #[test]
    fn reset_command_requests_reset() {
        let (d, exit) = dev();
        d.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn output_port_reset_bit() {
        let (d, exit) = dev();
        command(&d, 0xd1, Some(0x03));
        assert_eq!(exit.reason(), None);
        command(&d, 0xd1, Some(0x02));
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn idle_status_has_no_data_and_ready_input() {
        let (d, exit) = dev();
        let status = rd(&d, COMMAND_OFFSET);
        assert_eq!(status & (STATUS_OUTPUT_FULL | 0x02), 0);
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn linux_probe_sequence() {
        let (d, exit) = dev();
        // Self test, then read/write the CTR.
        assert_eq!(command(&d, 0xaa, None), [0x55]);
        let ctr = command(&d, 0x20, None);
        assert_eq!(ctr.len(), 1);
        command(&d, 0x60, Some(ctr[0] & !CTR_KBD_INT));
        assert_eq!(command(&d, 0x20, None), [ctr[0] & !CTR_KBD_INT]);
        // AUX: the loopback answers wrongly and the interface test fails.
        d.write(COMMAND_OFFSET, &[0xd3]);
        d.write(DATA_OFFSET, &[0x5a]);
        assert_ne!(rd(&d, COMMAND_OFFSET) & STATUS_AUX_DATA, 0);
        assert_ne!(rd(&d, DATA_OFFSET), 0x5a);
        assert_eq!(command(&d, 0xa9, None), [0x01]);
        // AUX enable/disable is reflected in the CTR.
        command(&d, 0xa8, None);
        assert_eq!(command(&d, 0x20, None)[0] & CTR_AUX_DISABLE, 0);
        command(&d, 0xa7, None);
        assert_ne!(command(&d, 0x20, None)[0] & CTR_AUX_DISABLE, 0);
        // Keyboard reset and identify.
        d.write(DATA_OFFSET, &[0xff]);
        assert_eq!(rd(&d, DATA_OFFSET), KBD_ACK);
        assert_eq!(rd(&d, DATA_OFFSET), KBD_SELF_TEST_OK);
        assert_eq!(rd(&d, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn port_0x61_is_not_ours() {
        let (d, _) = dev();
        // Still registered over 0x60-0x64, 0x61 reads as an open bus, whose
        // bit 5 (OUT2) high keeps a PIT calibration loop from spinning.
        d.write(1, &[0x01]);
        assert_eq!(rd(&d, 1), OPEN_BUS);
    }

    #[test]
    fn command_port_registered_on_its_own() {
        let exit = Arc::new(VmExitSignal::new().unwrap());
        let d = Arc::new(I8042::new(exit.clone()));
        let cmd = d.command_port();
        let mut b = [0u8];
        cmd.read(0, &mut b);
        assert_eq!(b[0] & STATUS_OUTPUT_FULL, 0);
        cmd.write(0, &[0xaa]);
        cmd.read(0, &mut b);
        assert_ne!(b[0] & STATUS_OUTPUT_FULL, 0);
        assert_eq!(rd(&d, DATA_OFFSET), 0x55);
        cmd.read(1, &mut b);
        assert_eq!(b[0], OPEN_BUS);
        cmd.write(0, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn any_access_is_harmless_and_bounded() {
        let (d, _) = dev();
        for off in 0..8u64 {
            for v in 0..=0xfdu8 {
                d.write(off, &[v, v]);
                d.read(off, &mut [0u8; 4]);
            }
        }
        d.write(0, &[]);
        d.read(0, &mut []);
        for _ in 0..100 {
            d.write(DATA_OFFSET, &[0xf2]);
        }
        assert!(d.lock().output.len() <= MAX_OUTPUT);
    }
}
