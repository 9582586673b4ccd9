//! The VMM's side of vCPU exits: the PIO and MMIO buses behind `VmOps`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use accel::VmOps;
use devices::IoBus;

/// Routes vCPU port and MMIO accesses to devices.
///
/// Policy for addresses no device owns (as on a PC): reads return all-ones,
/// writes are dropped. Both are logged, at most a few times, so a guest
/// probing the hole can't flood the host's log.
pub struct BusOps {
    pio: Arc<IoBus>,
    mmio: Arc<IoBus>,
    unmapped_logged: AtomicU64,
}

const UNMAPPED_LOG_LIMIT: u64 = 16;

impl BusOps {
    pub fn new(pio: Arc<IoBus>, mmio: Arc<IoBus>) -> Self {
        Self { pio, mmio, unmapped_logged: AtomicU64::new(0) }
    }

    fn unmapped(&self, what: &str, addr: u64, len: usize) {
        let n = self.unmapped_logged.fetch_add(1, Ordering::Relaxed);
        if n < UNMAPPED_LOG_LIMIT {
            log::debug!("guest {what} of {len} bytes at unmapped {addr:#x}");
        } else if n == UNMAPPED_LOG_LIMIT {
            log::debug!("further unmapped accesses not logged");
        }
    }
}

impl VmOps for BusOps {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.pio.read(u64::from(port), data) {
            data.fill(0xff);
            self.unmapped("port read", u64::from(port), data.len());
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        if !self.pio.write(u64::from(port), data) {
            self.unmapped("port write", u64::from(port), data.len());
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            data.fill(0xff);
            self.unmapped("MMIO read", addr, data.len());
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if !self.mmio.write(addr, data) {
            self.unmapped("MMIO write", addr, data.len());
        }
    }
}
