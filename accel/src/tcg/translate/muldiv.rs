//! MUL IMUL DIV IDIV. Products are IR (flags: CF = OF = "the high half is
//! significant", recorded as `Mul*` with the indicator in `cc_src`);
//! divisions are a helper because they may raise #DE.

use iced_x86::{Instruction, Mnemonic};

use super::builder::{operand_size, IrBuilder};
use super::Lowered;
use crate::tcg::context::CpuContext;
use crate::tcg::exception::{vector, Exception};
use crate::tcg::flags::{CcFamily, OpSize};
use crate::tcg::ir::{BinOp, Cond, Helper, StateParts, Temp};
use crate::tcg::state::reg;

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let m = insn.mnemonic();
    let Some(size) = operand_size(insn, 0) else { return Lowered::Unsupported };
    match (m, insn.op_count()) {
        (Mnemonic::Div | Mnemonic::Idiv, 1) => {
            let Some(divisor) = b.read_operand(insn, 0, size) else { return Lowered::Unsupported };
            let mode = b.movi(size as u64 | if m == Mnemonic::Idiv { 0x100 } else { 0 });
            b.call(&DIVIDE, &[divisor, mode]);
        }
        (Mnemonic::Mul | Mnemonic::Imul, 1) => {
            let Some(src) = b.read_operand(insn, 0, size) else { return Lowered::Unsupported };
            let acc = b.read_gpr_sized(reg::RAX, size);
            let (low, high, overflow) = multiply(b, m == Mnemonic::Imul, size, acc, src);
            if size == OpSize::B1 {
                // AX = AH:AL.
                let h = b.bini(BinOp::Shl, high, 8);
                let ax = b.bin(BinOp::Or, h, low);
                b.write_gpr_sized(reg::RAX, OpSize::B2, ax);
            } else {
                b.write_gpr_sized(reg::RAX, size, low);
                b.write_gpr_sized(reg::RDX, size, high);
            }
            b.set_cc(CcFamily::Mul, size, low, Some(overflow), None);
        }
        (Mnemonic::Imul, 2 | 3) => {
            let (x, y) = if insn.op_count() == 2 { (0, 1) } else { (1, 2) };
            let Some(a) = b.read_operand(insn, x, size) else { return Lowered::Unsupported };
            let Some(v) = b.read_operand(insn, y, size) else { return Lowered::Unsupported };
            let (low, _, overflow) = multiply(b, true, size, a, v);
            let Ok(r) = insn.try_op_register(0) else { return Lowered::Unsupported };
            b.write_reg(r, low);
            b.set_cc(CcFamily::Mul, size, low, Some(overflow), None);
        }
        _ => return Lowered::Unsupported,
    }
    Lowered::Next
}

/// `(low, high, overflow 0/1)` of `a * v` at `size` (operands zero-extended).
fn multiply(b: &mut IrBuilder, signed: bool, size: OpSize, a: Temp, v: Temp) -> (Temp, Temp, Temp) {
    let bits = u64::from(size.bits());
    let (x, y) = if signed { (b.sext(size, a), b.sext(size, v)) } else { (a, v) };
    let full = b.bin(BinOp::Mul, x, y);
    let low = b.zext(size, full);
    let high_full = if size == OpSize::B8 {
        b.bin(if signed { BinOp::MulHs } else { BinOp::MulHu }, x, y)
    } else {
        b.bini(if signed { BinOp::Sar } else { BinOp::Shr }, full, bits)
    };
    let high = b.zext(size, high_full);
    let overflow = if signed {
        // Significant iff the high half isn't the low half's sign extension.
        let sl = b.sext(size, low);
        let ext = b.bini(BinOp::Sar, sl, 63);
        let ext = b.zext(size, ext);
        b.setcond(Cond::Ne, high, ext)
    } else {
        let zero = b.movi(0);
        b.setcond(Cond::Ne, high, zero)
    };
    (low, high, overflow)
}

/// DIV/IDIV of rDX:rAX (AX for bytes) by `args[0]`; `args[1]` = size |
/// 0x100 for signed. Writes the quotient and remainder, or raises #DE.
fn helper_divide(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let divisor = args.first().copied().unwrap_or(0);
    let m = args.get(1).copied().unwrap_or(8);
    let size = OpSize::from_bytes((m & 0xff) as usize).unwrap_or(OpSize::B8);
    let signed = m & 0x100 != 0;
    let bits = size.bits();
    let g = &mut ctx.state.gpr;
    let mask = u128::from(size.mask());
    let dividend: u128 = if size == OpSize::B1 {
        u128::from(g[reg::RAX] & 0xffff)
    } else {
        (u128::from(g[reg::RDX]) & mask) << bits | (u128::from(g[reg::RAX]) & mask)
    };
    let de = Exception::fault(vector::DE);
    let (q, r) = if signed {
        let width = 2 * bits;
        let n = ((dividend << (128 - width)) as i128) >> (128 - width);
        let d = i128::from(((divisor << (64 - bits)) as i64) >> (64 - bits));
        if d == 0 {
            return Err(de);
        }
        let (q, r) = (n.checked_div(d).ok_or(de)?, n.checked_rem(d).ok_or(de)?);
        let lim = 1i128 << (bits - 1);
        if q >= lim || q < -lim {
            return Err(de);
        }
        (q as u128 & mask, r as u128 & mask)
    } else {
        let d = u128::from(divisor) & mask;
        if d == 0 {
            return Err(de);
        }
        let q = dividend / d;
        if q > mask {
            return Err(de);
        }
        (q, dividend % d)
    };
    let (q, r) = (q as u64, r as u64);
    match size {
        OpSize::B1 => g[reg::RAX] = (g[reg::RAX] & !0xffff) | (r << 8) | q,
        OpSize::B2 => {
            g[reg::RAX] = (g[reg::RAX] & !0xffff) | q;
            g[reg::RDX] = (g[reg::RDX] & !0xffff) | r;
        }
        _ => {
            g[reg::RAX] = q;
            g[reg::RDX] = r;
        }
    }
    Ok(0)
}

static DIVIDE: Helper =
    Helper { name: "divide", func: helper_divide, may_fault: true, reads: StateParts::GPRS, writes: StateParts::GPRS };
