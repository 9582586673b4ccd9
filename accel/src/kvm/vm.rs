//! A KVM VM: memory slots, the in-kernel irqchip and PIT, irqfds and
//! ioeventfds, and vCPU creation.

use std::sync::Arc;

use kvm_bindings::CpuId;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{NoDatamatch, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::vcpu::KvmVcpu;
use super::KvmError;
use crate::{IoEventAddress, IrqLine, Vcpu, VmConfig, VmOps};

/// Three pages KVM needs for the real-mode TSS on Intel, in the MMIO hole
/// below the BIOS area (Firecracker's address).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// The EPT identity-map page for unrestricted-guest-less VMX, just below
/// the TSS (KVM's default, reserved explicitly so it is never guessed).
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Pins of the in-kernel IOAPIC; its default routing covers GSIs 0..24.
const IOAPIC_PINS: u32 = 24;

/// A VM on the host's KVM.
pub struct KvmVm {
    pub(super) kvm: Arc<kvm_ioctls::Kvm>,
    pub(super) fd: VmFd,
    /// Kept (as are the vCPUs' copies) so the mappings KVM's memory slots
    /// point at outlive every user of the slots.
    pub(super) memory: GuestMemoryMmap,
    pub(super) vcpus: u8,
    /// What KVM can offer a guest; each vCPU gets a normalised copy.
    pub(super) supported_cpuid: CpuId,
}

fn vm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { op, source }
}

impl KvmVm {
    pub(crate) fn new(
        kvm: Arc<kvm_ioctls::Kvm>,
        memory: &GuestMemoryMmap,
        config: &VmConfig,
    ) -> Result<Self, KvmError> {
        let fd = kvm.create_vm().map_err(vm_err("KVM_CREATE_VM"))?;
        for (slot, region) in (0u32..).zip(memory.iter()) {
            let addr = region.start_addr().0;
            let size = region.len();
            let host = region.get_host_address(MemoryRegionAddress(0)).map_err(|_| KvmError::MemoryRegion {
                slot,
                addr,
                size,
            })?;
            let mem_region = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: addr,
                memory_size: size,
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: `host..host+size` is the region's live mmap. The VM
            // and each vCPU hold clones of `memory` (sharing the mappings),
            // so the range stays mapped while anything can run the guest.
            unsafe { fd.set_user_memory_region(mem_region) }.map_err(vm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        fd.set_tss_address(KVM_TSS_ADDRESS).map_err(vm_err("KVM_SET_TSS_ADDR"))?;
        if kvm.check_extension(kvm_ioctls::Cap::SetIdentityMapAddr) {
            fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS).map_err(vm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        }
        fd.create_irq_chip().map_err(vm_err("KVM_CREATE_IRQCHIP"))?;
        // The PC speaker port (0x61) is ignored rather than exiting to us.
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        fd.create_pit2(pit).map_err(vm_err("KVM_CREATE_PIT2"))?;
        let supported_cpuid =
            kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(vm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let recommended = kvm.get_nr_vcpus();
        if usize::from(config.vcpus) > recommended {
            log::info!("{} vCPUs is more than KVM's recommended {recommended} on this host", config.vcpus);
        }
        Ok(KvmVm { kvm, fd, memory: memory.clone(), vcpus: config.vcpus, supported_cpuid })
    }
}

impl crate::Vm for KvmVm {
    fn irq_line(&self, gsi: u32) -> crate::Result<Arc<dyn IrqLine>> {
        if gsi >= IOAPIC_PINS {
            return Err(KvmError::Gsi { gsi, max: IOAPIC_PINS - 1 }.into());
        }
        let event = EventFd::new(EFD_NONBLOCK).map_err(|source| KvmError::EventFd { what: "an irqfd", source })?;
        self.fd.register_irqfd(&event, gsi).map_err(vm_err("KVM_IRQFD"))?;
        Ok(Arc::new(KvmIrqLine { event }))
    }

    fn register_ioevent(&self, event: &EventFd, addr: IoEventAddress, datamatch: Option<u32>) -> crate::Result<()> {
        let addr = match addr {
            IoEventAddress::Pio(a) => kvm_ioctls::IoEventAddress::Pio(a),
            IoEventAddress::Mmio(a) => kvm_ioctls::IoEventAddress::Mmio(a),
        };
        // The datamatch type sets the access length: u32 matches 4-byte
        // writes of that value, NoDatamatch any write.
        match datamatch {
            Some(value) => self.fd.register_ioevent(event, &addr, value),
            None => self.fd.register_ioevent(event, &addr, NoDatamatch),
        }
        .map_err(vm_err("KVM_IOEVENTFD"))?;
        Ok(())
    }

    fn create_vcpu(&self, id: u8, ops: Arc<dyn VmOps>) -> crate::Result<Box<dyn Vcpu>> {
        if id >= self.vcpus {
            return Err(KvmError::VcpuId { id, count: self.vcpus }.into());
        }
        Ok(Box::new(KvmVcpu::new(self, id, ops)?))
    }
}

/// A GSI of the in-kernel IOAPIC, raised through an irqfd.
struct KvmIrqLine {
    /// Closing it makes KVM drop the irqfd, so no explicit deregistration.
    event: EventFd,
}

impl IrqLine for KvmIrqLine {
    fn trigger(&self) -> std::io::Result<()> {
        // KVM pulses the GSI once per write: edge semantics.
        self.event.write(1)
    }
}
