//! MMU tests: page tables built by hand in a real `GuestMemoryMmap`.

mod memory;
mod smc_atomic;
mod walker;

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::walker::pte;
use super::{CodePages, CpuMemory, PhysMemory};
use crate::tcg::state::{ctrl, seg, SegmentCache, X86State};
use crate::VmOps;

/// Guest RAM: 16 MiB at 0. Everything above is MMIO.
pub(super) const RAM_SIZE: u64 = 16 << 20;
/// An MMIO address for tests.
pub(super) const MMIO: u64 = 0xfeb0_0000;
/// Default rights of an intermediate entry and of a leaf.
pub(super) const DIR: u64 = pte::P | pte::RW | pte::US;
pub(super) const URW: u64 = pte::P | pte::RW | pte::US;
pub(super) const KB4: u64 = 4 << 10;
pub(super) const MB2: u64 = 2 << 20;
pub(super) const MB4: u64 = 4 << 20;
pub(super) const GB1: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum MmioOp {
    Read(u64, usize),
    Write(u64, Vec<u8>),
}

/// A `VmOps` that records MMIO and answers reads with 0xab bytes.
#[derive(Default)]
pub(super) struct Recorder {
    pub(super) log: Mutex<Vec<MmioOp>>,
}

impl Recorder {
    pub(super) fn take(&self) -> Vec<MmioOp> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl VmOps for Recorder {
    fn pio_read(&self, _port: u16, _data: &mut [u8]) {}
    fn pio_write(&self, _port: u16, _data: &[u8]) {}
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        data.fill(0xab);
        self.log.lock().unwrap().push(MmioOp::Read(addr, data.len()));
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.log.lock().unwrap().push(MmioOp::Write(addr, data.to_vec()));
    }
}

/// A guest: RAM, the recorder, the code-page map, and a frame allocator for
/// page tables (from 1 MiB up).
pub(super) struct Vm {
    pub(super) mem: GuestMemoryMmap,
    pub(super) rec: Arc<Recorder>,
    pub(super) code: Arc<CodePages>,
    next: u64,
}

impl Vm {
    pub(super) fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)]).unwrap();
        let code = Arc::new(CodePages::new(&mem));
        Vm { mem, rec: Arc::new(Recorder::default()), code, next: 0x10_0000 }
    }

    pub(super) fn cpu(&self) -> CpuMemory {
        CpuMemory::new(self.mem.clone(), self.rec.clone(), self.code.clone())
    }

    pub(super) fn phys(&self) -> PhysMemory {
        PhysMemory::new(self.mem.clone(), self.rec.clone(), self.code.clone())
    }

    /// A zeroed 4 KiB frame.
    pub(super) fn alloc(&mut self) -> u64 {
        let f = self.next;
        self.next += KB4;
        f
    }

    pub(super) fn w64(&self, addr: u64, v: u64) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }
    pub(super) fn r64(&self, addr: u64) -> u64 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }
    pub(super) fn w32(&self, addr: u64, v: u32) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }
    pub(super) fn r32(&self, addr: u64) -> u32 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }
    pub(super) fn w8(&self, addr: u64, v: u8) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }
    pub(super) fn r8(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    /// Maps `linear` → `phys` with a page of `size` and leaf bits `flags`
    /// under a 64-bit table at `table`, levels at `shifts`; returns the
    /// address of the entry used at each level.
    fn map64(&mut self, mut table: u64, shifts: &[u32], linear: u64, phys: u64, flags: u64, size: u64) -> Vec<u64> {
        let mut addrs = Vec::new();
        for &shift in shifts {
            let addr = table + ((linear >> shift) & 0x1ff) * 8;
            addrs.push(addr);
            if 1u64 << shift == size {
                let ps = if size > KB4 { pte::PS } else { 0 };
                self.w64(addr, phys | flags | ps);
                return addrs;
            }
            let e = self.r64(addr);
            table = if e & pte::P == 0 {
                let t = self.alloc();
                self.w64(addr, t | DIR);
                t
            } else {
                e & pte::ADDR
            };
        }
        panic!("bad page size {size:#x}");
    }

    /// 4-level paging under the PML4 at `root`.
    pub(super) fn map_long(&mut self, root: u64, linear: u64, phys: u64, flags: u64, size: u64) -> Vec<u64> {
        self.map64(root, &[39, 30, 21, 12], linear, phys, flags, size)
    }

    /// PAE paging under the PDPT at `pdpt`; the first address is the PDPTE.
    pub(super) fn map_pae(&mut self, pdpt: u64, linear: u64, phys: u64, flags: u64, size: u64) -> Vec<u64> {
        let pdpte = pdpt + ((linear >> 30) & 3) * 8;
        let e = self.r64(pdpte);
        let pd = if e & pte::P == 0 {
            let t = self.alloc();
            self.w64(pdpte, t | pte::P);
            t
        } else {
            e & pte::ADDR
        };
        let mut addrs = vec![pdpte];
        addrs.extend(self.map64(pd, &[21, 12], linear, phys, flags, size));
        addrs
    }

    /// Legacy 32-bit paging under the page directory at `pd`.
    pub(super) fn map_legacy(&mut self, pd: u64, linear: u64, phys: u64, flags: u64, size: u64) -> Vec<u64> {
        let pde = pd + ((linear >> 22) & 0x3ff) * 4;
        if size == MB4 {
            self.w32(pde, (phys | flags | pte::PS) as u32);
            return vec![pde];
        }
        let e = self.r32(pde);
        let pt = if e & 1 == 0 {
            let t = self.alloc();
            self.w32(pde, (t | DIR) as u32);
            t
        } else {
            u64::from(e & 0xffff_f000)
        };
        let leaf = pt + ((linear >> 12) & 0x3ff) * 4;
        self.w32(leaf, (phys | flags) as u32);
        vec![pde, leaf]
    }
}

fn paged(cr3: u64, cr4: u64, efer: u64) -> X86State {
    let mut s = X86State::reset();
    s.cr0 = ctrl::CR0_PE | ctrl::CR0_PG | ctrl::CR0_WP | ctrl::CR0_ET;
    s.cr3 = cr3;
    s.cr4 = cr4;
    s.efer = efer;
    s.segs[seg::SS] = SegmentCache { base: 0, limit: 0xffff_ffff, attr: 0x93 | SegmentCache::ATTR_DB, selector: 0x10 };
    s.recompute_hflags();
    s
}

/// 4-level paging with NXE.
pub(super) fn long_state(cr3: u64) -> X86State {
    let mut s = paged(cr3, ctrl::CR4_PAE, ctrl::EFER_LME | ctrl::EFER_LMA | ctrl::EFER_NXE);
    s.segs[seg::CS].attr = 0x9b | SegmentCache::ATTR_L;
    s.recompute_hflags();
    s
}

/// PAE paging with NXE.
pub(super) fn pae_state(cr3: u64) -> X86State {
    paged(cr3, ctrl::CR4_PAE, ctrl::EFER_NXE)
}

/// Legacy 32-bit paging with PSE.
pub(super) fn legacy_state(cr3: u64) -> X86State {
    paged(cr3, ctrl::CR4_PSE, 0)
}

/// Sets CPL (the SS descriptor cache's DPL).
pub(super) fn set_cpl(s: &mut X86State, cpl: u16) {
    s.segs[seg::SS].attr = (s.segs[seg::SS].attr & !0x60) | (cpl << 5);
    s.recompute_hflags();
}
