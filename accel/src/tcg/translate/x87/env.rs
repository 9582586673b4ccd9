//! FNSTENV/FLDENV and FNSAVE/FRSTOR: the environment (14 or 28 bytes)
//! and the full state (94 or 108 bytes), in the real or protected layout
//! chosen at translation time from the mode (part of the TB key).

use iced_x86::{Instruction, Mnemonic};

use super::mem;
use crate::tcg::context::CpuContext;
use crate::tcg::exception::Result;
use crate::tcg::fpu::env::{self, EnvFormat};
use crate::tcg::fpu::{self, fninit};
use crate::tcg::ir::{Helper, StateParts};
use crate::tcg::state::hflags;
use crate::tcg::translate::builder::IrBuilder;
use crate::tcg::translate::Lowered;

const STENV: u64 = 0;
const LDENV: u64 = 1;
const SAVE: u64 = 2;
const RSTOR: u64 = 3;

fn arg(args: &[u64], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

pub(super) fn handles(m: Mnemonic) -> bool {
    matches!(m, Mnemonic::Fnstenv | Mnemonic::Fstenv | Mnemonic::Fldenv | Mnemonic::Fnsave | Mnemonic::Fsave)
        || m == Mnemonic::Frstor
}

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    use Mnemonic as M;
    let kind = match insn.mnemonic() {
        M::Fnstenv | M::Fstenv => STENV,
        M::Fldenv => LDENV,
        M::Fnsave | M::Fsave => SAVE,
        M::Frstor => RSTOR,
        _ => return Lowered::Unsupported,
    };
    // 14/94-byte forms have a 16-bit operand size.
    let wide = !matches!(insn.memory_size().size(), 14 | 94);
    let real = b.hflags & hflags::PE == 0 || b.hflags & hflags::VM86 != 0;
    let fmt = u64::from(wide) | u64::from(real) << 1;
    let wait = u64::from(matches!(insn.mnemonic(), M::Fstenv | M::Fsave | M::Fldenv | M::Frstor));
    let addr = b.ea(insn);
    let kind = b.movi(kind | wait << 8);
    let fmt = b.movi(fmt);
    b.call(&X87_ENV, &[kind, addr, fmt]);
    Lowered::Next
}

/// `args`: kind (low byte) | wait form << 8, linear address, format bits
/// (1: 32-bit operand size, 2: real-mode layout).
fn helper_env(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64> {
    let kind = arg(args, 0);
    if kind >> 8 != 0 {
        fpu::check_pending(ctx.state)?;
    }
    let addr = arg(args, 1);
    let fmt = EnvFormat { wide: arg(args, 2) & 1 != 0, real: arg(args, 2) & 2 != 0 };
    match kind & 0xff {
        STENV => {
            let img = env::store_env(&ctx.state.fpu, fmt);
            let n = fmt.env_len();
            mem::probe_write(ctx, addr, n)?;
            mem::write(ctx, addr, &img[..n])?;
            env::after_fstenv(&mut ctx.state.fpu);
        }
        SAVE => {
            let img = env::store_save(&ctx.state.fpu, fmt);
            let n = fmt.save_len();
            mem::probe_write(ctx, addr, n)?;
            mem::write(ctx, addr, &img[..n])?;
            fninit(&mut ctx.state.fpu);
        }
        LDENV | RSTOR => {
            let mut img = [0u8; 108];
            let n = if kind & 0xff == LDENV { fmt.env_len() } else { fmt.save_len() };
            mem::read(ctx, addr, &mut img[..n])?;
            if kind & 0xff == LDENV {
                env::load_env(&mut ctx.state.fpu, &img[..n], fmt);
            } else {
                env::load_save(&mut ctx.state.fpu, &img[..n], fmt);
            }
        }
        _ => {}
    }
    Ok(0)
}

static X87_ENV: Helper = Helper {
    name: "x87_env",
    func: helper_env,
    may_fault: true,
    reads: StateParts::SYSTEM,
    writes: StateParts::SYSTEM,
};
