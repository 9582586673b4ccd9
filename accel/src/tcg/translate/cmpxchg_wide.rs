//! CMPXCHG8B / CMPXCHG16B: compare EDX:EAX (RDX:RAX) with the memory
//! operand and store ECX:EBX (RCX:RBX) if equal, else load the operand into
//! EDX:EAX. Always done atomically (with or without LOCK: a locked
//! implementation is a valid unlocked one). Only ZF changes among the flags.

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::builder::IrBuilder;
use super::Lowered;
use crate::tcg::context::CpuContext;
use crate::tcg::exception::Exception;
use crate::tcg::ir::{BinOp, Helper, StateParts};
use crate::tcg::state::{reg, rflags};

pub(super) fn claims(insn: &Instruction) -> bool {
    matches!(insn.mnemonic(), Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b)
}

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    if insn.try_op_kind(0).ok() != Some(OpKind::Memory) {
        return Lowered::Unsupported;
    }
    let addr = b.ea(insn);
    let helper = if insn.mnemonic() == Mnemonic::Cmpxchg16b { &CMPXCHG16B } else { &CMPXCHG8B };
    // The helper commits RAX/RDX itself (after its only fault point) and
    // returns ZF as 0/1.
    // A non-canonical RSP/RBP-based operand is #SS (see `atomic`).
    let mode = b.movi(super::atomic::stack_bit(b, addr));
    let zf = b.call(helper, &[addr, mode]);
    let f = b.rflags();
    let cleared = b.bini(BinOp::And, f, !rflags::ZF);
    let zf_bit = b.bini(BinOp::Shl, zf, rflags::ZF.trailing_zeros().into());
    let v = b.bin(BinOp::Or, cleared, zf_bit);
    b.set_rflags(v);
    Lowered::Next
}

fn arg0(args: &[u64]) -> u64 {
    args.first().copied().unwrap_or(0)
}

fn helper_cmpxchg8b(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let g = &ctx.state.gpr;
    let expected = (g[reg::RDX] & 0xffff_ffff) << 32 | (g[reg::RAX] & 0xffff_ffff);
    let new = (g[reg::RCX] & 0xffff_ffff) << 32 | (g[reg::RBX] & 0xffff_ffff);
    let old = ctx
        .mem
        .cmpxchg(ctx.state, arg0(args), 8, expected, new)
        .map_err(|e| super::atomic::stack_fault(e, args.get(1).copied().unwrap_or(0), arg0(args), 8))?;
    if old == expected {
        return Ok(1);
    }
    ctx.state.gpr[reg::RAX] = old & 0xffff_ffff;
    ctx.state.gpr[reg::RDX] = old >> 32;
    Ok(0)
}

fn helper_cmpxchg16b(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let g = &ctx.state.gpr;
    let expected = u128::from(g[reg::RDX]) << 64 | u128::from(g[reg::RAX]);
    let new = u128::from(g[reg::RCX]) << 64 | u128::from(g[reg::RBX]);
    let old = ctx.mem.cmpxchg16(ctx.state, arg0(args), expected, new).map_err(|e| {
        // The alignment #GP comes before the canonical check's #SS.
        let mode = if arg0(args).is_multiple_of(16) { args.get(1).copied().unwrap_or(0) } else { 0 };
        super::atomic::stack_fault(e, mode, arg0(args), 16)
    })?;
    if old == expected {
        return Ok(1);
    }
    ctx.state.gpr[reg::RAX] = old as u64;
    ctx.state.gpr[reg::RDX] = (old >> 64) as u64;
    Ok(0)
}

static CMPXCHG8B: Helper = Helper {
    name: "cmpxchg8b",
    func: helper_cmpxchg8b,
    may_fault: true,
    reads: StateParts::GPRS.union(StateParts::SYSTEM),
    writes: StateParts::GPRS,
};
static CMPXCHG16B: Helper = Helper {
    name: "cmpxchg16b",
    func: helper_cmpxchg16b,
    may_fault: true,
    reads: StateParts::GPRS.union(StateParts::SYSTEM),
    writes: StateParts::GPRS,
};
