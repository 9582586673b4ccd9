//! The FSTENV/FLDENV environment and the FSAVE/FRSTOR image (SDM Vol. 1
//! Figures 8-9 to 8-12): 14 bytes with a 16-bit operand size, 28 with a
//! 32/64-bit one, in a real-mode or protected-mode layout; FSAVE adds the
//! eight registers (10 bytes each, ST0 first).
//!
//! FCS/FDS are stored as zero (see `fxsave`); unused upper halves of the
//! 32-bit layout are stored as 0xFFFF, as the host does.

use super::softfloat::F80;
use super::stack;
use super::{fcw, set_fcw};
use crate::tcg::state::FpuState;

/// Which layout an instruction uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvFormat {
    /// 32-bit operand size (28-byte environment) rather than 16-bit.
    pub wide: bool,
    /// Real-address or virtual-8086 mode layout.
    pub real: bool,
}

impl EnvFormat {
    pub fn env_len(self) -> usize {
        if self.wide {
            28
        } else {
            14
        }
    }
    /// FSAVE/FRSTOR size.
    pub fn save_len(self) -> usize {
        self.env_len() + 80
    }
}

/// The environment of `f` (`fmt.env_len()` bytes are meaningful).
pub fn store_env(f: &FpuState, fmt: EnvFormat) -> [u8; 28] {
    let tags = stack::full_tags(f);
    let (ip, dp, op) = (f.fip as u32, f.fdp as u32, u32::from(f.fop & 0x7ff));
    let words: [u32; 7] = if fmt.real {
        [
            u32::from(f.fcw),
            u32::from(f.fsw),
            u32::from(tags),
            ip & 0xffff,
            ((ip >> 16) << 12) | op,
            dp & 0xffff,
            (dp >> 16) << 12,
        ]
    } else {
        [u32::from(f.fcw), u32::from(f.fsw), u32::from(tags), ip, op << 16, dp, 0]
    };
    let mut out = [0u8; 28];
    if fmt.wide {
        for (k, w) in words.iter().enumerate() {
            // The unused upper halves of the 16-bit fields read as 0xFFFF.
            let w = if k < 3 || (k == 6 && !fmt.real) { w | 0xffff_0000 } else { *w };
            out[4 * k..4 * k + 4].copy_from_slice(&w.to_le_bytes());
        }
    } else {
        for (k, w) in words.iter().enumerate() {
            let w = match (k, fmt.real) {
                // 16-bit real layout: IP/DP bits 19..16 sit in bits 15..12.
                (4, true) => (w & 0xf000) | (w & 0x7ff),
                (6, true) => w & 0xf000,
                (4, false) => 0, // FCS
                (6, false) => 0, // FDS
                _ => *w,
            };
            out[2 * k..2 * k + 2].copy_from_slice(&(w as u16).to_le_bytes());
        }
    }
    out
}

/// Loads an environment (FLDENV and the first part of FRSTOR).
pub fn load_env(f: &mut FpuState, b: &[u8], fmt: EnvFormat) {
    let word = |k: usize| -> u32 {
        if fmt.wide {
            let at = 4 * k;
            b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        } else {
            let at = 2 * k;
            b.get(at..at + 2).map_or(0, |s| u32::from(u16::from_le_bytes([s[0], s[1]])))
        }
    };
    f.fsw = word(1) as u16;
    set_fcw(f, word(0) as u16);
    f.ftw = stack::abridge(word(2) as u16);
    if fmt.real {
        let hi = |w: u32| if fmt.wide { (w >> 12) & 0xffff } else { (w >> 12) & 0xf };
        f.fip = u64::from((word(3) & 0xffff) | (hi(word(4)) << 16));
        f.fop = (word(4) & 0x7ff) as u16;
        f.fdp = u64::from((word(5) & 0xffff) | (hi(word(6)) << 16));
    } else {
        let mask = if fmt.wide { u32::MAX } else { 0xffff };
        f.fip = u64::from(word(3) & mask);
        f.fop = if fmt.wide { ((word(4) >> 16) & 0x7ff) as u16 } else { 0 };
        f.fdp = u64::from(word(5) & mask);
    }
}

/// The FSAVE image (`fmt.save_len()` bytes are meaningful).
pub fn store_save(f: &FpuState, fmt: EnvFormat) -> [u8; 108] {
    let mut out = [0u8; 108];
    let n = fmt.env_len();
    out[..n].copy_from_slice(&store_env(f, fmt)[..n]);
    for i in 0..8 {
        out[n + 10 * i..n + 10 * i + 10].copy_from_slice(&stack::st(f, i).to_bytes());
    }
    out
}

/// Loads an FSAVE image (FRSTOR).
pub fn load_save(f: &mut FpuState, b: &[u8], fmt: EnvFormat) {
    load_env(f, b, fmt);
    let n = fmt.env_len();
    for i in 0..8 {
        let v = b.get(n + 10 * i..n + 10 * i + 10).map_or(F80::default(), F80::from_bytes);
        let p = stack::phys(f, i);
        f.st[p] = [0; 16];
        f.st[p][..10].copy_from_slice(&v.to_bytes());
    }
}

/// What FNSTENV does to the state after storing it: all exceptions masked.
pub fn after_fstenv(f: &mut FpuState) {
    set_fcw(f, f.fcw | fcw::MASKS);
}
