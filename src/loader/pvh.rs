//! PVH: `hvm_start_info` at `PVH_INFO_START`, its memory map right after it,
//! then the module list (the initrd).

use std::mem::size_of;

use linux_loader::configurator::{pvh::PvhBootConfigurator, BootConfigurator, BootParams};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{E820Entry, LoadError};
use crate::layout;

/// Version 1 adds the memory map to version 0's fields.
const START_INFO_VERSION: u32 = 1;

/// Where each PVH structure goes, for a memory map of `memmap_entries`.
pub(super) struct PvhLayout {
    pub memmap: u64,
    pub modlist: u64,
    pub end: u64,
}

impl PvhLayout {
    pub fn new(memmap_entries: usize, modules: usize) -> Self {
        let memmap = layout::PVH_INFO_START + size_of::<hvm_start_info>() as u64;
        let modlist = memmap + (memmap_entries * size_of::<hvm_memmap_table_entry>()) as u64;
        let end = modlist + (modules * size_of::<hvm_modlist_entry>()) as u64;
        PvhLayout { memmap, modlist, end }
    }
}

/// Writes the start info, the memory map and, with an initrd, a one-entry
/// module list.
pub(super) fn write_start_info(
    mem: &GuestMemoryMmap,
    e820: &[E820Entry],
    rsdp_addr: Option<u64>,
    initrd: Option<(u64, u64)>,
) -> Result<(), LoadError> {
    let modules: Vec<_> = initrd
        .map(|(paddr, size)| hvm_modlist_entry { paddr, size, cmdline_paddr: 0, reserved: 0 })
        .into_iter()
        .collect();
    let at = PvhLayout::new(e820.len(), modules.len());
    // A handful of entries; the zero page (unused by PVH) is the next neighbour.
    debug_assert!(at.end <= layout::ZERO_PAGE_START, "PVH structures overflow");

    let memmap: Vec<_> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            // The e820 type values are the PVH memmap's.
            type_: e.type_,
            reserved: 0,
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: START_INFO_VERSION,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { at.modlist },
        cmdline_paddr: layout::CMDLINE_START,
        rsdp_paddr: rsdp_addr.unwrap_or(0),
        memmap_paddr: at.memmap,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };

    let mut params = BootParams::new(&start_info, GuestAddress(layout::PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(at.memmap));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(at.modlist));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(|source| LoadError::BootParams { source })
}
