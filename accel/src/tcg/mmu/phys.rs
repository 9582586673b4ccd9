//! Guest-physical memory: RAM through vm-memory, everything else routed to
//! the VMM's MMIO callbacks. Used by the page walker (atomic PTE access), by
//! [`super::CpuMemory`] on its slow paths, and by DMA-style users.
//!
//! Every write that lands in RAM is reported to [`CodePages`] so translated
//! code over it is dropped.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, VolatileMemory, VolatileSlice,
};

use super::code_pages::CodePages;
use super::walker::PAGE_SIZE;
use crate::VmOps;

/// One contiguous piece of a physical access: RAM (as a vm-memory slice) or
/// a gap that belongs to MMIO.
enum Piece<'a> {
    Ram(VolatileSlice<'a>),
    Mmio(usize),
}

/// Guest-physical address space of one VM as a CPU or DMA engine sees it.
#[derive(Clone)]
pub struct PhysMemory {
    mem: GuestMemoryMmap,
    ops: Arc<dyn VmOps>,
    code_pages: Arc<CodePages>,
}

impl PhysMemory {
    pub fn new(mem: GuestMemoryMmap, ops: Arc<dyn VmOps>, code_pages: Arc<CodePages>) -> Self {
        PhysMemory { mem, ops, code_pages }
    }

    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    pub fn ops(&self) -> &Arc<dyn VmOps> {
        &self.ops
    }

    pub fn code_pages(&self) -> &Arc<CodePages> {
        &self.code_pages
    }

    /// Whether `phys` is guest RAM.
    pub fn is_ram(&self, phys: u64) -> bool {
        self.mem.find_region(GuestAddress(phys)).is_some()
    }

    /// The longest piece starting at `addr`, at most `len` bytes, that is
    /// either all RAM or all outside RAM.
    fn piece(&self, addr: u64, len: usize) -> Piece<'_> {
        if let Some(region) = self.mem.find_region(GuestAddress(addr)) {
            let off = addr - region.start_addr().0;
            let avail = usize::try_from(region.len() - off).unwrap_or(usize::MAX);
            if let Ok(slice) = self.mem.get_slice(GuestAddress(addr), len.min(avail)) {
                return Piece::Ram(slice);
            }
        }
        // Up to the next region or the end of the address space.
        let next = self.mem.iter().map(|r| r.start_addr().0).filter(|&s| s > addr).min();
        let gap = next.map_or(u64::MAX - addr, |s| s - addr).max(1);
        Piece::Mmio(len.min(usize::try_from(gap).unwrap_or(usize::MAX)))
    }

    /// Reads `buf.len()` bytes at `phys`, from RAM or MMIO, splitting at the
    /// RAM/MMIO boundaries; the address wraps at 2^64.
    pub fn read(&self, phys: u64, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let addr = phys.wrapping_add(done as u64);
            let rest = &mut buf[done..];
            done += match self.piece(addr, rest.len()) {
                Piece::Ram(slice) => slice.copy_to(rest),
                Piece::Mmio(n) => {
                    self.ops.mmio_read(addr, &mut rest[..n]);
                    n
                }
            };
        }
    }

    /// Writes `buf` at `phys` to RAM or MMIO, splitting at the RAM/MMIO
    /// boundaries, and invalidates translated code in the RAM it changed.
    pub fn write(&self, phys: u64, buf: &[u8]) {
        let mut done = 0;
        while done < buf.len() {
            let addr = phys.wrapping_add(done as u64);
            let rest = &buf[done..];
            done += match self.piece(addr, rest.len()) {
                Piece::Ram(slice) => {
                    slice.copy_from(&rest[..slice.len()]);
                    self.code_pages.notify_write(addr, slice.len() as u64);
                    slice.len()
                }
                Piece::Mmio(n) => {
                    self.ops.mmio_write(addr, &rest[..n]);
                    n
                }
            };
        }
    }

    /// Reads a little-endian value of `size` (≤ 8) bytes.
    pub fn read_value(&self, phys: u64, size: usize) -> u64 {
        let mut buf = [0u8; 8];
        self.read(phys, &mut buf[..size.min(8)]);
        u64::from_le_bytes(buf)
    }

    /// Writes the low `size` (≤ 8) bytes of `value`.
    pub fn write_value(&self, phys: u64, size: usize, value: u64) {
        self.write(phys, &value.to_le_bytes()[..size.min(8)]);
    }

    /// The host address of the 4 KiB frame at `phys_page` if all of it is
    /// RAM in one region (the TLB caches it). Stays valid while this
    /// `PhysMemory`'s `GuestMemoryMmap` (which holds the mappings) lives.
    pub(crate) fn ram_page(&self, phys_page: u64) -> Option<*mut u8> {
        let slice = self.mem.get_slice(GuestAddress(phys_page), PAGE_SIZE as usize).ok()?;
        Some(slice.ptr_guard_mut().as_ptr())
    }

    /// An 8-byte paging-structure entry, read atomically from RAM (another
    /// vCPU may be updating it). Outside RAM it is read from MMIO.
    pub(crate) fn read_pte64(&self, addr: u64) -> u64 {
        self.mem.load::<u64>(GuestAddress(addr), Ordering::Acquire).unwrap_or_else(|_| self.read_value(addr, 8))
    }

    pub(crate) fn read_pte32(&self, addr: u64) -> u32 {
        self.mem.load::<u32>(GuestAddress(addr), Ordering::Acquire).unwrap_or_else(|_| self.read_value(addr, 4) as u32)
    }

    /// Atomically replaces the entry at `addr` with `new` if it still holds
    /// `old`; false if it changed. Entries outside RAM are not written back
    /// (no A/D for page tables in device memory), which counts as success.
    pub(crate) fn cmpxchg_pte64(&self, addr: u64, old: u64, new: u64) -> bool {
        let Ok(slice) = self.mem.get_slice(GuestAddress(addr), 8) else { return true };
        let Ok(atomic) = slice.get_atomic_ref::<AtomicU64>(0) else { return true };
        let ok = atomic.compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if ok {
            self.code_pages.notify_write(addr, 8);
        }
        ok
    }

    pub(crate) fn cmpxchg_pte32(&self, addr: u64, old: u32, new: u32) -> bool {
        let Ok(slice) = self.mem.get_slice(GuestAddress(addr), 4) else { return true };
        let Ok(atomic) = slice.get_atomic_ref::<AtomicU32>(0) else { return true };
        let ok = atomic.compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if ok {
            self.code_pages.notify_write(addr, 4);
        }
        ok
    }
}
