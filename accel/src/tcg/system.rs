//! Helpers for system instructions: control registers, MSRs, CPUID,
//! descriptor-table registers, RDTSC, SYSCALL/SYSRET/SWAPGS.
//!
//! TODO(system engineer): minimal stand-in written by the spine so the
//! frontend links; replace wholesale, keeping these signatures (the
//! frontend in `translate/system.rs` calls exactly these).

use std::sync::OnceLock;
use std::time::Instant;

use super::exception::{Exception, Result};
use super::state::{ctrl, hflags, seg, SegmentCache, X86State};

/// What a system-register write requires of the vCPU loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemEffect {
    /// Cached linear→physical translations are stale.
    pub flush_tlb: bool,
    /// The CPU mode (hflags) may have changed: end the translation block.
    pub end_block: bool,
}

fn require_cpl0(state: &X86State) -> Result<()> {
    if state.cpl() != 0 {
        return Err(Exception::gp0());
    }
    Ok(())
}

/// CPUID leaf `leaf`, sub-leaf `subleaf`: `[eax, ebx, ecx, edx]`.
pub fn cpuid(_state: &X86State, leaf: u32, _subleaf: u32) -> [u32; 4] {
    match leaf {
        0 => [1, u32::from_le_bytes(*b"Genu"), u32::from_le_bytes(*b"ntel"), u32::from_le_bytes(*b"ineI")],
        // FPU TSC MSR PAE CX8 APIC SEP PGE CMOV PAT CLFSH; hypervisor bit.
        1 => [0x600, 8 << 8, 1 << 31, 0x0008_ab71 | 1 << 19 | 1 << 16 | 1 << 9],
        0x8000_0000 => [0x8000_0001, 0, 0, 0],
        // SYSCALL, NX, LM.
        0x8000_0001 => [0, 0, 0, 1 << 11 | 1 << 20 | 1 << 29],
        _ => [0; 4],
    }
}

pub fn rdmsr(state: &X86State, msr: u32) -> Result<u64> {
    require_cpl0(state)?;
    Ok(match msr {
        0xc000_0080 => state.efer,
        0xc000_0081 => state.msr.star,
        0xc000_0082 => state.msr.lstar,
        0xc000_0083 => state.msr.cstar,
        0xc000_0084 => state.msr.sfmask,
        0xc000_0100 => state.segs[seg::FS].base,
        0xc000_0101 => state.segs[seg::GS].base,
        0xc000_0102 => state.msr.kernel_gs_base,
        0x10 => rdtsc(state),
        0x1b => state.msr.apic_base,
        0x277 => state.msr.pat,
        _ => return Err(Exception::gp0()),
    })
}

pub fn wrmsr(state: &mut X86State, msr: u32, value: u64) -> Result<SystemEffect> {
    require_cpl0(state)?;
    let mut effect = SystemEffect::default();
    match msr {
        0xc000_0080 => {
            let lma = state.efer & ctrl::EFER_LMA;
            state.efer = (value & !ctrl::EFER_LMA) | lma;
            effect = SystemEffect { flush_tlb: true, end_block: true };
        }
        0xc000_0081 => state.msr.star = value,
        0xc000_0082 => state.msr.lstar = value,
        0xc000_0083 => state.msr.cstar = value,
        0xc000_0084 => state.msr.sfmask = value,
        0xc000_0100 => state.segs[seg::FS].base = value,
        0xc000_0101 => state.segs[seg::GS].base = value,
        0xc000_0102 => state.msr.kernel_gs_base = value,
        0x1b => state.msr.apic_base = value,
        0x277 => state.msr.pat = value,
        _ => return Err(Exception::gp0()),
    }
    state.recompute_hflags();
    Ok(effect)
}

pub fn read_cr(state: &X86State, n: u8) -> Result<u64> {
    require_cpl0(state)?;
    Ok(match n {
        0 => state.cr0,
        2 => state.cr2,
        3 => state.cr3,
        4 => state.cr4,
        8 => state.cr8,
        _ => return Err(Exception::ud()),
    })
}

pub fn write_cr(state: &mut X86State, n: u8, value: u64) -> Result<SystemEffect> {
    require_cpl0(state)?;
    match n {
        0 => {
            state.cr0 = value | ctrl::CR0_ET;
            let paging = value & ctrl::CR0_PG != 0;
            if paging && state.efer & ctrl::EFER_LME != 0 {
                state.efer |= ctrl::EFER_LMA;
            } else if !paging {
                state.efer &= !ctrl::EFER_LMA;
            }
        }
        2 => state.cr2 = value,
        3 => state.cr3 = value,
        4 => state.cr4 = value,
        8 => state.cr8 = value & 0xf,
        _ => return Err(Exception::ud()),
    }
    state.recompute_hflags();
    Ok(SystemEffect { flush_tlb: n != 2 && n != 8, end_block: true })
}

pub fn lgdt(state: &mut X86State, base: u64, limit: u16) -> Result<()> {
    require_cpl0(state)?;
    state.gdtr.base = base;
    state.gdtr.limit = u32::from(limit);
    Ok(())
}

pub fn lidt(state: &mut X86State, base: u64, limit: u16) -> Result<()> {
    require_cpl0(state)?;
    state.idtr.base = base;
    state.idtr.limit = u32::from(limit);
    Ok(())
}

/// The guest TSC: host time since the first call, in nanoseconds, plus the
/// guest's offset.
pub fn rdtsc(state: &X86State) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let ns = START.get_or_init(Instant::now).elapsed().as_nanos() as u64;
    ns.wrapping_add(state.msr.tsc_offset as u64)
}

/// SYSCALL; `next_rip` is the instruction after it.
pub fn syscall(state: &mut X86State, next_rip: u64) -> Result<()> {
    if state.efer & ctrl::EFER_SCE == 0 || state.hflags & hflags::LMA == 0 {
        return Err(Exception::ud());
    }
    let sel = ((state.msr.star >> 32) & 0xfffc) as u16;
    state.gpr[1] = next_rip;
    state.gpr[11] = state.rflags;
    state.rflags &= !state.msr.sfmask;
    state.segs[seg::CS] = SegmentCache { base: 0, limit: 0xffff_ffff, attr: 0xa09b, selector: sel };
    state.segs[seg::SS] = SegmentCache { base: 0, limit: 0xffff_ffff, attr: 0xc093, selector: sel + 8 };
    state.rip = state.msr.lstar;
    state.recompute_hflags();
    Ok(())
}

pub fn sysret(state: &mut X86State, operand_size: u8) -> Result<()> {
    require_cpl0(state)?;
    let base = ((state.msr.star >> 48) & 0xffff) as u16;
    let (cs, rip) = if operand_size == 8 { (base + 16, state.gpr[1]) } else { (base, state.gpr[1] & 0xffff_ffff) };
    let attr = if operand_size == 8 { 0xa0fb } else { 0xc0fb };
    state.segs[seg::CS] = SegmentCache { base: 0, limit: 0xffff_ffff, attr, selector: cs | 3 };
    state.segs[seg::SS] = SegmentCache { base: 0, limit: 0xffff_ffff, attr: 0xc0f3, selector: (base + 8) | 3 };
    state.rflags = (state.gpr[11] & 0x3c_7fd7) | 2;
    state.rip = rip;
    state.recompute_hflags();
    Ok(())
}

pub fn swapgs(state: &mut X86State) -> Result<()> {
    require_cpl0(state)?;
    std::mem::swap(&mut state.segs[seg::GS].base, &mut state.msr.kernel_gs_base);
    Ok(())
}
