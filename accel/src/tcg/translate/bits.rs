//! Bit instructions: BT BTS BTR BTC (non-locked), BSF BSR TZCNT LZCNT
//! POPCNT.
//!
//! BT* change CF only (RFLAGS materialised); the others follow the
//! encodings of the table in [`crate::tcg::flags`].

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::builder::{gpr_index, operand_size, IrBuilder, Loc};
use super::Lowered;
use crate::tcg::flags::{CcFamily, OpSize};
use crate::tcg::ir::{BinOp, Cond, Temp, UnOp};
use crate::tcg::state::rflags as rf;

/// For BT* with a register bit offset on memory, the operand is a bit
/// string: the address moves by whole operands. Returns (loc, bit index
/// within the operand).
pub(super) fn bit_operand(b: &mut IrBuilder, insn: &Instruction, size: OpSize) -> Option<(Loc, Temp)> {
    let bits = u64::from(size.bits());
    let loc = b.loc(insn, 0)?;
    match (loc, insn.try_op_kind(1).ok()?) {
        (Loc::Mem(addr), OpKind::Register) => {
            let off = b.read_reg(insn.try_op_register(1).ok()?);
            let off = b.sext(size, off);
            let shift = u64::from(bits.trailing_zeros());
            let words = b.bini(BinOp::Sar, off, shift);
            let delta = b.bini(BinOp::Mul, words, size as u64);
            let addr = b.bin(BinOp::Add, addr, delta);
            let addr = if b.code64() { addr } else { b.zext(OpSize::B4, addr) };
            let bit = b.bini(BinOp::And, off, bits - 1);
            Some((Loc::Mem(addr), bit))
        }
        (_, OpKind::Register) => {
            let off = b.read_reg(insn.try_op_register(1).ok()?);
            Some((loc, b.bini(BinOp::And, off, bits - 1)))
        }
        _ => Some((loc, b.movi(insn.try_immediate(1).ok()? & (bits - 1)))),
    }
}

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let Some(size) = operand_size(insn, 0) else { return Lowered::Unsupported };
    let m = insn.mnemonic();
    match m {
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => {
            let Some((loc, bit)) = bit_operand(b, insn, size) else { return Lowered::Unsupported };
            let v = if m == Mnemonic::Bt { b.read_loc(loc, size) } else { b.read_loc_rmw(loc, size) };
            let shifted = b.bin(BinOp::Shr, v, bit);
            if m != Mnemonic::Bt {
                let one = b.movi(1);
                let mask = b.bin(BinOp::Shl, one, bit);
                let r = match m {
                    Mnemonic::Bts => b.bin(BinOp::Or, v, mask),
                    Mnemonic::Btr => {
                        let inv = b.un(UnOp::Not, mask);
                        b.bin(BinOp::And, v, inv)
                    }
                    _ => b.bin(BinOp::Xor, v, mask),
                };
                b.write_loc(loc, size, r);
            }
            set_bit_test_cf(b, shifted);
        }
        Mnemonic::Bsf | Mnemonic::Bsr | Mnemonic::Tzcnt | Mnemonic::Lzcnt | Mnemonic::Popcnt => {
            let Some(src) = b.read_operand(insn, 1, size) else { return Lowered::Unsupported };
            let Ok(r) = insn.try_op_register(0) else { return Lowered::Unsupported };
            let zero = b.movi(0);
            let bits = u64::from(size.bits());
            match m {
                Mnemonic::Bsf | Mnemonic::Bsr => bit_scan(b, m == Mnemonic::Bsf, size, r, src),
                Mnemonic::Popcnt => {
                    let v = b.un(UnOp::Popcnt, src);
                    b.write_reg(r, v);
                    // All flags clear but ZF (source was zero).
                    let one = b.movi(1);
                    b.set_cc(CcFamily::Bmi, size, v, Some(one), None);
                }
                _ => {
                    let v = if m == Mnemonic::Tzcnt {
                        let c = b.un(UnOp::Ctz, src);
                        let w = b.movi(bits);
                        b.select(Cond::Eq, src, zero, w, c)
                    } else {
                        let c = b.un(UnOp::Clz, src);
                        b.bini(BinOp::Sub, c, 64 - bits)
                    };
                    b.write_reg(r, v);
                    // CF = source was zero, ZF = result is zero.
                    b.set_cc(CcFamily::Bmi, size, v, Some(src), None);
                }
            }
        }
        _ => return Lowered::Unsupported,
    }
    Lowered::Next
}

/// BT*: CF = bit 0 of `shifted`; every other flag is left as it was (the
/// SDM calls OF SF AF PF undefined; the CPU keeps them, and so does this).
pub(super) fn set_bit_test_cf(b: &mut IrBuilder, shifted: Temp) {
    let f = b.rflags();
    let f = b.bini(BinOp::And, f, !rf::CF);
    let cf = b.bini(BinOp::And, shifted, 1);
    let f = b.bin(BinOp::Or, f, cf);
    b.set_rflags(f);
}

/// BSF/BSR of `src` into `r`. A zero source leaves the whole destination
/// register alone, the upper half of a 32-bit one included (as the CPU
/// does; the SDM calls the destination undefined).
fn bit_scan(b: &mut IrBuilder, forward: bool, size: OpSize, r: Register, src: Temp) {
    let zero = b.movi(0);
    let idx = if forward {
        b.un(UnOp::Ctz, src)
    } else {
        let lz = b.un(UnOp::Clz, src);
        let top = b.movi(63);
        b.bin(BinOp::Sub, top, lz)
    };
    match (size, gpr_index(r)) {
        (OpSize::B4, Some((i, _))) => {
            let old = b.gpr(i);
            let v = b.select(Cond::Eq, src, zero, old, idx);
            b.set_gpr(i, v);
        }
        _ => {
            let old = b.read_reg(r);
            let v = b.select(Cond::Eq, src, zero, old, idx);
            b.write_reg(r, v);
        }
    }
    // Flags per the table in `flags`: ZF = source is zero, PF = parity of
    // the index (0x100 keeps a zero index from reading as ZF).
    let tagged = b.bini(BinOp::Or, idx, 0x100);
    let dst = b.select(Cond::Eq, src, zero, zero, tagged);
    b.set_cc(CcFamily::Logic, size, dst, None, None);
}
