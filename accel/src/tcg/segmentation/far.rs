//! Far transfers: JMP FAR, CALL FAR, RET FAR, through code-segment
//! descriptors and call gates (16/32-bit legacy, 64-bit in IA-32e mode),
//! following the "Operation" sections of JMP, CALL and RET in SDM Vol. 2.
//! Task gates and TSS targets (task switches) are not supported: #GP(sel).

use log::warn;

use super::{
    fetch_descriptor, fetch_system_descriptor16, gp_sel, is_canonical, load_cs, long_mode, np_sel,
    null_inaccessible_data_segments, null_ss, real_or_vm86, sel_code, set_accessed, ss_sel, sys_type, tss_stack64,
    tss_stack_legacy, Descriptor, Stack,
};
use crate::tcg::exception::{vector, Exception, Result};
use crate::tcg::mmu::LinearMemory;
use crate::tcg::state::{seg, SegmentCache, X86State};

/// Truncates an instruction pointer to the operand size (2, 4, 8 bytes).
pub(crate) fn mask_ip(ip: u64, operand_size: u8) -> u64 {
    match operand_size {
        2 => ip & 0xffff,
        4 => ip & 0xffff_ffff,
        _ => ip,
    }
}

/// Normalises an operand size to a stack slot width: 2, 4 or 8 bytes.
pub(crate) fn slot(operand_size: u8) -> usize {
    match operand_size {
        2 => 2,
        8 => 8,
        _ => 4,
    }
}

/// Real mode / vm86 CS load: base = selector << 4. Real mode keeps the
/// cached limit and attributes (as hardware does); vm86 has fixed ones.
pub(crate) fn load_real_cs(state: &mut X86State, selector: u16) {
    if state.rflags & crate::tcg::state::rflags::VM != 0 {
        let mut cs = SegmentCache::real_mode(selector);
        cs.attr = 0xfb; // present, DPL 3, code, readable, accessed
        state.segs[seg::CS] = cs;
    } else {
        let cs = &mut state.segs[seg::CS];
        cs.selector = selector;
        cs.base = u64::from(selector) << 4;
    }
}

/// The new RIP for a transfer into code segment `d`: canonical for 64-bit
/// code, within the limit otherwise; #GP(0) if not.
pub(crate) fn code_target_ip(state: &X86State, d: Descriptor, ip: u64) -> Result<u64> {
    if long_mode(state) && d.is_64bit_code() {
        if !is_canonical(ip) {
            return Err(Exception::gp0());
        }
        Ok(ip)
    } else if ip > u64::from(d.limit()) {
        Err(Exception::gp0())
    } else {
        Ok(ip)
    }
}

/// JMP/CALL straight to a code segment (SDM JMP, "conforming" and
/// "non-conforming code segment" branches).
fn check_direct_code(state: &X86State, d: Descriptor, selector: u16, cpl: u8) -> Result<()> {
    let rpl = (selector & 3) as u8;
    if !d.is_code() {
        return Err(gp_sel(selector));
    }
    let bad_priv = if d.conforming() { d.dpl() > cpl } else { rpl > cpl || d.dpl() != cpl };
    if bad_priv {
        return Err(gp_sel(selector));
    }
    if !d.present() {
        return Err(np_sel(selector));
    }
    check_long_code(state, d, selector)
}

/// In IA-32e mode, L = 1 with D = 1 is reserved.
fn check_long_code(state: &X86State, d: Descriptor, selector: u16) -> Result<()> {
    let a = d.attr();
    if long_mode(state) && a & SegmentCache::ATTR_L != 0 && a & SegmentCache::ATTR_DB != 0 {
        return Err(gp_sel(selector));
    }
    Ok(())
}

/// The return CS of RET FAR / IRET (SDM RET, "PROTECTED-MODE").
pub(crate) fn check_return_cs(state: &X86State, d: Descriptor, selector: u16, cpl: u8) -> Result<()> {
    let rpl = (selector & 3) as u8;
    if !d.is_code() || rpl < cpl {
        return Err(gp_sel(selector));
    }
    let bad_priv = if d.conforming() { d.dpl() > rpl } else { d.dpl() != rpl };
    if bad_priv {
        return Err(gp_sel(selector));
    }
    if !d.present() {
        return Err(np_sel(selector));
    }
    check_long_code(state, d, selector)
}

/// The SS popped by a return to outer privilege `rpl`; returns the
/// descriptor to mark accessed (none for a null SS) and the cache to load.
/// A null SS is allowed only returning to 64-bit code at CPL < 3.
pub(crate) fn check_outer_ss(
    state: &mut X86State,
    mem: &mut dyn LinearMemory,
    selector: u16,
    rpl: u8,
    cs: Descriptor,
) -> Result<(Option<(u64, Descriptor)>, SegmentCache)> {
    if selector & 0xfffc == 0 {
        if long_mode(state) && cs.is_64bit_code() && rpl != 3 {
            let mut c = null_ss(rpl);
            c.selector = selector;
            return Ok((None, c));
        }
        return Err(Exception::gp0());
    }
    if (selector & 3) as u8 != rpl {
        return Err(gp_sel(selector));
    }
    let (addr, d) = fetch_descriptor(state, mem, selector, gp_sel(selector))?;
    if !d.writable_data() || d.dpl() != rpl {
        return Err(gp_sel(selector));
    }
    if !d.present() {
        return Err(ss_sel(selector));
    }
    Ok((Some((addr, d)), d.cache(selector)))
}

/// A decoded call gate.
struct CallGate {
    selector: u16,
    offset: u64,
    /// Push width: 2 (16-bit gate), 4 (32-bit), 8 (64-bit).
    size: usize,
    params: u8,
}

/// Validates the system descriptor `d` of a far JMP/CALL as a call gate:
/// type for the mode, gate DPL >= max(CPL, RPL), present.
fn read_call_gate(
    state: &mut X86State,
    mem: &mut dyn LinearMemory,
    selector: u16,
    d: Descriptor,
    cpl: u8,
) -> Result<CallGate> {
    let err = gp_sel(selector);
    let lma = long_mode(state);
    let (offset, size) = match d.typ() {
        sys_type::CALL_GATE16 if !lma => (d.gate_offset() & 0xffff, 2),
        sys_type::CALL_GATE32 if !lma => (d.gate_offset(), 4),
        sys_type::CALL_GATE32 => {
            // 16-byte gate; the upper half's type field must be 0 (SDM 5.8.3.1).
            let (_, _, hi) = fetch_system_descriptor16(state, mem, selector, err)?;
            if (hi >> 40) & 0x1f != 0 {
                return Err(err);
            }
            (d.gate_offset() | (hi & 0xffff_ffff) << 32, 8)
        }
        sys_type::TASK_GATE | sys_type::TSS16_AVAIL | sys_type::TSS32_AVAIL if !lma => {
            warn!("tcg: far transfer to a task gate/TSS (selector {selector:#x}): task switches unsupported, #GP");
            return Err(err);
        }
        _ => return Err(err),
    };
    let rpl = (selector & 3) as u8;
    if d.dpl() < cpl || d.dpl() < rpl {
        return Err(err);
    }
    if !d.present() {
        return Err(np_sel(selector));
    }
    Ok(CallGate { selector: d.gate_selector(), offset, size, params: if size == 8 { 0 } else { d.gate_params() } })
}

/// The code segment a call gate points to. `is_call` allows a more
/// privileged non-conforming target (CALL); JMP needs DPL = CPL.
fn gate_target(
    state: &mut X86State,
    mem: &mut dyn LinearMemory,
    gate: &CallGate,
    cpl: u8,
    is_call: bool,
) -> Result<(u64, Descriptor)> {
    let sel = gate.selector;
    if sel & 0xfffc == 0 {
        return Err(Exception::gp0());
    }
    let (addr, d) = fetch_descriptor(state, mem, sel, gp_sel(sel))?;
    if !d.is_code() {
        return Err(gp_sel(sel));
    }
    let bad_priv = if d.conforming() || is_call { d.dpl() > cpl } else { d.dpl() != cpl };
    if bad_priv {
        return Err(gp_sel(sel));
    }
    if !d.present() {
        return Err(np_sel(sel));
    }
    // IA-32e call gates lead to 64-bit code only.
    if long_mode(state) && !d.is_64bit_code() {
        return Err(gp_sel(sel));
    }
    Ok((addr, d))
}

/// JMP FAR `selector`:`offset` (ptr16:16/32 or m16:16/32/64).
pub fn far_jump(
    state: &mut X86State,
    mem: &mut dyn LinearMemory,
    selector: u16,
    offset: u64,
    operand_size: u8,
) -> Result<()> {
    let offset = mask_ip(offset, operand_size);
    if real_or_vm86(state) {
        load_real_cs(state, selector);
        state.rip = offset;
        return Ok(());
    }
    let cpl = state.cpl();
    if selector & 0xfffc == 0 {
        return Err(Exception::gp0());
    }
    let (addr, d) = fetch_descriptor(state, mem, selector, gp_sel(selector))?;
    let (addr, d, cs_sel, ip) = if d.is_system() {
        let gate = read_call_gate(state, mem, selector, d, cpl)?;
        let (caddr, cd) = gate_target(state, mem, &gate, cpl, false)?;
        (caddr, cd, gate.selector, gate.offset)
    } else {
        check_direct_code(state, d, selector, cpl)?;
        (addr, d, selector, offset)
    };
    let rip = code_target_ip(state, d, ip)?;
    set_accessed(state, mem, addr, d)?;
    load_cs(state, d, cs_sel, cpl);
    state.rip = rip;
    state.recompute_hflags();
    Ok(())
}

/// CALL FAR `selector`:`offset`; `return_rip` is the next instruction.
/// Through a call gate to a more privileged non-conforming segment it
/// switches to the TSS stack of the target DPL, copying the gate's
/// parameters (legacy) and pushing the old SS:ESP (SDM CALL,
/// "MORE-PRIVILEGE").
pub fn far_call(
    state: &mut X86State,
    mem: &mut dyn LinearMemory,
    selector: u16,
    offset: u64,
    operand_size: u8,
    return_rip: u64,
) -> Result<()> {
    let size = slot(operand_size);
    let offset = mask_ip(offset, operand_size);
    let old_cs = u64::from(state.segs[seg::CS].selector);
    if real_or_vm86(state) {
        let mut st = Stack::current(state);
        st.push(state, mem, old_cs, size)?;
        st.push(state, mem, return_rip, size)?;
        st.commit(state);
        load_real_cs(state, selector);
        state.rip = offset;
        return Ok(());
    }
    let cpl = state.cpl();
    if selector & 0xfffc == 0 {
        return Err(Exception::gp0());
    }
    let (addr, d) = fetch_descriptor(state, mem, selector, gp_sel(selector))?;
    if !d.is_system() {
        check_direct_code(state, d, selector, cpl)?;
        let rip = code_target_ip(state, d, offset)?;
        let mut st = Stack::current(state);
        st.push(state, mem, old_cs, size)?;
        st.push(state, mem, return_rip, size)?;
        set_accessed(state, mem, addr, d)?;
        st.commit(state);
        load_cs(state, d, selector, cpl);
        state.rip = rip;
        state.recompute_hflags();
        return Ok(());
    }
    let gate = read_call_gate(state, mem, selector, d, cpl)?;
    let (caddr, cd) = gate_target(state, mem, &gate, cpl, true)?;
    let rip = code_target_ip(state, cd, gate.offset)?;
    let new_cpl = cd.dpl();
    if cd.conforming() || new_cpl == cpl {
        let mut st = Stack::current(state);
        st.push(state, mem, old_cs, gate.size)?;
        st.push(state, mem, return_rip, gate.size)?;
        set_accessed(state, mem, caddr, cd)?;
        st.commit(state);
        load_cs(state, cd, gate.selector, cpl);
        state.rip = rip;
        state.recompute_hflags();
        return Ok(());
    }
    // Inner privilege: everything that can fault first, then commit.
    let old_ss = u64::from(state.segs[seg::SS].selector);
    let old_sp = state.gpr[4];
    let (new_stack, new_ss, ss_desc) = if gate.size == 8 {
        let rsp = tss_stack64(state, mem, new_cpl, 0, 0)?;
        (Stack::flat64(rsp, new_cpl), null_ss(new_cpl), None)
    } else {
        let (ss_sel_new, esp) = tss_stack_legacy(state, mem, new_cpl, 0)?;
        let ts = Exception::with_code(vector::TS, sel_code(ss_sel_new, 0));
        if ss_sel_new & 0xfffc == 0 {
            return Err(Exception::with_code(vector::TS, 0));
        }
        if (ss_sel_new & 3) as u8 != new_cpl {
            return Err(ts);
        }
        let (ss_addr, sd) = fetch_descriptor(state, mem, ss_sel_new, ts)?;
        if !sd.writable_data() || sd.dpl() != new_cpl {
            return Err(ts);
        }
        if !sd.present() {
            return Err(ss_sel(ss_sel_new));
        }
        let cache = sd.cache(ss_sel_new);
        (Stack::for_segment(&cache, u64::from(esp), new_cpl), cache, Some((ss_addr, sd)))
    };
    // Parameters, read from the caller's stack before anything changes.
    let old_stack = Stack::current(state);
    let mut params = [0u64; 31];
    let n = usize::from(gate.params);
    for (i, p) in params.iter_mut().enumerate().take(n) {
        *p = old_stack.peek(state, mem, (i * gate.size) as u64, gate.size)?;
    }
    let mut st = new_stack;
    st.push(state, mem, old_ss, gate.size)?;
    st.push(state, mem, old_sp, gate.size)?;
    for p in params[..n].iter().rev() {
        st.push(state, mem, *p, gate.size)?;
    }
    st.push(state, mem, old_cs, gate.size)?;
    st.push(state, mem, return_rip, gate.size)?;
    if let Some((ss_addr, sd)) = ss_desc {
        set_accessed(state, mem, ss_addr, sd)?;
    }
    set_accessed(state, mem, caddr, cd)?;
    state.segs[seg::SS] = new_ss;
    st.commit(state);
    load_cs(state, cd, gate.selector, new_cpl);
    state.rip = rip;
    state.recompute_hflags();
    Ok(())
}

/// RET FAR [imm16]: pops CS:RIP, and SS:RSP when returning to an outer
/// privilege level (then DS/ES/FS/GS that the new CPL may not use become
/// null). `pop_bytes` is released on both stacks, as the SDM says.
pub fn far_return(state: &mut X86State, mem: &mut dyn LinearMemory, operand_size: u8, pop_bytes: u16) -> Result<()> {
    let size = slot(operand_size);
    let pop = u64::from(pop_bytes);
    let mut st = Stack::current(state);
    if real_or_vm86(state) {
        let ip = st.pop(state, mem, size)?;
        let cs = st.pop(state, mem, size)? as u16;
        st.skip(pop);
        st.commit(state);
        load_real_cs(state, cs);
        state.rip = mask_ip(ip, operand_size);
        return Ok(());
    }
    let cpl = state.cpl();
    let ip = mask_ip(st.pop(state, mem, size)?, operand_size);
    let cs_sel = st.pop(state, mem, size)? as u16;
    if cs_sel & 0xfffc == 0 {
        return Err(Exception::gp0());
    }
    let (addr, d) = fetch_descriptor(state, mem, cs_sel, gp_sel(cs_sel))?;
    check_return_cs(state, d, cs_sel, cpl)?;
    let rpl = (cs_sel & 3) as u8;
    st.skip(pop);
    if rpl == cpl {
        let rip = code_target_ip(state, d, ip)?;
        set_accessed(state, mem, addr, d)?;
        st.commit(state);
        load_cs(state, d, cs_sel, cpl);
        state.rip = rip;
        state.recompute_hflags();
        return Ok(());
    }
    let sp = st.pop(state, mem, size)?;
    let ss_sel_new = st.pop(state, mem, size)? as u16;
    let (ss_desc, ss_cache) = check_outer_ss(state, mem, ss_sel_new, rpl, d)?;
    let rip = code_target_ip(state, d, ip)?;
    set_accessed(state, mem, addr, d)?;
    if let Some((a, sd)) = ss_desc {
        set_accessed(state, mem, a, sd)?;
    }
    load_cs(state, d, cs_sel, rpl);
    state.segs[seg::SS] = ss_cache;
    let mut outer = if long_mode(state) && d.is_64bit_code() {
        Stack::flat64(sp, rpl)
    } else {
        Stack::for_segment(&ss_cache, sp, rpl)
    };
    outer.skip(pop);
    outer.commit(state);
    state.rip = rip;
    null_inaccessible_data_segments(state, rpl);
    state.recompute_hflags();
    Ok(())
}
