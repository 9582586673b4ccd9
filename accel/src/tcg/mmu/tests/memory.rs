//! `CpuMemory`: TLB behaviour, page-crossing accesses, MMIO routing, fetch.

use super::*;
use crate::tcg::exception::{pf, Exception};
use crate::tcg::mmu::{Access, LinearMemory, Privilege};

use Access::{Fetch, Read};
use Privilege::Current;

/// Long mode with `lin` → `phys` (4 KiB, user RW) mapped; returns the PTE address too.
fn one_page(vm: &mut Vm, lin: u64, phys: u64) -> (X86State, u64) {
    let root = vm.alloc();
    let pte = vm.map_long(root, lin, phys, URW, KB4)[3];
    (long_state(root), pte)
}

#[test]
fn tlb_keeps_a_stale_translation_until_flushed() {
    let mut vm = Vm::new();
    let lin = 0x40_0000;
    let (mut s, pte) = one_page(&mut vm, lin, 0x30_0000);
    vm.w64(0x30_0000, 0x1111);
    vm.w64(0x31_0000, 0x2222);
    let mut cpu = vm.cpu();
    assert_eq!(cpu.read(&mut s, lin, 8, Read, Current), Ok(0x1111));
    // Remapped without INVLPG: the cached translation is still used, as
    // hardware may do.
    vm.w64(pte, 0x31_0000 | URW);
    assert_eq!(cpu.read(&mut s, lin, 8, Read, Current), Ok(0x1111));
    cpu.flush_page(lin);
    assert_eq!(cpu.read(&mut s, lin, 8, Read, Current), Ok(0x2222));
    vm.w64(pte, 0x30_0000 | URW);
    assert_eq!(cpu.read(&mut s, lin, 8, Read, Current), Ok(0x2222));
    cpu.flush_all();
    assert_eq!(cpu.read(&mut s, lin, 8, Read, Current), Ok(0x1111));
    // Unmapped: stale until flushed, then #PF.
    vm.w64(pte, 0);
    assert_eq!(cpu.read(&mut s, lin, 8, Read, Current), Ok(0x1111));
    cpu.flush_page(lin + 0x123);
    assert_eq!(cpu.read(&mut s, lin, 8, Read, Current), Err(Exception::page_fault(lin, 0)));
}

#[test]
fn flush_nonglobal_keeps_global_entries() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    vm.map_long(root, 0x1000, 0x30_0000, URW | pte::G, KB4);
    vm.map_long(root, 0x2000, 0x30_1000, URW, KB4);
    let mut s = long_state(root);
    s.cr4 |= ctrl::CR4_PGE;
    let mut cpu = vm.cpu();
    cpu.read(&mut s, 0x1000, 1, Read, Current).unwrap();
    cpu.read(&mut s, 0x2000, 1, Read, Current).unwrap();
    assert!(cpu.tlb().contains(0x1000) && cpu.tlb().contains(0x2000));
    cpu.flush_nonglobal();
    assert!(cpu.tlb().contains(0x1000));
    assert!(!cpu.tlb().contains(0x2000));
    cpu.flush_page(0x1000);
    assert!(!cpu.tlb().contains(0x1000));
}

#[test]
fn invlpg_anywhere_in_a_large_page_drops_all_of_it() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    vm.map_long(root, 0x20_0000, 0x40_0000, URW, MB2);
    vm.map_long(root, 0x1000, 0x30_0000, URW, KB4);
    let mut s = long_state(root);
    let mut cpu = vm.cpu();
    for lin in [0x20_0000, 0x3f_f000, 0x1000] {
        cpu.read(&mut s, lin, 1, Read, Current).unwrap();
    }
    cpu.flush_page(0x30_0000);
    assert!(!cpu.tlb().contains(0x20_0000));
    assert!(!cpu.tlb().contains(0x3f_f000));
}

#[test]
fn write_through_a_read_entry_sets_dirty() {
    let mut vm = Vm::new();
    let lin = 0x40_0000;
    let (mut s, pte) = one_page(&mut vm, lin, 0x30_0000);
    let mut cpu = vm.cpu();
    cpu.read(&mut s, lin, 4, Read, Current).unwrap();
    assert_eq!(vm.r64(pte) & pte::D, 0);
    cpu.write(&mut s, lin + 4, 4, 0xdead_beef, Current).unwrap();
    assert_eq!(vm.r64(pte) & pte::D, pte::D);
    assert_eq!(vm.r32(0x30_0004), 0xdead_beef);
    // The guest clears D (as Linux does) and flushes: the next write sets it again.
    vm.w64(pte, vm.r64(pte) & !pte::D);
    cpu.flush_page(lin);
    cpu.write(&mut s, lin, 1, 1, Current).unwrap();
    assert_eq!(vm.r64(pte) & pte::D, pte::D);
}

#[test]
fn cached_entries_are_checked_against_the_current_privilege() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    let kern = 0xffff_8000_0000_0000;
    vm.map_long(root, kern, 0x30_0000, pte::P | pte::RW, KB4);
    let ro = vm.map_long(root, 0x1000, 0x31_0000, pte::P | pte::US, KB4)[3];
    let mut s = long_state(root);
    let mut cpu = vm.cpu();
    cpu.read(&mut s, kern, 8, Read, Current).unwrap();
    set_cpl(&mut s, 3);
    assert_eq!(cpu.read(&mut s, kern, 8, Read, Current), Err(Exception::page_fault(kern, pf::PRESENT | pf::USER)));
    // SMAP follows RFLAGS.AC with no flush.
    set_cpl(&mut s, 0);
    s.cr4 |= ctrl::CR4_SMAP;
    assert_eq!(cpu.read(&mut s, 0x1000, 1, Read, Current), Err(Exception::page_fault(0x1000, pf::PRESENT)));
    s.rflags |= crate::tcg::state::rflags::AC;
    assert_eq!(cpu.read(&mut s, 0x1000, 1, Read, Current), Ok(0));
    // Rights raised without INVLPG: the failed check walks again instead of
    // raising a spurious fault.
    set_cpl(&mut s, 3);
    cpu.read(&mut s, 0x1000, 1, Read, Current).unwrap();
    vm.w64(ro, vm.r64(ro) | pte::RW);
    assert_eq!(cpu.write(&mut s, 0x1000, 1, 7, Current), Ok(()));
    assert_eq!(vm.r8(0x31_0000), 7);
}

/// 0x1000 → 0x30_0000 and 0x2000 → 0x50_0000 (not contiguous).
fn two_pages(vm: &mut Vm, second_flags: u64) -> X86State {
    let root = vm.alloc();
    vm.map_long(root, 0x1000, 0x30_0000, URW, KB4);
    if second_flags != 0 {
        vm.map_long(root, 0x2000, 0x50_0000, second_flags, KB4);
    }
    long_state(root)
}

#[test]
fn page_crossing_reads_and_writes() {
    let mut vm = Vm::new();
    let mut s = two_pages(&mut vm, URW);
    let mut cpu = vm.cpu();
    cpu.write(&mut s, 0x1ffc, 8, 0x8877_6655_4433_2211, Current).unwrap();
    assert_eq!(vm.r32(0x30_0ffc), 0x4433_2211);
    assert_eq!(vm.r32(0x50_0000), 0x8877_6655);
    assert_eq!(cpu.read(&mut s, 0x1ffc, 8, Read, Current), Ok(0x8877_6655_4433_2211));
    assert_eq!(cpu.read(&mut s, 0x1ffe, 4, Read, Current), Ok(0x6655_4433));
    let data: Vec<u8> = (1..=16).collect();
    cpu.write_bytes(&s, 0x1ff9, &data, Current).unwrap();
    let mut back = [0u8; 16];
    cpu.read_bytes(&s, 0x1ff9, &mut back, Read, Current).unwrap();
    assert_eq!(back.as_slice(), data.as_slice());
    assert_eq!(vm.r8(0x30_0fff), 7);
    assert_eq!(vm.r8(0x50_0000), 8);
}

#[test]
fn page_crossing_faults_leave_the_first_page_untouched() {
    for (second, code) in [(0, pf::WRITE), (pte::P | pte::US, pf::PRESENT | pf::WRITE)] {
        let mut vm = Vm::new();
        let mut s = two_pages(&mut vm, second);
        let mut cpu = vm.cpu();
        let want = Err(Exception::page_fault(0x2000, code));
        assert_eq!(cpu.write(&mut s, 0x1ffc, 8, u64::MAX, Current), want);
        assert_eq!(cpu.write_bytes(&s, 0x1ff0, &[0xff; 32], Current), want);
        assert_eq!(cpu.atomic_rmw(&s, 0x1ffe, 4, |v| v + 1), want.map(|()| 0));
        assert_eq!(vm.r64(0x30_0ff0), 0);
        assert_eq!(vm.r64(0x30_0ff8), 0);
    }
    let mut vm = Vm::new();
    let mut s = two_pages(&mut vm, 0);
    let mut cpu = vm.cpu();
    assert_eq!(cpu.read(&mut s, 0x1fff, 2, Read, Current), Err(Exception::page_fault(0x2000, 0)));
}

#[test]
fn mmio_routing() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    vm.map_long(root, 0x1000, 0x30_0000, URW, KB4);
    vm.map_long(root, 0x2000, MMIO, URW, KB4);
    let mut s = long_state(root);
    let mut cpu = vm.cpu();
    assert_eq!(cpu.read(&mut s, 0x2010, 4, Read, Current), Ok(0xabab_abab));
    cpu.write(&mut s, 0x2020, 8, 0x0807_0605_0403_0201, Current).unwrap();
    assert_eq!(
        vm.rec.take(),
        vec![MmioOp::Read(MMIO + 0x10, 4), MmioOp::Write(MMIO + 0x20, vec![1, 2, 3, 4, 5, 6, 7, 8])]
    );
    // RAM → MMIO across the page boundary: each side gets its part.
    cpu.write(&mut s, 0x1ffe, 4, 0x4433_2211, Current).unwrap();
    assert_eq!(vm.r8(0x30_0ffe), 0x11);
    assert_eq!(vm.r8(0x30_0fff), 0x22);
    assert_eq!(cpu.read(&mut s, 0x1ffe, 4, Read, Current), Ok(0xabab_2211));
    assert_eq!(vm.rec.take(), vec![MmioOp::Write(MMIO, vec![0x33, 0x44]), MmioOp::Read(MMIO, 2)]);
    // Physically contiguous RAM → MMIO.
    let mut buf = [0u8; 4];
    cpu.phys().read(RAM_SIZE - 2, &mut buf);
    assert_eq!(buf, [0, 0, 0xab, 0xab]);
    assert_eq!(vm.rec.take(), vec![MmioOp::Read(RAM_SIZE, 2)]);
    // Paging off: physical = linear.
    let mut flat = X86State::reset();
    assert_eq!(cpu.read(&mut flat, MMIO + 6, 2, Read, Current), Ok(0xabab));
    assert_eq!(vm.rec.take(), vec![MmioOp::Read(MMIO + 6, 2)]);
}

#[test]
fn linear_addresses_wrap_at_4g_outside_long_mode() {
    let vm = Vm::new();
    let mut s = X86State::reset();
    let mut cpu = vm.cpu();
    cpu.write(&mut s, 0xffff_fffe, 4, 0x4433_2211, Current).unwrap();
    assert_eq!(vm.rec.take(), vec![MmioOp::Write(0xffff_fffe, vec![0x11, 0x22])]);
    assert_eq!(vm.r8(0), 0x33);
    assert_eq!(vm.r8(1), 0x44);
}

#[test]
fn fetch_stops_at_the_page_end() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    vm.map_long(root, 0x1000, 0x30_0000, URW, KB4);
    vm.map_long(root, 0x2000, 0x30_1000, URW | pte::XD, KB4);
    vm.map_long(root, 0xffff_8000_0000_0000, 0x30_2000, pte::P, KB4);
    for i in 0..16 {
        vm.w8(0x30_0ff8 + i, i as u8);
    }
    let mut s = long_state(root);
    let mut cpu = vm.cpu();
    let mut buf = [0u8; 15];
    assert_eq!(cpu.fetch(&s, 0x1ff8, &mut buf), Ok(8));
    assert_eq!(&buf[..8], &[0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(cpu.fetch(&s, 0x1000, &mut buf), Ok(15));
    assert_eq!(cpu.fetch(&s, 0x2000, &mut buf), Err(Exception::page_fault(0x2000, pf::PRESENT | pf::FETCH)));
    assert_eq!(cpu.fetch(&s, 0x3000, &mut buf), Err(Exception::page_fault(0x3000, pf::FETCH)));
    assert_eq!(
        cpu.read(&mut s, 0x2000, 1, Fetch, Current),
        Err(Exception::page_fault(0x2000, pf::PRESENT | pf::FETCH))
    );
    assert_eq!(cpu.translate(&s, 0x1ffa, Fetch, Current), Ok(0x30_0ffa));
    set_cpl(&mut s, 3);
    let kern = 0xffff_8000_0000_0000;
    assert_eq!(cpu.fetch(&s, kern, &mut buf), Err(Exception::page_fault(kern, pf::PRESENT | pf::USER | pf::FETCH)));
}
