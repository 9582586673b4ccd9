//! The 512-byte FXSAVE/FXRSTOR image (SDM Vol. 1 Tables 10-2 and 10-3).
//!
//! FCS and FDS are stored as zero and ignored on restore: the engine
//! behaves like processors with "FPU CS and DS deprecated"
//! (CPUID.(7,0):EBX[13]), so `FpuState` has no fields for them.
//!
//! XMM and MXCSR are saved and restored whatever CR4.OSFXSR says (the SDM
//! leaves that implementation-dependent; Intel processors do so).

use super::{set_fcw, set_mxcsr, MXCSR_MASK};
use crate::tcg::exception::Result;
use crate::tcg::state::FpuState;

/// Size of the image in memory.
pub const IMAGE_SIZE: usize = 512;

/// The operand must be 16-byte aligned (else #GP(0)).
pub const ALIGN: u64 = 16;

/// Which variant of the image an instruction uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageFormat {
    /// FXSAVE64/FXRSTOR64 (REX.W): 64-bit FIP and FDP, no FCS/FDS.
    pub ptr64: bool,
    /// XMM registers in the image: 16 in 64-bit mode, 8 elsewhere.
    pub xmm_count: usize,
}

impl ImageFormat {
    pub fn new(code64: bool, rex_w: bool) -> ImageFormat {
        ImageFormat { ptr64: code64 && rex_w, xmm_count: if code64 { 16 } else { 8 } }
    }

    /// How many leading bytes FXSAVE writes: the rest (the reserved tail,
    /// and the XMM8-15 area outside 64-bit mode) is left untouched, as on
    /// hardware, because software keeps its own data there (Linux's
    /// `sw_reserved` in bytes 464..511).
    pub fn written_len(self) -> usize {
        XMM_OFFSET + 16 * self.xmm_count
    }
}

const MXCSR_OFFSET: usize = 24;
const ST_OFFSET: usize = 32;
const XMM_OFFSET: usize = 160;

/// Physical register number of ST(i).
fn phys(f: &FpuState, i: usize) -> usize {
    (usize::from(f.fsw >> 11) + i) & 7
}

/// The image of `f`. Only the first `fmt.written_len()` bytes are meant to
/// be stored; the rest is zero.
pub fn save(f: &FpuState, fmt: ImageFormat) -> [u8; IMAGE_SIZE] {
    let mut img = [0u8; IMAGE_SIZE];
    img[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    img[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    img[4] = f.ftw;
    img[6..8].copy_from_slice(&(f.fop & 0x7ff).to_le_bytes());
    if fmt.ptr64 {
        img[8..16].copy_from_slice(&f.fip.to_le_bytes());
        img[16..24].copy_from_slice(&f.fdp.to_le_bytes());
    } else {
        // FIP/FDP low halves; FCS/FDS (bytes 12..14, 20..22) stay zero.
        img[8..12].copy_from_slice(&(f.fip as u32).to_le_bytes());
        img[16..20].copy_from_slice(&(f.fdp as u32).to_le_bytes());
    }
    img[MXCSR_OFFSET..MXCSR_OFFSET + 4].copy_from_slice(&f.mxcsr.to_le_bytes());
    img[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for i in 0..8 {
        let at = ST_OFFSET + 16 * i;
        img[at..at + 10].copy_from_slice(&f.st[phys(f, i)][..10]);
    }
    for (i, x) in f.xmm.iter().take(fmt.xmm_count).enumerate() {
        let at = XMM_OFFSET + 16 * i;
        img[at..at + 16].copy_from_slice(&x.to_le_bytes());
    }
    img
}

fn u16_at(img: &[u8; IMAGE_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([img[at], img[at + 1]])
}

fn u32_at(img: &[u8; IMAGE_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([img[at], img[at + 1], img[at + 2], img[at + 3]])
}

fn u64_at(img: &[u8; IMAGE_SIZE], at: usize) -> u64 {
    u64::from(u32_at(img, at)) | u64::from(u32_at(img, at + 4)) << 32
}

/// Loads `img` into `f`. A reserved MXCSR bit raises #GP(0) before
/// anything is changed.
pub fn restore(f: &mut FpuState, img: &[u8; IMAGE_SIZE], fmt: ImageFormat) -> Result<()> {
    let mut new = *f;
    set_mxcsr(&mut new, u32_at(img, MXCSR_OFFSET))?;
    // ES and B are recomputed from the flags and the new masks (as the
    // host does: an image with an unmasked flag but ES clear loads with ES set).
    new.fsw = u16_at(img, 2);
    set_fcw(&mut new, u16_at(img, 0));
    new.ftw = img[4];
    new.fop = u16_at(img, 6) & 0x7ff;
    if fmt.ptr64 {
        new.fip = u64_at(img, 8);
        new.fdp = u64_at(img, 16);
    } else {
        new.fip = u64::from(u32_at(img, 8));
        new.fdp = u64::from(u32_at(img, 16));
    }
    for i in 0..8 {
        let at = ST_OFFSET + 16 * i;
        let p = phys(&new, i);
        new.st[p] = [0; 16];
        new.st[p][..10].copy_from_slice(&img[at..at + 10]);
    }
    for i in 0..fmt.xmm_count.min(new.xmm.len()) {
        let at = XMM_OFFSET + 16 * i;
        let mut b = [0u8; 16];
        b.copy_from_slice(&img[at..at + 16]);
        new.xmm[i] = u128::from_le_bytes(b);
    }
    *f = new;
    Ok(())
}
