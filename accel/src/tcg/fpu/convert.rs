//! Conversions between the 80-bit format and memory formats: IEEE single
//! and double (FLD/FST m32/m64), signed integers (FILD/FIST/FISTP/FISTTP),
//! packed BCD (FBLD/FBSTP), and FRNDINT.

use super::fsw;
use super::softfloat::{increments, shr_jam, unpack, Class, Ctx, Rounding, BIAS, F80, TINY_AFTER_ROUNDING};

/// An IEEE binary format narrower than 80 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ieee {
    /// Fraction bits (23 or 52).
    pub frac: u32,
    /// Exponent bits (8 or 11).
    pub exp: u32,
}

pub const SINGLE: Ieee = Ieee { frac: 23, exp: 8 };
pub const DOUBLE: Ieee = Ieee { frac: 52, exp: 11 };

impl Ieee {
    fn bias(self) -> i32 {
        (1 << (self.exp - 1)) - 1
    }
    fn max_exp(self) -> u64 {
        (1 << self.exp) - 1
    }
    fn sign_bit(self) -> u64 {
        1 << (self.frac + self.exp)
    }
    /// The default QNaN ("indefinite") of the format.
    fn indefinite(self) -> u64 {
        self.sign_bit() | (self.max_exp() << self.frac) | (1 << (self.frac - 1))
    }
}

/// An m32/m64 operand widened exactly: NaNs keep their payload and
/// quiet bit (SNaNs stay signaling); the flag tells whether the source
/// was a denormal (DE is raised by the operation that uses it).
pub fn from_ieee(bits: u64, fmt: Ieee) -> (F80, bool) {
    let sign = bits & fmt.sign_bit() != 0;
    let e = (bits >> fmt.frac) & fmt.max_exp();
    let f = bits & ((1u64 << fmt.frac) - 1);
    let shift = 63 - fmt.frac;
    if e == fmt.max_exp() {
        if f == 0 {
            return (F80::inf(sign), false);
        }
        return (F80::new(sign, 0x7fff, (1 << 63) | (f << shift)), false);
    }
    if e == 0 {
        if f == 0 {
            return (F80::zero(sign), false);
        }
        let lz = (f << shift).leading_zeros();
        let exp = BIAS - fmt.bias() + 1 - lz as i32;
        return (F80::new(sign, exp as u16, (f << shift) << lz), true);
    }
    (F80::new(sign, (e as i32 - fmt.bias() + BIAS) as u16, (1 << 63) | (f << shift)), false)
}

/// FST m32/m64: rounds to the format with RC (PC does not apply).
pub fn to_ieee(x: F80, fmt: Ieee, ctx: &mut Ctx) -> u64 {
    let sign_bits = if x.sign() { fmt.sign_bit() } else { 0 };
    let inf = sign_bits | (fmt.max_exp() << fmt.frac);
    ctx.rounded_up = false;
    match x.class() {
        Class::Unsupported => {
            ctx.raise(fsw::IE);
            return fmt.indefinite();
        }
        Class::SNaN | Class::QNaN => {
            if x.class() == Class::SNaN {
                ctx.raise(fsw::IE);
            }
            let payload = (x.sig << 1) >> (64 - fmt.frac);
            return inf | payload | (1 << (fmt.frac - 1));
        }
        Class::Infinity => return inf,
        Class::Zero => return sign_bits,
        // No DE: a denormal source only underflows.
        Class::Denormal | Class::Normal => {}
    }
    let u = unpack(x);
    let prec = fmt.frac + 1;
    let drop = 128 - prec;
    let mut e = u.exp - BIAS + fmt.bias();
    let mut m = u128::from(u.sig) << 64;
    let mask = (1u128 << drop) - 1;
    let mut tiny = false;
    if e <= 0 {
        tiny = if TINY_AFTER_ROUNDING && e == 0 {
            let (k, r) = (m >> drop, m & mask);
            !(increments(ctx.rc, x.sign(), k, r, drop) && k == (1u128 << prec) - 1)
        } else {
            true
        };
        if tiny && ctx.underflow_unmasked {
            // Unmasked UE on a store: nothing is stored, only UE is flagged.
            ctx.raise(fsw::UE);
            return 0;
        }
        m = shr_jam(m, (1 - e).min(200) as u32);
        e = 0;
    }
    let (mut kept, rest) = (m >> drop, m & mask);
    if tiny && rest != 0 {
        ctx.raise(fsw::UE);
    }
    if increments(ctx.rc, x.sign(), kept, rest, drop) {
        kept += 1;
        ctx.rounded_up = true;
    }
    if kept >> prec != 0 {
        kept >>= 1;
        e += 1;
    } else if e == 0 && kept >> (prec - 1) != 0 {
        e = 1;
    }
    if e >= fmt.max_exp() as i32 {
        if ctx.overflow_unmasked {
            // As for UE: no store, only OE, C1 clear.
            ctx.raise(fsw::OE);
            ctx.rounded_up = false;
            return 0;
        }
        ctx.raise(fsw::OE | fsw::PE);
        let to_inf = match ctx.rc {
            Rounding::Nearest => true,
            Rounding::Zero => false,
            Rounding::Up => !x.sign(),
            Rounding::Down => x.sign(),
        };
        ctx.rounded_up = to_inf;
        return if to_inf { inf } else { inf - 1 };
    }
    if rest != 0 {
        ctx.raise(fsw::PE);
    }
    let frac = (kept as u64) & ((1 << fmt.frac) - 1);
    sign_bits | ((e as u64) << fmt.frac) | frac
}

/// FILD: exact.
pub fn from_int(v: i64) -> F80 {
    from_mag(v < 0, v.unsigned_abs())
}

/// Rounds a finite value to an integer-valued magnitude per `rc`:
/// `(integer magnitude or None if ≥ 2^64, inexact, incremented)`.
fn round_to_integer(x: F80, rc: Rounding) -> (Option<u64>, bool, bool) {
    if x.class() == Class::Zero {
        return (Some(0), false, false);
    }
    let u = unpack(x);
    let e = u.exp - BIAS;
    if e >= 64 {
        return (None, false, false);
    }
    // Integer part in the top 64 bits, fraction below.
    let m = u128::from(u.sig) << 64;
    let m = if e >= 63 { m << (e - 63) } else { shr_jam(m, (63 - e) as u32) };
    let (int, frac) = ((m >> 64) as u64, m as u64);
    let inc = increments(rc, u.sign, u128::from(int), u128::from(frac), 64);
    match int.checked_add(u64::from(inc)) {
        Some(v) => (Some(v), frac != 0, inc),
        None => (None, frac != 0, inc),
    }
}

/// FIST/FISTP (`truncate`: FISTTP) to a `bits`-wide signed integer.
/// Out of range, NaN and infinity raise IE and give the integer indefinite.
pub fn to_int(x: F80, bits: u32, truncate: bool, ctx: &mut Ctx) -> u64 {
    let indefinite = 1u64 << (bits - 1);
    ctx.rounded_up = false;
    match x.class() {
        Class::Unsupported | Class::QNaN | Class::SNaN | Class::Infinity => {
            ctx.raise(fsw::IE);
            return indefinite;
        }
        // No DE for a denormal source: it just rounds (PE).
        _ => {}
    }
    let rc = if truncate { Rounding::Zero } else { ctx.rc };
    let (mag, inexact, inc) = round_to_integer(x, rc);
    let limit = if x.sign() { indefinite } else { indefinite - 1 };
    match mag {
        Some(m) if m <= limit => {
            if inexact {
                ctx.raise(fsw::PE);
                ctx.rounded_up = inc;
            }
            let v = if x.sign() { m.wrapping_neg() } else { m };
            if bits == 64 {
                v
            } else {
                v & ((1 << bits) - 1)
            }
        }
        _ => {
            ctx.raise(fsw::IE);
            indefinite
        }
    }
}

/// FRNDINT: rounds to an integer per RC (PC does not apply).
pub fn round_int(x: F80, ctx: &mut Ctx) -> F80 {
    ctx.rounded_up = false;
    match x.class() {
        Class::Unsupported => return ctx.invalid(),
        Class::SNaN | Class::QNaN => return super::softfloat::propagate_nan(x, x, ctx),
        Class::Infinity | Class::Zero => return x,
        Class::Denormal => ctx.raise(fsw::DE),
        Class::Normal => {}
    }
    if i32::from(x.exp()) - BIAS >= 63 {
        return x;
    }
    let (mag, inexact, inc) = round_to_integer(x, ctx.rc);
    if inexact {
        ctx.raise(fsw::PE);
        ctx.rounded_up = inc;
    }
    match mag {
        Some(m) => from_mag(x.sign(), m),
        None => F80::new(x.sign(), (BIAS + 64) as u16, 1 << 63),
    }
}

/// `±mag` exactly.
fn from_mag(sign: bool, mag: u64) -> F80 {
    if mag == 0 {
        return F80::zero(sign);
    }
    let lz = mag.leading_zeros();
    F80::new(sign, (BIAS + 63 - lz as i32) as u16, mag << lz)
}

/// FBLD: 18 packed BCD digits and a sign byte; exact.
pub fn from_bcd(b: &[u8; 10]) -> F80 {
    let mut v: u64 = 0;
    for &byte in b[..9].iter().rev() {
        v = v * 100 + u64::from(byte >> 4) * 10 + u64::from(byte & 0xf);
    }
    // 18 digits < 10^18 < 2^63: exact.
    from_mag(b[9] & 0x80 != 0, v)
}

/// FBSTP: rounds per RC; |value| ≥ 10^18, NaN, infinity → IE and the
/// BCD indefinite.
pub fn to_bcd(x: F80, ctx: &mut Ctx) -> [u8; 10] {
    const INDEFINITE: [u8; 10] = [0, 0, 0, 0, 0, 0, 0, 0xc0, 0xff, 0xff];
    ctx.rounded_up = false;
    match x.class() {
        Class::Unsupported | Class::QNaN | Class::SNaN | Class::Infinity => {
            ctx.raise(fsw::IE);
            return INDEFINITE;
        }
        _ => {}
    }
    let (mag, inexact, inc) = round_to_integer(x, ctx.rc);
    let Some(mut m) = mag.filter(|&m| m < 1_000_000_000_000_000_000) else {
        ctx.raise(fsw::IE);
        return INDEFINITE;
    };
    if inexact {
        ctx.raise(fsw::PE);
        ctx.rounded_up = inc;
    }
    let mut out = [0u8; 10];
    for byte in out[..9].iter_mut() {
        let lo = (m % 10) as u8;
        m /= 10;
        let hi = (m % 10) as u8;
        m /= 10;
        *byte = (hi << 4) | lo;
    }
    out[9] = if x.sign() { 0x80 } else { 0 };
    out
}
