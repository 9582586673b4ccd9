//! The emulated CPU's architectural state: one `#[repr(C)]` struct that the
//! IR reads and writes by field offset, so the JIT can address it through a
//! single pointer (QEMU's `CPUX86State`).

use super::flags::CcOp;

/// Segment register indices, in x86 encoding order (ModRM `sreg` field).
pub mod seg {
    pub const ES: usize = 0;
    pub const CS: usize = 1;
    pub const SS: usize = 2;
    pub const DS: usize = 3;
    pub const FS: usize = 4;
    pub const GS: usize = 5;
}

/// GPR indices, in x86 encoding order.
pub mod reg {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
}

/// RFLAGS bits.
pub mod rflags {
    pub const CF: u64 = 1 << 0;
    pub const FIXED1: u64 = 1 << 1;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    pub const IOPL: u64 = 3 << 12;
    pub const NT: u64 = 1 << 14;
    pub const RF: u64 = 1 << 16;
    pub const VM: u64 = 1 << 17;
    pub const AC: u64 = 1 << 18;
    pub const VIF: u64 = 1 << 19;
    pub const VIP: u64 = 1 << 20;
    pub const ID: u64 = 1 << 21;
    /// The six arithmetic flags kept lazily in `cc_*` (QEMU's CC_O..CC_C).
    pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
}

/// CR0/CR4/EFER bits the engine acts on.
pub mod ctrl {
    pub const CR0_PE: u64 = 1 << 0;
    pub const CR0_MP: u64 = 1 << 1;
    pub const CR0_EM: u64 = 1 << 2;
    pub const CR0_TS: u64 = 1 << 3;
    pub const CR0_ET: u64 = 1 << 4;
    pub const CR0_NE: u64 = 1 << 5;
    pub const CR0_WP: u64 = 1 << 16;
    pub const CR0_AM: u64 = 1 << 18;
    pub const CR0_NW: u64 = 1 << 29;
    pub const CR0_CD: u64 = 1 << 30;
    pub const CR0_PG: u64 = 1 << 31;
    pub const CR4_VME: u64 = 1 << 0;
    pub const CR4_PVI: u64 = 1 << 1;
    pub const CR4_TSD: u64 = 1 << 2;
    pub const CR4_DE: u64 = 1 << 3;
    pub const CR4_PSE: u64 = 1 << 4;
    pub const CR4_PAE: u64 = 1 << 5;
    pub const CR4_MCE: u64 = 1 << 6;
    pub const CR4_PGE: u64 = 1 << 7;
    pub const CR4_PCE: u64 = 1 << 8;
    pub const CR4_OSFXSR: u64 = 1 << 9;
    pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
    pub const CR4_UMIP: u64 = 1 << 11;
    pub const CR4_FSGSBASE: u64 = 1 << 16;
    pub const CR4_PCIDE: u64 = 1 << 17;
    pub const CR4_OSXSAVE: u64 = 1 << 18;
    pub const CR4_SMEP: u64 = 1 << 20;
    pub const CR4_SMAP: u64 = 1 << 21;
    pub const EFER_SCE: u64 = 1 << 0;
    pub const EFER_LME: u64 = 1 << 8;
    pub const EFER_LMA: u64 = 1 << 10;
    pub const EFER_NXE: u64 = 1 << 11;
}

/// A segment register with its descriptor cache, as QEMU's `SegmentCache`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentCache {
    pub base: u64,
    /// Limit in bytes (granularity already applied).
    pub limit: u32,
    /// Descriptor bits 40..=55 of the 8-byte descriptor, shifted down by 40:
    /// type (0..4), S (4), DPL (5..7), P (7), AVL (12), L (13), D/B (14), G (15).
    pub attr: u16,
    pub selector: u16,
}

impl SegmentCache {
    pub const ATTR_S: u16 = 1 << 4;
    pub const ATTR_P: u16 = 1 << 7;
    pub const ATTR_L: u16 = 1 << 13;
    pub const ATTR_DB: u16 = 1 << 14;
    pub const ATTR_G: u16 = 1 << 15;

    pub fn dpl(&self) -> u8 {
        ((self.attr >> 5) & 3) as u8
    }
    pub fn present(&self) -> bool {
        self.attr & Self::ATTR_P != 0
    }
    pub fn seg_type(&self) -> u8 {
        (self.attr & 0xf) as u8
    }
    /// Real-mode / vm86 style segment: base = selector << 4, 64 KiB limit.
    pub fn real_mode(selector: u16) -> Self {
        SegmentCache { base: u64::from(selector) << 4, limit: 0xffff, attr: 0x93 | Self::ATTR_S, selector }
    }
}

/// GDTR / IDTR.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableReg {
    pub base: u64,
    pub limit: u32,
}

/// The MSRs Linux touches and the engine honours.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Msrs {
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub tsc_aux: u64,
    /// Added to the host-derived TSC (writes to IA32_TSC set it).
    pub tsc_offset: i64,
    pub apic_base: u64,
    pub pat: u64,
    pub misc_enable: u64,
    pub mtrr_def_type: u64,
    pub mtrr_fixed: [u64; 11],
    pub mtrr_var: [u64; 16],
    pub spec_ctrl: u64,
}

/// x87, MMX and SSE state (the FXSAVE image's contents).
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FpuState {
    /// XMM0..XMM15.
    pub xmm: [u128; 16],
    /// ST0..ST7 as 80-bit values in the low 10 bytes (physical register order).
    pub st: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    /// Abridged tag word (FXSAVE format: 1 bit per register, 1 = valid).
    pub ftw: u8,
    pub fop: u16,
    pub fip: u64,
    pub fdp: u64,
    pub mxcsr: u32,
}

impl Default for FpuState {
    fn default() -> Self {
        FpuState { xmm: [0; 16], st: [[0; 16]; 8], fcw: 0x37f, fsw: 0, ftw: 0, fop: 0, fip: 0, fdp: 0, mxcsr: 0x1f80 }
    }
}

/// Derived mode bits, recomputed whenever CR0/CR4/EFER/CS/SS/RFLAGS.VM change
/// (QEMU's `hflags`). Part of a translation block's key.
pub mod hflags {
    /// Current privilege level (bits 0..2).
    pub const CPL_MASK: u64 = 3;
    /// CS.D: 32-bit default operand size (legacy/compat mode).
    pub const CS32: u64 = 1 << 2;
    /// SS.B: 32-bit stack.
    pub const SS32: u64 = 1 << 3;
    /// EFER.LMA: long mode active.
    pub const LMA: u64 = 1 << 4;
    /// CS.L with LMA: 64-bit code.
    pub const CS64: u64 = 1 << 5;
    /// CR0.PE.
    pub const PE: u64 = 1 << 6;
    /// RFLAGS.VM.
    pub const VM86: u64 = 1 << 7;
    /// Segment bases of DS/ES/SS may be non-zero (legacy modes): add them.
    pub const ADDSEG: u64 = 1 << 8;
    /// CR0.PG.
    pub const PG: u64 = 1 << 9;
    /// Interrupt shadow after STI / MOV SS / POP SS: no interrupt before the next instruction.
    pub const INHIBIT_IRQ: u64 = 1 << 10;
    /// RFLAGS.TF: single-step trap after each instruction.
    pub const TF: u64 = 1 << 11;
    /// CR0.TS | CR0.EM: FPU/SSE instructions fault.
    pub const FPU_TRAP: u64 = 1 << 12;
    /// Bits that change the meaning of translated code (the TB key).
    pub const TB_KEY_MASK: u64 = CPL_MASK | CS32 | SS32 | LMA | CS64 | PE | VM86 | ADDSEG | PG | TF | FPU_TRAP;
}

/// The whole architectural state of one emulated x86-64 CPU.
#[repr(C)]
#[derive(Debug, Clone)]
pub struct X86State {
    /// RAX..R15 in encoding order.
    pub gpr: [u64; 16],
    pub rip: u64,
    /// RFLAGS; the bits in [`rflags::ARITH`] are stale unless `cc_op` is
    /// [`CcOp::Eflags`]: read them with `flags::rflags(&state)`.
    pub rflags: u64,
    /// Lazy condition codes: the last flag-setting operation and its operands.
    pub cc_op: CcOp,
    pub cc_dst: u64,
    pub cc_src: u64,
    pub cc_src2: u64,
    /// ES, CS, SS, DS, FS, GS (see [`seg`]).
    pub segs: [SegmentCache; 6],
    pub ldtr: SegmentCache,
    pub tr: SegmentCache,
    pub gdtr: TableReg,
    pub idtr: TableReg,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub xcr0: u64,
    pub dr: [u64; 8],
    pub hflags: u64,
    pub msr: Msrs,
    pub fpu: FpuState,
    /// Set by HLT; cleared when an interrupt is taken.
    pub halted: bool,
}

impl X86State {
    /// The state after RESET/INIT (SDM Vol. 3 Table 9-1): real mode at F000:FFF0.
    pub fn reset() -> Self {
        let mut s = X86State {
            gpr: [0; 16],
            rip: 0xfff0,
            rflags: rflags::FIXED1,
            cc_op: CcOp::Eflags,
            cc_dst: 0,
            cc_src: 0,
            cc_src2: 0,
            segs: [SegmentCache::real_mode(0); 6],
            ldtr: SegmentCache { base: 0, limit: 0xffff, attr: 0x82, selector: 0 },
            tr: SegmentCache { base: 0, limit: 0xffff, attr: 0x8b, selector: 0 },
            gdtr: TableReg { base: 0, limit: 0xffff },
            idtr: TableReg { base: 0, limit: 0xffff },
            cr0: ctrl::CR0_ET | ctrl::CR0_CD | ctrl::CR0_NW,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            efer: 0,
            xcr0: 1,
            dr: [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400],
            hflags: 0,
            msr: Msrs { pat: 0x0007_0406_0007_0406, misc_enable: 1, ..Msrs::default() },
            fpu: FpuState::default(),
            halted: false,
        };
        s.segs[seg::CS] = SegmentCache { base: 0xffff_0000, limit: 0xffff, attr: 0x9b, selector: 0xf000 };
        s.gpr[reg::RDX] = 0x600; // family/model/stepping signature
        s.recompute_hflags();
        s
    }

    /// Current privilege level.
    pub fn cpl(&self) -> u8 {
        (self.hflags & hflags::CPL_MASK) as u8
    }

    /// Recomputes [`X86State::hflags`] from the registers it derives from.
    /// Call after any change to CR0, CR4, EFER, CS, SS or RFLAGS.VM/TF.
    pub fn recompute_hflags(&mut self) {
        use hflags::*;
        let keep = self.hflags & INHIBIT_IRQ;
        let mut h = keep;
        let pe = self.cr0 & ctrl::CR0_PE != 0;
        let vm86 = pe && self.rflags & rflags::VM != 0;
        let cs = &self.segs[seg::CS];
        let cpl = if !pe {
            0
        } else if vm86 {
            3
        } else {
            // CPL is the DPL of the SS descriptor cache (CS.RPL for conforming
            // code is the same after a proper load); QEMU tracks it the same way.
            u64::from(self.segs[seg::SS].dpl())
        };
        h |= cpl;
        if pe {
            h |= PE;
        }
        if vm86 {
            h |= VM86;
        }
        if self.cr0 & ctrl::CR0_PG != 0 {
            h |= PG;
        }
        let lma = self.efer & ctrl::EFER_LMA != 0;
        if lma {
            h |= LMA;
        }
        if lma && cs.attr & SegmentCache::ATTR_L != 0 {
            h |= CS64;
        } else {
            if pe && !vm86 && cs.attr & SegmentCache::ATTR_DB != 0 {
                h |= CS32;
            }
            if pe && !vm86 && self.segs[seg::SS].attr & SegmentCache::ATTR_DB != 0 {
                h |= SS32;
            }
            h |= ADDSEG;
        }
        if self.rflags & rflags::TF != 0 {
            h |= TF;
        }
        if self.cr0 & (ctrl::CR0_TS | ctrl::CR0_EM) != 0 {
            h |= FPU_TRAP;
        }
        self.hflags = h;
    }
}
