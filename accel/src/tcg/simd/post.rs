//! Unmasked overflow and underflow: what the hardware reports differs from
//! a masked run, element by element (rules found and checked against the
//! host in `tests/unmasked.rs`):
//! - with UE unmasked, a tiny result counts even when exact (a masked run
//!   flags underflow only when tiny *and* inexact), and FTZ does not apply;
//! - an element that overflows (OE unmasked) or is tiny (UE unmasked)
//!   reports PE only if its result rounded to the destination precision
//!   with an unbounded exponent is inexact (the masked run's PE also counts
//!   the precision lost to denormalisation or to the overflow response).
//!
//! So when OE or UE is unmasked, the operation is re-run once per element
//! with that element replicated into every lane (the run's flags are then
//! exactly that element's), and for an overflowing/tiny element once more
//! on operands scaled into the normal range to learn the unbounded
//! exactness. Only operations that can overflow or underflow need this:
//! ADD/SUB/MUL/DIV and the narrowing conversions CVTSD2SS/CVTPD2PS.

use super::float::Format;
use super::mxcsr::{DAZ, FTZ, MASKS, MASK_SHIFT, OE, PE, PRE, UE};

/// A host operation: `(dst, src, mxcsr) -> (dst', flags)`.
pub type HostOp = fn(u128, u128, u32) -> (u128, u32);

/// How an operation's result relates to its operands' exponents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    AddSub,
    MulDiv,
    /// One operand (the source), narrowed.
    Convert,
}

/// Which lanes of the inputs an operation uses, and its result format.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub kind: Kind,
    pub input: Format,
    /// Input elements used (from lane 0).
    pub elements: u32,
    pub output: Format,
}

/// `lane` copied into every lane of `f`'s width.
fn splat(f: Format, lane: u64) -> u128 {
    (0..f.lanes()).fold(0, |acc, j| acc | (u128::from(lane) << (j * f.width())))
}

/// Runs `op`, rebuilding its flags per element when OE or UE is unmasked.
pub fn run(op: HostOp, shape: Shape, a: u128, b: u128, mxcsr: u32) -> (u128, u32) {
    let (r, flags) = op(a, b, mxcsr);
    let unmasked = !(mxcsr >> MASK_SHIFT) & (OE | UE | PRE);
    if unmasked & (OE | UE) == 0 || flags & unmasked & PRE != 0 {
        // Either the masked rules apply, or an unmasked pre-computation
        // exception stops the operation before OE/UE/PE could arise.
        return (r, flags);
    }
    let ue_unmasked = unmasked & UE != 0;
    let element_mxcsr = if ue_unmasked { mxcsr & !FTZ } else { mxcsr };
    let mut total = 0;
    for i in 0..shape.elements {
        let (x, y) = (shape.input.lane(a, i), shape.input.lane(b, i));
        let (res, mut f) = op(splat(shape.input, x), splat(shape.input, y), element_mxcsr);
        if ue_unmasked && f & UE == 0 && shape.output.is_denormal(shape.output.lane(res, 0)) {
            f |= UE; // tiny and exact
        }
        if f & unmasked & (OE | UE) != 0 {
            f &= !PE;
            if unbounded_inexact(op, shape, x, y, mxcsr & DAZ != 0) {
                f |= PE;
            }
        }
        total |= f;
    }
    (r, total)
}

/// Whether the element's exact result needs rounding at the destination
/// precision when the exponent range is unbounded (operands finite).
fn unbounded_inexact(op: HostOp, shape: Shape, x: u64, y: u64, daz: bool) -> bool {
    let f = shape.input;
    let zero = |v: u64| f.is_zero(v) || (daz && f.is_denormal(v));
    let run = |x: u64, y: u64| op(splat(f, x), splat(f, y), MASKS).1 & PE != 0;
    match shape.kind {
        // Significands only: scaling by powers of two changes no rounding.
        Kind::MulDiv => !zero(x) && !zero(y) && run(f.with_exponent(x, 0).0, f.with_exponent(y, 0).0),
        Kind::Convert => !zero(y) && run(x, f.with_exponent(y, 0).0),
        // A tiny sum or difference is always exact; an overflowing one is
        // scaled (both operands alike) so that the larger is near 1.
        Kind::AddSub => {
            let (x, y) = (if zero(x) { 0 } else { x }, if zero(y) { 0 } else { y });
            let top = f.exponent(x).max(f.exponent(y));
            let (xs, x_lost) = f.with_exponent(x, f.exponent(x) - top);
            let (ys, y_lost) = f.with_exponent(y, f.exponent(y) - top);
            x_lost || y_lost || run(xs, ys)
        }
    }
}
