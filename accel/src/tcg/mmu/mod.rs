//! Guest memory as the CPU sees it: segmentation is done by the caller, this
//! takes linear addresses through paging (a per-vCPU software TLB over a page
//! walker) to guest-physical RAM or to MMIO devices.

use super::exception::Result;
use super::state::X86State;

/// What an access is for (permission checks and #PF error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
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
    fn read(&mut self, state: &mut X86State, linear: u64, size: usize, access: Access, privilege: Privilege) -> Result<u64>;
    /// Writes the low `size` bytes of `value` at `linear`.
    fn write(&mut self, state: &mut X86State, linear: u64, size: usize, value: u64, privilege: Privilege) -> Result<()>;
}
