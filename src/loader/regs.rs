//! The boot GDT and vCPU 0's initial registers.
//!
//! The segment registers' hidden parts are decoded from the very GDT entries
//! written to guest memory, so the two can't disagree: a guest that reloads
//! a selector gets what it already had.

use accel::cpu_state::gpr;
use accel::{CpuState, DescriptorTable, Segment};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{BootProtocol, LoadError};
use crate::layout;

pub const GDT_CODE_SELECTOR: u16 = 0x8;
pub const GDT_DATA_SELECTOR: u16 = 0x10;
pub const GDT_TSS_SELECTOR: u16 = 0x18;
const GDT_ENTRIES: usize = 4;
const _: () = assert!(layout::BOOT_GDT_START + (GDT_ENTRIES as u64) * 8 <= layout::BOOT_IDT_START);

// Descriptor flags as `gdt_entry` takes them: bits 0..8 are the access byte
// (P, DPL, S, type), bits 12..16 the G, D/B, L, AVL nibble.
/// Long-mode code: G, L, P, S, execute/read, accessed.
const CODE64: u16 = 0xa09b;
/// 32-bit code: G, D, P, S, execute/read, accessed.
const CODE32: u16 = 0xc09b;
/// Data: G, B, P, S, read/write, accessed.
const DATA: u16 = 0xc093;
/// Busy TSS, byte granular. The PVH ABI asks for limit 0x67, which is also
/// the smallest valid 64-bit TSS, so both protocols share the entry.
const TSS: u16 = 0x008b;
const TSS_LIMIT: u32 = 0x67;

const RFLAGS_RESERVED: u64 = 1 << 1;
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Packs a descriptor; `limit` is the 20-bit raw limit (in pages when G is set).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Null, flat code (64-bit for Linux64, 32-bit for PVH), flat data, TSS.
pub(super) fn gdt(protocol: BootProtocol) -> [u64; GDT_ENTRIES] {
    let code = match protocol {
        BootProtocol::Linux64 => CODE64,
        BootProtocol::Pvh => CODE32,
    };
    [0, gdt_entry(code, 0, 0xf_ffff), gdt_entry(DATA, 0, 0xf_ffff), gdt_entry(TSS, 0, TSS_LIMIT)]
}

/// Writes the GDT at `BOOT_GDT_START` and an empty IDT at `BOOT_IDT_START`.
pub(super) fn write_gdt_idt(mem: &GuestMemoryMmap, gdt: &[u64; GDT_ENTRIES]) -> Result<(), LoadError> {
    for (i, entry) in gdt.iter().enumerate() {
        let addr = layout::BOOT_GDT_START + (i as u64) * 8;
        mem.write_obj(*entry, GuestAddress(addr)).map_err(|source| LoadError::GuestWrite {
            what: "boot GDT",
            addr,
            source,
        })?;
    }
    // The IDT's limit is 0: any exception before the kernel sets up its own
    // is a triple fault, which engines report, rather than a jump to garbage.
    mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START)).map_err(|source| LoadError::GuestWrite {
        what: "boot IDT",
        addr: layout::BOOT_IDT_START,
        source,
    })
}

fn segment(gdt: &[u64; GDT_ENTRIES], selector: u16) -> Segment {
    Segment::from_gdt_entry(selector, gdt[usize::from(selector >> 3)])
}

/// vCPU 0's state at `entry` for `protocol`, with segments from `gdt`.
pub(super) fn cpu_state(protocol: BootProtocol, entry: u64, gdt: &[u64; GDT_ENTRIES]) -> CpuState {
    let data = segment(gdt, GDT_DATA_SELECTOR);
    let mut state = CpuState {
        rip: entry,
        rflags: RFLAGS_RESERVED,
        cs: segment(gdt, GDT_CODE_SELECTOR),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: segment(gdt, GDT_TSS_SELECTOR),
        // LDTR stays null (not present): nothing boots with an LDT.
        gdt: DescriptorTable { base: layout::BOOT_GDT_START, limit: (GDT_ENTRIES * 8 - 1) as u16 },
        idt: DescriptorTable { base: layout::BOOT_IDT_START, limit: 0 },
        ..CpuState::default()
    };
    match protocol {
        BootProtocol::Linux64 => {
            state.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
            state.cr3 = layout::PML4_START;
            state.cr4 = CR4_PAE;
            state.efer = EFER_LME | EFER_LMA;
            state.gprs[gpr::RSI] = layout::ZERO_PAGE_START;
            state.gprs[gpr::RSP] = layout::BOOT_STACK_POINTER;
            state.gprs[gpr::RBP] = layout::BOOT_STACK_POINTER;
        }
        BootProtocol::Pvh => {
            // PVH ABI: protected mode, paging off; EBX points at start_info.
            state.cr0 = CR0_PE | CR0_ET;
            state.gprs[gpr::RBX] = layout::PVH_INFO_START;
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_firecracker_encodings() {
        let gdt = gdt(BootProtocol::Linux64);
        assert_eq!(gdt[1], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[2], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt[3], 0x0000_8b00_0000_0067);
        assert_eq!(super::gdt(BootProtocol::Pvh)[1], 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn linux64_segments_are_flat_long_mode() {
        let s = cpu_state(BootProtocol::Linux64, 0x20_0000, &gdt(BootProtocol::Linux64));
        assert!(s.cs.l && !s.cs.db && s.cs.present && s.cs.s);
        assert_eq!((s.cs.selector, s.cs.base, s.cs.limit, s.cs.type_), (0x8, 0, 0xffff_ffff, 0xb));
        assert_eq!((s.ds.selector, s.ds.limit, s.ds.type_), (0x10, 0xffff_ffff, 0x3));
        assert!(s.ds.db && s.ds.g && s.ds.present);
        assert_eq!(s.ss, s.ds);
        assert_eq!((s.tr.selector, s.tr.type_, s.tr.limit), (0x18, 0xb, 0x67));
        assert!(s.tr.present && !s.tr.s);
        assert_eq!(s.cr0, 0x8000_0031);
        assert_eq!((s.cr3, s.cr4, s.efer), (layout::PML4_START, 0x20, 0x500));
        assert_eq!(s.gprs[gpr::RSI], layout::ZERO_PAGE_START);
        assert_eq!(s.rflags, 2);
    }

    #[test]
    fn pvh_segments_are_flat_32bit() {
        let s = cpu_state(BootProtocol::Pvh, 0x10_0040, &gdt(BootProtocol::Pvh));
        assert!(!s.cs.l && s.cs.db && s.cs.g);
        assert_eq!((s.cs.base, s.cs.limit), (0, 0xffff_ffff));
        assert_eq!((s.cr0, s.cr3, s.cr4, s.efer), (0x11, 0, 0, 0));
        assert_eq!(s.gprs[gpr::RBX], layout::PVH_INFO_START);
        assert_eq!((s.rip, s.rflags), (0x10_0040, 2));
    }
}
