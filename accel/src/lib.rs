//! The `Accelerator` trait and its engines.
//!
//! Modelled on Cloud Hypervisor's `hypervisor` crate: an [`Accelerator`]
//! creates a [`Vm`], the VM creates [`Vcpu`]s, and each vCPU is handed the
//! VMM's [`VmOps`] callbacks so that it completes port and MMIO accesses
//! itself, on its own thread. The exit enum stays tiny as a result, and the
//! VMM above the trait has no engine-specific branches.

pub mod cpu_state;
pub mod kvm;
pub mod oracle;
pub mod tcg;

use std::sync::Arc;

pub use cpu_state::{CpuState, DescriptorTable, Segment};
pub use devices::{BusDevice, IrqLine};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Which engine runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelKind {
    Kvm,
    Tcg,
}

impl std::fmt::Display for AccelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AccelKind::Kvm => "kvm",
            AccelKind::Tcg => "tcg",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("KVM: {0}")]
    Kvm(#[from] kvm::KvmError),
    #[error("TCG: {0}")]
    Tcg(#[from] tcg::TcgError),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The VMM side of every guest access a vCPU can't complete by itself.
pub trait VmOps: Send + Sync {
    fn pio_read(&self, port: u16, data: &mut [u8]);
    fn pio_write(&self, port: u16, data: &[u8]);
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    fn mmio_write(&self, addr: u64, data: &[u8]);
}

/// Where an [`Vm::register_ioevent`] eventfd listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventAddress {
    Pio(u64),
    Mmio(u64),
}

/// A device an engine needs on one of the VMM's buses at `[base, base + len)`.
#[derive(Clone)]
pub struct BusSlot {
    pub base: u64,
    pub len: u64,
    pub device: Arc<dyn BusDevice>,
}

/// The platform devices an engine emulates itself and the VMM must place on
/// its buses: the interrupt controllers and timers of an engine without
/// in-kernel ones (TCG). Empty for KVM.
#[derive(Clone, Default)]
pub struct EngineDevices {
    pub pio: Vec<BusSlot>,
    pub mmio: Vec<BusSlot>,
}

/// VM-wide configuration an engine needs when it creates the VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub vcpus: u8,
}

/// An engine that can create VMs.
pub trait Accelerator: Send + Sync {
    fn kind(&self) -> AccelKind;
    /// Creates a VM whose RAM is `memory` (already laid out by the VMM).
    fn create_vm(&self, memory: &GuestMemoryMmap, config: &VmConfig) -> Result<Arc<dyn Vm>>;
}

/// One guest machine: its memory mapping, interrupt routing and vCPUs.
pub trait Vm: Send + Sync {
    /// The interrupt input `gsi` of the platform interrupt controller.
    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>>;
    /// Signals `event` on every guest write to `addr` (matching `datamatch`
    /// when given) without a vCPU exit to the VMM where the engine allows.
    fn register_ioevent(&self, event: &EventFd, addr: IoEventAddress, datamatch: Option<u32>) -> Result<()>;
    /// Devices the engine emulates in the VMM's address spaces (its PIC,
    /// PIT, IOAPIC…); the VMM puts them on its buses before any vCPU runs.
    fn engine_devices(&self) -> EngineDevices {
        EngineDevices::default()
    }
    /// A device wrote `[gpa, gpa + len)` of guest memory behind the vCPUs'
    /// backs (virtio DMA). An engine that translates guest code drops what
    /// it translated from those pages; KVM has nothing to do.
    fn notify_guest_write(&self, _gpa: u64, _len: u64) {}
    /// Creates vCPU `id` (its APIC ID). vCPU 0 is the bootstrap processor;
    /// the others wait for INIT/SIPI from the guest.
    fn create_vcpu(&self, id: u8, ops: Arc<dyn VmOps>) -> Result<Box<dyn Vcpu>>;
}

/// Why [`Vcpu::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuExit {
    /// [`VcpuKicker::kick`] was called: the VMM wants the thread back.
    Kicked,
    /// The guest reset the CPU (triple fault shows as `Shutdown`).
    Reset,
    /// The CPU shut down: a triple fault.
    Shutdown,
    /// The guest powered the machine off through a CPU-level event.
    Poweroff,
    /// The engine could not go on: message names what happened.
    Crash(String),
}

/// Brings a vCPU thread out of [`Vcpu::run`] from any thread.
pub trait VcpuKicker: Send + Sync {
    fn kick(&self);
}

/// One virtual CPU, driven by one host thread.
pub trait Vcpu: Send {
    fn id(&self) -> u8;
    /// Loads the architectural state the boot protocol promises (BSP only).
    fn set_cpu_state(&mut self, state: &CpuState) -> Result<()>;
    /// Reads the current architectural state (tests, crash reports).
    fn cpu_state(&self) -> Result<CpuState>;
    /// Runs the guest until something the VMM must act on.
    fn run(&mut self) -> Result<VcpuExit>;
    /// A handle that makes `run` return [`VcpuExit::Kicked`] soon, from any
    /// thread, whether or not `run` has started yet.
    fn kicker(&self) -> Arc<dyn VcpuKicker>;
    /// A human-readable register dump for crash reports.
    fn dump_state(&self) -> String;
}
