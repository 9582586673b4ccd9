//! The emulated CPU's identity: the CPUID table.
//!
//! An Intel-vendor family-6 CPU with the x86-64 v1 baseline, plus what the
//! engine implements beyond it. Linux takes its best-tested paths on
//! "GenuineIntel", so the vendor is Intel; the model is Core 2 (family 6,
//! model 15): the oldest Intel x86-64 core, so no model-keyed driver
//! (intel_pstate, intel_idle) expects MSRs or instructions the engine
//! lacks, and not below model 15, where Linux drops PAT.
//!
//! # Advertised features
//!
//! | leaf | reg | bit | feature | note |
//! |---|---|---|---|---|
//! | 1 | EDX | 0 | FPU | x87 |
//! | 1 | EDX | 2 | DE | CR4.DE (DR4/DR5 #UD) |
//! | 1 | EDX | 3 | PSE | 4 MiB pages in 32-bit paging |
//! | 1 | EDX | 4 | TSC | RDTSC, CR4.TSD |
//! | 1 | EDX | 5 | MSR | RDMSR/WRMSR |
//! | 1 | EDX | 6 | PAE | |
//! | 1 | EDX | 8 | CX8 | CMPXCHG8B |
//! | 1 | EDX | 9 | APIC | |
//! | 1 | EDX | 11 | SEP | SYSENTER/SYSEXIT |
//! | 1 | EDX | 12 | MTRR | 8 variable ranges, fixed ranges, WC |
//! | 1 | EDX | 13 | PGE | global pages |
//! | 1 | EDX | 15 | CMOV | |
//! | 1 | EDX | 16 | PAT | |
//! | 1 | EDX | 17 | PSE-36 | |
//! | 1 | EDX | 19 | CLFSH | CLFLUSH, 64-byte line |
//! | 1 | EDX | 23 | MMX | |
//! | 1 | EDX | 24 | FXSR | FXSAVE/FXRSTOR, CR4.OSFXSR |
//! | 1 | EDX | 25 | SSE | |
//! | 1 | EDX | 26 | SSE2 | |
//! | 1 | EDX | 28 | HTT | only with more than one vCPU |
//! | 1 | ECX | 13 | CX16 | CMPXCHG16B |
//! | 1 | ECX | 21 | x2APIC | APIC_BASE.EXTD, MSRs 0x800-0x8FF (emulated LAPIC) |
//! | 1 | ECX | 24 | TSC-deadline | IA32_TSC_DEADLINE on the VM clock's TSC |
//! | 1 | ECX | 31 | hypervisor | leaf 0x4000_0000 = "RXVMMTCGRXVM" |
//! | 6 | EAX | 2 | ARAT | the emulated APIC timer never stops |
//! | 7.0 | EBX | 1 | TSC_ADJUST | MSR 0x3B; with invariant TSC it spares Linux's clocksource watchdog |
//! | 7.0 | EDX | 26 | IBRS/IBPB | IA32_SPEC_CTRL, IA32_PRED_CMD (no-ops: nothing speculates) |
//! | 7.2 | EDX | 4 | BHI_CTRL | SPEC_CTRL.BHI_DIS_S: Linux then skips its BHB-clearing loop on syscalls |
//! | 7.0 | EDX | 29 | ARCH_CAPABILITIES | MSR 0x10A: not affected by Meltdown, MDS, TAA, SSB... |
//! | 0x8000_0001 | EDX | 11 | SYSCALL | SYSCALL/SYSRET (64-bit mode) |
//! | 0x8000_0001 | EDX | 20 | NX | EFER.NXE |
//! | 0x8000_0001 | EDX | 26 | PDPE1GB | 1 GiB pages ([`Features::pdpe1gb`]) |
//! | 0x8000_0001 | EDX | 27 | RDTSCP | IA32_TSC_AUX |
//! | 0x8000_0001 | EDX | 29 | LM | long mode |
//! | 0x8000_0007 | EDX | 8 | invariant TSC | |
//!
//! Optional bits, off unless [`FEATURES`] turns them on (the translator
//! flips them as it implements the instructions): SSE3, SSSE3, SSE4.1,
//! SSE4.2, MOVBE, POPCNT (leaf 1 ECX 0, 9, 19, 20, 22, 23), BMI1, BMI2, ERMS
//! (leaf 7 EBX 3, 8, 9), LAHF/SAHF in 64-bit mode, LZCNT, PREFETCHW
//! (0x8000_0001 ECX 0, 5, 8).
//!
//! Never advertised: AVX and XSAVE (no XSAVE state), PCID/INVPCID,
//! FSGSBASE, SMEP/SMAP/UMIP, MONITOR/MWAIT, PCLMULQDQ, AES, RDRAND,
//! perfmon (leaf 0xA is 0), MCE/MCA, VME, VMX, KVM paravirt leaves.
//!
//! Other leaves: 0 = max leaf 0x16, "GenuineIntel"; 1 EAX = 0x000006F0
//! (family 6, model 15), EBX = APIC ID, addressable IDs, CLFLUSH 64; 2 =
//! no descriptors; 4 = no cache leaves; 0xB = x2APIC topology (one thread
//! per core, all vCPUs cores of one package); 0x15 = TSC/crystal ratio
//! 80/1 with a 25 MHz crystal ([`CRYSTAL_HZ`], [`TSC_HZ`]); 0x16 = 2000 MHz
//! base and max, 100 MHz bus; 0x8000_0000 = max extended leaf 0x8000_0008;
//! 0x8000_0002..4 = brand "rxvmm TCG x86-64 CPU"; 0x8000_0008 = 40-bit
//! physical, 48-bit linear addresses. Leaves past the maximum return the
//! highest basic leaf, as Intel CPUs do.

use super::msr::misc_enable;
use crate::tcg::mmu::walker::{LINEAR_ADDR_BITS, PHYS_ADDR_BITS};
use crate::tcg::state::X86State;

/// The core crystal clock: the LAPIC timer's input clock, which Linux reads
/// from leaf 0x15 ECX (`lapic_timer_period`), so the LAPIC must tick at it.
pub const CRYSTAL_HZ: u64 = 25_000_000;
/// TSC ticks per crystal tick (leaf 0x15 EBX/EAX).
pub const TSC_CRYSTAL_RATIO: u64 = 80;
/// The invariant TSC frequency RDTSC counts at (2 GHz).
pub const TSC_HZ: u64 = CRYSTAL_HZ * TSC_CRYSTAL_RATIO;
/// The 100 MHz bus clock; TSC_HZ / BUS_HZ is PLATFORM_INFO's ratio.
pub const BUS_HZ: u64 = 100_000_000;

pub const MAX_BASIC_LEAF: u32 = 0x16;
pub const MAX_EXTENDED_LEAF: u32 = 0x8000_0008;
pub const HYPERVISOR_LEAF: u32 = 0x4000_0000;
pub const VENDOR: &[u8; 12] = b"GenuineIntel";
pub const HYPERVISOR_SIGNATURE: &[u8; 12] = b"RXVMMTCGRXVM";
pub const BRAND: &str = "rxvmm TCG x86-64 CPU";
/// Family 6, model 15 (Core 2), stepping 0.
pub const SIGNATURE: u32 = 0x0000_06f0;

/// Features beyond the baseline that the engine may or may not implement
/// yet: one flag per CPUID bit, read by [`cpuid`] through [`FEATURES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Leaf 1 ECX 0.
    pub sse3: bool,
    /// Leaf 1 ECX 9.
    pub ssse3: bool,
    /// Leaf 1 ECX 19.
    pub sse4_1: bool,
    /// Leaf 1 ECX 20.
    pub sse4_2: bool,
    /// Leaf 1 ECX 22.
    pub movbe: bool,
    /// Leaf 1 ECX 23.
    pub popcnt: bool,
    /// Leaf 1 ECX 21: x2APIC mode (APIC_BASE bit 10, MSRs 0x800+).
    pub x2apic: bool,
    /// Leaf 1 ECX 24: IA32_TSC_DEADLINE (MSR 0x6E0).
    pub tsc_deadline: bool,
    /// Leaf 7 EBX 3: ANDN, BEXTR, BLSI, BLSMSK, BLSR, TZCNT.
    pub bmi1: bool,
    /// Leaf 7 EBX 8: BZHI, MULX, PDEP, PEXT, RORX, SARX, SHLX, SHRX.
    pub bmi2: bool,
    /// Leaf 7 EBX 9: enhanced REP MOVSB/STOSB.
    pub erms: bool,
    /// 0x8000_0001 ECX 0: LAHF/SAHF in 64-bit mode.
    pub lahf_lm: bool,
    /// 0x8000_0001 ECX 5 (ABM): LZCNT.
    pub lzcnt: bool,
    /// 0x8000_0001 ECX 8: PREFETCHW.
    pub prefetchw: bool,
    /// 0x8000_0001 EDX 26: 1 GiB pages in 4-level paging.
    pub pdpe1gb: bool,
}

/// What this build of the engine advertises.
pub const FEATURES: Features = Features {
    sse3: false,
    ssse3: false,
    sse4_1: false,
    sse4_2: false,
    movbe: false,
    popcnt: false,
    // The emulated LAPIC (devices::irqchip) has both.
    x2apic: true,
    tsc_deadline: true,
    bmi1: false,
    bmi2: false,
    erms: false,
    lahf_lm: false,
    lzcnt: false,
    prefetchw: false,
    // The page walker maps 1 GiB pages (PS in a PDPTE), SDM 4.5.4.
    pdpe1gb: true,
};

mod bits {
    // Leaf 1 EDX.
    pub const FPU: u32 = 1 << 0;
    pub const DE: u32 = 1 << 2;
    pub const PSE: u32 = 1 << 3;
    pub const TSC: u32 = 1 << 4;
    pub const MSR: u32 = 1 << 5;
    pub const PAE: u32 = 1 << 6;
    pub const CX8: u32 = 1 << 8;
    pub const APIC: u32 = 1 << 9;
    pub const SEP: u32 = 1 << 11;
    pub const MTRR: u32 = 1 << 12;
    pub const PGE: u32 = 1 << 13;
    pub const CMOV: u32 = 1 << 15;
    pub const PAT: u32 = 1 << 16;
    pub const PSE36: u32 = 1 << 17;
    pub const CLFSH: u32 = 1 << 19;
    pub const MMX: u32 = 1 << 23;
    pub const FXSR: u32 = 1 << 24;
    pub const SSE: u32 = 1 << 25;
    pub const SSE2: u32 = 1 << 26;
    pub const HTT: u32 = 1 << 28;
    // Leaf 1 ECX.
    pub const SSE3: u32 = 1 << 0;
    pub const SSSE3: u32 = 1 << 9;
    pub const CX16: u32 = 1 << 13;
    pub const SSE4_1: u32 = 1 << 19;
    pub const SSE4_2: u32 = 1 << 20;
    pub const X2APIC: u32 = 1 << 21;
    pub const MOVBE: u32 = 1 << 22;
    pub const POPCNT: u32 = 1 << 23;
    pub const TSC_DEADLINE: u32 = 1 << 24;
    pub const HYPERVISOR: u32 = 1 << 31;
    // Leaf 6 EAX.
    pub const ARAT: u32 = 1 << 2;
    // Leaf 7.0 EBX / EDX.
    pub const TSC_ADJUST: u32 = 1 << 1;
    pub const BMI1: u32 = 1 << 3;
    pub const BMI2: u32 = 1 << 8;
    pub const ERMS: u32 = 1 << 9;
    pub const SPEC_CTRL: u32 = 1 << 26;
    // Leaf 7.2 EDX.
    pub const BHI_CTRL: u32 = 1 << 4;
    pub const ARCH_CAPABILITIES: u32 = 1 << 29;
    // 0x8000_0001 ECX / EDX.
    pub const LAHF_LM: u32 = 1 << 0;
    pub const ABM: u32 = 1 << 5;
    pub const PREFETCHW: u32 = 1 << 8;
    pub const SYSCALL: u32 = 1 << 11;
    pub const NX: u32 = 1 << 20;
    pub const PDPE1GB: u32 = 1 << 26;
    pub const RDTSCP: u32 = 1 << 27;
    pub const LM: u32 = 1 << 29;
    // 0x8000_0007 EDX.
    pub const INVARIANT_TSC: u32 = 1 << 8;
}

/// Leaf 1 EDX: the x86-64 v1 baseline plus SEP, PSE-36.
pub const LEAF1_EDX: u32 = bits::FPU
    | bits::DE
    | bits::PSE
    | bits::TSC
    | bits::MSR
    | bits::PAE
    | bits::CX8
    | bits::APIC
    | bits::SEP
    | bits::MTRR
    | bits::PGE
    | bits::CMOV
    | bits::PAT
    | bits::PSE36
    | bits::CLFSH
    | bits::MMX
    | bits::FXSR
    | bits::SSE
    | bits::SSE2;

fn flag(on: bool, bit: u32) -> u32 {
    if on {
        bit
    } else {
        0
    }
}

/// Leaf 1 ECX for `f` (hypervisor and CX16 always).
pub fn leaf1_ecx(f: &Features) -> u32 {
    bits::CX16
        | bits::HYPERVISOR
        | flag(f.sse3, bits::SSE3)
        | flag(f.ssse3, bits::SSSE3)
        | flag(f.sse4_1, bits::SSE4_1)
        | flag(f.sse4_2, bits::SSE4_2)
        | flag(f.x2apic, bits::X2APIC)
        | flag(f.movbe, bits::MOVBE)
        | flag(f.popcnt, bits::POPCNT)
        | flag(f.tsc_deadline, bits::TSC_DEADLINE)
}

fn signature_regs(sig: &[u8; 12]) -> [u32; 3] {
    let w = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
    [w(0), w(4), w(8)]
}

/// Four dwords of the 48-byte, NUL-padded brand string.
fn brand_regs(part: usize) -> [u32; 4] {
    let mut s = [0u8; 48];
    let b = BRAND.as_bytes();
    let n = b.len().min(47);
    s[..n].copy_from_slice(&b[..n]);
    let w = |i: usize| {
        let o = part * 16 + i * 4;
        u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]])
    };
    [w(0), w(1), w(2), w(3)]
}

/// CPUID for vCPU `apic_id` of `vcpus`: `[eax, ebx, ecx, edx]` of
/// `leaf`/`subleaf`, with the build's [`FEATURES`]. `state` supplies what
/// the guest configured: IA32_MISC_ENABLE's "limit CPUID maxval" and
/// "XD bit disable".
pub fn cpuid(state: &X86State, apic_id: u32, vcpus: u32, leaf: u32, subleaf: u32) -> [u32; 4] {
    cpuid_with(&FEATURES, state, apic_id, vcpus, leaf, subleaf)
}

/// [`cpuid`] with an explicit feature set (tests, future per-VM models).
pub fn cpuid_with(f: &Features, state: &X86State, apic_id: u32, vcpus: u32, leaf: u32, subleaf: u32) -> [u32; 4] {
    let vcpus = vcpus.max(1);
    // APIC-ID bits numbering the cores of the package (as the KVM engine).
    let core_bits = vcpus.checked_next_power_of_two().map_or(32, u32::trailing_zeros);
    let misc = state.msr.misc_enable;
    let leaf = match leaf {
        0..=MAX_BASIC_LEAF | 0x8000_0000..=MAX_EXTENDED_LEAF | HYPERVISOR_LEAF..=0x4fff_ffff => leaf,
        // Intel: an out-of-range leaf returns the highest basic leaf.
        _ => MAX_BASIC_LEAF,
    };
    match leaf {
        0 => {
            let max = if misc & misc_enable::LIMIT_CPUID != 0 { 2 } else { MAX_BASIC_LEAF };
            let [b, d, c] = signature_regs(VENDOR);
            [max, b, c, d]
        }
        1 => {
            let htt = vcpus > 1;
            let ids = (1u64 << core_bits.min(32)).min(255) as u32;
            let ebx = (apic_id & 0xff) << 24 | ids << 16 | 8 << 8;
            [SIGNATURE, ebx, leaf1_ecx(f), LEAF1_EDX | flag(htt, bits::HTT)]
        }
        // One iteration, no descriptors: sizes come from nowhere (leaf 4 is empty).
        2 => [1, 0, 0, 0],
        6 => [bits::ARAT, 0, 0, 0],
        7 if subleaf == 0 => {
            let ebx = bits::TSC_ADJUST | flag(f.bmi1, bits::BMI1) | flag(f.bmi2, bits::BMI2) | flag(f.erms, bits::ERMS);
            // EAX: the highest subleaf (2, for BHI_CTRL).
            [2, ebx, 0, bits::SPEC_CTRL | bits::ARCH_CAPABILITIES]
        }
        7 if subleaf == 2 => [0, 0, 0, bits::BHI_CTRL],
        0xb => {
            let (shift, count, kind) = match subleaf {
                0 => (0, 1, 1),
                1 => (core_bits, vcpus & 0xffff, 2),
                _ => (0, 0, 0),
            };
            [shift, count, (subleaf & 0xff) | kind << 8, apic_id]
        }
        0x15 => [1, TSC_CRYSTAL_RATIO as u32, CRYSTAL_HZ as u32, 0],
        0x16 => {
            let mhz = (TSC_HZ / 1_000_000) as u32;
            [mhz, mhz, (BUS_HZ / 1_000_000) as u32, 0]
        }
        HYPERVISOR_LEAF => {
            let [b, c, d] = signature_regs(HYPERVISOR_SIGNATURE);
            [HYPERVISOR_LEAF, b, c, d]
        }
        0x8000_0000 => [MAX_EXTENDED_LEAF, 0, 0, 0],
        0x8000_0001 => {
            let ecx = flag(f.lahf_lm, bits::LAHF_LM) | flag(f.lzcnt, bits::ABM) | flag(f.prefetchw, bits::PREFETCHW);
            let nx = misc & misc_enable::XD_DISABLE == 0;
            let edx = bits::SYSCALL | flag(nx, bits::NX) | flag(f.pdpe1gb, bits::PDPE1GB) | bits::RDTSCP | bits::LM;
            [0, 0, ecx, edx]
        }
        0x8000_0002..=0x8000_0004 => brand_regs((leaf - 0x8000_0002) as usize),
        0x8000_0007 => [0, 0, 0, bits::INVARIANT_TSC],
        0x8000_0008 => [PHYS_ADDR_BITS | LINEAR_ADDR_BITS << 8, 0, 0, 0],
        _ => [0; 4],
    }
}
