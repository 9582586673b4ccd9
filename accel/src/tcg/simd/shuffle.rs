//! Data movement inside 128-bit values: packs, unpacks, shuffles, partial
//! moves, sign-bit masks and word insert/extract. Bit-level and exact, so
//! plain Rust. `a` is the destination's old value, `b` the source.

const LO: u128 = u64::MAX as u128;
const HI: u128 = !LO;

fn words(x: u128) -> [u16; 8] {
    let b = x.to_le_bytes();
    std::array::from_fn(|i| u16::from_le_bytes([b[2 * i], b[2 * i + 1]]))
}

fn dwords(x: u128) -> [u32; 4] {
    std::array::from_fn(|i| (x >> (32 * i)) as u32)
}

fn from_words(w: [u16; 8]) -> u128 {
    w.iter().rev().fold(0u128, |acc, &v| (acc << 16) | u128::from(v))
}

fn from_dwords(d: [u32; 4]) -> u128 {
    d.iter().rev().fold(0u128, |acc, &v| (acc << 32) | u128::from(v))
}

// ---- packs: dst's elements narrowed into the low half, src's into the high ----

/// PACKSSWB: signed words to signed bytes, saturating.
pub fn packsswb(a: u128, b: u128) -> u128 {
    let mut out = [0u8; 16];
    for (i, w) in words(a).into_iter().chain(words(b)).enumerate() {
        out[i] = (w as i16).clamp(-128, 127) as i8 as u8;
    }
    u128::from_le_bytes(out)
}

/// PACKUSWB: signed words to unsigned bytes, saturating.
pub fn packuswb(a: u128, b: u128) -> u128 {
    let mut out = [0u8; 16];
    for (i, w) in words(a).into_iter().chain(words(b)).enumerate() {
        out[i] = (w as i16).clamp(0, 255) as u8;
    }
    u128::from_le_bytes(out)
}

/// PACKSSDW: signed dwords to signed words, saturating.
pub fn packssdw(a: u128, b: u128) -> u128 {
    let mut out = [0u16; 8];
    for (i, d) in dwords(a).into_iter().chain(dwords(b)).enumerate() {
        out[i] = (d as i32).clamp(-32768, 32767) as i16 as u16;
    }
    from_words(out)
}

// ---- unpacks: interleave the low (or high) halves, dst element first ----

/// Interleaves `N`-byte elements of the low (`high` false) or high halves.
fn unpack<const N: usize>(a: u128, b: u128, high: bool) -> u128 {
    let (a, b) = if high { (a >> 64, b >> 64) } else { (a, b) };
    let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
    let mut out = [0u8; 16];
    for i in 0..8 / N {
        out[2 * i * N..(2 * i + 1) * N].copy_from_slice(&a[i * N..(i + 1) * N]);
        out[(2 * i + 1) * N..(2 * i + 2) * N].copy_from_slice(&b[i * N..(i + 1) * N]);
    }
    u128::from_le_bytes(out)
}

pub fn punpcklbw(a: u128, b: u128) -> u128 {
    unpack::<1>(a, b, false)
}
pub fn punpcklwd(a: u128, b: u128) -> u128 {
    unpack::<2>(a, b, false)
}
/// Also UNPCKLPS.
pub fn punpckldq(a: u128, b: u128) -> u128 {
    unpack::<4>(a, b, false)
}
/// Also UNPCKLPD.
pub fn punpcklqdq(a: u128, b: u128) -> u128 {
    unpack::<8>(a, b, false)
}
pub fn punpckhbw(a: u128, b: u128) -> u128 {
    unpack::<1>(a, b, true)
}
pub fn punpckhwd(a: u128, b: u128) -> u128 {
    unpack::<2>(a, b, true)
}
/// Also UNPCKHPS.
pub fn punpckhdq(a: u128, b: u128) -> u128 {
    unpack::<4>(a, b, true)
}
/// Also UNPCKHPD.
pub fn punpckhqdq(a: u128, b: u128) -> u128 {
    unpack::<8>(a, b, true)
}

// ---- shuffles ----

/// PSHUFD: each dword of the result picks a dword of the source.
pub fn pshufd(b: u128, imm: u8) -> u128 {
    let d = dwords(b);
    from_dwords(std::array::from_fn(|i| d[usize::from(imm >> (2 * i)) & 3]))
}

/// PSHUFLW: shuffles the low four words; the high qword is copied.
pub fn pshuflw(b: u128, imm: u8) -> u128 {
    let w = words(b);
    from_words(std::array::from_fn(|i| if i < 4 { w[usize::from(imm >> (2 * i)) & 3] } else { w[i] }))
}

/// PSHUFHW: shuffles the high four words; the low qword is copied.
pub fn pshufhw(b: u128, imm: u8) -> u128 {
    let w = words(b);
    from_words(std::array::from_fn(|i| if i < 4 { w[i] } else { w[4 + (usize::from(imm >> (2 * (i - 4))) & 3)] }))
}

/// SHUFPS: the low two dwords from the destination, the high two from the source.
pub fn shufps(a: u128, b: u128, imm: u8) -> u128 {
    let (da, db) = (dwords(a), dwords(b));
    let pick = |i: usize| usize::from(imm >> (2 * i)) & 3;
    from_dwords([da[pick(0)], da[pick(1)], db[pick(2)], db[pick(3)]])
}

/// SHUFPD: the low qword from the destination, the high from the source.
pub fn shufpd(a: u128, b: u128, imm: u8) -> u128 {
    let lo = if imm & 1 == 0 { a & LO } else { a >> 64 };
    let hi = if imm & 2 == 0 { b & LO } else { b >> 64 };
    lo | (hi << 64)
}

// ---- partial moves ----

/// MOVSS xmm, xmm: the low dword replaced, the rest kept.
pub fn merge_lo32(a: u128, b: u128) -> u128 {
    (a & !u128::from(u32::MAX)) | (b & u128::from(u32::MAX))
}
/// MOVSD xmm, xmm / MOVLPS / MOVLPD xmm, m64: the low qword replaced.
pub fn merge_lo64(a: u128, b: u128) -> u128 {
    (a & HI) | (b & LO)
}
/// MOVHPS / MOVHPD xmm, m64 and MOVLHPS: the source's low qword into the high qword.
pub fn lo_to_hi(a: u128, b: u128) -> u128 {
    (a & LO) | (b << 64)
}
/// MOVHLPS: the source's high qword into the low qword.
pub fn hi_to_lo(a: u128, b: u128) -> u128 {
    (a & HI) | (b >> 64)
}
/// MOVQ xmm, xmm/m64: the low qword, zero-extended.
pub fn zext64(b: u128) -> u128 {
    b & LO
}
/// MOVD xmm, r/m32: the low dword, zero-extended.
pub fn zext32(b: u128) -> u128 {
    b & u128::from(u32::MAX)
}

// ---- sign masks, word insert/extract ----

/// MOVMSKPS: the four dword sign bits.
pub fn movmskps(b: u128) -> u64 {
    (0..4).map(|i| (((b >> (32 * i + 31)) & 1) as u64) << i).sum()
}
/// MOVMSKPD: the two qword sign bits.
pub fn movmskpd(b: u128) -> u64 {
    (((b >> 63) & 1) | (((b >> 127) & 1) << 1)) as u64
}
/// PMOVMSKB: the sixteen byte sign bits.
pub fn pmovmskb(b: u128) -> u64 {
    (0..16).map(|i| (((b >> (8 * i + 7)) & 1) as u64) << i).sum()
}
/// PEXTRW: word `imm & 7`, zero-extended.
pub fn pextrw(b: u128, imm: u8) -> u64 {
    ((b >> (16 * u32::from(imm & 7))) & 0xffff) as u64
}
/// PINSRW: the low word of `b` into word `imm & 7`.
pub fn pinsrw(a: u128, b: u128, imm: u8) -> u128 {
    let shift = 16 * u32::from(imm & 7);
    (a & !(0xffff << shift)) | ((b & 0xffff) << shift)
}
