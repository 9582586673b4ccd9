//! ROL/ROR/RCL/RCR. They write only CF and OF and keep SF/ZF/AF/PF, so a
//! lazy op would need the previous flags as a fourth operand; instead the
//! frontend materialises them, which also removes the count-0 select:
//!
//! ```text
//! old  = arith_flags(cc_op, cc_dst, cc_src, cc_src2, rflags)   // helper
//! res  = rotl/rotr in IR, or rotate_result(kind, size, x, count, old)
//! new  = rotate_flags(kind, size, x, count, old)               // helper
//! set_rflags_arith(new)                  // rflags arith bits, cc_op = Eflags
//! ```
//!
//! Both functions take the *original* operand and the raw count, so they can
//! run in either order. Rotates are rare in hot code, so the helper call costs
//! little.

use super::super::state::rflags as rf;
use super::OpSize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotateKind {
    Rol,
    Ror,
    /// Rotate left through CF.
    Rcl,
    /// Rotate right through CF.
    Rcr,
}

/// The effective rotate amount: the count masked like hardware (5 bits, 6 for
/// 64-bit), then reduced modulo the rotated width (size, or size + 1 through
/// CF). `None` when the masked count is 0 (no effect at all).
fn amount(kind: RotateKind, size: OpSize, count: u64) -> Option<u32> {
    let masked = count & if size == OpSize::B8 { 63 } else { 31 };
    if masked == 0 {
        return None;
    }
    let width = match kind {
        RotateKind::Rol | RotateKind::Ror => size.bits(),
        RotateKind::Rcl | RotateKind::Rcr => size.bits() + 1,
    };
    Some((masked % u64::from(width)) as u32)
}

/// The result of rotating `value` (truncated to `size`) by `count` (raw CL or
/// immediate). `flags` supplies CF for RCL/RCR.
pub fn rotate_result(kind: RotateKind, size: OpSize, value: u64, count: u64, flags: u64) -> u64 {
    rotate(kind, size, value, count, flags).0
}

/// `flags` with CF and OF replaced as the rotate sets them; unchanged when the
/// masked count is 0 (or, for RCL/RCR, a multiple of size + 1, as the host
/// does). OF for counts > 1 is undefined in the SDM; this returns what the host
/// computes: OF of the first 1-bit step.
pub fn rotate_flags(kind: RotateKind, size: OpSize, value: u64, count: u64, flags: u64) -> u64 {
    rotate(kind, size, value, count, flags).1
}

fn rotate(kind: RotateKind, size: OpSize, value: u64, count: u64, flags: u64) -> (u64, u64) {
    let m = size.mask();
    let bits = size.bits();
    let v = value & m;
    let Some(n) = amount(kind, size, count) else {
        return (v, flags);
    };
    let msb = |x: u64| (x >> (bits - 1)) & 1;
    let msb1 = |x: u64| (x >> (bits - 2)) & 1;
    let cf_in = flags & rf::CF;
    let (res, cf, of) = match kind {
        RotateKind::Rol | RotateKind::Ror => {
            // n < bits, so neither shift below reaches the width.
            let (l, r) = if kind == RotateKind::Rol { (n, (bits - n) % bits) } else { ((bits - n) % bits, n) };
            let res = if n == 0 { v } else { ((v << l) | (v >> r)) & m };
            if kind == RotateKind::Rol {
                (res, res & 1, msb(v) ^ msb1(v))
            } else {
                (res, msb(res), (v & 1) ^ msb(v))
            }
        }
        RotateKind::Rcl | RotateKind::Rcr => {
            if n == 0 {
                // Count is a multiple of size + 1: the host changes nothing.
                return (v, flags);
            }
            // Rotate the (bits + 1)-bit value CF:v; n is in 1..=bits.
            let w = u128::from(v) | u128::from(cf_in) << bits;
            let left = if kind == RotateKind::Rcl { n } else { bits + 1 - n };
            let wm = (1u128 << (bits + 1)) - 1;
            let w = ((w << left) | (w >> (bits + 1 - left))) & wm;
            let of = if kind == RotateKind::Rcl { msb(v) ^ msb1(v) } else { msb(v) ^ cf_in };
            ((w as u64) & m, (w >> bits) as u64 & 1, of)
        }
    };
    (res, (flags & !(rf::CF | rf::OF)) | (cf * rf::CF) | (of * rf::OF))
}
