//! Integer arithmetic and logic: ADD ADC SUB SBB AND OR XOR CMP TEST INC
//! DEC NEG NOT (without LOCK; see `atomic` for the locked forms), and
//! ADCX/ADOX.

use iced_x86::{Instruction, Mnemonic};

use super::builder::{operand_size, IrBuilder};
use super::Lowered;
use crate::tcg::flags::{CcFamily, OpSize};
use crate::tcg::ir::{BinOp, Cond, Temp, UnOp};
use crate::tcg::state::rflags as rf;

/// The result and lazy-flag record of a two-operand ALU op on `a`, `b`
/// (both already truncated to `size`). Also used by the atomic forms.
pub(super) fn compute(b: &mut IrBuilder, m: Mnemonic, size: OpSize, a: Temp, v: Temp) -> Option<(Temp, Flags)> {
    let (op, family) = match m {
        Mnemonic::Add => (BinOp::Add, CcFamily::Add),
        Mnemonic::Adc => (BinOp::Add, CcFamily::Adc),
        Mnemonic::Sub | Mnemonic::Cmp => (BinOp::Sub, CcFamily::Sub),
        Mnemonic::Sbb => (BinOp::Sub, CcFamily::Sbb),
        Mnemonic::And | Mnemonic::Test => (BinOp::And, CcFamily::Logic),
        Mnemonic::Or => (BinOp::Or, CcFamily::Logic),
        Mnemonic::Xor => (BinOp::Xor, CcFamily::Logic),
        _ => return None,
    };
    let carry = matches!(family, CcFamily::Adc | CcFamily::Sbb).then(|| b.carry());
    let mut r = b.bin(op, a, v);
    if let Some(c) = carry {
        r = b.bin(op, r, c);
    }
    let r = b.zext(size, r);
    let src = (family != CcFamily::Logic).then_some(v);
    Some((r, Flags { family, size, dst: r, src, src2: carry }))
}

/// A pending lazy-flag record, stored after the instruction's last fault.
pub(super) struct Flags {
    pub family: CcFamily,
    pub size: OpSize,
    pub dst: Temp,
    pub src: Option<Temp>,
    pub src2: Option<Temp>,
}

impl Flags {
    pub fn store(self, b: &mut IrBuilder) {
        b.set_cc(self.family, self.size, self.dst, self.src, self.src2);
    }
}

/// INC/DEC/NEG/NOT on `a`: the result and flags (NOT has none).
pub(super) fn compute_unary(b: &mut IrBuilder, m: Mnemonic, size: OpSize, a: Temp) -> Option<(Temp, Option<Flags>)> {
    Some(match m {
        Mnemonic::Inc | Mnemonic::Dec => {
            let cf = b.carry();
            let op = if m == Mnemonic::Inc { BinOp::Add } else { BinOp::Sub };
            let r = b.bini(op, a, 1);
            let r = b.zext(size, r);
            let family = if m == Mnemonic::Inc { CcFamily::Inc } else { CcFamily::Dec };
            (r, Some(Flags { family, size, dst: r, src: Some(cf), src2: None }))
        }
        Mnemonic::Neg => {
            let r = b.un(UnOp::Neg, a);
            let r = b.zext(size, r);
            (r, Some(Flags { family: CcFamily::Sub, size, dst: r, src: Some(a), src2: None }))
        }
        Mnemonic::Not => {
            let r = b.un(UnOp::Not, a);
            (b.zext(size, r), None)
        }
        _ => return None,
    })
}

/// ADCX / ADOX: an add with carry through CF / OF only; the other flags
/// are left alone, so RFLAGS is materialised.
fn add_carry_flag(b: &mut IrBuilder, insn: &Instruction, size: OpSize) -> Lowered {
    let Ok(r) = insn.try_op_register(0) else { return Lowered::Unsupported };
    let Some(v) = b.read_operand(insn, 1, size) else { return Lowered::Unsupported };
    let a = b.read_reg(r);
    let bit = if insn.mnemonic() == Mnemonic::Adcx { rf::CF } else { rf::OF };
    let f = b.rflags();
    let cin = b.bini(BinOp::Shr, f, u64::from(bit.trailing_zeros()));
    let cin = b.bini(BinOp::And, cin, 1);
    let s1 = b.bin(BinOp::Add, a, v);
    let sum = b.bin(BinOp::Add, s1, cin);
    let (r_val, cout) = if size == OpSize::B8 {
        // Carry out of either add (at most one of them carries).
        let c1 = b.setcond(Cond::Ltu, s1, a);
        let c2 = b.setcond(Cond::Ltu, sum, s1);
        (sum, b.bin(BinOp::Or, c1, c2))
    } else {
        // 32-bit operands zero-extended: the carry is bit 32 of the sum.
        let c = b.bini(BinOp::Shr, sum, 32);
        (b.zext(size, sum), c)
    };
    b.write_reg(r, r_val);
    let cleared = b.bini(BinOp::And, f, !bit);
    let cbit = b.bini(BinOp::Shl, cout, u64::from(bit.trailing_zeros()));
    let nf = b.bin(BinOp::Or, cleared, cbit);
    b.set_rflags(nf);
    Lowered::Next
}

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let Some(size) = operand_size(insn, 0) else { return Lowered::Unsupported };
    if matches!(insn.mnemonic(), Mnemonic::Adcx | Mnemonic::Adox) {
        return add_carry_flag(b, insn, size);
    }
    let Some(dst) = b.loc(insn, 0) else { return Lowered::Unsupported };
    let m = insn.mnemonic();
    // Destinations that are written are read as the first half of a
    // read-modify-write (a fault reports W); CMP and TEST only read.
    let a = if matches!(m, Mnemonic::Cmp | Mnemonic::Test) { b.read_loc(dst, size) } else { b.read_loc_rmw(dst, size) };
    if insn.op_count() == 1 {
        let Some((r, flags)) = compute_unary(b, m, size, a) else { return Lowered::Unsupported };
        b.write_loc(dst, size, r);
        if let Some(f) = flags {
            f.store(b);
        }
        return Lowered::Next;
    }
    let Some(v) = b.read_operand(insn, 1, size) else { return Lowered::Unsupported };
    let Some((r, flags)) = compute(b, m, size, a, v) else { return Lowered::Unsupported };
    if !matches!(m, Mnemonic::Cmp | Mnemonic::Test) {
        b.write_loc(dst, size, r);
    }
    flags.store(b);
    Lowered::Next
}
