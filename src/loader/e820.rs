//! The guest's physical memory map: one list feeds both `boot_params.e820_table`
//! and the PVH memory map, so the two protocols can't disagree.

use crate::layout;

/// Usable RAM (the same value in e820 and in the PVH memmap).
pub const E820_RAM: u32 = 1;
/// Reserved: the kernel must not use it (EBDA, ACPI tables).
pub const E820_RESERVED: u32 = 2;

/// One memory-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub type_: u32,
}

impl E820Entry {
    fn new(start: u64, end: u64, type_: u32) -> Self {
        E820Entry { addr: start, size: end - start, type_ }
    }
}

/// The memory map for guest RAM given as sorted (start, size) regions.
///
/// The region at address 0 is split around the legacy areas: RAM up to the
/// EBDA, the EBDA reserved, the VGA/ROM window left out, the ACPI area
/// reserved, RAM again from `HIMEM_START`. Every other region is plain RAM.
pub fn e820_map(ram: &[(u64, u64)]) -> Vec<E820Entry> {
    let mut map = Vec::with_capacity(ram.len() + 4);
    for &(start, size) in ram {
        let end = start.saturating_add(size);
        if start != 0 {
            map.push(E820Entry::new(start, end, E820_RAM));
            continue;
        }
        map.push(E820Entry::new(0, end.min(layout::EBDA_START), E820_RAM));
        // Listed even when RAM is short: the firmware areas exist regardless.
        map.push(E820Entry::new(layout::EBDA_START, layout::EBDA_END, E820_RESERVED));
        map.push(E820Entry::new(layout::ACPI_START, layout::ACPI_END, E820_RESERVED));
        if end > layout::HIMEM_START {
            map.push(E820Entry::new(layout::HIMEM_START, end, E820_RAM));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{ram_regions, HIGH_RAM_START, MMIO_HOLE_START};

    fn low_entries(ram_end: u64) -> Vec<E820Entry> {
        vec![
            E820Entry::new(0, layout::EBDA_START, E820_RAM),
            E820Entry::new(layout::EBDA_START, 0xa_0000, E820_RESERVED),
            E820Entry::new(layout::ACPI_START, 0x10_0000, E820_RESERVED),
            E820Entry::new(layout::HIMEM_START, ram_end, E820_RAM),
        ]
    }

    #[test]
    fn small_memory() {
        assert_eq!(e820_map(&ram_regions(64 << 20)), low_entries(64 << 20));
    }

    #[test]
    fn memory_ending_at_the_hole() {
        assert_eq!(e820_map(&ram_regions(MMIO_HOLE_START)), low_entries(MMIO_HOLE_START));
    }

    #[test]
    fn memory_above_4gib_is_listed() {
        let mut expected = low_entries(MMIO_HOLE_START);
        expected.push(E820Entry::new(HIGH_RAM_START, HIGH_RAM_START + (6 << 30) - MMIO_HOLE_START, E820_RAM));
        assert_eq!(e820_map(&ram_regions(6 << 30)), expected);
    }

    #[test]
    fn entries_are_sorted_and_disjoint() {
        let map = e820_map(&ram_regions(6 << 30));
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{pair:x?}");
        }
    }
}
