//! x87 instructions as operations on `FpuState`: a compact descriptor
//! ([`Desc`], packed into one helper argument by the frontend) and
//! [`exec`], which runs it on already-loaded memory bytes and returns
//! what must be stored or put into RFLAGS.
//!
//! Masked responses follow the SDM: stack underflow and overflow give the
//! QNaN indefinite (C1 = 0 / 1), invalid operations the indefinite of the
//! destination format. An unmasked IE, DE or ZE leaves the destination,
//! TOP and the tags unchanged; stores to memory are also suppressed by an
//! unmasked OE or UE.

use super::convert::{self, DOUBLE, SINGLE};
use super::ops::{self, Constant, Relation};
use super::softfloat::{self as sf, Ctx, F80};
use super::stack::{self, C1};
use super::transcendental as tr;
use super::{fsw, update_summary};
use crate::tcg::state::FpuState;

/// The operation of an x87 instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Ld,
    /// `sti` selects the [`Constant`].
    LdConst,
    St,
    /// FISTTP.
    Stt,
    Add,
    Sub,
    Subr,
    Mul,
    Div,
    Divr,
    Com,
    Ucom,
    Comi,
    Ucomi,
    Tst,
    Xam,
    Chs,
    Abs,
    Sqrt,
    Rndint,
    Prem,
    Prem1,
    Scale,
    Xtract,
    F2xm1,
    Yl2x,
    Yl2xp1,
    Ptan,
    Patan,
    Sin,
    Cos,
    Sincos,
    Xch,
    Free,
    Incstp,
    Decstp,
    Nop,
    /// FCMOVcc: the condition is passed separately.
    Cmov,
}

const OPS: [Op; 38] = [
    Op::Ld,
    Op::LdConst,
    Op::St,
    Op::Stt,
    Op::Add,
    Op::Sub,
    Op::Subr,
    Op::Mul,
    Op::Div,
    Op::Divr,
    Op::Com,
    Op::Ucom,
    Op::Comi,
    Op::Ucomi,
    Op::Tst,
    Op::Xam,
    Op::Chs,
    Op::Abs,
    Op::Sqrt,
    Op::Rndint,
    Op::Prem,
    Op::Prem1,
    Op::Scale,
    Op::Xtract,
    Op::F2xm1,
    Op::Yl2x,
    Op::Yl2xp1,
    Op::Ptan,
    Op::Patan,
    Op::Sin,
    Op::Cos,
    Op::Sincos,
    Op::Xch,
    Op::Free,
    Op::Incstp,
    Op::Decstp,
    Op::Nop,
    Op::Cmov,
];

/// The memory operand's format (`None`: the operand is ST(i)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MemFmt {
    None,
    F32,
    F64,
    F80,
    I16,
    I32,
    I64,
    Bcd,
}

const FMTS: [MemFmt; 8] =
    [MemFmt::None, MemFmt::F32, MemFmt::F64, MemFmt::F80, MemFmt::I16, MemFmt::I32, MemFmt::I64, MemFmt::Bcd];

impl MemFmt {
    pub fn size(self) -> usize {
        match self {
            MemFmt::None => 0,
            MemFmt::I16 => 2,
            MemFmt::F32 | MemFmt::I32 => 4,
            MemFmt::F64 | MemFmt::I64 => 8,
            MemFmt::F80 | MemFmt::Bcd => 10,
        }
    }
}

/// One x87 instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub op: Op,
    pub fmt: MemFmt,
    /// The ST(i) operand (or the constant of `LdConst`).
    pub sti: u8,
    /// Pops after the operation (0, 1 or 2).
    pub pop: u8,
    /// Register arithmetic whose destination is ST(i) rather than ST0.
    pub to_sti: bool,
}

impl Desc {
    pub fn new(op: Op) -> Desc {
        Desc { op, fmt: MemFmt::None, sti: 0, pop: 0, to_sti: false }
    }
    pub fn pack(self) -> u64 {
        u64::from(self.op as u8)
            | u64::from(self.fmt as u8) << 8
            | u64::from(self.sti & 7) << 16
            | u64::from(self.pop & 3) << 20
            | u64::from(self.to_sti) << 24
    }
    pub fn unpack(v: u64) -> Option<Desc> {
        Some(Desc {
            op: *OPS.get((v & 0xff) as usize)?,
            fmt: *FMTS.get(((v >> 8) & 0xff) as usize)?,
            sti: ((v >> 16) & 7) as u8,
            pop: ((v >> 20) & 3) as u8,
            to_sti: (v >> 24) & 1 != 0,
        })
    }
    /// Whether the instruction writes memory.
    pub fn stores(self) -> bool {
        matches!(self.op, Op::St | Op::Stt) && self.fmt != MemFmt::None
    }
}

/// What the caller must do after [`exec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Bytes to store at the memory operand (`fmt.size()` of them).
    pub store: Option<[u8; 10]>,
    /// New ZF/PF/CF for FCOMI & co (OF, SF, AF cleared).
    pub eflags: Option<u64>,
}

/// Decodes a memory operand into an 80-bit value, exactly (an SNaN stays
/// signaling); the flag tells whether it was an m32/m64 denormal.
fn load_mem(fmt: MemFmt, b: &[u8; 10]) -> (F80, bool) {
    let mut q = [0u8; 8];
    q.copy_from_slice(&b[..8]);
    let q = u64::from_le_bytes(q);
    let int = |v: i64| (convert::from_int(v), false);
    match fmt {
        MemFmt::F32 => convert::from_ieee(q & 0xffff_ffff, SINGLE),
        MemFmt::F64 => convert::from_ieee(q, DOUBLE),
        MemFmt::I16 => int(i64::from(q as i16)),
        MemFmt::I32 => int(i64::from(q as i32)),
        MemFmt::I64 => int(q as i64),
        MemFmt::Bcd => (convert::from_bcd(b), false),
        MemFmt::F80 | MemFmt::None => (F80::from_bytes(b), false),
    }
}

/// DE for an m32/m64 denormal operand, raised after the operation: not if
/// the other operand is a NaN or unsupported, nor if the operation raised
/// IE or ZE (those take precedence, as on hardware).
fn mem_denormal(denormal: bool, other: Option<F80>, ctx: &mut Ctx) {
    let other_ok = other.is_some_and(|x| !x.is_nan() && x.class() != sf::Class::Unsupported);
    if denormal && other_ok && ctx.flags & (fsw::IE | fsw::ZE) == 0 {
        ctx.raise(fsw::DE);
    }
}

/// Encodes `x` for a memory destination (`None`: stack underflow, the
/// format's indefinite).
fn store_mem(fmt: MemFmt, x: Option<F80>, truncate: bool, ctx: &mut Ctx) -> [u8; 10] {
    let mut out = [0u8; 10];
    let q = match (fmt, x) {
        (MemFmt::F80 | MemFmt::None, x) => return x.unwrap_or(F80::INDEFINITE).to_bytes(),
        (MemFmt::Bcd, Some(x)) => return convert::to_bcd(x, ctx),
        (MemFmt::Bcd, None) => return [0, 0, 0, 0, 0, 0, 0, 0xc0, 0xff, 0xff],
        (MemFmt::F32, Some(x)) => convert::to_ieee(x, SINGLE, ctx),
        (MemFmt::F64, Some(x)) => convert::to_ieee(x, DOUBLE, ctx),
        (MemFmt::F32, None) => 0xffc0_0000,
        (MemFmt::F64, None) => 0xfff8_0000_0000_0000,
        (MemFmt::I16, x) => x.map_or(0x8000, |x| convert::to_int(x, 16, truncate, ctx)),
        (MemFmt::I32, x) => x.map_or(0x8000_0000, |x| convert::to_int(x, 32, truncate, ctx)),
        (MemFmt::I64, x) => x.map_or(1 << 63, |x| convert::to_int(x, 64, truncate, ctx)),
    };
    out[..8].copy_from_slice(&q.to_le_bytes());
    out
}

fn constant_of(i: u8) -> Constant {
    [Constant::One, Constant::L2T, Constant::L2E, Constant::Pi, Constant::Lg2, Constant::Ln2, Constant::Zero]
        [usize::from(i).min(6)]
}

/// The index of `c` for [`Desc::sti`].
pub fn constant_index(c: Constant) -> u8 {
    c as u8
}

/// Runs `d` on `f`. `mem` holds the loaded memory operand (if any);
/// `cond` is FCMOVcc's condition.
pub fn exec(f: &mut FpuState, d: Desc, mem: &[u8; 10], cond: bool) -> Outcome {
    let mut ctx = Ctx::from_fcw(f.fcw);
    let mut c1 = C1::Rounded;
    let i = usize::from(d.sti);
    let mut out = Outcome::default();
    let (mem_value, denormal) =
        if d.fmt == MemFmt::None || d.stores() { (F80::default(), false) } else { load_mem(d.fmt, mem) };
    // The second operand: memory, or ST(i).
    let src = |f: &FpuState, ctx: &mut Ctx, c1: &mut C1| {
        if d.fmt == MemFmt::None {
            stack::fetch(f, i, ctx, c1)
        } else {
            Some(mem_value)
        }
    };
    match d.op {
        Op::Ld | Op::LdConst => {
            if stack::push_overflows(f, &mut ctx, &mut c1) {
                if stack::apply(f, &ctx, c1, stack::PRE_COMPUTATION) {
                    stack::push(f, F80::INDEFINITE);
                }
                return out;
            }
            c1 = C1::Set(false);
            let mut v = if d.op == Op::LdConst {
                Some(ops::constant(constant_of(d.sti), ctx.rc))
            } else {
                src(f, &mut ctx, &mut c1)
            };
            if matches!(d.fmt, MemFmt::F32 | MemFmt::F64) {
                // Widening loads quiet SNaNs (IE) and flag denormals.
                if v.is_some_and(|x| x.class() == sf::Class::SNaN) {
                    ctx.raise(fsw::IE);
                    v = v.map(F80::quieted);
                }
                if denormal {
                    ctx.raise(fsw::DE);
                }
            }
            // Only IE stops a load: an unmasked DE still loads the value.
            if stack::apply(f, &ctx, c1, fsw::IE) {
                stack::push(f, v.unwrap_or(F80::INDEFINITE));
            }
        }
        Op::St | Op::Stt => {
            let x = stack::fetch(f, 0, &mut ctx, &mut c1);
            if d.fmt == MemFmt::None {
                if stack::apply(f, &ctx, c1, stack::PRE_COMPUTATION) {
                    stack::set_st(f, i, x.unwrap_or(F80::INDEFINITE));
                    pops(f, d.pop);
                }
                return out;
            }
            let bytes = store_mem(d.fmt, x, d.op == Op::Stt, &mut ctx);
            if stack::apply(f, &ctx, c1, stack::PRE_COMPUTATION | fsw::OE | fsw::UE) {
                out.store = Some(bytes);
                pops(f, d.pop);
            }
        }
        Op::Add | Op::Sub | Op::Subr | Op::Mul | Op::Div | Op::Divr => {
            let dst = if d.to_sti { i } else { 0 };
            let x = stack::fetch(f, dst, &mut ctx, &mut c1);
            let y = if d.to_sti { stack::fetch(f, 0, &mut ctx, &mut c1) } else { src(f, &mut ctx, &mut c1) };
            let r = match (x, y) {
                (Some(x), Some(y)) => match d.op {
                    Op::Add => sf::add(x, y, false, &mut ctx),
                    Op::Sub => sf::add(x, y, true, &mut ctx),
                    Op::Subr => sf::add(y, x, true, &mut ctx),
                    Op::Mul => sf::mul(x, y, &mut ctx),
                    Op::Div => sf::div(x, y, &mut ctx),
                    _ => sf::div(y, x, &mut ctx),
                },
                _ => F80::INDEFINITE,
            };
            mem_denormal(denormal, x, &mut ctx);
            if stack::apply(f, &ctx, c1, stack::PRE_COMPUTATION) {
                stack::set_st(f, dst, r);
                pops(f, d.pop);
            }
        }
        Op::Com | Op::Ucom | Op::Tst | Op::Comi | Op::Ucomi => {
            c1 = C1::Set(false);
            let x = stack::fetch(f, 0, &mut ctx, &mut c1);
            let y = if d.op == Op::Tst { Some(F80::zero(false)) } else { src(f, &mut ctx, &mut c1) };
            mem_denormal(denormal, x, &mut ctx);
            let quiet = matches!(d.op, Op::Ucom | Op::Ucomi);
            let rel = match (x, y) {
                (Some(x), Some(y)) => ops::compare(x, y, quiet, &mut ctx),
                _ => Relation::Unordered,
            };
            if stack::apply(f, &ctx, c1, stack::PRE_COMPUTATION) {
                if matches!(d.op, Op::Comi | Op::Ucomi) {
                    out.eflags = Some(rel.eflags());
                } else {
                    stack::set_cc(f, fsw::C0 | fsw::C2 | fsw::C3, rel.fsw_bits());
                }
                pops(f, d.pop);
            }
        }
        Op::Xam => {
            let x = stack::st(f, 0);
            let cc = ops::examine(x, stack::is_empty(f, 0)) | if x.sign() { fsw::C1 } else { 0 };
            stack::set_cc(f, fsw::CC, cc);
        }
        Op::Chs | Op::Abs | Op::Sqrt | Op::Rndint | Op::F2xm1 => {
            if d.op != Op::Sqrt && d.op != Op::Rndint && d.op != Op::F2xm1 {
                c1 = C1::Set(false);
            }
            let r = stack::fetch(f, 0, &mut ctx, &mut c1).map_or(F80::INDEFINITE, |x| match d.op {
                Op::Chs => x.negate(),
                Op::Abs => x.abs(),
                Op::Sqrt => sf::sqrt(x, &mut ctx),
                Op::Rndint => convert::round_int(x, &mut ctx),
                _ => tr::f2xm1(x, &mut ctx),
            });
            if stack::apply(f, &ctx, c1, stack::PRE_COMPUTATION) {
                stack::set_st(f, 0, r);
            }
        }
        Op::Prem | Op::Prem1 | Op::Scale => two_operand(f, d.op, &mut ctx),
        Op::Yl2x | Op::Yl2xp1 | Op::Patan => {
            let x = stack::fetch(f, 0, &mut ctx, &mut c1);
            let y = stack::fetch(f, 1, &mut ctx, &mut c1);
            let r = match (x, y) {
                (Some(x), Some(y)) if d.op == Op::Patan => tr::atan2(x, y, &mut ctx),
                (Some(x), Some(y)) => tr::yl2x(x, y, d.op == Op::Yl2xp1, &mut ctx),
                _ => F80::INDEFINITE,
            };
            if stack::apply(f, &ctx, c1, stack::PRE_COMPUTATION) {
                stack::set_st(f, 1, r);
                stack::pop(f);
            }
        }
        Op::Xtract | Op::Ptan | Op::Sincos | Op::Sin | Op::Cos => unary_push(f, d.op, &mut ctx),
        Op::Xch => {
            c1 = C1::Set(false);
            let x = stack::fetch(f, 0, &mut ctx, &mut c1);
            let y = stack::fetch(f, i, &mut ctx, &mut c1);
            if stack::apply(f, &ctx, c1, stack::PRE_COMPUTATION) {
                stack::set_st(f, 0, y.unwrap_or(F80::INDEFINITE));
                stack::set_st(f, i, x.unwrap_or(F80::INDEFINITE));
            }
        }
        Op::Free => {
            stack::free(f, i);
            pops(f, d.pop);
        }
        Op::Incstp | Op::Decstp => {
            if d.op == Op::Incstp {
                stack::incstp(f);
            } else {
                stack::decstp(f);
            }
            stack::set_cc(f, fsw::C1, 0);
        }
        Op::Nop => {}
        Op::Cmov => {
            if cond {
                c1 = C1::Keep;
                let y = stack::fetch(f, i, &mut ctx, &mut c1);
                if stack::apply(f, &ctx, c1, stack::PRE_COMPUTATION) {
                    stack::set_st(f, 0, y.unwrap_or(F80::INDEFINITE));
                }
            }
        }
    }
    out
}

fn pops(f: &mut FpuState, n: u8) {
    for _ in 0..n {
        stack::pop(f);
    }
}

/// FPREM, FPREM1, FSCALE: ST0 = op(ST0, ST1).
fn two_operand(f: &mut FpuState, op: Op, ctx: &mut Ctx) {
    let mut c1 = C1::Rounded;
    let x = stack::fetch(f, 0, ctx, &mut c1);
    let y = stack::fetch(f, 1, ctx, &mut c1);
    let (Some(x), Some(y)) = (x, y) else {
        if stack::apply(f, ctx, c1, stack::PRE_COMPUTATION) {
            stack::set_st(f, 0, F80::INDEFINITE);
        }
        return;
    };
    if op == Op::Scale {
        let r = ops::scale(x, y, ctx);
        if stack::apply(f, ctx, c1, stack::PRE_COMPUTATION) {
            stack::set_st(f, 0, r);
        }
        return;
    }
    let r = ops::remainder(x, y, op == Op::Prem1, ctx);
    let q = r.quotient;
    let cc = if q & 4 != 0 { fsw::C0 } else { 0 }
        | if q & 2 != 0 { fsw::C3 } else { 0 }
        | if q & 1 != 0 { fsw::C1 } else { 0 }
        | if r.partial { fsw::C2 } else { 0 };
    if stack::apply(f, ctx, C1::Keep, stack::PRE_COMPUTATION) {
        stack::set_st(f, 0, r.value);
        stack::set_cc(f, fsw::CC, cc);
    }
}

/// FXTRACT, FPTAN, FSINCOS (replace ST0 and push), FSIN, FCOS.
fn unary_push(f: &mut FpuState, op: Op, ctx: &mut Ctx) {
    let mut c1 = C1::Rounded;
    let Some(x) = stack::fetch(f, 0, ctx, &mut c1) else {
        if stack::apply(f, ctx, c1, stack::PRE_COMPUTATION) {
            stack::set_st(f, 0, F80::INDEFINITE);
            if !matches!(op, Op::Sin | Op::Cos) && stack::is_empty(f, 7) {
                stack::push(f, F80::INDEFINITE);
            }
        }
        return;
    };
    let trig = matches!(op, Op::Ptan | Op::Sincos | Op::Sin | Op::Cos);
    if trig {
        let in_range = tr::trig_in_range(x);
        stack::set_cc(f, fsw::C2, if in_range { 0 } else { fsw::C2 });
        if !in_range {
            return;
        }
    }
    let pushes = !matches!(op, Op::Sin | Op::Cos);
    if pushes && stack::push_overflows(f, ctx, &mut c1) {
        if stack::apply(f, ctx, c1, stack::PRE_COMPUTATION) {
            stack::set_st(f, 0, F80::INDEFINITE);
            stack::push(f, F80::INDEFINITE);
        }
        return;
    }
    let (below, top) = match op {
        Op::Xtract => ops::extract(x, ctx),
        Op::Ptan => (tr::tan(x, ctx), F80::ONE),
        Op::Sincos => tr::sin_cos(x, ctx),
        Op::Sin => (tr::sin_cos(x, ctx).0, F80::ONE),
        _ => (tr::sin_cos(x, ctx).1, F80::ONE),
    };
    // FPTAN with a NaN operand pushes the NaN too.
    let top = if op == Op::Ptan && below.is_nan() { below } else { top };
    if stack::apply(f, ctx, c1, stack::PRE_COMPUTATION) {
        stack::set_st(f, 0, below);
        if pushes {
            stack::push(f, top);
        }
    }
    update_summary(f);
}
