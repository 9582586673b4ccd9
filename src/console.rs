//! The guest's serial console on this terminal: raw mode, Ctrl-A escapes.

use std::io::{IsTerminal, Write};
use std::os::fd::RawFd;

/// Where the serial console reads and writes.
pub struct Console {
    input: Option<RawFd>,
    raw_mode: Option<RawMode>,
    output: Option<Box<dyn Write + Send>>,
}

impl Console {
    /// stdin/stdout; stdin in raw mode when it is a terminal (restored on drop).
    pub fn stdio() -> Self {
        let raw_mode = if std::io::stdin().is_terminal() { RawMode::enable(libc::STDIN_FILENO) } else { None };
        Self { input: Some(libc::STDIN_FILENO), raw_mode, output: Some(Box::new(std::io::stdout())) }
    }

    /// Output to `out`, no input (benchmarks, embedding).
    pub fn with_output(out: Box<dyn Write + Send>) -> Self {
        Self { input: None, raw_mode: None, output: Some(out) }
    }

    /// The writer the serial device prints to; the first call takes it.
    pub fn output(&mut self) -> Box<dyn Write + Send> {
        self.output.take().unwrap_or_else(|| Box::new(std::io::sink()))
    }

    pub fn input_fd(&self) -> Option<RawFd> {
        self.input
    }

    /// Whether Ctrl-A escapes are interpreted (only on a terminal, as QEMU).
    pub fn is_interactive(&self) -> bool {
        self.raw_mode.is_some()
    }
}

/// Saved terminal settings, put back when dropped.
struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    fn enable(fd: RawFd) -> Option<Self> {
        // SAFETY: termios is plain data; tcgetattr fills it and we check the result.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a valid open descriptor and `saved` a valid termios.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the host terminal renders guest "\n" as usual.
        raw.c_oflag = saved.c_oflag;
        // SAFETY: fd is valid and `raw` a fully initialised termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable` on the same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// QEMU's escape: Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A.
#[derive(Default)]
pub struct EscapeParser {
    pending_ctrl_a: bool,
}

pub const CTRL_A: u8 = 0x01;

/// What a chunk of terminal input amounts to.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedInput {
    pub to_guest: Vec<u8>,
    pub quit: bool,
}

impl EscapeParser {
    pub fn feed(&mut self, bytes: &[u8]) -> ParsedInput {
        let mut out = ParsedInput { to_guest: Vec::with_capacity(bytes.len()), quit: false };
        for &b in bytes {
            if self.pending_ctrl_a {
                self.pending_ctrl_a = false;
                match b {
                    b'x' | b'X' => {
                        out.quit = true;
                        return out;
                    }
                    CTRL_A => out.to_guest.push(CTRL_A),
                    // Unknown escapes are swallowed, as QEMU does.
                    _ => {}
                }
            } else if b == CTRL_A {
                self.pending_ctrl_a = true;
            } else {
                out.to_guest.push(b);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_ctrl_a_passes_one() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b"ls\r"), ParsedInput { to_guest: b"ls\r".to_vec(), quit: false });
        assert_eq!(p.feed(&[CTRL_A]), ParsedInput { to_guest: vec![], quit: false });
        assert_eq!(p.feed(&[CTRL_A, b'a']), ParsedInput { to_guest: vec![CTRL_A, b'a'], quit: false });
        let r = p.feed(&[b'q', CTRL_A, b'x', b'z']);
        assert_eq!(r, ParsedInput { to_guest: vec![b'q'], quit: true });
    }
}
