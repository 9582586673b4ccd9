//! A small deterministic generator (xorshift64*, seeded through splitmix64
//! so that neighbouring seeds give unrelated streams).

#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Uniform in `lo..=hi` (`lo` when the range is empty).
    pub(crate) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        let span = hi.wrapping_sub(lo) as u64;
        lo.wrapping_add(self.below(span.saturating_add(1)) as i64)
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        items.get(self.below(items.len() as u64) as usize).copied()
    }

    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// A 64-bit value biased towards the edges arithmetic gets wrong.
    pub(crate) fn value(&mut self) -> u64 {
        let bits = [8, 16, 32, 64, 64, 64][self.below(6) as usize];
        self.value_bits(bits)
    }

    /// A value of `bits` (8, 16, 32 or 64) bits, sign-extended to 64, biased
    /// towards the edges of that width.
    pub(crate) fn value_bits(&mut self, bits: u32) -> u64 {
        let bits = bits.clamp(1, 64);
        let v = match self.below(10) {
            0 => 0,
            1 => self.below(17),
            2 => u64::MAX - self.below(3),
            3 => 1 << self.below(u64::from(bits)),
            4 => {
                let top = 1u64 << (bits - 1);
                top - self.below(2)
            }
            _ => self.next(),
        };
        let shift = 64 - bits;
        (((v << shift) as i64) >> shift) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_sensitive() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next()
            })
            .collect();
        let c = Rng::new(8).next();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
        let mut r = Rng::new(0);
        assert!((0..1000).all(|_| (-3..=3).contains(&r.range(-3, 3))));
        assert_eq!(r.range(5, 5), 5);
        assert_eq!(r.below(0), 0);
        assert_eq!(r.pick::<u8>(&[]), None);
    }
}
