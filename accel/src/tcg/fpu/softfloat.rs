//! 80-bit extended-precision soft-float with the x87's rules: precision
//! control (significand rounded to 24, 53 or 64 bits while keeping the
//! 15-bit exponent range, as Berkeley SoftFloat's `extF80_roundingPrecision`),
//! the four rounding modes, the six exception flags (IE DE ZE OE UE PE),
//! C1 as the "rounded up" indicator, x87 NaN propagation (Table 4-7 of
//! SDM Vol. 1) and the x87 operand classes (unnormals, pseudo-NaNs and
//! pseudo-infinities are invalid operands; pseudo-denormals are denormals).
//!
//! Written here rather than taken from `rustc_apfloat`: APFloat has no
//! precision control (rounding to 24/53 bits in the 15-bit exponent range),
//! no denormal-operand flag and no x87 NaN selection rules, which are the
//! parts that make results bit-exact.
//!
//! Results of arithmetic are rounded from an exact (or exactly jammed)
//! 128-bit significand by [`round_pack`].

use super::fsw;

/// An 80-bit extended-precision value: sign and exponent in `se`, the
/// significand with its explicit integer bit (J, bit 63) in `sig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct F80 {
    pub sig: u64,
    pub se: u16,
}

/// What an 80-bit encoding is (the x87 view, FXAM's classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Zero,
    /// Exponent 0 with a non-zero significand (pseudo-denormals included).
    Denormal,
    Normal,
    Infinity,
    QNaN,
    SNaN,
    /// Unnormals, pseudo-NaNs, pseudo-infinities: invalid operands.
    Unsupported,
}

pub const BIAS: i32 = 16383;
const J: u64 = 1 << 63;
const QUIET: u64 = 1 << 62;

impl F80 {
    /// The "real indefinite" QNaN, the masked response to invalid operations.
    pub const INDEFINITE: F80 = F80 { sig: 0xc000_0000_0000_0000, se: 0xffff };
    pub const ONE: F80 = F80 { sig: J, se: 0x3fff };

    pub const fn new(sign: bool, exp: u16, sig: u64) -> F80 {
        F80 { sig, se: ((sign as u16) << 15) | (exp & 0x7fff) }
    }
    pub const fn zero(sign: bool) -> F80 {
        F80::new(sign, 0, 0)
    }
    pub const fn inf(sign: bool) -> F80 {
        F80::new(sign, 0x7fff, J)
    }
    pub fn from_bytes(b: &[u8]) -> F80 {
        let mut s = [0u8; 8];
        let n = b.len().min(8);
        s[..n].copy_from_slice(&b[..n]);
        let se = u16::from_le_bytes([b.get(8).copied().unwrap_or(0), b.get(9).copied().unwrap_or(0)]);
        F80 { sig: u64::from_le_bytes(s), se }
    }
    pub fn to_bytes(self) -> [u8; 10] {
        let mut b = [0u8; 10];
        b[..8].copy_from_slice(&self.sig.to_le_bytes());
        b[8..].copy_from_slice(&self.se.to_le_bytes());
        b
    }
    pub fn sign(self) -> bool {
        self.se & 0x8000 != 0
    }
    pub fn exp(self) -> u16 {
        self.se & 0x7fff
    }
    pub fn negate(self) -> F80 {
        F80 { sig: self.sig, se: self.se ^ 0x8000 }
    }
    pub fn abs(self) -> F80 {
        F80 { sig: self.sig, se: self.se & 0x7fff }
    }
    pub fn class(self) -> Class {
        let (e, s) = (self.exp(), self.sig);
        match e {
            0 if s == 0 => Class::Zero,
            0 => Class::Denormal,
            0x7fff if s & J == 0 => Class::Unsupported,
            0x7fff if s << 1 == 0 => Class::Infinity,
            0x7fff if s & QUIET != 0 => Class::QNaN,
            0x7fff => Class::SNaN,
            _ if s & J == 0 => Class::Unsupported,
            _ => Class::Normal,
        }
    }
    pub fn is_nan(self) -> bool {
        matches!(self.class(), Class::QNaN | Class::SNaN)
    }
    pub fn quieted(self) -> F80 {
        F80 { sig: self.sig | QUIET, se: self.se }
    }
}

/// FCW.RC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    Nearest = 0,
    Down = 1,
    Up = 2,
    Zero = 3,
}

impl Rounding {
    pub fn from_bits(v: u16) -> Rounding {
        match v & 3 {
            0 => Rounding::Nearest,
            1 => Rounding::Down,
            2 => Rounding::Up,
            _ => Rounding::Zero,
        }
    }
}

/// The rounding environment and the flags an operation raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub rc: Rounding,
    /// Significand bits of results: 24, 53 or 64 (FCW.PC; the reserved
    /// encoding 01 behaves as 64 here).
    pub prec: u32,
    /// Raised FSW exception bits (`fsw::IE`..`fsw::PE`).
    pub flags: u16,
    /// The last rounding incremented the magnitude (becomes C1).
    pub rounded_up: bool,
    /// FCW.UM clear: tiny results are flagged even when exact, and
    /// re-biased instead of denormalized.
    pub underflow_unmasked: bool,
    /// FCW.OM clear: overflowing results are re-biased.
    pub overflow_unmasked: bool,
}

impl Ctx {
    pub fn from_fcw(fcw: u16) -> Ctx {
        let prec = match (fcw >> 8) & 3 {
            0 => 24,
            2 => 53,
            _ => 64,
        };
        Ctx {
            rc: Rounding::from_bits(fcw >> 10),
            prec,
            flags: 0,
            rounded_up: false,
            underflow_unmasked: fcw & fsw::UE == 0,
            overflow_unmasked: fcw & fsw::OE == 0,
        }
    }
    /// All exceptions masked, 64-bit precision, rounding `rc`: for
    /// internal conversions whose flags are not wanted.
    pub fn masked(rc: Rounding) -> Ctx {
        Ctx::from_fcw(0x037f | (rc as u16) << 10)
    }
    /// Same rounding mode, full 64-bit precision (constants, conversions,
    /// FRNDINT ignore PC).
    pub fn full(&self) -> Ctx {
        Ctx { prec: 64, ..*self }
    }
    pub fn raise(&mut self, f: u16) {
        self.flags |= f;
    }
    /// IE with the masked response.
    pub fn invalid(&mut self) -> F80 {
        self.raise(fsw::IE);
        F80::INDEFINITE
    }
}

/// A finite non-zero value with a normalized significand (bit 63 set):
/// `sig / 2^63 * 2^(exp - BIAS)`; `exp` may be below 1 for denormals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub sign: bool,
    pub exp: i32,
    pub sig: u64,
}

/// Unpacks a finite non-zero (normal or denormal) value.
pub fn unpack(x: F80) -> Unpacked {
    let e = i32::from(x.exp().max(1));
    let lz = x.sig.leading_zeros() as i32;
    Unpacked { sign: x.sign(), exp: e - lz, sig: x.sig << lz }
}

/// Shifts right, or-ing the shifted-out bits into bit 0 (sticky).
pub fn shr_jam(m: u128, n: u32) -> u128 {
    if n == 0 {
        m
    } else if n >= 128 {
        u128::from(m != 0)
    } else {
        (m >> n) | u128::from(m << (128 - n) != 0)
    }
}

/// Whether rounding `kept` (with discarded `rest` of `bits` bits) increments.
pub(super) fn increments(rc: Rounding, sign: bool, kept: u128, rest: u128, bits: u32) -> bool {
    if rest == 0 {
        return false;
    }
    match rc {
        Rounding::Nearest => {
            let half = 1u128 << (bits - 1);
            rest > half || (rest == half && kept & 1 == 1)
        }
        Rounding::Down => sign,
        Rounding::Up => !sign,
        Rounding::Zero => false,
    }
}

/// x87 detects tininess after rounding (checked against the host in the
/// tests): a result is tiny if rounding it with an unbounded exponent
/// would still give a magnitude below the smallest normal.
pub(super) const TINY_AFTER_ROUNDING: bool = true;

/// The exponent adjustment of unmasked overflow/underflow responses: the
/// result is stored divided (OE) or multiplied (UE) by 2^24576.
const WRAP: i32 = 24576;

/// Rounds `m * 2^(exp - BIAS - 127)` (with `m` normalized, bit 127 set, or
/// zero) to `prec` significand bits and packs it, raising PE, UE, OE.
pub fn round_pack(sign: bool, exp: i32, m: u128, prec: u32, ctx: &mut Ctx) -> F80 {
    ctx.rounded_up = false;
    if m == 0 {
        return F80::zero(sign);
    }
    let prec = prec.clamp(24, 64);
    let drop = 128 - prec;
    let mask = (1u128 << drop) - 1;
    let mut e = exp;
    let mut m = m;
    let tiny = e < 0
        || (e == 0 && {
            let (kept, rest) = (m >> drop, m & mask);
            !(TINY_AFTER_ROUNDING && increments(ctx.rc, sign, kept, rest, drop) && kept == (1u128 << prec) - 1)
        });
    if tiny && ctx.underflow_unmasked {
        // Unmasked UE: no denormalization; the exponent is re-biased. A
        // result too small even for that (FSCALE) becomes a zero.
        ctx.raise(fsw::UE);
        if e + WRAP <= 0 {
            ctx.raise(fsw::PE);
            return F80::zero(sign);
        }
        e += WRAP;
    } else if e <= 0 {
        m = shr_jam(m, (1 - e).min(200) as u32);
        e = 0;
    }
    let (mut kept, rest) = (m >> drop, m & mask);
    let inc = increments(ctx.rc, sign, kept, rest, drop);
    if rest != 0 {
        ctx.raise(fsw::PE);
        if tiny {
            ctx.raise(fsw::UE);
        }
    }
    if inc {
        kept += 1;
        ctx.rounded_up = true;
    }
    if kept >> prec != 0 {
        kept >>= 1;
        e += 1;
    } else if e == 0 && kept >> (prec - 1) != 0 {
        e = 1;
    }
    if e >= 0x7fff {
        if !ctx.overflow_unmasked {
            return overflow(sign, prec, ctx);
        }
        // Unmasked OE: re-biased; beyond even that (FSCALE), infinity.
        ctx.raise(fsw::OE);
        if e - WRAP >= 0x7fff {
            ctx.raise(fsw::PE);
            ctx.rounded_up = true;
            return F80::inf(sign);
        }
        e -= WRAP;
    }
    F80::new(sign, e as u16, (kept << (64 - prec)) as u64)
}

/// OE's masked response: infinity or the largest finite value, by RC.
fn overflow(sign: bool, prec: u32, ctx: &mut Ctx) -> F80 {
    ctx.raise(fsw::OE | fsw::PE);
    let to_inf = match ctx.rc {
        Rounding::Nearest => true,
        Rounding::Zero => false,
        Rounding::Up => !sign,
        Rounding::Down => sign,
    };
    ctx.rounded_up = to_inf;
    if to_inf {
        F80::inf(sign)
    } else {
        F80::new(sign, 0x7ffe, u64::MAX << (64 - prec))
    }
}

/// Normalizes `m` (non-zero) to bit 127 and rounds.
pub fn norm_round_pack(sign: bool, exp: i32, m: u128, prec: u32, ctx: &mut Ctx) -> F80 {
    if m == 0 {
        return round_pack(sign, exp, 0, prec, ctx);
    }
    let lz = m.leading_zeros();
    round_pack(sign, exp - lz as i32, m << lz, prec, ctx)
}

/// The NaN result of an operation with NaN operand(s) `a`, `b` (x87
/// rules: a QNaN beats an SNaN; of two of a kind the larger significand,
/// then the positive one, then `a`). An SNaN raises IE.
pub fn propagate_nan(a: F80, b: F80, ctx: &mut Ctx) -> F80 {
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::SNaN || cb == Class::SNaN {
        ctx.raise(fsw::IE);
    }
    let pick = match (ca, cb) {
        (Class::QNaN, Class::SNaN) | (Class::SNaN, Class::QNaN) => {
            if ca == Class::QNaN {
                a
            } else {
                b
            }
        }
        (Class::QNaN | Class::SNaN, Class::QNaN | Class::SNaN) => {
            let (ma, mb) = (a.sig & !J, b.sig & !J);
            if ma > mb || (ma == mb && (!a.sign() || b.sign())) {
                a
            } else {
                b
            }
        }
        (Class::QNaN | Class::SNaN, _) => a,
        _ => b,
    };
    pick.quieted()
}

/// The common prologue of two-operand arithmetic: invalid encodings and
/// NaNs produce the result; a denormal operand raises DE.
fn special2(a: F80, b: F80, ctx: &mut Ctx) -> Option<F80> {
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::Unsupported || cb == Class::Unsupported {
        return Some(ctx.invalid());
    }
    if a.is_nan() || b.is_nan() {
        return Some(propagate_nan(a, b, ctx));
    }
    None
}

fn note_denormals(a: F80, b: F80, ctx: &mut Ctx) {
    if a.class() == Class::Denormal || b.class() == Class::Denormal {
        ctx.raise(fsw::DE);
    }
}

/// `a + b` (`negate_b`: `a - b`).
pub fn add(a: F80, b: F80, negate_b: bool, ctx: &mut Ctx) -> F80 {
    if let Some(r) = special2(a, b, ctx) {
        return r;
    }
    let b = if negate_b { b.negate() } else { b };
    let (ca, cb) = (a.class(), b.class());
    if ca == Class::Infinity && cb == Class::Infinity && a.sign() != b.sign() {
        return ctx.invalid();
    }
    note_denormals(a, b, ctx);
    ctx.rounded_up = false;
    match (ca, cb) {
        (Class::Infinity, _) => return a,
        (_, Class::Infinity) => return b,
        _ => {}
    }
    let zero_sign = |ctx: &Ctx| ctx.rc == Rounding::Down;
    match (ca == Class::Zero, cb == Class::Zero) {
        (true, true) => return F80::zero(if a.sign() == b.sign() { a.sign() } else { zero_sign(ctx) }),
        // x + 0 is x, but still rounded to the precision in force.
        (false, true) => return add_mags_or_sub(unpack(a), None, ctx),
        (true, false) => return add_mags_or_sub(unpack(b), None, ctx),
        _ => {}
    }
    add_mags_or_sub(unpack(a), Some(unpack(b)), ctx)
}

fn add_mags_or_sub(a: Unpacked, b: Option<Unpacked>, ctx: &mut Ctx) -> F80 {
    let prec = ctx.prec;
    let Some(b) = b else {
        return round_pack(a.sign, a.exp, u128::from(a.sig) << 64, prec, ctx);
    };
    let (big, small) = if (a.exp, a.sig) >= (b.exp, b.sig) { (a, b) } else { (b, a) };
    // One spare bit on top for the carry of an addition.
    let mb = u128::from(big.sig) << 63;
    let ms = shr_jam(u128::from(small.sig) << 63, (big.exp - small.exp) as u32);
    if a.sign == b.sign {
        return norm_round_pack(a.sign, big.exp + 1, mb + ms, prec, ctx);
    }
    let diff = mb - ms;
    if diff == 0 {
        return F80::zero(ctx.rc == Rounding::Down);
    }
    norm_round_pack(big.sign, big.exp + 1, diff, prec, ctx)
}

/// `a * b`.
pub fn mul(a: F80, b: F80, ctx: &mut Ctx) -> F80 {
    if let Some(r) = special2(a, b, ctx) {
        return r;
    }
    let sign = a.sign() != b.sign();
    let (ca, cb) = (a.class(), b.class());
    let inf = ca == Class::Infinity || cb == Class::Infinity;
    let zero = ca == Class::Zero || cb == Class::Zero;
    if inf && zero {
        return ctx.invalid();
    }
    ctx.rounded_up = false;
    note_denormals(a, b, ctx);
    if inf {
        return F80::inf(sign);
    }
    if zero {
        return F80::zero(sign);
    }
    let (ua, ub) = (unpack(a), unpack(b));
    let m = u128::from(ua.sig) * u128::from(ub.sig);
    norm_round_pack(sign, ua.exp + ub.exp - BIAS + 1, m, ctx.prec, ctx)
}

/// `a / b`.
pub fn div(a: F80, b: F80, ctx: &mut Ctx) -> F80 {
    if let Some(r) = special2(a, b, ctx) {
        return r;
    }
    let sign = a.sign() != b.sign();
    let (ca, cb) = (a.class(), b.class());
    ctx.rounded_up = false;
    if matches!((ca, cb), (Class::Infinity, Class::Infinity) | (Class::Zero, Class::Zero)) {
        return ctx.invalid();
    }
    if cb == Class::Zero && ca != Class::Infinity {
        // ZE, like IE, takes precedence over DE.
        ctx.raise(fsw::ZE);
        return F80::inf(sign);
    }
    note_denormals(a, b, ctx);
    match (ca, cb) {
        (Class::Infinity, _) => return F80::inf(sign),
        (_, Class::Infinity) | (Class::Zero, _) => return F80::zero(sign),
        _ => {}
    }
    let (ua, ub) = (unpack(a), unpack(b));
    let d = u128::from(ub.sig);
    let n = u128::from(ua.sig) << 64;
    let (q1, r1) = (n / d, n % d);
    let (q2, r2) = ((r1 << 64) / d, (r1 << 64) % d);
    // q1 < 2^65 and q2 < 2^64: q1:q2 shifted right by one fits 128 bits.
    let m = (q1 << 63) | (q2 >> 1) | u128::from(q2 & 1 != 0 || r2 != 0);
    norm_round_pack(sign, ua.exp - ub.exp + BIAS, m, ctx.prec, ctx)
}

/// Square root.
pub fn sqrt(a: F80, ctx: &mut Ctx) -> F80 {
    match a.class() {
        Class::Unsupported => return ctx.invalid(),
        Class::QNaN | Class::SNaN => return propagate_nan(a, a, ctx),
        Class::Zero => return a,
        Class::Infinity if !a.sign() => return a,
        // Invalid: no DE even for a negative denormal.
        _ if a.sign() => return ctx.invalid(),
        Class::Denormal => ctx.raise(fsw::DE),
        _ => {}
    }
    let u = unpack(a);
    let e = u.exp - BIAS;
    // N = sig << shift, a 192-bit number; its root has 96 bits.
    let shift = 127 + e.rem_euclid(2) as u32;
    let bit_of_n = |j: u32| j >= shift && j - shift < 64 && (u.sig >> (j - shift)) & 1 != 0;
    let (mut rem, mut root) = (0u128, 0u128);
    for i in (0..96u32).rev() {
        let pair = (u128::from(bit_of_n(2 * i + 1)) << 1) | u128::from(bit_of_n(2 * i));
        rem = (rem << 2) | pair;
        let trial = (root << 2) | 1;
        root <<= 1;
        if rem >= trial {
            rem -= trial;
            root |= 1;
        }
    }
    let m = (root << 32) | u128::from(rem != 0);
    norm_round_pack(false, e.div_euclid(2) + BIAS, m, ctx.prec, ctx)
}
