//! x87 data, arithmetic, comparison, transcendental and stack
//! instructions: each becomes one [`Desc`] and one helper call
//! `x87(desc, linear address or FCMOV condition, effective offset, FIP)`.
//!
//! The helper loads the memory operand itself (before changing anything)
//! and, for stores, computes on a copy of the FPU state, stores, then
//! commits, so a fault leaves the instruction without effect.
//!
//! FIP is updated by every instruction here (control instructions are in
//! `control`/`env`); FDP (and FOP, not tracked) only change on an unmasked
//! exception, as on processors with FDP_EXCPTN_ONLY.

use iced_x86::{ConditionCode, Instruction, MemorySize, Mnemonic, OpKind, Register};

use super::mem;
use crate::tcg::context::CpuContext;
use crate::tcg::exception::{Exception, Result};
use crate::tcg::flags;
use crate::tcg::fpu::exec::{self, Desc, MemFmt, Op};
use crate::tcg::fpu::ops::Constant;
use crate::tcg::fpu::{self, fsw};
use crate::tcg::ir::{Helper, StateParts};
use crate::tcg::translate::builder::IrBuilder;
use crate::tcg::translate::Lowered;

fn arg(args: &[u64], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

fn st_index(r: Register) -> Option<u8> {
    (r as u32).checked_sub(Register::ST0 as u32).filter(|&i| i < 8).map(|i| i as u8)
}

fn mem_fmt(size: MemorySize) -> Option<MemFmt> {
    Some(match size {
        MemorySize::Float32 => MemFmt::F32,
        MemorySize::Float64 => MemFmt::F64,
        MemorySize::Float80 => MemFmt::F80,
        MemorySize::Int16 => MemFmt::I16,
        MemorySize::Int32 => MemFmt::I32,
        MemorySize::Int64 => MemFmt::I64,
        MemorySize::Bcd => MemFmt::Bcd,
        _ => return None,
    })
}

/// The operation, pops and FCMOV condition of `m`.
fn op_of(m: Mnemonic) -> Option<(Op, u8, Option<ConditionCode>)> {
    use Mnemonic as M;
    use Op::*;
    let c = |cc| (Cmov, 0, Some(cc));
    Some(match m {
        M::Fld | M::Fild | M::Fbld => (Ld, 0, None),
        M::Fld1 | M::Fldl2t | M::Fldl2e | M::Fldpi | M::Fldlg2 | M::Fldln2 | M::Fldz => (LdConst, 0, None),
        M::Fst | M::Fist => (St, 0, None),
        M::Fstp | M::Fistp | M::Fbstp | M::Fstpnce => (St, 1, None),
        M::Fisttp => (Stt, 1, None),
        M::Fadd | M::Fiadd => (Add, 0, None),
        M::Fsub | M::Fisub => (Sub, 0, None),
        M::Fsubr | M::Fisubr => (Subr, 0, None),
        M::Fmul | M::Fimul => (Mul, 0, None),
        M::Fdiv | M::Fidiv => (Div, 0, None),
        M::Fdivr | M::Fidivr => (Divr, 0, None),
        M::Faddp => (Add, 1, None),
        M::Fsubp => (Sub, 1, None),
        M::Fsubrp => (Subr, 1, None),
        M::Fmulp => (Mul, 1, None),
        M::Fdivp => (Div, 1, None),
        M::Fdivrp => (Divr, 1, None),
        M::Fcom | M::Ficom => (Com, 0, None),
        M::Fcomp | M::Ficomp => (Com, 1, None),
        M::Fcompp => (Com, 2, None),
        M::Fucom => (Ucom, 0, None),
        M::Fucomp => (Ucom, 1, None),
        M::Fucompp => (Ucom, 2, None),
        M::Fcomi => (Comi, 0, None),
        M::Fcomip => (Comi, 1, None),
        M::Fucomi => (Ucomi, 0, None),
        M::Fucomip => (Ucomi, 1, None),
        M::Ftst => (Tst, 0, None),
        M::Fxam => (Xam, 0, None),
        M::Fchs => (Chs, 0, None),
        M::Fabs => (Abs, 0, None),
        M::Fsqrt => (Sqrt, 0, None),
        M::Frndint => (Rndint, 0, None),
        M::Fprem => (Prem, 0, None),
        M::Fprem1 => (Prem1, 0, None),
        M::Fscale => (Scale, 0, None),
        M::Fxtract => (Xtract, 0, None),
        M::F2xm1 => (F2xm1, 0, None),
        M::Fyl2x => (Yl2x, 0, None),
        M::Fyl2xp1 => (Yl2xp1, 0, None),
        M::Fptan => (Ptan, 0, None),
        M::Fpatan => (Patan, 0, None),
        M::Fsin => (Sin, 0, None),
        M::Fcos => (Cos, 0, None),
        M::Fsincos => (Sincos, 0, None),
        M::Fxch => (Xch, 0, None),
        M::Ffree => (Free, 0, None),
        M::Ffreep => (Free, 1, None),
        M::Fincstp => (Incstp, 0, None),
        M::Fdecstp => (Decstp, 0, None),
        // FNSETPM, FNENI, FNDISI: 287/8087 controls, no-ops since the 387.
        M::Fnop | M::Fnsetpm | M::Fneni | M::Fndisi | M::Fsetpm | M::Feni | M::Fdisi => (Nop, 0, None),
        M::Fcmovb => c(ConditionCode::b),
        M::Fcmove => c(ConditionCode::e),
        M::Fcmovbe => c(ConditionCode::be),
        M::Fcmovu => c(ConditionCode::p),
        M::Fcmovnb => c(ConditionCode::ae),
        M::Fcmovne => c(ConditionCode::ne),
        M::Fcmovnbe => c(ConditionCode::a),
        M::Fcmovnu => c(ConditionCode::np),
        _ => return None,
    })
}

/// Whether `m` is lowered here.
pub(super) fn handles(m: Mnemonic) -> bool {
    op_of(m).is_some()
}

fn constant(m: Mnemonic) -> Constant {
    match m {
        Mnemonic::Fld1 => Constant::One,
        Mnemonic::Fldl2t => Constant::L2T,
        Mnemonic::Fldl2e => Constant::L2E,
        Mnemonic::Fldpi => Constant::Pi,
        Mnemonic::Fldlg2 => Constant::Lg2,
        Mnemonic::Fldln2 => Constant::Ln2,
        _ => Constant::Zero,
    }
}

/// The descriptor of `insn`, with the FCMOV condition.
fn describe(insn: &Instruction) -> Option<(Desc, Option<ConditionCode>)> {
    let (op, pop, cond) = op_of(insn.mnemonic())?;
    let mut d = Desc::new(op);
    d.pop = pop;
    if op == Op::LdConst {
        d.sti = exec::constant_index(constant(insn.mnemonic()));
        return Some((d, None));
    }
    let regs: Vec<u8> = (0..insn.op_count())
        .filter(|&n| insn.try_op_kind(n).is_ok_and(|k| k == OpKind::Register))
        .filter_map(|n| insn.try_op_register(n).ok().and_then(st_index))
        .collect();
    if (0..insn.op_count()).any(|n| insn.try_op_kind(n).is_ok_and(|k| k == OpKind::Memory)) {
        d.fmt = mem_fmt(insn.memory_size())?;
        return Some((d, cond));
    }
    match regs.as_slice() {
        // Implicit operands: FCOMPP/FUCOMPP compare with ST1.
        [] => d.sti = if matches!(op, Op::Com | Op::Ucom) { 1 } else { 0 },
        [i] => d.sti = *i,
        // "op ST(i), ST0": the destination is ST(i).
        [i, 0] if !matches!(op, Op::Xch | Op::Cmov | Op::Com | Op::Ucom | Op::Comi | Op::Ucomi) => {
            d.sti = *i;
            d.to_sti = true;
        }
        [_, i] => d.sti = *i,
        _ => return None,
    }
    Some((d, cond))
}

/// The descriptor of the instruction encoded by `bytes` (64-bit mode);
/// lets the tests drive [`exec::exec`] with exactly what the frontend emits.
#[cfg(test)]
pub(crate) fn describe_bytes(bytes: &[u8]) -> Option<Desc> {
    let insn = iced_x86::Decoder::with_ip(64, bytes, 0, iced_x86::DecoderOptions::NONE).decode();
    describe(&insn).map(|(d, _)| d)
}

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let Some((d, cond)) = describe(insn) else { return Lowered::Unsupported };
    let desc = b.movi(d.pack());
    let (addr, off) = if d.fmt != MemFmt::None {
        let off = b.effective_offset(insn);
        (b.linear(insn.memory_segment(), off), off)
    } else if let Some(cc) = cond {
        let (c, x, y) = b.cond(cc);
        (b.setcond(c, x, y), b.movi(0))
    } else {
        (b.movi(0), b.movi(0))
    };
    let pc = b.movi(b.insn.pc);
    let h = if matches!(d.op, Op::Comi | Op::Ucomi) { &X87_COMI } else { &X87 };
    b.call(h, &[desc, addr, off, pc]);
    Lowered::Next
}

/// `args`: packed [`Desc`], linear address (FCMOV: condition), effective
/// offset (FDP), instruction offset (FIP).
fn helper_x87(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64> {
    let d = Desc::unpack(arg(args, 0)).ok_or(Exception::ud())?;
    fpu::check_pending(ctx.state)?;
    let addr = arg(args, 1);
    let size = d.fmt.size();
    let mut bytes = [0u8; 10];
    let es_before = ctx.state.fpu.fsw & fsw::ES;
    if d.stores() {
        let mut f = ctx.state.fpu;
        let out = exec::exec(&mut f, d, &bytes, false);
        if let Some(v) = out.store {
            mem::probe_write(ctx, addr, size)?;
            mem::write(ctx, addr, &v[..size])?;
        }
        ctx.state.fpu = f;
    } else {
        if size != 0 {
            mem::read(ctx, addr, &mut bytes[..size])?;
        }
        let cond = d.op == Op::Cmov && addr != 0;
        let out = exec::exec(&mut ctx.state.fpu, d, &bytes, cond);
        if let Some(bits) = out.eflags {
            flags::set_rflags_arith(ctx.state, bits);
        }
    }
    let f = &mut ctx.state.fpu;
    f.fip = arg(args, 3);
    if es_before == 0 && f.fsw & fsw::ES != 0 && size != 0 {
        f.fdp = arg(args, 2);
    }
    Ok(0)
}

static X87: Helper =
    Helper { name: "x87", func: helper_x87, may_fault: true, reads: StateParts::SYSTEM, writes: StateParts::SYSTEM };
/// FCOMI & co also write RFLAGS.
static X87_COMI: Helper = Helper {
    name: "x87_comi",
    func: helper_x87,
    may_fault: true,
    reads: StateParts::SYSTEM,
    writes: StateParts::SYSTEM.union(StateParts::FLAGS),
};
