//! Descriptor chains checked against guest memory, and the device side of a
//! split virtqueue (virtio-queue's `Queue` plus used-ring write reporting
//! and interrupt suppression).

use std::fmt;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{GuestRam, VirtioInterrupt};

/// One guest buffer, already checked to lie inside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Guest buffers read or written in order as one byte stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segments(Vec<Segment>);

/// A buffer turned out shorter than the data for it, or guest memory refused
/// an access that `parse_chain` had checked (it can't, but never assume).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentError {
    #[error("buffer of {have} bytes is too short for {need}")]
    TooShort { have: u64, need: u64 },
    #[error("guest memory access at {0:#x} failed")]
    Memory(u64),
}

impl Segments {
    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|s| u64::from(s.len)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &Segment> {
        self.0.iter()
    }

    /// The first `n` bytes and the rest; `None` when shorter than `n`.
    pub fn split_at(&self, n: u64) -> Option<(Segments, Segments)> {
        let mut front = Vec::new();
        let mut back = Vec::new();
        let mut left = n;
        for seg in &self.0 {
            let len = u64::from(seg.len);
            if left >= len {
                front.push(*seg);
                left -= len;
            } else if left > 0 {
                // `left < seg.len` (a u32) here, so both casts are exact.
                let cut = left as u32;
                front.push(Segment { addr: seg.addr, len: cut });
                back.push(Segment { addr: seg.addr.unchecked_add(u64::from(cut)), len: seg.len - cut });
                left = 0;
            } else {
                back.push(*seg);
            }
        }
        (left == 0).then_some((Segments(front), Segments(back)))
    }

    /// Fills `buf` from the start of the stream.
    pub fn read_exact(&self, ram: &GuestRam, buf: &mut [u8]) -> Result<(), SegmentError> {
        let need = buf.len() as u64;
        let mut done = 0usize;
        for seg in &self.0 {
            if done == buf.len() {
                break;
            }
            let n = (seg.len as usize).min(buf.len() - done);
            ram.read(&mut buf[done..done + n], seg.addr).map_err(|_| SegmentError::Memory(seg.addr.0))?;
            done += n;
        }
        if done < buf.len() {
            return Err(SegmentError::TooShort { have: self.len(), need });
        }
        Ok(())
    }

    /// Writes `buf` at the start of the stream.
    pub fn write_all(&self, ram: &GuestRam, buf: &[u8]) -> Result<(), SegmentError> {
        if self.len() < buf.len() as u64 {
            return Err(SegmentError::TooShort { have: self.len(), need: buf.len() as u64 });
        }
        let mut done = 0usize;
        for seg in &self.0 {
            if done == buf.len() {
                break;
            }
            let n = (seg.len as usize).min(buf.len() - done);
            ram.write(&buf[done..done + n], seg.addr).map_err(|_| SegmentError::Memory(seg.addr.0))?;
            done += n;
        }
        Ok(())
    }
}

/// A descriptor chain whose buffers all lie in guest RAM, device-readable
/// ones first (virtio 1.2 §2.7.4.2).
#[derive(Debug)]
pub struct Chain {
    pub head: u16,
    pub readable: Segments,
    pub writable: Segments,
}

/// Why a chain can't be used as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// No descriptor at all (head index past the table, unreadable table).
    Empty,
    /// The chain stopped on a descriptor that says "next": bad next index,
    /// bad indirect table, a loop, or unreadable descriptor memory.
    Truncated,
    /// A device-readable descriptor after a device-writable one.
    Order,
    /// A buffer outside guest RAM.
    OutOfMemory { addr: u64, len: u32 },
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::Empty => f.write_str("empty descriptor chain"),
            ChainError::Truncated => f.write_str("descriptor chain cut short (bad next index, indirect table or loop)"),
            ChainError::Order => f.write_str("device-readable descriptor after a device-writable one"),
            ChainError::OutOfMemory { addr, len } => write!(f, "buffer {addr:#x}+{len:#x} is outside guest memory"),
        }
    }
}

/// A chain that failed [`parse_chain`], with where an error status could
/// still go.
#[derive(Debug)]
pub struct BadChain {
    pub head: u16,
    pub error: ChainError,
    /// The chain's last byte, when its last descriptor is device-writable
    /// and in RAM: where block-style devices put their status byte.
    pub last_writable_byte: Option<GuestAddress>,
}

/// Walks `chain` and checks every buffer against `mem`.
pub fn parse_chain(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Result<Chain, BadChain> {
    let head = chain.head_index();
    // virtio-queue bounds the walk (queue size, then indirect table size)
    // and ends it quietly on any error; a last descriptor that still says
    // "next" is how an error shows.
    let mut descs = Vec::new();
    let mut cut_short = false;
    for desc in chain {
        cut_short = desc.has_next();
        descs.push(desc);
    }
    let last_writable_byte = descs.last().filter(|d| !cut_short && d.is_write_only() && d.len() > 0).and_then(|d| {
        let addr = d.addr().checked_add(u64::from(d.len()) - 1)?;
        mem.check_range(addr, 1).then_some(addr)
    });
    let fail = |error| BadChain { head, error, last_writable_byte };
    if descs.is_empty() {
        return Err(fail(ChainError::Empty));
    }
    if cut_short {
        return Err(fail(ChainError::Truncated));
    }
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for d in descs {
        if d.len() == 0 {
            continue;
        }
        if !mem.check_range(d.addr(), d.len() as usize) {
            return Err(fail(ChainError::OutOfMemory { addr: d.addr().0, len: d.len() }));
        }
        let seg = Segment { addr: d.addr(), len: d.len() };
        if d.is_write_only() {
            writable.push(seg);
        } else if writable.is_empty() {
            readable.push(seg);
        } else {
            return Err(fail(ChainError::Order));
        }
    }
    Ok(Chain { head, readable: Segments(readable), writable: Segments(writable) })
}

/// Why a queue stopped: the driver broke the ring itself.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue {queue}: {error}")]
    Ring { queue: usize, error: virtio_queue::Error },
    #[error("queue {queue}: descriptor chain {head}: {error}")]
    Chain { queue: usize, head: u16, error: String },
}

/// The device side of one split virtqueue.
pub struct VirtQueue {
    queue: Queue,
    index: usize,
    /// Used elements added since the last [`finish`](Self::finish).
    added: bool,
    /// The used ring (elements, idx or avail_event) was written.
    used_written: bool,
}

impl VirtQueue {
    pub fn new(queue: Queue, index: usize) -> Self {
        Self { queue, index, added: false, used_written: false }
    }

    pub fn index(&self) -> usize {
        self.index
    }

    fn ring_err(&self, error: virtio_queue::Error) -> QueueError {
        QueueError::Ring { queue: self.index, error }
    }

    /// The next chain the driver made available, if any.
    pub fn pop<'m>(
        &mut self,
        mem: &'m GuestMemoryMmap,
    ) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, QueueError> {
        match self.queue.iter(mem) {
            Ok(mut iter) => Ok(iter.next()),
            Err(e) => Err(self.ring_err(e)),
        }
    }

    /// Returns chain `head` to the driver with `len` bytes written into it.
    pub fn add_used(&mut self, ram: &GuestRam, head: u16, len: u32) -> Result<(), QueueError> {
        self.queue.add_used(ram.memory(), head, len).map_err(|e| self.ring_err(e))?;
        self.added = true;
        self.used_written = true;
        Ok(())
    }

    /// Asks the driver to notify on new buffers; true when some arrived meanwhile.
    pub fn enable_notification(&mut self, ram: &GuestRam) -> Result<bool, QueueError> {
        self.used_written = true;
        self.queue.enable_notification(ram.memory()).map_err(|e| self.ring_err(e))
    }

    pub fn disable_notification(&mut self, ram: &GuestRam) -> Result<(), QueueError> {
        self.used_written = true;
        self.queue.disable_notification(ram.memory()).map_err(|e| self.ring_err(e))
    }

    /// Ends a batch: reports the used-ring writes to the engine and
    /// interrupts the driver if it wants to hear about the new used buffers.
    pub fn finish(&mut self, ram: &GuestRam, interrupt: &VirtioInterrupt) -> Result<(), QueueError> {
        if std::mem::take(&mut self.used_written) {
            // flags, idx, ring[size], avail_event.
            let len = 6 + 8 * u64::from(self.queue.size());
            ram.notify_written(GuestAddress(self.queue.used_ring()), len);
        }
        if std::mem::take(&mut self.added)
            && self.queue.needs_notification(ram.memory()).map_err(|e| self.ring_err(e))?
        {
            interrupt.signal_used_queue();
        }
        Ok(())
    }

    /// Serves every available chain with `handle`, which returns the number
    /// of bytes it wrote into the chain's buffers or an error that stops the
    /// queue. Notifications are off while draining and re-armed at the end,
    /// so a buffer added meanwhile is never missed.
    pub fn drain<F>(&mut self, ram: &GuestRam, interrupt: &VirtioInterrupt, mut handle: F) -> Result<(), QueueError>
    where
        F: FnMut(&GuestRam, DescriptorChain<&GuestMemoryMmap>) -> Result<u32, String>,
    {
        let result = self.drain_inner(ram, &mut handle);
        // Whatever happened, the driver hears about what completed.
        let finished = self.finish(ram, interrupt);
        result.and(finished)
    }

    fn drain_inner<F>(&mut self, ram: &GuestRam, handle: &mut F) -> Result<(), QueueError>
    where
        F: FnMut(&GuestRam, DescriptorChain<&GuestMemoryMmap>) -> Result<u32, String>,
    {
        let mem = ram.memory();
        loop {
            self.disable_notification(ram)?;
            while let Some(chain) = self.pop(mem)? {
                let head = chain.head_index();
                let len = handle(ram, chain).map_err(|error| QueueError::Chain { queue: self.index, head, error })?;
                self.add_used(ram, head, len)?;
            }
            if !self.enable_notification(ram)? {
                return Ok(());
            }
        }
    }
}
