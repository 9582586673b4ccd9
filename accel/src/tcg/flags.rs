//! Lazy condition codes (QEMU's `cc_op`): flag-setting instructions record
//! the operation and its operands; the six arithmetic flags are computed only
//! when something reads them.
//!
//! Operand conventions (`cc_dst`, `cc_src`, `cc_src2`), all values truncated
//! to the operation's size:
//!
//! | op | cc_dst | cc_src | cc_src2 |
//! |---|---|---|---|
//! | `Eflags` | – (flags live in `rflags`) | | |
//! | `Add*` | result | second operand | |
//! | `Adc*` | result | second operand | carry in (0/1) |
//! | `Sub*` | result | second operand (first = dst + src) | |
//! | `Sbb*` | result | second operand | borrow in (0/1) |
//! | `Logic*` | result | | |
//! | `Inc*` / `Dec*` | result | CF before the instruction (0/1) | |
//! | `Shl*` | result | operand shifted left by count-1 | |
//! | `Sar*` (SAR and SHR) | result | operand shifted right by count-1 | |
//! | `Mul*` | low half of result | high half (or overflow indicator) | |
//! | `Bmi*` (ANDN, BLSx, BZHI) | result | source operand | |

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
