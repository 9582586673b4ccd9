//! ELF vmlinux: header and program-header checks, then linux-loader copies the
//! PT_LOAD segments to their physical addresses and finds the PVH note.
//!
//! linux-loader trusts the file more than we want to (it reads a 32-bit ELF
//! as if it were 64-bit, and reports a segment past the end of the file or of
//! RAM as the same "unable to read kernel image"), so the checks here turn
//! every such case into an error that says what is wrong.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::{elf::Elf, elf::PvhBootCapability, KernelLoader};
use log::debug;
use vm_memory::{Address, GuestAddress, GuestMemoryMmap};

use super::{LoadError, LoadedKernel};
use crate::layout;

pub(super) const MAGIC: &[u8] = b"\x7fELF";
const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

pub(super) fn load(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &mut File,
    file_len: u64,
    low_ram_end: u64,
) -> Result<LoadedKernel, LoadError> {
    validate(path, file, file_len, low_ram_end)?;
    // No kernel offset: PVH needs the kernel at its link-time addresses, and
    // linux-loader only looks for the PVH note then.
    let result = Elf::load(mem, None, file, Some(GuestAddress(layout::HIMEM_START)))
        .map_err(|source| LoadError::Loader { path: path.to_owned(), source })?;
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.raw_value()),
        PvhBootCapability::PvhEntryNotPresent | PvhBootCapability::PvhEntryIgnored => None,
    };
    debug!(
        "ELF {}: entry {:#x}, PVH entry {pvh_entry:x?}, ends at {:#x}",
        path.display(),
        result.kernel_load.raw_value(),
        result.kernel_end
    );
    // BSS needs no clearing: guest RAM is fresh anonymous memory, all zeros.
    Ok(LoadedKernel { entry: result.kernel_load.raw_value(), pvh_entry, end: result.kernel_end, setup_header: None })
}

/// Checks the ELF and program headers against the file's size and guest RAM.
fn validate(path: &Path, file: &mut File, file_len: u64, low_ram_end: u64) -> Result<(), LoadError> {
    let invalid = |reason: String| LoadError::InvalidElf { path: path.to_owned(), reason };
    let truncated = |what: String| LoadError::Truncated { path: path.to_owned(), what };
    let read_err = |source| LoadError::ReadKernel { path: path.to_owned(), source };

    if file_len < EHDR_LEN as u64 {
        return Err(truncated(format!("the ELF header needs {EHDR_LEN} bytes, the file has {file_len}")));
    }
    let mut ehdr = [0u8; EHDR_LEN];
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    file.read_exact(&mut ehdr).map_err(read_err)?;
    if ehdr[4] != ELFCLASS64 {
        return Err(invalid("not a 64-bit ELF (EI_CLASS is not ELFCLASS64)".into()));
    }
    if ehdr[5] != ELFDATA2LSB {
        return Err(invalid("not a little-endian ELF".into()));
    }
    let machine = u16_at(&ehdr, 18);
    if machine != EM_X86_64 {
        return Err(invalid(format!("e_machine is {machine}, not x86-64 ({EM_X86_64})")));
    }
    let entry = u64_at(&ehdr, 24);
    if entry < layout::HIMEM_START {
        return Err(invalid(format!("entry point {entry:#x} is below {:#x}", layout::HIMEM_START)));
    }
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54);
    let phnum = u64::from(u16_at(&ehdr, 56));
    if usize::from(phentsize) != PHDR_LEN {
        return Err(invalid(format!("e_phentsize is {phentsize}, not {PHDR_LEN}")));
    }
    if phoff < EHDR_LEN as u64 {
        return Err(invalid(format!("program headers at {phoff:#x} overlap the ELF header")));
    }
    let ph_end = phoff.saturating_add(phnum * PHDR_LEN as u64);
    if ph_end > file_len {
        return Err(truncated(format!("{phnum} program headers end at {ph_end:#x}, the file at {file_len:#x}")));
    }

    // Bounded by the file size checked just above.
    let mut phdrs = vec![0u8; (phnum as usize) * PHDR_LEN];
    file.seek(SeekFrom::Start(phoff)).map_err(read_err)?;
    file.read_exact(&mut phdrs).map_err(read_err)?;

    let mut image_end = None;
    for (i, ph) in phdrs.chunks_exact(PHDR_LEN).enumerate() {
        let p_type = u32_at(ph, 0);
        let offset = u64_at(ph, 8);
        let paddr = u64_at(ph, 24);
        let filesz = u64_at(ph, 32);
        let memsz = u64_at(ph, 40);
        // linux-loader skips empty PT_LOADs and reads notes from the file.
        let loaded = p_type == PT_LOAD && filesz != 0;
        if !loaded && p_type != PT_NOTE {
            continue;
        }
        let file_end = offset.saturating_add(filesz);
        if file_end > file_len {
            return Err(truncated(format!(
                "program header {i} needs file bytes up to {file_end:#x}, the file ends at {file_len:#x}"
            )));
        }
        if !loaded {
            continue;
        }
        if memsz < filesz {
            return Err(invalid(format!("segment {i} has p_memsz {memsz:#x} smaller than p_filesz {filesz:#x}")));
        }
        if paddr < layout::HIMEM_START {
            return Err(invalid(format!(
                "segment {i} at {paddr:#x} would overwrite the boot structures below {:#x}",
                layout::HIMEM_START
            )));
        }
        let seg_end = paddr.checked_add(memsz).ok_or_else(|| {
            invalid(format!("segment {i} at {paddr:#x} of {memsz:#x} bytes overflows the address space"))
        })?;
        image_end = image_end.max(Some(seg_end));
    }
    let image_end = image_end.ok_or_else(|| invalid("no loadable (PT_LOAD) segment".into()))?;
    if image_end > low_ram_end {
        return Err(LoadError::KernelTooLarge { path: path.to_owned(), needed: image_end, available: low_ram_end });
    }
    Ok(())
}
