//! x87, MMX-state and MXCSR semantics, independent of the IR.
//!
//! - [`softfloat`]: 80-bit arithmetic with precision and rounding control
//!   and the x87's exception, NaN and operand-class rules.
//! - [`convert`]: m32/m64/integer/BCD conversions, FRNDINT.
//! - [`ops`]: comparisons, FPREM/FPREM1, FSCALE, FXTRACT, constants, FXAM.
//! - [`transcendental`]: FSIN & co with host f64 math (documented caveat).
//! - [`stack`]: TOP, tags, stack faults, how flags land in FSW.
//! - [`exec`]: one x87 instruction ([`exec::Desc`]) on an `FpuState`.
//! - [`fxsave`], [`env`]: the FXSAVE, FSTENV and FSAVE images.
//! - this module: control/status words, CR0/CR4 availability rules (#NM,
//!   #UD), the pending-exception check (#MF), FNINIT, LDMXCSR.
//!
//! The frontend (`translate/x87`) lowers every x87 instruction to a helper
//! call; the helpers are thin wrappers around the functions here. Every
//! arithmetic result is checked bit for bit against the host CPU's x87 in
//! the tests (all precisions, rounding modes, masked and unmasked).
//!
//! Floating-point exception *delivery*: an unmasked exception sets FSW.ES
//! (and B); the next waiting x87 instruction (FWAIT, EMMS and every x87
//! instruction but FNINIT/FNCLEX/FNSTSW/FNSTCW/FNSTENV/FNSAVE) raises #MF
//! when CR0.NE is set. With CR0.NE clear (legacy FERR#/IRQ13 reporting, never
//! used by Linux) the pending exception is ignored: no IRQ 13 is raised.

pub mod convert;
pub mod env;
pub mod exec;
pub mod fxsave;
pub mod ops;
pub mod softfloat;
pub mod stack;
pub mod transcendental;

use super::exception::{vector, Exception, Result};
use super::state::{ctrl, FpuState, X86State};

/// FPU status word bits.
pub mod fsw {
    pub const IE: u16 = 1 << 0;
    pub const DE: u16 = 1 << 1;
    pub const ZE: u16 = 1 << 2;
    pub const OE: u16 = 1 << 3;
    pub const UE: u16 = 1 << 4;
    pub const PE: u16 = 1 << 5;
    /// Stack fault (with IE; C1 tells overflow from underflow).
    pub const SF: u16 = 1 << 6;
    /// Error summary: an unmasked exception is pending.
    pub const ES: u16 = 1 << 7;
    pub const C0: u16 = 1 << 8;
    pub const C1: u16 = 1 << 9;
    pub const C2: u16 = 1 << 10;
    pub const TOP_SHIFT: u32 = 11;
    pub const TOP: u16 = 7 << TOP_SHIFT;
    pub const C3: u16 = 1 << 14;
    /// Busy; mirrors ES on every processor since the 487.
    pub const B: u16 = 1 << 15;
    /// The six exception flags.
    pub const EXC: u16 = 0x3f;
    pub const CC: u16 = C0 | C1 | C2 | C3;
}

/// FPU control word fields.
pub mod fcw {
    /// The six exception masks (same bit positions as the FSW flags).
    pub const MASKS: u16 = 0x3f;
    pub const PC_SHIFT: u32 = 8;
    pub const RC_SHIFT: u32 = 10;
    /// Bits that hold a value: masks, PC, RC and the (ignored) infinity
    /// control bit 12. Bit 6 reads as one, the rest as zero (as hardware).
    pub const WRITABLE: u16 = 0x1f3f;
    pub const ONES: u16 = 0x0040;
    /// After FNINIT: all masked, 64-bit precision, round to nearest.
    pub const DEFAULT: u16 = 0x037f;
}

/// MXCSR bits that may be set: every defined bit but DAZ (bit 6). FXSAVE
/// reports this as MXCSR_MASK; LDMXCSR/FXRSTOR raise #GP(0) for any other
/// bit. DAZ is left out because the SSE arithmetic does not implement it
/// (hardware with DAZ reports 0xFFFF; 0xFFBF is what pre-DAZ parts report,
/// and Linux accepts either).
pub const MXCSR_MASK: u32 = 0xffbf;

/// The values FNINIT and RESET leave in MXCSR (all masked, round nearest).
pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// Which availability rules of CR0/CR4 an instruction follows (SDM Vol. 3
/// Table 2-2 and Table 12-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DeviceClass {
    /// x87 instructions, FXSAVE/FXRSTOR: #NM if CR0.EM or CR0.TS.
    X87 = 0,
    /// WAIT/FWAIT: #NM only if CR0.MP and CR0.TS.
    Wait = 1,
    /// SSE (LDMXCSR/STMXCSR): #UD if CR0.EM or !CR4.OSFXSR, else #NM if TS.
    Sse = 2,
    /// MMX (EMMS): #UD if CR0.EM, else #NM if CR0.TS.
    Mmx = 3,
}

impl DeviceClass {
    pub fn from_u64(v: u64) -> DeviceClass {
        match v {
            1 => DeviceClass::Wait,
            2 => DeviceClass::Sse,
            3 => DeviceClass::Mmx,
            _ => DeviceClass::X87,
        }
    }
}

/// Raises #UD/#NM when the instruction class is unavailable.
pub fn check_device(state: &X86State, class: DeviceClass) -> Result<()> {
    let cr0 = state.cr0;
    let (em, ts, mp) = (cr0 & ctrl::CR0_EM != 0, cr0 & ctrl::CR0_TS != 0, cr0 & ctrl::CR0_MP != 0);
    let nm = Err(Exception::fault(vector::NM));
    match class {
        DeviceClass::X87 if em || ts => nm,
        DeviceClass::Wait if mp && ts => nm,
        DeviceClass::Sse if em || state.cr4 & ctrl::CR4_OSFXSR == 0 => Err(Exception::ud()),
        DeviceClass::Mmx if em => Err(Exception::ud()),
        DeviceClass::Sse | DeviceClass::Mmx if ts => nm,
        _ => Ok(()),
    }
}

/// The #MF check of waiting instructions: a pending unmasked exception
/// faults here when CR0.NE is set (see the module documentation).
pub fn check_pending(state: &X86State) -> Result<()> {
    if state.fpu.fsw & fsw::ES != 0 && state.cr0 & ctrl::CR0_NE != 0 {
        return Err(Exception::fault(vector::MF));
    }
    Ok(())
}

/// Recomputes ES and B from the exception flags and masks.
pub fn update_summary(f: &mut FpuState) {
    if f.fsw & !f.fcw & fsw::EXC != 0 {
        f.fsw |= fsw::ES | fsw::B;
    } else {
        f.fsw &= !(fsw::ES | fsw::B);
    }
}

/// FNINIT: default control word, cleared status, all registers empty,
/// pointers and opcode zeroed. Register contents and MXCSR are kept.
pub fn fninit(f: &mut FpuState) {
    f.fcw = fcw::DEFAULT;
    f.fsw = 0;
    f.ftw = 0;
    f.fop = 0;
    f.fip = 0;
    f.fdp = 0;
}

/// FNCLEX: clears the exception flags, SF, ES and B.
pub fn fnclex(f: &mut FpuState) {
    f.fsw &= !(fsw::EXC | fsw::SF | fsw::ES | fsw::B);
}

/// FLDCW (and the FCW of FLDENV/FRSTOR/FXRSTOR): may unmask a pending
/// exception, which sets ES for the next waiting instruction.
pub fn set_fcw(f: &mut FpuState, value: u16) {
    f.fcw = (value & fcw::WRITABLE) | fcw::ONES;
    update_summary(f);
}

/// LDMXCSR (and FXRSTOR's MXCSR): #GP(0) if a reserved bit is set.
pub fn set_mxcsr(f: &mut FpuState, value: u32) -> Result<()> {
    if value & !MXCSR_MASK != 0 {
        return Err(Exception::gp0());
    }
    f.mxcsr = value;
    Ok(())
}

/// EMMS: all x87 registers empty.
pub fn emms(f: &mut FpuState) {
    f.ftw = 0;
}

#[cfg(test)]
mod tests;
