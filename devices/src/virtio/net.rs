//! virtio-net (virtio 1.2 §5.1) over a tap, no offloads.
//!
//! RX: when the tap is readable, frames go into the driver's receive
//! buffers. With no buffer free, one frame waits here and the tap is no
//! longer watched until the driver adds buffers and notifies, so nothing
//! spins. TX: on notify, every frame the driver queued is written to the tap.
//! The backend is any non-blocking fd that keeps frame boundaries (a tap; a
//! SOCK_SEQPACKET socket in tests), with a 12-byte header before each frame.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryMmap;

use super::queue::{parse_chain, Chain, QueueError, VirtQueue};
use super::{
    device_type, features, read_config_bytes, ActivateError, Activation, GuestRam, LogLimit, VirtioDevice,
    VirtioInterrupt,
};

/// The device has a MAC address in its config space.
pub const F_MAC: u64 = 1 << 5;
/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers.
pub const HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS: usize = 10;
/// Largest frame without offloads: a 64 KiB MTU plus the Ethernet header
/// (and a VLAN tag); anything larger from either side is dropped.
pub const MAX_FRAME: usize = 65535 + 18;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

pub type MacAddr = [u8; 6];

struct Active {
    ram: GuestRam,
    rx: VirtQueue,
    tx: VirtQueue,
    interrupt: Arc<VirtioInterrupt>,
    /// A receive buffer taken from the ring and not yet filled.
    rx_chain: Option<Chain>,
}

pub struct Net {
    name: String,
    backend: File,
    mac: MacAddr,
    active: Option<Active>,
    /// Header + frame read from the backend; `rx_len` bytes of it wait for a buffer.
    rx_buf: Vec<u8>,
    rx_len: Option<usize>,
    tx_buf: Vec<u8>,
    /// The backend failed hard (not "would block"): stop watching it.
    backend_failed: bool,
    tx_dropped: u64,
    guest_errors: LogLimit,
}

impl Net {
    /// `backend` must be non-blocking and keep frame boundaries.
    pub fn new(name: String, backend: File, mac: MacAddr) -> Self {
        Self {
            name,
            backend,
            mac,
            active: None,
            rx_buf: vec![0; HDR_LEN + MAX_FRAME],
            rx_len: None,
            tx_buf: Vec::new(),
            backend_failed: false,
            tx_dropped: 0,
            guest_errors: LogLimit::default(),
        }
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    fn with_active(&mut self, f: fn(&mut Self, &mut Active) -> Result<(), QueueError>) {
        let Some(mut active) = self.active.take() else { return };
        if !active.interrupt.needs_reset() {
            if let Err(e) = f(self, &mut active) {
                active.interrupt.mark_needs_reset(&format_args!("virtio-net {}: {e}", self.name));
            }
        }
        self.active = Some(active);
    }

    /// Moves frames from the backend into receive buffers until one side runs out.
    fn receive(&mut self, a: &mut Active) -> Result<(), QueueError> {
        let result = self.receive_inner(a);
        let finished = a.rx.finish(&a.ram, &a.interrupt);
        result.and(finished)
    }

    fn receive_inner(&mut self, a: &mut Active) -> Result<(), QueueError> {
        loop {
            let Some(len) = self.rx_len.or_else(|| self.read_frame()) else { return Ok(()) };
            self.rx_len = Some(len);
            if a.rx_chain.is_none() {
                let Some(chain) = a.rx.pop(a.ram.memory())? else {
                    // Out of buffers: the driver notifies when it adds some
                    // (unless some arrived just now).
                    if a.rx.enable_notification(&a.ram)? {
                        continue;
                    }
                    return Ok(());
                };
                match parse_chain(a.ram.memory(), chain) {
                    Ok(chain) if chain.readable.is_empty() => a.rx_chain = Some(chain),
                    Ok(chain) => {
                        self.guest_errors.warn("virtio-net rx", &"receive buffer with device-readable parts");
                        a.rx.add_used(&a.ram, chain.head, 0)?;
                        continue;
                    }
                    Err(bad) => {
                        self.guest_errors.warn("virtio-net rx", &bad.error);
                        a.rx.add_used(&a.ram, bad.head, 0)?;
                        continue;
                    }
                }
            }
            self.rx_len = None;
            let Some(chain) = a.rx_chain.as_ref() else { continue };
            if (len as u64) > chain.writable.len() {
                // Keep the buffer for the next frame; this one can't fit.
                self.guest_errors.warn("virtio-net rx", &format_args!("{len}-byte frame exceeds the receive buffer"));
                continue;
            }
            let frame = &mut self.rx_buf[..len];
            // We negotiated no offloads: an all-zero header but for num_buffers.
            frame[..HDR_LEN].fill(0);
            frame[NUM_BUFFERS..NUM_BUFFERS + 2].copy_from_slice(&1u16.to_le_bytes());
            let head = chain.head;
            let used = match chain.writable.write_all(&a.ram, frame) {
                // `len` is at most HDR_LEN + MAX_FRAME.
                Ok(()) => len as u32,
                Err(e) => {
                    self.guest_errors.warn("virtio-net rx", &e);
                    0
                }
            };
            a.rx_chain = None;
            a.rx.add_used(&a.ram, head, used)?;
        }
    }

    /// One frame (with its header) from the backend into `rx_buf`.
    fn read_frame(&mut self) -> Option<usize> {
        if self.backend_failed {
            return None;
        }
        loop {
            match (&self.backend).read(&mut self.rx_buf) {
                Ok(n) if n >= HDR_LEN && self.rx_buf[1] == 0 => return Some(n),
                Ok(0) => {
                    log::warn!("virtio-net {}: backend closed", self.name);
                    self.backend_failed = true;
                    return None;
                }
                // Runts and GSO frames (which need offloads we don't have) are dropped.
                Ok(n) => log::debug!("virtio-net {}: dropping a {n}-byte frame from the backend", self.name),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("virtio-net {}: reading the backend: {e}", self.name);
                    self.backend_failed = true;
                    return None;
                }
            }
        }
    }

    fn transmit(&mut self, a: &mut Active) -> Result<(), QueueError> {
        let Active { ram, tx, interrupt, .. } = a;
        tx.drain(ram, interrupt, |ram, chain| {
            self.send(ram, chain);
            // Nothing is written into transmit buffers.
            Ok(0)
        })
    }

    /// Writes one frame the driver queued to the backend; drops bad ones.
    fn send(&mut self, ram: &GuestRam, chain: DescriptorChain<&GuestMemoryMmap>) {
        let chain = match parse_chain(ram.memory(), chain) {
            Ok(chain) if chain.writable.is_empty() => chain,
            Ok(_) => return self.guest_errors.warn("virtio-net tx", &"transmit buffer with device-writable parts"),
            Err(bad) => return self.guest_errors.warn("virtio-net tx", &bad.error),
        };
        let len = chain.readable.len();
        if len < HDR_LEN as u64 || len > (HDR_LEN + MAX_FRAME) as u64 {
            return self.guest_errors.warn("virtio-net tx", &format_args!("{len}-byte frame dropped"));
        }
        // Bounded by the check above.
        self.tx_buf.resize(len as usize, 0);
        if let Err(e) = chain.readable.read_exact(ram, &mut self.tx_buf) {
            return self.guest_errors.warn("virtio-net tx", &e);
        }
        // No offloads were negotiated: whatever the header asks for, the
        // backend gets none of it.
        self.tx_buf[..HDR_LEN].fill(0);
        loop {
            match (&self.backend).write(&self.tx_buf) {
                Ok(_) => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // A full tap queue drops the frame, as a NIC would.
                    self.tx_dropped += 1;
                    if e.kind() != ErrorKind::WouldBlock {
                        self.guest_errors.warn("virtio-net tx", &format_args!("writing to the backend: {e}"));
                    }
                    return;
                }
            }
        }
    }
}

/// A random locally administered unicast MAC address.
pub fn random_mac() -> std::io::Result<MacAddr> {
    let mut mac = [0u8; 6];
    super::rng::fill_random(&mut mac)?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX | F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation { ram, queues, interrupt, .. } = activation;
        let got = queues.len();
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx), None) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        self.active =
            Some(Active { ram, rx: VirtQueue::new(rx, RX), tx: VirtQueue::new(tx, TX), interrupt, rx_chain: None });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        // A frame read for the old rings goes nowhere.
        self.rx_len = None;
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            RX => self.with_active(Self::receive),
            TX => self.with_active(Self::transmit),
            _ => {}
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.backend.as_raw_fd())
    }

    fn backend_wanted(&self) -> bool {
        self.rx_len.is_none()
            && !self.backend_failed
            && self.active.as_ref().is_some_and(|a| !a.interrupt.needs_reset())
    }

    fn process_backend(&mut self) {
        self.with_active(Self::receive);
    }

    fn shutdown(&mut self) {
        if self.tx_dropped > 0 {
            log::info!("virtio-net {}: {} frames dropped on a full backend", self.name, self.tx_dropped);
        }
    }
}
