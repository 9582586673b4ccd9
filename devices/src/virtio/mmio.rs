//! The virtio-mmio transport, version 2 ("modern", virtio 1.2 §4.2.2).
//!
//! A [`BusDevice`] on the MMIO bus: the register file lives behind one
//! mutex here, the device model behind its own (shared with the event loop).
//! Lock order is always transport state, then device.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{features, status, ActivateError, Activation, GuestRam, LogLimit, VirtioDevice, VirtioInterrupt};
use crate::{BusDevice, IrqLine};

/// "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;
pub const VERSION: u32 = 2;
/// "RXVM": any value; Linux doesn't look at it.
pub const VENDOR_ID: u32 = 0x4d56_5852;

/// Register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// A queue's registers as the driver programs them.
#[derive(Debug, Clone, Copy, Default)]
struct QueueRegs {
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

struct MmioState {
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueRegs>,
}

/// One virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<VirtioInterrupt>,
    ram: GuestRam,
    queue_events: Vec<EventFd>,
    // Fixed for the device's lifetime: read without its lock.
    device_type: u32,
    device_features: u64,
    queue_max: Vec<u16>,
    state: Mutex<MmioState>,
    guest_errors: LogLimit,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere mustn't take the guest's device down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MmioTransport {
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, ram: GuestRam, irq: Arc<dyn IrqLine>) -> std::io::Result<Self> {
        let (device_type, device_features, queue_max) = {
            let d = lock(&device);
            (d.device_type(), d.features(), d.queue_max_sizes().to_vec())
        };
        let queue_events = queue_max.iter().map(|_| EventFd::new(EFD_NONBLOCK)).collect::<Result<Vec<_>, _>>()?;
        let queues = queue_max.iter().map(|&size| QueueRegs { size, ..Default::default() }).collect();
        Ok(Self {
            device,
            interrupt: Arc::new(VirtioInterrupt::new(irq)),
            ram,
            queue_events,
            device_type,
            device_features,
            queue_max,
            state: Mutex::new(MmioState {
                status: 0,
                device_features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                queue_sel: 0,
                queues,
            }),
            guest_errors: LogLimit::default(),
        })
    }

    /// One eventfd per queue, signalled on the driver's QueueNotify write
    /// (by the engine's ioeventfd, or by this transport as a fallback).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    fn guest_error(&self, msg: &dyn std::fmt::Display) {
        self.guest_errors.warn("virtio-mmio", msg);
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let st = lock(&self.state);
        let queue = st.queues.get(st.queue_sel as usize);
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device_type,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match st.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.queue_max.get(st.queue_sel as usize).map_or(0, |&m| u32::from(m)),
            reg::QUEUE_NUM => queue.map_or(0, |q| u32::from(q.size)),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready)),
            reg::QUEUE_DESC_LOW => queue.map_or(0, |q| q.desc as u32),
            reg::QUEUE_DESC_HIGH => queue.map_or(0, |q| (q.desc >> 32) as u32),
            reg::QUEUE_DRIVER_LOW => queue.map_or(0, |q| q.avail as u32),
            reg::QUEUE_DRIVER_HIGH => queue.map_or(0, |q| (q.avail >> 32) as u32),
            reg::QUEUE_DEVICE_LOW => queue.map_or(0, |q| q.used as u32),
            reg::QUEUE_DEVICE_HIGH => queue.map_or(0, |q| (q.used >> 32) as u32),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => {
                let needs_reset = if self.interrupt.needs_reset() { status::DEVICE_NEEDS_RESET } else { 0 };
                st.status | needs_reset
            }
            // No shared memory regions: a length of -1 says so.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            // The configuration never changes behind the driver's back.
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_reg(&self, offset: u64, value: u32) {
        let mut st = lock(&self.state);
        match offset {
            reg::DEVICE_FEATURES_SEL => st.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => st.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if st.status & status::DRIVER == 0 || st.status & status::FEATURES_OK != 0 {
                    self.guest_error(&format_args!("driver features written in status {:#x}", st.status));
                    return;
                }
                match st.driver_features_sel {
                    0 => st.driver_features = (st.driver_features & !0xffff_ffff) | u64::from(value),
                    1 => st.driver_features = (st.driver_features & 0xffff_ffff) | (u64::from(value) << 32),
                    // Feature words past 64 bits: we offer none, accept only 0.
                    _ if value == 0 => {}
                    sel => self.guest_error(&format_args!("driver features word {sel} = {value:#x}")),
                }
            }
            reg::QUEUE_SEL => st.queue_sel = value,
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(&mut st, value),
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_reg(&mut st, offset, value),
            _ => self.guest_error(&format_args!("write of {value:#x} to read-only or unknown register {offset:#x}")),
        }
    }

    fn write_queue_reg(&self, st: &mut MmioState, offset: u64, value: u32) {
        // Queues are configured after feature negotiation and frozen once
        // the device runs (virtio 1.2 §3.1.1).
        if st.status & status::FEATURES_OK == 0 || st.status & status::DRIVER_OK != 0 {
            // Linux clears QueueReady when it deletes queues after a reset.
            if offset == reg::QUEUE_READY && value == 0 {
                return;
            }
            self.guest_error(&format_args!("queue register {offset:#x} written in status {:#x}", st.status));
            return;
        }
        let sel = st.queue_sel;
        let Some(q) = st.queues.get_mut(sel as usize) else {
            self.guest_error(&format_args!("queue register {offset:#x} written for absent queue {sel}"));
            return;
        };
        let low = |old: u64| (old & !0xffff_ffff) | u64::from(value);
        let high = |old: u64| (old & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            // Validated at DRIVER_OK; a size that doesn't fit 16 bits is
            // stored as 0, which activation rejects.
            reg::QUEUE_NUM => q.size = u16::try_from(value).unwrap_or(0),
            reg::QUEUE_READY => q.ready = value == 1,
            reg::QUEUE_DESC_LOW => q.desc = low(q.desc),
            reg::QUEUE_DESC_HIGH => q.desc = high(q.desc),
            reg::QUEUE_DRIVER_LOW => q.avail = low(q.avail),
            reg::QUEUE_DRIVER_HIGH => q.avail = high(q.avail),
            reg::QUEUE_DEVICE_LOW => q.used = low(q.used),
            reg::QUEUE_DEVICE_HIGH => q.used = high(q.used),
            _ => {}
        }
    }

    fn notify(&self, value: u32) {
        match self.queue_events.get(value as usize) {
            // Same eventfd the engine's ioeventfd signals: one path to the device.
            Some(event) => {
                if let Err(e) = event.write(1) {
                    log::warn!("virtio-mmio: signalling queue {value}: {e}");
                }
            }
            None => self.guest_error(&format_args!("notify for absent queue {value}")),
        }
    }

    fn write_status(&self, st: &mut MmioState, value: u32) {
        if value == 0 {
            self.reset(st);
            return;
        }
        let old = st.status;
        // Bits only go away through a reset; NEEDS_RESET is the device's own.
        let value = value & !status::DEVICE_NEEDS_RESET;
        if old & !value != 0 {
            self.guest_error(&format_args!("status {value:#x} clears bits of {old:#x} without a reset"));
            return;
        }
        let added = value & !old;
        let mut new = value;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable(st.driver_features) {
            // Leaving FEATURES_OK clear tells the driver the device refused.
            new &= !status::FEATURES_OK;
        }
        if added & status::DRIVER_OK != 0 {
            if new & status::FEATURES_OK == 0 {
                self.guest_error(&format_args!("DRIVER_OK without FEATURES_OK (status {value:#x})"));
                return;
            }
            if let Err(e) = self.activate(st) {
                self.interrupt.mark_needs_reset(&format_args!("activation failed: {e}"));
            }
        }
        st.status = new;
    }

    fn features_acceptable(&self, driver: u64) -> bool {
        if driver & !self.device_features != 0 {
            self.guest_error(&format_args!(
                "driver accepted features {driver:#x} beyond the offered {:#x}",
                self.device_features
            ));
            return false;
        }
        if driver & features::VERSION_1 == 0 {
            // A legacy driver on a modern-only device.
            self.guest_error(&"driver did not accept VIRTIO_F_VERSION_1");
            return false;
        }
        true
    }

    fn activate(&self, st: &MmioState) -> Result<(), ActivateError> {
        let event_idx = st.driver_features & features::RING_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(st.queues.len());
        for (index, (regs, &max)) in st.queues.iter().zip(&self.queue_max).enumerate() {
            if !regs.ready {
                return Err(ActivateError::QueueNotReady { index });
            }
            let bad = |e: virtio_queue::Error| ActivateError::BadQueue { index, reason: e.to_string() };
            let mut q = Queue::new(max).map_err(bad)?;
            q.try_set_size(regs.size).map_err(bad)?;
            q.try_set_desc_table_address(GuestAddress(regs.desc)).map_err(bad)?;
            q.try_set_avail_ring_address(GuestAddress(regs.avail)).map_err(bad)?;
            q.try_set_used_ring_address(GuestAddress(regs.used)).map_err(bad)?;
            q.set_event_idx(event_idx);
            q.set_ready(true);
            if !q.is_valid(self.ram.memory()) {
                return Err(ActivateError::BadQueue { index, reason: "rings outside guest memory".into() });
            }
            queues.push(q);
        }
        lock(&self.device).activate(Activation {
            ram: self.ram.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            features: st.driver_features,
        })
    }

    fn reset(&self, st: &mut MmioState) {
        // The device first, so it stops touching the rings before they go.
        lock(&self.device).reset();
        self.interrupt.reset();
        st.status = 0;
        st.device_features_sel = 0;
        st.driver_features_sel = 0;
        st.driver_features = 0;
        st.queue_sel = 0;
        for (q, &max) in st.queues.iter_mut().zip(&self.queue_max) {
            *q = QueueRegs { size: max, ..Default::default() };
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            lock(&self.device).read_config(offset - reg::CONFIG, data);
            return;
        }
        // Registers are 32-bit and aligned (virtio 1.2 §4.2.2.2).
        if data.len() != 4 || !offset.is_multiple_of(4) {
            self.guest_error(&format_args!("{}-byte register read at {offset:#x}", data.len()));
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            lock(&self.device).write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.guest_error(&format_args!("{}-byte register write at {offset:#x}", data.len()));
            return;
        };
        if !offset.is_multiple_of(4) {
            self.guest_error(&format_args!("unaligned register write at {offset:#x}"));
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}
