//! Device tests that drive the queues as a driver would: descriptor tables
//! and rings built in a `GuestMemoryMmap`, then the device's entry points.

mod block;
mod fuzz;
mod mmio;
mod net;
mod rng;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{Activation, GuestRam, GuestWriteHook, VirtioInterrupt};
use crate::IrqLine;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// Counts interrupts.
#[derive(Default)]
pub struct CountingIrq(pub AtomicU32);

impl IrqLine for CountingIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl CountingIrq {
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Records every range a device reports writing.
#[derive(Default)]
pub struct RecordingHook(pub Mutex<Vec<(u64, u64)>>);

impl GuestWriteHook for RecordingHook {
    fn guest_written(&self, gpa: u64, len: u64) {
        self.0.lock().unwrap().push((gpa, len));
    }
}

impl RecordingHook {
    pub fn covers(&self, gpa: u64, len: u64) -> bool {
        self.0.lock().unwrap().iter().any(|&(a, l)| a <= gpa && gpa + len <= a + l)
    }
}

/// Guest memory for tests, with a hole at [1 MiB, 2 MiB) so "outside guest
/// memory" is reachable both past the end and in the middle.
pub fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20), (GuestAddress(2 << 20), 1 << 20)]).unwrap()
}

pub struct Env {
    pub mem: GuestMemoryMmap,
    pub hook: Arc<RecordingHook>,
    pub irq: Arc<CountingIrq>,
    pub interrupt: Arc<VirtioInterrupt>,
}

impl Env {
    pub fn new() -> Self {
        let irq = Arc::new(CountingIrq::default());
        Self { mem: test_memory(), hook: Arc::default(), interrupt: Arc::new(VirtioInterrupt::new(irq.clone())), irq }
    }

    pub fn ram(&self) -> GuestRam {
        GuestRam::new(self.mem.clone(), self.hook.clone())
    }

    pub fn activation(&self, queues: Vec<Queue>, features: u64) -> Activation {
        Activation { ram: self.ram(), queues, interrupt: self.interrupt.clone(), features }
    }

    /// Every reported write lies in guest RAM.
    pub fn assert_writes_in_ram(&self) {
        for &(gpa, len) in self.hook.0.lock().unwrap().iter() {
            assert!(
                self.mem.check_range(GuestAddress(gpa), len as usize),
                "device reported a write outside guest RAM: {gpa:#x}+{len:#x}"
            );
        }
    }
}

/// One buffer of a chain: guest address, length, device-writable.
#[derive(Debug, Clone, Copy)]
pub struct Buf(pub u64, pub u32, pub bool);

/// The driver side of a split virtqueue.
pub struct DriverQueue {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl DriverQueue {
    /// Rings at `base`: descriptor table, then available ring, then used ring.
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let q = Self { mem: mem.clone(), size, desc, avail, used, next_desc: 0, avail_idx: 0, used_seen: 0 };
        let zeros = vec![0u8; (used + 6 + 8 * u64::from(size) - base) as usize];
        mem.write_slice(&zeros, GuestAddress(base)).unwrap();
        q
    }

    /// The device-side queue as the transport would configure it.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail)).unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used)).unwrap();
        q.set_ready(true);
        q
    }

    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc + 16 * u64::from(index);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(at)).unwrap();
    }

    /// Writes `bufs` as a chain of consecutive descriptors and makes it available.
    pub fn add(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let flags = if last { 0 } else { F_NEXT } | if b.2 { F_WRITE } else { 0 };
            self.write_desc(index, b.0, b.1, flags, (index + 1) % self.size);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Puts `head` in the available ring.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// Used elements (id, len) added since the last call.
    pub fn take_used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// A file removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn with_contents(bytes: &[u8]) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("rxvmm-virtio-{}-{n}.img", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn read(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Fixed-seed xorshift64*: reproducible "random" inputs.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
