use super::test_mem::*;
use super::*;
use crate::tcg::exception::vector;
use crate::tcg::state::ctrl;

const GDT: u64 = 0x1000;

fn gp(code: u32) -> Exception {
    Exception::gp(code)
}

fn setup32(cpl: u8) -> (X86State, FlatMem) {
    let mut m = FlatMem::new(0x20000);
    write_gdt32(&mut m, GDT);
    (protected_state(GDT, 0x7f, cpl), m)
}

#[test]
fn real_mode_load_keeps_limit_and_sets_base() {
    let mut s = X86State::reset();
    let mut m = FlatMem::new(0x1000);
    s.segs[seg::DS].limit = 0xffff_ffff; // unreal mode
    load_segment(&mut s, &mut m, seg::DS, 0x1234).unwrap();
    assert_eq!(s.segs[seg::DS].base, 0x12340);
    assert_eq!(s.segs[seg::DS].selector, 0x1234);
    assert_eq!(s.segs[seg::DS].limit, 0xffff_ffff);
    assert_eq!(load_segment(&mut s, &mut m, seg::CS, 0), Err(Exception::ud()));
    assert_eq!(load_segment(&mut s, &mut m, 6, 0), Err(Exception::ud()));
}

#[test]
fn protected_load_sets_cache_and_accessed_bit() {
    let (mut s, mut m) = setup32(0);
    // 0x38: data, type 2 (not accessed), base 0x0012_3400.
    m.w(GDT + 0x38, 8, seg_desc(0x0012_3400, 0xff, 0x2, 0, 0x4));
    load_segment(&mut s, &mut m, seg::ES, 0x38).unwrap();
    let es = s.segs[seg::ES];
    assert_eq!((es.base, es.limit, es.selector), (0x0012_3400, 0xff, 0x38));
    assert_eq!(es.seg_type(), 3);
    assert_eq!(Descriptor(m.r(GDT + 0x38, 8)).typ(), 3, "accessed bit written back");
    assert!(m.writes.iter().all(|w| w.2 == Privilege::Supervisor));
}

#[test]
fn load_segment_error_codes() {
    let (mut s, mut m) = setup32(3);
    // Beyond the GDT limit.
    assert_eq!(load_segment(&mut s, &mut m, seg::DS, 0x80 | 3), Err(gp(0x80)));
    // DPL 0 data from CPL 3.
    assert_eq!(load_segment(&mut s, &mut m, seg::DS, 0x13), Err(gp(0x10)));
    // SS: RPL != CPL, DPL != CPL, not writable.
    assert_eq!(load_segment(&mut s, &mut m, seg::SS, 0x20), Err(gp(0x20)));
    assert_eq!(load_segment(&mut s, &mut m, seg::SS, 0x13), Err(gp(0x10)));
    m.w(GDT + 0x38, 8, seg_desc(0, 0xfffff, 0x1, 3, 0xc)); // read-only data
    assert_eq!(load_segment(&mut s, &mut m, seg::SS, 0x3b), Err(gp(0x38)));
    // Not present: #SS for SS, #NP otherwise.
    m.w(GDT + 0x40, 8, seg_desc(0, 0xfffff, 0x3, 3, 0xc) & !(1 << 47));
    assert_eq!(load_segment(&mut s, &mut m, seg::SS, 0x43), Err(Exception::with_code(vector::SS, 0x40)));
    assert_eq!(load_segment(&mut s, &mut m, seg::DS, 0x43), Err(Exception::with_code(vector::NP, 0x40)));
    // Execute-only code can't go into DS; a TSS neither.
    m.w(GDT + 0x48, 8, seg_desc(0, 0xfffff, 0x8, 3, 0xc));
    assert_eq!(load_segment(&mut s, &mut m, seg::DS, 0x4b), Err(gp(0x48)));
    m.w(GDT + 0x50, 8, sys_desc(0x3000, 0x67, 9, 3));
    assert_eq!(load_segment(&mut s, &mut m, seg::FS, 0x53), Err(gp(0x50)));
    // LDT selector with no LDT.
    assert_eq!(load_segment(&mut s, &mut m, seg::DS, 0x0f), Err(gp(0x0c)));
    // Null: fine for DS, #GP(0) for SS outside 64-bit mode.
    load_segment(&mut s, &mut m, seg::DS, 3).unwrap();
    assert!(!s.segs[seg::DS].present());
    assert_eq!(load_segment(&mut s, &mut m, seg::SS, 3), Err(gp(0)));
    // Nothing changed by the failures.
    assert_eq!(s.segs[seg::SS].selector, 0x23);
    assert_eq!(s.cpl(), 3);
}

#[test]
fn null_ss_in_64bit_mode() {
    let mut m = FlatMem::new(0x20000);
    write_gdt64(&mut m, GDT);
    let mut s = long_state(GDT, 0);
    load_segment(&mut s, &mut m, seg::SS, 0).unwrap();
    assert_eq!(s.segs[seg::SS].selector, 0);
    assert_eq!(s.cpl(), 0);
    // RPL != CPL, and at CPL 3: #GP(0).
    assert_eq!(load_segment(&mut s, &mut m, seg::SS, 1), Err(gp(0)));
    let mut u = long_state(GDT, 3);
    assert_eq!(load_segment(&mut u, &mut m, seg::SS, 3), Err(gp(0)));
    // FS gets the descriptor's 32-bit base.
    m.w(GDT + 0x38, 8, seg_desc(0x8765_4321, 0xfffff, 0x3, 0, 0xc));
    load_segment(&mut s, &mut m, seg::FS, 0x38).unwrap();
    assert_eq!(s.segs[seg::FS].base, 0x8765_4321);
}

#[test]
fn far_jump_compat_to_64bit() {
    let mut m = FlatMem::new(0x20000);
    write_gdt64(&mut m, GDT);
    let mut s = long_state(GDT, 0);
    s.segs[seg::CS] = cache_of(seg_desc(0, 0xfffff, 0xb, 0, FLAT_CODE32), 0x30);
    s.recompute_hflags();
    assert_eq!(s.hflags & hflags::CS64, 0);
    assert_ne!(s.hflags & hflags::CS32, 0);
    far_jump(&mut s, &mut m, 0x08, 0x1234_5678, 4).unwrap();
    assert_eq!(s.segs[seg::CS].selector, 0x08);
    assert_eq!(s.rip, 0x1234_5678);
    assert_ne!(s.hflags & hflags::CS64, 0);
    // Back to compatibility mode with a 64-bit far jump (REX.W m16:64).
    far_jump(&mut s, &mut m, 0x30, 0x2000, 8).unwrap();
    assert_eq!(s.hflags & hflags::CS64, 0);
    assert_eq!(s.rip, 0x2000);
}

#[test]
fn far_jump_errors() {
    let mut m = FlatMem::new(0x20000);
    write_gdt64(&mut m, GDT);
    let mut s = long_state(GDT, 0);
    assert_eq!(far_jump(&mut s, &mut m, 0, 0, 8), Err(gp(0)));
    assert_eq!(far_jump(&mut s, &mut m, 0x10, 0, 8), Err(gp(0x10)), "data segment");
    assert_eq!(far_jump(&mut s, &mut m, 0x18, 0, 8), Err(gp(0x18)), "DPL 3 non-conforming from CPL 0");
    assert_eq!(far_jump(&mut s, &mut m, 0x08, 0x0000_8000_0000_0000, 8), Err(gp(0)), "non-canonical");
    m.w(GDT + 0x38, 8, seg_desc(0, 0xfffff, 0xb, 0, FLAT_CODE64) & !(1 << 47));
    assert_eq!(far_jump(&mut s, &mut m, 0x38, 0, 8), Err(Exception::with_code(vector::NP, 0x38)));
    // L = 1 with D = 1 is reserved.
    m.w(GDT + 0x38, 8, seg_desc(0, 0xfffff, 0xb, 0, 0xe));
    assert_eq!(far_jump(&mut s, &mut m, 0x38, 0, 8), Err(gp(0x38)));
    assert_eq!(s.segs[seg::CS].selector, 0x08);
}

#[test]
fn far_jump_through_64bit_call_gate() {
    let mut m = FlatMem::new(0x20000);
    write_gdt64(&mut m, GDT);
    let mut s = long_state(GDT, 0);
    let target = 0xffff_ffff_8000_1000u64;
    m.w(GDT + 0x48, 8, gate(0x08, target, 0xc, 0, 0));
    m.w(GDT + 0x50, 8, target >> 32);
    s.gdtr.limit = 0x57;
    far_jump(&mut s, &mut m, 0x48, 0, 8).unwrap();
    assert_eq!((s.segs[seg::CS].selector, s.rip), (0x08, target));
    // A gate whose upper half has a non-zero type is #GP(gate).
    m.w(GDT + 0x50, 8, (target >> 32) | 0xc << 40);
    assert_eq!(far_jump(&mut s, &mut m, 0x48, 0, 8), Err(gp(0x48)));
}

#[test]
fn far_call_and_return_same_privilege() {
    let (mut s, mut m) = setup32(0);
    s.gpr[4] = 0x8000;
    s.rip = 0x100;
    m.w(GDT + 0x38, 8, seg_desc(0x10000, 0xffff, 0xb, 0, FLAT_CODE32 & !0x8));
    s.gdtr.limit = 0x3f;
    far_call(&mut s, &mut m, 0x38, 0x20, 4, 0x105).unwrap();
    assert_eq!((s.segs[seg::CS].selector, s.segs[seg::CS].base, s.rip), (0x38, 0x10000, 0x20));
    assert_eq!((m.r(0x7ffc, 4), m.r(0x7ff8, 4)), (0x08, 0x105));
    assert_eq!(s.gpr[4], 0x7ff8);
    far_return(&mut s, &mut m, 4, 4).unwrap();
    assert_eq!((s.segs[seg::CS].selector, s.rip, s.gpr[4]), (0x08, 0x105, 0x8004));
}

#[test]
fn far_call_gate_to_inner_privilege_and_back() {
    let (mut s, mut m) = setup32(3);
    // 0x28: TSS at 0x3000 with SS0:ESP0 = 0x10:0x9000; 0x30: call gate DPL 3
    // to 0x08:0x5000 copying 2 dwords.
    m.w(GDT + 0x28, 8, sys_desc(0x3000, 0x67, 0xb, 0));
    m.w(GDT + 0x30, 8, gate(0x08, 0x5000, 0xc, 3, 2));
    m.w(0x3004, 4, 0x9000);
    m.w(0x3008, 2, 0x10);
    s.tr = cache_of(sys_desc(0x3000, 0x67, 0xb, 0), 0x28);
    s.gpr[4] = 0x8000;
    m.w(0x8000, 4, 0x1111);
    m.w(0x8004, 4, 0x2222);
    far_call(&mut s, &mut m, 0x33, 0, 4, 0x4444).unwrap();
    assert_eq!(s.cpl(), 0);
    assert_eq!((s.segs[seg::CS].selector, s.rip), (0x08, 0x5000));
    assert_eq!((s.segs[seg::SS].selector, s.gpr[4]), (0x10, 0x8fe8));
    let frame: Vec<u64> = (0..6).map(|i| m.r(0x8fe8 + 4 * i, 4)).collect();
    assert_eq!(frame, [0x4444, 0x1b, 0x1111, 0x2222, 0x8000, 0x23]);
    // The kernel side loads a DPL-0 DS; the return to CPL 3 nulls it.
    load_segment(&mut s, &mut m, seg::DS, 0x10).unwrap();
    far_return(&mut s, &mut m, 4, 8).unwrap();
    assert_eq!(s.cpl(), 3);
    assert_eq!((s.segs[seg::CS].selector, s.rip), (0x1b, 0x4444));
    assert_eq!((s.segs[seg::SS].selector, s.gpr[4]), (0x23, 0x8008));
    assert_eq!(s.segs[seg::DS].selector, 0);
    assert!(!s.segs[seg::DS].present());
    assert_eq!(s.segs[seg::ES].selector, 0x23, "DPL-3 data stays");
}

#[test]
fn call_gate_checks() {
    let (mut s, mut m) = setup32(3);
    m.w(GDT + 0x30, 8, gate(0x08, 0x5000, 0xc, 0, 0)); // DPL 0 gate
    assert_eq!(far_call(&mut s, &mut m, 0x33, 0, 4, 0), Err(gp(0x30)));
    m.w(GDT + 0x30, 8, gate(0x08, 0x5000, 0xc, 3, 0) & !(1 << 47));
    assert_eq!(far_call(&mut s, &mut m, 0x33, 0, 4, 0), Err(Exception::with_code(vector::NP, 0x30)));
    // JMP through a gate can't change privilege.
    m.w(GDT + 0x30, 8, gate(0x08, 0x5000, 0xc, 3, 0));
    assert_eq!(far_jump(&mut s, &mut m, 0x33, 0, 4), Err(gp(0x08)));
    // Task gates: unsupported.
    m.w(GDT + 0x30, 8, gate(0x28, 0, 0x5, 3, 0));
    assert_eq!(far_jump(&mut s, &mut m, 0x33, 0, 4), Err(gp(0x30)));
}

#[test]
fn ltr_marks_busy_and_lldt_in_long_mode() {
    let mut m = FlatMem::new(0x20000);
    write_gdt64(&mut m, GDT);
    let mut s = long_state(GDT, 0);
    m.w(GDT + 0x40, 8, sys_desc(0x8000_3000, 0x67, 0x9, 0));
    m.w(GDT + 0x48, 8, 0xffff_ffff);
    load_tr(&mut s, &mut m, 0x40).unwrap();
    assert_eq!(s.tr.base, 0xffff_ffff_8000_3000);
    assert_eq!(s.tr.seg_type(), 0xb);
    assert_eq!(Descriptor(m.r(GDT + 0x40, 8)).typ(), 0xb);
    // Busy now: a second LTR is #GP(sel).
    assert_eq!(load_tr(&mut s, &mut m, 0x40), Err(gp(0x40)));
    // LLDT with a 16-byte LDT descriptor, then a null one.
    m.w(GDT + 0x40, 8, sys_desc(0x5000, 0xfff, 0x2, 0));
    m.w(GDT + 0x48, 8, 0x1);
    load_ldt(&mut s, &mut m, 0x40).unwrap();
    assert_eq!((s.ldtr.base, s.ldtr.limit), (0x1_0000_5000, 0xfff));
    load_ldt(&mut s, &mut m, 0).unwrap();
    assert!(!s.ldtr.present());
    // CPL 3, TI set, wrong type.
    let mut u = long_state(GDT, 3);
    assert_eq!(load_tr(&mut u, &mut m, 0x40), Err(gp(0)));
    assert_eq!(load_ldt(&mut s, &mut m, 0x44), Err(gp(0x44)));
    assert_eq!(load_ldt(&mut s, &mut m, 0x10), Err(gp(0x10)));
}

#[test]
fn real_mode_far_call_and_return() {
    let mut s = X86State::reset();
    let mut m = FlatMem::new(0x20000);
    s.segs[seg::SS] = SegmentCache::real_mode(0x100);
    s.gpr[4] = 0x200;
    far_call(&mut s, &mut m, 0x2000, 0x10, 2, 0xfff5).unwrap();
    assert_eq!((s.segs[seg::CS].base, s.rip), (0x20000, 0x10));
    assert_eq!((m.r(0x11fe, 2), m.r(0x11fc, 2)), (0xf000, 0xfff5));
    far_return(&mut s, &mut m, 2, 0).unwrap();
    assert_eq!((s.segs[seg::CS].selector, s.rip, s.gpr[4]), (0xf000, 0xfff5, 0x200));
    assert_eq!(s.cr0 & ctrl::CR0_PE, 0);
}

#[test]
fn garbage_descriptors_never_panic() {
    // Every selector against a GDT of pseudo-random bytes, in each mode.
    let mut m = FlatMem::new(0x20000);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in m.bytes[GDT as usize..GDT as usize + 0x10000].iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for (mut s, name) in [(protected_state(GDT, 0xffff, 0), "pm0"), (long_state(GDT, 3), "lm3")] {
        s.gdtr.limit = 0xffff;
        s.ldtr = cache_of(sys_desc(GDT + 0x100, 0xffff, 2, 0), 0);
        s.tr = cache_of(sys_desc(GDT + 0x200, 0xffff, 0xb, 0), 0);
        for sel in (0..=0xffffu16).step_by(7) {
            let mut t = s.clone();
            let _ = load_segment(&mut t, &mut m, sel as usize % 6, sel);
            let mut t = s.clone();
            let _ = far_jump(&mut t, &mut m, sel, u64::from(sel) << 20, 8);
            let mut t = s.clone();
            t.gpr[4] = 0x100 + u64::from(sel & 0xff0);
            let _ = far_call(&mut t, &mut m, sel, 0, 4, 0);
            let _ = far_return(&mut t, &mut m, 8, sel);
            let _ = load_tr(&mut t, &mut m, sel);
            let _ = load_ldt(&mut t, &mut m, sel);
        }
        let _ = name;
    }
}

#[test]
fn far_call_64bit_gate_to_inner_privilege_and_back() {
    let mut m = FlatMem::new(0x20000);
    write_gdt64(&mut m, GDT);
    let target = 0xffff_ffff_8100_2000u64;
    m.w(GDT + 0x40, 8, sys_desc(0x3000, 0x67, 0xb, 0));
    m.w(GDT + 0x50, 8, gate(0x08, target, 0xc, 3, 0));
    m.w(GDT + 0x58, 8, target >> 32);
    m.w(0x3004, 8, 0x9000); // RSP0
    let mut s = long_state(GDT, 3);
    s.gdtr.limit = 0x5f;
    s.tr = cache_of(sys_desc(0x3000, 0x67, 0xb, 0), 0x40);
    s.gpr[4] = 0x7ff8;
    far_call(&mut s, &mut m, 0x53, 0, 8, 0x40_1005).unwrap();
    assert_eq!(s.cpl(), 0);
    assert_eq!((s.segs[seg::CS].selector, s.rip), (0x08, target));
    assert_eq!((s.segs[seg::SS].selector, s.gpr[4]), (0, 0x9000 - 32));
    let frame: Vec<u64> = (0..4).map(|i| m.r(0x9000 - 32 + 8 * i, 8)).collect();
    assert_eq!(frame, [0x40_1005, 0x2b, 0x7ff8, 0x23]);
    far_return(&mut s, &mut m, 8, 0).unwrap();
    assert_eq!(s.cpl(), 3);
    assert_eq!((s.segs[seg::CS].selector, s.rip), (0x2b, 0x40_1005));
    assert_eq!((s.segs[seg::SS].selector, s.gpr[4]), (0x23, 0x7ff8));
    assert_ne!(s.hflags & hflags::CS64, 0);
}
