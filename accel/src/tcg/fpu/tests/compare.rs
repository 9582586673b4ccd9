//! The comparison driver: one instruction on one x87 state, natively and
//! through the frontend's descriptor + `exec`, compared bit for bit (FCW,
//! FSW with TOP and condition codes, tags, the eight registers, the
//! memory operand and, for FCOMI & co, ZF/PF/CF/OF/SF/AF).

use super::host::{self, Area, HostOp};
use crate::tcg::fpu::exec::{self, MemFmt};
use crate::tcg::fpu::fxsave::{self, ImageFormat};
use crate::tcg::fpu::softfloat::{BIAS, F80};
use crate::tcg::state::{rflags as rf, FpuState};
use crate::tcg::translate::x87::arith::describe_bytes;

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
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random significand with rounding-relevant structure: plain random,
/// runs of ones or zeros in the low bits, or few bits set.
pub fn sig(rng: &mut Rng) -> u64 {
    let r = rng.next();
    let s = match rng.below(6) {
        0 => r | 0xffff_ffff,
        1 => r & !0xffff_ffff,
        2 => r | ((1 << rng.below(64)) - 1),
        3 => 1 << rng.below(64),
        4 => r & !((1 << rng.below(64)) - 1),
        _ => r,
    };
    s | 1 << 63
}

/// A random 80-bit value: mostly normals near 1.0 (`spread` exponents
/// either side), and every special class now and then.
pub fn value(rng: &mut Rng, spread: u64) -> F80 {
    let sign = rng.next() & 1 != 0;
    match rng.below(40) {
        0 => F80::zero(sign),
        1 => F80::inf(sign),
        2 => F80::new(sign, 0x7fff, sig(rng) | 1 << 62),
        3 => F80::new(sign, 0x7fff, (sig(rng) & !(1 << 62)) | 1),
        4 => F80::new(sign, 0, sig(rng) >> (1 + rng.below(63))),
        5 => F80::new(sign, 0, sig(rng)),
        6 => F80::new(sign, 1 + rng.below(3) as u16, sig(rng)),
        7 => F80::new(sign, 0x7ffe - rng.below(3) as u16, sig(rng)),
        8 => F80::new(sign, 1 + rng.below(0x7ffd) as u16, sig(rng) & !(1 << 63)),
        _ => {
            let e = BIAS as u64 + rng.below(2 * spread + 1) - spread;
            F80::new(sign, e as u16, sig(rng))
        }
    }
}

/// `x` with an exponent close to `near`'s (for cancellation and FPREM).
pub fn value_near(rng: &mut Rng, near: F80, spread: u64) -> F80 {
    if rng.below(4) == 0 || !matches!(near.exp(), 1..=0x7ffe) {
        return value(rng, spread);
    }
    let d = rng.below(2 * spread + 1) as i64 - spread as i64;
    let e = (i64::from(near.exp()) + d).clamp(1, 0x7ffe) as u16;
    let s = if rng.below(3) == 0 { near.sig ^ (rng.next() >> rng.below(64)) } else { sig(rng) };
    F80::new(rng.next() & 1 != 0, e, s | 1 << 63)
}

/// FCW with all exceptions masked, precision `pc` (0, 2, 3), rounding `rc`.
pub fn fcw(pc: u16, rc: u16) -> u16 {
    0x7f | pc << 8 | rc << 10
}

/// The state image: FCW, TOP = 3, ST0.. = `regs` (valid), the others empty.
pub fn image(fcw: u16, regs: &[F80]) -> Area {
    let mut a = Area([0; 512]);
    let top = 3u16;
    a.0[0..2].copy_from_slice(&fcw.to_le_bytes());
    a.0[2..4].copy_from_slice(&(top << 11).to_le_bytes());
    let mut tags = 0u8;
    for (i, r) in regs.iter().enumerate() {
        tags |= 1 << ((usize::from(top) + i) & 7);
        a.0[32 + 16 * i..42 + 16 * i].copy_from_slice(&r.to_bytes());
    }
    a.0[4] = tags;
    a.0[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    a
}

/// Runs `op` both ways; a description of the first difference.
pub fn check(op: &HostOp, img: &Area, mem: [u8; 16]) -> Result<(), String> {
    let mut host_mem = mem;
    let (host, flags) = (op.run)(img, &mut host_mem);
    let d = describe_bytes(op.bytes).ok_or(format!("{}: no descriptor", op.name))?;
    let fmt = ImageFormat::new(true, true);
    let mut f = FpuState::default();
    fxsave::restore(&mut f, &img.0, fmt).map_err(|e| format!("restore: {e:?}"))?;
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&mem[..10]);
    let out = exec::exec(&mut f, d, &bytes, false);
    let mut our_mem = mem;
    if let Some(s) = out.store {
        let n = d.fmt.size();
        our_mem[..n].copy_from_slice(&s[..n]);
    }
    let ours = fxsave::save(&f, fmt);
    let regs = |a: &[u8]| -> Vec<String> {
        (0..8)
            .map(|i| {
                format!("{:04x}:{:016x}", F80::from_bytes(&a[32 + 16 * i..]).se, F80::from_bytes(&a[32 + 16 * i..]).sig)
            })
            .collect()
    };
    let ctx = || {
        format!(
            "{}: fcw {:04x} in {:?} mem {:02x?}\n  host fsw {:04x} ftw {:02x} {:?} mem {:02x?}\n  ours fsw {:04x} ftw {:02x} {:?} mem {:02x?}",
            op.name,
            u16::from_le_bytes([img.0[0], img.0[1]]),
            regs(&img.0)[..3].to_vec(),
            &mem[..d.fmt.size().max(1)],
            u16::from_le_bytes([host.0[2], host.0[3]]),
            host.0[4],
            regs(&host.0)[..3].to_vec(),
            &host_mem[..d.fmt.size().max(1)],
            u16::from_le_bytes([ours[2], ours[3]]),
            ours[4],
            regs(&ours)[..3].to_vec(),
            &our_mem[..d.fmt.size().max(1)],
        )
    };
    if ours[..6] != host.0[..6] || ours[32..160] != host.0[32..160] || (d.fmt != MemFmt::None && our_mem != host_mem) {
        return Err(ctx());
    }
    if let Some(e) = out.eflags {
        let mask = rf::ZF | rf::PF | rf::CF | rf::OF | rf::SF | rf::AF;
        if e != flags & mask {
            return Err(format!("{} eflags host {:x} ours {:x}", ctx(), flags & mask, e));
        }
    }
    Ok(())
}

/// Runs `n` random cases of each op in `names` under every precision and
/// rounding mode; `mk` builds the registers and memory of a case.
/// `X87_SOAK=k` in the environment runs k times as many cases.
pub fn sweep(names: &[&str], n: usize, seed: u64, mk: impl Fn(&mut Rng) -> (Vec<F80>, [u8; 16])) {
    sweep_masks(names, n, seed, 0, mk)
}

/// [`sweep`] with exception masks drawn at random from `masks` (bits not
/// in it always masked).
pub fn sweep_masks(names: &[&str], n: usize, seed: u64, masks: u16, mk: impl Fn(&mut Rng) -> (Vec<F80>, [u8; 16])) {
    let n = n * std::env::var("X87_SOAK").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut failures = Vec::new();
    for name in names {
        let op = host::op(name);
        let mut rng = Rng(seed ^ (name.len() as u64 * 0x9e37_79b9));
        for pc in [0, 2, 3] {
            for rc in 0..4 {
                for _ in 0..n {
                    let (regs, mem) = mk(&mut rng);
                    let unmask = rng.next() as u16 & masks;
                    if let Err(e) = check(op, &image(fcw(pc, rc) & !unmask, &regs), mem) {
                        failures.push(e);
                    }
                }
            }
        }
    }
    if !failures.is_empty() {
        let total = failures.len();
        failures.truncate(6);
        panic!("{total} mismatches, first ones:\n{}", failures.join("\n"));
    }
}
