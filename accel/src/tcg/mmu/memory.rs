//! [`CpuMemory`]: one vCPU's view of guest memory by linear address.
//!
//! Every access is looked up in the [`SoftTlb`]; a miss (or an entry that
//! doesn't allow the access) walks the page tables. RAM is then accessed
//! through the host address cached in the entry, anything else goes to
//! [`PhysMemory`] (MMIO callbacks). Accesses that cross a page boundary
//! translate both pages before touching either, so faults are precise.

use std::sync::{Arc, Mutex, PoisonError};

use vm_memory::GuestMemoryMmap;

use super::code_pages::CodePages;
use super::fast_tlb::{FastEntry, FastTlb};
use super::host::HostPage;
use super::phys::PhysMemory;
use super::tlb::{SoftTlb, TlbEntry};
use super::walker::{self, Checker, Rights, PAGE_OFFSET, PAGE_SIZE};
use super::{Access, LinearMemory, Privilege};
use crate::tcg::exception::{Exception, Result};
use crate::tcg::state::{ctrl, X86State};
use crate::VmOps;

const PAGE: usize = PAGE_SIZE as usize;

/// Serialises the atomic operations that can't be one host atomic
/// instruction: operands straddling a 16-byte boundary (so a page too) or
/// in MMIO. They are atomic against each other only: a plain store, or a
/// lock-free atomic from another vCPU on overlapping bytes, can interleave.
/// Hardware split locks are atomic against everything, but guests avoid
/// them (Linux treats them as bugs), so the caveat is accepted.
static SLOW_ATOMICS: Mutex<()> = Mutex::new(());

/// Up to two pieces of one access, split at the page boundary.
#[derive(Clone, Copy)]
struct Piece {
    entry: TlbEntry,
    off: usize,
    len: usize,
}

/// One vCPU's linear-address access to guest memory: paging, its TLB, RAM
/// vs MMIO routing, and self-modifying-code notification.
///
/// Host addresses cached in the TLB point into the mappings of the
/// `GuestMemoryMmap` held here; holding it keeps them mapped (its regions
/// are reference-counted), and the TLB is never handed out, so no cached
/// address outlives them.
pub struct CpuMemory {
    phys: PhysMemory,
    tlb: SoftTlb,
    /// What compiled code reads inline; a subset of `tlb`.
    fast: FastTlb,
}

impl CpuMemory {
    pub fn new(mem: GuestMemoryMmap, ops: Arc<dyn VmOps>, code_pages: Arc<CodePages>) -> Self {
        CpuMemory { phys: PhysMemory::new(mem, ops, code_pages), tlb: SoftTlb::new(), fast: FastTlb::default() }
    }

    /// Physical access (page walker, DMA-style users, debugging).
    pub fn phys(&self) -> &PhysMemory {
        &self.phys
    }

    pub fn code_pages(&self) -> &Arc<CodePages> {
        self.phys.code_pages()
    }

    /// The TLB, for inspection.
    pub fn tlb(&self) -> &SoftTlb {
        &self.tlb
    }

    /// See [`SoftTlb::flush_all`].
    pub fn flush_all(&mut self) {
        self.tlb.flush_all();
        self.fast.flush_all();
    }

    /// See [`SoftTlb::flush_nonglobal`].
    pub fn flush_nonglobal(&mut self) {
        self.tlb.flush_nonglobal();
        self.fast.flush_all();
    }

    /// See [`SoftTlb::flush_page`]. `linear` as for accesses (32 bits
    /// outside long mode).
    pub fn flush_page(&mut self, linear: u64) {
        if self.tlb.flush_page(linear) {
            self.fast.flush_all();
        } else {
            self.fast.flush_page(linear);
        }
    }

    /// See [`crate::tcg::context::CpuBus::ram_span`].
    pub fn ram_span(
        &mut self,
        state: &X86State,
        linear: u64,
        len: usize,
        access: Access,
    ) -> Result<Option<crate::tcg::context::RamSpan>> {
        let linear = Self::linear(state, linear);
        let off = (linear & PAGE_OFFSET) as usize;
        if len == 0 || off + len > PAGE {
            return Ok(None);
        }
        let e = self.entry(state, linear, access, Privilege::Current)?;
        Ok(e.host.map(|h| crate::tcg::context::RamSpan {
            host: h.as_ptr().wrapping_add(off),
            phys: e.phys_page + off as u64,
        }))
    }

    /// The fast TLB table for the current privilege class.
    pub fn fast_table(&self, state: &X86State) -> *const FastEntry {
        self.fast.table(state.cpl() == 3)
    }

    /// After an access of kind `access` at `linear` succeeded: lets compiled
    /// code repeat such accesses to its page inline when the page is plain
    /// RAM and the cached rights allow it without further checks (SMAP's
    /// dependence on RFLAGS.AC keeps user pages out of the supervisor table).
    pub fn fill_fast(&mut self, state: &X86State, linear: u64, access: Access) {
        let linear = Self::linear(state, linear);
        let Some(e) = self.tlb.lookup(linear) else { return };
        let Some(host) = e.host else { return };
        if !Checker::new(state, access, Privilege::Current).hits(e.rights) {
            return;
        }
        let user = state.cpl() == 3;
        let smap = state.cr0 & ctrl::CR0_PG != 0 && state.cr4 & ctrl::CR4_SMAP != 0;
        if !user && smap && e.rights.has(Rights::USER) {
            return;
        }
        let phys_page = e.phys_page / PAGE_SIZE;
        let word = self.phys.code_pages().word_ptr(phys_page) as u64;
        let host = host.as_ptr() as u64;
        self.fast.fill(user, linear & !PAGE_OFFSET, access == Access::Write, host, word, phys_page);
    }

    /// Outside long mode linear addresses are 32 bits wide (and wrap).
    #[inline]
    fn linear(state: &X86State, linear: u64) -> u64 {
        if state.efer & ctrl::EFER_LMA != 0 {
            linear
        } else {
            linear & 0xffff_ffff
        }
    }

    /// The TLB entry for `linear` that allows `access`, walking on a miss.
    #[inline]
    fn entry(&mut self, state: &X86State, linear: u64, access: Access, privilege: Privilege) -> Result<TlbEntry> {
        let chk = Checker::new(state, access, privilege);
        match self.tlb.lookup(linear) {
            Some(e) if chk.hits(e.rights) => Ok(*e),
            _ => self.fill(state, &chk, linear),
        }
    }

    #[cold]
    fn fill(&mut self, state: &X86State, chk: &Checker, linear: u64) -> Result<TlbEntry> {
        let t = walker::walk_checked(&self.phys, state, chk, linear)?;
        let host = self.phys.ram_page(t.phys_page).and_then(std::ptr::NonNull::new).map(|ptr| {
            // SAFETY: `ram_page` returns the start of a whole 4 KiB frame
            // inside one region of `self.phys`'s GuestMemoryMmap. The entry
            // lives in `self.tlb`, which never leaves `self`, and `self.phys`
            // (private, never replaced) keeps that region's mapping alive.
            unsafe { HostPage::new(ptr) }
        });
        Ok(self.tlb.insert(linear, &t, host))
    }

    /// Translates an access of `len` (1..=4096) bytes, both pages first when
    /// it crosses a boundary; the second one faults with CR2 = its start.
    fn pieces(
        &mut self,
        state: &X86State,
        linear: u64,
        len: usize,
        access: Access,
        privilege: Privilege,
    ) -> Result<(Piece, Option<Piece>)> {
        let linear = Self::linear(state, linear);
        let off = (linear & PAGE_OFFSET) as usize;
        let first_len = len.min(PAGE - off);
        let first = Piece { entry: self.entry(state, linear, access, privilege)?, off, len: first_len };
        if first_len == len {
            return Ok((first, None));
        }
        let next = Self::linear(state, (linear & !PAGE_OFFSET).wrapping_add(PAGE_SIZE));
        let entry = self.entry(state, next, access, privilege)?;
        Ok((first, Some(Piece { entry, off: 0, len: len - first_len })))
    }

    fn read_piece(&self, p: &Piece, buf: &mut [u8]) {
        if !p.entry.host.is_some_and(|h| h.read(p.off, buf)) {
            self.phys.read(p.entry.phys_page + p.off as u64, buf);
        }
    }

    fn write_piece(&self, p: &Piece, buf: &[u8]) {
        match p.entry.host {
            Some(h) if h.write(p.off, buf) => self.phys.code_pages().notify_page(p.entry.phys_page / PAGE_SIZE),
            _ => self.phys.write(p.entry.phys_page + p.off as u64, buf),
        }
    }

    /// The physical address of `linear` for `access`: translation blocks are
    /// keyed by the physical PC. May raise #PF (and #GP for non-canonical).
    pub fn translate(&mut self, state: &X86State, linear: u64, access: Access, privilege: Privilege) -> Result<u64> {
        let linear = Self::linear(state, linear);
        let e = self.entry(state, linear, access, privilege)?;
        Ok(e.phys_page | (linear & PAGE_OFFSET))
    }

    /// Instruction fetch for the decoder: reads up to `buf.len()` bytes at
    /// `linear` but not past the end of its page; returns how many. A fault
    /// on the next page is the decoder's to raise by fetching from it.
    pub fn fetch(&mut self, state: &X86State, linear: u64, buf: &mut [u8]) -> Result<usize> {
        let linear = Self::linear(state, linear);
        let off = (linear & PAGE_OFFSET) as usize;
        let n = buf.len().min(PAGE - off);
        if n == 0 {
            return Ok(0);
        }
        let entry = self.entry(state, linear, Access::Fetch, Privilege::Current)?;
        self.read_piece(&Piece { entry, off, len: n }, &mut buf[..n]);
        Ok(n)
    }

    /// Reads `buf.len()` bytes at `linear` (SSE operands, descriptor-table
    /// entries, FXSAVE images…). Each 4 KiB chunk is translated completely
    /// before it is read.
    pub fn read_bytes(
        &mut self,
        state: &X86State,
        linear: u64,
        buf: &mut [u8],
        access: Access,
        privilege: Privilege,
    ) -> Result<()> {
        for (i, chunk) in buf.chunks_mut(PAGE).enumerate() {
            let at = linear.wrapping_add((i * PAGE) as u64);
            let (a, b) = self.pieces(state, at, chunk.len(), access, privilege)?;
            let (head, tail) = chunk.split_at_mut(a.len);
            self.read_piece(&a, head);
            if let Some(b) = b {
                self.read_piece(&b, tail);
            }
        }
        Ok(())
    }

    /// Writes `buf` at `linear`. Both pages of a page-crossing chunk are
    /// translated before any byte is written (precise #PF); writes longer
    /// than 4 KiB are precise per 4 KiB chunk only.
    pub fn write_bytes(&mut self, state: &X86State, linear: u64, buf: &[u8], privilege: Privilege) -> Result<()> {
        for (i, chunk) in buf.chunks(PAGE).enumerate() {
            let at = linear.wrapping_add((i * PAGE) as u64);
            let (a, b) = self.pieces(state, at, chunk.len(), Access::Write, privilege)?;
            let (head, tail) = chunk.split_at(a.len);
            self.write_piece(&a, head);
            if let Some(b) = b {
                self.write_piece(&b, tail);
            }
        }
        Ok(())
    }

    /// A LOCKed read-modify-write of `size` (1, 2, 4, 8) bytes at `linear`
    /// at the current privilege: replaces the value with `f(old)` atomically
    /// against other vCPUs and returns `old`. `f` may be called more than
    /// once (compare-exchange loop), so it must be pure.
    pub fn atomic_rmw(&mut self, state: &X86State, linear: u64, size: usize, f: impl FnMut(u64) -> u64) -> Result<u64> {
        self.atomic_rmw_as(state, linear, size, Privilege::Current, f)
    }

    /// [`CpuMemory::atomic_rmw`] with an explicit privilege: implicit
    /// supervisor RMWs (descriptor accessed bits, the TSS busy bit).
    pub fn atomic_rmw_as(
        &mut self,
        state: &X86State,
        linear: u64,
        size: usize,
        privilege: Privilege,
        mut f: impl FnMut(u64) -> u64,
    ) -> Result<u64> {
        let size = size.clamp(1, 8);
        let old = self.rmw(state, linear, size, privilege, &mut |v| u128::from(f(v as u64)))?;
        Ok(old as u64)
    }

    /// `LOCK CMPXCHG`: stores `new` if the `size`-byte value at `linear`
    /// equals `expected` (both truncated to `size`). Returns whether it did
    /// and the value found.
    pub fn cmpxchg(
        &mut self,
        state: &X86State,
        linear: u64,
        size: usize,
        expected: u64,
        new: u64,
    ) -> Result<(bool, u64)> {
        self.cmpxchg_as(state, linear, size, Privilege::Current, expected, new)
    }

    /// [`CpuMemory::cmpxchg`] with an explicit privilege.
    pub fn cmpxchg_as(
        &mut self,
        state: &X86State,
        linear: u64,
        size: usize,
        privilege: Privilege,
        expected: u64,
        new: u64,
    ) -> Result<(bool, u64)> {
        let size = size.clamp(1, 8);
        let mask = u64::MAX >> (64 - 8 * size);
        let expected = expected & mask;
        // On a mismatch the old value is written back, as the CPU does.
        let old = self.atomic_rmw_as(state, linear, size, privilege, |old| if old == expected { new } else { old })?;
        Ok((old == expected, old))
    }

    /// `LOCK CMPXCHG16B`: #GP(0) unless `linear` is 16-byte aligned. Uses
    /// the host's CMPXCHG16B on RAM; MMIO takes the global lock.
    pub fn cmpxchg16(&mut self, state: &X86State, linear: u64, expected: u128, new: u128) -> Result<(bool, u128)> {
        if !linear.is_multiple_of(16) {
            return Err(Exception::gp0());
        }
        let old =
            self.rmw(state, linear, 16, Privilege::Current, &mut |old| if old == expected { new } else { old })?;
        Ok((old == expected, old))
    }

    /// The atomic read-modify-write under all the above: checks write access
    /// to every byte first, then one host atomic when the operand fits a
    /// naturally aligned window of RAM, else the global lock.
    fn rmw(
        &mut self,
        state: &X86State,
        linear: u64,
        size: usize,
        privilege: Privilege,
        f: &mut dyn FnMut(u128) -> u128,
    ) -> Result<u128> {
        let (a, b) = self.pieces(state, linear, size, Access::Write, privilege)?;
        if b.is_none() {
            if let Some(old) = a.entry.host.and_then(|h| h.rmw(a.off, size, f)) {
                self.phys.code_pages().notify_page(a.entry.phys_page / PAGE_SIZE);
                return Ok(old);
            }
        }
        let _guard = SLOW_ATOMICS.lock().unwrap_or_else(PoisonError::into_inner);
        let mut buf = [0u8; 16];
        let bytes = &mut buf[..size];
        let (head, tail) = bytes.split_at_mut(a.len);
        self.read_piece(&a, head);
        if let Some(b) = &b {
            self.read_piece(b, tail);
        }
        let old = u128::from_le_bytes(buf);
        let mask = if size >= 16 { u128::MAX } else { (1u128 << (8 * size)) - 1 };
        let new = (f(old) & mask).to_le_bytes();
        let (head, tail) = new[..size].split_at(a.len);
        self.write_piece(&a, head);
        if let Some(b) = &b {
            self.write_piece(b, tail);
        }
        Ok(old)
    }
}

impl LinearMemory for CpuMemory {
    fn read(
        &mut self,
        state: &mut X86State,
        linear: u64,
        size: usize,
        access: Access,
        privilege: Privilege,
    ) -> Result<u64> {
        let size = size.clamp(1, 8);
        let linear = Self::linear(state, linear);
        let off = (linear & PAGE_OFFSET) as usize;
        if off + size <= PAGE {
            let e = self.entry(state, linear, access, privilege)?;
            if let Some(v) = e.host.and_then(|h| h.load(off, size)) {
                return Ok(v);
            }
            return Ok(self.phys.read_value(e.phys_page + off as u64, size));
        }
        let mut buf = [0u8; 8];
        self.read_bytes(state, linear, &mut buf[..size], access, privilege)?;
        Ok(u64::from_le_bytes(buf))
    }

    fn write(
        &mut self,
        state: &mut X86State,
        linear: u64,
        size: usize,
        value: u64,
        privilege: Privilege,
    ) -> Result<()> {
        let size = size.clamp(1, 8);
        let linear = Self::linear(state, linear);
        let off = (linear & PAGE_OFFSET) as usize;
        if off + size <= PAGE {
            let e = self.entry(state, linear, Access::Write, privilege)?;
            match e.host {
                Some(h) if h.store(off, size, value) => self.phys.code_pages().notify_page(e.phys_page / PAGE_SIZE),
                _ => self.phys.write_value(e.phys_page + off as u64, size, value),
            }
            return Ok(());
        }
        self.write_bytes(state, linear, &value.to_le_bytes()[..size], privilege)
    }
}
