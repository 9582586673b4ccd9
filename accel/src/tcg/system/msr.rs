//! RDMSR/WRMSR over `X86State::msr` and EFER (SDM Vol. 4 for the MSRs).
//! Unknown MSRs raise #GP(0), as on hardware: Linux probes many with
//! `rdmsr_safe` and copes; each miss is logged at debug level, rate-limited.

use std::sync::atomic::{AtomicU32, Ordering};

use log::debug;

use super::cpuid::{BUS_HZ, FEATURES, TSC_HZ};
use super::{host_tsc, rdtsc, SystemEffect};
use crate::tcg::exception::{Exception, Result};
use crate::tcg::mmu::walker::PHYS_ADDR_BITS;
use crate::tcg::segmentation::is_canonical;
use crate::tcg::state::{ctrl, seg, X86State};

pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_PLATFORM_ID: u32 = 0x17;
pub const MSR_IA32_APIC_BASE: u32 = 0x1b;
pub const MSR_IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const MSR_IA32_SPEC_CTRL: u32 = 0x48;
pub const MSR_IA32_PRED_CMD: u32 = 0x49;
pub const MSR_IA32_BIOS_SIGN_ID: u32 = 0x8b;
pub const MSR_PLATFORM_INFO: u32 = 0xce;
pub const MSR_IA32_MTRRCAP: u32 = 0xfe;
pub const MSR_IA32_ARCH_CAPABILITIES: u32 = 0x10a;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MCG_CAP: u32 = 0x179;
pub const MSR_IA32_MCG_STATUS: u32 = 0x17a;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_IA32_DEBUGCTL: u32 = 0x1d9;
pub const MSR_MTRR_PHYS_BASE0: u32 = 0x200;
pub const MSR_MTRR_PHYS_MASK7: u32 = 0x20f;
pub const MSR_MTRR_FIX64K_00000: u32 = 0x250;
pub const MSR_MTRR_FIX16K_80000: u32 = 0x258;
pub const MSR_MTRR_FIX16K_A0000: u32 = 0x259;
pub const MSR_MTRR_FIX4K_C0000: u32 = 0x268;
pub const MSR_MTRR_FIX4K_F8000: u32 = 0x26f;
pub const MSR_IA32_PAT: u32 = 0x277;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_EFER: u32 = 0xc000_0080;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SFMASK: u32 = 0xc000_0084;
pub const MSR_FS_BASE: u32 = 0xc000_0100;
pub const MSR_GS_BASE: u32 = 0xc000_0101;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const MSR_TSC_AUX: u32 = 0xc000_0103;

/// IA32_MISC_ENABLE bits the engine looks at.
pub mod misc_enable {
    pub const FAST_STRING: u64 = 1 << 0;
    /// Read-only 1: no BTS / PEBS (no debug store).
    pub const BTS_UNAVAIL: u64 = 1 << 11;
    pub const PEBS_UNAVAIL: u64 = 1 << 12;
    /// CPUID.0:EAX reports at most 2 (Linux clears it at boot).
    pub const LIMIT_CPUID: u64 = 1 << 22;
    /// Hides CPUID NX and forbids EFER.NXE.
    pub const XD_DISABLE: u64 = 1 << 34;
    pub const WRITABLE: u64 = FAST_STRING | LIMIT_CPUID | XD_DISABLE;
}

/// IA32_ARCH_CAPABILITIES: the emulated CPU executes nothing speculatively,
/// so it is not affected by Meltdown (RDCL_NO), SSB, MDS, the page-size
/// machine check, TAA, MMIO stale data, BHI, PBRSB, GDS, RFDS or ITS, and
/// its (absent) branch predictors are trivially "enhanced IBRS". Spares the
/// guest PTI, buffer clearing, retpolines and return thunks, all costly
/// under emulation (every thunk is an extra translated block per call).
pub const ARCH_CAPABILITIES: u64 = 1 // RDCL_NO
    | 1 << 1 // IBRS_ALL (enhanced IBRS: Linux uses it instead of retpolines)
    | 1 << 4 // SSB_NO
    | 1 << 5 // MDS_NO
    | 1 << 6 // IF_PSCHANGE_MC_NO
    | 1 << 8 // TAA_NO
    | 1 << 13 // SBDR_SSDP_NO
    | 1 << 14 // FBSDP_NO
    | 1 << 15 // PSDP_NO
    | 1 << 20 // BHI_NO
    | 1 << 24 // PBRSB_NO
    | 1 << 26 // GDS_NO
    | 1 << 27 // RFDS_NO
    | 1 << 62; // ITS_NO

/// IA32_MTRRCAP: 8 variable ranges, fixed ranges, write-combining.
pub const MTRRCAP: u64 = 8 | 1 << 8 | 1 << 10;
/// IA32_FEATURE_CONTROL: locked, VMX off everywhere.
pub const FEATURE_CONTROL: u64 = 1;
/// IA32_BIOS_SIGN_ID: microcode revision 1 (bits 63:32).
pub const MICROCODE_REV: u64 = 1 << 32;
/// APIC_BASE: BSP flag, x2APIC enable, global enable.
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_EN: u64 = 1 << 11;

/// Bits at or above the physical-address width.
fn phys_reserved() -> u64 {
    !((1u64 << PHYS_ADDR_BITS) - 1)
}

fn valid_mtrr_type(t: u64) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

/// Where a fixed-range MTRR lives in `Msrs::mtrr_fixed`.
fn fixed_mtrr_index(msr: u32) -> Option<usize> {
    match msr {
        MSR_MTRR_FIX64K_00000 => Some(0),
        MSR_MTRR_FIX16K_80000 => Some(1),
        MSR_MTRR_FIX16K_A0000 => Some(2),
        MSR_MTRR_FIX4K_C0000..=MSR_MTRR_FIX4K_F8000 => Some(3 + (msr - MSR_MTRR_FIX4K_C0000) as usize),
        _ => None,
    }
}

fn unknown(kind: &str, msr: u32, value: Option<u64>) -> Exception {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    if n < 64 {
        match value {
            Some(v) => debug!("tcg: {kind} of unknown MSR {msr:#x} (value {v:#x}): #GP"),
            None => debug!("tcg: {kind} of unknown MSR {msr:#x}: #GP"),
        }
    } else if n == 64 {
        debug!("tcg: further unknown-MSR messages suppressed");
    }
    Exception::gp0()
}

/// RDMSR `msr`. #GP(0) at CPL > 0 and for MSRs the CPU doesn't have.
pub fn rdmsr(state: &X86State, msr: u32) -> Result<u64> {
    if state.cpl() != 0 {
        return Err(Exception::gp0());
    }
    let m = &state.msr;
    Ok(match msr {
        MSR_IA32_TSC => rdtsc(state),
        MSR_IA32_PLATFORM_ID => 0,
        MSR_IA32_APIC_BASE => m.apic_base,
        MSR_IA32_FEATURE_CONTROL => FEATURE_CONTROL,
        MSR_IA32_SPEC_CTRL => m.spec_ctrl,
        MSR_IA32_BIOS_SIGN_ID => MICROCODE_REV,
        // Maximum non-turbo ratio (bits 15:8): TSC = ratio × 100 MHz.
        MSR_PLATFORM_INFO => (TSC_HZ / BUS_HZ) << 8,
        MSR_IA32_MTRRCAP => MTRRCAP,
        MSR_IA32_ARCH_CAPABILITIES => ARCH_CAPABILITIES,
        MSR_IA32_SYSENTER_CS => m.sysenter_cs,
        MSR_IA32_SYSENTER_ESP => m.sysenter_esp,
        MSR_IA32_SYSENTER_EIP => m.sysenter_eip,
        MSR_IA32_MCG_CAP | MSR_IA32_MCG_STATUS => 0,
        MSR_IA32_MISC_ENABLE => m.misc_enable | misc_enable::BTS_UNAVAIL | misc_enable::PEBS_UNAVAIL,
        MSR_IA32_DEBUGCTL => 0,
        MSR_MTRR_PHYS_BASE0..=MSR_MTRR_PHYS_MASK7 => m.mtrr_var[(msr - MSR_MTRR_PHYS_BASE0) as usize],
        MSR_IA32_PAT => m.pat,
        MSR_MTRR_DEF_TYPE => m.mtrr_def_type,
        MSR_EFER => state.efer,
        MSR_STAR => m.star,
        MSR_LSTAR => m.lstar,
        MSR_CSTAR => m.cstar,
        MSR_SFMASK => m.sfmask,
        MSR_FS_BASE => state.segs[seg::FS].base,
        MSR_GS_BASE => state.segs[seg::GS].base,
        MSR_KERNEL_GS_BASE => m.kernel_gs_base,
        MSR_TSC_AUX => m.tsc_aux,
        _ => match fixed_mtrr_index(msr) {
            Some(i) => m.mtrr_fixed[i],
            None => return Err(unknown("rdmsr", msr, None)),
        },
    })
}

/// WRMSR `msr` = `value`. #GP(0) at CPL > 0, for read-only or unknown MSRs
/// and for reserved bits. The effect tells the loop what to flush.
pub fn wrmsr(state: &mut X86State, msr: u32, value: u64) -> Result<SystemEffect> {
    if state.cpl() != 0 {
        return Err(Exception::gp0());
    }
    let gp = Err(Exception::gp0());
    let canonical = |v: u64| if is_canonical(v) { Ok(v) } else { Err(Exception::gp0()) };
    match msr {
        MSR_IA32_TSC => {
            // The guest TSC becomes `value` now: move the offset.
            state.msr.tsc_offset = value.wrapping_sub(host_tsc()) as i64;
        }
        MSR_IA32_APIC_BASE => {
            let mut allowed = APIC_BASE_BSP | APIC_BASE_EN | (0xffff_ffff_ffff_f000 & !phys_reserved());
            if FEATURES.x2apic {
                allowed |= APIC_BASE_EXTD;
            }
            // x2APIC enabled with the APIC disabled is an invalid state (SDM 10.12.5).
            if value & !allowed != 0 || value & (APIC_BASE_EN | APIC_BASE_EXTD) == APIC_BASE_EXTD {
                return gp;
            }
            // The BSP flag is read-only.
            state.msr.apic_base = (value & !APIC_BASE_BSP) | (state.msr.apic_base & APIC_BASE_BSP);
        }
        MSR_IA32_SPEC_CTRL => {
            // IBRS, STIBP, SSBD, BHI_DIS_S: accepted, nothing to do (nothing
            // speculates).
            if value & !(0x7 | 1 << 10) != 0 {
                return gp;
            }
            state.msr.spec_ctrl = value;
        }
        MSR_IA32_PRED_CMD => {
            // IBPB: nothing is predicted.
            if value & !1 != 0 {
                return gp;
            }
        }
        // Linux writes 0 here before reading the microcode revision.
        MSR_IA32_BIOS_SIGN_ID => {}
        MSR_IA32_SYSENTER_CS => state.msr.sysenter_cs = value & 0xffff_ffff,
        MSR_IA32_SYSENTER_ESP => state.msr.sysenter_esp = canonical(value)?,
        MSR_IA32_SYSENTER_EIP => state.msr.sysenter_eip = canonical(value)?,
        MSR_IA32_MCG_STATUS => {
            if value != 0 {
                return gp;
            }
        }
        MSR_IA32_MISC_ENABLE => {
            let ro = misc_enable::BTS_UNAVAIL | misc_enable::PEBS_UNAVAIL;
            // Other bits (thermal control, EIST, MWAIT…) are accepted and read back 0.
            state.msr.misc_enable = value & !ro & misc_enable::WRITABLE;
        }
        MSR_IA32_DEBUGCTL => {
            // LBR and BTF are accepted and not honoured; the rest is reserved.
            if value & !0x3 != 0 {
                return gp;
            }
        }
        MSR_MTRR_PHYS_BASE0..=MSR_MTRR_PHYS_MASK7 => {
            let i = (msr - MSR_MTRR_PHYS_BASE0) as usize;
            let bad = if i.is_multiple_of(2) {
                value & (phys_reserved() | 0xf00) != 0 || !valid_mtrr_type(value & 0xff)
            } else {
                value & (phys_reserved() | 0x7ff) != 0
            };
            if bad {
                return gp;
            }
            state.msr.mtrr_var[i] = value;
        }
        MSR_IA32_PAT => {
            if !(0..8).all(|i| matches!((value >> (i * 8)) & 0xff, 0 | 1 | 4 | 5 | 6 | 7)) {
                return gp;
            }
            state.msr.pat = value;
        }
        MSR_MTRR_DEF_TYPE => {
            if value & !0xcff != 0 || !valid_mtrr_type(value & 0xff) {
                return gp;
            }
            state.msr.mtrr_def_type = value;
        }
        MSR_EFER => return write_efer(state, value),
        MSR_STAR => state.msr.star = value,
        MSR_LSTAR => state.msr.lstar = canonical(value)?,
        MSR_CSTAR => state.msr.cstar = canonical(value)?,
        // Bits 63:32 are reserved; hardware ignores them.
        MSR_SFMASK => state.msr.sfmask = value & 0xffff_ffff,
        MSR_FS_BASE => state.segs[seg::FS].base = canonical(value)?,
        MSR_GS_BASE => state.segs[seg::GS].base = canonical(value)?,
        MSR_KERNEL_GS_BASE => state.msr.kernel_gs_base = canonical(value)?,
        MSR_TSC_AUX => {
            if value >> 32 != 0 {
                return gp;
            }
            state.msr.tsc_aux = value;
        }
        _ => match fixed_mtrr_index(msr) {
            Some(i) if (0..8).all(|b| valid_mtrr_type((value >> (b * 8)) & 0xff)) => state.msr.mtrr_fixed[i] = value,
            Some(_) => return gp,
            None => return Err(unknown("wrmsr", msr, Some(value))),
        },
    }
    Ok(SystemEffect::None)
}

/// EFER: SCE, LME, NXE writable; LMA read-only (set by the CR0.PG write);
/// LME may not change while paging is on (SDM 9.8.5); other bits #GP.
fn write_efer(state: &mut X86State, value: u64) -> Result<SystemEffect> {
    let writable = ctrl::EFER_SCE | ctrl::EFER_LME | ctrl::EFER_NXE;
    if value & !(writable | ctrl::EFER_LMA) != 0 {
        return Err(Exception::gp0());
    }
    if value & ctrl::EFER_NXE != 0 && state.msr.misc_enable & misc_enable::XD_DISABLE != 0 {
        return Err(Exception::gp0());
    }
    let old = state.efer;
    let new = (value & writable) | (old & ctrl::EFER_LMA);
    if (old ^ new) & ctrl::EFER_LME != 0 && state.cr0 & ctrl::CR0_PG != 0 {
        return Err(Exception::gp0());
    }
    state.efer = new;
    Ok(if (old ^ new) & ctrl::EFER_NXE != 0 {
        // Cached translations carry the NX decision.
        SystemEffect::FlushTlbAndModeChanged
    } else if (old ^ new) & ctrl::EFER_LME != 0 {
        SystemEffect::ModeChanged
    } else {
        SystemEffect::None
    })
}
