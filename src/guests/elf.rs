//! A minimal ELF64 x86-64 executable around a flat image.
//!
//! Layout: ELF header, program headers, the optional PVH note, then the
//! image at file offset 0x1000 (plus the load address's offset in its page,
//! so `p_offset` and `p_vaddr` agree modulo the page size as ELF requires).

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const PAGE: u64 = 0x1000;

const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_RWX: u32 = 0x7;
/// Xen's note type for the 32-bit PVH entry point (linux-loader's `XEN_ELFNOTE_PHYS32_ENTRY`).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const XEN_NOTE_NAME: &[u8; 4] = b"Xen\0";
/// Note header (namesz, descsz, type) + name + 4-byte desc; every part is 4-byte aligned already.
const PVH_NOTE_SIZE: usize = 12 + 4 + 4;

/// Builds an ET_EXEC image with one RWX `PT_LOAD` of `code` at `load_addr`
/// (physical = virtual) entered at `entry`, and, with `pvh_entry`, a
/// `PT_NOTE` advertising that 32-bit PVH entry point.
pub fn elf64_image(load_addr: u64, code: &[u8], entry: u64, pvh_entry: Option<u32>) -> Vec<u8> {
    let phnum = if pvh_entry.is_some() { 2 } else { 1 };
    let note_off = EHDR_SIZE + phnum * PHDR_SIZE;
    let code_off = PAGE + load_addr % PAGE;
    let mut out = Vec::with_capacity(code_off as usize + code.len());

    // ELF header.
    out.extend_from_slice(b"\x7fELF");
    out.extend_from_slice(&[2, 1, 1, 0]); // ELFCLASS64, little-endian, version 1, SysV ABI
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&ET_EXEC.to_le_bytes());
    out.extend_from_slice(&EM_X86_64.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // e_version
    out.extend_from_slice(&entry.to_le_bytes());
    out.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    out.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    out.extend_from_slice(&(phnum as u16).to_le_bytes());
    out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx

    let len = code.len() as u64;
    push_phdr(&mut out, PT_LOAD, PF_RWX, code_off, load_addr, len, PAGE);
    if pvh_entry.is_some() {
        push_phdr(&mut out, PT_NOTE, 0x4, note_off as u64, 0, PVH_NOTE_SIZE as u64, 4);
    }
    if let Some(pvh) = pvh_entry {
        out.extend_from_slice(&(XEN_NOTE_NAME.len() as u32).to_le_bytes());
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        out.extend_from_slice(XEN_NOTE_NAME);
        out.extend_from_slice(&pvh.to_le_bytes());
    }
    out.resize(code_off as usize, 0);
    out.extend_from_slice(code);
    out
}

fn push_phdr(out: &mut Vec<u8>, p_type: u32, flags: u32, offset: u64, addr: u64, size: u64, align: u64) {
    out.extend_from_slice(&p_type.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
    out.extend_from_slice(&addr.to_le_bytes()); // p_paddr
    out.extend_from_slice(&size.to_le_bytes()); // p_filesz
    out.extend_from_slice(&size.to_le_bytes()); // p_memsz
    out.extend_from_slice(&align.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::loader::elf::{Elf, PvhBootCapability};
    use linux_loader::loader::KernelLoader;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn load(image: &[u8]) -> (linux_loader::loader::KernelLoaderResult, GuestMemoryMmap) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let result = Elf::load(&mem, None, &mut Cursor::new(image), Some(GuestAddress(0x10_0000))).unwrap();
        (result, mem)
    }

    #[test]
    fn loads_without_pvh_note() {
        let code: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let image = elf64_image(0x20_0000, &code, 0x20_0010, None);
        let (result, mem) = load(&image);
        assert_eq!(result.kernel_load, GuestAddress(0x20_0010));
        assert_eq!(result.kernel_end, 0x20_0000 + 5000);
        assert_ne!(result.pvh_boot_cap, PvhBootCapability::PvhEntryPresent(GuestAddress(0x20_0000)));
        let mut back = vec![0u8; code.len()];
        mem.read_slice(&mut back, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(back, code);
    }

    #[test]
    fn pvh_note_reports_entry() {
        let image = elf64_image(0x20_0000, &[0xf4; 64], 0x20_0000, Some(0x20_0020));
        let (result, _) = load(&image);
        assert_eq!(result.kernel_load, GuestAddress(0x20_0000));
        assert_eq!(result.pvh_boot_cap, PvhBootCapability::PvhEntryPresent(GuestAddress(0x20_0020)));
    }

    #[test]
    fn unaligned_load_address_keeps_offset_congruent() {
        let image = elf64_image(0x20_0123, &[1, 2, 3], 0x20_0123, None);
        let p_offset = u64::from_le_bytes(image[EHDR_SIZE + 8..EHDR_SIZE + 16].try_into().unwrap());
        assert_eq!(p_offset % PAGE, 0x123);
        let (_, mem) = load(&image);
        assert_eq!(mem.read_obj::<[u8; 3]>(GuestAddress(0x20_0123)).unwrap(), [1, 2, 3]);
    }
}
