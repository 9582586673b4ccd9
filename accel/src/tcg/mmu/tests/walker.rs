//! The page walker: every mode, page size, fault and error code, A/D bits.

use super::*;
use crate::tcg::exception::{pf, Exception, Result};
use crate::tcg::mmu::walker::{is_canonical, pae_pdptes_valid, walk, Rights, Translation, PHYS_ADDR_BITS};
use crate::tcg::mmu::{Access, Privilege};
use crate::tcg::state::rflags;

use Access::{Fetch, Read, Write};
use Privilege::{Current, Supervisor};

fn go(vm: &Vm, s: &X86State, linear: u64, access: Access) -> Result<Translation> {
    walk(&vm.phys(), s, linear, access, Current)
}

fn phys(vm: &Vm, s: &X86State, linear: u64, access: Access) -> u64 {
    let t = go(vm, s, linear, access).unwrap();
    t.phys_page | (linear & 0xfff)
}

fn fault(vm: &Vm, s: &X86State, linear: u64, access: Access) -> Exception {
    go(vm, s, linear, access).unwrap_err()
}

fn pfe(linear: u64, code: u32) -> Exception {
    Exception::page_fault(linear, code)
}

#[test]
fn paging_off_is_identity_and_32_bit() {
    let vm = Vm::new();
    let s = X86State::reset();
    let mut cpu = vm.cpu();
    assert_eq!(cpu.translate(&s, 0x1234_5678, Write, Current), Ok(0x1234_5678));
    assert_eq!(cpu.translate(&s, 0x1_0000_1234, Read, Current), Ok(0x1234));
    assert_eq!(go(&vm, &s, 0xabc, Write).unwrap().rights, Rights::IDENTITY);
}

#[test]
fn long_mode_4k_2m_1g_pages() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    vm.map_long(root, 0x7f00_1234_5000, 0x40_3000, URW, KB4);
    vm.map_long(root, 0xffff_8000_0020_0000, 0x60_0000, URW, MB2);
    vm.map_long(root, 0xffff_ffff_8000_0000, 0x80_4000_0000, URW, GB1);
    let s = long_state(root);
    assert_eq!(phys(&vm, &s, 0x7f00_1234_5678, Read), 0x40_3678);
    assert_eq!(phys(&vm, &s, 0xffff_8000_0023_4567, Write), 0x63_4567);
    assert_eq!(go(&vm, &s, 0xffff_8000_0023_4567, Read).unwrap().page_size, MB2);
    assert_eq!(phys(&vm, &s, 0xffff_ffff_8123_4567, Fetch), 0x80_4123_4567);
    assert_eq!(go(&vm, &s, 0xffff_ffff_8123_4567, Read).unwrap().page_size, GB1);
    // Through the CpuMemory front door too.
    assert_eq!(vm.cpu().translate(&s, 0x7f00_1234_5abc, Read, Current), Ok(0x40_3abc));
}

#[test]
fn pae_4k_and_2m_pages() {
    let mut vm = Vm::new();
    let pdpt = vm.alloc();
    vm.map_pae(pdpt, 0xc012_3000, 0x50_0000, URW, KB4);
    vm.map_pae(pdpt, 0x8020_0000, 0xc0_0020_0000, URW, MB2);
    let s = pae_state(pdpt);
    assert_eq!(phys(&vm, &s, 0xc012_3456, Read), 0x50_0456);
    assert_eq!(phys(&vm, &s, 0x803f_ffff, Write), 0xc0_003f_ffff);
}

#[test]
fn legacy_4k_and_4m_pse36_pages() {
    let mut vm = Vm::new();
    let pd = vm.alloc();
    vm.map_legacy(pd, 0x0804_8000, 0x70_0000, URW, KB4);
    // PSE-36: PDE bits 20:13 are physical bits 39:32.
    vm.map_legacy(pd, 0xc040_0000, 0x80_0000 | (0x12 << 13), URW, MB4);
    let mut s = legacy_state(pd);
    assert_eq!(phys(&vm, &s, 0x0804_8123, Read), 0x70_0123);
    assert_eq!(phys(&vm, &s, 0xc07f_fffe, Write), 0x12_00bf_fffe);
    assert_eq!(go(&vm, &s, 0xc040_0000, Read).unwrap().page_size, MB4);
    // Without CR4.PSE the PS bit is ignored: the PDE points to a page table
    // (zeroed memory here), so the page is not present.
    s.cr4 &= !ctrl::CR4_PSE;
    assert_eq!(fault(&vm, &s, 0xc040_0000, Read), pfe(0xc040_0000, 0));
}

#[test]
fn not_present_error_codes() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    vm.map_long(root, 0x40_0000, 0x40_0000, URW, KB4);
    let mut s = long_state(root);
    let a = 0x40_1234; // same page table, PTE not present
    let b = 0x7fff_0000_0000; // no PML4E
    assert_eq!(fault(&vm, &s, a, Read), pfe(a, 0));
    assert_eq!(fault(&vm, &s, b, Write), pfe(b, pf::WRITE));
    assert_eq!(fault(&vm, &s, a, Fetch), pfe(a, pf::FETCH));
    set_cpl(&mut s, 3);
    assert_eq!(fault(&vm, &s, a, Read), pfe(a, pf::USER));
    assert_eq!(fault(&vm, &s, a, Write), pfe(a, pf::USER | pf::WRITE));
    assert_eq!(fault(&vm, &s, b, Fetch), pfe(b, pf::USER | pf::FETCH));
    // An implicit supervisor access at CPL 3 reports U/S = 0.
    assert_eq!(walk(&vm.phys(), &s, a, Read, Supervisor), Err(pfe(a, 0)));

    // I/D is reported only with NXE in PAE/4-level paging, or with SMEP.
    let pd = vm.alloc();
    let mut s = legacy_state(pd);
    assert_eq!(fault(&vm, &s, 0x1000, Fetch), pfe(0x1000, 0));
    s.cr4 |= ctrl::CR4_SMEP;
    assert_eq!(fault(&vm, &s, 0x1000, Fetch), pfe(0x1000, pf::FETCH));
    let pdpt = vm.alloc();
    let mut s = pae_state(pdpt);
    s.efer &= !ctrl::EFER_NXE;
    assert_eq!(fault(&vm, &s, 0x1000, Fetch), pfe(0x1000, 0));
}

#[test]
fn user_supervisor_and_read_write_faults() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    let kern = 0xffff_8000_0000_0000;
    let ro_user = 0x1000;
    let ro_kern = kern + 0x1000;
    vm.map_long(root, kern, 0x20_0000, pte::P | pte::RW, KB4);
    vm.map_long(root, ro_user, 0x20_1000, pte::P | pte::US, KB4);
    vm.map_long(root, ro_kern, 0x20_2000, pte::P, KB4);
    let mut s = long_state(root);

    // Supervisor: CR0.WP decides writes to read-only pages, user or not.
    assert!(go(&vm, &s, kern, Write).is_ok());
    assert_eq!(fault(&vm, &s, ro_kern, Write), pfe(ro_kern, pf::PRESENT | pf::WRITE));
    assert_eq!(fault(&vm, &s, ro_user, Write), pfe(ro_user, pf::PRESENT | pf::WRITE));
    s.cr0 &= !ctrl::CR0_WP;
    assert!(go(&vm, &s, ro_kern, Write).is_ok());
    assert!(go(&vm, &s, ro_user, Write).is_ok());

    // User: U/S and R/W always apply.
    set_cpl(&mut s, 3);
    assert_eq!(fault(&vm, &s, kern, Read), pfe(kern, pf::PRESENT | pf::USER));
    assert_eq!(fault(&vm, &s, kern, Fetch), pfe(kern, pf::PRESENT | pf::USER | pf::FETCH));
    assert!(go(&vm, &s, ro_user, Read).is_ok());
    assert_eq!(fault(&vm, &s, ro_user, Write), pfe(ro_user, pf::PRESENT | pf::USER | pf::WRITE));
}

#[test]
fn rights_combine_over_levels() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    let lin = 0x5000_0000;
    let levels = vm.map_long(root, lin, 0x30_0000, URW, KB4);
    let mut s = long_state(root);
    set_cpl(&mut s, 3);
    assert!(go(&vm, &s, lin, Write).is_ok());
    // R/W = 0 in the PDPTE: user writes fault although the PTE allows them.
    vm.w64(levels[1], vm.r64(levels[1]) & !pte::RW);
    assert_eq!(fault(&vm, &s, lin, Write), pfe(lin, pf::PRESENT | pf::USER | pf::WRITE));
    // U/S = 0 in the PDE: no user access at all.
    vm.w64(levels[2], vm.r64(levels[2]) & !pte::US);
    assert_eq!(fault(&vm, &s, lin, Read), pfe(lin, pf::PRESENT | pf::USER));
    // XD in the PML4E makes the whole range non-executable.
    set_cpl(&mut s, 0);
    assert!(go(&vm, &s, lin, Fetch).is_ok());
    vm.w64(levels[0], vm.r64(levels[0]) | pte::XD);
    assert_eq!(fault(&vm, &s, lin, Fetch), pfe(lin, pf::PRESENT | pf::FETCH));
    assert!(go(&vm, &s, lin, Read).is_ok());
}

#[test]
fn nx_smep_smap() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    let user = 0x40_0000;
    let user_nx = 0x40_1000;
    let kern = 0xffff_8000_0000_0000;
    vm.map_long(root, user, 0x30_0000, URW, KB4);
    vm.map_long(root, user_nx, 0x30_1000, URW | pte::XD, KB4);
    vm.map_long(root, kern, 0x30_2000, pte::P | pte::RW, KB4);
    let mut s = long_state(root);
    let p = pf::PRESENT;

    assert_eq!(fault(&vm, &s, user_nx, Fetch), pfe(user_nx, p | pf::FETCH));
    set_cpl(&mut s, 3);
    assert_eq!(fault(&vm, &s, user_nx, Fetch), pfe(user_nx, p | pf::USER | pf::FETCH));
    assert!(go(&vm, &s, user, Fetch).is_ok());
    set_cpl(&mut s, 0);

    // SMEP: no supervisor fetch from user pages.
    assert!(go(&vm, &s, user, Fetch).is_ok());
    s.cr4 |= ctrl::CR4_SMEP;
    assert_eq!(fault(&vm, &s, user, Fetch), pfe(user, p | pf::FETCH));
    assert!(go(&vm, &s, kern, Fetch).is_ok());

    // SMAP: no supervisor data access to user pages unless RFLAGS.AC, and
    // never for implicit accesses.
    assert!(go(&vm, &s, user, Write).is_ok());
    s.cr4 |= ctrl::CR4_SMAP;
    assert_eq!(fault(&vm, &s, user, Read), pfe(user, p));
    assert_eq!(fault(&vm, &s, user, Write), pfe(user, p | pf::WRITE));
    s.rflags |= rflags::AC;
    assert!(go(&vm, &s, user, Read).is_ok());
    assert!(go(&vm, &s, user, Write).is_ok());
    assert_eq!(walk(&vm.phys(), &s, user, Read, Supervisor), Err(pfe(user, p)));
    // At CPL 3, explicit accesses are user ones (SMAP is moot); implicit
    // ones are supervisor and SMAP-checked, with U/S = 0 in the code.
    set_cpl(&mut s, 3);
    assert!(go(&vm, &s, user, Write).is_ok());
    assert_eq!(walk(&vm.phys(), &s, user, Write, Supervisor), Err(pfe(user, p | pf::WRITE)));
    assert!(walk(&vm.phys(), &s, kern, Read, Supervisor).is_ok());
}

#[test]
fn reserved_bits_long_mode() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    let rsvd = pf::PRESENT | pf::RSVD;
    let a = 0x1000;
    let levels = vm.map_long(root, a, 0x30_0000 | 1 << PHYS_ADDR_BITS, URW, KB4);
    let mut s = long_state(root);
    assert_eq!(fault(&vm, &s, a, Read), pfe(a, rsvd));
    assert_eq!(fault(&vm, &s, a, Fetch), pfe(a, rsvd | pf::FETCH));
    set_cpl(&mut s, 3);
    assert_eq!(fault(&vm, &s, a, Write), pfe(a, rsvd | pf::USER | pf::WRITE));
    set_cpl(&mut s, 0);
    // Bits 62:52 are ignored in 4-level paging.
    vm.w64(levels[3], 0x30_0000 | URW | 1 << 60);
    assert!(go(&vm, &s, a, Read).is_ok());
    // XD is reserved without EFER.NXE.
    vm.w64(levels[3], 0x30_0000 | URW | pte::XD);
    s.efer &= !ctrl::EFER_NXE;
    assert_eq!(fault(&vm, &s, a, Read), pfe(a, rsvd));
    s.efer |= ctrl::EFER_NXE;
    // PS is reserved in a PML4E.
    vm.w64(levels[0], vm.r64(levels[0]) | pte::PS);
    assert_eq!(fault(&vm, &s, a, Read), pfe(a, rsvd));
    vm.w64(levels[0], vm.r64(levels[0]) & !pte::PS);

    // Large pages: bits between 12 and the page size are reserved.
    let b = 0x4000_0000;
    let c = 0x8000_0000;
    let pde = vm.map_long(root, b, 0x60_0000, URW, MB2)[2];
    let pdpte = vm.map_long(root, c, 0x80_0000_0000, URW, GB1)[1];
    assert!(go(&vm, &s, b, Read).is_ok());
    assert!(go(&vm, &s, c, Read).is_ok());
    vm.w64(pde, vm.r64(pde) | 1 << 13);
    vm.w64(pdpte, vm.r64(pdpte) | 1 << 29);
    assert_eq!(fault(&vm, &s, b, Read), pfe(b, rsvd));
    assert_eq!(fault(&vm, &s, c, Read), pfe(c, rsvd));
    // PAT (bit 12) is not reserved.
    vm.w64(pde, (vm.r64(pde) & !(1 << 13)) | 1 << 12);
    assert!(go(&vm, &s, b, Read).is_ok());
}

#[test]
fn reserved_bits_pae_and_legacy() {
    let mut vm = Vm::new();
    let rsvd = pf::PRESENT | pf::RSVD;
    let pdpt = vm.alloc();
    let levels = vm.map_pae(pdpt, 0x1000, 0x30_0000, URW, KB4);
    let mut s = pae_state(pdpt);
    assert!(go(&vm, &s, 0x1000, Read).is_ok());
    assert!(pae_pdptes_valid(&vm.phys(), pdpt));
    // PAE entries reserve bits 62:M, unlike 4-level ones.
    vm.w64(levels[2], 0x30_0000 | URW | 1 << 60);
    assert_eq!(fault(&vm, &s, 0x1000, Read), pfe(0x1000, rsvd));
    vm.w64(levels[2], 0x30_0000 | URW | pte::XD);
    assert_eq!(fault(&vm, &s, 0x1000, Fetch), pfe(0x1000, pf::PRESENT | pf::FETCH));
    s.efer &= !ctrl::EFER_NXE;
    assert_eq!(fault(&vm, &s, 0x1000, Read), pfe(0x1000, rsvd));
    // PDPTE: R/W (bit 1) is reserved.
    vm.w64(levels[0], vm.r64(levels[0]) | pte::RW);
    assert_eq!(fault(&vm, &s, 0x1000, Read), pfe(0x1000, rsvd));
    assert!(!pae_pdptes_valid(&vm.phys(), pdpt));

    // Legacy 4 MiB page: bit 21 is reserved (PSE-36 with 40-bit addresses).
    let pd = vm.alloc();
    let pde = vm.map_legacy(pd, 0x40_0000, 0x80_0000, URW, MB4)[0];
    let s = legacy_state(pd);
    assert!(go(&vm, &s, 0x40_0000, Read).is_ok());
    vm.w32(pde, vm.r32(pde) | 1 << 21);
    assert_eq!(fault(&vm, &s, 0x40_0000, Read), pfe(0x40_0000, rsvd));
}

#[test]
fn accessed_and_dirty_bits() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    let lin = 0x7000_0000_0000;
    let levels = vm.map_long(root, lin, 0x30_0000, URW, KB4);
    let s = long_state(root);
    go(&vm, &s, lin, Read).unwrap();
    for &e in &levels {
        assert_eq!(vm.r64(e) & (pte::A | pte::D), pte::A, "entry at {e:#x}");
    }
    assert!(!go(&vm, &s, lin, Read).unwrap().rights.has(Rights::DIRTY));
    let t = go(&vm, &s, lin, Write).unwrap();
    assert!(t.rights.has(Rights::DIRTY));
    assert_eq!(vm.r64(levels[3]) & pte::D, pte::D);
    assert_eq!(vm.r64(levels[2]) & pte::D, 0, "non-leaf entries have no dirty bit");
    // A read after that reports the PTE dirty bit as known.
    assert!(go(&vm, &s, lin, Read).unwrap().rights.has(Rights::DIRTY));

    // A large page's leaf gets D as well.
    let pde = vm.map_long(root, 0x4000_0000, 0x60_0000, URW, MB2)[2];
    go(&vm, &s, 0x4000_0000, Write).unwrap();
    assert_eq!(vm.r64(pde) & (pte::A | pte::D), pte::A | pte::D);

    // A faulting access sets A on the levels it used, not on the leaf.
    let ro = vm.map_long(root, 0x5000_0000, 0x31_0000, pte::P, KB4);
    assert!(go(&vm, &s, 0x5000_0000, Write).is_err());
    assert_eq!(vm.r64(ro[2]) & pte::A, pte::A);
    assert_eq!(vm.r64(ro[3]) & (pte::A | pte::D), 0);

    // Legacy: 32-bit entries; PAE: the PDPTE has no accessed bit.
    let pd = vm.alloc();
    let l = vm.map_legacy(pd, 0x1000, 0x32_0000, URW, KB4);
    go(&vm, &legacy_state(pd), 0x1000, Write).unwrap();
    assert_eq!(u64::from(vm.r32(l[0])) & (pte::A | pte::D), pte::A);
    assert_eq!(u64::from(vm.r32(l[1])) & (pte::A | pte::D), pte::A | pte::D);
    let pdpt = vm.alloc();
    let p = vm.map_pae(pdpt, 0x1000, 0x33_0000, URW, KB4);
    let pdpte = vm.r64(p[0]);
    go(&vm, &pae_state(pdpt), 0x1000, Read).unwrap();
    assert_eq!(vm.r64(p[0]), pdpte);
    assert_eq!(vm.r64(p[1]) & pte::A, pte::A);
    assert_eq!(vm.r64(p[2]) & (pte::A | pte::D), pte::A);
}

#[test]
fn non_canonical_is_gp0() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    let s = long_state(root);
    assert_eq!(go(&vm, &s, 0x0000_8000_0000_0000, Read), Err(Exception::gp0()));
    assert_eq!(go(&vm, &s, 0xfff0_0000_0000_0000, Read), Err(Exception::gp0()));
    assert!(is_canonical(0xffff_8000_0000_0000));
    assert!(is_canonical(0x0000_7fff_ffff_ffff));
    assert!(!is_canonical(0x0001_0000_0000_0000));
}

#[test]
fn global_needs_cr4_pge() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    vm.map_long(root, 0x1000, 0x30_0000, URW | pte::G, KB4);
    let mut s = long_state(root);
    assert!(!go(&vm, &s, 0x1000, Read).unwrap().rights.has(Rights::GLOBAL));
    s.cr4 |= ctrl::CR4_PGE;
    assert!(go(&vm, &s, 0x1000, Read).unwrap().rights.has(Rights::GLOBAL));
}

#[test]
fn page_tables_in_mmio_read_through_the_vmm() {
    // A PML4 in MMIO reads as 0xab.. bytes: present, reserved bits set.
    let vm = Vm::new();
    let s = long_state(MMIO);
    assert_eq!(fault(&vm, &s, 0x1000, Read), pfe(0x1000, pf::PRESENT | pf::RSVD));
    assert_eq!(vm.rec.take(), vec![MmioOp::Read(MMIO, 8)]);
}
