//! IRET/IRETD/IRETQ (SDM Vol. 2 IRET, "Operation").

use super::{rate_limited_warn, set_rflags};
use crate::tcg::exception::{Exception, Result};
use crate::tcg::flags;
use crate::tcg::mmu::LinearMemory;
use crate::tcg::segmentation::far::{check_outer_ss, check_return_cs, code_target_ip, load_real_cs, mask_ip, slot};
use crate::tcg::segmentation::{
    fetch_descriptor, gp_sel, in_64bit_code, load_cs, long_mode, null_inaccessible_data_segments, set_accessed, Stack,
};
use crate::tcg::state::{hflags, rflags, seg, X86State};

/// Which RFLAGS bits a popped image may change. IF needs CPL <= IOPL,
/// IOPL/VIF/VIP need CPL 0 (`cpl` is the CPL before the IRET); a 16-bit
/// IRET changes only the low 16 bits. VM never changes here.
fn writable_flags(state: &X86State, cpl: u8, operand_size: usize) -> u64 {
    let iopl = (state.rflags & rflags::IOPL) >> 12;
    let mut mask = rflags::ARITH | rflags::TF | rflags::DF | rflags::NT | rflags::RF | rflags::AC | rflags::ID;
    if cpl == 0 {
        mask |= rflags::IOPL | rflags::VIF | rflags::VIP;
    }
    if u64::from(cpl) <= iopl {
        mask |= rflags::IF;
    }
    if operand_size == 2 {
        mask &= 0xffff;
    }
    mask
}

fn merge_flags(state: &mut X86State, popped: u64, mask: u64) {
    let cur = flags::rflags(state);
    set_rflags(state, (cur & !mask) | (popped & mask));
}

/// IRET with operand size `operand_size` (2, 4 or 8 bytes).
///
/// Real mode pops IP, CS, FLAGS. vm86 does the same at IOPL 3 (IOPL kept),
/// #GP(0) below. Protected/IA-32e mode: the return CS is checked as for
/// RET FAR; a return to an outer level — or any IRET in 64-bit mode —
/// pops SS:RSP too, and an outer return nulls DS/ES/FS/GS the new CPL may
/// not use. NT = 1 (task return) and a return to vm86 are not supported:
/// #GP(0). The caller unblocks NMIs.
pub fn iret(state: &mut X86State, mem: &mut dyn LinearMemory, operand_size: u8) -> Result<()> {
    let size = slot(operand_size);
    let mut st = Stack::current(state);
    let vm86 = state.hflags & hflags::VM86 != 0;
    if state.hflags & hflags::PE == 0 || vm86 {
        if vm86 && state.rflags & rflags::IOPL != rflags::IOPL {
            return Err(Exception::gp0());
        }
        let ip = st.pop(state, mem, size)?;
        let cs = st.pop(state, mem, size)? as u16;
        let fl = st.pop(state, mem, size)?;
        // Real mode: everything but VM/VIF/VIP (the 257FD5H mask); vm86
        // keeps IOPL too.
        let mut mask = rflags::ARITH
            | rflags::TF
            | rflags::IF
            | rflags::DF
            | rflags::IOPL
            | rflags::NT
            | rflags::RF
            | rflags::AC
            | rflags::ID;
        if vm86 {
            mask &= !rflags::IOPL;
        }
        if size == 2 {
            mask &= 0xffff;
        }
        st.commit(state);
        load_real_cs(state, cs);
        state.rip = mask_ip(ip, operand_size);
        merge_flags(state, fl, mask);
        state.recompute_hflags();
        return Ok(());
    }
    if state.rflags & rflags::NT != 0 {
        if !long_mode(state) {
            rate_limited_warn(format_args!("tcg: IRET with NT=1 (task return): unsupported, #GP"));
        }
        return Err(Exception::gp0());
    }
    let cpl = state.cpl();
    let ip = st.pop(state, mem, size)?;
    let cs_sel = st.pop(state, mem, size)? as u16;
    let fl = st.pop(state, mem, size)?;
    if !long_mode(state) && size == 4 && fl & rflags::VM != 0 && cpl == 0 {
        rate_limited_warn(format_args!("tcg: IRET to virtual-8086 mode: unsupported, #GP"));
        return Err(Exception::gp0());
    }
    if cs_sel & 0xfffc == 0 {
        return Err(Exception::gp0());
    }
    let (addr, d) = fetch_descriptor(state, mem, cs_sel, gp_sel(cs_sel))?;
    check_return_cs(state, d, cs_sel, cpl)?;
    let rpl = (cs_sel & 3) as u8;
    let ip = mask_ip(ip, operand_size);
    let mask = writable_flags(state, cpl, size);
    // In 64-bit mode IRET always pops SS:RSP, even to the same level.
    if rpl == cpl && !in_64bit_code(state) {
        let rip = code_target_ip(state, d, ip)?;
        set_accessed(state, mem, addr, d)?;
        st.commit(state);
        load_cs(state, d, cs_sel, cpl);
        state.rip = rip;
        merge_flags(state, fl, mask);
        state.recompute_hflags();
        return Ok(());
    }
    let sp = st.pop(state, mem, size)?;
    let ss_sel = st.pop(state, mem, size)? as u16;
    let (ss_desc, ss_cache) = check_outer_ss(state, mem, ss_sel, rpl, d)?;
    let rip = code_target_ip(state, d, ip)?;
    set_accessed(state, mem, addr, d)?;
    if let Some((a, sd)) = ss_desc {
        set_accessed(state, mem, a, sd)?;
    }
    let to_64bit = long_mode(state) && d.is_64bit_code();
    load_cs(state, d, cs_sel, rpl);
    state.segs[seg::SS] = ss_cache;
    let outer = if to_64bit { Stack::flat64(sp, rpl) } else { Stack::for_segment(&ss_cache, sp, rpl) };
    outer.commit(state);
    state.rip = rip;
    merge_flags(state, fl, mask);
    if rpl > cpl {
        null_inaccessible_data_segments(state, rpl);
    }
    state.recompute_hflags();
    Ok(())
}
