//! `TcgVm`: guest RAM, the self-modifying-code map and the translation
//! cache shared by the vCPUs, ioeventfds, and the vCPUs' signal objects.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::mmu::CodePages;
use super::signals::VcpuSignals;
use super::tb_cache::TbCache;
use super::vcpu::TcgVcpu;
use super::TcgError;
use crate::{IoEventAddress, IrqLine, Vcpu, VmConfig, VmOps};

/// One registered ioeventfd.
struct IoEvent {
    event: EventFd,
    addr: IoEventAddress,
    datamatch: Option<u32>,
}

/// The VMM's `VmOps` with ioeventfds in front: a guest write that matches a
/// registration signals its eventfd instead of reaching the VMM (as KVM
/// does in the kernel), so virtio devices behave the same on both engines.
pub struct IoDispatch {
    ops: Arc<dyn VmOps>,
    events: Arc<RwLock<Vec<IoEvent>>>,
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
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.ops.mmio_read(addr, data);
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if !self.signal(IoEventAddress::Mmio(addr), data) {
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
    signals: Mutex<Vec<(u8, Arc<VcpuSignals>)>>,
}

impl TcgVm {
    pub fn new(memory: &GuestMemoryMmap, config: &VmConfig) -> Result<Self, TcgError> {
        if config.vcpus == 0 || config.vcpus == u8::MAX {
            return Err(TcgError::VcpuCount(config.vcpus));
        }
        let code_pages = Arc::new(CodePages::new(memory));
        Ok(TcgVm {
            memory: memory.clone(),
            tb_cache: Arc::new(TbCache::new(code_pages.clone())),
            code_pages,
            vcpus: config.vcpus,
            ioevents: Arc::default(),
            signals: Mutex::default(),
        })
    }

    /// The signal object of vCPU `id` (for the interrupt controllers).
    pub fn vcpu_signals(&self, id: u8) -> Option<Arc<VcpuSignals>> {
        let signals = self.signals.lock().unwrap_or_else(PoisonError::into_inner);
        signals.iter().find(|(i, _)| *i == id).map(|(_, s)| s.clone())
    }

    pub fn tb_cache(&self) -> &Arc<TbCache> {
        &self.tb_cache
    }
}

/// An interrupt line while the engine has no interrupt controller: triggers
/// are logged once and dropped.
// TODO(next issue): route to the emulated IOAPIC/PIC.
struct UnroutedIrqLine {
    gsi: u32,
}

impl IrqLine for UnroutedIrqLine {
    fn trigger(&self) -> std::io::Result<()> {
        static ONCE: std::sync::Once = std::sync::Once::new();
        let gsi = self.gsi;
        ONCE.call_once(|| log::debug!("TCG: GSI {gsi} triggered; no interrupt controller yet, dropped"));
        Ok(())
    }
}

/// Pins of the (future) IOAPIC, as under KVM.
const IOAPIC_PINS: u32 = 24;

impl crate::Vm for TcgVm {
    fn irq_line(&self, gsi: u32) -> crate::Result<Arc<dyn IrqLine>> {
        if gsi >= IOAPIC_PINS {
            return Err(TcgError::Gsi(gsi).into());
        }
        Ok(Arc::new(UnroutedIrqLine { gsi }))
    }

    fn register_ioevent(&self, event: &EventFd, addr: IoEventAddress, datamatch: Option<u32>) -> crate::Result<()> {
        let event = event.try_clone().map_err(TcgError::EventFd)?;
        self.ioevents.write().unwrap_or_else(PoisonError::into_inner).push(IoEvent { event, addr, datamatch });
        Ok(())
    }

    fn create_vcpu(&self, id: u8, ops: Arc<dyn VmOps>) -> crate::Result<Box<dyn Vcpu>> {
        if id >= self.vcpus {
            return Err(TcgError::VcpuId { id, count: self.vcpus }.into());
        }
        let io = Arc::new(IoDispatch { ops, events: self.ioevents.clone() });
        let signals = Arc::new(VcpuSignals::default());
        self.signals.lock().unwrap_or_else(PoisonError::into_inner).push((id, signals.clone()));
        Ok(Box::new(TcgVcpu::new(
            id,
            self.vcpus,
            self.memory.clone(),
            io,
            signals,
            self.code_pages.clone(),
            self.tb_cache.clone(),
        )))
    }
}
