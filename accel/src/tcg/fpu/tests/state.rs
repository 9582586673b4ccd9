//! FNINIT, FLDCW, LDMXCSR and the FXSAVE image against the host.

use super::host::{self, Area};
use crate::tcg::fpu::fxsave::{self, ImageFormat};
use crate::tcg::fpu::{self, fcw, fsw};
use crate::tcg::state::FpuState;

/// A fixed-seed xorshift generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A random but loadable image: every field random, MXCSR valid.
fn random_image(rng: &mut Rng) -> Area {
    let mut a = Area([0; 512]);
    for chunk in a.0[..416].chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes());
    }
    let mxcsr = (rng.next() as u32) & 0xffbf;
    a.0[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    // Canonical (48-bit) pointers: the host keeps 57 bits (LA57 parts), an
    // engine without LA57 has no other kind to save.
    for at in [8, 16] {
        let p = u64::from_le_bytes(a.0[at..at + 8].try_into().unwrap_or_default());
        let p = ((p << 16) as i64 >> 16) as u64;
        a.0[at..at + 8].copy_from_slice(&p.to_le_bytes());
    }
    a
}

#[test]
fn fxsave_image_matches_the_host() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let fmt = ImageFormat::new(true, true);
    for round in 0..200 {
        let img = random_image(&mut rng);
        let host = host::roundtrip(&img);
        let mut f = FpuState::default();
        fxsave::restore(&mut f, &img.0, fmt).unwrap();
        let ours = fxsave::save(&f, fmt);
        // MXCSR_MASK differs by design (no DAZ; the host reports 0xFFFF).
        assert_eq!(&ours[28..32], &fpu::MXCSR_MASK.to_le_bytes());
        assert_eq!(&ours[..28], &host.0[..28], "round {round}: header");
        assert_eq!(&ours[32..416], &host.0[32..416], "round {round}: registers");
    }
}

#[test]
fn fxsave_32bit_format_and_xmm_count() {
    let mut f = FpuState { fip: 0x1234_5678_9abc, fdp: 0xdead_beef_cafe, ..FpuState::default() };
    f.xmm[8] = 7;
    let img = fxsave::save(&f, ImageFormat::new(false, false));
    assert_eq!(&img[8..16], &[0xbc, 0x9a, 0x78, 0x56, 0, 0, 0, 0], "FIP low half, FCS zero");
    assert_eq!(&img[16..24], &[0xfe, 0xca, 0xef, 0xbe, 0, 0, 0, 0]);
    assert_eq!(ImageFormat::new(false, false).written_len(), 288);
    assert_eq!(ImageFormat::new(true, false).written_len(), 416);
    let mut g = FpuState::default();
    fxsave::restore(&mut g, &img, ImageFormat::new(true, false)).unwrap();
    assert_eq!(g.fip, 0x5678_9abc);
}

#[test]
fn fxrstor_rejects_reserved_mxcsr_bits_without_changing_state() {
    let mut f = FpuState::default();
    let mut img = [0u8; 512];
    img[24..28].copy_from_slice(&0x1_0000u32.to_le_bytes());
    img[0] = 0x12;
    let before = f;
    assert_eq!(fxsave::restore(&mut f, &img, ImageFormat::new(true, true)).unwrap_err().vector, 13);
    assert_eq!(f, before);
    img[24..28].copy_from_slice(&0x40u32.to_le_bytes());
    assert!(fxsave::restore(&mut f, &img, ImageFormat::new(true, true)).is_err(), "DAZ is reserved");
}

#[test]
fn fninit_matches_the_host() {
    let mut rng = Rng(42);
    let img = random_image(&mut rng);
    let host = host::after_fninit(&img);
    let fmt = ImageFormat::new(true, true);
    let mut f = FpuState::default();
    fxsave::restore(&mut f, &img.0, fmt).unwrap();
    fpu::fninit(&mut f);
    let ours = fxsave::save(&f, fmt);
    assert_eq!(&ours[..28], &host.0[..28]);
    assert_eq!(&ours[32..416], &host.0[32..416]);
    assert_eq!((f.fcw, f.fsw, f.ftw), (fcw::DEFAULT, 0, 0));
}

#[test]
fn fldcw_keeps_writable_bits_and_sets_the_summary() {
    let mut f = FpuState::default();
    fpu::set_fcw(&mut f, 0xffff);
    assert_eq!(f.fcw, 0x1f7f);
    fpu::set_fcw(&mut f, 0);
    assert_eq!(f.fcw, 0x0040);
    f.fsw = fsw::ZE;
    fpu::set_fcw(&mut f, 0x037b);
    assert_eq!(f.fsw, fsw::ZE | fsw::ES | fsw::B);
    fpu::fnclex(&mut f);
    assert_eq!(f.fsw, 0);
    assert!(fpu::set_mxcsr(&mut f, 0x1f80).is_ok());
    assert_eq!(fpu::set_mxcsr(&mut f, 0x1_0000).unwrap_err().vector, 13);
}
