use super::msr::*;
use super::*;
use crate::tcg::segmentation::test_mem::*;

const GDT: u64 = 0x1000;

fn regs_str(regs: &[u32]) -> String {
    regs.iter().flat_map(|r| r.to_le_bytes()).map(char::from).collect()
}

#[test]
fn cpuid_vendor_and_max_leaves() {
    let s = X86State::reset();
    let [eax, ebx, ecx, edx] = cpuid(&s, 0, 1, 0, 0);
    assert_eq!(eax, 0x16);
    assert_eq!(regs_str(&[ebx, edx, ecx]), "GenuineIntel");
    assert_eq!(cpuid(&s, 0, 1, 0x8000_0000, 0)[0], 0x8000_0008);
    let [eax, ebx, ecx, edx] = cpuid(&s, 0, 1, 0x4000_0000, 0);
    assert_eq!(eax, 0x4000_0000);
    assert_eq!(regs_str(&[ebx, ecx, edx]), "RXVMMTCGRXVM");
    let brand: String = (0x8000_0002..=0x8000_0004).map(|l| regs_str(&cpuid(&s, 0, 1, l, 0))).collect();
    assert_eq!(brand.trim_end_matches('\0'), "rxvmm TCG x86-64 CPU");
    // Past the maximum: the highest basic leaf, as on Intel.
    assert_eq!(cpuid(&s, 0, 1, 0x17, 0), cpuid(&s, 0, 1, 0x16, 0));
    assert_eq!(cpuid(&s, 0, 1, 0x8000_0009, 0), cpuid(&s, 0, 1, 0x16, 0));
    assert_eq!(cpuid(&s, 0, 1, 0x16, 0), [2000, 2000, 100, 0]);
    assert_eq!(cpuid(&s, 0, 1, 0x15, 0), [1, 80, 25_000_000, 0]);
    // MISC_ENABLE.LIMIT_CPUID caps leaf 0.
    let mut l = s.clone();
    l.msr.misc_enable |= misc_enable::LIMIT_CPUID;
    assert_eq!(cpuid(&l, 0, 1, 0, 0)[0], 2);
}

#[test]
fn cpuid_leaf1_features_and_ids() {
    let s = X86State::reset();
    let [eax, ebx, ecx, edx] = cpuid(&s, 5, 6, 1, 0);
    assert_eq!(eax, 0x6f0, "family 6 model 15");
    assert_eq!(ebx >> 24, 5, "initial APIC ID");
    assert_eq!((ebx >> 16) & 0xff, 8, "addressable IDs: 6 rounded up");
    assert_eq!((ebx >> 8) & 0xff, 8, "CLFLUSH line: 64 bytes");
    // FPU DE PSE TSC MSR PAE CX8 APIC SEP MTRR PGE CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2 HTT
    assert_eq!(edx, 0x178b_bb7d);
    // CX16, x2APIC, TSC-deadline, hypervisor; nothing from SSE3 up by default.
    assert_eq!(ecx, 1 << 13 | 1 << 21 | 1 << 24 | 1 << 31);
    assert_eq!(cpuid(&s, 0, 1, 1, 0)[3] & 1 << 28, 0, "no HTT with one vCPU");
    let all = Features { sse3: true, popcnt: true, x2apic: true, ..FEATURES };
    let ecx = cpuid_with(&all, &s, 0, 1, 1, 0)[2];
    assert_eq!(ecx & (1 | 1 << 21 | 1 << 23), 1 | 1 << 21 | 1 << 23);
}

#[test]
fn cpuid_extended_features() {
    let s = X86State::reset();
    let [eax, ebx, ecx, edx] = cpuid(&s, 0, 1, 0x8000_0001, 0);
    assert_eq!((eax, ebx, ecx), (0, 0, 0));
    // SYSCALL NX PDPE1GB RDTSCP LM
    assert_eq!(edx, 1 << 11 | 1 << 20 | 1 << 26 | 1 << 27 | 1 << 29);
    assert_eq!(cpuid(&s, 0, 1, 0x8000_0007, 0)[3], 1 << 8);
    assert_eq!(cpuid(&s, 0, 1, 0x8000_0008, 0)[0], 0x3028);
    let mut xd = s.clone();
    xd.msr.misc_enable |= misc_enable::XD_DISABLE;
    assert_eq!(cpuid(&xd, 0, 1, 0x8000_0001, 0)[3] & 1 << 20, 0);
    // TSC_ADJUST; IBRS/IBPB, ARCH_CAPABILITIES
    assert_eq!(cpuid(&s, 0, 1, 7, 0), [2, 1 << 1, 0, 1 << 26 | 1 << 29]);
    assert_eq!(cpuid(&s, 0, 1, 7, 1), [0; 4]);
    assert_eq!(cpuid(&s, 0, 1, 7, 2), [0, 0, 0, 1 << 4], "BHI_CTRL");
}

#[test]
fn cpuid_leaf_b_topology() {
    let s = X86State::reset();
    assert_eq!(cpuid(&s, 3, 4, 0xb, 0), [0, 1, 0x100, 3]);
    assert_eq!(cpuid(&s, 3, 4, 0xb, 1), [2, 4, 0x201, 3]);
    assert_eq!(cpuid(&s, 3, 4, 0xb, 2), [0, 0, 2, 3]);
    assert_eq!(cpuid(&s, 2, 3, 0xb, 1), [2, 3, 0x201, 2]);
    assert_eq!(cpuid(&s, 0, 1, 0xb, 1), [0, 1, 0x201, 0]);
    // Out-of-range inputs never panic.
    let _ = cpuid(&s, u32::MAX, u32::MAX, 1, 0);
    let _ = cpuid(&s, u32::MAX, 0, 0xb, u32::MAX);
}

/// Protected mode with paging off, CPL 0, CR4.PAE set: ready for LME.
fn pre_long() -> X86State {
    let mut s = protected_state(GDT, 0x7f, 0);
    s.cr4 = ctrl::CR4_PAE;
    s
}

#[test]
fn cr0_pg_with_lme_activates_long_mode() {
    let mut s = pre_long();
    assert_eq!(wrmsr(&mut s, MSR_EFER, ctrl::EFER_LME), Ok(SystemEffect::ModeChanged));
    let cr0 = s.cr0;
    let e = write_cr(&mut s, 0, cr0 | ctrl::CR0_PG).unwrap();
    assert_eq!(e, SystemEffect::FlushTlbAndModeChanged);
    assert_ne!(s.efer & ctrl::EFER_LMA, 0);
    assert_ne!(s.hflags & hflags::LMA, 0);
    assert_eq!(rdmsr(&s, MSR_EFER), Ok(ctrl::EFER_LME | ctrl::EFER_LMA));
    // LME can't change with paging on; CR4.PAE can't go in IA-32e mode.
    assert_eq!(wrmsr(&mut s, MSR_EFER, 0), Err(Exception::gp0()));
    assert_eq!(write_cr(&mut s, 4, 0), Err(Exception::gp0()));
    // Paging off from compatibility mode leaves IA-32e mode.
    write_cr(&mut s, 0, cr0).unwrap();
    assert_eq!(s.efer & ctrl::EFER_LMA, 0);
}

#[test]
fn cr0_checks() {
    let mut s = pre_long();
    s.cr4 = 0;
    wrmsr(&mut s, MSR_EFER, ctrl::EFER_LME).unwrap();
    let cr0 = s.cr0;
    assert_eq!(write_cr(&mut s, 0, cr0 | ctrl::CR0_PG), Err(Exception::gp0()), "LME without PAE");
    assert_eq!(s.cr0, cr0);
    assert_eq!(write_cr(&mut s, 0, ctrl::CR0_PG), Err(Exception::gp0()), "PG without PE");
    assert_eq!(write_cr(&mut s, 0, (cr0 | ctrl::CR0_NW) & !ctrl::CR0_CD), Err(Exception::gp0()));
    assert_eq!(write_cr(&mut s, 0, 1 << 32 | cr0), Err(Exception::gp0()));
    assert_eq!(write_cr(&mut s, 0, cr0 | ctrl::CR0_TS), Ok(SystemEffect::ModeChanged));
    assert_ne!(s.hflags & hflags::FPU_TRAP, 0);
    assert_eq!(clts(&mut s), Ok(SystemEffect::ModeChanged));
    assert_eq!(s.hflags & hflags::FPU_TRAP, 0);
    // 64-bit code can't turn paging off.
    let mut l = long_state(GDT, 0);
    let cr0 = l.cr0;
    assert_eq!(write_cr(&mut l, 0, cr0 & !ctrl::CR0_PG), Err(Exception::gp0()));
    // CPL 3 and unknown registers.
    let mut u = long_state(GDT, 3);
    assert_eq!(read_cr(&u, 0), Err(Exception::gp0()));
    assert_eq!(write_cr(&mut u, 3, 0), Err(Exception::gp0()));
    assert_eq!(read_cr(&l, 5), Err(Exception::ud()));
}

#[test]
fn cr3_cr4_cr8() {
    let mut l = long_state(GDT, 0);
    assert_eq!(write_cr(&mut l, 3, 0x1234_5000), Ok(SystemEffect::FlushTlb));
    assert_eq!(l.cr3, 0x1234_5000);
    assert_eq!(write_cr(&mut l, 3, 1 << 63), Err(Exception::gp0()));
    assert_eq!(write_cr(&mut l, 3, 1 << 45), Err(Exception::gp0()));
    let cr4 = l.cr4;
    assert_eq!(write_cr(&mut l, 4, cr4 | ctrl::CR4_OSXSAVE), Err(Exception::gp0()));
    assert_eq!(write_cr(&mut l, 4, cr4 | ctrl::CR4_PCIDE), Err(Exception::gp0()));
    assert_eq!(write_cr(&mut l, 4, cr4 | ctrl::CR4_PGE), Ok(SystemEffect::FlushTlbAndModeChanged));
    assert_eq!(write_cr(&mut l, 4, cr4 | ctrl::CR4_PGE | ctrl::CR4_OSFXSR), Ok(SystemEffect::ModeChanged));
    assert_eq!(write_cr(&mut l, 8, 0xf), Ok(SystemEffect::ModeChanged));
    assert_eq!(read_cr(&l, 8), Ok(0xf));
    assert_eq!(write_cr(&mut l, 8, 0x10), Err(Exception::gp0()));
}

#[test]
fn efer_reserved_bits_gp() {
    let mut s = pre_long();
    for bad in [1 << 1, 1 << 9, 1 << 12, 1 << 14, 1 << 63] {
        assert_eq!(wrmsr(&mut s, MSR_EFER, bad), Err(Exception::gp0()), "bit {bad:#x}");
    }
    // LMA is read-only: a written LMA is ignored.
    wrmsr(&mut s, MSR_EFER, ctrl::EFER_LMA | ctrl::EFER_SCE).unwrap();
    assert_eq!(s.efer, ctrl::EFER_SCE);
    assert_eq!(wrmsr(&mut s, MSR_EFER, ctrl::EFER_SCE | ctrl::EFER_NXE), Ok(SystemEffect::FlushTlbAndModeChanged));
}

#[test]
fn msr_access() {
    let mut s = long_state(GDT, 0);
    assert_eq!(rdmsr(&s, 0x1234), Err(Exception::gp0()));
    assert_eq!(wrmsr(&mut s, 0x1234, 0), Err(Exception::gp0()));
    assert_eq!(rdmsr(&s, MSR_IA32_MTRRCAP), Ok(0x508));
    assert_eq!(rdmsr(&s, MSR_IA32_FEATURE_CONTROL), Ok(1));
    assert_eq!(wrmsr(&mut s, MSR_IA32_FEATURE_CONTROL, 5), Err(Exception::gp0()));
    assert_eq!(rdmsr(&s, MSR_IA32_MCG_CAP), Ok(0));
    // FS/GS base go to the segment caches; non-canonical is #GP.
    wrmsr(&mut s, MSR_FS_BASE, 0x7fff_0000_1000).unwrap();
    wrmsr(&mut s, MSR_GS_BASE, 0xffff_8880_0000_0000).unwrap();
    assert_eq!(s.segs[seg::FS].base, 0x7fff_0000_1000);
    assert_eq!(rdmsr(&s, MSR_GS_BASE), Ok(0xffff_8880_0000_0000));
    assert_eq!(wrmsr(&mut s, MSR_LSTAR, 0x8000_0000_0000), Err(Exception::gp0()));
    // PAT entries must be valid types; MTRRs have reserved bits.
    assert_eq!(wrmsr(&mut s, MSR_IA32_PAT, 0x0007_0406_0007_0402), Err(Exception::gp0()));
    wrmsr(&mut s, MSR_IA32_PAT, 0x0007_0106_0007_0406).unwrap();
    assert_eq!(wrmsr(&mut s, MSR_MTRR_PHYS_BASE0, 0x8000_0002), Err(Exception::gp0()));
    assert_eq!(wrmsr(&mut s, MSR_MTRR_PHYS_BASE0 + 1, 0x8000_0001), Err(Exception::gp0()));
    wrmsr(&mut s, MSR_MTRR_PHYS_BASE0 + 1, 0xff_c000_0800).unwrap();
    assert_eq!(rdmsr(&s, 0x201), Ok(0xff_c000_0800));
    wrmsr(&mut s, MSR_MTRR_FIX4K_F8000, 0x0606_0606_0606_0606).unwrap();
    assert_eq!(s.msr.mtrr_fixed[10], 0x0606_0606_0606_0606);
    assert_eq!(wrmsr(&mut s, MSR_MTRR_DEF_TYPE, 0xc07), Err(Exception::gp0()));
    wrmsr(&mut s, MSR_MTRR_DEF_TYPE, 0xc06).unwrap();
    assert_eq!(wrmsr(&mut s, MSR_TSC_AUX, 1 << 32), Err(Exception::gp0()));
    // APIC base: the BSP bit is read-only.
    s.msr.apic_base = 0xfee0_0900;
    wrmsr(&mut s, MSR_IA32_APIC_BASE, 0xfee0_0000).unwrap();
    assert_eq!(s.msr.apic_base, 0xfee0_0100);
    assert_eq!(wrmsr(&mut s, MSR_IA32_APIC_BASE, 0xfee0_0400), Err(Exception::gp0()), "x2APIC without EN");
    // CPL 3.
    let mut u = long_state(GDT, 3);
    assert_eq!(rdmsr(&u, MSR_EFER), Err(Exception::gp0()));
    assert_eq!(wrmsr(&mut u, MSR_EFER, 0), Err(Exception::gp0()));
}

#[test]
fn tsc_is_monotonic_and_writable() {
    let mut s = X86State::reset();
    let a = rdtsc(&s);
    let b = rdtsc(&s);
    assert!(b >= a);
    wrmsr(&mut s, MSR_IA32_TSC, 1 << 40).unwrap();
    let t = rdmsr(&s, MSR_IA32_TSC).unwrap();
    assert!((1 << 40..(1 << 40) + TSC_HZ).contains(&t), "{t:#x}");
    s.msr.tsc_aux = 7;
    assert_eq!(rdtscp(&s).1, 7);
    let mut u = long_state(GDT, 3);
    assert_eq!(check_rdtsc(&u), Ok(()));
    u.cr4 |= ctrl::CR4_TSD;
    assert_eq!(check_rdtsc(&u), Err(Exception::gp0()));
}

#[test]
fn syscall_sysret_round_trip() {
    let mut s = long_state(GDT, 3);
    s.msr.star = 0x0013_0008 << 32; // SYSCALL CS 0x08, SYSRET base 0x13
    s.msr.lstar = 0xffff_ffff_8100_0000;
    s.msr.sfmask = rflags::IF | rflags::TF | rflags::DF | rflags::AC;
    set_rflags(&mut s, rflags::IF | rflags::DF | rflags::CF | rflags::AC);
    s.recompute_hflags();
    s.rip = 0x40_1000;
    syscall(&mut s, 0x40_1002).unwrap();
    assert_eq!(s.cpl(), 0);
    assert_eq!((s.segs[seg::CS].selector, s.segs[seg::SS].selector), (0x08, 0x10));
    assert_eq!(s.rip, 0xffff_ffff_8100_0000);
    assert_eq!(s.gpr[1], 0x40_1002);
    assert_eq!(s.gpr[11], rflags::IF | rflags::DF | rflags::CF | rflags::AC | rflags::FIXED1);
    assert_eq!(crate::tcg::flags::rflags(&s), rflags::CF | rflags::FIXED1);
    assert_ne!(s.hflags & hflags::CS64, 0);
    sysret(&mut s, 8).unwrap();
    assert_eq!(s.cpl(), 3);
    assert_eq!((s.segs[seg::CS].selector, s.segs[seg::SS].selector), (0x23, 0x1b));
    assert_eq!(s.rip, 0x40_1002);
    assert_eq!(crate::tcg::flags::rflags(&s), rflags::IF | rflags::DF | rflags::CF | rflags::AC | rflags::FIXED1);
    assert_ne!(s.hflags & hflags::CS64, 0);
    // SYSRET to compatibility mode, then SYSCALL is #UD there (Intel).
    syscall(&mut s, 0x40_1004).unwrap();
    s.gpr[1] = 0x1_2345_6789;
    sysret(&mut s, 4).unwrap();
    assert_eq!((s.segs[seg::CS].selector, s.rip), (0x13, 0x2345_6789));
    assert_eq!(s.hflags & hflags::CS64, 0);
    assert_eq!(syscall(&mut s, 0), Err(Exception::ud()));
    // SYSRET: #GP at CPL 3, #GP(0) for a non-canonical RCX; SCE off: #UD.
    let mut u = long_state(GDT, 3);
    assert_eq!(sysret(&mut u, 8), Err(Exception::gp0()));
    let mut k = long_state(GDT, 0);
    k.gpr[1] = 0x8000_0000_0000;
    assert_eq!(sysret(&mut k, 8), Err(Exception::gp0()));
    k.efer &= !ctrl::EFER_SCE;
    assert_eq!(syscall(&mut k, 0), Err(Exception::ud()));
}

#[test]
fn swapgs_rules() {
    let mut k = long_state(GDT, 0);
    k.segs[seg::GS].base = 1;
    k.msr.kernel_gs_base = 2;
    swapgs(&mut k).unwrap();
    assert_eq!((k.segs[seg::GS].base, k.msr.kernel_gs_base), (2, 1));
    let mut u = long_state(GDT, 3);
    assert_eq!(swapgs(&mut u), Err(Exception::gp0()));
    let mut p = protected_state(GDT, 0x7f, 0);
    assert_eq!(swapgs(&mut p), Err(Exception::ud()));
}

#[test]
fn sysenter_sysexit_32bit() {
    let mut s = protected_state(GDT, 0x7f, 3);
    assert_eq!(sysenter(&mut s), Err(Exception::gp0()), "SYSENTER_CS null");
    s.msr.sysenter_cs = 0x08;
    s.msr.sysenter_esp = 0x9000;
    s.msr.sysenter_eip = 0xc000_1000;
    s.rflags |= rflags::IF;
    sysenter(&mut s).unwrap();
    assert_eq!((s.cpl(), s.segs[seg::CS].selector, s.segs[seg::SS].selector), (0, 0x08, 0x10));
    assert_eq!((s.rip, s.gpr[4], s.rflags & rflags::IF), (0xc000_1000, 0x9000, 0));
    assert_ne!(s.hflags & hflags::CS32, 0);
    s.gpr[2] = 0x40_2000;
    s.gpr[1] = 0x7000;
    sysexit(&mut s, 4).unwrap();
    assert_eq!((s.cpl(), s.segs[seg::CS].selector, s.segs[seg::SS].selector), (3, 0x1b, 0x23));
    assert_eq!((s.rip, s.gpr[4]), (0x40_2000, 0x7000));
    assert_eq!(sysexit(&mut s, 4), Err(Exception::gp0()));
}

#[test]
fn descriptor_table_loads_and_stores() {
    let mut m = FlatMem::new(0x10000);
    let mut l = long_state(GDT, 0);
    m.w(0x100, 2, 0x7f);
    m.w(0x102, 8, 0xffff_ffff_8000_2000);
    lgdt(&mut l, &mut m, 0x100, 8).unwrap();
    assert_eq!((l.gdtr.base, l.gdtr.limit), (0xffff_ffff_8000_2000, 0x7f));
    sidt(&mut l, &mut m, 0x200).unwrap();
    sgdt(&mut l, &mut m, 0x200).unwrap();
    assert_eq!((m.r(0x200, 2), m.r(0x202, 8)), (0x7f, 0xffff_ffff_8000_2000));
    m.w(0x102, 8, 0x8000_0000_0000);
    assert_eq!(lidt(&mut l, &mut m, 0x100, 8), Err(Exception::gp0()), "non-canonical base");
    // 32-bit: a 16-bit operand size keeps 24 bits of the base.
    let mut p = protected_state(GDT, 0x7f, 0);
    m.w(0x102, 4, 0x1234_5678);
    lidt(&mut p, &mut m, 0x100, 2).unwrap();
    assert_eq!(p.idtr.base, 0x34_5678);
    lidt(&mut p, &mut m, 0x100, 4).unwrap();
    assert_eq!(p.idtr.base, 0x1234_5678);
    let mut u = protected_state(GDT, 0x7f, 3);
    assert_eq!(lgdt(&mut u, &mut m, 0x100, 4), Err(Exception::gp0()));
    assert_eq!(str(&u), Ok(0));
    assert_eq!(sldt(&X86State::reset()), Err(Exception::ud()));
}

#[test]
fn lmsw_cannot_clear_pe() {
    let mut p = protected_state(GDT, 0x7f, 0);
    lmsw(&mut p, 0x8).unwrap();
    assert_eq!(p.cr0 & 0xf, ctrl::CR0_PE | ctrl::CR0_TS);
    let mut r = X86State::reset();
    lmsw(&mut r, 0x1).unwrap();
    assert_ne!(r.cr0 & ctrl::CR0_PE, 0);
}

#[test]
fn debug_registers() {
    let mut p = protected_state(GDT, 0x7f, 0);
    write_dr(&mut p, 7, 0x1).unwrap();
    assert_eq!(read_dr(&p, 7), Ok(0x401));
    assert_eq!(read_dr(&p, 5), Ok(0x401), "DR5 aliases DR7 without CR4.DE");
    p.cr4 |= ctrl::CR4_DE;
    assert_eq!(read_dr(&p, 5), Err(Exception::ud()));
    let mut l = long_state(GDT, 0);
    assert_eq!(write_dr(&mut l, 6, 1 << 32), Err(Exception::gp0()));
    assert_eq!(read_dr(&long_state(GDT, 3), 0), Err(Exception::gp0()));
}

#[test]
fn io_permission_bitmap() {
    let mut m = FlatMem::new(0x10000);
    let tss = 0x3000;
    let mut s = protected_state(GDT, 0x7f, 3);
    s.tr.attr = 0;
    assert_eq!(io_permitted(&mut s, &mut m, 0x3f8, 1), Err(Exception::gp0()), "no usable TSS");
    // Bitmap at 0x68 covering ports 0..0x3ff; port 0x3f8..0x3ff allowed.
    s.tr = cache_of(sys_desc(tss, 0x68 + 0x80, 0xb, 0), 0x28);
    m.w(tss + 0x66, 2, 0x68);
    for i in 0..0x80 {
        m.w(tss + 0x68 + i, 1, 0xff);
    }
    m.w(tss + 0x68 + 0x3f8 / 8, 1, 0x00);
    m.w(tss + 0x68 + 0x80, 1, 0xff); // the terminating byte (SDM 19.5.2)
    assert_eq!(io_permitted(&mut s, &mut m, 0x3f8, 1), Ok(()));
    assert_eq!(io_permitted(&mut s, &mut m, 0x3fc, 4), Ok(()));
    assert_eq!(io_permitted(&mut s, &mut m, 0x3fe, 4), Err(Exception::gp0()), "straddles into 0x400");
    assert_eq!(io_permitted(&mut s, &mut m, 0x60, 1), Err(Exception::gp0()));
    // CPL <= IOPL: no bitmap needed; real mode: always.
    s.rflags |= rflags::IOPL;
    assert_eq!(io_permitted(&mut s, &mut m, 0x60, 1), Ok(()));
    assert_eq!(io_permitted(&mut X86State::reset(), &mut m, 0x60, 1), Ok(()));
}

#[test]
fn hlt_needs_cpl0() {
    let mut u = protected_state(GDT, 0x7f, 3);
    assert_eq!(hlt(&mut u), Err(Exception::gp0()));
    assert!(!u.halted);
    let mut k = protected_state(GDT, 0x7f, 0);
    hlt(&mut k).unwrap();
    assert!(k.halted);
}
