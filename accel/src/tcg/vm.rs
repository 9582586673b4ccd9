//! `TcgVm`: guest RAM, the self-modifying-code map and the translation
//! cache shared by the vCPUs, ioeventfds, and the emulated interrupt
//! controllers and timers (`devices::irqchip`) the vCPUs drive.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use devices::irqchip::pic::PIC_PORT_LEN;
use devices::irqchip::pit::{PIT_BASE_PORT, PIT_PORT_LEN, PORT_B};
use devices::irqchip::{IrqChip, IrqChipError, IOAPIC_MMIO_SIZE, PIT_POLL_CPU};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::apic::CpuApic;
use super::mmu::CodePages;
use super::signals::VcpuSignals;
use super::tb_cache::TbCache;
use super::vcpu::TcgVcpu;
use super::TcgError;
use crate::{BusSlot, EngineDevices, IoEventAddress, IrqLine, Vcpu, VmConfig, VmOps};

/// Where the IOAPIC's registers are (the MADT's address).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;

/// One registered ioeventfd.
struct IoEvent {
    event: EventFd,
    addr: IoEventAddress,
    datamatch: Option<u32>,
}

/// One vCPU's view of the VMM's `VmOps`: its own local APIC's register
/// page first (each vCPU sees its own at the same address, as on
/// hardware), then ioeventfds: a guest write that matches a registration
/// signals its eventfd instead of reaching the VMM (as KVM does in the
/// kernel), so virtio devices behave the same on both engines.
pub struct IoDispatch {
    ops: Arc<dyn VmOps>,
    events: Arc<RwLock<Vec<IoEvent>>>,
    apic: Arc<CpuApic>,
    /// The vCPU that polls the PIT, told when any vCPU reprograms it.
    pit_poller: Arc<OnceLock<Arc<VcpuSignals>>>,
}

impl IoDispatch {
    fn signal(&self, addr: IoEventAddress, data: &[u8]) -> bool {
        let events = self.events.read().unwrap_or_else(PoisonError::into_inner);
        let Some(e) = events.iter().find(|e| {
            e.addr == addr
                && match e.datamatch {
                    // As KVM: a datamatch registration matches 4-byte writes of the value.
                    Some(v) => data.len() == 4 && data == v.to_le_bytes(),
                    None => true,
                }
        }) else {
            return false;
        };
        if let Err(err) = e.event.write(1) {
            log::warn!("signalling ioeventfd at {addr:?}: {err}");
        }
        true
    }
}

impl VmOps for IoDispatch {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.ops.pio_read(port, data);
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        if !self.signal(IoEventAddress::Pio(u64::from(port)), data) {
            self.ops.pio_write(port, data);
        }
        if (PIT_BASE_PORT..PIT_BASE_PORT + PIT_PORT_LEN).contains(&u64::from(port)) {
            // The PIT's deadline may have moved.
            if let Some(poller) = self.pit_poller.get() {
                poller.timers_changed();
            }
        }
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.apic.lapic_offset(addr, data.len()) {
            Some(off) => self.apic.mmio_read(off, data),
            None => self.ops.mmio_read(addr, data),
        }
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some(off) = self.apic.lapic_offset(addr, data.len()) {
            self.apic.mmio_write(off, data);
        } else if !self.signal(IoEventAddress::Mmio(addr), data) {
            self.ops.mmio_write(addr, data);
        }
    }
}

/// A guest machine run by the TCG engine.
pub struct TcgVm {
    memory: GuestMemoryMmap,
    code_pages: Arc<CodePages>,
    tb_cache: Arc<TbCache>,
    vcpus: u8,
    ioevents: Arc<RwLock<Vec<IoEvent>>>,
    irqchip: Arc<IrqChip>,
    pit_poller: Arc<OnceLock<Arc<VcpuSignals>>>,
}

impl TcgVm {
    pub fn new(memory: &GuestMemoryMmap, config: &VmConfig, jit: super::JitPolicy) -> Result<Self, TcgError> {
        if config.vcpus == 0 || config.vcpus == u8::MAX {
            return Err(TcgError::VcpuCount(config.vcpus));
        }
        let irqchip = IrqChip::new(config.vcpus).map_err(TcgError::IrqChip)?;
        let code_pages = Arc::new(CodePages::new(memory));
        Ok(TcgVm {
            memory: memory.clone(),
            tb_cache: Arc::new(TbCache::new(code_pages.clone(), jit)),
            code_pages,
            vcpus: config.vcpus,
            ioevents: Arc::default(),
            irqchip: Arc::new(irqchip),
            pit_poller: Arc::default(),
        })
    }

    /// The VM's interrupt controllers and timers.
    pub fn irqchip(&self) -> &Arc<IrqChip> {
        &self.irqchip
    }

    pub fn tb_cache(&self) -> &Arc<TbCache> {
        &self.tb_cache
    }
}

impl crate::Vm for TcgVm {
    fn irq_line(&self, gsi: u32) -> crate::Result<Arc<dyn IrqLine>> {
        self.irqchip.irq_line(gsi).map_err(|e| match e {
            IrqChipError::Gsi(g) => TcgError::Gsi(g).into(),
            other => TcgError::IrqChip(other).into(),
        })
    }

    /// Device DMA into guest RAM: translated code on those pages is stale.
    fn notify_guest_write(&self, gpa: u64, len: u64) {
        self.code_pages.notify_write(gpa, len);
    }

    fn register_ioevent(&self, event: &EventFd, addr: IoEventAddress, datamatch: Option<u32>) -> crate::Result<()> {
        let event = event.try_clone().map_err(TcgError::EventFd)?;
        self.ioevents.write().unwrap_or_else(PoisonError::into_inner).push(IoEvent { event, addr, datamatch });
        Ok(())
    }

    fn engine_devices(&self) -> EngineDevices {
        let chip = &self.irqchip;
        let mut pio = vec![
            BusSlot { base: PIT_BASE_PORT, len: PIT_PORT_LEN, device: chip.pit.clone() },
            BusSlot { base: PORT_B, len: 1, device: chip.pit.port_b() },
        ];
        pio.extend(chip.pic.ports().into_iter().map(|(base, device)| BusSlot { base, len: PIC_PORT_LEN, device }));
        let mmio = vec![BusSlot { base: IOAPIC_ADDR, len: IOAPIC_MMIO_SIZE, device: chip.ioapic.clone() }];
        EngineDevices { pio, mmio }
    }

    fn create_vcpu(&self, id: u8, ops: Arc<dyn VmOps>) -> crate::Result<Box<dyn Vcpu>> {
        if id >= self.vcpus {
            return Err(TcgError::VcpuId { id, count: self.vcpus }.into());
        }
        let signals = Arc::new(VcpuSignals::new(id != 0));
        if !self.irqchip.apic_bus.set_wakeup(id, signals.clone()) {
            return Err(TcgError::VcpuExists(id).into());
        }
        if id == PIT_POLL_CPU {
            // Set once: `set_wakeup` above refused a second vCPU `id`.
            let _ = self.pit_poller.set(signals.clone());
        }
        let apic = Arc::new(CpuApic::new(self.irqchip.clone(), id, signals.clone()));
        let io = Arc::new(IoDispatch {
            ops,
            events: self.ioevents.clone(),
            apic: apic.clone(),
            pit_poller: self.pit_poller.clone(),
        });
        Ok(Box::new(TcgVcpu::new(
            id,
            self.vcpus,
            self.memory.clone(),
            io,
            signals,
            apic,
            self.code_pages.clone(),
            self.tb_cache.clone(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;
    use crate::Vm as _;

    #[test]
    fn device_dma_invalidates_translated_code() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vm = TcgVm::new(&memory, &VmConfig { vcpus: 1 }, crate::tcg::JitPolicy::Always).unwrap();
        vm.code_pages.mark(0x20);
        vm.notify_guest_write(0x1f_ff8, 16); // straddles pages 0x1f and 0x20
        assert_eq!(vm.code_pages.take_invalidated(), vec![0x20]);
        assert!(!vm.code_pages.is_code(0x20));
    }
}
