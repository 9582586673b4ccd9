//! Register plumbing: [`CpuState`] to and from `kvm_regs`/`kvm_sregs`, and
//! the boot-time MSR, FPU and LAPIC values (Firecracker's choices).

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};

use crate::cpu_state::{gpr, CpuState, DescriptorTable, Segment};

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_ARCH_CAPABILITIES, enumerated by CPUID.(7,0):EDX[29].
pub(crate) const MSR_IA32_ARCH_CAPABILITIES: u32 = 0x10a;

const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 6;

/// RFLAGS bit 1 is reserved and always reads as 1; VM entry insists on it.
const RFLAGS_RESERVED_ONE: u64 = 1 << 1;

/// MSRs every vCPU gets before its first instruction: syscall/sysenter
/// entry points cleared, TSC at 0, fast strings on, and the MTRRs enabled
/// with write-back as the default type (otherwise the guest sees all memory
/// as uncacheable).
pub(crate) fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry { index, data, ..Default::default() })
    .collect()
}

/// The x87/SSE state at reset: all exceptions masked.
pub(crate) fn boot_fpu() -> kvm_fpu {
    kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (r, b) in lapic.regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *r = b as std::os::raw::c_char;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires the LAPIC's LINT0 to the 8259 (ExtINT) and LINT1 to NMI, as on PC
/// hardware in virtual-wire mode, so legacy interrupts reach the BSP.
pub(crate) fn set_lint_pins(lapic: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

fn to_kvm_segment(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present.into(),
        dpl: s.dpl,
        db: s.db.into(),
        s: s.s.into(),
        l: s.l.into(),
        g: s.g.into(),
        avl: s.avl.into(),
        // A not-present segment is what VMX calls "unusable".
        unusable: (!s.present).into(),
        padding: 0,
    }
}

fn from_kvm_segment(s: &kvm_segment) -> Segment {
    Segment {
        selector: s.selector,
        base: s.base,
        limit: s.limit,
        type_: s.type_,
        present: s.present != 0 && s.unusable == 0,
        dpl: s.dpl,
        db: s.db != 0,
        s: s.s != 0,
        l: s.l != 0,
        g: s.g != 0,
        avl: s.avl != 0,
    }
}

/// GPRs, RIP and RFLAGS of `state` as `kvm_regs`.
pub(crate) fn to_kvm_regs(state: &CpuState) -> kvm_regs {
    let g = &state.gprs;
    kvm_regs {
        rax: g[gpr::RAX],
        rcx: g[gpr::RCX],
        rdx: g[gpr::RDX],
        rbx: g[gpr::RBX],
        rsp: g[gpr::RSP],
        rbp: g[gpr::RBP],
        rsi: g[gpr::RSI],
        rdi: g[gpr::RDI],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: state.rip,
        rflags: state.rflags | RFLAGS_RESERVED_ONE,
    }
}

/// Overwrites the architectural parts of `sregs` with `state`, keeping what
/// `CpuState` doesn't model (APIC base, CR2, CR8, pending interrupts).
pub(crate) fn apply_sregs(state: &CpuState, sregs: &mut kvm_sregs) {
    sregs.cs = to_kvm_segment(&state.cs);
    sregs.ds = to_kvm_segment(&state.ds);
    sregs.es = to_kvm_segment(&state.es);
    sregs.fs = to_kvm_segment(&state.fs);
    sregs.gs = to_kvm_segment(&state.gs);
    sregs.ss = to_kvm_segment(&state.ss);
    // VM entry needs a usable TR; a boot protocol that sets none (TR only
    // matters at the first privilege change) keeps the reset-state TR.
    if state.tr.present {
        sregs.tr = to_kvm_segment(&state.tr);
    }
    sregs.ldt = to_kvm_segment(&state.ldt);
    sregs.gdt.base = state.gdt.base;
    sregs.gdt.limit = state.gdt.limit;
    sregs.idt.base = state.idt.base;
    sregs.idt.limit = state.idt.limit;
    sregs.cr0 = state.cr0;
    sregs.cr3 = state.cr3;
    sregs.cr4 = state.cr4;
    sregs.efer = state.efer;
}

/// The engine-neutral view of `regs` + `sregs`.
pub(crate) fn to_cpu_state(regs: &kvm_regs, sregs: &kvm_sregs) -> CpuState {
    let mut gprs = [0u64; 16];
    gprs[gpr::RAX] = regs.rax;
    gprs[gpr::RCX] = regs.rcx;
    gprs[gpr::RDX] = regs.rdx;
    gprs[gpr::RBX] = regs.rbx;
    gprs[gpr::RSP] = regs.rsp;
    gprs[gpr::RBP] = regs.rbp;
    gprs[gpr::RSI] = regs.rsi;
    gprs[gpr::RDI] = regs.rdi;
    gprs[8..].copy_from_slice(&[regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15]);
    CpuState {
        gprs,
        rip: regs.rip,
        rflags: regs.rflags,
        cs: from_kvm_segment(&sregs.cs),
        ds: from_kvm_segment(&sregs.ds),
        es: from_kvm_segment(&sregs.es),
        fs: from_kvm_segment(&sregs.fs),
        gs: from_kvm_segment(&sregs.gs),
        ss: from_kvm_segment(&sregs.ss),
        tr: from_kvm_segment(&sregs.tr),
        ldt: from_kvm_segment(&sregs.ldt),
        gdt: DescriptorTable { base: sregs.gdt.base, limit: sregs.gdt.limit },
        idt: DescriptorTable { base: sregs.idt.base, limit: sregs.idt.limit },
        cr0: sregs.cr0,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
    }
}

/// A register dump for crash reports: control state first, then the GPRs.
pub(crate) fn format_dump(regs: &kvm_regs, sregs: &kvm_sregs) -> String {
    format!(
        "RIP={:#018x} RSP={:#018x} RFLAGS={:#010x}\n\
         CR0={:#x} CR2={:#x} CR3={:#x} CR4={:#x} EFER={:#x} CS={:#06x} SS={:#06x}\n\
         RAX={:#018x} RBX={:#018x} RCX={:#018x} RDX={:#018x}\n\
         RSI={:#018x} RDI={:#018x} RBP={:#018x} R8 ={:#018x}\n\
         R9 ={:#018x} R10={:#018x} R11={:#018x} R12={:#018x}\n\
         R13={:#018x} R14={:#018x} R15={:#018x}",
        regs.rip,
        regs.rsp,
        regs.rflags,
        sregs.cr0,
        sregs.cr2,
        sregs.cr3,
        sregs.cr4,
        sregs.efer,
        sregs.cs.selector,
        sregs.ss.selector,
        regs.rax,
        regs.rbx,
        regs.rcx,
        regs.rdx,
        regs.rsi,
        regs.rdi,
        regs.rbp,
        regs.r8,
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12,
        regs.r13,
        regs.r14,
        regs.r15,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_mode_state() -> CpuState {
        let code = Segment::from_gdt_entry(0x8, 0x00af_9b00_0000_ffff);
        let data = Segment::from_gdt_entry(0x10, 0x00cf_9300_0000_ffff);
        let mut gprs = [0u64; 16];
        for (i, g) in gprs.iter_mut().enumerate() {
            *g = 0x1000 + i as u64;
        }
        CpuState {
            gprs,
            rip: 0x1234,
            rflags: 0x202,
            cs: code,
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            tr: Segment::from_gdt_entry(0x18, 0x0000_8b00_0000_0067),
            ldt: Segment::default(),
            gdt: DescriptorTable { base: 0x500, limit: 0x1f },
            idt: DescriptorTable { base: 0x520, limit: 0 },
            cr0: 0x8000_0011,
            cr3: 0x9000,
            cr4: 0x20,
            efer: 0x500,
        }
    }

    #[test]
    fn cpu_state_round_trips_through_kvm_structs() {
        let state = long_mode_state();
        let regs = to_kvm_regs(&state);
        let mut sregs = kvm_sregs { apic_base: 0xfee0_0900, ..Default::default() };
        apply_sregs(&state, &mut sregs);
        assert_eq!(sregs.apic_base, 0xfee0_0900, "APIC base is kept");
        assert_eq!(sregs.ldt.unusable, 1);
        assert_eq!((regs.rax, regs.rcx, regs.rsp, regs.r15), (0x1000, 0x1001, 0x1004, 0x100f));
        assert_eq!(to_cpu_state(&regs, &sregs), state);
    }

    #[test]
    fn rflags_reserved_bit_is_forced() {
        let state = CpuState::default();
        assert_eq!(to_kvm_regs(&state).rflags, 2);
    }

    #[test]
    fn lint_pins_get_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x0001_0700);
        set_lapic_reg(&mut lapic, APIC_LVT1, 0x0001_0000);
        set_lint_pins(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0x0001_0400);
    }
}
