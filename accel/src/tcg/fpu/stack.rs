//! The x87 register stack over `FpuState`: TOP, ST(i) and the abridged
//! tags, stack faults with their masked responses, and how an operation's
//! flags land in FSW.

use super::softfloat::{Ctx, F80};
use super::{fsw, update_summary};
use crate::tcg::state::FpuState;

pub fn top(f: &FpuState) -> usize {
    usize::from((f.fsw & fsw::TOP) >> fsw::TOP_SHIFT)
}

fn set_top(f: &mut FpuState, t: usize) {
    f.fsw = (f.fsw & !fsw::TOP) | (((t & 7) as u16) << fsw::TOP_SHIFT);
}

/// Physical register of ST(i).
pub fn phys(f: &FpuState, i: usize) -> usize {
    (top(f) + i) & 7
}

pub fn is_empty(f: &FpuState, i: usize) -> bool {
    f.ftw & (1 << phys(f, i)) == 0
}

/// ST(i)'s contents (whatever its tag).
pub fn st(f: &FpuState, i: usize) -> F80 {
    F80::from_bytes(&f.st[phys(f, i)][..10])
}

/// Writes ST(i) and tags it valid.
pub fn set_st(f: &mut FpuState, i: usize, v: F80) {
    let p = phys(f, i);
    f.st[p] = [0; 16];
    f.st[p][..10].copy_from_slice(&v.to_bytes());
    f.ftw |= 1 << p;
}

/// Pushes `v` (the caller has checked for overflow).
pub fn push(f: &mut FpuState, v: F80) {
    set_top(f, top(f).wrapping_sub(1));
    set_st(f, 0, v);
}

/// Marks ST0 empty and increments TOP.
pub fn pop(f: &mut FpuState) {
    f.ftw &= !(1 << phys(f, 0));
    set_top(f, top(f) + 1);
}

pub fn incstp(f: &mut FpuState) {
    set_top(f, top(f) + 1);
}

pub fn decstp(f: &mut FpuState) {
    set_top(f, top(f).wrapping_sub(1));
}

/// Frees ST(i) (FFREE).
pub fn free(f: &mut FpuState, i: usize) {
    f.ftw &= !(1 << phys(f, i));
}

/// The full 2-bit-per-register tag word of FSTENV/FSAVE, derived from
/// the abridged tags and the contents: 00 valid, 01 zero, 10 special
/// (NaN, infinity, denormal, unsupported), 11 empty.
pub fn full_tags(f: &FpuState) -> u16 {
    use super::softfloat::Class;
    let mut tw = 0u16;
    for p in 0..8 {
        let tag = if f.ftw & (1 << p) == 0 {
            3
        } else {
            match F80::from_bytes(&f.st[p][..10]).class() {
                Class::Normal => 0,
                Class::Zero => 1,
                _ => 2,
            }
        };
        tw |= tag << (2 * p);
    }
    tw
}

/// Abridged tags from a full tag word: anything but 11 is valid.
pub fn abridge(tw: u16) -> u8 {
    (0..8).filter(|p| (tw >> (2 * p)) & 3 != 3).fold(0u8, |a, p| a | (1 << p))
}

/// How C1 ends up after an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum C1 {
    /// The rounding indicator of the last rounding.
    Rounded,
    Set(bool),
    /// Left as it is.
    Keep,
}

/// ST(i), or a stack-underflow fault (IE + SF, C1 = 0) if it is empty.
pub fn fetch(f: &FpuState, i: usize, ctx: &mut Ctx, c1: &mut C1) -> Option<F80> {
    if is_empty(f, i) {
        ctx.raise(fsw::IE | fsw::SF);
        *c1 = C1::Set(false);
        return None;
    }
    Some(st(f, i))
}

/// Whether a push would overflow (ST7 in use): then IE + SF, C1 = 1.
pub fn push_overflows(f: &FpuState, ctx: &mut Ctx, c1: &mut C1) -> bool {
    if !is_empty(f, 7) {
        ctx.raise(fsw::IE | fsw::SF);
        *c1 = C1::Set(true);
        return true;
    }
    false
}

/// Exceptions whose unmasked response leaves the destination unchanged
/// (and skips the pops and pushes of the instruction).
pub const PRE_COMPUTATION: u16 = fsw::IE | fsw::DE | fsw::ZE;

/// Merges `ctx.flags` into FSW, sets C1 and ES/B. Returns whether the
/// result may be written: no unmasked exception among `blocking`.
/// Unmasked OE/UE are flagged, but the result is the masked one (the
/// 2^±24576 re-biasing of an unmasked response is not modelled).
pub fn apply(f: &mut FpuState, ctx: &Ctx, c1: C1, blocking: u16) -> bool {
    // An unmasked DE stops the instruction before it computes anything:
    // the flags of the (already done) computation are dropped.
    let (flags, rounded_up) =
        if ctx.flags & !f.fcw & fsw::DE != 0 { (fsw::DE, false) } else { (ctx.flags, ctx.rounded_up) };
    f.fsw |= flags & (fsw::EXC | fsw::SF);
    match c1 {
        C1::Rounded => f.fsw = (f.fsw & !fsw::C1) | if rounded_up { fsw::C1 } else { 0 },
        C1::Set(v) => f.fsw = (f.fsw & !fsw::C1) | if v { fsw::C1 } else { 0 },
        C1::Keep => {}
    }
    update_summary(f);
    flags & !f.fcw & blocking == 0
}

/// Sets the condition codes in `mask` to `bits`.
pub fn set_cc(f: &mut FpuState, mask: u16, bits: u16) {
    f.fsw = (f.fsw & !mask) | (bits & mask);
}
