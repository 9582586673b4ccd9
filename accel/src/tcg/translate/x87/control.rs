//! FPU-state instructions: FNINIT/FINIT, FNCLEX/FCLEX, FNSTSW/FSTSW,
//! FNSTCW/FSTCW, FLDCW, FWAIT, EMMS, LDMXCSR/STMXCSR, FXSAVE(64) and
//! FXRSTOR(64).
//!
//! Values that go to or come from memory in 2/4-byte pieces move with IR
//! loads and stores; the helpers only touch the FPU state. FXSAVE and
//! FXRSTOR move the 512-byte image themselves (see `mem` for why that is
//! precise).

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::mem;
use crate::tcg::context::CpuContext;
use crate::tcg::exception::{Exception, Result};
use crate::tcg::flags::OpSize;
use crate::tcg::fpu::{self, fxsave, DeviceClass};
use crate::tcg::ir::{Helper, StateParts};
use crate::tcg::state::hflags;
use crate::tcg::translate::builder::IrBuilder;
use crate::tcg::translate::Lowered;

fn arg(args: &[u64], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

/// Which control value `READ_CTRL` returns.
const READ_FSW: u64 = 0;
const READ_FCW: u64 = 1;
const READ_MXCSR: u64 = 2;

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    use Mnemonic as M;
    let m = insn.mnemonic();
    let wait = matches!(m, M::Finit | M::Fclex | M::Fstsw | M::Fstcw);
    let w = b.movi(u64::from(wait));
    match m {
        M::Fninit | M::Finit => {
            b.call(&FNINIT, &[w]);
        }
        M::Fnclex | M::Fclex => {
            b.call(&FNCLEX, &[w]);
        }
        M::Wait => {
            b.call(&FWAIT, &[]);
        }
        M::Emms => {
            b.call(&EMMS, &[]);
        }
        M::Fnstsw | M::Fstsw | M::Fnstcw | M::Fstcw | M::Stmxcsr => {
            let (which, size) = match m {
                M::Fnstsw | M::Fstsw => (READ_FSW, OpSize::B2),
                M::Fnstcw | M::Fstcw => (READ_FCW, OpSize::B2),
                _ => (READ_MXCSR, OpSize::B4),
            };
            let which = b.movi(which);
            let v = b.call(&READ_CTRL, &[which, w]);
            if insn.try_op_kind(0).is_ok_and(|k| k == OpKind::Memory) {
                let addr = b.ea(insn);
                b.store(v, addr, size);
            } else {
                b.write_reg(Register::AX, v);
            }
        }
        M::Fldcw => {
            let addr = b.ea(insn);
            let v = b.load(addr, OpSize::B2);
            b.call(&FLDCW, &[v]);
        }
        M::Ldmxcsr => {
            let addr = b.ea(insn);
            let v = b.load(addr, OpSize::B4);
            b.call(&LDMXCSR, &[v]);
        }
        M::Fxsave | M::Fxsave64 | M::Fxrstor | M::Fxrstor64 => {
            let rex_w = matches!(insn.code(), Code::Fxsave64_m512byte | Code::Fxrstor64_m512byte);
            let addr = b.ea(insn);
            let w = b.movi(u64::from(rex_w));
            let h = if matches!(m, M::Fxsave | M::Fxsave64) { &FXSAVE } else { &FXRSTOR };
            b.call(h, &[addr, w]);
        }
        _ => return Lowered::Unsupported,
    }
    Lowered::Next
}

/// `args`: wait form (FINIT) or not (FNINIT).
fn helper_fninit(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64> {
    if arg(args, 0) != 0 {
        fpu::check_pending(ctx.state)?;
    }
    fpu::fninit(&mut ctx.state.fpu);
    Ok(0)
}

fn helper_fnclex(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64> {
    if arg(args, 0) != 0 {
        fpu::check_pending(ctx.state)?;
    }
    fpu::fnclex(&mut ctx.state.fpu);
    Ok(0)
}

fn helper_fwait(ctx: &mut CpuContext<'_>, _: &[u64]) -> Result<u64> {
    fpu::check_pending(ctx.state)?;
    Ok(0)
}

fn helper_emms(ctx: &mut CpuContext<'_>, _: &[u64]) -> Result<u64> {
    fpu::check_pending(ctx.state)?;
    fpu::emms(&mut ctx.state.fpu);
    Ok(0)
}

/// `args`: which value (`READ_*`), wait form. STMXCSR is an SSE
/// instruction: its availability (OSFXSR, EM, TS) is checked here.
fn helper_read_ctrl(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64> {
    let f = &ctx.state.fpu;
    match arg(args, 0) {
        READ_MXCSR => {
            fpu::check_device(ctx.state, DeviceClass::Sse)?;
            Ok(u64::from(ctx.state.fpu.mxcsr))
        }
        which => {
            if arg(args, 1) != 0 {
                fpu::check_pending(ctx.state)?;
            }
            Ok(u64::from(if which == READ_FCW { f.fcw } else { f.fsw }))
        }
    }
}

fn helper_fldcw(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64> {
    fpu::check_pending(ctx.state)?;
    fpu::set_fcw(&mut ctx.state.fpu, arg(args, 0) as u16);
    Ok(0)
}

fn helper_ldmxcsr(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64> {
    fpu::check_device(ctx.state, DeviceClass::Sse)?;
    fpu::set_mxcsr(&mut ctx.state.fpu, arg(args, 0) as u32)?;
    Ok(0)
}

/// The image format and a #GP(0) for a misaligned operand.
fn image_format(ctx: &CpuContext<'_>, addr: u64, rex_w: u64) -> Result<fxsave::ImageFormat> {
    if !addr.is_multiple_of(fxsave::ALIGN) {
        return Err(Exception::gp0());
    }
    Ok(fxsave::ImageFormat::new(ctx.state.hflags & hflags::CS64 != 0, rex_w != 0))
}

/// `args`: linear address, REX.W.
fn helper_fxsave(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64> {
    let addr = arg(args, 0);
    let fmt = image_format(ctx, addr, arg(args, 1))?;
    let img = fxsave::save(&ctx.state.fpu, fmt);
    let len = fmt.written_len();
    mem::probe_write(ctx, addr, len)?;
    mem::write(ctx, addr, &img[..len])?;
    Ok(0)
}

/// `args`: linear address, REX.W. The image is read completely and checked
/// before the state changes.
fn helper_fxrstor(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64> {
    let addr = arg(args, 0);
    let fmt = image_format(ctx, addr, arg(args, 1))?;
    let mut img = [0u8; fxsave::IMAGE_SIZE];
    mem::read(ctx, addr, &mut img)?;
    fxsave::restore(&mut ctx.state.fpu, &img, fmt)?;
    Ok(0)
}

const fn helper(name: &'static str, func: crate::tcg::ir::HelperFn) -> Helper {
    Helper { name, func, may_fault: true, reads: StateParts::SYSTEM, writes: StateParts::SYSTEM }
}

static FNINIT: Helper = helper("x87_fninit", helper_fninit);
static FNCLEX: Helper = helper("x87_fnclex", helper_fnclex);
static FWAIT: Helper = helper("x87_fwait", helper_fwait);
static EMMS: Helper = helper("mmx_emms", helper_emms);
static READ_CTRL: Helper = helper("x87_read_ctrl", helper_read_ctrl);
static FLDCW: Helper = helper("x87_fldcw", helper_fldcw);
static LDMXCSR: Helper = helper("sse_ldmxcsr", helper_ldmxcsr);
static FXSAVE: Helper = helper("fxsave", helper_fxsave);
static FXRSTOR: Helper = helper("fxrstor", helper_fxrstor);
