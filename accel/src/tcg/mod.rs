//! The TCG engine: an in-process x86-64 system emulator in QEMU's shape.
//!
//! Module map (one concept each):
//! - [`state`]: `X86State`, the `#[repr(C)]` architectural state (GPRs, RIP,
//!   RFLAGS + lazy flags, segments with descriptor caches, control registers,
//!   MSRs, x87/SSE) and the derived `hflags` that key translated code.
//! - [`flags`]: lazy condition codes (`CcOp`) and their evaluation.
//! - [`exception`]: exceptions as values (`Exception`), raised by any layer.
//! - [`mmu`]: linear → physical translation (page walker for 2-level, PAE and
//!   4-level paging, `SoftTlb`), guest RAM vs MMIO routing, the per-page
//!   "holds translated code" map for self-modifying code.
//! - `ir`: the typed IR a translation block is lowered to; the one place
//!   instruction semantics live. Interpreted by `interp`, compiled by the JIT later.
//! - `translate/`: the frontend: iced-x86 decode → IR, one family per file.
//! - `interrupts`: exception and interrupt delivery (IVT, IDT, privilege
//!   changes, TSS stacks, IST, 64-bit frames, IRET), double and triple fault.
//! - `segmentation`: descriptor loads, far transfers, privilege checks.
//! - `system`: helpers for system instructions (CR/DR/MSR moves, descriptor
//!   table loads, CPUID table, RDTSC, SYSCALL/SYSRET, HLT…).
//! - `tb_cache`: translation blocks keyed by physical PC + hflags.
//! - `vcpu`, `vm`: the `Accelerator`/`Vm`/`Vcpu` implementation.

pub mod exception;
pub mod flags;
pub mod mmu;
pub mod state;

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use crate::{AccelKind, Accelerator, Error, Result, Vm, VmConfig};

/// Placeholder that keeps TCG's place in `--accel` until the engine lands.
pub struct Tcg;

impl Accelerator for Tcg {
    fn kind(&self) -> AccelKind {
        AccelKind::Tcg
    }

    fn create_vm(&self, _memory: &GuestMemoryMmap, _config: &VmConfig) -> Result<Arc<dyn Vm>> {
        Err(Error::TcgNotBuilt)
    }
}
