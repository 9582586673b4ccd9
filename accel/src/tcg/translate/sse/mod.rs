//! SSE and SSE2 in their legacy encodings: every XMM instruction is one
//! call to a `simd` helper (XMM registers and MXCSR are not IR-visible
//! state), with the memory operand's linear address or a GPR value
//! computed in IR and passed along. MOVNTI is a plain IR store.
//!
//! iced-x86 shares the mnemonics MOVSD/CMPSD between the string
//! instructions and SSE2: [`claims`] takes only the SSE2 codes. MMX-register
//! forms of the claimed mnemonics, and forms of later extensions (SSE4.1
//! PEXTRW m16), are not implemented and raise #UD.

mod arith;
mod mov;

use iced_x86::{Code, CpuidFeature, Instruction, Mnemonic, OpKind, Register};

use super::builder::IrBuilder;
use super::Lowered;
use crate::tcg::ir::{Helper, Temp};
use crate::tcg::simd::Operands;

/// Whether `insn` belongs to this family (the dispatch arm's guard).
pub(super) fn claims(insn: &Instruction) -> bool {
    use Mnemonic as M;
    match insn.mnemonic() {
        M::Movsd => matches!(insn.code(), Code::Movsd_xmm_xmmm64 | Code::Movsd_xmmm64_xmm),
        M::Cmpsd => insn.code() == Code::Cmpsd_xmm_xmmm64_imm8,
        m => mov::claims(m) || arith::claims(m),
    }
}

/// Lowers a claimed instruction.
pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    if !sse_encoding(insn) {
        return Lowered::Unsupported;
    }
    if let Some(helper) = arith::helper(insn) {
        return xmm_op(b, insn, helper);
    }
    mov::lower(b, insn)
}

/// Only SSE/SSE2 forms without MMX registers (those alias the x87 state).
fn sse_encoding(insn: &Instruction) -> bool {
    let features = insn.cpuid_features();
    let sse = !features.is_empty() && features.iter().all(|f| matches!(f, CpuidFeature::SSE | CpuidFeature::SSE2));
    let mmx = (0..insn.op_count()).any(|i| insn.try_op_register(i).is_ok_and(|r| r.is_mm()));
    sse && !mmx
}

fn xmm_index(r: Register) -> Option<usize> {
    r.is_xmm().then(|| r as usize - Register::XMM0 as usize)
}

/// XMM operand `n`'s register number.
fn xmm_op_index(insn: &Instruction, n: u32) -> Option<usize> {
    match insn.try_op_kind(n).ok()? {
        OpKind::Register => xmm_index(insn.try_op_register(n).ok()?),
        _ => None,
    }
}

fn is_memory(insn: &Instruction, n: u32) -> bool {
    insn.try_op_kind(n).is_ok_and(|k| k == OpKind::Memory)
}

/// Whether a 16-byte memory operand of `m` may be misaligned (every other
/// legacy-SSE m128 operand raises #GP(0) unless 16-byte aligned).
fn unaligned_ok(m: Mnemonic) -> bool {
    matches!(m, Mnemonic::Movups | Mnemonic::Movupd | Mnemonic::Movdqu)
}

/// Adds source operand `n` to `ops`: an XMM register, memory (address
/// computed now), a GPR or an imm8 (as a value). The temp is the helper's
/// second argument.
fn source(b: &mut IrBuilder, insn: &Instruction, n: u32, ops: Operands) -> Option<(Operands, Option<Temp>)> {
    match insn.try_op_kind(n).ok()? {
        OpKind::Register => {
            let r = insn.try_op_register(n).ok()?;
            if let Some(i) = xmm_index(r) {
                Some((ops.xmm_src(i), None))
            } else if r.is_gpr() {
                Some((ops.value_src(), Some(b.read_reg(r))))
            } else {
                None
            }
        }
        OpKind::Memory => {
            let size = insn.memory_size().size();
            let aligned = size == 16 && !unaligned_ok(insn.mnemonic());
            Some((ops.mem_src(size, aligned), Some(b.ea(insn))))
        }
        OpKind::Immediate8 => Some((ops.value_src(), Some(b.movi(u64::from(insn.immediate8()))))),
        _ => None,
    }
}

/// The imm8 of a three-operand form.
fn with_imm(insn: &Instruction, ops: Operands) -> Operands {
    match insn.try_op_kind(2) {
        Ok(OpKind::Immediate8) => ops.imm(insn.immediate8()),
        _ => ops,
    }
}

/// Calls `helper` with `ops` and the optional second argument.
fn call(b: &mut IrBuilder, helper: &'static Helper, ops: Operands, arg: Option<Temp>) -> Temp {
    let d = b.movi(ops.0);
    match arg {
        Some(t) => b.call(helper, &[d, t]),
        None => b.call(helper, &[d]),
    }
}

/// `xmm = op(xmm, src[, imm8])` with the destination in operand 0.
fn xmm_op(b: &mut IrBuilder, insn: &Instruction, helper: &'static Helper) -> Lowered {
    let Some(dst) = xmm_op_index(insn, 0) else { return Lowered::Unsupported };
    let Some((ops, arg)) = source(b, insn, 1, Operands::new(dst)) else { return Lowered::Unsupported };
    call(b, helper, with_imm(insn, ops), arg);
    Lowered::Next
}
