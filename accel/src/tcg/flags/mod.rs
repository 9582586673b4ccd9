//! Lazy condition codes (QEMU's `cc_op`): flag-setting instructions record
//! the operation and its operands; the six arithmetic flags are computed only
//! when something reads them.
//!
//! - [`compute_flags`] / [`compute_cf`] / [`arith_flags`]: the flags of a lazy state.
//! - [`rflags`] / [`set_rflags_arith`]: full RFLAGS in and out of
//!   [`X86State`](super::state::X86State).
//! - [`eval_cond`] / [`X86Cond`]: the 16 Jcc/SETcc/CMOVcc conditions, with
//!   fast paths that skip computing all six flags.
//! - [`rotate_flags`] / [`rotate_result`]: ROL/ROR/RCL/RCR, which only touch
//!   CF and OF and so are materialised rather than kept lazy.
//!
//! # Operand conventions
//!
//! `cc_dst`, `cc_src`, `cc_src2`; the functions here truncate every operand
//! to the operation's size, so the frontend may store wider values.
//!
//! | op | cc_dst | cc_src | cc_src2 |
//! |---|---|---|---|
//! | `Eflags` | – (flags live in `rflags`) | | |
//! | `Add*` | result | second operand | |
//! | `Adc*` | result | second operand | carry in (non-zero = 1) |
//! | `Sub*` | result | second operand (first = dst + src) | |
//! | `Sbb*` | result | second operand (first = dst + src + borrow) | borrow in (non-zero = 1) |
//! | `Logic*` | result | | |
//! | `Inc*` / `Dec*` | result | CF before the instruction (non-zero = 1) | |
//! | `Shl*` (SHL/SAL, SHLD) | result | operand shifted left by count-1 (CF = its MSB) | |
//! | `Sar*` (SAR, SHR, SHRD) | result | operand shifted right by count-1 (CF = its LSB) | |
//! | `Mul*` | low half of result | high half (MUL) or overflow indicator (IMUL) | |
//! | `Bmi*` | result | source operand, or an encoded CF (below) | |
//!
//! `Mul`: CF = OF = (src != 0); SF, PF from dst, ZF = AF = 0 (as the host).
//! `Bmi`: CF = (src == 0); ZF, SF from dst; OF = AF = PF = 0.
//!
//! How the frontend encodes the instructions that have no obvious entry:
//!
//! | instruction | op | cc_dst | cc_src | cc_src2 |
//! |---|---|---|---|---|
//! | CMP, SCAS, CMPS, CMPXCHG | `Sub` | first - second | second | |
//! | NEG x | `Sub` (first operand 0) | `-x` | `x` | |
//! | TEST | `Logic` | first & second | | |
//! | XADD | `Add` | sum | source operand | |
//! | SHR | `Sar` | result | zero-extended operand `>>` (count-1) | |
//! | SAR | `Sar` | result | **sign**-extended operand `>>` (count-1), truncated | |
//! | SHLD | `Shl` | result | SHLD of the same operands by count-1 | |
//! | SHRD | `Sar` | result | SHRD of the same operands by count-1 | |
//! | MUL (all forms) | `Mul` | low half (AL/AX/EAX/RAX) | high half (AH/DX/EDX/RDX) | |
//! | IMUL (all forms) | `Mul` | truncated result | 0 if the full product equals the sign extension of the truncated one, else non-zero (e.g. `high - (low >>s (bits-1))`, as QEMU) | |
//! | BLSMSK, BLSR, LZCNT, TZCNT | `Bmi` | result | source operand | |
//! | BLSI | `Bmi` | result | `(source == 0) as u64` (CF = source != 0) | |
//! | BZHI | `Bmi` | result | `(n < bits) as u64`, n = bits 7:0 of the index operand (CF = n > bits-1) | |
//! | ANDN, POPCNT | `Bmi` | result | `1` (CF = 0) | |
//! | BSF, BSR (16/32/64) | `Logic` | `0` if the source is 0, else `index \| 0x100` (ZF = source == 0, PF like hardware) | | |
//! | BT, BTS, BTR, BTC | materialise: `set_rflags_arith((flags & !CF) \| bit)` | | | |
//! | ROL, ROR, RCL, RCR | materialise: `set_rflags_arith(rotate_flags(..))` | | | |
//! | DIV, IDIV | leave the lazy state alone | | | |
//!
//! Shifts and rotates with a masked count of 0 change no flags: for SHL/SHR/
//! SAR/SHLD/SHRD the frontend must keep the previous `cc_*` (a runtime select
//! when the count is in CL); rotates need no select, [`rotate_flags`] returns
//! the input flags unchanged.
//!
//! # Flags the SDM leaves undefined
//!
//! What this module returns for them, and what the host (Intel Sapphire
//! Rapids-class) does. "= host" rows are checked bit-for-bit against the CPU
//! by the tests; the differential tester masks all of these.
//!
//! | instruction | undefined | returned here | host |
//! |---|---|---|---|
//! | ADD ADC SUB SBB CMP NEG INC DEC | none | | |
//! | AND OR XOR TEST | AF | 0 | = host |
//! | SHL SHR SAR, count 1 | AF | 0 | = host |
//! | SAR, count > 1 | OF, AF | 0, 0 | = host |
//! | SHL, count > 1 | OF, AF | OF = MSB(result) ^ CF, AF = 0 | OF = MSB ^ MSB-1 of the *original* operand (its first 1-bit step); **differs** |
//! | SHR, count > 1 | OF, AF | OF = 0, AF = 0 | OF = MSB of the original operand; **differs** |
//! | SHL SHR, 8/16-bit, count >= size | CF, OF | CF = last bit shifted out (wide shift) | CF = host; OF as above |
//! | SHLD SHRD, count > 1 | OF, AF | OF = sign change MSB(src) ^ MSB(result), AF = 0 | AF = host; OF from the first 1-bit step, **differs** |
//! | ROL ROR RCL RCR, count > 1 | OF | first 1-bit step: ROL/RCL MSB ^ MSB-1 of operand, ROR LSB ^ MSB, RCR MSB ^ CF in | = host |
//! | ROL ROR by an immediate > 1 on a register | OF | unchanged (the frontend, not [`rotate_flags`]) | = host (by CL, or on memory: the row above) |
//! | RCL RCR 8/16-bit, count ≡ 0 mod 9/17 (count != 0) | OF | unchanged (CF too, as SDM) | = host |
//! | MUL IMUL | SF ZF AF PF | SF = MSB of low half, ZF = 0, AF = 0, PF = parity of low half | = host |
//! | BLSI BLSMSK BLSR BZHI | AF PF | 0, 0 | = host |
//! | ANDN | AF PF | 0, 0 | = host |
//! | TZCNT LZCNT | OF SF AF PF | 0 (SF = MSB of the count, always 0) | = host |
//! | BSF BSR | CF OF SF AF PF | 0, except PF = parity(index), 1 when source is 0 | = host (with the encoding above) |
//! | BT BTS BTR BTC | OF SF AF PF | unchanged | = host |
//! | DIV IDIV | all six | unchanged (no cc update) | = host |
//!
//! Keeping the original operand for SHL/SHR/SHLD count > 1 would cost a third
//! store on every shift for a flag no compiler reads; not worth it.

mod compute;
mod cond;
mod rotate;
#[cfg(test)]
mod tests;

pub use compute::{arith_flags, compute_cf, compute_flags, rflags, set_rflags_arith};
pub use cond::{eval_cond, eval_cond_state, X86Cond};
pub use rotate::{rotate_flags, rotate_result, RotateKind};

/// The last flag-setting operation. `#[repr(u64)]` so IR ops store it as a
/// plain 64-bit value into [`super::state::X86State::cc_op`].
#[repr(u64)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CcOp {
    /// Arithmetic flags are already in `rflags`.
    #[default]
    Eflags = 0,
    Add8,
    Add16,
    Add32,
    Add64,
    Adc8,
    Adc16,
    Adc32,
    Adc64,
    Sub8,
    Sub16,
    Sub32,
    Sub64,
    Sbb8,
    Sbb16,
    Sbb32,
    Sbb64,
    Logic8,
    Logic16,
    Logic32,
    Logic64,
    Inc8,
    Inc16,
    Inc32,
    Inc64,
    Dec8,
    Dec16,
    Dec32,
    Dec64,
    Shl8,
    Shl16,
    Shl32,
    Shl64,
    Sar8,
    Sar16,
    Sar32,
    Sar64,
    Mul8,
    Mul16,
    Mul32,
    Mul64,
    Bmi8,
    Bmi16,
    Bmi32,
    Bmi64,
}

/// Operand size of a sized operation, in bytes (1, 2, 4, 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpSize {
    B1 = 1,
    B2 = 2,
    B4 = 4,
    B8 = 8,
}

impl OpSize {
    pub fn bits(self) -> u32 {
        self as u32 * 8
    }
    pub fn mask(self) -> u64 {
        match self {
            OpSize::B8 => u64::MAX,
            s => (1u64 << s.bits()) - 1,
        }
    }
    pub fn sign_bit(self) -> u64 {
        1u64 << (self.bits() - 1)
    }
    pub fn from_bytes(n: usize) -> Option<Self> {
        match n {
            1 => Some(OpSize::B1),
            2 => Some(OpSize::B2),
            4 => Some(OpSize::B4),
            8 => Some(OpSize::B8),
            _ => None,
        }
    }
}

/// Families of lazy operations; `CcOp::sized(family, size)` picks the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcFamily {
    Add,
    Adc,
    Sub,
    Sbb,
    Logic,
    Inc,
    Dec,
    Shl,
    Sar,
    Mul,
    Bmi,
}

impl CcOp {
    pub fn sized(family: CcFamily, size: OpSize) -> CcOp {
        let base = match family {
            CcFamily::Add => CcOp::Add8,
            CcFamily::Adc => CcOp::Adc8,
            CcFamily::Sub => CcOp::Sub8,
            CcFamily::Sbb => CcOp::Sbb8,
            CcFamily::Logic => CcOp::Logic8,
            CcFamily::Inc => CcOp::Inc8,
            CcFamily::Dec => CcOp::Dec8,
            CcFamily::Shl => CcOp::Shl8,
            CcFamily::Sar => CcOp::Sar8,
            CcFamily::Mul => CcOp::Mul8,
            CcFamily::Bmi => CcOp::Bmi8,
        } as u64;
        let idx = match size {
            OpSize::B1 => 0,
            OpSize::B2 => 1,
            OpSize::B4 => 2,
            OpSize::B8 => 3,
        };
        // SAFETY-free conversion: every family's four sizes are consecutive.
        CcOp::from_u64(base + idx).unwrap_or(CcOp::Eflags)
    }

    /// The family of a sized operation; `None` for [`CcOp::Eflags`].
    pub fn family(self) -> Option<CcFamily> {
        const FAMILIES: [CcFamily; 11] = [
            CcFamily::Add,
            CcFamily::Adc,
            CcFamily::Sub,
            CcFamily::Sbb,
            CcFamily::Logic,
            CcFamily::Inc,
            CcFamily::Dec,
            CcFamily::Shl,
            CcFamily::Sar,
            CcFamily::Mul,
            CcFamily::Bmi,
        ];
        // Variants after Eflags come in families of four consecutive sizes.
        let idx = (self as u64).checked_sub(1)? / 4;
        FAMILIES.get(usize::try_from(idx).ok()?).copied()
    }

    /// The operand size of a sized operation; `None` for [`CcOp::Eflags`].
    pub fn size(self) -> Option<OpSize> {
        let idx = (self as u64).checked_sub(1)? % 4;
        Some([OpSize::B1, OpSize::B2, OpSize::B4, OpSize::B8][idx as usize])
    }

    /// The variant with discriminant `v`, if any (values come from IR stores).
    pub fn from_u64(v: u64) -> Option<CcOp> {
        const ALL: [CcOp; 45] = [
            CcOp::Eflags,
            CcOp::Add8,
            CcOp::Add16,
            CcOp::Add32,
            CcOp::Add64,
            CcOp::Adc8,
            CcOp::Adc16,
            CcOp::Adc32,
            CcOp::Adc64,
            CcOp::Sub8,
            CcOp::Sub16,
            CcOp::Sub32,
            CcOp::Sub64,
            CcOp::Sbb8,
            CcOp::Sbb16,
            CcOp::Sbb32,
            CcOp::Sbb64,
            CcOp::Logic8,
            CcOp::Logic16,
            CcOp::Logic32,
            CcOp::Logic64,
            CcOp::Inc8,
            CcOp::Inc16,
            CcOp::Inc32,
            CcOp::Inc64,
            CcOp::Dec8,
            CcOp::Dec16,
            CcOp::Dec32,
            CcOp::Dec64,
            CcOp::Shl8,
            CcOp::Shl16,
            CcOp::Shl32,
            CcOp::Shl64,
            CcOp::Sar8,
            CcOp::Sar16,
            CcOp::Sar32,
            CcOp::Sar64,
            CcOp::Mul8,
            CcOp::Mul16,
            CcOp::Mul32,
            CcOp::Mul64,
            CcOp::Bmi8,
            CcOp::Bmi16,
            CcOp::Bmi32,
            CcOp::Bmi64,
        ];
        ALL.get(usize::try_from(v).ok()?).copied()
    }
}
