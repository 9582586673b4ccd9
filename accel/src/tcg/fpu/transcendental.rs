//! The transcendental instructions (F2XM1, FYL2X, FYL2XP1, FPTAN, FPATAN,
//! FSIN, FCOS, FSINCOS), computed with the host's f64 math and widened:
//! about 53 correct bits instead of the x87's 64, so C1 and the last bits
//! can differ from hardware. The special cases (NaNs, infinities, zeros,
//! out-of-range arguments → C2, invalid domains) are exact. Trigonometric
//! arguments are first reduced modulo π/2 in extended precision (Cody-Waite
//! with a 160-bit π/2), so results near multiples of π/2 keep f64's
//! relative accuracy instead of losing the bits f64 cannot hold.

use super::convert::{from_ieee, from_int, to_ieee, DOUBLE};
use super::fsw;
use super::softfloat::{self as sf, norm_round_pack, propagate_nan, Class, Ctx, Rounding, BIAS, F80};

fn to_f64(x: F80) -> f64 {
    let mut c = Ctx::masked(Rounding::Nearest);
    f64::from_bits(to_ieee(x, DOUBLE, &mut c))
}

/// Widens an f64 result; PE is raised (these results are inexact).
fn from_f64(v: f64, ctx: &mut Ctx) -> F80 {
    let (r, _) = from_ieee(v.to_bits(), DOUBLE);
    if v != 0.0 && v.is_finite() {
        ctx.raise(fsw::PE);
    }
    r
}

/// Common checks of one-operand transcendentals: the result for invalid
/// encodings and NaNs, DE for denormals.
fn unary_special(a: F80, ctx: &mut Ctx) -> Option<F80> {
    match a.class() {
        Class::Unsupported => Some(ctx.invalid()),
        Class::QNaN | Class::SNaN => Some(propagate_nan(a, a, ctx)),
        Class::Denormal => {
            ctx.raise(fsw::DE | fsw::UE | fsw::PE);
            None
        }
        _ => None,
    }
}

/// Whether FSIN/FCOS/FSINCOS/FPTAN accept the operand (|x| < 2^63);
/// otherwise they set C2 and leave the stack alone.
pub fn trig_in_range(a: F80) -> bool {
    !matches!(a.class(), Class::Normal | Class::Denormal) || i32::from(a.exp()) - BIAS < 63
}

/// `(sin, cos)` of an in-range operand.
pub fn sin_cos(a: F80, ctx: &mut Ctx) -> (F80, F80) {
    if let Some(r) = unary_special(a, ctx) {
        return (r, r);
    }
    match a.class() {
        Class::Infinity => {
            let i = ctx.invalid();
            (i, i)
        }
        Class::Zero => (a, F80::ONE),
        _ => {
            let (r, q) = reduce(a);
            let (s, c) = (r.sin(), r.cos());
            let (s, c) = match q {
                0 => (s, c),
                1 => (c, -s),
                2 => (-s, -c),
                _ => (-c, s),
            };
            (from_f64(s, ctx), from_f64(c, ctx))
        }
    }
}

/// FPTAN's tangent.
pub fn tan(a: F80, ctx: &mut Ctx) -> F80 {
    if let Some(r) = unary_special(a, ctx) {
        return r;
    }
    match a.class() {
        Class::Infinity => ctx.invalid(),
        Class::Zero => a,
        _ => {
            let (r, q) = reduce(a);
            from_f64(if q & 1 == 0 { r.tan() } else { -1.0 / r.tan() }, ctx)
        }
    }
}

/// F2XM1: `2^a - 1` for |a| ≤ 1.
pub fn f2xm1(a: F80, ctx: &mut Ctx) -> F80 {
    if let Some(r) = unary_special(a, ctx) {
        return r;
    }
    match a.class() {
        Class::Zero => a,
        Class::Infinity => {
            if a.sign() {
                F80::ONE.negate()
            } else {
                a
            }
        }
        _ => from_f64((to_f64(a) * std::f64::consts::LN_2).exp_m1(), ctx),
    }
}

/// FYL2X (`plus_one` false: `b * log2(a)`) and FYL2XP1 (`b * log2(a + 1)`);
/// `a` is ST0, `b` is ST1.
pub fn yl2x(a: F80, b: F80, plus_one: bool, ctx: &mut Ctx) -> F80 {
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
    let (x, y) = (to_f64(a), to_f64(b));
    // Near 1, log2(x) is log2(1 + (x - 1)) with x - 1 taken exactly.
    let near_one = !plus_one && (0.5..2.0).contains(&x);
    let l = if plus_one || near_one {
        let e = if near_one { to_f64(sf::add(a, F80::ONE, true, &mut Ctx::masked(Rounding::Nearest))) } else { x };
        e.ln_1p() / std::f64::consts::LN_2
    } else {
        x.log2()
    };
    if !plus_one && a.sign() && ca != Class::Zero {
        return ctx.invalid();
    }
    if !plus_one && ca == Class::Zero {
        if cb == Class::Zero {
            return ctx.invalid();
        }
        ctx.raise(fsw::ZE);
        return F80::inf(!b.sign());
    }
    let r = y * l;
    if r.is_nan() {
        return ctx.invalid();
    }
    if r.is_infinite() && !(y.is_infinite() || l.is_infinite()) {
        // The f64 product overflowed where the 80-bit one may not: redo
        // it with the soft-float multiply.
        return sf::mul(b, from_f64(l, ctx), ctx);
    }
    from_f64(r, ctx)
}

/// FPATAN: `atan2(b, a)` with `a` = ST0, `b` = ST1.
pub fn atan2(a: F80, b: F80, ctx: &mut Ctx) -> F80 {
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
    from_f64(to_f64(b).atan2(to_f64(a)), ctx)
}

/// `a` reduced modulo π/2: `(r, k mod 4)` with `a = k·π/2 + r`,
/// |r| ≤ π/4 (about), `r` exact to well beyond f64 precision for
/// |a| < 2^30; beyond that f64 reduction (the x87 itself only reduces
/// with a 66-bit π).
fn reduce(a: F80) -> (f64, u64) {
    let x = to_f64(a);
    let k = (x * std::f64::consts::FRAC_2_PI).round();
    if k.abs() >= (1u64 << 30) as f64 {
        let r = x - k * std::f64::consts::FRAC_PI_2;
        return (r, (k.rem_euclid(4.0)) as u64);
    }
    // π/2 = P1 + P2 + P3: P1 has 32 significant bits, so k·P1 is exact.
    const PIO2: u128 = 0xc90f_daa2_2168_c234_c4c6_628b_80dc_1cd1;
    let mut c = Ctx::masked(Rounding::Nearest);
    let part = |m: u128, c: &mut Ctx| norm_round_pack(false, BIAS, m, 64, c);
    let p1 = part(PIO2 & !((1u128 << 96) - 1), &mut c);
    let rest = PIO2 & ((1u128 << 96) - 1);
    let p2 = part(rest & !((1u128 << 32) - 1), &mut c);
    let p3 = part(rest & ((1u128 << 32) - 1), &mut c);
    let kf = from_int(k as i64);
    let mut r = a;
    for p in [p1, p2, p3] {
        r = sf::add(r, sf::mul(kf, p, &mut c), true, &mut c);
    }
    (to_f64(r), (k as i64).rem_euclid(4) as u64)
}
