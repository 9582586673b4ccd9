//! Guest RAM: anonymous host mappings laid out per [`layout::ram_regions`].

use log::debug;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout;

/// Why guest RAM could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("--mem {mib} MiB is too small: at least {min} MiB is needed")]
    TooSmall { mib: u64, min: u64 },
    #[error("--mem {mib} MiB is too large: at most {max} MiB is supported")]
    TooLarge { mib: u64, max: u64 },
    #[error("cannot map {mib} MiB of guest RAM on the host")]
    Mmap {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Creates the guest's RAM: below the MMIO hole, and above 4 GiB for the rest.
///
/// The mappings are `MAP_NORESERVE`: host pages are only committed when the
/// guest touches them.
pub fn create_guest_memory(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if mem_mib < layout::MIN_MEM_MIB {
        return Err(MemoryError::TooSmall { mib: mem_mib, min: layout::MIN_MEM_MIB });
    }
    if mem_mib > layout::MAX_MEM_MIB {
        return Err(MemoryError::TooLarge { mib: mem_mib, max: layout::MAX_MEM_MIB });
    }
    // Cannot overflow: MAX_MEM_MIB << 20 fits easily in a u64.
    let mem_size = mem_mib << 20;
    let mut ranges = Vec::new();
    for (start, size) in layout::ram_regions(mem_size) {
        // usize is 64-bit on every host we build for; the check keeps 32-bit honest.
        let size =
            usize::try_from(size).map_err(|_| MemoryError::TooLarge { mib: mem_mib, max: layout::MAX_MEM_MIB })?;
        ranges.push((GuestAddress(start), size));
    }
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Mmap { mib: mem_mib, source })?;
    debug!("guest RAM: {mem_mib} MiB in {ranges:x?}");
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

    use super::*;

    fn regions(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
        mem.iter().map(|r| (r.start_addr().raw_value(), r.len())).collect()
    }

    #[test]
    fn small_memory_is_one_region() {
        let mem = create_guest_memory(64).unwrap();
        assert_eq!(regions(&mem), vec![(0, 64 << 20)]);
    }

    #[test]
    fn memory_up_to_the_hole_is_one_region() {
        let mem = create_guest_memory(layout::MMIO_HOLE_START >> 20).unwrap();
        assert_eq!(regions(&mem), vec![(0, layout::MMIO_HOLE_START)]);
        assert!(!mem.address_in_range(GuestAddress(layout::MMIO_HOLE_START)));
    }

    #[test]
    fn large_memory_continues_above_4gib() {
        let mem = create_guest_memory(6144).unwrap();
        let high = (6u64 << 30) - layout::MMIO_HOLE_START;
        assert_eq!(regions(&mem), vec![(0, layout::MMIO_HOLE_START), (layout::HIGH_RAM_START, high)]);
        // Nothing is mapped in the hole; the last byte is where the layout says.
        assert!(!mem.address_in_range(GuestAddress(layout::MMIO_HOLE_START)));
        assert!(!mem.address_in_range(GuestAddress(layout::IOAPIC_ADDR)));
        assert_eq!(mem.last_addr().raw_value(), layout::HIGH_RAM_START + high - 1);
    }

    #[test]
    fn rejects_too_small() {
        let err = create_guest_memory(layout::MIN_MEM_MIB - 1).unwrap_err();
        assert!(matches!(err, MemoryError::TooSmall { mib: 7, .. }), "{err}");
        assert!(err.to_string().contains("at least"), "{err}");
    }

    #[test]
    fn rejects_absurdly_large() {
        let err = create_guest_memory(u64::MAX).unwrap_err();
        assert!(matches!(err, MemoryError::TooLarge { .. }), "{err}");
        let err = create_guest_memory(layout::MAX_MEM_MIB + 1).unwrap_err();
        assert!(matches!(err, MemoryError::TooLarge { .. }), "{err}");
    }
}
