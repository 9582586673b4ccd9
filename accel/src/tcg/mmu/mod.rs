//! Guest memory as the CPU sees it: segmentation is done by the caller, this
//! takes linear addresses through paging (a per-vCPU software TLB over a page
//! walker) to guest-physical RAM or to MMIO devices.
//!
//! - [`walker`]: the page walk for every paging mode, permission checks,
//!   A/D updates.
//! - [`tlb`]: [`SoftTlb`], the per-vCPU direct-mapped translation cache.
//! - [`memory`]: [`CpuMemory`], the [`LinearMemory`] a vCPU executes with
//!   (plus instruction fetch, translation and LOCKed atomics).
//! - [`phys`]: [`PhysMemory`], guest-physical RAM/MMIO routing.
//! - [`code_pages`]: [`CodePages`], the VM-wide "page holds translated
//!   code" map for self-modifying code.
//! - `host`: raw access to a RAM frame through its host address.

pub mod code_pages;
pub mod fast_tlb;
mod host;
pub mod memory;
pub mod phys;
#[cfg(test)]
mod tests;
pub mod tlb;
pub mod walker;

pub use code_pages::CodePages;
pub use memory::CpuMemory;
pub use phys::PhysMemory;
pub use tlb::SoftTlb;
pub use walker::{LINEAR_ADDR_BITS, PHYS_ADDR_BITS};

use super::exception::Result;
use super::state::X86State;

/// What an access is for (permission checks and #PF error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    /// A write, or the read half of a read-modify-write (checked for write
    /// permission and sets the dirty bit, as the CPU does).
    Write,
    Fetch,
}

/// Whose access this is: the CPL-derived user/supervisor check, or an
/// implicit supervisor access (descriptor tables, TSS, IDT frames) that is
/// checked as supervisor whatever the CPL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Checked against the current CPL (CPL 3 = user).
    Current,
    /// An implicit system access: always supervisor.
    Supervisor,
}

/// Linear-address memory access for everything above the MMU (interpreter,
/// helpers, exception delivery). Implemented by [`CpuMemory`]-like types;
/// tests may implement it over a flat buffer.
pub trait LinearMemory {
    /// Reads `size` (1, 2, 4, 8) bytes little-endian at `linear`, zero-extended.
    fn read(
        &mut self,
        state: &mut X86State,
        linear: u64,
        size: usize,
        access: Access,
        privilege: Privilege,
    ) -> Result<u64>;
    /// Writes the low `size` bytes of `value` at `linear`.
    fn write(&mut self, state: &mut X86State, linear: u64, size: usize, value: u64, privilege: Privilege)
        -> Result<()>;
}
