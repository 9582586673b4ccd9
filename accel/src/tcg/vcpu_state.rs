//! Conversions between the engine-neutral [`CpuState`] and [`X86State`],
//! and the crash-report register dump.

use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

use super::flags;
use super::mmu::walker;
use super::mmu::{Access, PhysMemory, Privilege};
use super::state::{hflags, seg, SegmentCache, TableReg, X86State};
use crate::{CpuState, DescriptorTable, Segment};

fn to_cache(s: &Segment) -> SegmentCache {
    let attr = u16::from(s.type_ & 0xf)
        | u16::from(s.s) << 4
        | u16::from(s.dpl & 3) << 5
        | u16::from(s.present) << 7
        | u16::from(s.avl) << 12
        | u16::from(s.l) << 13
        | u16::from(s.db) << 14
        | u16::from(s.g) << 15;
    SegmentCache { base: s.base, limit: s.limit, attr, selector: s.selector }
}

fn from_cache(c: &SegmentCache) -> Segment {
    let bit = |n: u16| c.attr & (1 << n) != 0;
    Segment {
        selector: c.selector,
        base: c.base,
        limit: c.limit,
        type_: (c.attr & 0xf) as u8,
        present: bit(7),
        dpl: ((c.attr >> 5) & 3) as u8,
        db: bit(14),
        s: bit(4),
        l: bit(13),
        g: bit(15),
        avl: bit(12),
    }
}

/// Loads the boot protocol's registers into `state` (the rest is kept).
pub fn load(state: &mut X86State, cpu: &CpuState) {
    state.gpr = cpu.gprs;
    state.rip = cpu.rip;
    state.rflags = cpu.rflags | super::state::rflags::FIXED1;
    state.cc_op = flags::CcOp::Eflags;
    state.segs[seg::CS] = to_cache(&cpu.cs);
    state.segs[seg::DS] = to_cache(&cpu.ds);
    state.segs[seg::ES] = to_cache(&cpu.es);
    state.segs[seg::FS] = to_cache(&cpu.fs);
    state.segs[seg::GS] = to_cache(&cpu.gs);
    state.segs[seg::SS] = to_cache(&cpu.ss);
    state.tr = to_cache(&cpu.tr);
    state.ldtr = to_cache(&cpu.ldt);
    state.gdtr = TableReg { base: cpu.gdt.base, limit: u32::from(cpu.gdt.limit) };
    state.idtr = TableReg { base: cpu.idt.base, limit: u32::from(cpu.idt.limit) };
    state.cr0 = cpu.cr0;
    state.cr3 = cpu.cr3;
    state.cr4 = cpu.cr4;
    state.efer = cpu.efer;
    state.halted = false;
    state.hflags &= !hflags::INHIBIT_IRQ;
    state.recompute_hflags();
}

/// The boot-protocol view of `state`.
pub fn save(state: &X86State) -> CpuState {
    CpuState {
        gprs: state.gpr,
        rip: state.rip,
        rflags: flags::rflags(state),
        cs: from_cache(&state.segs[seg::CS]),
        ds: from_cache(&state.segs[seg::DS]),
        es: from_cache(&state.segs[seg::ES]),
        fs: from_cache(&state.segs[seg::FS]),
        gs: from_cache(&state.segs[seg::GS]),
        ss: from_cache(&state.segs[seg::SS]),
        tr: from_cache(&state.tr),
        ldt: from_cache(&state.ldtr),
        gdt: DescriptorTable { base: state.gdtr.base, limit: state.gdtr.limit as u16 },
        idt: DescriptorTable { base: state.idtr.base, limit: state.idtr.limit as u16 },
        cr0: state.cr0,
        cr3: state.cr3,
        cr4: state.cr4,
        efer: state.efer,
    }
}

/// Reads up to 15 code bytes at CS:RIP without touching the TLB.
fn code_at_rip(state: &X86State, phys: &PhysMemory) -> Vec<u8> {
    let cs_base = if state.hflags & hflags::CS64 != 0 { 0 } else { state.segs[seg::CS].base };
    let mut out = Vec::new();
    for i in 0..15u64 {
        let mut linear = cs_base.wrapping_add(state.rip).wrapping_add(i);
        if state.hflags & hflags::CS64 == 0 {
            linear &= 0xffff_ffff;
        }
        let Ok(t) = walker::walk(phys, state, linear, Access::Read, Privilege::Supervisor) else { break };
        let mut b = [0u8];
        phys.read(t.phys_page | (linear & 0xfff), &mut b);
        out.push(b[0]);
    }
    out
}

/// Registers, control state and the instruction at RIP, for crash reports.
pub fn dump(state: &X86State, phys: &PhysMemory) -> String {
    let g = &state.gpr;
    let mut s = format!(
        "RIP={:#018x} RSP={:#018x} RFLAGS={:#010x}\n\
         CR0={:#x} CR2={:#x} CR3={:#x} CR4={:#x} EFER={:#x} CS={:#06x} SS={:#06x} CPL={}\n\
         RAX={:#018x} RBX={:#018x} RCX={:#018x} RDX={:#018x}\n\
         RSI={:#018x} RDI={:#018x} RBP={:#018x} R8 ={:#018x}\n\
         R9 ={:#018x} R10={:#018x} R11={:#018x} R12={:#018x}\n\
         R13={:#018x} R14={:#018x} R15={:#018x}",
        state.rip,
        g[4],
        flags::rflags(state),
        state.cr0,
        state.cr2,
        state.cr3,
        state.cr4,
        state.efer,
        state.segs[seg::CS].selector,
        state.segs[seg::SS].selector,
        state.cpl(),
        g[0],
        g[3],
        g[1],
        g[2],
        g[6],
        g[7],
        g[5],
        g[8],
        g[9],
        g[10],
        g[11],
        g[12],
        g[13],
        g[14],
        g[15],
    );
    let bytes = code_at_rip(state, phys);
    let bitness = if state.hflags & hflags::CS64 != 0 {
        64
    } else if state.hflags & hflags::CS32 != 0 {
        32
    } else {
        16
    };
    let insn = Decoder::with_ip(bitness, &bytes, state.rip, DecoderOptions::NONE).decode();
    let mut text = String::new();
    if !insn.is_invalid() {
        IntelFormatter::new().format(&insn, &mut text);
    }
    let shown = &bytes[..insn.len().clamp(1, bytes.len().max(1)).min(bytes.len())];
    s.push_str(&format!("\ncode at RIP: {shown:02x?} {text}"));
    s
}
