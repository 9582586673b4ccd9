//! SSE compares in portable Rust: CMPccPS/PD/SS/SD (the eight legacy
//! predicates) and (U)COMISS/(U)COMISD. They only classify and compare, so
//! exactness needs no rounding: DAZ, and the IE/DE flags with the SDM's
//! priority (an SNaN — or, for the signalling predicates and COMIS, any
//! NaN — raises IE; a NaN operand hides a denormal one, so DE is raised
//! only when no operand is a NaN).

use super::mxcsr::{DAZ, DE, IE};
use crate::tcg::state::rflags as rf;

/// An IEEE binary format's bit layout.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    width: u32,
    mant: u32,
}

pub const F32: Format = Format { width: 32, mant: 23 };
pub const F64: Format = Format { width: 64, mant: 52 };

impl Format {
    pub fn width(self) -> u32 {
        self.width
    }
    fn sign(self) -> u64 {
        1 << (self.width - 1)
    }
    fn exp_mask(self) -> u64 {
        (self.sign() - 1) & !self.mant_mask()
    }
    fn mant_mask(self) -> u64 {
        (1 << self.mant) - 1
    }
    pub fn is_nan(self, x: u64) -> bool {
        x & self.exp_mask() == self.exp_mask() && x & self.mant_mask() != 0
    }
    pub fn is_snan(self, x: u64) -> bool {
        self.is_nan(x) && x & (1 << (self.mant - 1)) == 0
    }
    pub fn is_denormal(self, x: u64) -> bool {
        x & self.exp_mask() == 0 && x & self.mant_mask() != 0
    }
    pub fn is_zero(self, x: u64) -> bool {
        x & !self.sign() == 0
    }
    fn bias(self) -> i32 {
        (1 << (self.width - self.mant - 2)) - 1
    }
    /// The unbiased exponent of a finite non-zero `x` (denormals as if
    /// normalised); `i32::MIN / 2` for zero.
    pub fn exponent(self, x: u64) -> i32 {
        let m = x & self.mant_mask();
        match ((x & self.exp_mask()) >> self.mant) as i32 {
            0 if m == 0 => i32::MIN / 2,
            0 => 1 - self.bias() - (m.leading_zeros() as i32 - (63 - self.mant as i32)),
            e => e - self.bias(),
        }
    }
    /// `x` (finite) with its significand kept and its unbiased exponent set
    /// to `e`, denormalised below the normal range; also whether that lost
    /// significand bits (a zero stays zero).
    pub fn with_exponent(self, x: u64, e: i32) -> (u64, bool) {
        let sign = x & self.sign();
        if self.is_zero(x) {
            return (sign, false);
        }
        // The significand with its leading one at bit `mant`.
        let m = x & self.mant_mask();
        let sig =
            if x & self.exp_mask() == 0 { m << (m.leading_zeros() - (63 - self.mant)) } else { m | (1 << self.mant) };
        let biased = e + self.bias();
        if biased >= 1 {
            let biased = biased.min((1 << (self.width - self.mant - 1)) - 2) as u64;
            return (sign | (biased << self.mant) | (sig & self.mant_mask()), false);
        }
        let shift = (1 - biased) as u32;
        if shift > self.mant + 1 {
            return (sign, true);
        }
        (sign | (sig >> shift), sig & ((1 << shift) - 1) != 0)
    }
    /// The value as f64 (exact for both formats); not for NaNs.
    fn value(self, x: u64) -> f64 {
        if self.width == 32 {
            f64::from(f32::from_bits(x as u32))
        } else {
            f64::from_bits(x)
        }
    }
    pub fn lane(self, v: u128, i: u32) -> u64 {
        ((v >> (i * self.width)) as u64) & (u64::MAX >> (64 - self.width))
    }
    pub fn lanes(self) -> u32 {
        128 / self.width
    }
}

/// Relation of two non-NaN-or-NaN values, with the flags it raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Less,
    Equal,
    Greater,
    Unordered,
}

/// Compares `a` and `b`; `signal_qnan`: a QNaN raises IE too.
fn order(f: Format, a: u64, b: u64, mxcsr: u32, signal_qnan: bool) -> (Order, u32) {
    let (a_nan, b_nan) = (f.is_nan(a), f.is_nan(b));
    if a_nan || b_nan {
        let ie = f.is_snan(a) || f.is_snan(b) || signal_qnan;
        return (Order::Unordered, if ie { IE } else { 0 });
    }
    let mut flags = 0;
    let mut value = |x: u64| {
        if f.is_denormal(x) {
            if mxcsr & DAZ != 0 {
                return 0.0;
            }
            flags |= DE;
        }
        f.value(x)
    };
    let (x, y) = (value(a), value(b));
    let ord = if x < y {
        Order::Less
    } else if x > y {
        Order::Greater
    } else {
        Order::Equal
    };
    (ord, flags)
}

/// Whether predicate `imm & 7` (EQ LT LE UNORD NEQ NLT NLE ORD) holds, and
/// whether it signals on a QNaN.
fn predicate(imm: u8, ord: Order) -> bool {
    use Order::*;
    match imm & 7 {
        0 => ord == Equal,
        1 => ord == Less,
        2 => matches!(ord, Less | Equal),
        3 => ord == Unordered,
        4 => ord != Equal,
        5 => ord != Less,
        6 => !matches!(ord, Less | Equal),
        _ => ord != Unordered,
    }
}

fn signals(imm: u8) -> bool {
    matches!(imm & 7, 1 | 2 | 5 | 6)
}

/// CMPccPS/PD (`scalar` false: every lane) and CMPccSS/SD (the low lane;
/// the rest of `a` kept): all-ones lanes where the predicate holds.
pub fn cmp(f: Format, scalar: bool, a: u128, b: u128, imm: u8, mxcsr: u32) -> (u128, u32) {
    let mut out = a;
    let mut flags = 0;
    let lanes = if scalar { 1 } else { f.lanes() };
    let lane_mask = u128::from(u64::MAX >> (64 - f.width));
    for i in 0..lanes {
        let (ord, fl) = order(f, f.lane(a, i), f.lane(b, i), mxcsr, signals(imm));
        flags |= fl;
        let shift = i * f.width;
        out &= !(lane_mask << shift);
        if predicate(imm, ord) {
            out |= lane_mask << shift;
        }
    }
    (out, flags)
}

/// (U)COMISS/SD: ZF, PF, CF from the low lanes (OF, SF, AF cleared).
/// `signal_qnan`: COMIS (true) or UCOMIS (false).
pub fn comi(f: Format, a: u128, b: u128, mxcsr: u32, signal_qnan: bool) -> (u64, u32) {
    let (ord, flags) = order(f, f.lane(a, 0), f.lane(b, 0), mxcsr, signal_qnan);
    let eflags = match ord {
        Order::Unordered => rf::ZF | rf::PF | rf::CF,
        Order::Less => rf::CF,
        Order::Equal => rf::ZF,
        Order::Greater => 0,
    };
    (eflags, flags)
}
