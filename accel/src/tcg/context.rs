//! What executing code sees: the CPU state, guest memory through the MMU,
//! and the port-I/O side of the VMM. Built by the vCPU loop around each
//! block execution and handed to the interpreter and every helper.

use super::apic::CpuApic;
use super::exception::Result;
use super::mmu::fast_tlb::{FastEntry, EMPTY_TABLE};
use super::mmu::{Access, CodePages, CpuMemory, LinearMemory, Privilege};
use super::state::X86State;
use crate::VmOps;

/// Guest memory as executing code needs it beyond plain reads and writes:
/// instruction-fetch translation (translation blocks are keyed by physical
/// address), atomic accesses for LOCKed instructions, and TLB maintenance.
pub trait CpuBus: LinearMemory {
    /// The guest-physical address of an instruction fetch at `linear`
    /// (checked for execute permission; may raise #PF).
    fn translate_code(&mut self, state: &mut X86State, linear: u64) -> Result<u64>;
    /// Reads code bytes at `linear` into `buf`, stopping at the end of the
    /// page; returns how many were read.
    fn fetch_code(&mut self, state: &mut X86State, linear: u64, buf: &mut [u8]) -> Result<usize>;
    /// Atomically replaces the `size`-byte value at `linear` with
    /// `op(old)`; returns the old value.
    fn atomic_rmw(
        &mut self,
        state: &mut X86State,
        linear: u64,
        size: usize,
        op: &mut dyn FnMut(u64) -> u64,
    ) -> Result<u64>;
    /// Atomically stores `new` at `linear` if it holds `expected`; returns
    /// the value found (equal to `expected` on success).
    fn cmpxchg(&mut self, state: &mut X86State, linear: u64, size: usize, expected: u64, new: u64) -> Result<u64>;
    /// CMPXCHG16B's memory side: #GP(0) unless `linear` is 16-byte aligned,
    /// else stores `new` if the 16 bytes there hold `expected`; returns the
    /// value found. The default (for test doubles) is not atomic.
    fn cmpxchg16(&mut self, state: &mut X86State, linear: u64, expected: u128, new: u128) -> Result<u128> {
        if !linear.is_multiple_of(16) {
            return Err(super::exception::Exception::gp0());
        }
        let lo = self.read(state, linear, 8, Access::Write, Privilege::Current)?;
        let hi = self.read(state, linear.wrapping_add(8), 8, Access::Write, Privilege::Current)?;
        let old = u128::from(hi) << 64 | u128::from(lo);
        if old == expected {
            self.write(state, linear, 8, new as u64, Privilege::Current)?;
            self.write(state, linear.wrapping_add(8), 8, (new >> 64) as u64, Privilege::Current)?;
        }
        Ok(old)
    }
    /// Drops cached translations: non-global ones (CR3 write), or all of
    /// them (`include_global`: CR0/CR4 paging changes).
    fn flush_tlb(&mut self, include_global: bool);
    /// Drops the cached translation of the page holding `linear` (INVLPG).
    fn flush_tlb_page(&mut self, linear: u64);
    /// The fast TLB compiled code reads for the current privilege (see
    /// [`super::mmu::fast_tlb`]); the default is a table that never hits.
    fn fast_table(&self, _state: &X86State) -> *const FastEntry {
        EMPTY_TABLE.as_ptr()
    }
    /// Offers the page of a successful `access` at `linear` to the fast TLB.
    fn fill_fast(&mut self, _state: &X86State, _linear: u64, _access: Access) {}
    /// Changes whenever cached translations are flushed (see
    /// [`super::mmu::SoftTlb::epoch`]).
    fn tlb_epoch(&self) -> u64 {
        0
    }
    /// `[linear, linear + len)` as guest RAM for `access` at the current
    /// privilege, when it lies in one page of plain RAM (faults as an
    /// access there would); `None` sends the caller to element-wise
    /// accesses (MMIO, page crossings, test doubles).
    fn ram_span(
        &mut self,
        _state: &mut X86State,
        _linear: u64,
        _len: usize,
        _access: Access,
    ) -> Result<Option<RamSpan>> {
        Ok(None)
    }
}

/// A run of guest RAM inside one page: its host mapping and physical
/// address. Valid while the vCPU's current access lasts (guest RAM stays
/// mapped for the VM's lifetime).
#[derive(Debug, Clone, Copy)]
pub struct RamSpan {
    pub host: *mut u8,
    pub phys: u64,
}

/// Things a helper asks the vCPU loop to do once the block has returned.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoopRequests {
    /// The guest asked for a CPU reset.
    pub reset: bool,
}

/// The world of one executing vCPU.
pub struct CpuContext<'a> {
    pub state: &'a mut X86State,
    pub mem: &'a mut dyn CpuBus,
    /// Port I/O (and nothing else: MMIO goes through `mem`).
    pub io: &'a dyn VmOps,
    pub requests: LoopRequests,
    /// The VM's self-modifying-code map: its generation moving during a
    /// block means a store may have hit code (checked per instruction).
    pub code_pages: &'a CodePages,
    /// This vCPU's APIC ID and the VM's vCPU count (CPUID topology).
    pub cpu_id: u8,
    pub vcpus: u8,
    /// This vCPU's local APIC (LAPIC MSRs, CR8), when the VM emulates the
    /// interrupt controllers; without one those MSRs are plain state.
    pub apic: Option<&'a CpuApic>,
}

impl CpuBus for CpuMemory {
    fn translate_code(&mut self, state: &mut X86State, linear: u64) -> Result<u64> {
        self.translate(state, linear, Access::Fetch, Privilege::Current)
    }
    fn fetch_code(&mut self, state: &mut X86State, linear: u64, buf: &mut [u8]) -> Result<usize> {
        self.fetch(state, linear, buf)
    }
    fn atomic_rmw(
        &mut self,
        state: &mut X86State,
        linear: u64,
        size: usize,
        op: &mut dyn FnMut(u64) -> u64,
    ) -> Result<u64> {
        CpuMemory::atomic_rmw(self, state, linear, size, op)
    }
    fn cmpxchg(&mut self, state: &mut X86State, linear: u64, size: usize, expected: u64, new: u64) -> Result<u64> {
        CpuMemory::cmpxchg(self, state, linear, size, expected, new).map(|(_, old)| old)
    }
    fn cmpxchg16(&mut self, state: &mut X86State, linear: u64, expected: u128, new: u128) -> Result<u128> {
        CpuMemory::cmpxchg16(self, state, linear, expected, new).map(|(_, old)| old)
    }
    fn flush_tlb(&mut self, include_global: bool) {
        if include_global {
            self.flush_all();
        } else {
            self.flush_nonglobal();
        }
    }
    fn flush_tlb_page(&mut self, linear: u64) {
        self.flush_page(linear);
    }
    fn fast_table(&self, state: &X86State) -> *const FastEntry {
        CpuMemory::fast_table(self, state)
    }
    fn fill_fast(&mut self, state: &X86State, linear: u64, access: Access) {
        CpuMemory::fill_fast(self, state, linear, access);
    }
    fn tlb_epoch(&self) -> u64 {
        self.tlb().epoch()
    }
    fn ram_span(&mut self, state: &mut X86State, linear: u64, len: usize, access: Access) -> Result<Option<RamSpan>> {
        CpuMemory::ram_span(self, state, linear, len, access)
    }
}
