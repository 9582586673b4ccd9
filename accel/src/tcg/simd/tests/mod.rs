//! SSE/SSE2 against the host CPU: every implemented instruction form is
//! run natively and through the whole TCG pipeline (decode, lowering,
//! helpers, interpreter) on the same random inputs (`vs_host`); unmasked
//! exceptions against the host's own #XM in a forked child (`unmasked`);
//! and the rules a host comparison can't reach (`rules`: CR0/CR4 faults,
//! alignment, precise page-crossing accesses, MASKMOVDQU, and the string
//! MOVSD/CMPSD still being string instructions).

mod machine;
mod rules;
mod unmasked;
mod vs_host;

/// xorshift64 with a fixed seed: every run sees the same cases.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An f32 bit pattern: specials (±0, ±inf, QNaN/SNaN with payloads,
    /// denormals, extremes, values at integer-conversion limits) or random.
    pub fn f32_bits(&mut self) -> u32 {
        const SPECIAL: [u32; 24] = [
            0x0000_0000, // +0
            0x8000_0000, // -0
            0x7f80_0000, // +inf
            0xff80_0000, // -inf
            0x7fc0_0000, // QNaN
            0xffc0_1234, // -QNaN with payload
            0x7f80_0001, // SNaN
            0xff81_2345, // -SNaN
            0x0000_0001, // smallest denormal
            0x807f_ffff, // largest negative denormal
            0x0080_0000, // smallest normal
            0x7f7f_ffff, // largest finite
            0x3f80_0000, // 1
            0xbf80_0000, // -1
            0x3f00_0000, // 0.5
            0x3fc0_0000, // 1.5
            0x4f00_0000, // 2^31
            0xcf00_0000, // -2^31
            0x4effffff,  // just below 2^31
            0x5f00_0000, // 2^63
            0xdf00_0000, // -2^63
            0x0040_0000, // denormal
            0x3eaa_aaab, // 1/3
            0x4b00_0001, // 2^23 + 1
        ];
        let r = self.next();
        match r & 7 {
            0..=2 => SPECIAL[(r >> 8) as usize % SPECIAL.len()],
            3 => (r >> 32) as u32 & 0x807f_ffff, // denormal or zero
            4 => ((r >> 32) as u32 & 0x8000_0000) | (((r >> 16) as u32 % 64 + 100) << 23) | (r as u32 & 0x7f_ffff), // near 1..2^40
            5 => {
                // Tiny or huge exponents: denormal results, overflow.
                let e = if r & 8 == 0 { (r >> 16) % 24 } else { 230 + (r >> 16) % 25 };
                ((r >> 32) as u32 & 0x8000_0000) | ((e as u32) << 23) | (r as u32 >> 9)
            }
            _ => (r >> 32) as u32,
        }
    }

    /// An f64 bit pattern, as [`Rng::f32_bits`].
    pub fn f64_bits(&mut self) -> u64 {
        const SPECIAL: [u64; 22] = [
            0,
            0x8000_0000_0000_0000,
            0x7ff0_0000_0000_0000,
            0xfff0_0000_0000_0000,
            0x7ff8_0000_0000_0000,
            0xfff8_0000_0000_1234,
            0x7ff0_0000_0000_0001,
            0xfff4_0000_0000_0000,
            1,
            0x800f_ffff_ffff_ffff,
            0x0010_0000_0000_0000,
            0x7fef_ffff_ffff_ffff,
            0x3ff0_0000_0000_0000,
            0xbff0_0000_0000_0000,
            0x3fe0_0000_0000_0000,
            0x41e0_0000_0000_0000, // 2^31
            0xc1e0_0000_0000_0000, // -2^31
            0x41df_ffff_ffc0_0000, // 2^31 - 1
            0x43e0_0000_0000_0000, // 2^63
            0xc3e0_0000_0000_0000, // -2^63
            0x3810_0000_0000_0000, // f32 min normal
            0x47ef_ffff_e000_0000, // f32 max
        ];
        let r = self.next();
        match r & 7 {
            0..=2 => SPECIAL[(r >> 8) as usize % SPECIAL.len()],
            3 => self.next() & 0x800f_ffff_ffff_ffff,
            4 => (r & 0x8000_0000_0000_0000) | ((((r >> 20) % 80) + 1000) << 52) | (self.next() & 0xf_ffff_ffff_ffff),
            5 => (r & 0x8000_0000_0000_0000) | ((((r >> 20) % 120) + 0x36a) << 52) | (self.next() & 0xf_ffff_ffff_ffff), // f32 edges
            _ => self.next(),
        }
    }

    /// A 128-bit operand: f32 lanes, f64 lanes, integer edge lanes or random.
    pub fn xmm(&mut self) -> u128 {
        match self.below(4) {
            0 => (0..4).fold(0u128, |acc, i| acc | (u128::from(self.f32_bits()) << (32 * i))),
            1 => u128::from(self.f64_bits()) | (u128::from(self.f64_bits()) << 64),
            2 => {
                const EDGE: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x81, 0x01];
                let mut b = [0u8; 16];
                for x in &mut b {
                    let r = self.next();
                    *x = if r & 1 == 0 { EDGE[(r >> 8) as usize % 8] } else { (r >> 16) as u8 };
                }
                u128::from_le_bytes(b)
            }
            _ => u128::from(self.next()) | (u128::from(self.next()) << 64),
        }
    }
}
