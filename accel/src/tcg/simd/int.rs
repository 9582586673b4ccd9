//! Packed-integer SSE2 operations on 128-bit values, lane by lane in
//! portable Rust (no MXCSR involvement: integer ops raise no SIMD
//! exceptions). Each function is `dst = op(dst, src)` with `a` the
//! destination's old value and `b` the source, as the instruction defines.

/// Lanes of `N` bytes, little-endian, as `u64`s (the widest lane is 8).
fn lanes<const N: usize>(x: u128) -> impl Iterator<Item = u64> {
    (0..16 / N).map(move |i| ((x >> (i * N * 8)) as u64) & lane_mask(N))
}

const fn lane_mask(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (n * 8)) - 1
    }
}

/// Builds a value from lanes of `N` bytes (extra high bits are dropped).
fn from_lanes<const N: usize>(it: impl Iterator<Item = u64>) -> u128 {
    it.take(16 / N).enumerate().fold(0u128, |acc, (i, v)| acc | (u128::from(v & lane_mask(N)) << (i * N * 8)))
}

/// `f(a_lane, b_lane)` for each pair of `N`-byte lanes.
fn zip<const N: usize>(a: u128, b: u128, f: impl Fn(u64, u64) -> u64) -> u128 {
    from_lanes::<N>(lanes::<N>(a).zip(lanes::<N>(b)).map(|(x, y)| f(x, y)))
}

/// Sign-extends the low `bits` of `v`.
fn sx(v: u64, bits: u32) -> i64 {
    let s = 64 - bits;
    ((v << s) as i64) >> s
}

fn sat_signed(v: i64, bits: u32) -> u64 {
    let max = (1i64 << (bits - 1)) - 1;
    v.clamp(-max - 1, max) as u64
}

fn sat_unsigned(v: i64, bits: u32) -> u64 {
    v.clamp(0, (1i64 << bits) - 1) as u64
}

// ---- add / sub ----

pub fn add8(a: u128, b: u128) -> u128 {
    zip::<1>(a, b, u64::wrapping_add)
}
pub fn add16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, u64::wrapping_add)
}
pub fn add32(a: u128, b: u128) -> u128 {
    zip::<4>(a, b, u64::wrapping_add)
}
pub fn add64(a: u128, b: u128) -> u128 {
    zip::<8>(a, b, u64::wrapping_add)
}
pub fn sub8(a: u128, b: u128) -> u128 {
    zip::<1>(a, b, u64::wrapping_sub)
}
pub fn sub16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, u64::wrapping_sub)
}
pub fn sub32(a: u128, b: u128) -> u128 {
    zip::<4>(a, b, u64::wrapping_sub)
}
pub fn sub64(a: u128, b: u128) -> u128 {
    zip::<8>(a, b, u64::wrapping_sub)
}

/// PADDSB/PADDSW/PSUBSB/PSUBSW: signed saturation.
pub fn adds8(a: u128, b: u128) -> u128 {
    zip::<1>(a, b, |x, y| sat_signed(sx(x, 8) + sx(y, 8), 8))
}
pub fn adds16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, |x, y| sat_signed(sx(x, 16) + sx(y, 16), 16))
}
pub fn subs8(a: u128, b: u128) -> u128 {
    zip::<1>(a, b, |x, y| sat_signed(sx(x, 8) - sx(y, 8), 8))
}
pub fn subs16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, |x, y| sat_signed(sx(x, 16) - sx(y, 16), 16))
}

/// PADDUSB/PADDUSW/PSUBUSB/PSUBUSW: unsigned saturation.
pub fn addus8(a: u128, b: u128) -> u128 {
    zip::<1>(a, b, |x, y| sat_unsigned((x + y) as i64, 8))
}
pub fn addus16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, |x, y| sat_unsigned((x + y) as i64, 16))
}
pub fn subus8(a: u128, b: u128) -> u128 {
    zip::<1>(a, b, |x, y| x.saturating_sub(y))
}
pub fn subus16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, |x, y| x.saturating_sub(y))
}

// ---- compares (all-ones / zero lanes) ----

fn mask(c: bool) -> u64 {
    if c {
        u64::MAX
    } else {
        0
    }
}

pub fn cmpeq8(a: u128, b: u128) -> u128 {
    zip::<1>(a, b, |x, y| mask(x == y))
}
pub fn cmpeq16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, |x, y| mask(x == y))
}
pub fn cmpeq32(a: u128, b: u128) -> u128 {
    zip::<4>(a, b, |x, y| mask(x == y))
}
pub fn cmpgt8(a: u128, b: u128) -> u128 {
    zip::<1>(a, b, |x, y| mask(sx(x, 8) > sx(y, 8)))
}
pub fn cmpgt16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, |x, y| mask(sx(x, 16) > sx(y, 16)))
}
pub fn cmpgt32(a: u128, b: u128) -> u128 {
    zip::<4>(a, b, |x, y| mask(sx(x, 32) > sx(y, 32)))
}

// ---- multiplies ----

pub fn mullo16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, u64::wrapping_mul)
}
/// PMULHW: high half of the signed 32-bit product.
pub fn mulhi16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, |x, y| ((sx(x, 16) * sx(y, 16)) >> 16) as u64)
}
/// PMULHUW: high half of the unsigned product.
pub fn mulhu16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, |x, y| (x * y) >> 16)
}
/// PMULUDQ: the low dword of each qword, multiplied to a full qword.
pub fn muludq(a: u128, b: u128) -> u128 {
    zip::<8>(a, b, |x, y| (x & 0xffff_ffff) * (y & 0xffff_ffff))
}
/// PMADDWD: adjacent signed word products summed into dwords (wrapping:
/// only 0x8000 * 0x8000 twice overflows, to 0x8000_0000, as on hardware).
pub fn maddwd(a: u128, b: u128) -> u128 {
    zip::<4>(a, b, |x, y| {
        let lo = sx(x, 16) * sx(y, 16);
        let hi = sx(x >> 16, 16) * sx(y >> 16, 16);
        lo.wrapping_add(hi) as u64
    })
}

// ---- min / max / average / SAD ----

pub fn minu8(a: u128, b: u128) -> u128 {
    zip::<1>(a, b, u64::min)
}
pub fn maxu8(a: u128, b: u128) -> u128 {
    zip::<1>(a, b, u64::max)
}
pub fn mins16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, |x, y| if sx(x, 16) < sx(y, 16) { x } else { y })
}
pub fn maxs16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, |x, y| if sx(x, 16) > sx(y, 16) { x } else { y })
}
/// PAVGB/PAVGW: rounded-up unsigned average.
pub fn avg8(a: u128, b: u128) -> u128 {
    zip::<1>(a, b, |x, y| (x + y + 1) >> 1)
}
pub fn avg16(a: u128, b: u128) -> u128 {
    zip::<2>(a, b, |x, y| (x + y + 1) >> 1)
}
/// PSADBW: per qword, the sum of the 8 absolute byte differences, in the
/// low word (the rest of the qword zero).
pub fn sadbw(a: u128, b: u128) -> u128 {
    zip::<8>(a, b, |x, y| (0..8).map(|i| ((x >> (8 * i)) & 0xff).abs_diff((y >> (8 * i)) & 0xff)).sum())
}

// ---- logic ----

pub fn and(a: u128, b: u128) -> u128 {
    a & b
}
/// ANDNPS/ANDNPD/PANDN: `!dst & src`.
pub fn andn(a: u128, b: u128) -> u128 {
    !a & b
}
pub fn or(a: u128, b: u128) -> u128 {
    a | b
}
pub fn xor(a: u128, b: u128) -> u128 {
    a ^ b
}

// ---- shifts by a count (the source's low qword, or an immediate) ----

/// PSLLW/D/Q: counts past the lane width give zero.
pub fn sll<const N: usize>(a: u128, count: u64) -> u128 {
    let bits = (N * 8) as u64;
    if count >= bits {
        return 0;
    }
    from_lanes::<N>(lanes::<N>(a).map(|x| x << count))
}
/// PSRLW/D/Q.
pub fn srl<const N: usize>(a: u128, count: u64) -> u128 {
    let bits = (N * 8) as u64;
    if count >= bits {
        return 0;
    }
    from_lanes::<N>(lanes::<N>(a).map(|x| x >> count))
}
/// PSRAW/D: counts past the width fill with the sign.
pub fn sra<const N: usize>(a: u128, count: u64) -> u128 {
    let bits = (N * 8) as u32;
    let c = count.min(u64::from(bits) - 1);
    from_lanes::<N>(lanes::<N>(a).map(|x| (sx(x, bits) >> c) as u64))
}
/// PSLLDQ: whole-register byte shift; counts over 15 give zero.
pub fn slldq(a: u128, bytes: u64) -> u128 {
    if bytes > 15 {
        0
    } else {
        a << (8 * bytes)
    }
}
/// PSRLDQ.
pub fn srldq(a: u128, bytes: u64) -> u128 {
    if bytes > 15 {
        0
    } else {
        a >> (8 * bytes)
    }
}
