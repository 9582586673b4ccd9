//! The KVM engine: guests run on the host CPU through `/dev/kvm`.
//!
//! The vCPU setup follows Firecracker's (CPUID normalisation, boot MSRs, FPU,
//! LAPIC LINT pins); the exit handling follows Cloud Hypervisor's shape: port
//! and MMIO exits are completed through the VMM's [`VmOps`](crate::VmOps)
//! inside [`Vcpu::run`](crate::Vcpu::run), which returns only for what the
//! VMM must act on.

/// Logs a warning at most a few times, then every 1024th occurrence with the
/// count, so a guest repeating an odd access can't flood the host's log.
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n < 10 || n.is_multiple_of(1024) {
            log::warn!("{} (occurrence {})", format_args!($($arg)+), n + 1);
        }
    }};
}

mod cpuid;
mod kick;
mod regs;
mod vcpu;
mod vm;

use std::path::Path;
use std::sync::Arc;

use kvm_ioctls::Cap;
use vm_memory::GuestMemoryMmap;

use crate::{AccelKind, Accelerator, Vm, VmConfig};

pub use vm::KvmVm;

/// Errors of the KVM engine. Each names the operation (usually the ioctl)
/// that failed.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm")]
    Open(#[source] kvm_ioctls::Error),
    /// The kernel speaks another KVM API than the stable version 12.
    #[error("KVM API version {0} is not the supported version 12")]
    ApiVersion(i32),
    /// The host KVM lacks capabilities the engine relies on.
    #[error("host KVM lacks required capabilities: {}", .0.join(", "))]
    MissingCapabilities(Vec<&'static str>),
    /// An ioctl (or other KVM operation) failed.
    #[error("{op} failed")]
    Ioctl {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A vCPU-specific ioctl failed.
    #[error("vCPU {id}: {op} failed")]
    VcpuIoctl {
        id: u8,
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_MSRS stopped before the end of the list.
    #[error("vCPU {id}: KVM_SET_MSRS rejected MSR {msr:#x} ({written} of {total} written)")]
    MsrRejected { id: u8, msr: u32, written: usize, total: usize },
    /// A guest RAM region could not be registered as a memory slot.
    #[error("guest RAM region {slot} at {addr:#x} (+{size:#x}) is not mmapped")]
    MemoryRegion { slot: u32, addr: u64, size: u64 },
    /// The VM was asked for no vCPUs, or more than the host allows.
    #[error("{requested} vCPUs requested; this host's KVM supports 1 to {max}")]
    VcpuCount { requested: u8, max: u8 },
    /// A vCPU id outside the VM's configured count.
    #[error("vCPU id {id} is out of range for a {count}-vCPU VM")]
    VcpuId { id: u8, count: u8 },
    /// A GSI the in-kernel IOAPIC has no pin for.
    #[error("GSI {gsi} is not routed by the in-kernel IOAPIC (pins 0 to {max})")]
    Gsi { gsi: u32, max: u32 },
    /// An eventfd could not be created.
    #[error("creating an eventfd for {what}")]
    EventFd {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A CPUID or MSR list is longer than KVM's ioctl structures hold.
    #[error("vCPU {id}: {entries} {what} entries exceed KVM's limit")]
    TooManyEntries { what: &'static str, id: u8, entries: usize },
    /// The vCPU kick signal handler could not be installed.
    #[error("installing the vCPU kick signal handler (SIGRTMIN) failed")]
    SignalHandler(#[source] vmm_sys_util::errno::Error),
}

/// Capabilities the engine can't work without, with the names the KVM API
/// documentation uses.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::MpState, "KVM_CAP_MP_STATE"),
    // Normalised CPUID always advertises the TSC-deadline LAPIC timer.
    (Cap::TscDeadlineTimer, "KVM_CAP_TSC_DEADLINE_TIMER"),
];

/// What `/dev/kvm` is on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmHost {
    /// Hardware virtualization (VT-x or AMD-V): guests run at native speed.
    Hardware,
    /// PVM (`kvm_pvm`): the KVM API works and guest user code runs natively,
    /// but guest kernel (CPL0) code goes through KVM's instruction emulator.
    Pvm,
    /// `/dev/kvm` can't be opened; the text says why.
    Unavailable(String),
}

impl KvmHost {
    /// One line for messages: what KVM is here and what it means.
    pub fn describe(&self) -> String {
        match self {
            KvmHost::Hardware => "KVM with hardware virtualization".to_string(),
            KvmHost::Pvm => "KVM backed by PVM (kvm_pvm, no VT-x/AMD-V): guest kernel code \
                             is emulated instruction by instruction"
                .to_string(),
            KvmHost::Unavailable(why) => format!("KVM unavailable: {why}"),
        }
    }
}

/// Tells whether `/dev/kvm` can be opened and whether it is hardware-backed.
pub fn probe() -> KvmHost {
    if let Err(e) = kvm_ioctls::Kvm::new() {
        return KvmHost::Unavailable(format!("cannot open /dev/kvm: {e}"));
    }
    let module = |name: &str| Path::new("/sys/module").join(name).exists();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    classify(module("kvm_pvm"), module("kvm_intel") || module("kvm_amd"), &cpuinfo)
}

/// PVM when its module is the only KVM vendor module loaded, or when the CPU
/// shows no virtualization extension (then no hardware KVM can be behind
/// `/dev/kvm`).
fn classify(pvm_module: bool, hw_module: bool, cpuinfo: &str) -> KvmHost {
    if pvm_module && !hw_module {
        return KvmHost::Pvm;
    }
    let has_vmx_or_svm = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| f == "vmx" || f == "svm");
    if has_vmx_or_svm {
        KvmHost::Hardware
    } else {
        KvmHost::Pvm
    }
}

/// The KVM [`Accelerator`].
pub struct Kvm {
    kvm: Arc<kvm_ioctls::Kvm>,
}

impl Kvm {
    /// Opens `/dev/kvm` and checks every capability the engine relies on.
    pub fn new() -> Result<Kvm, KvmError> {
        let kvm = kvm_ioctls::Kvm::new().map_err(KvmError::Open)?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(KvmError::ApiVersion(version));
        }
        let missing: Vec<&'static str> =
            REQUIRED_CAPS.iter().filter(|(cap, _)| !kvm.check_extension(*cap)).map(|(_, name)| *name).collect();
        if !missing.is_empty() {
            return Err(KvmError::MissingCapabilities(missing));
        }
        Ok(Kvm { kvm: Arc::new(kvm) })
    }

    /// The most vCPUs a VM may have: KVM's limit, capped at 254 because
    /// APIC IDs are 8-bit (xAPIC) and 255 is the broadcast ID.
    pub fn max_vcpus(&self) -> u8 {
        u8::try_from(self.kvm.get_max_vcpus().min(254)).unwrap_or(254)
    }
}

impl Accelerator for Kvm {
    fn kind(&self) -> AccelKind {
        AccelKind::Kvm
    }

    fn create_vm(&self, memory: &GuestMemoryMmap, config: &VmConfig) -> crate::Result<Arc<dyn Vm>> {
        let max = self.max_vcpus();
        if config.vcpus == 0 || config.vcpus > max {
            return Err(KvmError::VcpuCount { requested: config.vcpus, max }.into());
        }
        Ok(Arc::new(KvmVm::new(self.kvm.clone(), memory, config)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_module_alone_means_pvm() {
        assert_eq!(classify(true, false, "flags\t: fpu vmx"), KvmHost::Pvm);
    }

    #[test]
    fn hardware_module_wins_over_pvm() {
        assert_eq!(classify(true, true, "flags\t: fpu vmx"), KvmHost::Hardware);
    }

    #[test]
    fn no_vmx_or_svm_flag_means_pvm() {
        assert_eq!(classify(false, false, "flags\t: fpu sse2 hypervisor"), KvmHost::Pvm);
        assert_eq!(classify(false, false, "flags\t: fpu svm"), KvmHost::Hardware);
        // A flag name that merely contains "vmx" is not the flag.
        assert_eq!(classify(false, false, "flags\t: vmx_foo"), KvmHost::Pvm);
    }
}
