//! Engine-neutral architectural state: what a boot protocol sets, what tests read back.

/// A segment register with its hidden (descriptor cache) part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
    /// Descriptor type field (bits 8..12 of the high dword).
    pub type_: u8,
    pub present: bool,
    pub dpl: u8,
    /// Default operation size (D/B).
    pub db: bool,
    /// Code/data (true) or system (false) descriptor.
    pub s: bool,
    /// 64-bit code segment.
    pub l: bool,
    /// Granularity: limit in 4 KiB units.
    pub g: bool,
    pub avl: bool,
}

impl Segment {
    /// Decodes a GDT entry (limit returned in bytes, as the hidden part holds it).
    pub fn from_gdt_entry(selector: u16, entry: u64) -> Self {
        let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
        let g = (entry >> 55) & 1 == 1;
        Segment {
            selector,
            base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
            limit: if g { (raw_limit << 12) | 0xfff } else { raw_limit },
            type_: ((entry >> 40) & 0xf) as u8,
            s: (entry >> 44) & 1 == 1,
            dpl: ((entry >> 45) & 3) as u8,
            present: (entry >> 47) & 1 == 1,
            avl: (entry >> 52) & 1 == 1,
            l: (entry >> 53) & 1 == 1,
            db: (entry >> 54) & 1 == 1,
            g,
        }
    }
}

/// GDTR/IDTR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// Registers a boot protocol sets before the first instruction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuState {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 in encoding order.
    pub gprs: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

/// GPR indices into [`CpuState::gprs`].
pub mod gpr {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_flat_64bit_code_descriptor() {
        let s = Segment::from_gdt_entry(0x10, 0x00af_9b00_0000_ffff);
        assert_eq!(s.base, 0);
        assert_eq!(s.limit, 0xffff_ffff);
        assert!(s.l && s.g && s.present && s.s && !s.db);
        assert_eq!((s.type_, s.dpl), (0xb, 0));
    }
}
