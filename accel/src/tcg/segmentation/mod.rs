//! Segmentation: descriptor-table lookups, segment-register loads with their
//! type and privilege checks (SDM Vol. 3 chapter 5), LLDT/LTR, and the far
//! transfers of [`far`] (JMP/CALL/RET FAR, call gates).
//!
//! Every function checks everything that can fault *before* it changes
//! `X86State`, so an `Err` leaves the registers as they were (the IR's
//! precise-exception contract); only guest-memory writes (accessed/busy
//! bits, pushes) may already have happened, as on hardware.
//!
//! Not modelled: task switches (JMP/CALL to a TSS or task gate raise #GP with
//! a log line), segment-limit checks on stack pushes and pops (flat stacks
//! are all Linux uses), and descriptor-table writes being atomic with other
//! vCPUs (the accessed/busy bit updates are plain byte writes).

pub(crate) mod far;
#[cfg(test)]
pub(crate) mod test_mem;
#[cfg(test)]
mod tests;

pub use far::{far_call, far_jump, far_return};

use super::exception::{vector, Exception, Result};
use super::mmu::{Access, LinearMemory, Privilege};
use super::state::{hflags, rflags, seg, SegmentCache, X86State};

/// Accessed bit of a code/data descriptor's type field (attr bit 0).
const TYPE_ACCESSED: u16 = 1;
/// Busy bit of a TSS descriptor's type field.
const TYPE_TSS_BUSY: u8 = 2;

/// System-descriptor types (S = 0), SDM Vol. 3 Table 3-2.
pub mod sys_type {
    pub const TSS16_AVAIL: u8 = 0x1;
    pub const LDT: u8 = 0x2;
    pub const TSS16_BUSY: u8 = 0x3;
    pub const CALL_GATE16: u8 = 0x4;
    pub const TASK_GATE: u8 = 0x5;
    pub const INT_GATE16: u8 = 0x6;
    pub const TRAP_GATE16: u8 = 0x7;
    pub const TSS32_AVAIL: u8 = 0x9;
    pub const TSS32_BUSY: u8 = 0xb;
    /// 32-bit call gate; a 64-bit call gate in IA-32e mode.
    pub const CALL_GATE32: u8 = 0xc;
    pub const INT_GATE32: u8 = 0xe;
    pub const TRAP_GATE32: u8 = 0xf;
}

/// One 8-byte segment or gate descriptor as it sits in the GDT/LDT/IDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor(pub u64);

impl Descriptor {
    pub fn base(self) -> u64 {
        ((self.0 >> 16) & 0x00ff_ffff) | ((self.0 >> 32) & 0xff00_0000)
    }
    /// Limit in bytes, granularity applied.
    pub fn limit(self) -> u32 {
        let raw = (self.0 & 0xffff) as u32 | ((self.0 >> 32) as u32 & 0x000f_0000);
        if self.attr() & SegmentCache::ATTR_G != 0 {
            (raw << 12) | 0xfff
        } else {
            raw
        }
    }
    /// Bits 40..=55 in [`SegmentCache::attr`] layout, without limit 19:16.
    pub fn attr(self) -> u16 {
        ((self.0 >> 40) as u16) & 0xf0ff
    }
    /// The 4-bit type field.
    pub fn typ(self) -> u8 {
        ((self.0 >> 40) & 0xf) as u8
    }
    pub fn dpl(self) -> u8 {
        ((self.0 >> 45) & 3) as u8
    }
    pub fn present(self) -> bool {
        self.attr() & SegmentCache::ATTR_P != 0
    }
    /// S = 0: an LDT, TSS or gate.
    pub fn is_system(self) -> bool {
        self.attr() & SegmentCache::ATTR_S == 0
    }
    pub fn is_code(self) -> bool {
        !self.is_system() && self.typ() & 8 != 0
    }
    pub fn is_data(self) -> bool {
        !self.is_system() && self.typ() & 8 == 0
    }
    pub fn conforming(self) -> bool {
        self.is_code() && self.typ() & 4 != 0
    }
    /// Readable code or any data segment: may be loaded into DS/ES/FS/GS.
    pub fn readable(self) -> bool {
        self.is_data() || self.typ() & 2 != 0
    }
    pub fn writable_data(self) -> bool {
        self.is_data() && self.typ() & 2 != 0
    }
    /// L = 1, D = 0: 64-bit code (with EFER.LMA).
    pub fn is_64bit_code(self) -> bool {
        let a = self.attr();
        self.is_code() && a & SegmentCache::ATTR_L != 0 && a & SegmentCache::ATTR_DB == 0
    }
    /// Gates: the target code-segment selector.
    pub fn gate_selector(self) -> u16 {
        (self.0 >> 16) as u16
    }
    /// Gates: offset bits 31:0 (a 16-bit gate uses only 15:0).
    pub fn gate_offset(self) -> u64 {
        (self.0 & 0xffff) | ((self.0 >> 32) & 0xffff_0000)
    }
    /// Call gates: the parameter count (dwords or words to copy).
    pub fn gate_params(self) -> u8 {
        ((self.0 >> 32) & 0x1f) as u8
    }
    /// 64-bit interrupt/trap gates: the IST index (0 = none).
    pub fn gate_ist(self) -> u8 {
        ((self.0 >> 32) & 7) as u8
    }
    /// The descriptor cache this descriptor loads, with the accessed bit set
    /// for code/data (the load sets it in memory too).
    pub fn cache(self, selector: u16) -> SegmentCache {
        let accessed = if self.is_system() { 0 } else { TYPE_ACCESSED };
        SegmentCache { base: self.base(), limit: self.limit(), attr: self.attr() | accessed, selector }
    }
}

/// A selector's table-index-and-TI part as an error code, plus EXT (bit 0).
pub(crate) fn sel_code(selector: u16, ext: u32) -> u32 {
    u32::from(selector & 0xfffc) | ext
}

pub(crate) fn gp_sel(selector: u16) -> Exception {
    Exception::gp(sel_code(selector, 0))
}

pub(crate) fn np_sel(selector: u16) -> Exception {
    Exception::with_code(vector::NP, sel_code(selector, 0))
}

pub(crate) fn ss_sel(selector: u16) -> Exception {
    Exception::with_code(vector::SS, sel_code(selector, 0))
}

/// Whether `addr` is canonical for 48-bit linear addresses.
pub(crate) fn is_canonical(addr: u64) -> bool {
    (((addr << 16) as i64) >> 16) as u64 == addr
}

/// Real mode or virtual-8086 mode: selectors are paragraph numbers.
pub(crate) fn real_or_vm86(state: &X86State) -> bool {
    state.hflags & hflags::PE == 0 || state.hflags & hflags::VM86 != 0
}

pub(crate) fn long_mode(state: &X86State) -> bool {
    state.hflags & hflags::LMA != 0
}

pub(crate) fn in_64bit_code(state: &X86State) -> bool {
    state.hflags & hflags::CS64 != 0
}

/// Where `selector`'s descriptor lives, if its `size`-byte entry (8, or 16
/// for long-mode system descriptors) is inside the GDT/LDT limit.
fn descriptor_addr(state: &X86State, selector: u16, size: u64) -> Option<u64> {
    let (base, limit) = if selector & 4 != 0 {
        // SDM 3.5.1: a selector into an unusable (null) LDTR is out of limit.
        if state.ldtr.selector & 0xfffc == 0 || !state.ldtr.present() {
            return None;
        }
        (state.ldtr.base, state.ldtr.limit)
    } else {
        (state.gdtr.base, state.gdtr.limit)
    };
    let offset = u64::from(selector & 0xfff8);
    if offset + size - 1 > u64::from(limit) {
        return None;
    }
    Some(table_linear(state, base.wrapping_add(offset)))
}

/// Descriptor-table addresses wrap at 4 GiB outside long mode.
fn table_linear(state: &X86State, addr: u64) -> u64 {
    if long_mode(state) {
        addr
    } else {
        addr & 0xffff_ffff
    }
}

/// Reads `selector`'s 8-byte descriptor; `err` if it is outside the table.
/// Returns the descriptor's linear address too (for accessed/busy updates).
pub(crate) fn fetch_descriptor(
    state: &mut X86State,
    mem: &mut dyn LinearMemory,
    selector: u16,
    err: Exception,
) -> Result<(u64, Descriptor)> {
    let addr = descriptor_addr(state, selector, 8).ok_or(err)?;
    let raw = mem.read(state, addr, 8, Access::Read, Privilege::Supervisor)?;
    Ok((addr, Descriptor(raw)))
}

/// Reads a 16-byte long-mode system descriptor (LDT, TSS, call gate):
/// the low half and the high half's first dword (base/offset 63:32) and
/// its type field (bits 8..13 of the second dword, which must be 0).
pub(crate) fn fetch_system_descriptor16(
    state: &mut X86State,
    mem: &mut dyn LinearMemory,
    selector: u16,
    err: Exception,
) -> Result<(u64, Descriptor, u64)> {
    let addr = descriptor_addr(state, selector, 16).ok_or(err)?;
    let lo = mem.read(state, addr, 8, Access::Read, Privilege::Supervisor)?;
    let hi = mem.read(state, table_linear(state, addr.wrapping_add(8)), 8, Access::Read, Privilege::Supervisor)?;
    Ok((addr, Descriptor(lo), hi))
}

/// Sets the accessed bit of the code/data descriptor at `addr` if clear
/// (SDM 3.4.5.1: the processor sets it on every segment-register load).
pub(crate) fn set_accessed(state: &mut X86State, mem: &mut dyn LinearMemory, addr: u64, d: Descriptor) -> Result<()> {
    if d.is_system() || d.attr() & TYPE_ACCESSED != 0 {
        return Ok(());
    }
    let byte5 = u64::from((d.0 >> 40) as u8 | TYPE_ACCESSED as u8);
    mem.write(state, table_linear(state, addr.wrapping_add(5)), 1, byte5, Privilege::Supervisor)
}

/// The cache of a null selector in DS/ES/FS/GS: unusable (P = 0), base 0
/// (Intel clears the base, unlike AMD without NullSelectorClearsBase).
pub(crate) fn null_segment(selector: u16) -> SegmentCache {
    SegmentCache { base: 0, limit: 0, attr: 0, selector }
}

/// SS after an inter-privilege transfer in IA-32e mode: the null selector
/// with RPL = `cpl` (SDM 6.14.4). The cache keeps DPL = `cpl` because the
/// engine derives CPL from SS.DPL (`X86State::recompute_hflags`).
pub(crate) fn null_ss(cpl: u8) -> SegmentCache {
    let attr = SegmentCache::ATTR_P | SegmentCache::ATTR_S | 0x3 | (u16::from(cpl) << 5);
    SegmentCache { base: 0, limit: 0xffff_ffff, attr, selector: u16::from(cpl) }
}

/// Loads CS from a checked code descriptor with RPL = `cpl`.
pub(crate) fn load_cs(state: &mut X86State, d: Descriptor, selector: u16, cpl: u8) {
    state.segs[seg::CS] = d.cache((selector & 0xfffc) | u16::from(cpl));
}

/// Loads a segment register from a selector (MOV Sreg, POP Sreg, LDS/LES/
/// LFS/LGS/LSS). `seg_index` is a [`seg`] index other than CS (CS only
/// changes through far transfers; asking for it is #UD).
///
/// Real mode: base = selector << 4, limit and attributes kept (so "unreal
/// mode" works as on hardware). vm86: a 64 KiB DPL-3 data segment.
/// Protected/long mode: SDM Vol. 2 MOV, "Operation": #GP(sel) for a bad
/// type or privilege, #NP(sel) (#SS(sel) for SS) if not present, a null
/// selector allowed in DS/ES/FS/GS, and in SS only in 64-bit mode at
/// CPL < 3 with RPL = CPL. FS/GS take the descriptor's 32-bit base; the
/// FS_BASE/GS_BASE MSRs overwrite it later.
pub fn load_segment(state: &mut X86State, mem: &mut dyn LinearMemory, seg_index: usize, selector: u16) -> Result<()> {
    if seg_index == seg::CS || seg_index >= state.segs.len() {
        return Err(Exception::ud());
    }
    if state.hflags & hflags::PE == 0 {
        let s = &mut state.segs[seg_index];
        s.selector = selector;
        s.base = u64::from(selector) << 4;
        return Ok(());
    }
    if state.hflags & hflags::VM86 != 0 {
        let mut cache = SegmentCache::real_mode(selector);
        cache.attr |= 3 << 5;
        state.segs[seg_index] = cache;
        return Ok(());
    }
    let cpl = state.cpl();
    let rpl = (selector & 3) as u8;
    if selector & 0xfffc == 0 {
        if seg_index == seg::SS {
            // 64-bit mode exceptions of MOV: null SS only at CPL < 3, RPL = CPL.
            if !in_64bit_code(state) || cpl == 3 || rpl != cpl {
                return Err(Exception::gp0());
            }
            let mut ss = null_ss(cpl);
            ss.selector = selector;
            state.segs[seg::SS] = ss;
            state.recompute_hflags();
        } else {
            state.segs[seg_index] = null_segment(selector);
        }
        return Ok(());
    }
    let (addr, d) = fetch_descriptor(state, mem, selector, gp_sel(selector))?;
    if seg_index == seg::SS {
        if rpl != cpl || !d.writable_data() || d.dpl() != cpl {
            return Err(gp_sel(selector));
        }
        if !d.present() {
            return Err(ss_sel(selector));
        }
    } else {
        if !d.readable() {
            return Err(gp_sel(selector));
        }
        // Data and non-conforming code: DPL >= max(CPL, RPL) (SDM 5.6).
        if !d.conforming() && (rpl > d.dpl() || cpl > d.dpl()) {
            return Err(gp_sel(selector));
        }
        if !d.present() {
            return Err(np_sel(selector));
        }
    }
    set_accessed(state, mem, addr, d)?;
    state.segs[seg_index] = d.cache(selector);
    if seg_index == seg::SS {
        state.recompute_hflags();
    }
    Ok(())
}

/// After a return to an outer privilege level (RET FAR, IRET): DS/ES/FS/GS
/// holding data or non-conforming code with DPL < the new CPL become null
/// (SDM Vol. 2 RET, "RETURN-TO-OUTER-PRIVILEGE-LEVEL"). Base and limit are
/// kept, as QEMU does, so an FS/GS base set through the MSRs survives a
/// null selector already there.
pub(crate) fn null_inaccessible_data_segments(state: &mut X86State, new_cpl: u8) {
    for i in [seg::ES, seg::DS, seg::FS, seg::GS] {
        let s = &mut state.segs[i];
        if (i == seg::FS || i == seg::GS) && s.selector & 0xfffc == 0 {
            continue;
        }
        let is_code = s.attr & SegmentCache::ATTR_S != 0 && s.attr & 8 != 0;
        let conforming = is_code && s.attr & 4 != 0;
        if !conforming && s.dpl() < new_cpl {
            s.selector = 0;
            s.attr &= !SegmentCache::ATTR_P;
        }
    }
}

/// LLDT: loads LDTR from a GDT selector (SDM Vol. 2 LLDT). A null selector
/// leaves LDTR unusable; 16-byte descriptors in IA-32e mode.
pub fn load_ldt(state: &mut X86State, mem: &mut dyn LinearMemory, selector: u16) -> Result<()> {
    if real_or_vm86(state) {
        return Err(Exception::ud());
    }
    if state.cpl() != 0 {
        return Err(Exception::gp0());
    }
    if selector & 0xfffc == 0 {
        state.ldtr = SegmentCache { base: 0, limit: 0, attr: 0, selector };
        return Ok(());
    }
    if selector & 4 != 0 {
        return Err(gp_sel(selector));
    }
    let err = gp_sel(selector);
    let (d, base) = if long_mode(state) {
        let (_, d, hi) = fetch_system_descriptor16(state, mem, selector, err)?;
        (d, d.base() | (hi & 0xffff_ffff) << 32)
    } else {
        let (_, d) = fetch_descriptor(state, mem, selector, err)?;
        (d, d.base())
    };
    if !d.is_system() || d.typ() != sys_type::LDT {
        return Err(err);
    }
    if !d.present() {
        return Err(np_sel(selector));
    }
    if !is_canonical(base) {
        return Err(err);
    }
    let mut cache = d.cache(selector);
    cache.base = base;
    state.ldtr = cache;
    Ok(())
}

/// LTR: loads TR from an available TSS descriptor in the GDT and marks it
/// busy there (SDM Vol. 2 LTR). IA-32e mode accepts only the 64-bit TSS
/// (type 9, 16 bytes).
pub fn load_tr(state: &mut X86State, mem: &mut dyn LinearMemory, selector: u16) -> Result<()> {
    if real_or_vm86(state) {
        return Err(Exception::ud());
    }
    if state.cpl() != 0 {
        return Err(Exception::gp0());
    }
    if selector & 0xfffc == 0 {
        return Err(Exception::gp0());
    }
    if selector & 4 != 0 {
        return Err(gp_sel(selector));
    }
    let err = gp_sel(selector);
    let lma = long_mode(state);
    let (addr, d, base) = if lma {
        let (addr, d, hi) = fetch_system_descriptor16(state, mem, selector, err)?;
        (addr, d, d.base() | (hi & 0xffff_ffff) << 32)
    } else {
        let (addr, d) = fetch_descriptor(state, mem, selector, err)?;
        (addr, d, d.base())
    };
    let type_ok = match d.typ() {
        sys_type::TSS32_AVAIL => true,
        sys_type::TSS16_AVAIL => !lma,
        _ => false,
    };
    if !d.is_system() || !type_ok {
        return Err(err);
    }
    if !d.present() {
        return Err(np_sel(selector));
    }
    if !is_canonical(base) {
        return Err(err);
    }
    let busy = u64::from((d.0 >> 40) as u8 | TYPE_TSS_BUSY);
    mem.write(state, table_linear(state, addr.wrapping_add(5)), 1, busy, Privilege::Supervisor)?;
    let mut cache = d.cache(selector);
    cache.base = base;
    cache.attr |= u16::from(TYPE_TSS_BUSY);
    state.tr = cache;
    Ok(())
}

/// The inner stack SS:ESP for privilege level `dpl` from a 16- or 32-bit
/// TSS (SDM 7.2.1); #TS(TR | EXT) if TR is unusable or too short.
pub(crate) fn tss_stack_legacy(
    state: &mut X86State,
    mem: &mut dyn LinearMemory,
    dpl: u8,
    ext: u32,
) -> Result<(u16, u32)> {
    let tr = state.tr;
    let ts = Exception::with_code(vector::TS, sel_code(tr.selector, ext));
    if !tr.present() {
        return Err(ts);
    }
    let dpl = u64::from(dpl);
    let is32 = tr.seg_type() & 8 != 0;
    let (sp_off, sp_size, ss_off) = if is32 { (4 + dpl * 8, 4, 8 + dpl * 8) } else { (2 + dpl * 4, 2, 4 + dpl * 4) };
    if ss_off + 1 > u64::from(tr.limit) {
        return Err(ts);
    }
    let base = tr.base;
    let sp =
        mem.read(state, table_linear(state, base.wrapping_add(sp_off)), sp_size, Access::Read, Privilege::Supervisor)?;
    let ss = mem.read(state, table_linear(state, base.wrapping_add(ss_off)), 2, Access::Read, Privilege::Supervisor)?;
    Ok((ss as u16, sp as u32))
}

/// A 64-bit TSS stack pointer: RSPn (`ist` = 0, n = `dpl`) or ISTn.
/// #TS(TR | EXT) if TR is unusable or too short.
pub(crate) fn tss_stack64(state: &mut X86State, mem: &mut dyn LinearMemory, dpl: u8, ist: u8, ext: u32) -> Result<u64> {
    let tr = state.tr;
    let ts = Exception::with_code(vector::TS, sel_code(tr.selector, ext));
    if !tr.present() {
        return Err(ts);
    }
    // RSP0..2 at 4, 12, 20; IST1..7 at 0x24..0x54 (SDM Figure 8-11).
    let off = if ist != 0 { 0x1c + 8 * u64::from(ist) } else { 4 + 8 * u64::from(dpl) };
    if off + 7 > u64::from(tr.limit) {
        return Err(ts);
    }
    mem.read(state, tr.base.wrapping_add(off), 8, Access::Read, Privilege::Supervisor)
}

/// Stack accesses for a frame at privilege `cpl`: supervisor for an inner
/// stack (whatever the CPL the access starts from), CPL-checked at CPL 3.
pub(crate) fn stack_privilege(cpl: u8) -> Privilege {
    if cpl == 3 {
        Privilege::Current
    } else {
        Privilege::Supervisor
    }
}

/// A stack being pushed or popped by a helper before anything is committed:
/// SS base, stack pointer and its width. [`Stack::commit`] writes the
/// pointer back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stack {
    pub base: u64,
    pub sp: u64,
    /// 0xffff (16-bit SP), 0xffff_ffff (ESP) or u64::MAX (64-bit RSP).
    pub mask: u64,
    pub privilege: Privilege,
}

impl Stack {
    /// The current SS:RSP, with the width the current mode gives it.
    pub fn current(state: &X86State) -> Stack {
        let ss = &state.segs[seg::SS];
        let mask = if in_64bit_code(state) {
            u64::MAX
        } else if state.hflags & hflags::PE != 0
            && state.rflags & rflags::VM == 0
            && ss.attr & SegmentCache::ATTR_DB != 0
        {
            0xffff_ffff
        } else {
            0xffff
        };
        let base = if mask == u64::MAX { 0 } else { ss.base };
        Stack { base, sp: state.gpr[4], mask, privilege: Privilege::Current }
    }

    /// A stack described by a segment cache (a new SS) and pointer.
    pub fn for_segment(ss: &SegmentCache, sp: u64, cpl: u8) -> Stack {
        let mask = if ss.attr & SegmentCache::ATTR_DB != 0 { 0xffff_ffff } else { 0xffff };
        Stack { base: ss.base, sp: sp & mask, mask, privilege: stack_privilege(cpl) }
    }

    /// A 64-bit stack (IA-32e inner stacks, 64-bit code).
    pub fn flat64(sp: u64, cpl: u8) -> Stack {
        Stack { base: 0, sp, mask: u64::MAX, privilege: stack_privilege(cpl) }
    }

    fn linear(&self, offset: u64) -> Result<u64> {
        if self.mask == u64::MAX {
            // A non-canonical stack address is #SS(0), not #GP (SDM 6.14.4).
            if !is_canonical(offset) {
                return Err(Exception::with_code(vector::SS, 0));
            }
            Ok(offset)
        } else {
            Ok(self.base.wrapping_add(offset & self.mask) & 0xffff_ffff)
        }
    }

    pub fn push(&mut self, state: &mut X86State, mem: &mut dyn LinearMemory, value: u64, size: usize) -> Result<()> {
        let sp = self.sp.wrapping_sub(size as u64) & self.mask;
        let addr = self.linear(sp)?;
        mem.write(state, addr, size, value, self.privilege)?;
        self.sp = sp;
        Ok(())
    }

    pub fn pop(&mut self, state: &mut X86State, mem: &mut dyn LinearMemory, size: usize) -> Result<u64> {
        let addr = self.linear(self.sp & self.mask)?;
        let v = mem.read(state, addr, size, Access::Read, self.privilege)?;
        self.sp = self.sp.wrapping_add(size as u64) & self.mask;
        Ok(v)
    }

    /// Reads `size` bytes at `offset` above the stack pointer without popping.
    pub fn peek(&self, state: &mut X86State, mem: &mut dyn LinearMemory, offset: u64, size: usize) -> Result<u64> {
        let addr = self.linear(self.sp.wrapping_add(offset) & self.mask)?;
        mem.read(state, addr, size, Access::Read, self.privilege)
    }

    pub fn skip(&mut self, bytes: u64) {
        self.sp = self.sp.wrapping_add(bytes) & self.mask;
    }

    /// Writes the pointer back: SP keeps RSP's upper bits, ESP
    /// zero-extends (as a 32-bit register write does), RSP is whole.
    pub fn commit(&self, state: &mut X86State) {
        let rsp = &mut state.gpr[4];
        *rsp = match self.mask {
            0xffff => (*rsp & !0xffff) | (self.sp & 0xffff),
            m => self.sp & m,
        };
    }
}
