//! Virtio 1.x devices behind the virtio-mmio transport.
//!
//! The transport ([`mmio::MmioTransport`]) owns the register file and runs on
//! vCPU threads; each device ([`VirtioDevice`]) processes its queues on the
//! main thread's event loop ([`subscriber::VirtioSubscriber`]), woken by one
//! eventfd per queue that the engine signals on the guest's queue-notify
//! write. The two sides share the device behind one mutex and the interrupt
//! state ([`VirtioInterrupt`]) through atomics.
//!
//! Every guest buffer is checked against guest memory before use
//! ([`queue::parse_chain`]); a malformed request gets an error status when it
//! has somewhere to put one, and otherwise marks the device
//! `DEVICE_NEEDS_RESET`. Device writes into guest memory go through
//! [`GuestRam`], which tells the engine ([`GuestWriteHook`]) so that TCG can
//! drop code it translated from those pages.

pub mod block;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod rng;
pub mod subscriber;
pub mod tap;

#[cfg(test)]
mod tests;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::IrqLine;

/// Device IDs (virtio 1.2 §5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
}

/// Feature bits common to every device type.
pub mod features {
    /// Indirect descriptor tables (virtio-queue walks them).
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// `used_event` / `avail_event` notification suppression.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// A virtio 1.x ("modern") device: little-endian, no legacy layout.
    pub const VERSION_1: u64 = 1 << 32;
}

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bits of the MMIO transport.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG_CHANGE: u32 = 2;

/// Told about every device write into guest memory. Under TCG this
/// invalidates translated code on the written pages; under KVM it does nothing.
pub trait GuestWriteHook: Send + Sync {
    fn guest_written(&self, gpa: u64, len: u64);
}

/// A hook for engines (and tests) that translate no guest code.
pub struct NoWriteHook;

impl GuestWriteHook for NoWriteHook {
    fn guest_written(&self, _gpa: u64, _len: u64) {}
}

/// Guest RAM as devices see it: checked accesses, and every write reported
/// to the engine.
#[derive(Clone)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    hook: Arc<dyn GuestWriteHook>,
}

impl GuestRam {
    pub fn new(mem: GuestMemoryMmap, hook: Arc<dyn GuestWriteHook>) -> Self {
        Self { mem, hook }
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Reads `buf.len()` bytes at `addr`; fails (touching nothing) outside RAM.
    pub fn read(&self, buf: &mut [u8], addr: GuestAddress) -> Result<(), GuestMemoryError> {
        self.mem.read_slice(buf, addr)
    }

    /// Writes `buf` at `addr` and reports the write.
    pub fn write(&self, buf: &[u8], addr: GuestAddress) -> Result<(), GuestMemoryError> {
        self.mem.write_slice(buf, addr)?;
        self.notify_written(addr, buf.len() as u64);
        Ok(())
    }

    /// Reports a write made some other way (virtio-queue's used-ring updates).
    pub fn notify_written(&self, addr: GuestAddress, len: u64) {
        if len != 0 {
            self.hook.guest_written(addr.0, len);
        }
    }
}

/// Interrupt and error state a device shares with its transport.
///
/// InterruptStatus lives here (atomically) so the device can set bits from
/// the event loop while a vCPU reads and acknowledges them.
pub struct VirtioInterrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    line: Arc<dyn IrqLine>,
}

impl VirtioInterrupt {
    pub fn new(line: Arc<dyn IrqLine>) -> Self {
        Self { status: AtomicU32::new(0), needs_reset: AtomicBool::new(false), line }
    }

    /// The device put buffers in a used ring.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// The device's configuration (or status) changed.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG_CHANGE);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // One edge per event; the guest reads InterruptStatus to see why.
        if let Err(e) = self.line.trigger() {
            log::warn!("virtio: raising an interrupt failed: {e}");
        }
    }

    /// Sets DEVICE_NEEDS_RESET: the guest broke the device's rules and it
    /// stops processing until reset. Only the first report is logged.
    pub fn mark_needs_reset(&self, why: &dyn std::fmt::Display) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            log::warn!("virtio device needs reset: {why}");
            self.signal_config_change();
        }
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// InterruptStatus as the guest reads it.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Device reset: no pending interrupts, no error.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    pub ram: GuestRam,
    /// One per entry of [`VirtioDevice::queue_max_sizes`], configured and ready.
    pub queues: Vec<Queue>,
    pub interrupt: Arc<VirtioInterrupt>,
    /// The features the driver accepted.
    pub features: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("queue {index} is not ready")]
    QueueNotReady { index: usize },
    #[error("queue {index}: {reason}")]
    BadQueue { index: usize, reason: String },
}

/// One virtio device model, independent of the transport.
///
/// Called with the device's mutex held: from vCPU threads (config space,
/// activate, reset) and from the event loop (queue and backend events).
pub trait VirtioDevice: Send {
    /// Virtio device ID ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue (a power of two); its length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver.
    fn features(&self) -> u64;
    /// Reads device-specific configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device-specific configuration space; read-only by default.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!("virtio: ignoring {}-byte config write at {offset:#x}", data.len());
    }
    /// The driver set DRIVER_OK: start serving `activation.queues`.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver reset the device: drop the queues, keep the backend.
    fn reset(&mut self);
    /// Queue `index` was notified (its eventfd fired).
    fn process_queue(&mut self, index: usize);
    /// A host fd the event loop should watch besides the queue eventfds (a tap).
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// Whether [`backend_fd`](Self::backend_fd) should be watched right now:
    /// false while the device has nowhere to put the backend's input, so an
    /// unread fd doesn't spin the event loop.
    fn backend_wanted(&self) -> bool {
        false
    }
    /// The backend fd is readable.
    fn process_backend(&mut self) {}
    /// The VM is ending: finish or fail what's in flight and make data durable.
    fn shutdown(&mut self) {}
}

/// Copies the bytes of `config` at `offset` into `data`; bytes past its end read 0.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Logs the first few guest-caused errors of a device, then goes quiet, so
/// a misbehaving guest can't flood the host's log.
#[derive(Default)]
pub struct LogLimit(AtomicU32);

const LOG_LIMIT: u32 = 16;

impl LogLimit {
    pub fn warn(&self, what: &str, msg: &dyn std::fmt::Display) {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        if n < LOG_LIMIT {
            log::warn!("{what}: {msg}");
        } else if n == LOG_LIMIT {
            log::warn!("{what}: further errors not logged");
        }
    }
}
