//! SSE and SSE2 (legacy encodings): the helpers the frontend's
//! `translate/sse` lowers every XMM instruction to.
//!
//! XMM registers and MXCSR live in [`FpuState`](super::state::FpuState),
//! outside the IR's env ranges, so each instruction is one helper call
//! that reads its operands, computes, and writes its destination last
//! (the IR's precise-exception rule). Operand locations travel in one
//! constant argument ([`Operands`]); a memory operand's linear address
//! (computed in IR) or a GPR value is the second.
//!
//! Where the semantics live:
//! - [`int`], [`shuffle`]: integer and data-movement ops in portable Rust.
//! - [`float`]: compares (CMPccPS/PD/SS/SD, (U)COMISS/SD) in portable Rust;
//!   every rounding operation (arithmetic, SQRT, MIN/MAX, conversions) and
//!   RCP/RSQRT through [`host`].
//! - [`host`]: runs the host CPU's own SSE instruction with the guest's
//!   rounding control, FTZ and DAZ loaded into the host MXCSR (all
//!   exceptions masked) and reads back the exception flags it raised. On an
//!   x86-64 host that is bit-exact by construction — results, NaN
//!   propagation, denormal handling and flags — and it is the only
//!   host-specific file: a non-x86 port replaces it with a soft-float
//!   implementing the same functions (directed rounding, flags, DAZ/FTZ).
//!   RCPPS/RSQRTPS are the host's approximation: Intel's on an Intel host;
//!   an AMD host would give AMD's (different, within the same 1.5·2⁻¹²
//!   error bound).
//! - [`post`]: the per-element flag rules of unmasked overflow/underflow
//!   (found and checked against the host's own #XM behaviour).
//! - [`exec`]: the helpers' shared work: CR0/CR4 checks, operand fetch
//!   (alignment #GP, 16-byte accesses), MXCSR flag accumulation and
//!   unmasked-exception delivery (#XM, or #UD without CR4.OSXMMEXCPT).
//! - [`helpers`]: the static [`Helper`](super::ir::Helper) descriptors.

pub mod exec;
pub mod float;
pub mod helpers;
pub mod host;
pub mod int;
pub mod post;
pub mod shuffle;

#[cfg(test)]
mod tests;

/// MXCSR bits.
pub mod mxcsr {
    pub const IE: u32 = 1 << 0;
    pub const DE: u32 = 1 << 1;
    pub const ZE: u32 = 1 << 2;
    pub const OE: u32 = 1 << 3;
    pub const UE: u32 = 1 << 4;
    pub const PE: u32 = 1 << 5;
    /// The six exception flags.
    pub const FLAGS: u32 = 0x3f;
    pub const DAZ: u32 = 1 << 6;
    /// The six exception masks (IM..PM), bits 7..12.
    pub const MASKS: u32 = 0x3f << 7;
    pub const MASK_SHIFT: u32 = 7;
    /// Rounding control: 0 nearest, 1 down, 2 up, 3 toward zero.
    pub const RC: u32 = 3 << 13;
    pub const RC_SHIFT: u32 = 13;
    pub const FTZ: u32 = 1 << 15;
    /// Flags of pre-computation exceptions (an unmasked one suppresses the
    /// operation and with it every post-computation flag).
    pub const PRE: u32 = IE | DE | ZE;
}

/// Where an instruction's operands are, packed in one helper argument.
///
/// Bits 0..4: destination XMM (or the source XMM of a store); 4..8: source
/// XMM; 8..16: imm8; 16..18: source kind ([`Source`]); 18..23: memory
/// operand size in bytes; 23: the memory operand must be 16-byte aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operands(pub u64);

/// The source operand of an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// XMM register `n`.
    Xmm(usize),
    /// Guest memory at the linear address in the second argument.
    Mem { size: usize, aligned: bool },
    /// The second argument itself (a GPR or immediate), zero-extended.
    Value,
}

impl Operands {
    const KIND_MEM: u64 = 1;
    const KIND_VALUE: u64 = 2;

    /// `dst` is taken modulo 16.
    pub const fn new(dst: usize) -> Self {
        Operands((dst & 15) as u64)
    }
    pub const fn xmm_src(self, src: usize) -> Self {
        Operands((self.0 & !0x3_00f0) | (((src & 15) as u64) << 4))
    }
    /// `size` is 1, 2, 4, 8 or 16 bytes.
    pub const fn mem_src(self, size: usize, aligned: bool) -> Self {
        let v = (self.0 & !0xff_0000) | (Self::KIND_MEM << 16) | (((size & 31) as u64) << 18);
        Operands(if aligned { v | (1 << 23) } else { v })
    }
    pub const fn value_src(self) -> Self {
        Operands((self.0 & !0x3_0000) | (Self::KIND_VALUE << 16))
    }
    pub const fn imm(self, imm: u8) -> Self {
        Operands((self.0 & !0xff00) | ((imm as u64) << 8))
    }

    pub fn dst(self) -> usize {
        (self.0 & 15) as usize
    }
    pub fn imm8(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub fn source(self) -> Source {
        match (self.0 >> 16) & 3 {
            Self::KIND_MEM => Source::Mem { size: ((self.0 >> 18) & 31) as usize, aligned: self.0 & (1 << 23) != 0 },
            Self::KIND_VALUE => Source::Value,
            _ => Source::Xmm(((self.0 >> 4) & 15) as usize),
        }
    }
}
