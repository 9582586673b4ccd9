//! Exception and interrupt delivery (SDM Vol. 3 chapter 6): the real-mode
//! IVT, the 32-bit IDT with privilege changes through the TSS, the 64-bit
//! IDT with IST stacks, and IRET ([`iret`]). Faults raised while delivering
//! an event are combined by the double-fault rules here too (SDM 6.15,
//! Table 6-5), so the caller sees only success or a triple fault.
//!
//! Not modelled: task gates (a task-gate IDT entry raises #GP(IDT) with a
//! log line), delivery in virtual-8086 mode (#GP, leading to a triple fault
//! since the #GP can't be delivered either), and IRET back to vm86 or to a
//! nested task (NT = 1): #GP(0).

mod iret;
#[cfg(test)]
mod tests;

pub use iret::iret;

use std::sync::atomic::{AtomicU32, Ordering};

use log::warn;

use super::exception::{vector, Exception, Result};
use super::flags;
use super::mmu::{Access, LinearMemory, Privilege};
use super::segmentation::{
    fetch_descriptor, is_canonical, load_cs, long_mode, null_ss, sel_code, set_accessed, sys_type, tss_stack64,
    tss_stack_legacy, Descriptor, Stack,
};
use super::state::{hflags, rflags, seg, X86State};

/// Where an event comes from: it decides the gate DPL check, the return
/// address and the EXT bit of error codes raised while delivering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// INT n, INT3, INTO: gate DPL >= CPL, returns after the instruction.
    Software,
    /// A hardware interrupt (or NMI): EXT = 1, never an error code.
    External,
    /// A processor-detected exception: EXT = 1, error code by vector.
    Exception,
}

/// The RFLAGS bits that exist (the rest read as 0; bit 1 reads as 1).
pub(crate) const RFLAGS_VALID: u64 = rflags::ARITH
    | rflags::TF
    | rflags::IF
    | rflags::DF
    | rflags::IOPL
    | rflags::NT
    | rflags::RF
    | rflags::VM
    | rflags::AC
    | rflags::VIF
    | rflags::VIP
    | rflags::ID;

/// Writes the whole of RFLAGS: the arithmetic flags become authoritative
/// (`cc_op = Eflags`), reserved bits are dropped, bit 1 is set.
/// Callers recompute hflags if TF or VM may have changed.
pub(crate) fn set_rflags(state: &mut X86State, value: u64) {
    let value = (value & RFLAGS_VALID) | rflags::FIXED1;
    flags::set_rflags_arith(state, value);
    state.rflags = value;
}

/// Delivers exception or software interrupt `exc`.
///
/// The pushed return address is `next_rip` for software interrupts
/// (`exc.software`: INT n, INT3, INTO) and `state.rip` otherwise: the spine
/// leaves RIP at the faulting instruction for faults, and past the
/// instruction for traps it raises itself (single-step #DB).
///
/// Faults raised while delivering are delivered in turn, or become #DF as
/// Table 6-5 says. `Err(e)` therefore means a triple fault: the vCPU must
/// shut down; `e` is the fault that hit while delivering #DF (for the log).
pub fn deliver(state: &mut X86State, mem: &mut dyn LinearMemory, exc: &Exception, next_rip: u64) -> Result<()> {
    let source = if exc.software { Source::Software } else { Source::Exception };
    deliver_event(state, mem, *exc, source, next_rip)
}

/// Delivers hardware interrupt `vector` (from the PIC/LAPIC, or an NMI as
/// vector 2): no gate DPL check, EXT = 1 in error codes of faults raised
/// while delivering it, returns to `state.rip`. `Err` = triple fault, as
/// for [`deliver`]. The caller has checked RFLAGS.IF and the STI/MOV SS
/// shadow (`hflags::INHIBIT_IRQ`).
pub fn deliver_external(state: &mut X86State, mem: &mut dyn LinearMemory, vector: u8) -> Result<()> {
    let rip = state.rip;
    deliver_event(state, mem, Exception::fault(vector), Source::External, rip)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Benign,
    Contributory,
    PageFault,
}

fn class(vector: u8, source: Source) -> Class {
    if source != Source::Exception {
        Class::Benign
    } else if vector == vector::PF {
        Class::PageFault
    } else if Exception::is_contributory(vector) {
        Class::Contributory
    } else {
        Class::Benign
    }
}

fn deliver_event(
    state: &mut X86State,
    mem: &mut dyn LinearMemory,
    first: Exception,
    first_source: Source,
    next_rip: u64,
) -> Result<()> {
    state.halted = false;
    // An event ends any STI / MOV SS interrupt shadow.
    state.hflags &= !hflags::INHIBIT_IRQ;
    let mut event = first;
    let mut source = first_source;
    let mut ret = if source == Source::Software { next_rip } else { state.rip };
    // benign → contributory/#PF → #DF → shutdown: four rounds at most.
    let mut last = first;
    for _ in 0..4 {
        let fault = match deliver_once(state, mem, &event, source, ret) {
            Ok(()) => return Ok(()),
            Err(fault) => fault,
        };
        last = fault;
        if source == Source::Exception && event.vector == vector::DF {
            break;
        }
        let second = class(fault.vector, Source::Exception);
        let double = match class(event.vector, source) {
            Class::Benign => false,
            Class::Contributory => second == Class::Contributory,
            Class::PageFault => second != Class::Benign,
        };
        event = if double { Exception::with_code(vector::DF, 0) } else { fault };
        source = Source::Exception;
        ret = state.rip;
    }
    warn!("tcg: triple fault delivering vector {:#x} (last fault {:?})", first.vector, last);
    Err(last)
}

/// Error code of a fault about IDT entry `vector` (IDT bit 1, EXT bit 0).
fn idt_code(vector: u8, ext: u32) -> u32 {
    u32::from(vector) * 8 + 2 + ext
}

fn deliver_once(
    state: &mut X86State,
    mem: &mut dyn LinearMemory,
    exc: &Exception,
    source: Source,
    ret: u64,
) -> Result<()> {
    if source == Source::Exception && exc.vector == vector::PF {
        if let Some(addr) = exc.cr2 {
            state.cr2 = addr;
        }
    }
    if state.hflags & hflags::PE == 0 {
        return deliver_real(state, mem, exc.vector, ret);
    }
    let ext = u32::from(source != Source::Software);
    if state.hflags & hflags::VM86 != 0 {
        rate_limited_warn(format_args!("tcg: interrupt {:#x} in vm86 mode: unsupported, #GP", exc.vector));
        return Err(Exception::gp(idt_code(exc.vector, ext)));
    }
    // Whether an error code is pushed is the vector's property (SDM Table
    // 6-1); software INT n and external interrupts never push one.
    let error_code = if source == Source::Exception && Exception::has_error_code(exc.vector) {
        Some(exc.error_code.unwrap_or(0))
    } else {
        None
    };
    let ev = Event { vector: exc.vector, software: source == Source::Software, ext, error_code, ret };
    if long_mode(state) {
        deliver_long(state, mem, &ev)
    } else {
        deliver_protected(state, mem, &ev)
    }
}

/// One delivery attempt's parameters.
struct Event {
    vector: u8,
    software: bool,
    ext: u32,
    error_code: Option<u32>,
    ret: u64,
}

/// Real mode: IVT entry `vector` (IP, CS) at IDTR.base + 4 * vector; push
/// FLAGS, CS, IP; clear IF, TF, AC (SDM Vol. 2 INT n, "REAL-ADDRESS-MODE").
fn deliver_real(state: &mut X86State, mem: &mut dyn LinearMemory, vector: u8, ret: u64) -> Result<()> {
    let off = u64::from(vector) * 4;
    if off + 3 > u64::from(state.idtr.limit) {
        return Err(Exception::gp(idt_code(vector, 0)));
    }
    let entry_addr = state.idtr.base.wrapping_add(off) & 0xffff_ffff;
    let entry = mem.read(state, entry_addr, 4, Access::Read, Privilege::Supervisor)?;
    let mut st = Stack::current(state);
    let fl = flags::rflags(state);
    st.push(state, mem, fl, 2)?;
    st.push(state, mem, u64::from(state.segs[seg::CS].selector), 2)?;
    st.push(state, mem, ret, 2)?;
    st.commit(state);
    let cs = (entry >> 16) as u16;
    let ip = entry & 0xffff;
    let cache = &mut state.segs[seg::CS];
    cache.selector = cs;
    cache.base = u64::from(cs) << 4;
    state.rip = ip;
    state.rflags &= !(rflags::IF | rflags::TF | rflags::AC | rflags::RF);
    state.recompute_hflags();
    Ok(())
}

/// The code segment an interrupt gate points to (SDM Vol. 2 INT n,
/// "PROTECTED-MODE"): #GP(sel + EXT) unless it is present code with
/// DPL <= CPL; #NP(sel + EXT) if not present.
fn gate_code(
    state: &mut X86State,
    mem: &mut dyn LinearMemory,
    selector: u16,
    ext: u32,
    cpl: u8,
) -> Result<(u64, Descriptor)> {
    if selector & 0xfffc == 0 {
        return Err(Exception::gp(ext));
    }
    let err = Exception::gp(sel_code(selector, ext));
    let (addr, d) = fetch_descriptor(state, mem, selector, err)?;
    if !d.is_code() || d.dpl() > cpl {
        return Err(err);
    }
    if !d.present() {
        return Err(Exception::with_code(vector::NP, sel_code(selector, ext)));
    }
    Ok((addr, d))
}

/// The gate checks shared by the 32- and 64-bit IDTs: software interrupts
/// need gate DPL >= CPL (#GP(IDT), no EXT), the gate must be present.
fn check_gate(gate: Descriptor, ev: &Event, cpl: u8) -> Result<()> {
    if ev.software && gate.dpl() < cpl {
        return Err(Exception::gp(idt_code(ev.vector, 0)));
    }
    if !gate.present() {
        return Err(Exception::with_code(vector::NP, idt_code(ev.vector, ev.ext)));
    }
    Ok(())
}

/// RFLAGS after entering a handler: TF, NT, RF, VM cleared; IF too
/// through an interrupt gate (type bit 0 clear), not a trap gate.
fn enter_handler_flags(state: &mut X86State, gate_type: u8) {
    let mut clear = rflags::TF | rflags::NT | rflags::RF | rflags::VM;
    if gate_type & 1 == 0 {
        clear |= rflags::IF;
    }
    state.rflags &= !clear;
}

/// Protected mode with a 32-bit IDT (8-byte gates).
fn deliver_protected(state: &mut X86State, mem: &mut dyn LinearMemory, ev: &Event) -> Result<()> {
    let cpl = state.cpl();
    let idt_err = Exception::gp(idt_code(ev.vector, ev.ext));
    let off = u64::from(ev.vector) * 8;
    if off + 7 > u64::from(state.idtr.limit) {
        return Err(idt_err);
    }
    let addr = state.idtr.base.wrapping_add(off) & 0xffff_ffff;
    let gate = Descriptor(mem.read(state, addr, 8, Access::Read, Privilege::Supervisor)?);
    let typ = gate.typ();
    if !gate.is_system() {
        return Err(idt_err);
    }
    match typ {
        sys_type::INT_GATE16 | sys_type::TRAP_GATE16 | sys_type::INT_GATE32 | sys_type::TRAP_GATE32 => {}
        sys_type::TASK_GATE => {
            rate_limited_warn(format_args!("tcg: task gate for vector {:#x}: unsupported, #GP", ev.vector));
            return Err(idt_err);
        }
        _ => return Err(idt_err),
    }
    check_gate(gate, ev, cpl)?;
    let (size, offset) = if typ & 8 != 0 { (4, gate.gate_offset()) } else { (2, gate.gate_offset() & 0xffff) };
    let cs_sel = gate.gate_selector();
    let (cs_addr, cd) = gate_code(state, mem, cs_sel, ev.ext, cpl)?;
    if offset > u64::from(cd.limit()) {
        return Err(Exception::gp(ev.ext));
    }
    let old_flags = flags::rflags(state);
    let old_cs = u64::from(state.segs[seg::CS].selector);
    let (new_cpl, mut st, new_ss) = if !cd.conforming() && cd.dpl() < cpl {
        // Inner privilege: SS:ESP for the target DPL from the TSS.
        let dpl = cd.dpl();
        let (ss, esp) = tss_stack_legacy(state, mem, dpl, ev.ext)?;
        if ss & 0xfffc == 0 {
            return Err(Exception::with_code(vector::TS, ev.ext));
        }
        let ts = Exception::with_code(vector::TS, sel_code(ss, ev.ext));
        if (ss & 3) as u8 != dpl {
            return Err(ts);
        }
        let (ss_addr, sd) = fetch_descriptor(state, mem, ss, ts)?;
        if !sd.writable_data() || sd.dpl() != dpl {
            return Err(ts);
        }
        if !sd.present() {
            return Err(Exception::with_code(vector::SS, sel_code(ss, ev.ext)));
        }
        let cache = sd.cache(ss);
        let mut st = Stack::for_segment(&cache, u64::from(esp), dpl);
        st.push(state, mem, u64::from(state.segs[seg::SS].selector), size)?;
        st.push(state, mem, state.gpr[4], size)?;
        (dpl, st, Some((ss_addr, sd, cache)))
    } else if cd.conforming() || cd.dpl() == cpl {
        (cpl, Stack::current(state), None)
    } else {
        return Err(Exception::gp(sel_code(cs_sel, ev.ext)));
    };
    st.push(state, mem, old_flags, size)?;
    st.push(state, mem, old_cs, size)?;
    st.push(state, mem, ev.ret, size)?;
    if let Some(code) = ev.error_code {
        st.push(state, mem, u64::from(code), size)?;
    }
    set_accessed(state, mem, cs_addr, cd)?;
    if let Some((ss_addr, sd, cache)) = new_ss {
        set_accessed(state, mem, ss_addr, sd)?;
        state.segs[seg::SS] = cache;
    }
    st.commit(state);
    load_cs(state, cd, cs_sel, new_cpl);
    state.rip = offset;
    enter_handler_flags(state, typ);
    state.recompute_hflags();
    Ok(())
}

/// IA-32e mode: 16-byte gates to 64-bit code; a new stack from the TSS
/// (RSPn on a privilege change, ISTn whenever the gate names one), aligned
/// to 16 bytes; SS:RSP always pushed (SDM 6.14).
fn deliver_long(state: &mut X86State, mem: &mut dyn LinearMemory, ev: &Event) -> Result<()> {
    let cpl = state.cpl();
    let idt_err = Exception::gp(idt_code(ev.vector, ev.ext));
    let off = u64::from(ev.vector) * 16;
    if off + 15 > u64::from(state.idtr.limit) {
        return Err(idt_err);
    }
    let addr = state.idtr.base.wrapping_add(off);
    let gate = Descriptor(mem.read(state, addr, 8, Access::Read, Privilege::Supervisor)?);
    let hi = mem.read(state, addr.wrapping_add(8), 8, Access::Read, Privilege::Supervisor)?;
    let typ = gate.typ();
    if !gate.is_system() || !matches!(typ, sys_type::INT_GATE32 | sys_type::TRAP_GATE32) {
        return Err(idt_err);
    }
    check_gate(gate, ev, cpl)?;
    let offset = gate.gate_offset() | (hi & 0xffff_ffff) << 32;
    let cs_sel = gate.gate_selector();
    let (cs_addr, cd) = gate_code(state, mem, cs_sel, ev.ext, cpl)?;
    if !cd.is_64bit_code() {
        return Err(Exception::gp(sel_code(cs_sel, ev.ext)));
    }
    if !is_canonical(offset) {
        return Err(Exception::gp(ev.ext));
    }
    let ist = gate.gate_ist();
    let (new_cpl, rsp) = if !cd.conforming() && cd.dpl() < cpl {
        (cd.dpl(), tss_stack64(state, mem, cd.dpl(), ist, ev.ext)?)
    } else if cd.conforming() || cd.dpl() == cpl {
        let rsp = if ist != 0 { tss_stack64(state, mem, cpl, ist, ev.ext)? } else { state.gpr[4] };
        (cpl, rsp)
    } else {
        return Err(Exception::gp(sel_code(cs_sel, ev.ext)));
    };
    if !is_canonical(rsp) {
        return Err(Exception::with_code(vector::SS, ev.ext));
    }
    let mut st = Stack::flat64(rsp & !0xf, new_cpl);
    let old_flags = flags::rflags(state);
    st.push(state, mem, u64::from(state.segs[seg::SS].selector), 8)?;
    st.push(state, mem, state.gpr[4], 8)?;
    st.push(state, mem, old_flags, 8)?;
    st.push(state, mem, u64::from(state.segs[seg::CS].selector), 8)?;
    st.push(state, mem, ev.ret, 8)?;
    if let Some(code) = ev.error_code {
        st.push(state, mem, u64::from(code), 8)?;
    }
    set_accessed(state, mem, cs_addr, cd)?;
    if new_cpl != cpl {
        state.segs[seg::SS] = null_ss(new_cpl);
    }
    st.commit(state);
    load_cs(state, cd, cs_sel, new_cpl);
    state.rip = offset;
    enter_handler_flags(state, typ);
    state.recompute_hflags();
    Ok(())
}

/// Warns at most 32 times per process: a guest must not flood the log.
fn rate_limited_warn(args: std::fmt::Arguments<'_>) {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    if n < 32 {
        warn!("{args}");
    } else if n == 32 {
        warn!("tcg: further interrupt-delivery warnings suppressed");
    }
}
