//! Helpers for system instructions: control- and debug-register moves,
//! MSRs ([`msr`]), CPUID ([`cpuid`]), descriptor-table loads and stores,
//! SYSCALL/SYSRET/SWAPGS/SYSENTER/SYSEXIT, the TSC, the I/O permission
//! check and HLT.
//!
//! Privileged helpers check CPL themselves (#GP(0) above 0), so the
//! translator may call them without its own check. Every helper checks
//! before it writes: an `Err` leaves the state untouched.

pub mod cpuid;
pub mod msr;
#[cfg(test)]
mod tests;

pub use cpuid::{cpuid, cpuid_with, Features, CRYSTAL_HZ, FEATURES, TSC_HZ};
pub use msr::{rdmsr, wrmsr};

use std::sync::OnceLock;
use std::time::Instant;

use super::exception::{Exception, Result};
use super::interrupts::set_rflags;
use super::mmu::walker::PHYS_ADDR_BITS;
use super::mmu::{Access, LinearMemory, Privilege};
use super::segmentation::{in_64bit_code, is_canonical, long_mode, real_or_vm86};
use super::state::{ctrl, hflags, rflags, seg, SegmentCache, X86State};

/// What a system-register write asks of the vCPU loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemEffect {
    /// Nothing beyond the register write.
    None,
    /// Drop the non-global TLB entries (MOV CR3).
    FlushTlb,
    /// End the translation block and look the next one up with the
    /// recomputed hflags (mode, CPL, FPU trap bits), or because something
    /// the loop checks between blocks changed (CR8, EFER.LME, CR4 bits).
    ModeChanged,
    /// Drop every TLB entry, global ones too, and end the block: CR0.PG/PE/WP,
    /// CR4.PGE/PAE/PSE, EFER.NXE changed.
    FlushTlbAndModeChanged,
}

impl SystemEffect {
    /// Whether TLB entries must go (all of them if [`Self::flush_global`]).
    pub fn flush_tlb(self) -> bool {
        matches!(self, SystemEffect::FlushTlb | SystemEffect::FlushTlbAndModeChanged)
    }
    /// Whether global entries must go too.
    pub fn flush_global(self) -> bool {
        self == SystemEffect::FlushTlbAndModeChanged
    }
    /// Whether the current translation block must end after the instruction.
    pub fn ends_block(self) -> bool {
        self != SystemEffect::None
    }
}

fn require_cpl0(state: &X86State) -> Result<()> {
    if state.cpl() != 0 {
        return Err(Exception::gp0());
    }
    Ok(())
}

/// CR0 bits that exist; writes to the other low bits are ignored (SDM 2.5).
const CR0_VALID: u64 = ctrl::CR0_PE
    | ctrl::CR0_MP
    | ctrl::CR0_EM
    | ctrl::CR0_TS
    | ctrl::CR0_ET
    | ctrl::CR0_NE
    | ctrl::CR0_WP
    | ctrl::CR0_AM
    | ctrl::CR0_NW
    | ctrl::CR0_CD
    | ctrl::CR0_PG;

/// CR4 bits the CPU has (the features CPUID advertises); any other → #GP.
pub const CR4_VALID: u64 = ctrl::CR4_TSD
    | ctrl::CR4_DE
    | ctrl::CR4_PSE
    | ctrl::CR4_PAE
    | ctrl::CR4_PGE
    | ctrl::CR4_PCE
    | ctrl::CR4_OSFXSR
    | ctrl::CR4_OSXMMEXCPT;

/// MOV from CR0/2/3/4/8. #UD for other registers, #GP(0) at CPL > 0.
pub fn read_cr(state: &X86State, n: u8) -> Result<u64> {
    require_cpl0(state)?;
    match n {
        0 => Ok(state.cr0),
        2 => Ok(state.cr2),
        3 => Ok(state.cr3),
        4 => Ok(state.cr4),
        8 => Ok(state.cr8),
        _ => Err(Exception::ud()),
    }
}

/// MOV to CR0/2/3/4/8 (SDM Vol. 2 MOV—Move to/from Control Registers).
/// Turning CR0.PG on with EFER.LME sets EFER.LMA (needs CR4.PAE, and CS.L
/// clear); turning it off leaves IA-32e mode (not from 64-bit code).
pub fn write_cr(state: &mut X86State, n: u8, value: u64) -> Result<SystemEffect> {
    require_cpl0(state)?;
    match n {
        0 => write_cr0(state, value),
        2 => {
            state.cr2 = if long_mode(state) { value } else { value & 0xffff_ffff };
            Ok(SystemEffect::None)
        }
        3 => {
            let value = if long_mode(state) {
                // Bits at or above MAXPHYADDR (bit 63 too without PCIDE) are reserved.
                if value & !((1u64 << PHYS_ADDR_BITS) - 1) != 0 {
                    return Err(Exception::gp0());
                }
                value
            } else {
                value & 0xffff_ffff
            };
            state.cr3 = value;
            Ok(SystemEffect::FlushTlb)
        }
        4 => write_cr4(state, value),
        8 => {
            if value >> 4 != 0 {
                return Err(Exception::gp0());
            }
            state.cr8 = value;
            // A lower TPR may unmask a pending interrupt: back to the loop.
            Ok(SystemEffect::ModeChanged)
        }
        _ => Err(Exception::ud()),
    }
}

fn write_cr0(state: &mut X86State, value: u64) -> Result<SystemEffect> {
    if value >> 32 != 0 {
        return Err(Exception::gp0());
    }
    let old = state.cr0;
    let new = (value & CR0_VALID) | ctrl::CR0_ET;
    if new & ctrl::CR0_PG != 0 && new & ctrl::CR0_PE == 0 {
        return Err(Exception::gp0());
    }
    if new & ctrl::CR0_NW != 0 && new & ctrl::CR0_CD == 0 {
        return Err(Exception::gp0());
    }
    let mut efer = state.efer;
    let pg_on = old & ctrl::CR0_PG == 0 && new & ctrl::CR0_PG != 0;
    let pg_off = old & ctrl::CR0_PG != 0 && new & ctrl::CR0_PG == 0;
    if pg_on && efer & ctrl::EFER_LME != 0 {
        // SDM 9.8.5: activating IA-32e mode needs PAE, and not from L=1 code.
        if state.cr4 & ctrl::CR4_PAE == 0 || state.segs[seg::CS].attr & SegmentCache::ATTR_L != 0 {
            return Err(Exception::gp0());
        }
        efer |= ctrl::EFER_LMA;
    }
    if pg_off && efer & ctrl::EFER_LMA != 0 {
        // Leaving IA-32e mode is only possible from compatibility mode.
        if in_64bit_code(state) {
            return Err(Exception::gp0());
        }
        efer &= !ctrl::EFER_LMA;
    }
    state.cr0 = new;
    state.efer = efer;
    state.recompute_hflags();
    let changed = old ^ new;
    Ok(if changed & (ctrl::CR0_PG | ctrl::CR0_PE | ctrl::CR0_WP) != 0 {
        SystemEffect::FlushTlbAndModeChanged
    } else if changed & (ctrl::CR0_TS | ctrl::CR0_EM | ctrl::CR0_MP | ctrl::CR0_NE | ctrl::CR0_AM) != 0 {
        SystemEffect::ModeChanged
    } else {
        SystemEffect::None
    })
}

fn write_cr4(state: &mut X86State, value: u64) -> Result<SystemEffect> {
    if value & !CR4_VALID != 0 {
        return Err(Exception::gp0());
    }
    if long_mode(state) && value & ctrl::CR4_PAE == 0 {
        return Err(Exception::gp0());
    }
    let old = state.cr4;
    state.cr4 = value;
    state.recompute_hflags();
    let changed = old ^ value;
    Ok(if changed & (ctrl::CR4_PGE | ctrl::CR4_PAE | ctrl::CR4_PSE) != 0 {
        SystemEffect::FlushTlbAndModeChanged
    } else if changed != 0 {
        SystemEffect::ModeChanged
    } else {
        SystemEffect::None
    })
}

/// DR6 bits that read as 1 (SDM 17.2.3).
const DR6_FIXED1: u64 = 0xffff_0ff0;
/// DR7 bits that read as 1, and the bits that exist.
const DR7_FIXED1: u64 = 0x400;
const DR7_VALID: u64 = 0xffff_2bff;

/// DR4/DR5 alias DR6/DR7 unless CR4.DE, when they are #UD.
fn dr_index(state: &X86State, n: u8) -> Result<usize> {
    match n {
        0..=3 | 6 | 7 => Ok(usize::from(n)),
        4 | 5 if state.cr4 & ctrl::CR4_DE == 0 => Ok(usize::from(n) + 2),
        _ => Err(Exception::ud()),
    }
}

/// MOV from DRn. The values are kept but breakpoints are not implemented:
/// no #DB is ever raised from DR0-3/DR7.
pub fn read_dr(state: &X86State, n: u8) -> Result<u64> {
    require_cpl0(state)?;
    let i = dr_index(state, n)?;
    Ok(state.dr[i])
}

/// MOV to DRn (upper 32 bits of DR6/DR7 must be 0).
pub fn write_dr(state: &mut X86State, n: u8, value: u64) -> Result<SystemEffect> {
    require_cpl0(state)?;
    let i = dr_index(state, n)?;
    let value = if long_mode(state) { value } else { value & 0xffff_ffff };
    state.dr[i] = match i {
        6 | 7 if value >> 32 != 0 => return Err(Exception::gp0()),
        6 => (value & 0xe00f) | DR6_FIXED1,
        7 => (value & DR7_VALID) | DR7_FIXED1,
        _ => value,
    };
    Ok(SystemEffect::None)
}

/// Reads the limit and base of a pseudo-descriptor at `linear`: 8-byte base
/// in 64-bit mode, 24 bits with a 16-bit operand size, 32 otherwise.
fn read_pseudo_descriptor(
    state: &mut X86State,
    mem: &mut dyn LinearMemory,
    linear: u64,
    operand_size: u8,
) -> Result<(u64, u32)> {
    require_cpl0(state)?;
    let limit = mem.read(state, linear, 2, Access::Read, Privilege::Current)? as u32;
    let base_addr = if in_64bit_code(state) { linear.wrapping_add(2) } else { linear.wrapping_add(2) & 0xffff_ffff };
    let base = if in_64bit_code(state) {
        let b = mem.read(state, base_addr, 8, Access::Read, Privilege::Current)?;
        if !is_canonical(b) {
            return Err(Exception::gp0());
        }
        b
    } else {
        let b = mem.read(state, base_addr, 4, Access::Read, Privilege::Current)?;
        if operand_size == 2 {
            b & 0x00ff_ffff
        } else {
            b
        }
    };
    Ok((base, limit))
}

fn write_pseudo_descriptor(
    state: &mut X86State,
    mem: &mut dyn LinearMemory,
    linear: u64,
    base: u64,
    limit: u32,
) -> Result<()> {
    let (size, base_addr) =
        if in_64bit_code(state) { (8, linear.wrapping_add(2)) } else { (4, linear.wrapping_add(2) & 0xffff_ffff) };
    mem.write(state, linear, 2, u64::from(limit), Privilege::Current)?;
    mem.write(state, base_addr, size, base, Privilege::Current)
}

/// LGDT m16&32 / m16&64 at linear address `linear`.
pub fn lgdt(state: &mut X86State, mem: &mut dyn LinearMemory, linear: u64, operand_size: u8) -> Result<()> {
    let (base, limit) = read_pseudo_descriptor(state, mem, linear, operand_size)?;
    state.gdtr.base = base;
    state.gdtr.limit = limit;
    Ok(())
}

/// LIDT m16&32 / m16&64 at linear address `linear`.
pub fn lidt(state: &mut X86State, mem: &mut dyn LinearMemory, linear: u64, operand_size: u8) -> Result<()> {
    let (base, limit) = read_pseudo_descriptor(state, mem, linear, operand_size)?;
    state.idtr.base = base;
    state.idtr.limit = limit;
    Ok(())
}

/// SGDT: limit then base (8 bytes in 64-bit mode, else 4). Any CPL (no UMIP).
pub fn sgdt(state: &mut X86State, mem: &mut dyn LinearMemory, linear: u64) -> Result<()> {
    let (base, limit) = (state.gdtr.base, state.gdtr.limit);
    write_pseudo_descriptor(state, mem, linear, base, limit)
}

/// SIDT: as [`sgdt`] for the IDTR.
pub fn sidt(state: &mut X86State, mem: &mut dyn LinearMemory, linear: u64) -> Result<()> {
    let (base, limit) = (state.idtr.base, state.idtr.limit);
    write_pseudo_descriptor(state, mem, linear, base, limit)
}

/// LLDT: see [`crate::tcg::segmentation::load_ldt`].
pub fn lldt(state: &mut X86State, mem: &mut dyn LinearMemory, selector: u16) -> Result<()> {
    super::segmentation::load_ldt(state, mem, selector)
}

/// LTR: see [`crate::tcg::segmentation::load_tr`].
pub fn ltr(state: &mut X86State, mem: &mut dyn LinearMemory, selector: u16) -> Result<()> {
    super::segmentation::load_tr(state, mem, selector)
}

/// SLDT: the LDTR selector. #UD in real and vm86 mode.
pub fn sldt(state: &X86State) -> Result<u16> {
    if real_or_vm86(state) {
        return Err(Exception::ud());
    }
    Ok(state.ldtr.selector)
}

/// STR: the TR selector. #UD in real and vm86 mode.
pub fn str(state: &X86State) -> Result<u16> {
    if real_or_vm86(state) {
        return Err(Exception::ud());
    }
    Ok(state.tr.selector)
}

/// SMSW: CR0 (the caller keeps 16 bits for a memory operand).
pub fn smsw(state: &X86State) -> u64 {
    state.cr0
}

/// LMSW: loads CR0.PE/MP/EM/TS from `value`; PE can be set, not cleared.
pub fn lmsw(state: &mut X86State, value: u16) -> Result<SystemEffect> {
    require_cpl0(state)?;
    let v = u64::from(value);
    let new = (state.cr0 & !0xe) | (v & 0xf) | (state.cr0 & ctrl::CR0_PE);
    write_cr0(state, new)
}

/// CLTS: clears CR0.TS.
pub fn clts(state: &mut X86State) -> Result<SystemEffect> {
    require_cpl0(state)?;
    state.cr0 &= !ctrl::CR0_TS;
    state.recompute_hflags();
    Ok(SystemEffect::ModeChanged)
}

/// HLT: #GP(0) above CPL 0; otherwise marks the vCPU halted (the loop
/// parks it until an interrupt; delivery clears `halted`).
pub fn hlt(state: &mut X86State) -> Result<()> {
    require_cpl0(state)?;
    state.halted = true;
    Ok(())
}

// Flat 4 GiB descriptor caches that SYSCALL/SYSRET/SYSENTER/SYSEXIT load
// without reading the GDT (SDM Vol. 2 SYSCALL "Operation"): type 11 code
// or type 3 data, S, P, G, and L (64-bit code) or D/B.
const ATTR_CODE: u16 = 0xb | SegmentCache::ATTR_S | SegmentCache::ATTR_P | SegmentCache::ATTR_G;
const ATTR_DATA: u16 = 0x3 | SegmentCache::ATTR_S | SegmentCache::ATTR_P | SegmentCache::ATTR_G | SegmentCache::ATTR_DB;

fn flat_code(selector: u16, dpl: u8, long: bool) -> SegmentCache {
    let mode = if long { SegmentCache::ATTR_L } else { SegmentCache::ATTR_DB };
    SegmentCache { base: 0, limit: 0xffff_ffff, attr: ATTR_CODE | mode | u16::from(dpl) << 5, selector }
}

fn flat_data(selector: u16, dpl: u8) -> SegmentCache {
    SegmentCache { base: 0, limit: 0xffff_ffff, attr: ATTR_DATA | u16::from(dpl) << 5, selector }
}

/// SYSCALL (64-bit mode only on Intel; #UD otherwise or without EFER.SCE):
/// RCX = `next_rip`, R11 = RFLAGS, RFLAGS &= !SFMASK (and RF), CS/SS from
/// STAR[47:32], RIP = LSTAR, CPL 0.
pub fn syscall(state: &mut X86State, next_rip: u64) -> Result<()> {
    if !in_64bit_code(state) || state.efer & ctrl::EFER_SCE == 0 {
        return Err(Exception::ud());
    }
    let fl = super::flags::rflags(state);
    state.gpr[1] = next_rip;
    state.gpr[11] = fl & !rflags::RF;
    let sel = ((state.msr.star >> 32) & 0xffff) as u16;
    state.segs[seg::CS] = flat_code(sel & 0xfffc, 0, true);
    state.segs[seg::SS] = flat_data(sel.wrapping_add(8), 0);
    set_rflags(state, fl & !(state.msr.sfmask | rflags::RF));
    state.rip = state.msr.lstar;
    state.recompute_hflags();
    Ok(())
}

/// SYSRET: back to CPL 3 in 64-bit mode (operand size 8: CS =
/// STAR[63:48] + 16, RIP = RCX, #GP(0) if not canonical) or compatibility
/// mode (CS = STAR[63:48], EIP = ECX); SS = STAR[63:48] + 8; RFLAGS = R11.
pub fn sysret(state: &mut X86State, operand_size: u8) -> Result<()> {
    if !in_64bit_code(state) || state.efer & ctrl::EFER_SCE == 0 {
        return Err(Exception::ud());
    }
    require_cpl0(state)?;
    let base = ((state.msr.star >> 48) & 0xffff) as u16;
    let rcx = state.gpr[1];
    let (cs, rip) = if operand_size == 8 {
        if !is_canonical(rcx) {
            return Err(Exception::gp0());
        }
        (flat_code(base.wrapping_add(16) | 3, 3, true), rcx)
    } else {
        (flat_code(base | 3, 3, false), rcx & 0xffff_ffff)
    };
    state.segs[seg::CS] = cs;
    state.segs[seg::SS] = flat_data(base.wrapping_add(8) | 3, 3);
    // RF and VM cleared, bit 1 set (the SDM's 3C7FD7H mask).
    set_rflags(state, state.gpr[11] & 0x3c_7fd7);
    state.rip = rip;
    state.recompute_hflags();
    Ok(())
}

/// SWAPGS: exchanges GS.base with IA32_KERNEL_GS_BASE. #UD outside 64-bit
/// mode, #GP(0) above CPL 0.
pub fn swapgs(state: &mut X86State) -> Result<()> {
    if !in_64bit_code(state) {
        return Err(Exception::ud());
    }
    require_cpl0(state)?;
    std::mem::swap(&mut state.segs[seg::GS].base, &mut state.msr.kernel_gs_base);
    Ok(())
}

/// SYSENTER: to CPL 0 at SYSENTER_CS:SYSENTER_EIP with SYSENTER_ESP
/// (64-bit code in IA-32e mode). #GP(0) in real mode or with a null
/// SYSENTER_CS.
pub fn sysenter(state: &mut X86State) -> Result<()> {
    let cs = (state.msr.sysenter_cs & 0xffff) as u16;
    if state.cr0 & ctrl::CR0_PE == 0 || cs & 0xfffc == 0 {
        return Err(Exception::gp0());
    }
    let lma = long_mode(state);
    state.rflags &= !(rflags::VM | rflags::IF | rflags::RF);
    state.segs[seg::CS] = flat_code(cs & 0xfffc, 0, lma);
    state.segs[seg::SS] = flat_data((cs & 0xfffc).wrapping_add(8), 0);
    let mask = if lma { u64::MAX } else { 0xffff_ffff };
    state.gpr[4] = state.msr.sysenter_esp & mask;
    state.rip = state.msr.sysenter_eip & mask;
    state.recompute_hflags();
    Ok(())
}

/// SYSEXIT: to CPL 3 at RDX with stack RCX; operand size 8 returns to
/// 64-bit code (CS = SYSENTER_CS + 32), else to 32-bit code (+ 16).
pub fn sysexit(state: &mut X86State, operand_size: u8) -> Result<()> {
    let cs = (state.msr.sysenter_cs & 0xffff) as u16;
    if state.cr0 & ctrl::CR0_PE == 0 || cs & 0xfffc == 0 || real_or_vm86(state) {
        return Err(Exception::gp0());
    }
    require_cpl0(state)?;
    let (rdx, rcx) = (state.gpr[2], state.gpr[1]);
    let (new_cs, new_ss, rip, rsp) = if operand_size == 8 {
        if !is_canonical(rdx) || !is_canonical(rcx) {
            return Err(Exception::gp0());
        }
        (flat_code(cs.wrapping_add(32) | 3, 3, true), flat_data(cs.wrapping_add(40) | 3, 3), rdx, rcx)
    } else {
        (
            flat_code(cs.wrapping_add(16) | 3, 3, false),
            flat_data(cs.wrapping_add(24) | 3, 3),
            rdx & 0xffff_ffff,
            rcx & 0xffff_ffff,
        )
    };
    state.segs[seg::CS] = new_cs;
    state.segs[seg::SS] = new_ss;
    state.rip = rip;
    state.gpr[4] = rsp;
    state.recompute_hflags();
    Ok(())
}

/// The host's TSC-rate clock: CLOCK_MONOTONIC (`Instant`) since the first
/// call in this process, at [`TSC_HZ`]. One clock for all vCPUs and VMs,
/// so TSCs are synchronised and never go backwards; each VM picks its
/// epoch through `tsc_offset` ([`tsc_offset_for`]).
pub fn host_tsc() -> u64 {
    let ns = tsc_epoch().elapsed().as_nanos();
    (ns * u128::from(TSC_HZ) / 1_000_000_000) as u64
}

fn tsc_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The `tsc_offset` that makes the guest TSC read 0 at `start`: RDTSC then
/// counts the same clock as a `GuestClock` started at `start`, exactly
/// (both are whole TSC ticks of `Instant` time).
pub fn tsc_offset_at(start: Instant) -> i64 {
    let epoch = tsc_epoch();
    let ticks = |ns: u128| (ns * u128::from(TSC_HZ) / 1_000_000_000) as i64;
    if start >= epoch {
        ticks((start - epoch).as_nanos()).wrapping_neg()
    } else {
        ticks((epoch - start).as_nanos())
    }
}

/// The `tsc_offset` that makes the guest TSC read `guest_tsc` now. A VM
/// computes it once at creation (with 0, as after RESET) and gives it to
/// every vCPU.
pub fn tsc_offset_for(guest_tsc: u64) -> i64 {
    guest_tsc.wrapping_sub(host_tsc()) as i64
}

/// The guest TSC (RDTSC's value; no privilege check: see [`check_rdtsc`]).
pub fn rdtsc(state: &X86State) -> u64 {
    host_tsc().wrapping_add(state.msr.tsc_offset as u64)
}

/// RDTSCP's values: the TSC and IA32_TSC_AUX (for ECX).
pub fn rdtscp(state: &X86State) -> (u64, u32) {
    (rdtsc(state), state.msr.tsc_aux as u32)
}

/// RDTSC/RDTSCP are #GP(0) above CPL 0 when CR4.TSD is set.
pub fn check_rdtsc(state: &X86State) -> Result<()> {
    if state.cr4 & ctrl::CR4_TSD != 0 && state.cpl() != 0 && state.hflags & hflags::PE != 0 {
        return Err(Exception::gp0());
    }
    Ok(())
}

/// IN/OUT/INS/OUTS permission for `size` bytes at `port` (SDM 19.5):
/// always in real mode and at CPL <= IOPL; otherwise (and always in vm86)
/// every bit for the ports in the TSS I/O bitmap must be 0, else #GP(0).
pub fn io_permitted(state: &mut X86State, mem: &mut dyn LinearMemory, port: u16, size: u8) -> Result<()> {
    if state.hflags & hflags::PE == 0 {
        return Ok(());
    }
    let iopl = ((state.rflags & rflags::IOPL) >> 12) as u8;
    if state.hflags & hflags::VM86 == 0 && state.cpl() <= iopl {
        return Ok(());
    }
    let tr = state.tr;
    // Only a 32/64-bit TSS (type 9/11) has a bitmap; its base is at 0x66.
    if !tr.present() || tr.seg_type() & 0x9 != 0x9 || tr.limit < 103 {
        return Err(Exception::gp0());
    }
    let lma = long_mode(state);
    let linear = |off: u64| {
        let a = tr.base.wrapping_add(off);
        if lma {
            a
        } else {
            a & 0xffff_ffff
        }
    };
    let bitmap = mem.read(state, linear(0x66), 2, Access::Read, Privilege::Supervisor)?;
    let byte = bitmap + u64::from(port / 8);
    // Two bytes are always read: an access may straddle a byte boundary.
    if byte + 1 > u64::from(tr.limit) {
        return Err(Exception::gp0());
    }
    let bits = mem.read(state, linear(byte), 2, Access::Read, Privilege::Supervisor)?;
    let mask = ((1u64 << size.min(4)) - 1) << (port & 7);
    if bits & mask != 0 {
        return Err(Exception::gp0());
    }
    Ok(())
}
