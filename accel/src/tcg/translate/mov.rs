//! Data movement: MOV MOVZX MOVSX MOVSXD LEA XCHG CMOVcc SETcc BSWAP MOVBE
//! and the accumulator sign extensions CBW/CWDE/CDQE/CWD/CDQ/CQO. Moves
//! to and from segment, control and debug registers go to `system`.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::builder::{operand_size, IrBuilder, Loc};
use super::Lowered;
use crate::tcg::flags::OpSize;
use crate::tcg::ir::{BinOp, UnOp};
use crate::tcg::state::reg;

fn is_setcc(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Seto
            | M::Setno
            | M::Setb
            | M::Setae
            | M::Sete
            | M::Setne
            | M::Setbe
            | M::Seta
            | M::Sets
            | M::Setns
            | M::Setp
            | M::Setnp
            | M::Setl
            | M::Setge
            | M::Setle
            | M::Setg
    )
}

fn is_special(r: Register) -> bool {
    r.is_segment_register() || r.is_cr() || r.is_dr()
}

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    use Mnemonic as M;
    let m = insn.mnemonic();
    match m {
        M::Cbw | M::Cwde | M::Cdqe => return widen_accumulator(b, m),
        M::Cwd | M::Cdq | M::Cqo => return sign_into_rdx(b, m),
        _ => {}
    }
    let regs = (0..insn.op_count()).filter(|&i| insn.try_op_kind(i).is_ok_and(|k| k == OpKind::Register));
    if m == M::Mov && regs.clone().any(|i| insn.try_op_register(i).is_ok_and(is_special)) {
        return super::system::lower_mov_special(b, insn);
    }
    let Some(size) = operand_size(insn, 0) else { return Lowered::Unsupported };
    match m {
        M::Mov => {
            let Some(dst) = b.loc(insn, 0) else { return Lowered::Unsupported };
            let Some(v) = b.read_operand(insn, 1, size) else { return Lowered::Unsupported };
            b.write_loc(dst, size, v);
        }
        M::Movzx | M::Movsx | M::Movsxd => {
            let Some(src_size) = operand_size(insn, 1) else { return Lowered::Unsupported };
            let Some(v) = b.read_operand(insn, 1, src_size) else { return Lowered::Unsupported };
            let v = if m == M::Movzx { v } else { b.sext(src_size, v) };
            let Ok(r) = insn.try_op_register(0) else { return Lowered::Unsupported };
            b.write_reg(r, v);
        }
        M::Lea => {
            if !insn.try_op_kind(1).is_ok_and(|k| k == OpKind::Memory) {
                return Lowered::Unsupported;
            }
            let v = b.effective_offset(insn);
            let Ok(r) = insn.try_op_register(0) else { return Lowered::Unsupported };
            b.write_reg(r, v);
        }
        M::Xchg => {
            let (Some(l0), Some(l1)) = (b.loc(insn, 0), b.loc(insn, 1)) else { return Lowered::Unsupported };
            if matches!(l0, Loc::Mem(_)) || matches!(l1, Loc::Mem(_)) {
                // XCHG with memory is always locked.
                return super::atomic::lower(b, insn);
            }
            let v0 = b.read_loc(l0, size);
            let v1 = b.read_loc(l1, size);
            b.write_loc(l0, size, v1);
            b.write_loc(l1, size, v0);
        }
        M::Bswap => {
            let Ok(r) = insn.try_op_register(0) else { return Lowered::Unsupported };
            let v = b.read_reg(r);
            let op = match size {
                OpSize::B4 => UnOp::Bswap32,
                OpSize::B8 => UnOp::Bswap64,
                // BSWAP r16 is undefined; hardware gives zero in practice.
                _ => {
                    let z = b.movi(0);
                    b.write_reg(r, z);
                    return Lowered::Next;
                }
            };
            let v = b.un(op, v);
            b.write_reg(r, v);
        }
        M::Movbe => {
            let Some(v) = b.read_operand(insn, 1, size) else { return Lowered::Unsupported };
            let v = match size {
                OpSize::B2 => b.un(UnOp::Bswap16, v),
                OpSize::B4 => b.un(UnOp::Bswap32, v),
                _ => b.un(UnOp::Bswap64, v),
            };
            let Some(dst) = b.loc(insn, 0) else { return Lowered::Unsupported };
            b.write_loc(dst, size, v);
        }
        _ if insn.condition_code() != iced_x86::ConditionCode::None => {
            let (c, x, y) = b.cond(insn.condition_code());
            if is_setcc(m) {
                let v = b.setcond(c, x, y);
                let Some(dst) = b.loc(insn, 0) else { return Lowered::Unsupported };
                b.write_loc(dst, OpSize::B1, v);
            } else {
                // CMOVcc: the source is read (and may fault) either way, and
                // a 32-bit destination is zero-extended either way.
                let Some(v) = b.read_operand(insn, 1, size) else { return Lowered::Unsupported };
                let Ok(r) = insn.try_op_register(0) else { return Lowered::Unsupported };
                let old = b.read_reg(r);
                let sel = b.select(c, x, y, v, old);
                b.write_reg(r, sel);
            }
        }
        _ => return Lowered::Unsupported,
    }
    Lowered::Next
}

fn widen_accumulator(b: &mut IrBuilder, m: Mnemonic) -> Lowered {
    let (from, to) = match m {
        Mnemonic::Cbw => (OpSize::B1, OpSize::B2),
        Mnemonic::Cwde => (OpSize::B2, OpSize::B4),
        _ => (OpSize::B4, OpSize::B8),
    };
    let v = b.read_gpr_sized(reg::RAX, from);
    let v = b.sext(from, v);
    b.write_gpr_sized(reg::RAX, to, v);
    Lowered::Next
}

fn sign_into_rdx(b: &mut IrBuilder, m: Mnemonic) -> Lowered {
    let size = match m {
        Mnemonic::Cwd => OpSize::B2,
        Mnemonic::Cdq => OpSize::B4,
        _ => OpSize::B8,
    };
    let v = b.read_gpr_sized(reg::RAX, size);
    let v = b.sext(size, v);
    let sign = b.bini(BinOp::Sar, v, 63);
    b.write_gpr_sized(reg::RDX, size, sign);
    Lowered::Next
}
