use super::*;
use crate::tcg::segmentation::test_mem::*;
use crate::tcg::state::SegmentCache;

const GDT: u64 = 0x1000;
const IDT: u64 = 0x2000;
const TSS: u64 = 0x3000;

fn le_bytes(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn real_mode_int_and_iret_round_trip() {
    let mut s = X86State::reset();
    let mut m = FlatMem::new(0x20000);
    s.idtr.base = 0;
    s.idtr.limit = 0x3ff;
    s.segs[seg::CS] = SegmentCache::real_mode(0x100);
    s.segs[seg::SS] = SegmentCache::real_mode(0x200);
    s.gpr[4] = 0x100;
    s.rip = 0x20;
    set_rflags(&mut s, rflags::IF | rflags::CF | rflags::TF);
    s.recompute_hflags();
    m.w(0x10 * 4, 4, 0x0500_1234);
    deliver(&mut s, &mut m, &Exception::software(0x10), 0x22).unwrap();
    assert_eq!((s.segs[seg::CS].selector, s.segs[seg::CS].base, s.rip), (0x500, 0x5000, 0x1234));
    assert_eq!(s.gpr[4], 0xfa);
    assert_eq!(m.r(0x20fe, 2), rflags::IF | rflags::CF | rflags::TF | rflags::FIXED1);
    assert_eq!((m.r(0x20fc, 2), m.r(0x20fa, 2)), (0x100, 0x22));
    assert_eq!(s.rflags & (rflags::IF | rflags::TF), 0);
    assert_eq!(s.hflags & hflags::TF, 0);
    iret(&mut s, &mut m, 2).unwrap();
    assert_eq!((s.segs[seg::CS].selector, s.rip, s.gpr[4]), (0x100, 0x22, 0x100));
    assert_eq!(flags::rflags(&s), rflags::IF | rflags::CF | rflags::TF | rflags::FIXED1);
    assert_ne!(s.hflags & hflags::TF, 0);
}

#[test]
fn real_mode_fault_pushes_faulting_ip() {
    let mut s = X86State::reset();
    let mut m = FlatMem::new(0x20000);
    s.segs[seg::CS] = SegmentCache::real_mode(0);
    s.rip = 0x7c00;
    s.gpr[4] = 0x7000;
    s.segs[seg::SS] = SegmentCache::real_mode(0);
    m.w(6 * 4, 4, 0x0000_0600);
    s.idtr.limit = 0x3ff;
    deliver(&mut s, &mut m, &Exception::ud(), 0x7c02).unwrap();
    assert_eq!(m.r(0x6ffa, 2), 0x7c00);
    assert_eq!(s.rip, 0x600);
}

/// 32-bit protected mode at CPL 3 with a TSS (SS0:ESP0 = 0x10:0x9000) and
/// a flat GDT; the IDT is empty.
fn setup32() -> (X86State, FlatMem) {
    let mut m = FlatMem::new(0x20000);
    write_gdt32(&mut m, GDT);
    m.w(GDT + 0x28, 8, sys_desc(TSS, 0x67, 0xb, 0));
    m.w(TSS + 4, 4, 0x9000);
    m.w(TSS + 8, 2, 0x10);
    let mut s = protected_state(GDT, 0x2f, 3);
    s.tr = cache_of(sys_desc(TSS, 0x67, 0xb, 0), 0x28);
    s.idtr.base = IDT;
    s.idtr.limit = 0x7ff;
    s.gpr[4] = 0x7000;
    s.rip = 0x0040_1000;
    set_rflags(&mut s, rflags::IF | rflags::ZF);
    (s, m)
}

#[test]
fn protected_interrupt_gate_privilege_change_and_iret() {
    let (mut s, mut m) = setup32();
    m.w(IDT + 0x80 * 8, 8, gate(0x08, 0xc000_1000, 0xe, 3, 0));
    deliver(&mut s, &mut m, &Exception::software(0x80), 0x0040_1002).unwrap();
    assert_eq!(s.cpl(), 0);
    assert_eq!((s.segs[seg::CS].selector, s.rip), (0x08, 0xc000_1000));
    assert_eq!((s.segs[seg::SS].selector, s.gpr[4]), (0x10, 0x9000 - 20));
    let frame: Vec<u64> = (0..5).map(|i| m.r(0x9000 - 20 + 4 * i, 4)).collect();
    let fl = rflags::IF | rflags::ZF | rflags::FIXED1;
    assert_eq!(frame, [0x0040_1002, 0x1b, fl, 0x7000, 0x23]);
    assert_eq!(s.rflags & rflags::IF, 0, "interrupt gate clears IF");
    assert!(m.writes.iter().all(|w| w.2 == Privilege::Supervisor));
    iret(&mut s, &mut m, 4).unwrap();
    assert_eq!(s.cpl(), 3);
    assert_eq!((s.segs[seg::CS].selector, s.rip), (0x1b, 0x0040_1002));
    assert_eq!((s.segs[seg::SS].selector, s.gpr[4]), (0x23, 0x7000));
    assert_eq!(flags::rflags(&s), fl);
}

#[test]
fn protected_fault_with_error_code_same_privilege_trap_gate() {
    let (mut s, mut m) = setup32();
    let mut k = protected_state(GDT, 0x2f, 0);
    k.tr = s.tr;
    k.idtr = s.idtr;
    k.gpr[4] = 0x6000;
    k.rip = 0xc000_2000;
    set_rflags(&mut k, rflags::IF);
    s = k;
    m.w(IDT + 13 * 8, 8, gate(0x08, 0xc000_3000, 0xf, 0, 0));
    deliver(&mut s, &mut m, &Exception::gp(0x28), 0xc000_2005).unwrap();
    assert_eq!(s.gpr[4], 0x6000 - 16);
    let frame: Vec<u64> = (0..4).map(|i| m.r(0x6000 - 16 + 4 * i, 4)).collect();
    assert_eq!(frame, [0x28, 0xc000_2000, 0x08, rflags::IF | rflags::FIXED1]);
    assert_ne!(s.rflags & rflags::IF, 0, "trap gate keeps IF");
    assert_eq!(s.segs[seg::SS].selector, 0x10);
}

#[test]
fn int_n_through_dpl0_gate_is_gp() {
    let (mut s, mut m) = setup32();
    m.w(IDT + 0x80 * 8, 8, gate(0x08, 0xc000_1000, 0xe, 0, 0));
    m.w(IDT + 13 * 8, 8, gate(0x08, 0xc000_d000, 0xe, 0, 0));
    deliver(&mut s, &mut m, &Exception::software(0x80), 0x0040_1002).unwrap();
    assert_eq!(s.rip, 0xc000_d000);
    // The #GP frame: error code 0x80 * 8 + 2 (IDT, no EXT), EIP of INT.
    assert_eq!(m.r(0x9000 - 24, 4), 0x402);
    assert_eq!(m.r(0x9000 - 20, 4), 0x0040_1000);
}

#[test]
fn not_present_gate_is_np_with_ext() {
    let (mut s, mut m) = setup32();
    m.w(IDT + 0x30 * 8, 8, gate(0x08, 0xc000_1000, 0xe, 0, 0) & !(1 << 47));
    m.w(IDT + 11 * 8, 8, gate(0x08, 0xc000_b000, 0xe, 0, 0));
    deliver_external(&mut s, &mut m, 0x30).unwrap();
    assert_eq!(s.rip, 0xc000_b000);
    assert_eq!(m.r(0x9000 - 24, 4), 0x30 * 8 + 2 + 1);
}

#[test]
fn double_and_triple_fault() {
    let (mut s, mut m) = setup32();
    // #GP's gate not present → #NP (contributory twice) → #DF.
    m.w(IDT + 13 * 8, 8, gate(0x08, 0xc000_d000, 0xe, 0, 0) & !(1 << 47));
    m.w(IDT + 8 * 8, 8, gate(0x08, 0xc000_8000, 0xe, 0, 0));
    deliver(&mut s, &mut m, &Exception::gp0(), 0).unwrap();
    assert_eq!(s.rip, 0xc000_8000);
    assert_eq!(m.r(0x9000 - 24, 4), 0, "#DF error code");
    // Without a #DF handler: shutdown.
    let (mut s, mut m) = setup32();
    m.w(IDT + 13 * 8, 8, gate(0x08, 0xc000_d000, 0xe, 0, 0) & !(1 << 47));
    assert!(deliver(&mut s, &mut m, &Exception::gp0(), 0).is_err());
    // A benign first event: the fault is simply delivered.
    let (mut s, mut m) = setup32();
    m.w(IDT + 13 * 8, 8, gate(0x08, 0xc000_d000, 0xe, 0, 0));
    deliver_external(&mut s, &mut m, 0x40).unwrap();
    assert_eq!(s.rip, 0xc000_d000);
    assert_eq!(m.r(0x9000 - 24, 4), 0x40 * 8 + 2 + 1);
}

#[test]
fn iret_at_cpl3_keeps_iopl_and_if() {
    let (mut s, mut m) = setup32();
    s.rflags &= !rflags::IF;
    let sp = s.gpr[4];
    m.w(sp, 4, 0x0040_2000);
    m.w(sp + 4, 4, 0x1b);
    m.w(sp + 8, 4, rflags::IOPL | rflags::IF | rflags::CF | rflags::AC);
    iret(&mut s, &mut m, 4).unwrap();
    assert_eq!(s.rip, 0x0040_2000);
    let fl = flags::rflags(&s);
    assert_eq!(fl & (rflags::IOPL | rflags::IF), 0);
    assert_eq!(fl & (rflags::CF | rflags::AC), rflags::CF | rflags::AC);
    // NT = 1: task return, unsupported.
    s.rflags |= rflags::NT;
    assert_eq!(iret(&mut s, &mut m, 4), Err(Exception::gp0()));
}

/// IA-32e mode at CPL 3; GDT per `write_gdt64`, 64-bit TSS at 0x40 with
/// RSP0 = 0x9000 and IST1 = 0xa008 (misaligned on purpose).
fn setup64() -> (X86State, FlatMem) {
    let mut m = FlatMem::new(0x20000);
    write_gdt64(&mut m, GDT);
    m.w(GDT + 0x40, 8, sys_desc(TSS, 0x67, 0xb, 0));
    m.w(TSS + 4, 8, 0x9000);
    m.w(TSS + 0x24, 8, 0xa008);
    let mut s = long_state(GDT, 3);
    s.tr = cache_of(sys_desc(TSS, 0x67, 0xb, 0), 0x40);
    s.idtr.base = IDT;
    s.idtr.limit = 0xfff;
    s.gpr[4] = 0x7ffc;
    s.rip = 0x0040_1000;
    set_rflags(&mut s, rflags::IF | rflags::CF);
    (s, m)
}

fn gate64(m: &mut FlatMem, vector: u64, target: u64, typ: u8, dpl: u8, ist: u8) {
    m.w(IDT + vector * 16, 8, gate(0x08, target, typ, dpl, ist));
    m.w(IDT + vector * 16 + 8, 8, target >> 32);
}

#[test]
fn long_mode_ist_frame_and_iretq() {
    let (mut s, mut m) = setup64();
    let handler = 0xffff_ffff_8100_0000;
    gate64(&mut m, 0x20, handler, 0xe, 0, 1);
    deliver_external(&mut s, &mut m, 0x20).unwrap();
    assert_eq!(s.cpl(), 0);
    assert_eq!((s.segs[seg::CS].selector, s.rip), (0x08, handler));
    assert_eq!((s.segs[seg::SS].selector, s.gpr[4]), (0, 0xa000 - 40));
    assert_ne!(s.hflags & hflags::CS64, 0);
    let fl = rflags::IF | rflags::CF | rflags::FIXED1;
    let expect = le_bytes(&[0x0040_1000, 0x2b, fl, 0x7ffc, 0x23]);
    assert_eq!(&m.bytes[0xa000 - 40..0xa000], &expect[..]);
    assert_eq!(s.rflags & rflags::IF, 0);
    iret(&mut s, &mut m, 8).unwrap();
    assert_eq!(s.cpl(), 3);
    assert_eq!((s.segs[seg::CS].selector, s.rip), (0x2b, 0x0040_1000));
    assert_eq!((s.segs[seg::SS].selector, s.gpr[4]), (0x23, 0x7ffc));
    assert_eq!(flags::rflags(&s), fl);
    assert_ne!(s.hflags & hflags::CS64, 0);
}

#[test]
fn long_mode_page_fault_uses_rsp0_and_sets_cr2() {
    let (mut s, mut m) = setup64();
    let handler = 0xffff_ffff_8100_0e00;
    gate64(&mut m, 14, handler, 0xe, 0, 0);
    let pf = Exception::page_fault(0xdead_b000, 0x6);
    deliver(&mut s, &mut m, &pf, 0).unwrap();
    assert_eq!(s.cr2, 0xdead_b000);
    assert_eq!(s.gpr[4], 0x9000 - 48);
    let fl = rflags::IF | rflags::CF | rflags::FIXED1;
    let expect = le_bytes(&[6, 0x0040_1000, 0x2b, fl, 0x7ffc, 0x23]);
    assert_eq!(&m.bytes[0x9000 - 48..0x9000], &expect[..]);
    // Same-privilege interrupt at CPL 0 (no IST): current stack, aligned, SS kept.
    gate64(&mut m, 0x21, handler, 0xf, 0, 0);
    s.gpr[4] = 0x8f18;
    deliver_external(&mut s, &mut m, 0x21).unwrap();
    assert_eq!(s.gpr[4], 0x8f10 - 40);
    assert_eq!(m.r(0x8f10 - 8, 8), 0, "old SS: the null selector");
    assert_eq!(m.r(0x8f10 - 16, 8), 0x8f18, "old RSP");
    // IRETQ to CPL 0 with a null SS.
    iret(&mut s, &mut m, 8).unwrap();
    assert_eq!((s.rip, s.gpr[4], s.cpl()), (handler, 0x8f18, 0));
}

#[test]
fn long_mode_gate_checks() {
    let (mut s, mut m) = setup64();
    // Target must be 64-bit code: 0x30 is 32-bit code.
    m.w(IDT + 0x22 * 16, 8, gate(0x30, 0x1000, 0xe, 3, 0));
    m.w(IDT + 13 * 16, 8, gate(0x08, 0x2000, 0xe, 0, 0));
    deliver(&mut s, &mut m, &Exception::software(0x22), 0x0040_1002).unwrap();
    assert_eq!(s.rip, 0x2000);
    assert_eq!(m.r(0x9000 - 48, 8), 0x30, "#GP(selector)");
    // A 32-bit-style 8-byte gate type (16-bit interrupt gate) is #GP(IDT).
    let (mut s, mut m) = setup64();
    m.w(IDT + 0x23 * 16, 8, gate(0x08, 0x1000, 0x6, 3, 0));
    m.w(IDT + 13 * 16, 8, gate(0x08, 0x2000, 0xe, 0, 0));
    deliver_external(&mut s, &mut m, 0x23).unwrap();
    assert_eq!(m.r(0x9000 - 48, 8), 0x23 * 8 + 3);
}

#[test]
fn garbage_idt_never_panics() {
    for long in [false, true] {
        let mut m = FlatMem::new(0x20000);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for b in m.bytes[0x1000..0x10000].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut s = if long { long_state(GDT, 3) } else { protected_state(GDT, 0xffff, 3) };
        s.gdtr.limit = 0xffff;
        s.idtr.base = IDT;
        s.idtr.limit = 0xffff;
        s.tr = cache_of(sys_desc(TSS, 0xffff, 0xb, 0), 0x40);
        s.gpr[4] = 0x8000;
        for v in 0..=255u8 {
            let mut t = s.clone();
            let _ = deliver(&mut t, &mut m, &Exception::software(v), 0);
            let _ = iret(&mut t, &mut m, if long { 8 } else { 4 });
            let mut t = s.clone();
            let _ = deliver_external(&mut t, &mut m, v);
        }
    }
}
