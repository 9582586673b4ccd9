//! Data movement between XMM registers, memory and GPRs (MOVAPS…MOVDQU,
//! MOVSS/MOVSD, MOVD/MOVQ, MOVLPS…MOVHLPS, non-temporal stores, MOVMSK*,
//! PMOVMSKB, PEXTRW, MASKMOVDQU, MOVNTI), conversions to a GPR and the
//! (U)COMIS compares that set EFLAGS.

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::{call, is_memory, source, with_imm, xmm_op, xmm_op_index, Lowered};
use crate::tcg::flags::OpSize;
use crate::tcg::ir::Helper;
use crate::tcg::simd::{helpers as h, Operands};
use crate::tcg::translate::builder::{operand_size, IrBuilder};

pub(super) fn claims(m: Mnemonic) -> bool {
    use Mnemonic as M;
    matches!(
        m,
        M::Movaps
            | M::Movups
            | M::Movapd
            | M::Movupd
            | M::Movdqa
            | M::Movdqu
            | M::Movntps
            | M::Movntpd
            | M::Movntdq
            | M::Movnti
            | M::Movss
            | M::Movlps
            | M::Movlpd
            | M::Movhps
            | M::Movhpd
            | M::Movlhps
            | M::Movhlps
            | M::Movd
            | M::Movq
            | M::Movmskps
            | M::Movmskpd
            | M::Pmovmskb
            | M::Pextrw
            | M::Maskmovdqu
            | M::Comiss
            | M::Comisd
            | M::Ucomiss
            | M::Ucomisd
            | M::Cvtss2si
            | M::Cvttss2si
            | M::Cvtsd2si
            | M::Cvttsd2si
    )
}

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    use Mnemonic as M;
    let to_mem = is_memory(insn, 0);
    match insn.mnemonic() {
        M::Movaps | M::Movapd | M::Movdqa | M::Movntps | M::Movntpd | M::Movntdq if to_mem => {
            store(b, insn, 16, 0, true)
        }
        M::Movups | M::Movupd | M::Movdqu if to_mem => store(b, insn, 16, 0, false),
        M::Movaps | M::Movapd | M::Movdqa | M::Movups | M::Movupd | M::Movdqu => xmm_op(b, insn, &h::MOV),
        // Scalar moves: a load zero-extends, a register move merges.
        M::Movss if to_mem => store(b, insn, 4, 0, false),
        M::Movsd if to_mem => store(b, insn, 8, 0, false),
        M::Movss if is_memory(insn, 1) => xmm_op(b, insn, &h::MOV),
        M::Movsd if is_memory(insn, 1) => xmm_op(b, insn, &h::MOV),
        M::Movss => xmm_op(b, insn, &h::MERGE_LO32),
        M::Movsd => xmm_op(b, insn, &h::MERGE_LO64),
        M::Movlps | M::Movlpd if to_mem => store(b, insn, 8, 0, false),
        M::Movhps | M::Movhpd if to_mem => store(b, insn, 8, 8, false),
        M::Movlps | M::Movlpd => xmm_op(b, insn, &h::MERGE_LO64),
        M::Movhps | M::Movhpd | M::Movlhps => xmm_op(b, insn, &h::LO_TO_HI),
        M::Movhlps => xmm_op(b, insn, &h::HI_TO_LO),
        M::Movd | M::Movq => movd_movq(b, insn),
        M::Movmskps => value(b, insn, &h::MOVMSKPS),
        M::Movmskpd => value(b, insn, &h::MOVMSKPD),
        M::Pmovmskb => value(b, insn, &h::PMOVMSKB),
        M::Pextrw => value(b, insn, &h::PEXTRW),
        M::Cvtss2si | M::Cvttss2si | M::Cvtsd2si | M::Cvttsd2si => {
            let wide = operand_size(insn, 0) == Some(OpSize::B8);
            let helper = match (insn.mnemonic(), wide) {
                (M::Cvtss2si, false) => &h::CVTSS2SI32,
                (M::Cvtss2si, true) => &h::CVTSS2SI64,
                (M::Cvttss2si, false) => &h::CVTTSS2SI32,
                (M::Cvttss2si, true) => &h::CVTTSS2SI64,
                (M::Cvtsd2si, false) => &h::CVTSD2SI32,
                (M::Cvtsd2si, true) => &h::CVTSD2SI64,
                (_, false) => &h::CVTTSD2SI32,
                (_, true) => &h::CVTTSD2SI64,
            };
            value(b, insn, helper)
        }
        M::Comiss => xmm_op(b, insn, &h::COMISS),
        M::Comisd => xmm_op(b, insn, &h::COMISD),
        M::Ucomiss => xmm_op(b, insn, &h::UCOMISS),
        M::Ucomisd => xmm_op(b, insn, &h::UCOMISD),
        M::Movnti => movnti(b, insn),
        M::Maskmovdqu => maskmovdqu(b, insn),
        _ => Lowered::Unsupported,
    }
}

/// Stores `size` bytes of operand 1's XMM register, from byte `offset`.
fn store(b: &mut IrBuilder, insn: &Instruction, size: usize, offset: u8, aligned: bool) -> Lowered {
    let Some(src) = xmm_op_index(insn, 1) else { return Lowered::Unsupported };
    let addr = b.ea(insn);
    call(b, &h::STORE, Operands::new(src).mem_src(size, aligned).imm(offset), Some(addr));
    Lowered::Next
}

/// A value computed from operand 1 (XMM or memory) into GPR operand 0.
fn value(b: &mut IrBuilder, insn: &Instruction, helper: &'static Helper) -> Lowered {
    let Ok(dst) = insn.try_op_register(0) else { return Lowered::Unsupported };
    if !dst.is_gpr() {
        return Lowered::Unsupported;
    }
    let Some((ops, arg)) = source(b, insn, 1, Operands::new(0)) else { return Lowered::Unsupported };
    let v = call(b, helper, with_imm(insn, ops), arg);
    b.write_reg(dst, v);
    Lowered::Next
}

fn movd_movq(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    match insn.code() {
        // GPR/memory into XMM, zero-extended (the source already is).
        Code::Movd_xmm_rm32 | Code::Movq_xmm_rm64 => xmm_op(b, insn, &h::MOV),
        Code::Movq_xmm_xmmm64 if is_memory(insn, 1) => xmm_op(b, insn, &h::MOV),
        Code::Movq_xmm_xmmm64 => xmm_op(b, insn, &h::ZEXT64),
        Code::Movq_xmmm64_xmm if is_memory(insn, 0) => store(b, insn, 8, 0, false),
        Code::Movq_xmmm64_xmm => xmm_op(b, insn, &h::ZEXT64),
        Code::Movd_rm32_xmm if is_memory(insn, 0) => store(b, insn, 4, 0, false),
        Code::Movq_rm64_xmm if is_memory(insn, 0) => store(b, insn, 8, 0, false),
        Code::Movd_rm32_xmm => value(b, insn, &h::MOVD_OUT),
        Code::Movq_rm64_xmm => value(b, insn, &h::MOVQ_OUT),
        _ => Lowered::Unsupported,
    }
}

/// MOVNTI m32/m64, r: a plain store (no XMM state, so no CR0/CR4 checks).
fn movnti(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let (Ok(r), Some(size)) = (insn.try_op_register(1), operand_size(insn, 1)) else { return Lowered::Unsupported };
    let addr = b.ea(insn);
    let v = b.read_reg(r);
    b.store(v, addr, size);
    Lowered::Next
}

/// MASKMOVDQU xmm1, xmm2: byte-masked store of xmm1 to seg:rDI.
fn maskmovdqu(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let (Some(data), Some(mask)) = (xmm_op_index(insn, 1), xmm_op_index(insn, 2)) else {
        return Lowered::Unsupported;
    };
    let di = match insn.try_op_kind(0) {
        Ok(OpKind::MemorySegRDI) => Register::RDI,
        Ok(OpKind::MemorySegEDI) => Register::EDI,
        Ok(OpKind::MemorySegDI) => Register::DI,
        _ => return Lowered::Unsupported,
    };
    let off = b.read_reg(di);
    let addr = b.linear(insn.memory_segment(), off);
    call(b, &h::MASKMOVDQU, Operands::new(data).xmm_src(mask), Some(addr));
    Lowered::Next
}
