//! Loader tests on synthetic kernels: what lands where, and one error per bad input.

mod images;

use accel::cpu_state::gpr;
use accel::Segment;
use linux_loader::bootparam::boot_params;
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::layout::*;
use crate::memory::{create_guest_memory, MemoryError};
use images::{pattern, BzImage, Elf, TempFile, ELF_PAYLOAD_OFFSET};

const RSDP: u64 = 0xe_0000;
const CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
const INITRD_LEN: usize = 0x2345;

fn mem(mib: u64) -> GuestMemoryMmap {
    create_guest_memory(mib).unwrap()
}

fn config(kernel: &TempFile, initrd: Option<&TempFile>, cmdline: &str) -> KernelConfig {
    KernelConfig {
        kernel: kernel.path().to_owned(),
        initrd: initrd.map(|f| f.path().to_owned()),
        cmdline: cmdline.to_owned(),
    }
}

fn read_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// The map the layout promises for `mib` of RAM.
fn expected_e820(mib: u64) -> Vec<(u64, u64, u32)> {
    let size = mib << 20;
    let low_end = size.min(MMIO_HOLE_START);
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, 0xa_0000 - EBDA_START, E820_RESERVED),
        (ACPI_START, ACPI_END - ACPI_START, E820_RESERVED),
        (HIMEM_START, low_end - HIMEM_START, E820_RAM),
    ];
    if size > MMIO_HOLE_START {
        map.push((HIGH_RAM_START, size - MMIO_HOLE_START, E820_RAM));
    }
    map
}

fn zero_page_e820(params: &boot_params) -> Vec<(u64, u64, u32)> {
    let table = params.e820_table;
    table[..usize::from(params.e820_entries)].iter().map(|e| (e.addr, e.size, e.r#type)).collect()
}

fn check_initrd(mem: &GuestMemoryMmap, info: &BootInfo, limit: u64) {
    let (addr, size) = info.initrd.unwrap();
    assert_eq!(size, INITRD_LEN as u64);
    assert_eq!(addr % 0x1000, 0, "initrd at {addr:#x} is not page-aligned");
    assert!(addr >= info.kernel_end, "initrd at {addr:#x} overlaps the kernel");
    assert!(addr + size <= limit, "initrd ends past {limit:#x}");
    // The highest spot: one more page up would cross the limit.
    assert!(addr + 0x1000 + size > limit, "initrd at {addr:#x} is not at the top");
    assert_eq!(read_bytes(mem, addr, INITRD_LEN), pattern(INITRD_LEN, 0x11));
}

/// The GDT in memory is the one the segment registers were decoded from.
fn check_gdt(mem: &GuestMemoryMmap, state: &CpuState) {
    let entry = |sel: u16| mem.read_obj::<u64>(GuestAddress(BOOT_GDT_START + u64::from(sel))).unwrap();
    assert_eq!(state.cs, Segment::from_gdt_entry(0x8, entry(0x8)));
    assert_eq!(state.ds, Segment::from_gdt_entry(0x10, entry(0x10)));
    assert_eq!(state.tr, Segment::from_gdt_entry(0x18, entry(0x18)));
    assert_eq!(mem.read_obj::<u64>(GuestAddress(BOOT_GDT_START)).unwrap(), 0);
    assert_eq!((state.gdt.base, state.gdt.limit), (BOOT_GDT_START, 31));
    assert_eq!((state.idt.base, state.idt.limit), (BOOT_IDT_START, 0));
}

#[test]
fn bzimage_boot_params_for_each_memory_size() {
    let image = BzImage::default();
    let kernel = TempFile::new("bzImage", &image.build());
    let initrd = TempFile::new("initrd", &pattern(INITRD_LEN, 0x11));
    for mib in [64, 512, 3072, 6144] {
        let mem = mem(mib);
        let info = load_kernel(&mem, &config(&kernel, Some(&initrd), CMDLINE), Some(RSDP)).unwrap();
        assert_eq!(info.protocol, BootProtocol::Linux64);
        assert_eq!(info.kernel_end, HIMEM_START + image.payload.len() as u64);
        assert_eq!(read_bytes(&mem, HIMEM_START, image.payload.len()), image.payload);

        let s = &info.cpu_state;
        assert_eq!(s.rip, HIMEM_START + 0x200);
        assert_eq!(s.gprs[gpr::RSI], ZERO_PAGE_START);
        assert_eq!((s.gprs[gpr::RSP], s.gprs[gpr::RBP]), (BOOT_STACK_POINTER, BOOT_STACK_POINTER));
        assert_eq!((s.cr0, s.cr3, s.cr4, s.efer, s.rflags), (0x8000_0031, PML4_START, 0x20, 0x500, 2));
        assert!(s.cs.l && s.cs.selector == 0x8);
        assert_eq!([s.ds, s.es, s.fs, s.gs].map(|seg| seg.selector), [0x10; 4]);
        assert_eq!(s.tr.type_, 0xb);
        check_gdt(&mem, s);
        // PML4[0] → PDPT, present|writable|user.
        assert_eq!(mem.read_obj::<u64>(GuestAddress(PML4_START)).unwrap(), PDPTE_START | 7);

        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.version }, 0x20f);
        assert_eq!({ hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ hdr.code32_start }, HIMEM_START as u32);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, CMDLINE.len() as u32);
        let (addr, size) = info.initrd.unwrap();
        assert_eq!(({ hdr.ramdisk_image }, { hdr.ramdisk_size }), (addr as u32, size as u32));
        assert_eq!({ params.acpi_rsdp_addr }, RSDP);
        assert_eq!(zero_page_e820(&params), expected_e820(mib), "{mib} MiB");

        let mut cmdline = CMDLINE.as_bytes().to_vec();
        cmdline.push(0);
        assert_eq!(read_bytes(&mem, CMDLINE_START, cmdline.len()), cmdline);
        // Low RAM, or the image's initrd_addr_max (2 GiB - 1) is the limit.
        check_initrd(&mem, &info, (mib << 20).min(0x8000_0000));
    }
}

#[test]
fn large_memory_lists_ram_above_4gib() {
    let kernel = TempFile::new("bzImage", &BzImage::default().build());
    let mem = mem(6144);
    load_kernel(&mem, &config(&kernel, None, ""), None).unwrap();
    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    let e820 = zero_page_e820(&params);
    assert_eq!(e820.last(), Some(&(HIGH_RAM_START, (6144 << 20) - MMIO_HOLE_START, E820_RAM)));
    assert_eq!({ params.hdr.ramdisk_image }, 0);
    assert_eq!({ params.acpi_rsdp_addr }, 0);
}

#[test]
fn initrd_stays_below_initrd_addr_max() {
    let image = BzImage { initrd_addr_max: 0x01ff_ffff, ..BzImage::default() };
    let kernel = TempFile::new("bzImage", &image.build());
    let initrd = TempFile::new("initrd", &pattern(INITRD_LEN, 0x11));
    let mem = mem(64);
    let info = load_kernel(&mem, &config(&kernel, Some(&initrd), ""), None).unwrap();
    check_initrd(&mem, &info, 0x200_0000);
}

#[test]
fn bzimage_decompression_buffer_counts_as_kernel() {
    // Like Debian's 6.1 kernel: runs at 16 MiB, needs 52 MiB from there.
    let image = BzImage { init_size: 0x340_0000, ..BzImage::default() };
    let kernel = TempFile::new("bzImage-init-size", &image.build());
    let err = load_err(kernel.path(), None, "", 64, kernel.path());
    assert!(matches!(err, LoadError::KernelTooLarge { needed: 0x440_0000, .. }), "{err}");

    let initrd = TempFile::new("initrd", &pattern(INITRD_LEN, 0x11));
    let mem = mem(128);
    let info = load_kernel(&mem, &config(&kernel, Some(&initrd), ""), None).unwrap();
    assert_eq!(info.kernel_end, 0x440_0000);
    check_initrd(&mem, &info, 128 << 20);

    // 128 MiB leaves 60 MiB above the buffer.
    let big = TempFile::new("initrd-61m", &vec![0u8; 61 << 20]);
    match load_err(kernel.path(), Some(big.path()), "", 128, big.path()) {
        LoadError::InitrdTooLarge { available, .. } => assert_eq!(available, 60 << 20),
        err => panic!("{err}"),
    }
}

#[test]
fn elf_without_pvh_note_boots_linux64() {
    let image = Elf::default();
    let kernel = TempFile::new("vmlinux", &image.build());
    let initrd = TempFile::new("initrd", &pattern(INITRD_LEN, 0x11));
    for mib in [64, 3072] {
        let mem = mem(mib);
        let info = load_kernel(&mem, &config(&kernel, Some(&initrd), CMDLINE), Some(RSDP)).unwrap();
        assert_eq!(info.protocol, BootProtocol::Linux64);
        assert_eq!(info.cpu_state.rip, image.entry);
        assert_eq!(info.kernel_end, image.load_addr + image.payload.len() as u64 + image.bss);
        assert_eq!(read_bytes(&mem, image.load_addr, image.payload.len()), image.payload);
        check_gdt(&mem, &info.cpu_state);

        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!(({ params.hdr.header }, { params.hdr.boot_flag }), (0x5372_6448, 0xaa55));
        assert_eq!({ params.hdr.kernel_alignment }, 0x100_0000);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.acpi_rsdp_addr }, RSDP);
        assert_eq!(zero_page_e820(&params), expected_e820(mib));
        // No header: the protocol's default initrd_addr_max applies.
        check_initrd(&mem, &info, (mib << 20).min(0x3800_0000));
    }
}

fn read_start_info(mem: &GuestMemoryMmap) -> (hvm_start_info, Vec<(u64, u64, u32)>) {
    let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    let memmap = (0..u64::from(info.memmap_entries))
        .map(|i| {
            let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(info.memmap_paddr + i * 24)).unwrap();
            (e.addr, e.size, e.type_)
        })
        .collect();
    (info, memmap)
}

#[test]
fn elf_with_pvh_note_boots_pvh() {
    let image = Elf { pvh_entry: Some(0x100_0040), ..Elf::default() };
    let kernel = TempFile::new("vmlinux-pvh", &image.build());
    let initrd = TempFile::new("initrd", &pattern(INITRD_LEN, 0x11));
    for mib in [64, 6144] {
        let mem = mem(mib);
        let info = load_kernel(&mem, &config(&kernel, Some(&initrd), CMDLINE), Some(RSDP)).unwrap();
        assert_eq!(info.protocol, BootProtocol::Pvh);
        let s = &info.cpu_state;
        assert_eq!((s.rip, s.gprs[gpr::RBX], s.rflags), (0x100_0040, PVH_INFO_START, 2));
        assert_eq!((s.cr0, s.cr3, s.cr4, s.efer), (0x11, 0, 0, 0));
        assert!(!s.cs.l && s.cs.db && s.cs.selector == 0x8 && s.cs.limit == 0xffff_ffff);
        assert_eq!([s.ds, s.es, s.ss].map(|seg| (seg.selector, seg.db)), [(0x10, true); 3]);
        check_gdt(&mem, s);

        let (start_info, memmap) = read_start_info(&mem);
        assert_eq!((start_info.magic, start_info.version), (0x336e_c578, 1));
        assert_eq!(start_info.cmdline_paddr, CMDLINE_START);
        assert_eq!(start_info.rsdp_paddr, RSDP);
        assert_eq!(start_info.memmap_paddr, PVH_INFO_START + 56);
        assert_eq!(memmap, expected_e820(mib), "{mib} MiB");
        assert_eq!(start_info.nr_modules, 1);
        assert_eq!(start_info.modlist_paddr, start_info.memmap_paddr + 24 * memmap.len() as u64);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(start_info.modlist_paddr)).unwrap();
        assert_eq!(Some((module.paddr, module.size)), info.initrd);
        check_initrd(&mem, &info, (mib << 20).min(0x3800_0000));
    }
}

#[test]
fn pvh_without_initrd_has_no_modules() {
    let kernel = TempFile::new("vmlinux-pvh", &Elf { pvh_entry: Some(0x100_0000), ..Elf::default() }.build());
    let mem = mem(64);
    let info = load_kernel(&mem, &config(&kernel, None, ""), None).unwrap();
    let (start_info, _) = read_start_info(&mem);
    assert_eq!((start_info.nr_modules, start_info.modlist_paddr, start_info.rsdp_paddr), (0, 0, 0));
    assert_eq!(info.initrd, None);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(CMDLINE_START)).unwrap(), 0);
}

/// Loads `kernel` into 64 MiB and returns the error, checking that its
/// message names `path`.
fn load_err(kernel: &Path, initrd: Option<&Path>, cmdline: &str, mib: u64, named: &Path) -> LoadError {
    let config =
        KernelConfig { kernel: kernel.to_owned(), initrd: initrd.map(Path::to_owned), cmdline: cmdline.to_owned() };
    let err = load_kernel(&mem(mib), &config, None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&*named.to_string_lossy()), "{msg:?} doesn't name {}", named.display());
    err
}

fn kernel_err(contents: &[u8]) -> LoadError {
    let file = TempFile::new("kernel", contents);
    load_err(file.path(), None, "", 64, file.path())
}

#[test]
fn missing_empty_and_unknown_kernels() {
    let missing = std::env::temp_dir().join("rxvmm-loader-no-such-kernel");
    let err = load_err(&missing, None, "", 64, &missing);
    assert!(matches!(err, LoadError::OpenKernel { .. }), "{err}");
    assert!(matches!(kernel_err(b""), LoadError::EmptyKernel { .. }));
    // Deterministic noise, long enough to hold both magics' offsets.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..0x4000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    assert!(matches!(kernel_err(&noise), LoadError::UnknownFormat { .. }));
    assert!(matches!(kernel_err(b"MZ\x90\0 not a kernel"), LoadError::UnknownFormat { .. }));
}

#[test]
fn truncated_bzimages() {
    let image = BzImage::default();
    let full = image.build();
    // Inside the setup header; inside the real-mode setup; inside the kernel.
    for len in [0x210, image.setup_len() - 0x100, image.setup_len(), full.len() - 0x20] {
        let err = kernel_err(&full[..len]);
        assert!(matches!(err, LoadError::Truncated { .. }), "{len:#x}: {err}");
    }
}

#[test]
fn unsupported_bzimages() {
    for image in [BzImage { version: 0x205, ..BzImage::default() }, BzImage { xloadflags: 0, ..BzImage::default() }] {
        let err = kernel_err(&image.build());
        assert!(matches!(err, LoadError::UnsupportedBzImage { .. }), "{err}");
    }
}

#[test]
fn truncated_and_invalid_elves() {
    let full = Elf { pvh_entry: Some(0x100_0000), ..Elf::default() }.build();
    // Inside the ELF header; inside the program headers; inside the segment.
    for len in [40, 100, ELF_PAYLOAD_OFFSET + 0x10] {
        let err = kernel_err(&full[..len]);
        assert!(matches!(err, LoadError::Truncated { .. }), "{len}: {err}");
    }
    for image in [
        Elf { class: 1, ..Elf::default() },
        Elf { machine: 3, ..Elf::default() },
        Elf { load_addr: 0x8000, entry: 0x10_0000, ..Elf::default() },
        Elf { entry: 0x1000, ..Elf::default() },
    ] {
        let err = kernel_err(&image.build());
        assert!(matches!(err, LoadError::InvalidElf { .. }), "{err}");
    }
}

#[test]
fn kernels_too_large_for_memory() {
    // 8 MiB of RAM can't hold 8 MiB of kernel above 1 MiB.
    let image = BzImage { payload: pattern(8 << 20, 0), ..BzImage::default() };
    let bz = TempFile::new("bzImage-big", &image.build());
    let err = load_err(bz.path(), None, "", 8, bz.path());
    assert!(matches!(err, LoadError::KernelTooLarge { .. }), "{err}");
    assert!(err.to_string().starts_with("memory too small"), "{err}");
    // A BSS reaching past 64 MiB.
    let err = kernel_err(&Elf { bss: 128 << 20, ..Elf::default() }.build());
    assert!(matches!(err, LoadError::KernelTooLarge { .. }), "{err}");
}

#[test]
fn initrd_errors() {
    let kernel = TempFile::new("bzImage", &BzImage::default().build());
    let big = TempFile::new("initrd-big", &vec![0u8; 8 << 20]);
    let err = load_err(kernel.path(), Some(big.path()), "", 8, big.path());
    match err {
        LoadError::InitrdTooLarge { size, available, .. } => {
            assert_eq!(size, 8 << 20);
            // 8 MiB of RAM minus the first MiB and the kernel, page-rounded.
            assert_eq!(available, (8 << 20) - 0x10_3000);
        }
        err => panic!("{err}"),
    }

    let missing = std::env::temp_dir().join("rxvmm-loader-no-such-initrd");
    let err = load_err(kernel.path(), Some(&missing), "", 64, &missing);
    assert!(matches!(err, LoadError::OpenInitrd { .. }), "{err}");
    let empty = TempFile::new("initrd-empty", b"");
    let err = load_err(kernel.path(), Some(empty.path()), "", 64, empty.path());
    assert!(matches!(err, LoadError::EmptyInitrd { .. }), "{err}");
}

#[test]
fn cmdline_errors() {
    let bz = TempFile::new("bzImage", &BzImage { cmdline_size: 16, ..BzImage::default() }.build());
    load_kernel(&mem(64), &config(&bz, None, &"x".repeat(16)), None).unwrap();
    let err = load_err(bz.path(), None, &"x".repeat(17), 64, bz.path());
    assert!(matches!(err, LoadError::CmdlineTooLong { len: 17, max: 16, .. }), "{err}");

    let elf = TempFile::new("vmlinux", &Elf::default().build());
    let err = load_err(elf.path(), None, &"x".repeat(CMDLINE_MAX_SIZE), 64, elf.path());
    assert!(matches!(err, LoadError::CmdlineTooLong { max, .. } if max == CMDLINE_MAX_SIZE - 1), "{err}");

    let err = load_kernel(&mem(64), &config(&elf, None, "root=/dev/vda\ninit=/bin/sh"), None).unwrap_err();
    assert!(matches!(err, LoadError::InvalidCmdline { .. }), "{err}");
}

#[test]
fn memory_too_small() {
    let err = create_guest_memory(MIN_MEM_MIB - 1).unwrap_err();
    assert!(matches!(err, MemoryError::TooSmall { .. }), "{err}");

    let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
    let kernel = TempFile::new("bzImage", &BzImage::default().build());
    let err = load_kernel(&tiny, &config(&kernel, None, ""), None).unwrap_err();
    assert!(matches!(err, LoadError::NoLowMemory { size: 0x8_0000 }), "{err}");
}
