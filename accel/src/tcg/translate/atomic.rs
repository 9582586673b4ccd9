//! LOCKed read-modify-write instructions (and XCHG with memory, which is
//! always locked, and CMPXCHG/XADD on memory, done atomically with or
//! without LOCK): the memory update is one `CpuBus::atomic_rmw` or
//! `cmpxchg` inside a helper, which checks write access before reading;
//! the flags are then recomputed in IR from the old value the helper
//! returns. Also the register forms of CMPXCHG and XADD.

use iced_x86::{Instruction, Mnemonic, Register};

use super::alu;
use super::builder::{operand_size, IrBuilder, Loc};
use super::Lowered;
use crate::tcg::context::CpuContext;
use crate::tcg::exception::Exception;
use crate::tcg::flags::OpSize;
use crate::tcg::ir::{BinOp, Cond, Helper, StateParts, Temp, UnOp};
use crate::tcg::mmu::walker::is_canonical;
use crate::tcg::state::reg;

/// The update an atomic helper applies: `new = f(old, operand)`.
#[derive(Clone, Copy)]
enum RmwOp {
    Add = 0,
    Sub,
    And,
    Or,
    Xor,
    Xchg,
    Not,
    Neg,
}

const RMW_OPS: [RmwOp; 8] =
    [RmwOp::Add, RmwOp::Sub, RmwOp::And, RmwOp::Or, RmwOp::Xor, RmwOp::Xchg, RmwOp::Not, RmwOp::Neg];

impl RmwOp {
    fn apply(self, old: u64, v: u64) -> u64 {
        match self {
            RmwOp::Add => old.wrapping_add(v),
            RmwOp::Sub => old.wrapping_sub(v),
            RmwOp::And => old & v,
            RmwOp::Or => old | v,
            RmwOp::Xor => old ^ v,
            RmwOp::Xchg => v,
            RmwOp::Not => !old,
            RmwOp::Neg => old.wrapping_neg(),
        }
    }
}

/// Emits the atomic update of `addr`; returns the old value.
fn rmw(b: &mut IrBuilder, addr: Temp, op: RmwOp, v: Temp, size: OpSize) -> Temp {
    let mode = b.movi(size as u64 | (op as u64) << 8 | stack_bit(b, addr));
    b.call(&ATOMIC_RMW, &[addr, v, mode])
}

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    use Mnemonic as M;
    let Some(size) = operand_size(insn, 0) else { return Lowered::Unsupported };
    let m = insn.mnemonic();
    if matches!(m, M::Cmpxchg8b | M::Cmpxchg16b) {
        return Lowered::Unsupported;
    }
    let addr = match b.loc(insn, 0) {
        Some(Loc::Mem(addr)) => addr,
        // CMPXCHG and XADD without LOCK may name a register.
        Some(Loc::Reg(dst)) if !insn.has_lock_prefix() && matches!(m, M::Cmpxchg | M::Xadd) => {
            return register_form(b, insn, m, size, dst);
        }
        // LOCK on a register destination is #UD.
        _ => return Lowered::Unsupported,
    };
    match m {
        M::Add | M::Sub | M::And | M::Or | M::Xor | M::Adc | M::Sbb => {
            let Some(v) = b.read_operand(insn, 1, size) else { return Lowered::Unsupported };
            // ADC/SBB fold the carry into the operand.
            let (op, operand) = match m {
                M::Add => (RmwOp::Add, v),
                M::Adc => {
                    let c = b.carry();
                    (RmwOp::Add, b.bin(BinOp::Add, v, c))
                }
                M::Sub => (RmwOp::Sub, v),
                M::Sbb => {
                    let c = b.carry();
                    (RmwOp::Sub, b.bin(BinOp::Add, v, c))
                }
                M::And => (RmwOp::And, v),
                M::Or => (RmwOp::Or, v),
                _ => (RmwOp::Xor, v),
            };
            // The flags need the carry the helper saw: compute it again.
            let old = rmw(b, addr, op, operand, size);
            let Some((_, flags)) = alu::compute(b, m, size, old, v) else { return Lowered::Unsupported };
            flags.store(b);
        }
        M::Inc | M::Dec | M::Not | M::Neg => {
            let one = b.movi(1);
            let op = match m {
                M::Inc => RmwOp::Add,
                M::Dec => RmwOp::Sub,
                M::Not => RmwOp::Not,
                _ => RmwOp::Neg,
            };
            let old = rmw(b, addr, op, one, size);
            let Some((_, flags)) = alu::compute_unary(b, m, size, old) else { return Lowered::Unsupported };
            if let Some(f) = flags {
                f.store(b);
            }
        }
        M::Xchg | M::Xadd => {
            let Ok(r) = insn.try_op_register(1) else { return Lowered::Unsupported };
            let v = b.read_reg(r);
            let old = rmw(b, addr, if m == M::Xchg { RmwOp::Xchg } else { RmwOp::Add }, v, size);
            b.write_reg(r, old);
            if m == M::Xadd {
                let Some((_, flags)) = alu::compute(b, M::Add, size, old, v) else { return Lowered::Unsupported };
                flags.store(b);
            }
        }
        M::Cmpxchg => {
            let Ok(r) = insn.try_op_register(1) else { return Lowered::Unsupported };
            let new = b.read_reg(r);
            let expected = b.read_gpr_sized(reg::RAX, size);
            let mode = b.movi(size as u64 | stack_bit(b, addr));
            let old = b.call(&CMPXCHG, &[addr, expected, new, mode]);
            let Some((_, flags)) = alu::compute(b, M::Cmp, size, expected, old) else { return Lowered::Unsupported };
            flags.store(b);
            // Only on failure does the accumulator get the value found (so
            // a 32-bit success keeps RAX's upper half).
            let done = b.label();
            b.brcond(Cond::Eq, old, expected, done);
            b.write_gpr_sized(reg::RAX, size, old);
            b.set_label(done);
        }
        M::Bts | M::Btr | M::Btc => {
            let Some((loc, bit)) = super::bits::bit_operand(b, insn, size) else { return Lowered::Unsupported };
            let Loc::Mem(addr) = loc else { return Lowered::Unsupported };
            let one = b.movi(1);
            let mask = b.bin(BinOp::Shl, one, bit);
            let (op, operand) = match m {
                M::Bts => (RmwOp::Or, mask),
                M::Btr => (RmwOp::And, b.un(UnOp::Not, mask)),
                _ => (RmwOp::Xor, mask),
            };
            let old = rmw(b, addr, op, operand, size);
            let shifted = b.bin(BinOp::Shr, old, bit);
            super::bits::set_bit_test_cf(b, shifted);
        }
        _ => return Lowered::Unsupported,
    }
    Lowered::Next
}

/// CMPXCHG and XADD with a register destination (never locked).
fn register_form(b: &mut IrBuilder, insn: &Instruction, m: Mnemonic, size: OpSize, dst: Register) -> Lowered {
    let Ok(src) = insn.try_op_register(1) else { return Lowered::Unsupported };
    let d = b.read_reg(dst);
    let v = b.read_reg(src);
    if m == Mnemonic::Xadd {
        // SRC = DEST, then DEST = sum: with one register for both, the sum.
        let Some((sum, flags)) = alu::compute(b, Mnemonic::Add, size, d, v) else { return Lowered::Unsupported };
        b.write_reg(src, d);
        b.write_reg(dst, sum);
        flags.store(b);
        return Lowered::Next;
    }
    let acc = b.read_gpr_sized(reg::RAX, size);
    let Some((_, flags)) = alu::compute(b, Mnemonic::Cmp, size, acc, d) else { return Lowered::Unsupported };
    flags.store(b);
    // Equal: DEST = SRC; else the accumulator = DEST. Only the register
    // written has a 32-bit upper half cleared, as on the CPU.
    let (fail, done) = (b.label(), b.label());
    b.brcond(Cond::Ne, acc, d, fail);
    b.write_reg(dst, v);
    b.br(done);
    b.set_label(fail);
    b.write_gpr_sized(reg::RAX, size, d);
    b.set_label(done);
    Lowered::Next
}

fn arg(args: &[u64], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

/// `args`: linear address, operand, size | op << 8 (| [`STACK_BIT`]).
/// Returns the old value.
fn helper_atomic_rmw(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let mode = arg(args, 2);
    let size = OpSize::from_bytes((mode & 0xff) as usize).unwrap_or(OpSize::B8);
    let op = RMW_OPS[(((mode >> 8) & 0xff) as usize).min(RMW_OPS.len() - 1)];
    let v = arg(args, 1);
    let mask = size.mask();
    ctx.mem
        .atomic_rmw(ctx.state, arg(args, 0), size as usize, &mut |old| op.apply(old, v) & mask)
        .map_err(|e| stack_fault(e, mode, arg(args, 0), size as u64))
}

/// `args`: linear address, expected, new, size (| [`STACK_BIT`]). Returns
/// the value found.
fn helper_cmpxchg(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let mode = arg(args, 3);
    let size = OpSize::from_bytes((mode & 0xff) as usize).unwrap_or(OpSize::B8);
    let mask = size.mask();
    ctx.mem
        .cmpxchg(ctx.state, arg(args, 0), size as usize, arg(args, 1) & mask, arg(args, 2) & mask)
        .map_err(|e| stack_fault(e, mode, arg(args, 0), size as u64))
}

/// Set in a helper's mode word for a stack reference (RSP/RBP-based).
const STACK_BIT: u64 = 1 << 16;

pub(super) fn stack_bit(b: &IrBuilder, addr: Temp) -> u64 {
    if b.is_stack_addr(addr) {
        STACK_BIT
    } else {
        0
    }
}

/// A non-canonical stack reference of `size` bytes at `addr` is #SS(0),
/// not the MMU's #GP(0) (an alignment #GP stays one).
pub(super) fn stack_fault(e: Exception, mode: u64, addr: u64, size: u64) -> Exception {
    let non_canonical = !is_canonical(addr) || !is_canonical(addr.wrapping_add(size.max(1) - 1));
    if mode & STACK_BIT != 0 && e == Exception::gp0() && non_canonical {
        Exception::with_code(crate::tcg::exception::vector::SS, 0)
    } else {
        e
    }
}

static ATOMIC_RMW: Helper = Helper {
    name: "atomic_rmw",
    func: helper_atomic_rmw,
    may_fault: true,
    reads: StateParts::NONE,
    writes: StateParts::NONE,
};
static CMPXCHG: Helper = Helper {
    name: "cmpxchg",
    func: helper_cmpxchg,
    may_fault: true,
    reads: StateParts::NONE,
    writes: StateParts::NONE,
};
