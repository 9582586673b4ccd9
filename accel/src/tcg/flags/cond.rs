//! The 16 x86 conditions (Jcc, SETcc, CMOVcc) evaluated on a lazy state.

use super::super::state::{rflags as rf, X86State};
use super::compute::{compute_cf, compute_flags, parity, sign};
use super::{CcFamily, CcOp, OpSize};

/// A condition, in encoding order (the low nibble of `0F 8x`, `0F 9x`, `0F 4x`,
/// `7x`): odd values negate the even one below them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum X86Cond {
    O = 0,
    No,
    B,
    Ae,
    E,
    Ne,
    Be,
    A,
    S,
    Ns,
    P,
    Np,
    L,
    Ge,
    Le,
    G,
}

impl X86Cond {
    const ALL: [X86Cond; 16] = [
        X86Cond::O,
        X86Cond::No,
        X86Cond::B,
        X86Cond::Ae,
        X86Cond::E,
        X86Cond::Ne,
        X86Cond::Be,
        X86Cond::A,
        X86Cond::S,
        X86Cond::Ns,
        X86Cond::P,
        X86Cond::Np,
        X86Cond::L,
        X86Cond::Ge,
        X86Cond::Le,
        X86Cond::G,
    ];

    /// The condition encoded in the low nibble of `cc` (upper bits ignored,
    /// so an opcode byte can be passed as is).
    pub fn from_cc_nibble(cc: u8) -> X86Cond {
        Self::ALL[usize::from(cc & 0xf)]
    }

    /// The encoding nibble (0..=15).
    pub fn cc_nibble(self) -> u8 {
        self as u8
    }

    /// The opposite condition.
    pub fn negate(self) -> X86Cond {
        Self::from_cc_nibble(self as u8 ^ 1)
    }

    /// The condition on materialised flags (`flags` in RFLAGS bit positions).
    pub fn eval_flags(self, flags: u64) -> bool {
        let bit = |b: u64| flags & b != 0;
        let base = match self as u8 >> 1 {
            0 => bit(rf::OF),
            1 => bit(rf::CF),
            2 => bit(rf::ZF),
            3 => bit(rf::CF | rf::ZF),
            4 => bit(rf::SF),
            5 => bit(rf::PF),
            6 => bit(rf::SF) != bit(rf::OF),
            _ => bit(rf::ZF) || bit(rf::SF) != bit(rf::OF),
        };
        base ^ (self as u8 & 1 != 0)
    }
}

/// Evaluates `cond` on the lazy state `(op, dst, src, src2)`; for
/// [`CcOp::Eflags`] on `rflags_when_eflags`. Common pairs (CMP/SUB + any
/// compare, TEST/logic, ZF/SF/CF tests) are answered without computing all
/// six flags.
pub fn eval_cond(cond: X86Cond, op: CcOp, dst: u64, src: u64, src2: u64, rflags_when_eflags: u64) -> bool {
    let (Some(family), Some(size)) = (op.family(), op.size()) else {
        return cond.eval_flags(rflags_when_eflags);
    };
    let base = match fast_base(cond as u8 >> 1, family, size, op, dst, src, src2) {
        Some(b) => b,
        None => return cond.eval_flags(compute_flags(op, dst, src, src2)),
    };
    base ^ (cond as u8 & 1 != 0)
}

/// [`eval_cond`] on the lazy state held in `state`.
pub fn eval_cond_state(state: &X86State, cond: X86Cond) -> bool {
    eval_cond(cond, state.cc_op, state.cc_dst, state.cc_src, state.cc_src2, state.rflags)
}

/// The even (non-negated) condition `base` = cc >> 1, when it has a fast path.
fn fast_base(base: u8, family: CcFamily, size: OpSize, op: CcOp, dst: u64, src: u64, src2: u64) -> Option<bool> {
    let m = size.mask();
    let (dst, src) = (dst & m, src & m);
    // ZF is dst == 0 for every family but Mul (host clears it there).
    let zf = family != CcFamily::Mul && dst == 0;
    let sf = sign(size, dst) != 0;
    // Sign-extend a `size`-bit value to compare it as signed.
    let sx = |v: u64| ((v << (64 - size.bits())) as i64) >> (64 - size.bits());
    match (base, family) {
        (1, _) => Some(compute_cf(op, dst, src, src2)),
        (2, _) => Some(zf),
        (4, _) => Some(sf),
        (5, CcFamily::Bmi) => Some(false),
        (5, _) => Some(parity(dst) != 0),
        // OF is constant or trivially known.
        (0, CcFamily::Logic | CcFamily::Bmi) => Some(false),
        (0, CcFamily::Mul) => Some(src != 0),
        (6, CcFamily::Logic | CcFamily::Bmi) => Some(sf),
        (7, CcFamily::Logic | CcFamily::Bmi) => Some(zf || sf),
        (3, CcFamily::Logic) => Some(zf),
        // CMP/SUB: compare the reconstructed operands directly.
        (3 | 6 | 7, CcFamily::Sub) => {
            let first = dst.wrapping_add(src) & m;
            Some(match base {
                3 => first <= src,
                6 => sx(first) < sx(src),
                _ => sx(first) <= sx(src),
            })
        }
        (3, _) => Some(zf || compute_cf(op, dst, src, src2)),
        _ => None,
    }
}
