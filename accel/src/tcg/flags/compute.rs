//! Computing the arithmetic flags from a lazy state (QEMU's
//! `cc_helper_template.h`, reworked to match this host's undefined flags).

use super::super::state::{rflags as rf, X86State};
use super::{CcFamily, CcOp, OpSize};

/// PF: set when the low byte of `v` has an even number of ones.
#[inline]
pub(super) fn parity(v: u64) -> u64 {
    if (v as u8).count_ones().is_multiple_of(2) {
        rf::PF
    } else {
        0
    }
}

/// ZF | SF | PF of a result already truncated to `size`.
#[inline]
fn zsp(size: OpSize, dst: u64) -> u64 {
    zs(size, dst) | parity(dst)
}

/// ZF | SF of a result already truncated to `size`.
#[inline]
fn zs(size: OpSize, dst: u64) -> u64 {
    let zf = if dst == 0 { rf::ZF } else { 0 };
    zf | (sign(size, dst) * rf::SF)
}

/// The sign bit of `v` as 0/1.
#[inline]
pub(super) fn sign(size: OpSize, v: u64) -> u64 {
    (v >> (size.bits() - 1)) & 1
}

/// The six arithmetic flags (RFLAGS bit positions) of the lazy state
/// `(op, dst, src, src2)`. Returns 0 for [`CcOp::Eflags`]: the flags are then
/// in `rflags` (see [`arith_flags`]).
pub fn compute_flags(op: CcOp, dst: u64, src: u64, src2: u64) -> u64 {
    match (op.family(), op.size()) {
        (Some(family), Some(size)) => compute_sized(family, size, dst, src, src2),
        _ => 0,
    }
}

/// [`compute_flags`], or the arithmetic bits of `rflags` for [`CcOp::Eflags`]:
/// the one call an IR helper needs to materialise the flags.
pub fn arith_flags(op: CcOp, dst: u64, src: u64, src2: u64, rflags: u64) -> u64 {
    if op == CcOp::Eflags {
        rflags & rf::ARITH
    } else {
        compute_flags(op, dst, src, src2)
    }
}

fn compute_sized(family: CcFamily, size: OpSize, dst: u64, src: u64, src2: u64) -> u64 {
    let m = size.mask();
    let (dst, src) = (dst & m, src & m);
    let carry_in = src2 != 0;
    let cf = |b: bool| if b { rf::CF } else { 0 };
    let of = |b: u64| (b & 1) * rf::OF;
    // AF is the carry/borrow out of bit 3: bit 4 of first ^ second ^ result.
    let af = |first: u64| (first ^ src ^ dst) & rf::AF;
    let sh = size.bits() - 1;
    match family {
        CcFamily::Add | CcFamily::Adc => {
            let cin = u64::from(family == CcFamily::Adc && carry_in);
            let first = dst.wrapping_sub(src).wrapping_sub(cin) & m;
            // With a carry in, dst == first means the sum wrapped exactly once.
            let carry = if cin != 0 { dst <= first } else { dst < first };
            let overflow = (!(first ^ src) & (first ^ dst)) >> sh;
            cf(carry) | zsp(size, dst) | af(first) | of(overflow)
        }
        CcFamily::Sub | CcFamily::Sbb => {
            let bin = u64::from(family == CcFamily::Sbb && carry_in);
            let first = dst.wrapping_add(src).wrapping_add(bin) & m;
            let borrow = if bin != 0 { first <= src } else { first < src };
            let overflow = ((first ^ src) & (first ^ dst)) >> sh;
            cf(borrow) | zsp(size, dst) | af(first) | of(overflow)
        }
        // AF is undefined; the host clears it.
        CcFamily::Logic => zsp(size, dst),
        CcFamily::Inc | CcFamily::Dec => {
            let (first, overflow) = if family == CcFamily::Inc {
                (dst.wrapping_sub(1) & m, dst == size.sign_bit())
            } else {
                (dst.wrapping_add(1) & m, dst == size.sign_bit() - 1)
            };
            let af = (first ^ 1 ^ dst) & rf::AF;
            cf(src != 0) | zsp(size, dst) | af | of(u64::from(overflow))
        }
        // OF is exact for count 1 (MSB changed); AF undefined, host clears it.
        CcFamily::Shl => cf(sign(size, src) != 0) | zsp(size, dst) | of((src ^ dst) >> sh),
        CcFamily::Sar => cf(src & 1 != 0) | zsp(size, dst) | of((src ^ dst) >> sh),
        // Host: SF/PF from the low half, ZF and AF clear.
        CcFamily::Mul => {
            let overflow = src != 0;
            cf(overflow) | of(u64::from(overflow)) | (sign(size, dst) * rf::SF) | parity(dst)
        }
        // Host: PF and AF clear, OF defined clear.
        CcFamily::Bmi => cf(src == 0) | zs(size, dst),
    }
}

/// CF alone (JB/JAE, ADC, SBB, SETC…), without computing the other flags.
/// Returns false for [`CcOp::Eflags`] (CF is then in `rflags`).
pub fn compute_cf(op: CcOp, dst: u64, src: u64, src2: u64) -> bool {
    let (Some(family), Some(size)) = (op.family(), op.size()) else {
        return false;
    };
    let m = size.mask();
    let (dst, src) = (dst & m, src & m);
    match family {
        CcFamily::Add => dst < src,
        CcFamily::Adc => {
            let first = dst.wrapping_sub(src).wrapping_sub(u64::from(src2 != 0)) & m;
            if src2 != 0 {
                dst <= first
            } else {
                dst < first
            }
        }
        CcFamily::Sub => (dst.wrapping_add(src) & m) < src,
        CcFamily::Sbb => {
            let first = dst.wrapping_add(src).wrapping_add(u64::from(src2 != 0)) & m;
            if src2 != 0 {
                first <= src
            } else {
                first < src
            }
        }
        CcFamily::Logic => false,
        CcFamily::Inc | CcFamily::Dec => src != 0,
        CcFamily::Shl => sign(size, src) != 0,
        CcFamily::Sar => src & 1 != 0,
        CcFamily::Mul => src != 0,
        CcFamily::Bmi => src == 0,
    }
}

/// The full RFLAGS: system bits from `state.rflags`, the arithmetic flags
/// computed from the lazy state, and the always-one bit 1.
pub fn rflags(state: &X86State) -> u64 {
    let arith = arith_flags(state.cc_op, state.cc_dst, state.cc_src, state.cc_src2, state.rflags);
    (state.rflags & !rf::ARITH) | arith | rf::FIXED1
}

/// Stores the arithmetic bits of `flags` into `state.rflags` and makes them
/// authoritative (`cc_op = Eflags`): POPF, IRET, SAHF, and helpers that
/// materialise flags. Other bits of `flags` are ignored.
pub fn set_rflags_arith(state: &mut X86State, flags: u64) {
    state.rflags = (state.rflags & !rf::ARITH) | (flags & rf::ARITH) | rf::FIXED1;
    state.cc_op = CcOp::Eflags;
}
