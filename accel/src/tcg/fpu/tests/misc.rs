//! FSTENV/FSAVE/FRSTOR images, FCMOV, the transcendentals (to f64
//! accuracy) and the device-availability rules.

use super::compare::{image, value, Rng};
use super::host::{self, Area};
use crate::tcg::exception::vector;
use crate::tcg::fpu::env::{self, EnvFormat};
use crate::tcg::fpu::exec::{self, Desc, Op};
use crate::tcg::fpu::fxsave::{self, ImageFormat};
use crate::tcg::fpu::softfloat::{Class, F80};
use crate::tcg::fpu::{self, fninit, fsw, DeviceClass};
use crate::tcg::state::{ctrl, FpuState, X86State};

const FMT: ImageFormat = ImageFormat { ptr64: true, xmm_count: 16 };
const PROTECTED32: EnvFormat = EnvFormat { wide: true, real: false };

fn state_of(a: &Area) -> FpuState {
    let mut f = FpuState::default();
    fxsave::restore(&mut f, &a.0, FMT).unwrap();
    f
}

/// A state with `n` random registers and random flags/condition codes.
fn random_state(rng: &mut Rng, n: usize) -> Area {
    let regs: Vec<F80> = (0..n).map(|_| value(rng, 40)).collect();
    let mut a = image(0x037f, &regs);
    let fsw = (u16::from_le_bytes([a.0[2], a.0[3]]) & fsw::TOP) | (rng.next() as u16 & 0x477f);
    a.0[2..4].copy_from_slice(&fsw.to_le_bytes());
    a
}

#[test]
fn fnsave_and_fnstenv_images_match_the_host() {
    let mut rng = Rng(21);
    for _ in 0..200 {
        let n = rng.below(9) as usize;
        let input = random_state(&mut rng, n);
        let (host_img, host_after) = host::fnsave(&input);
        let mut f = state_of(&input);
        let ours = env::store_save(&f, PROTECTED32);
        fninit(&mut f);
        // FIP (12..16) is the host's own instruction pointer; the rest,
        // tags derived from contents included, must match.
        assert_eq!(&ours[..12], &host_img[..12], "n={n}");
        assert_eq!(&ours[16..108], &host_img[16..108]);
        assert_eq!(&fxsave::save(&f, FMT)[..8], &host_after.0[..8]);

        let (host_env, host_after) = host::fnstenv(&input);
        let mut f = state_of(&input);
        let ours = env::store_env(&f, PROTECTED32);
        env::after_fstenv(&mut f);
        assert_eq!(&ours[..12], &host_env[..12]);
        assert_eq!(&ours[16..28], &host_env[16..28]);
        assert_eq!(&fxsave::save(&f, FMT)[..8], &host_after.0[..8]);
    }
}

#[test]
fn frstor_matches_the_host() {
    let mut rng = Rng(22);
    for _ in 0..200 {
        let n = rng.below(9) as usize;
        let (mut img, _) = host::fnsave(&random_state(&mut rng, n));
        // Random tags, incl. "empty" over a loaded value and vice versa.
        img[8..10].copy_from_slice(&(rng.next() as u16).to_le_bytes());
        let host = host::frstor(&img);
        let mut f = FpuState::default();
        env::load_save(&mut f, &img, PROTECTED32);
        let ours = fxsave::save(&f, FMT);
        assert_eq!(&ours[..6], &host.0[..6]);
        assert_eq!(&ours[32..160], &host.0[32..160]);
    }
}

#[test]
fn sixteen_bit_and_real_mode_environments_round_trip() {
    let f = FpuState {
        fcw: 0x0b7f,
        fsw: 0x3a21,
        ftw: 0x81,
        fop: 0x5d3,
        fip: 0x1_2345,
        fdp: 0xa_bcde,
        ..Default::default()
    };
    for fmt in [
        EnvFormat { wide: false, real: false },
        EnvFormat { wide: false, real: true },
        EnvFormat { wide: true, real: true },
        PROTECTED32,
    ] {
        let img = env::store_env(&f, fmt);
        let mut g = FpuState::default();
        env::load_env(&mut g, &img[..fmt.env_len()], fmt);
        assert_eq!((g.fcw, g.fsw, g.ftw), (f.fcw, f.fsw, f.ftw), "{fmt:?}");
        if fmt.real {
            assert_eq!((g.fip, g.fdp, g.fop), (f.fip, f.fdp, f.fop), "{fmt:?}");
        } else if !fmt.wide {
            assert_eq!((g.fip, g.fdp), (0x2345, 0xbcde));
        }
    }
}

#[test]
fn fcmov_moves_only_when_the_condition_holds() {
    let regs = [F80::ONE, F80::new(false, 0x4000, 1 << 63)];
    for cond in [false, true] {
        let mut f = state_of(&image(0x037f, &regs));
        let d = Desc { sti: 1, ..Desc::new(Op::Cmov) };
        exec::exec(&mut f, d, &[0; 10], cond);
        let st0 = crate::tcg::fpu::stack::st(&f, 0);
        assert_eq!(st0, if cond { regs[1] } else { regs[0] });
    }
    // An empty source: stack underflow, masked response.
    let mut f = state_of(&image(0x037f, &regs[..1]));
    exec::exec(&mut f, Desc { sti: 3, ..Desc::new(Op::Cmov) }, &[0; 10], true);
    assert_eq!(crate::tcg::fpu::stack::st(&f, 0), F80::INDEFINITE);
    assert_eq!(f.fsw & (fsw::IE | fsw::SF | fsw::C1), fsw::IE | fsw::SF);
}

fn to_f64(x: F80) -> f64 {
    if x.class() != Class::Normal {
        return f64::NAN;
    }
    let e = i32::from(x.exp()) - 16383;
    (x.sig as f64) * 2f64.powi(e - 63)
}

#[test]
fn transcendentals_agree_with_the_host_to_f64_accuracy() {
    let mut rng = Rng(23);
    for name in ["fsin", "fcos", "fptan", "fpatan", "fyl2x", "fyl2xp1", "f2xm1", "fsincos"] {
        let op = match name {
            "fsin" => Op::Sin,
            "fcos" => Op::Cos,
            "fptan" => Op::Ptan,
            "fpatan" => Op::Patan,
            "fyl2x" => Op::Yl2x,
            "fyl2xp1" => Op::Yl2xp1,
            "f2xm1" => Op::F2xm1,
            _ => Op::Sincos,
        };
        for _ in 0..300 {
            // Arguments in each instruction's domain: |x| < 1 for F2XM1
            // and FYL2XP1, positive for FYL2X, moderate otherwise.
            let e = match name {
                "f2xm1" | "fyl2xp1" => 0x3ffe - rng.below(20),
                _ => 0x3fff + rng.below(8) - 4,
            };
            let sign = name != "fyl2x" && rng.next() & 1 != 0;
            let x = F80::new(sign, e as u16, super::compare::sig(&mut rng));
            let y = F80::new(rng.next() & 1 != 0, 0x3fff + rng.below(4) as u16, super::compare::sig(&mut rng));
            let input = image(0x037f, &[x, y]);
            let host = host::transcendental(name, &input);
            let mut f = state_of(&input);
            exec::exec(&mut f, Desc::new(op), &[0; 10], false);
            let ours = fxsave::save(&f, FMT);
            // C1 (rounded up) depends on the last bits: not comparable.
            let fsw_tags = |a: &[u8]| (u16::from_le_bytes([a[2], a[3]]) & !fsw::C1, a[4]);
            assert_eq!(fsw_tags(&ours), fsw_tags(&host.0), "{name}({x:?}, {y:?}): FSW, tags");
            for i in 0..2 {
                let (a, b) = (F80::from_bytes(&ours[32 + 16 * i..]), F80::from_bytes(&host.0[32 + 16 * i..]));
                let (a, b) = (to_f64(a), to_f64(b));
                let tolerance = 1e-14 * b.abs().max(1e-300);
                assert!(
                    (a - b).abs() <= tolerance || (a.is_nan() && b.is_nan()),
                    "{name}({x:?}, {y:?}) ST{i}: ours {a:e} host {b:e}"
                );
            }
        }
    }
}

#[test]
fn trig_out_of_range_sets_c2_and_leaves_the_operand() {
    let big = F80::new(false, 16383 + 63, 1 << 63);
    for op in [Op::Sin, Op::Cos, Op::Ptan, Op::Sincos] {
        let input = image(0x037f, &[big]);
        let mut f = state_of(&input);
        exec::exec(&mut f, Desc::new(op), &[0; 10], false);
        assert_ne!(f.fsw & fsw::C2, 0, "{op:?}");
        assert_eq!(crate::tcg::fpu::stack::st(&f, 0), big);
        let host = host::transcendental(
            match op {
                Op::Sin => "fsin",
                Op::Cos => "fcos",
                Op::Ptan => "fptan",
                _ => "fsincos",
            },
            &input,
        );
        assert_eq!(&fxsave::save(&f, FMT)[2..5], &host.0[2..5], "{op:?}");
    }
}

#[test]
fn device_availability_follows_cr0_and_cr4() {
    let mut s = X86State::reset();
    s.cr4 |= ctrl::CR4_OSFXSR;
    let vec = |r: Result<(), crate::tcg::exception::Exception>| r.err().map(|e| e.vector);
    assert_eq!(vec(fpu::check_device(&s, DeviceClass::X87)), None);
    s.cr0 |= ctrl::CR0_TS;
    assert_eq!(vec(fpu::check_device(&s, DeviceClass::X87)), Some(vector::NM));
    assert_eq!(vec(fpu::check_device(&s, DeviceClass::Wait)), None, "WAIT needs MP too");
    assert_eq!(vec(fpu::check_device(&s, DeviceClass::Sse)), Some(vector::NM));
    s.cr0 |= ctrl::CR0_MP;
    assert_eq!(vec(fpu::check_device(&s, DeviceClass::Wait)), Some(vector::NM));
    s.cr0 = (s.cr0 & !ctrl::CR0_TS) | ctrl::CR0_EM;
    assert_eq!(vec(fpu::check_device(&s, DeviceClass::X87)), Some(vector::NM));
    assert_eq!(vec(fpu::check_device(&s, DeviceClass::Sse)), Some(vector::UD));
    assert_eq!(vec(fpu::check_device(&s, DeviceClass::Mmx)), Some(vector::UD));
    s.cr0 &= !ctrl::CR0_EM;
    s.cr4 &= !ctrl::CR4_OSFXSR;
    assert_eq!(vec(fpu::check_device(&s, DeviceClass::Sse)), Some(vector::UD));
    assert_eq!(vec(fpu::check_device(&s, DeviceClass::X87)), None);
    // #MF on a pending unmasked exception, only with CR0.NE.
    s.fpu.fsw = fsw::ZE | fsw::ES;
    assert_eq!(vec(fpu::check_pending(&s)), None);
    s.cr0 |= ctrl::CR0_NE;
    assert_eq!(vec(fpu::check_pending(&s)), Some(vector::MF));
}
