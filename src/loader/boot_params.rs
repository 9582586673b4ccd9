//! The Linux boot protocol's `boot_params` ("zero page").

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE};
use linux_loader::configurator::{linux::LinuxBootConfigurator, BootConfigurator, BootParams};
use log::warn;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{E820Entry, LoadError};
use crate::layout;

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS", little-endian.
const HEADER_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader type: we have no ID assigned.
const LOADER_TYPE_OTHER: u8 = 0xff;
/// Alignment a kernel without a setup header is assumed to need.
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// Everything the zero page says about this boot.
pub(super) struct ZeroPage<'a> {
    /// The bzImage's setup header; `None` for an ELF kernel.
    pub setup_header: Option<setup_header>,
    /// Command-line length without its NUL.
    pub cmdline_len: usize,
    pub initrd: Option<(u64, u64)>,
    pub rsdp_addr: Option<u64>,
    pub e820: &'a [E820Entry],
}

impl ZeroPage<'_> {
    pub fn build(&self) -> boot_params {
        let mut params = boot_params::default();
        if let Some(hdr) = self.setup_header {
            params.hdr = hdr;
        }
        let hdr = &mut params.hdr;
        hdr.type_of_loader = LOADER_TYPE_OTHER;
        hdr.boot_flag = BOOT_FLAG_MAGIC;
        hdr.header = HEADER_MAGIC;
        if hdr.kernel_alignment == 0 {
            hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
        }
        // The command line sits in the first MiB, the initrd below the
        // MMIO hole: both addresses fit the 32-bit fields.
        hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
        hdr.cmdline_size = self.cmdline_len as u32;
        if let Some((addr, size)) = self.initrd {
            hdr.ramdisk_image = addr as u32;
            hdr.ramdisk_size = size as u32;
        }
        params.acpi_rsdp_addr = self.rsdp_addr.unwrap_or(0);

        if self.e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
            warn!("e820 map has {} entries, the zero page holds {E820_MAX_ENTRIES_ZEROPAGE}", self.e820.len());
        }
        let mut count = 0u8;
        for (slot, entry) in params.e820_table.iter_mut().zip(self.e820) {
            *slot = boot_e820_entry { addr: entry.addr, size: entry.size, r#type: entry.type_ };
            count += 1;
        }
        params.e820_entries = count;
        params
    }

    /// Writes the zero page at `ZERO_PAGE_START`.
    pub fn write(&self, mem: &GuestMemoryMmap) -> Result<(), LoadError> {
        let params = BootParams::new(&self.build(), GuestAddress(layout::ZERO_PAGE_START));
        LinuxBootConfigurator::write_bootparams(&params, mem).map_err(|source| LoadError::BootParams { source })
    }
}
