//! Near control transfers: JMP, Jcc, CALL, RET, LOOP/LOOPE/LOOPNE,
//! JCXZ/JECXZ/JRCXZ. Far forms go to `system` (segmentation helpers).
//! Direct targets end the block with `GotoTb` (chainable); indirect ones
//! store RIP and exit for a lookup.

use iced_x86::{Code, Instruction, Mnemonic, OpKind};

use super::builder::IrBuilder;
use super::Lowered;
use crate::tcg::flags::OpSize;
use crate::tcg::ir::{BinOp, Cond, ExitKind};
use crate::tcg::state::reg;

/// Operand size of a near CALL/RET/JMP: what RIP is truncated to and how
/// wide the pushed return address is.
fn near_size(b: &IrBuilder, insn: &Instruction) -> OpSize {
    let step = insn.stack_pointer_increment().unsigned_abs() as usize;
    match insn.mnemonic() {
        Mnemonic::Call => OpSize::from_bytes(step),
        Mnemonic::Ret => match insn.code() {
            Code::Retnw | Code::Retnw_imm16 => Some(OpSize::B2),
            Code::Retnd | Code::Retnd_imm16 => Some(OpSize::B4),
            _ => Some(OpSize::B8),
        },
        _ => None,
    }
    .unwrap_or(if b.code64() { OpSize::B8 } else { OpSize::B4 })
}

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    use Mnemonic as M;
    if insn.is_jmp_far() || insn.is_jmp_far_indirect() || insn.is_call_far() || insn.is_call_far_indirect() {
        return super::system::lower_far(b, insn);
    }
    let next = b.insn.next_pc;
    match insn.mnemonic() {
        M::Jmp => {
            if insn.try_op_kind(0).is_ok_and(is_near_branch) {
                b.goto_tb(0, insn.near_branch_target());
            } else {
                let size = operand_width(b, insn);
                let Some(target) = b.read_operand(insn, 0, size) else { return Lowered::Unsupported };
                b.st_env(target, super::builder::RIP, crate::tcg::ir::MemSize::B8);
                b.exit(ExitKind::Lookup);
            }
        }
        M::Call => {
            let size = near_size(b, insn);
            let direct = insn.try_op_kind(0).is_ok_and(is_near_branch);
            let target = if direct {
                None
            } else {
                let Some(t) = b.read_operand(insn, 0, size) else { return Lowered::Unsupported };
                Some(t)
            };
            let sp = b.read_sp();
            let ret = b.movi(next);
            let new_sp = b.push_value(sp, ret, size);
            b.commit_sp(new_sp);
            match target {
                None => b.goto_tb(0, insn.near_branch_target()),
                Some(t) => {
                    b.st_env(t, super::builder::RIP, crate::tcg::ir::MemSize::B8);
                    b.exit(ExitKind::Lookup);
                }
            }
        }
        M::Ret => {
            let size = near_size(b, insn);
            let sp = b.read_sp();
            let (target, new_sp) = b.pop_value(sp, size);
            let extra = u64::from(insn.try_immediate(0).unwrap_or(0) as u16);
            let new_sp = if extra != 0 { b.bini(BinOp::Add, new_sp, extra) } else { new_sp };
            b.commit_sp(new_sp);
            b.st_env(target, super::builder::RIP, crate::tcg::ir::MemSize::B8);
            b.exit(ExitKind::Lookup);
        }
        M::Loop | M::Loope | M::Loopne | M::Jcxz | M::Jecxz | M::Jrcxz => return counted(b, insn),
        _ if insn.is_jcc_short_or_near() => {
            let (c, x, y) = b.cond(insn.condition_code());
            let taken = b.label();
            b.brcond(c, x, y, taken);
            b.goto_tb(1, next);
            b.set_label(taken);
            b.goto_tb(0, insn.near_branch_target());
        }
        _ => return Lowered::Unsupported,
    }
    Lowered::End
}

fn is_near_branch(k: OpKind) -> bool {
    matches!(k, OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64)
}

/// Width of an indirect JMP operand (and of RIP after it).
fn operand_width(b: &IrBuilder, insn: &Instruction) -> OpSize {
    super::builder::operand_size(insn, 0).unwrap_or(if b.code64() { OpSize::B8 } else { OpSize::B4 })
}

/// LOOPcc and JrCXZ: the counter register's width is the address size.
fn counted(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let code = format!("{:?}", insn.code());
    let size = if insn.mnemonic() == Mnemonic::Jcxz || code.ends_with("_CX") {
        OpSize::B2
    } else if insn.mnemonic() == Mnemonic::Jecxz || code.ends_with("_ECX") {
        OpSize::B4
    } else {
        OpSize::B8
    };
    let taken = b.label();
    let count = b.read_gpr_sized(reg::RCX, size);
    let zero = b.movi(0);
    match insn.mnemonic() {
        Mnemonic::Jcxz | Mnemonic::Jecxz | Mnemonic::Jrcxz => b.brcond(Cond::Eq, count, zero, taken),
        m => {
            let c = b.bini(BinOp::Sub, count, 1);
            let c = b.zext(size, c);
            b.write_gpr_sized(reg::RCX, size, c);
            if m == Mnemonic::Loop {
                b.brcond(Cond::Ne, c, zero, taken);
            } else {
                // LOOPE: count != 0 && ZF; LOOPNE: count != 0 && !ZF.
                let not_taken = b.label();
                b.brcond(Cond::Eq, c, zero, not_taken);
                let cc = if m == Mnemonic::Loope { iced_x86::ConditionCode::e } else { iced_x86::ConditionCode::ne };
                let (cond, x, y) = b.cond(cc);
                b.brcond(cond, x, y, taken);
                b.set_label(not_taken);
            }
        }
    }
    b.goto_tb(1, b.insn.next_pc);
    b.set_label(taken);
    b.goto_tb(0, insn.near_branch_target());
    Lowered::End
}
