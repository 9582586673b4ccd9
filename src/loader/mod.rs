//! Kernel loading and boot-protocol setup for vCPU 0.
//!
//! The kernel's format is detected by content, never by file name:
//! - an ELF vmlinux with a `XEN_ELFNOTE_PHYS32_ENTRY` note boots through PVH
//!   (32-bit protected mode, paging off, `hvm_start_info` in EBX);
//! - any other ELF vmlinux, and every bzImage, boots through the Linux 64-bit
//!   boot protocol (long mode on identity page tables, `boot_params` in RSI).
//!
//! Everything lands in guest memory through vm-memory's checked writes at the
//! addresses of [`crate::layout`], and the returned [`CpuState`] is
//! engine-neutral: KVM and TCG start vCPU 0 from the same values.

mod boot_params;
mod bzimage;
mod e820;
mod elf;
mod page_tables;
mod pvh;
mod regs;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use accel::CpuState;
use linux_loader::bootparam::setup_header;
use linux_loader::cmdline::Cmdline;
use log::info;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::layout;
pub use e820::{e820_map, E820Entry, E820_RAM, E820_RESERVED};
pub use regs::{GDT_CODE_SELECTOR, GDT_DATA_SELECTOR, GDT_TSS_SELECTOR};

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// How vCPU 0 enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, `boot_params` in RSI.
    Linux64,
    /// Xen PVH: 32-bit protected mode, paging off, `hvm_start_info` in EBX.
    Pvh,
}

/// The loaded kernel and the state vCPU 0 starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    pub cpu_state: CpuState,
    pub protocol: BootProtocol,
    /// First guest-physical byte past the kernel: past the loaded image, or
    /// for a bzImage past the buffer it decompresses itself into, if higher.
    pub kernel_end: u64,
    /// Guest-physical address and size of the initrd, when one was given.
    pub initrd: Option<(u64, u64)>,
}

/// Why a kernel could not be loaded. Every variant about a file names it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open kernel {}", path.display())]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read kernel {}", path.display())]
    ReadKernel {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("kernel {} is an empty file", path.display())]
    EmptyKernel { path: PathBuf },
    #[error("kernel {} is neither an ELF vmlinux nor a bzImage (no \\x7fELF magic, no \"HdrS\" at 0x202)", path.display())]
    UnknownFormat { path: PathBuf },
    #[error("kernel {} is truncated: {what}", path.display())]
    Truncated { path: PathBuf, what: String },
    #[error("bzImage {} cannot be booted: {reason}", path.display())]
    UnsupportedBzImage { path: PathBuf, reason: String },
    #[error("ELF kernel {} is invalid: {reason}", path.display())]
    InvalidElf { path: PathBuf, reason: String },
    #[error(
        "memory too small: kernel {} needs RAM up to {needed:#x} but RAM below 4 GiB ends at {available:#x}",
        path.display()
    )]
    KernelTooLarge { path: PathBuf, needed: u64, available: u64 },
    #[error("cannot load kernel {}", path.display())]
    Loader {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("memory too small: RAM at address 0 is {size:#x} bytes, at least {:#x} are needed", layout::HIMEM_START)]
    NoLowMemory { size: u64 },
    #[error("cannot open initrd {}", path.display())]
    OpenInitrd {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("initrd {} is an empty file", path.display())]
    EmptyInitrd { path: PathBuf },
    #[error("cannot read initrd {} into guest memory", path.display())]
    ReadInitrd {
        path: PathBuf,
        #[source]
        source: GuestMemoryError,
    },
    #[error(
        "initrd {} does not fit: it is {size} bytes, only {available} bytes are free between the kernel and {limit:#x}",
        path.display()
    )]
    InitrdTooLarge { path: PathBuf, size: u64, available: u64, limit: u64 },
    #[error(
        "kernel command line is {len} bytes, longer than the {max} bytes kernel {} accepts",
        path.display()
    )]
    CmdlineTooLong { path: PathBuf, len: usize, max: usize },
    #[error("invalid kernel command line {cmdline:?}: {source}")]
    InvalidCmdline {
        cmdline: String,
        #[source]
        source: linux_loader::cmdline::Error,
    },
    #[error("cannot write the {what} to guest memory at {addr:#x}")]
    GuestWrite {
        what: &'static str,
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
    #[error("cannot write the boot parameters to guest memory")]
    BootParams {
        #[source]
        source: linux_loader::configurator::Error,
    },
}

/// Highest initrd address a kernel without a bzImage header accepts (the
/// boot protocol's default for `initrd_addr_max`).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
const PAGE_SIZE: u64 = 0x1000;

/// A kernel image written to guest memory, before any boot structure.
struct LoadedKernel {
    /// Entry point for the Linux 64-bit boot protocol.
    entry: u64,
    /// 32-bit PVH entry point, when the ELF has a PVH note.
    pvh_entry: Option<u64>,
    end: u64,
    /// A bzImage's setup header, as linux-loader read it.
    setup_header: Option<setup_header>,
}

/// Loads the kernel (and initrd, command line) into `mem` and writes every
/// boot structure the chosen protocol needs; returns vCPU 0's initial state.
///
/// `rsdp_addr` is the ACPI RSDP's guest address, passed to the kernel in
/// `boot_params.acpi_rsdp_addr` or `hvm_start_info.rsdp_paddr`.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    config: &KernelConfig,
    rsdp_addr: Option<u64>,
) -> Result<BootInfo, LoadError> {
    let low_ram_end = low_ram_end(mem)?;
    let kernel = load_image(mem, &config.kernel, low_ram_end)?;

    let initrd_max = kernel.setup_header.map_or(DEFAULT_INITRD_ADDR_MAX, |h| match h.initrd_addr_max {
        0 => DEFAULT_INITRD_ADDR_MAX,
        max => u64::from(max),
    });
    let initrd = match &config.initrd {
        Some(path) => Some(load_initrd(mem, path, kernel.end, low_ram_end, initrd_max)?),
        None => None,
    };

    let cmdline_max = kernel
        .setup_header
        .map_or(usize::MAX, |h| h.cmdline_size as usize)
        // The NUL terminator must fit in the command-line area too.
        .min(layout::CMDLINE_MAX_SIZE - 1);
    let cmdline_len = write_cmdline(mem, &config.kernel, &config.cmdline, cmdline_max)?;

    let e820 = e820_map(&ram_ranges(mem));
    let (protocol, entry) = match kernel.pvh_entry {
        Some(pvh_entry) => {
            pvh::write_start_info(mem, &e820, rsdp_addr, initrd)?;
            (BootProtocol::Pvh, pvh_entry)
        }
        None => {
            let params = boot_params::ZeroPage {
                setup_header: kernel.setup_header,
                cmdline_len,
                initrd,
                rsdp_addr,
                e820: &e820,
            };
            params.write(mem)?;
            page_tables::write_identity_map(mem)?;
            (BootProtocol::Linux64, kernel.entry)
        }
    };
    let gdt = regs::gdt(protocol);
    regs::write_gdt_idt(mem, &gdt)?;
    let cpu_state = regs::cpu_state(protocol, entry, &gdt);

    info!(
        "kernel {}: {protocol:?} boot, entry {entry:#x}, image ends at {:#x}, initrd {initrd:x?}",
        config.kernel.display(),
        kernel.end
    );
    Ok(BootInfo { cpu_state, protocol, kernel_end: kernel.end, initrd })
}

/// Guest RAM as (start, size) pairs, in address order.
fn ram_ranges(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    let mut ranges: Vec<_> = mem.iter().map(|r| (r.start_addr().raw_value(), r.len())).collect();
    ranges.sort_unstable();
    ranges
}

/// End of the RAM that starts at address 0, capped at the MMIO hole: the only
/// RAM the kernel, the initrd and the boot structures may use.
fn low_ram_end(mem: &GuestMemoryMmap) -> Result<u64, LoadError> {
    let size = ram_ranges(mem).into_iter().find(|&(start, _)| start == 0).map_or(0, |(_, size)| size);
    if size <= layout::HIMEM_START {
        return Err(LoadError::NoLowMemory { size });
    }
    Ok(size.min(layout::MMIO_HOLE_START))
}

/// Opens the kernel, detects its format and writes it to guest memory.
fn load_image(mem: &GuestMemoryMmap, path: &Path, low_ram_end: u64) -> Result<LoadedKernel, LoadError> {
    let read_err = |source| LoadError::ReadKernel { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(|source| LoadError::OpenKernel { path: path.to_owned(), source })?;
    let len = file.metadata().map_err(read_err)?.len();
    if len == 0 {
        return Err(LoadError::EmptyKernel { path: path.to_owned() });
    }
    // Enough for the ELF header and for a bzImage's whole setup header.
    let mut head = Vec::with_capacity(bzimage::HEAD_LEN);
    (&mut file).take(bzimage::HEAD_LEN as u64).read_to_end(&mut head).map_err(read_err)?;

    if head.starts_with(elf::MAGIC) {
        elf::load(mem, path, &mut file, len, low_ram_end)
    } else if bzimage::has_magic(&head) {
        bzimage::load(mem, path, &mut file, &head, len, low_ram_end)
    } else {
        Err(LoadError::UnknownFormat { path: path.to_owned() })
    }
}

/// Reads the initrd into the highest page-aligned spot below every limit
/// (low RAM, the kernel's `initrd_addr_max`, the MMIO hole), above the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    low_ram_end: u64,
    initrd_addr_max: u64,
) -> Result<(u64, u64), LoadError> {
    let mut file = File::open(path).map_err(|source| LoadError::OpenInitrd { path: path.to_owned(), source })?;
    let size = file.metadata().map_err(|source| LoadError::OpenInitrd { path: path.to_owned(), source })?.len();
    if size == 0 {
        return Err(LoadError::EmptyInitrd { path: path.to_owned() });
    }
    // initrd_addr_max is the last byte the initrd may occupy.
    let limit = low_ram_end.min(initrd_addr_max.saturating_add(1)).min(layout::MMIO_HOLE_START);
    let lowest = align_up(kernel_end, PAGE_SIZE);
    let addr = limit.checked_sub(size).map(|top| top & !(PAGE_SIZE - 1)).filter(|&addr| addr >= lowest).ok_or(
        LoadError::InitrdTooLarge { path: path.to_owned(), size, available: limit.saturating_sub(lowest), limit },
    )?;
    // Fits in usize: it is smaller than the 4 GiB limit above.
    let count = size as usize;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, count)
        .map_err(|source| LoadError::ReadInitrd { path: path.to_owned(), source })?;
    Ok((addr, size))
}

/// Writes the NUL-terminated command line at `CMDLINE_START`; returns its
/// length without the NUL.
fn write_cmdline(mem: &GuestMemoryMmap, kernel: &Path, cmdline: &str, max: usize) -> Result<usize, LoadError> {
    // Checked here rather than left to Cmdline so that the error says both sizes.
    if cmdline.trim().len() > max {
        return Err(LoadError::CmdlineTooLong { path: kernel.to_owned(), len: cmdline.trim().len(), max });
    }
    let invalid = |source| LoadError::InvalidCmdline { cmdline: cmdline.to_owned(), source };
    // Cmdline rejects what the kernel would misparse (non-printable bytes, NUL).
    let mut line = Cmdline::new(max + 1).map_err(invalid)?;
    line.insert_str(cmdline).map_err(invalid)?;
    let bytes = line.as_cstring().map_err(invalid)?;
    let bytes = bytes.as_bytes_with_nul();
    mem.write_slice(bytes, GuestAddress(layout::CMDLINE_START)).map_err(|source| LoadError::GuestWrite {
        what: "kernel command line",
        addr: layout::CMDLINE_START,
        source,
    })?;
    Ok(bytes.len() - 1)
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align).saturating_mul(align)
}
