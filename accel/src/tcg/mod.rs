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
//! - [`fpu`]: x87/MMX/MXCSR semantics: register stack, control and status
//!   words, 80-bit soft-float, the FXSAVE image.
//! - `ir`: the typed IR a translation block is lowered to; the one place
//!   instruction semantics live. Interpreted by `interp` (through its own
//!   compact form, `bytecode`); hot blocks are compiled to host code by
//!   `jit` (Cranelift).
//! - `translate/`: the frontend: iced-x86 decode → IR, one family per file.
//! - `interrupts`: exception and interrupt delivery (IVT, IDT, privilege
//!   changes, TSS stacks, IST, 64-bit frames, IRET), double and triple fault.
//! - `segmentation`: descriptor loads, far transfers, privilege checks.
//! - `simd`: SSE/SSE2 helpers (XMM registers, MXCSR), lowered to by
//!   `translate/sse`.
//! - `system`: helpers for system instructions (CR/DR/MSR moves, descriptor
//!   table loads, CPUID table, RDTSC, SYSCALL/SYSRET, HLT…).
//! - `tb_cache`: translation blocks keyed by physical PC + hflags.
//! - `chain`: direct links between compiled blocks.
//! - `apic`: a vCPU's side of the emulated interrupt controllers and timers
//!   (`devices::irqchip`): LAPIC page and MSRs, CR8, timers, interrupts.
//! - `vcpu`, `vm`: the `Accelerator`/`Vm`/`Vcpu` implementation.
//! - `profile`: guest-RIP sampling for bring-up (`RXVMM_TCG_PROFILE`).
//! - `stats`: counters of translation, compilation and block runs.

pub mod apic;
pub mod bytecode;
mod chain;
pub mod context;
pub mod exception;
pub mod flags;
pub mod fpu;
pub mod interp;
pub mod interrupts;
pub mod ir;
pub mod jit;
pub mod mmu;
mod profile;
pub mod segmentation;
pub mod signals;
pub mod simd;
pub mod state;
mod stats;
pub mod system;
pub mod tb_cache;
#[cfg(test)]
mod test_support;
pub mod translate;
mod vcpu;
mod vcpu_state;
pub mod vm;

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use crate::{AccelKind, Accelerator, Result, Vm, VmConfig};

pub use stats::{stats, TcgStats};
pub use vcpu::TcgVcpu;
pub use vm::TcgVm;

/// Errors of the TCG engine.
#[derive(Debug, thiserror::Error)]
pub enum TcgError {
    /// The VM was asked for no vCPUs, or more than APIC IDs allow.
    #[error("{0} vCPUs requested; the TCG engine supports 1 to 254")]
    VcpuCount(u8),
    /// A vCPU id outside the VM's configured count.
    #[error("vCPU id {id} is out of range for a {count}-vCPU VM")]
    VcpuId { id: u8, count: u8 },
    /// A GSI the interrupt controller has no pin for.
    #[error("GSI {0} is not routed (pins 0 to 23)")]
    Gsi(u32),
    /// vCPU `id` was created twice.
    #[error("vCPU {0} already exists")]
    VcpuExists(u8),
    /// The emulated interrupt controllers could not be built.
    #[error("interrupt controllers: {0}")]
    IrqChip(#[source] devices::irqchip::IrqChipError),
    /// An ioeventfd could not be duplicated.
    #[error("duplicating an ioeventfd")]
    EventFd(#[source] std::io::Error),
}

/// The TCG [`Accelerator`]: an in-process x86-64 system emulator.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcg {
    pub jit: JitPolicy,
}

/// Which blocks the JIT compiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitPolicy {
    /// None: everything is interpreted.
    Off,
    /// A block once it has run this many times, on the JIT's thread.
    Hot(u32),
    /// Every block, before its first run (testing the JIT).
    Always,
}

impl Default for JitPolicy {
    fn default() -> Self {
        JitPolicy::Hot(jit::HOT_THRESHOLD)
    }
}

impl Accelerator for Tcg {
    fn kind(&self) -> AccelKind {
        AccelKind::Tcg
    }

    fn create_vm(&self, memory: &GuestMemoryMmap, config: &VmConfig) -> Result<Arc<dyn Vm>> {
        Ok(Arc::new(TcgVm::new(memory, config, self.jit)?))
    }
}
