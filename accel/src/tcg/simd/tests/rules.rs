//! Rules a host comparison cannot reach: the CR0/CR4 gates, 16-byte
//! alignment, unmasked SIMD exceptions, precise page-crossing accesses,
//! MASKMOVDQU, and the string MOVSD/CMPSD still being string instructions.

use iced_x86::code_asm::*;

use super::machine::{flat, long_mode, run_code, Flat, CODE, DATA, MEM_SIZE};
use crate::tcg::exception::{vector, Exception};
use crate::tcg::flags;
use crate::tcg::interp::TbExit;
use crate::tcg::simd::mxcsr;
use crate::tcg::state::{ctrl, reg, rflags as rf, X86State};

fn asm(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

/// The exception `code` raised at its first instruction, if any.
fn fault(state: &mut X86State, mem: &mut Flat, code: &[u8]) -> Option<Exception> {
    match run_code(state, mem, code) {
        TbExit::Exception { exception, pc, .. } => {
            assert_eq!(pc, CODE, "faults at the instruction");
            assert_eq!(state.rip, CODE);
            Some(exception)
        }
        TbExit::Halt => None,
        other => panic!("unexpected exit {other:?}"),
    }
}

const F32_ONE: u128 = 0x3f80_0000;

#[test]
fn cr0_and_cr4_gate_sse_instructions() {
    let addps = asm(|a| a.addps(xmm1, xmm2));
    let nm = Some(Exception::fault(vector::NM));
    let ud = Some(Exception::ud());
    let cases = [
        (ctrl::CR0_EM, ctrl::CR4_OSFXSR, ud),
        (ctrl::CR0_TS, ctrl::CR4_OSFXSR, nm),
        (ctrl::CR0_TS | ctrl::CR0_EM, ctrl::CR4_OSFXSR, ud),
        (0, 0, ud),
        (ctrl::CR0_TS, 0, ud),
        (0, ctrl::CR4_OSFXSR, None),
    ];
    for (c0, c4, want) in cases {
        let mut s = long_mode();
        s.cr0 |= c0;
        s.cr4 = c4;
        s.recompute_hflags();
        s.fpu.xmm[1] = F32_ONE;
        s.fpu.xmm[2] = F32_ONE;
        assert_eq!(fault(&mut s, &mut flat(), &addps), want, "cr0 {c0:#x} cr4 {c4:#x}");
        let sum = if want.is_none() { 0x4000_0000 } else { F32_ONE };
        assert_eq!(s.fpu.xmm[1], sum);
    }
    // MOVNTI touches no SSE state: no CR0/CR4 checks.
    let mut s = long_mode();
    s.cr0 |= ctrl::CR0_TS;
    s.cr4 = 0;
    s.recompute_hflags();
    s.gpr[reg::RSI] = DATA;
    s.gpr[reg::RCX] = 0x1234_5678;
    let mut mem = flat();
    assert_eq!(fault(&mut s, &mut mem, &asm(|a| a.movnti(dword_ptr(rsi), ecx))), None);
    assert_eq!(mem.0[DATA as usize..DATA as usize + 4], [0x78, 0x56, 0x34, 0x12]);
}

#[test]
fn misaligned_m128_operands_raise_gp() {
    let aligned_only = [
        asm(|a| a.addps(xmm1, xmmword_ptr(rsi))),
        asm(|a| a.movaps(xmm1, xmmword_ptr(rsi))),
        asm(|a| a.movdqa(xmmword_ptr(rsi), xmm1)),
        asm(|a| a.movntdq(xmmword_ptr(rsi), xmm1)),
        asm(|a| a.pxor(xmm1, xmmword_ptr(rsi))),
        asm(|a| a.psllw(xmm1, xmmword_ptr(rsi))),
    ];
    let unaligned_ok = [
        asm(|a| a.movups(xmm1, xmmword_ptr(rsi))),
        asm(|a| a.movdqu(xmmword_ptr(rsi), xmm1)),
        asm(|a| a.addss(xmm1, dword_ptr(rsi))),
        asm(|a| a.movsd_2(xmm1, qword_ptr(rsi))),
        asm(|a| a.movhps(xmm1, qword_ptr(rsi))),
    ];
    for offset in [1u64, 8] {
        for code in &aligned_only {
            let mut s = long_mode();
            s.gpr[reg::RSI] = DATA + offset;
            s.fpu.xmm[1] = 0x1111;
            let mut mem = flat();
            assert_eq!(fault(&mut s, &mut mem, code), Some(Exception::gp0()), "{code:x?} at +{offset}");
            assert_eq!(s.fpu.xmm[1], 0x1111, "{code:x?}: destination untouched");
            assert!(mem.0[DATA as usize..DATA as usize + 32].iter().all(|&b| b == 0), "memory untouched");
        }
        for code in &unaligned_ok {
            let mut s = long_mode();
            s.gpr[reg::RSI] = DATA + offset;
            assert_eq!(fault(&mut s, &mut flat(), code), None, "{code:x?} at +{offset}");
        }
    }
}

/// Runs `code` with MXCSR = `mx` and XMM1/XMM2 as given; returns the
/// exception and the state after.
fn run_fp(code: &[u8], mx: u32, x1: u128, x2: u128, osxmmexcpt: bool) -> (Option<Exception>, X86State) {
    let mut s = long_mode();
    if !osxmmexcpt {
        s.cr4 &= !ctrl::CR4_OSXMMEXCPT;
    }
    s.fpu.mxcsr = mx;
    s.fpu.xmm[1] = x1;
    s.fpu.xmm[2] = x2;
    let e = fault(&mut s, &mut flat(), code);
    (e, s)
}

#[test]
fn unmasked_simd_exceptions_fault_without_writing_the_destination() {
    let xm = Some(Exception::fault(vector::XM));
    let divps = asm(|a| a.divps(xmm1, xmm2));
    let x1 = F32_ONE | (F32_ONE << 32);
    // Lane 0: 1 / 0 (ZE); lane 1: 1 / denormal (DE, then overflow); lanes 2, 3: 0 / 1.
    let x2 = (1 << 32) | (F32_ONE << 64) | (F32_ONE << 96);
    // Masked: flags only.
    let (e, s) = run_fp(&divps, 0x1f80, x1, x2, true);
    assert_eq!(e, None);
    assert_eq!(s.fpu.mxcsr & mxcsr::FLAGS, mxcsr::ZE | mxcsr::DE | mxcsr::OE | mxcsr::PE);
    assert_eq!(s.fpu.xmm[1] as u32, 0x7f80_0000, "1/0 = +inf");
    // ZE unmasked: #XM, or #UD without CR4.OSXMMEXCPT; only the
    // pre-computation flags are reported; XMM1 keeps its value.
    for (os, want) in [(true, xm), (false, Some(Exception::ud()))] {
        let (e, s) = run_fp(&divps, 0x1f80 & !(1 << 9), x1, x2, os);
        assert_eq!(e, want);
        assert_eq!(s.fpu.mxcsr & mxcsr::FLAGS, mxcsr::ZE | mxcsr::DE);
        assert_eq!(s.fpu.xmm[1], x1);
    }
    // PE unmasked (post-computation): #XM with every flag raised.
    let addss = asm(|a| a.addss(xmm1, xmm2));
    let third = 0x3eaa_aaab;
    let (e, s) = run_fp(&addss, 0x1f80 & !(1 << 12), F32_ONE, third, true);
    assert_eq!(e, xm);
    assert_eq!(s.fpu.mxcsr & mxcsr::FLAGS, mxcsr::PE);
    assert_eq!(s.fpu.xmm[1], F32_ONE);
    // Exact results raise nothing even with everything unmasked.
    let (e, s) = run_fp(&addss, 0, F32_ONE, F32_ONE, true);
    assert_eq!((e, s.fpu.xmm[1]), (None, 0x4000_0000));
    // COMISS with IE unmasked: EFLAGS are not written.
    let comiss = asm(|a| a.comiss(xmm1, xmm2));
    let mut s = long_mode();
    s.fpu.mxcsr = 0x1f80 & !(1 << 7);
    s.fpu.xmm[1] = 0x7fc0_0000;
    flags::set_rflags_arith(&mut s, rf::SF | rf::OF);
    assert_eq!(fault(&mut s, &mut flat(), &comiss), xm);
    assert_eq!(flags::rflags(&s) & rf::ARITH, rf::SF | rf::OF);
    assert_eq!(s.fpu.mxcsr & mxcsr::FLAGS, mxcsr::IE);
}

#[test]
fn page_crossing_accesses_are_precise() {
    let top = MEM_SIZE as u64; // the flat memory ends here: #PF beyond
    for offset in 1..16u64 {
        let at = top - 16 + offset;
        let mut s = long_mode();
        s.gpr[reg::RSI] = at;
        s.fpu.xmm[1] = u128::MAX;
        let mut mem = flat();
        let store = asm(|a| a.movdqu(xmmword_ptr(rsi), xmm1));
        let e = fault(&mut s, &mut mem, &store);
        assert!(matches!(e, Some(Exception { vector: vector::PF, .. })), "+{offset}: {e:?}");
        assert!(mem.0[(top - 16) as usize..].iter().all(|&b| b == 0), "+{offset}: nothing stored");
        let load = asm(|a| a.movdqu(xmm1, xmmword_ptr(rsi)));
        let e = fault(&mut s, &mut mem, &load);
        assert!(matches!(e, Some(Exception { vector: vector::PF, .. })), "+{offset}: {e:?}");
        assert_eq!(s.fpu.xmm[1], u128::MAX);
    }
    // A page-crossing store that succeeds writes all 16 bytes once.
    let mut s = long_mode();
    let at = 0x4ffa;
    s.gpr[reg::RSI] = at;
    s.fpu.xmm[1] = 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100;
    let mut mem = flat();
    assert_eq!(fault(&mut s, &mut mem, &asm(|a| a.movups(xmmword_ptr(rsi), xmm1))), None);
    assert_eq!(mem.0[at as usize..at as usize + 16], (0..16).collect::<Vec<u8>>()[..]);
    assert_eq!(mem.0[at as usize - 1], 0);
    assert_eq!(mem.0[at as usize + 16], 0);
}

#[test]
fn maskmovdqu_matches_the_host() {
    use core::arch::x86_64::{_mm_loadu_si128, _mm_maskmoveu_si128};
    let mut rng = super::Rng::new(77);
    let code = asm(|a| a.maskmovdqu(xmm1, xmm2));
    for _ in 0..200 {
        let (data, mask) = (rng.xmm(), rng.xmm());
        let mut host = [0x55u8; 16];
        // SAFETY: SSE2 is part of x86-64; the store writes at most the 16
        // bytes of `host`.
        unsafe {
            let d = _mm_loadu_si128(data.to_le_bytes().as_ptr().cast());
            let m = _mm_loadu_si128(mask.to_le_bytes().as_ptr().cast());
            _mm_maskmoveu_si128(d, m, host.as_mut_ptr().cast());
        }
        let mut s = long_mode();
        s.gpr[reg::RDI] = DATA;
        s.fpu.xmm[1] = data;
        s.fpu.xmm[2] = mask;
        let mut mem = flat();
        mem.0[DATA as usize..DATA as usize + 16].fill(0x55);
        assert_eq!(fault(&mut s, &mut mem, &code), None);
        assert_eq!(mem.0[DATA as usize..DATA as usize + 16], host);
    }
}

#[test]
fn string_movsd_and_cmpsd_stay_string_instructions() {
    let mut s = long_mode();
    let mut mem = flat();
    mem.0[DATA as usize..DATA as usize + 4].copy_from_slice(&[1, 2, 3, 4]);
    s.gpr[reg::RSI] = DATA;
    s.gpr[reg::RDI] = DATA + 0x100;
    assert_eq!(fault(&mut s, &mut mem, &asm(|a| a.movsd())), None);
    assert_eq!(mem.0[DATA as usize + 0x100..DATA as usize + 0x104], [1, 2, 3, 4]);
    assert_eq!((s.gpr[reg::RSI], s.gpr[reg::RDI]), (DATA + 4, DATA + 0x104));
    s.gpr[reg::RSI] = DATA;
    s.gpr[reg::RDI] = DATA + 0x100;
    assert_eq!(fault(&mut s, &mut mem, &asm(|a| a.cmpsd())), None);
    assert_ne!(flags::rflags(&s) & rf::ZF, 0, "equal dwords");
    assert_eq!(s.gpr[reg::RSI], DATA + 4);
}

#[test]
fn legacy_32bit_mode_operands() {
    let mut s = long_mode();
    s.efer = 0;
    s.segs[crate::tcg::state::seg::CS].attr = 0x9b | crate::tcg::state::SegmentCache::ATTR_DB;
    s.recompute_hflags();
    s.gpr[reg::RSI] = 0xffff_ffff_0000_0000 | DATA; // only ESI counts
    s.gpr[reg::RCX] = 0xdead_beef_0000_0007;
    s.fpu.xmm[1] = F32_ONE;
    let mut mem = flat();
    mem.0[DATA as usize..DATA as usize + 4].copy_from_slice(&0x4000_0000u32.to_le_bytes());
    let mut a = CodeAssembler::new(32).unwrap();
    a.addss(xmm1, dword_ptr(esi)).unwrap();
    a.cvtsi2sd(xmm2, ecx).unwrap();
    a.movdqu(xmmword_ptr(esi + 16), xmm1).unwrap();
    a.cvttss2si(eax, xmm1).unwrap();
    let code = a.assemble(CODE).unwrap();
    assert_eq!(fault(&mut s, &mut mem, &code), None);
    assert_eq!(s.fpu.xmm[1] as u32, 0x4040_0000, "1 + 2");
    assert_eq!(s.fpu.xmm[2] as u64, 7f64.to_bits());
    assert_eq!(mem.0[DATA as usize + 16..DATA as usize + 20], 0x4040_0000u32.to_le_bytes());
    assert_eq!(s.gpr[reg::RAX], 3);
}
