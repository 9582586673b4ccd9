//! COM1: a 16550A UART built on `vm_superio::Serial`.
//!
//! vm-superio models the registers and the 64-byte receive FIFO. On top of it
//! this device keeps a bounded host-side input queue, so input longer than the
//! FIFO (a paste) reaches the guest as the guest drains the FIFO.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_superio::serial::{Error as SerialError, NoEvents};
use vm_superio::Trigger;

use crate::{BusDevice, IrqLine};

/// Host input held back while the guest's FIFO is full.
pub const MAX_PENDING_INPUT: usize = 64 * 1024;

/// vm-superio's receive FIFO size (16550A).
const FIFO_SIZE: usize = 64;
/// Receive/transmit data register offset (RBR on reads, THR on writes).
const DATA_OFFSET: u8 = 0;
/// Line control register offset; bit 7 is DLAB.
const LCR_OFFSET: u8 = 3;
const LCR_DLAB: u8 = 0x80;
/// Number of I/O ports a 16550 decodes.
const REGISTER_COUNT: u64 = 8;
/// At most one warning per interval for each kind of guest- or host-caused fault.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Adapts an [`IrqLine`] to the trigger vm-superio raises interrupts with.
struct IrqTrigger(Arc<dyn IrqLine>);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

type Uart = vm_superio::Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>;

/// Logs at most once per [`WARN_INTERVAL`], counting what it suppressed.
#[derive(Default)]
struct RateLimitedWarn {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedWarn {
    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < WARN_INTERVAL) {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log::warn!("{msg} ({} similar messages suppressed)", self.suppressed);
        } else {
            log::warn!("{msg}");
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

struct Inner {
    uart: Uart,
    /// Host input not yet in the UART's FIFO, oldest first.
    pending: VecDeque<u8>,
    input_warn: RateLimitedWarn,
    io_warn: RateLimitedWarn,
}

impl Inner {
    /// Moves as much pending input into the FIFO as fits.
    fn fill_fifo(&mut self) {
        let n = self.uart.fifo_capacity().min(self.pending.len());
        if n == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.iter().take(n).copied().collect();
        match self.uart.enqueue_raw_bytes(&chunk) {
            // In loopback mode the UART takes nothing; the bytes stay pending.
            Ok(taken) => {
                self.pending.drain(..taken);
            }
            Err(SerialError::Trigger(e)) => {
                // The bytes are in the FIFO even though the interrupt failed.
                self.pending.drain(..n);
                self.io_warn.warn(format_args!("serial: failed to raise RX interrupt: {e}"));
            }
            Err(e) => self.io_warn.warn(format_args!("serial: failed to queue input: {e}")),
        }
    }

    fn dlab(&mut self) -> bool {
        self.uart.read(LCR_OFFSET) & LCR_DLAB != 0
    }

    fn read(&mut self, offset: u8) -> u8 {
        let is_rbr = offset == DATA_OFFSET && !self.dlab();
        let value = self.uart.read(offset);
        // Refill only once the FIFO has drained: refilling after every byte
        // would raise one interrupt per byte read.
        if is_rbr && self.uart.fifo_capacity() == FIFO_SIZE {
            self.fill_fifo();
        }
        value
    }

    fn write(&mut self, offset: u8, value: u8) {
        // vm-superio writes each THR byte to `out` and flushes it, so the
        // console stays interactive without extra work here.
        if let Err(e) = self.uart.write(offset, value) {
            self.io_warn.warn(format_args!("serial: write to register {offset}: {e}"));
        }
        // Leaving loopback mode lets held-back input into an empty FIFO.
        if !self.pending.is_empty() && self.uart.fifo_capacity() == FIFO_SIZE {
            self.fill_fifo();
        }
    }
}

/// A 16550A UART; guest output goes to the writer it was created with.
pub struct Serial {
    inner: Mutex<Inner>,
}

impl Serial {
    /// A UART raising interrupts on `irq` and sending guest output to `out`.
    pub fn new(irq: Arc<dyn IrqLine>, out: Box<dyn Write + Send>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                uart: vm_superio::Serial::new(IrqTrigger(irq), out),
                pending: VecDeque::new(),
                input_warn: RateLimitedWarn::default(),
                io_warn: RateLimitedWarn::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the UART usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues host input for the guest. Input beyond [`MAX_PENDING_INPUT`]
    /// bytes waiting for the guest is dropped.
    pub fn enqueue_input(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        let room = MAX_PENDING_INPUT.saturating_sub(inner.pending.len());
        let (kept, dropped) = bytes.split_at(room.min(bytes.len()));
        inner.pending.extend(kept);
        if !dropped.is_empty() {
            let n = dropped.len();
            inner.input_warn.warn(format_args!("serial: guest is not reading input; dropped {n} bytes"));
        }
        inner.fill_fifo();
    }

    /// Bytes of host input not yet read by the guest (queued plus in the FIFO).
    pub fn pending_input(&self) -> usize {
        let inner = self.lock();
        inner.pending.len() + FIFO_SIZE.saturating_sub(inner.uart.fifo_capacity())
    }
}

impl BusDevice for Serial {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut inner = self.lock();
        // A wide access reads consecutive registers, as an 8-bit ISA device would.
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match offset.checked_add(i as u64) {
                Some(reg) if reg < REGISTER_COUNT => inner.read(reg as u8),
                _ => 0,
            };
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut inner = self.lock();
        for (i, &byte) in data.iter().enumerate() {
            if let Some(reg) = offset.checked_add(i as u64).filter(|r| *r < REGISTER_COUNT) {
                inner.write(reg as u8, byte);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const LSR_DR: u8 = 0x01;

    #[derive(Default)]
    struct CountingIrq(AtomicUsize);
    impl IrqLine for CountingIrq {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// A writer the test can inspect after handing it to the device.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, Arc<CountingIrq>, SharedBuf) {
        let irq = Arc::new(CountingIrq::default());
        let out = SharedBuf::default();
        let s = Serial::new(irq.clone(), Box::new(out.clone()));
        (s, irq, out)
    }

    fn rd(s: &Serial, off: u64) -> u8 {
        let mut b = [0u8];
        s.read(off, &mut b);
        b[0]
    }

    #[test]
    fn output_goes_to_writer_unchanged() {
        let (s, _, out) = serial();
        for &b in b"hi\r\n\x00\xff" {
            s.write(0, &[b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\r\n\x00\xff");
    }

    #[test]
    fn thr_empty_interrupt_when_enabled() {
        let (s, irq, _) = serial();
        s.write(IER, &[0x02]);
        assert_eq!(irq.0.load(Ordering::SeqCst), 1);
        assert_eq!(rd(&s, IIR) & 0x0f, 0x02);
    }

    #[test]
    fn long_input_drains_through_fifo_in_order() {
        let (s, irq, _) = serial();
        s.write(IER, &[0x01]);
        let input: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        s.enqueue_input(&input);
        assert_eq!(s.pending_input(), 1000);
        let mut got = Vec::new();
        while rd(&s, LSR) & LSR_DR != 0 {
            got.push(rd(&s, 0));
        }
        assert_eq!(got, input);
        assert_eq!(s.pending_input(), 0);
        // One interrupt per FIFO refill, not one per byte.
        let n = irq.0.load(Ordering::SeqCst);
        assert!((16..=32).contains(&n), "{n} interrupts");
    }

    #[test]
    fn input_held_in_loopback_arrives_after_it() {
        let (s, _, _) = serial();
        s.write(MCR, &[0x10]);
        s.enqueue_input(b"late");
        assert_eq!(rd(&s, LSR) & LSR_DR, 0);
        s.write(MCR, &[0x08]);
        let got: Vec<u8> = (0..4).map(|_| rd(&s, 0)).collect();
        assert_eq!(got, b"late");
    }

    #[test]
    fn input_beyond_limit_is_dropped() {
        let (s, _, _) = serial();
        s.enqueue_input(&vec![b'a'; MAX_PENDING_INPUT]);
        s.enqueue_input(&vec![b'b'; 1000]);
        // The FIFO took 64 bytes, so 64 of the second batch still fit.
        assert_eq!(s.pending_input(), MAX_PENDING_INPUT + FIFO_SIZE);
    }

    #[test]
    fn divisor_latch_reads_do_not_consume_input() {
        let (s, _, _) = serial();
        s.enqueue_input(b"xy");
        s.write(LCR, &[0x80]);
        s.write(0, &[0x01]);
        assert_eq!(rd(&s, 0), 0x01);
        s.write(LCR, &[0x03]);
        assert_eq!(rd(&s, 0), b'x');
        assert_eq!(rd(&s, 0), b'y');
    }

    #[test]
    fn any_access_is_harmless() {
        let (s, _, _) = serial();
        s.enqueue_input(&[1; 300]);
        for off in 0..16u64 {
            for v in [0u8, 0x55, 0x80, 0xff] {
                s.write(off, &[v, v, v, v]);
                let mut buf = [0u8; 4];
                s.read(off, &mut buf);
            }
        }
        s.write(u64::MAX, &[1, 2]);
        s.read(u64::MAX, &mut [0; 2]);
        s.write(0, &[]);
    }
}
