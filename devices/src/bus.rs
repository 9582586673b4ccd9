//! The address-decoding bus that routes PIO and MMIO accesses to devices.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A device reachable through an [`IoBus`].
///
/// Methods take `&self`: a device synchronises its own state (usually one
/// `Mutex` inside), which lets every vCPU thread call it concurrently.
pub trait BusDevice: Send + Sync {
    /// A read of `data.len()` bytes at `offset` from the device's base.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// A write of `data` at `offset` from the device's base.
    fn write(&self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    /// A zero-length range can't be decoded.
    #[error("bus range at {0:#x} has zero length")]
    ZeroLength(u64),
}

struct Range {
    len: u64,
    device: Arc<dyn BusDevice>,
}

/// A set of non-overlapping address ranges, each owned by one device.
///
/// Built before the vCPUs start and immutable afterwards, so lookups need no
/// lock.
#[derive(Default)]
pub struct IoBus {
    ranges: BTreeMap<u64, Range>,
}

impl IoBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<dyn BusDevice>) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength(base));
        }
        let end = base.checked_add(len - 1).ok_or(BusError::Overlap { base, len })?;
        let overlaps_prev = self.ranges.range(..=end).next_back().is_some_and(|(b, r)| b + (r.len - 1) >= base);
        if overlaps_prev {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, Range { len, device });
        Ok(())
    }

    /// The device owning `addr` and the offset of `addr` within it.
    fn resolve(&self, addr: u64) -> Option<(&Arc<dyn BusDevice>, u64)> {
        let (base, range) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < range.len).then_some((&range.device, offset))
    }

    /// Dispatches a read; returns false (leaving `data` untouched) when no
    /// device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, offset)) => {
                dev.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device owns `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, offset)) => {
                dev.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Vec<u8>)>>);
    impl BusDevice for Recorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let mut bus = IoBus::new();
        let a = Arc::new(Recorder::default());
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        assert!(bus.write(0x3fa, &[7]));
        assert!(!bus.write(0x400, &[1]));
        let mut buf = [0u8; 2];
        assert!(bus.read(0x3ff, &mut buf));
        assert_eq!(buf, [7, 7]);
        assert_eq!(a.0.lock().unwrap()[0], (2, vec![7]));
    }

    #[test]
    fn rejects_overlaps() {
        let mut bus = IoBus::new();
        bus.insert(0x100, 0x10, Arc::new(Recorder::default())).unwrap();
        assert!(bus.insert(0x10f, 1, Arc::new(Recorder::default())).is_err());
        assert!(bus.insert(0xf8, 0x9, Arc::new(Recorder::default())).is_err());
        assert!(bus.insert(0x110, 1, Arc::new(Recorder::default())).is_ok());
        assert!(bus.insert(0xf0, 0x10, Arc::new(Recorder::default())).is_ok());
        assert_eq!(bus.insert(0, 0, Arc::new(Recorder::default())), Err(BusError::ZeroLength(0)));
    }
}
