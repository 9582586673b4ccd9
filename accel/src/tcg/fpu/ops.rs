//! The x87 operations beyond the four rules: comparisons, partial
//! remainders, FSCALE, FXTRACT, the constants and FXAM's classes.

use super::fsw;
use super::softfloat::{norm_round_pack, propagate_nan, round_pack, unpack, Class, Ctx, Rounding, BIAS, F80};

/// The result of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Less,
    Equal,
    Greater,
    Unordered,
}

impl Relation {
    /// C3, C2, C0 as FCOM sets them (C1 cleared).
    pub fn fsw_bits(self) -> u16 {
        match self {
            Relation::Greater => 0,
            Relation::Less => fsw::C0,
            Relation::Equal => fsw::C3,
            Relation::Unordered => fsw::C3 | fsw::C2 | fsw::C0,
        }
    }
    /// ZF, PF, CF as FCOMI sets them.
    pub fn eflags(self) -> u64 {
        use crate::tcg::state::rflags as rf;
        match self {
            Relation::Greater => 0,
            Relation::Less => rf::CF,
            Relation::Equal => rf::ZF,
            Relation::Unordered => rf::ZF | rf::PF | rf::CF,
        }
    }
}

/// FCOM (`quiet` false: any NaN raises IE) / FUCOM (only SNaNs do).
pub fn compare(a: F80, b: F80, quiet: bool, ctx: &mut Ctx) -> Relation {
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::Unsupported || cb == Class::Unsupported {
        ctx.raise(fsw::IE);
        return Relation::Unordered;
    }
    if a.is_nan() || b.is_nan() {
        if !quiet || ca == Class::SNaN || cb == Class::SNaN {
            ctx.raise(fsw::IE);
        }
        return Relation::Unordered;
    }
    if ca == Class::Denormal || cb == Class::Denormal {
        ctx.raise(fsw::DE);
    }
    // A total order key for non-NaN values: zeros equal, then magnitude.
    let key = |x: F80| -> (i32, u64) {
        match x.class() {
            Class::Zero => (i32::MIN, 0),
            Class::Infinity => (i32::MAX, 0),
            _ => {
                let u = unpack(x);
                (u.exp, u.sig)
            }
        }
    };
    let (ka, kb) = (key(a), key(b));
    if ka.0 == i32::MIN && kb.0 == i32::MIN {
        return Relation::Equal;
    }
    let (sa, sb) = (a.sign() && ka.0 != i32::MIN, b.sign() && kb.0 != i32::MIN);
    let ord = match (sa, sb) {
        (false, true) => std::cmp::Ordering::Greater,
        (true, false) => std::cmp::Ordering::Less,
        (false, false) => ka.cmp(&kb),
        (true, true) => kb.cmp(&ka),
    };
    match ord {
        std::cmp::Ordering::Less => Relation::Less,
        std::cmp::Ordering::Equal => Relation::Equal,
        std::cmp::Ordering::Greater => Relation::Greater,
    }
}

/// The outcome of FPREM/FPREM1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remainder {
    pub value: F80,
    /// The low three quotient bits (C0 = Q2, C3 = Q1, C1 = Q0).
    pub quotient: u64,
    /// C2: the reduction is incomplete.
    pub partial: bool,
}

/// How many quotient bits one partial FPREM step produces when the
/// exponent difference `d` is 64 or more: the SDM's "N", implementation
/// dependent between 32 and 63. Intel parts use 32 + (d mod 32) (as Bochs
/// models it; checked against the host in the tests).
fn partial_bits(d: i32) -> i32 {
    32 | (d & 31)
}

/// FPREM (`ieee` false: quotient truncated) / FPREM1 (rounded to nearest).
pub fn remainder(a: F80, b: F80, ieee: bool, ctx: &mut Ctx) -> Remainder {
    let whole = |value| Remainder { value, quotient: 0, partial: false };
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::Unsupported || cb == Class::Unsupported {
        return whole(ctx.invalid());
    }
    if a.is_nan() || b.is_nan() {
        return whole(propagate_nan(a, b, ctx));
    }
    if ca == Class::Infinity || cb == Class::Zero {
        return whole(ctx.invalid());
    }
    if ca == Class::Denormal || cb == Class::Denormal {
        ctx.raise(fsw::DE);
    }
    if ca == Class::Zero {
        return whole(a);
    }
    let (ua, ub) = (unpack(a), unpack(b));
    if cb == Class::Infinity {
        return whole(canonical(a));
    }
    let d = ua.exp - ub.exp;
    if d < -1 || (d == -1 && !ieee) {
        // |a| < |b| / 2 (or FPREM with |a| < |b|): a is the remainder,
        // delivered like a computed one (normalized; UE if tiny and unmasked).
        return whole(norm_round_pack(a.sign(), ua.exp, u128::from(ua.sig) << 64, 64, ctx));
    }
    let (sa, sb) = (u128::from(ua.sig), u128::from(ub.sig));
    if d >= 64 {
        // One step of n = 32..63 truncated quotient bits; the quotient
        // bits are not reported (C0, C1, C3 cleared).
        let n = partial_bits(d);
        let r = (sa << n) % sb;
        let value = norm_round_pack(a.sign(), ub.exp + 64 + (d - n), r, 64, ctx);
        return Remainder { value, quotient: 0, partial: true };
    }
    // Units of half b's last place: a = (sa << (d + 1)), b = (sb << 1).
    let (n, bd) = (sa << (d + 1), sb << 1);
    let (mut q, mut r) = (n / bd, n % bd);
    let mut sign = a.sign();
    if ieee && (2 * r > bd || (2 * r == bd && q & 1 == 1)) {
        r = bd - r;
        q += 1;
        sign = !sign;
    }
    let value = if r == 0 { F80::zero(a.sign()) } else { norm_round_pack(sign, ub.exp + 63, r, 64, ctx) };
    Remainder { value, quotient: q as u64, partial: false }
}

/// `a` as an operation result: a pseudo-denormal (exponent 0 with the J
/// bit set) gets its canonical exponent 1; everything else is unchanged.
fn canonical(a: F80) -> F80 {
    if a.exp() == 0 && a.sig >> 63 != 0 {
        F80::new(a.sign(), 1, a.sig)
    } else {
        a
    }
}

/// FSCALE: `a * 2^trunc(b)`, rounded per RC (over/underflow only).
pub fn scale(a: F80, b: F80, ctx: &mut Ctx) -> F80 {
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::Unsupported || cb == Class::Unsupported {
        return ctx.invalid();
    }
    if a.is_nan() || b.is_nan() {
        return propagate_nan(a, b, ctx);
    }
    if ca == Class::Denormal || cb == Class::Denormal {
        ctx.raise(fsw::DE);
    }
    ctx.rounded_up = false;
    match (ca, cb) {
        (Class::Zero, Class::Infinity) if !b.sign() => return ctx.invalid(),
        (Class::Infinity, Class::Infinity) if b.sign() => return ctx.invalid(),
        (Class::Zero | Class::Infinity, _) => return a,
        (_, Class::Infinity) => return if b.sign() { F80::zero(a.sign()) } else { F80::inf(a.sign()) },
        _ => {}
    }
    let n = if cb == Class::Zero {
        0
    } else {
        let ub = unpack(b);
        let e = ub.exp - BIAS;
        // Beyond ±2^17 every result over/underflows: clamp.
        let mag = if e < 0 {
            0
        } else if e > 17 {
            1 << 18
        } else {
            (ub.sig >> (63 - e)) as i32
        };
        if b.sign() {
            -mag
        } else {
            mag
        }
    };
    if cb == Class::Zero {
        // Scaling by ±0: a as is (no underflow for a denormal).
        return canonical(a);
    }
    let ua = unpack(a);
    // PC does not apply: only exponent range limits round the result.
    round_pack(a.sign(), ua.exp + n, u128::from(ua.sig) << 64, 64, ctx)
}

/// FXTRACT: `(exponent, significand)` (the significand goes to ST0).
pub fn extract(a: F80, ctx: &mut Ctx) -> (F80, F80) {
    match a.class() {
        Class::Unsupported => {
            let i = ctx.invalid();
            (i, i)
        }
        Class::QNaN | Class::SNaN => {
            let n = propagate_nan(a, a, ctx);
            (n, n)
        }
        Class::Zero => {
            ctx.raise(fsw::ZE);
            (F80::inf(true), a)
        }
        Class::Infinity => (F80::inf(false), a),
        c => {
            if c == Class::Denormal {
                ctx.raise(fsw::DE);
            }
            let u = unpack(a);
            (super::convert::from_int(i64::from(u.exp - BIAS)), F80::new(u.sign, BIAS as u16, u.sig))
        }
    }
}

/// The constants of FLD1, FLDL2T, FLDL2E, FLDPI, FLDLG2, FLDLN2, FLDZ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constant {
    One,
    L2T,
    L2E,
    Pi,
    Lg2,
    Ln2,
    Zero,
}

/// The constant rounded to 64 bits per RC (no flags are raised).
pub fn constant(c: Constant, rc: Rounding) -> F80 {
    let (exp, m): (i32, u128) = match c {
        Constant::One => return F80::ONE,
        Constant::Zero => return F80::zero(false),
        Constant::L2T => (0x4000, 0xd49a_784b_cd1b_8afe_492b_f6ff_4daf_db4c),
        Constant::L2E => (0x3fff, 0xb8aa_3b29_5c17_f0bb_be87_fed0_691d_3e89),
        Constant::Pi => (0x4000, 0xc90f_daa2_2168_c234_c4c6_628b_80dc_1cd1),
        Constant::Lg2 => (0x3ffd, 0x9a20_9a84_fbcf_f798_8f89_59ac_0b7c_9178),
        Constant::Ln2 => (0x3ffe, 0xb172_17f7_d1cf_79ab_c9e3_b398_03f2_f6af),
    };
    let mut scratch = Ctx::masked(rc);
    round_pack(false, exp, m, 64, &mut scratch)
}

/// FXAM: C3, C2, C0 by class; C1 is the sign (set by the caller).
pub fn examine(x: F80, empty: bool) -> u16 {
    if empty {
        return fsw::C3 | fsw::C0;
    }
    match x.class() {
        Class::Unsupported => 0,
        Class::QNaN | Class::SNaN => fsw::C0,
        Class::Normal => fsw::C2,
        Class::Infinity => fsw::C2 | fsw::C0,
        Class::Zero => fsw::C3,
        Class::Denormal => fsw::C3 | fsw::C2,
    }
}
