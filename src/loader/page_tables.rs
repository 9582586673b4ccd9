//! Identity page tables for the Linux 64-bit entry: the first 4 GiB mapped
//! with 2 MiB pages (Linux builds its own tables right away).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::LoadError;
use crate::layout::{CMDLINE_START, PDE_COUNT, PDE_START, PDPTE_START, PML4_START};

const PAGE_TABLE_SIZE: u64 = 0x1000;
const ENTRIES_PER_TABLE: u64 = 512;
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
/// Set on every level so small test kernels can run CPL3 code on these
/// tables; Linux doesn't keep them.
const USER: u64 = 1 << 2;
const PAGE_SIZE_2M: u64 = 1 << 7;
const FLAGS: u64 = PRESENT | WRITABLE | USER;

// The tables must fit where the layout puts them, in this order.
const _: () = assert!(PML4_START + PAGE_TABLE_SIZE <= PDPTE_START);
const _: () = assert!(PDPTE_START + PAGE_TABLE_SIZE <= PDE_START);
const _: () = assert!(PDE_START + PDE_COUNT * PAGE_TABLE_SIZE <= CMDLINE_START);
// One PDPT entry per page directory.
const _: () = assert!(PDE_COUNT <= ENTRIES_PER_TABLE);

fn write_table(mem: &GuestMemoryMmap, addr: u64, entries: impl Iterator<Item = u64>) -> Result<(), LoadError> {
    let bytes: Vec<u8> = entries.flat_map(u64::to_le_bytes).collect();
    mem.write_slice(&bytes, GuestAddress(addr)).map_err(|source| LoadError::GuestWrite {
        what: "boot page tables",
        addr,
        source,
    })
}

/// Writes PML4 → PDPT → `PDE_COUNT` page directories of 2 MiB pages.
pub(super) fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), LoadError> {
    write_table(mem, PML4_START, std::iter::once(PDPTE_START | FLAGS))?;
    write_table(mem, PDPTE_START, (0..PDE_COUNT).map(|i| (PDE_START + i * PAGE_TABLE_SIZE) | FLAGS))?;
    write_table(mem, PDE_START, (0..PDE_COUNT * ENTRIES_PER_TABLE).map(|i| (i << 21) | FLAGS | PAGE_SIZE_2M))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables the way the MMU does.
    fn translate(mem: &GuestMemoryMmap, va: u64) -> Option<u64> {
        let pml4e: u64 = mem.read_obj(GuestAddress(PML4_START + ((va >> 39) & 0x1ff) * 8)).ok()?;
        if pml4e & FLAGS != FLAGS {
            return None;
        }
        let pdpte: u64 = mem.read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8)).ok()?;
        if pdpte & FLAGS != FLAGS {
            return None;
        }
        let pde: u64 = mem.read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8)).ok()?;
        if pde & (FLAGS | PAGE_SIZE_2M) != FLAGS | PAGE_SIZE_2M {
            return None;
        }
        Some((pde & !0x1f_ffff) + (va & 0x1f_ffff))
    }

    #[test]
    fn identity_maps_the_first_4gib() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        write_identity_map(&mem).unwrap();
        for va in [0, 0x1234, 0x10_0000, 0x3fff_ffff, 0x4000_0000, 0xc000_0000, 0xffff_ffff] {
            assert_eq!(translate(&mem, va), Some(va), "{va:#x}");
        }
        // 4 GiB and up is not mapped.
        assert_eq!(translate(&mem, 0x1_0000_0000), None);
    }
}
