//! Test support shared by the segmentation, interrupts and system tests: a
//! flat `LinearMemory` (linear = physical, no paging) and builders for
//! descriptors, gates and CPU states in each mode.

use crate::tcg::exception::{Exception, Result};
use crate::tcg::mmu::{Access, LinearMemory, Privilege};
use crate::tcg::state::{ctrl, rflags, seg, SegmentCache, X86State};

/// A flat guest memory; accesses past its end are #PF (not-present).
pub struct FlatMem {
    pub bytes: Vec<u8>,
    /// Every write: (address, size, privilege).
    pub writes: Vec<(u64, usize, Privilege)>,
}

impl FlatMem {
    pub fn new(size: usize) -> Self {
        FlatMem { bytes: vec![0; size], writes: Vec::new() }
    }
    fn range(&self, addr: u64, size: usize) -> Result<std::ops::Range<usize>> {
        let start = usize::try_from(addr).map_err(|_| Exception::page_fault(addr, 0))?;
        let end = start.checked_add(size).filter(|&e| e <= self.bytes.len()).ok_or(Exception::page_fault(addr, 0))?;
        Ok(start..end)
    }
    pub fn r(&self, addr: u64, size: usize) -> u64 {
        let r = self.range(addr, size).expect("test read in range");
        self.bytes[r].iter().rev().fold(0, |v, &b| (v << 8) | u64::from(b))
    }
    pub fn w(&mut self, addr: u64, size: usize, value: u64) {
        let r = self.range(addr, size).expect("test write in range");
        for (i, b) in self.bytes[r].iter_mut().enumerate() {
            *b = (value >> (8 * i)) as u8;
        }
    }
}

impl LinearMemory for FlatMem {
    fn read(&mut self, _s: &mut X86State, linear: u64, size: usize, _a: Access, _p: Privilege) -> Result<u64> {
        self.range(linear, size)?;
        Ok(self.r(linear, size))
    }
    fn write(&mut self, _s: &mut X86State, linear: u64, size: usize, value: u64, p: Privilege) -> Result<()> {
        self.range(linear, size)?;
        self.w(linear, size, value);
        self.writes.push((linear, size, p));
        Ok(())
    }
}

/// A code/data descriptor: `typ` is the 4-bit type, `flags` the high
/// nibble (G, D/B, L, AVL) as in attr bits 12..15 >> 12.
pub fn seg_desc(base: u32, limit: u32, typ: u8, dpl: u8, flags: u8) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | u64::from(typ & 0xf) << 40
        | 1 << 44
        | u64::from(dpl & 3) << 45
        | 1 << 47
        | ((limit >> 16) & 0xf) << 48
        | u64::from(flags & 0xf) << 52
        | (base >> 24) << 56
}

/// A system descriptor (LDT/TSS) low half.
pub fn sys_desc(base: u64, limit: u32, typ: u8, dpl: u8) -> u64 {
    let limit = u64::from(limit);
    (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | u64::from(typ & 0xf) << 40
        | u64::from(dpl & 3) << 45
        | 1 << 47
        | ((limit >> 16) & 0xf) << 48
        | ((base >> 24) & 0xff) << 56
}

/// A gate's low 8 bytes (interrupt/trap/call gate).
pub fn gate(selector: u16, offset: u64, typ: u8, dpl: u8, ist_or_params: u8) -> u64 {
    (offset & 0xffff)
        | u64::from(selector) << 16
        | u64::from(ist_or_params) << 32
        | u64::from(typ & 0xf) << 40
        | u64::from(dpl & 3) << 45
        | 1 << 47
        | (offset & 0xffff_0000) << 32
}

pub const FLAT_CODE32: u8 = 0xc; // G + D
pub const FLAT_CODE64: u8 = 0xa; // G + L

/// A state in 32-bit protected mode at `cpl`, flat segments from `gdt_base`
/// with the conventional layout: 0x08 code0, 0x10 data0, 0x18 code3 (DPL3),
/// 0x20 data3, 0x28 TSS (the caller writes descriptors into memory).
pub fn protected_state(gdt_base: u64, gdt_limit: u32, cpl: u8) -> X86State {
    let mut s = X86State::reset();
    s.cr0 |= ctrl::CR0_PE;
    s.gdtr.base = gdt_base;
    s.gdtr.limit = gdt_limit;
    let (cs, ds) = if cpl == 3 { (0x1b, 0x23) } else { (0x08, 0x10) };
    let code = crate::tcg::segmentation::Descriptor(seg_desc(0, 0xfffff, 0xb, cpl, FLAT_CODE32));
    let data = crate::tcg::segmentation::Descriptor(seg_desc(0, 0xfffff, 0x3, cpl, FLAT_CODE32));
    s.segs = [data.cache(ds); 6];
    s.segs[seg::CS] = code.cache(cs);
    s.rflags = rflags::FIXED1;
    s.recompute_hflags();
    s
}

/// Writes the standard flat 32-bit GDT (see [`protected_state`]) at `base`.
pub fn write_gdt32(m: &mut FlatMem, base: u64) {
    m.w(base + 0x08, 8, seg_desc(0, 0xfffff, 0xb, 0, FLAT_CODE32));
    m.w(base + 0x10, 8, seg_desc(0, 0xfffff, 0x3, 0, FLAT_CODE32));
    m.w(base + 0x18, 8, seg_desc(0, 0xfffff, 0xb, 3, FLAT_CODE32));
    m.w(base + 0x20, 8, seg_desc(0, 0xfffff, 0x3, 3, FLAT_CODE32));
}

/// Writes a 64-bit GDT at `base`: 0x08 code64 DPL0, 0x10 data DPL0,
/// 0x18 code32 DPL3 (compat), 0x20 data DPL3, 0x28 code64 DPL3 (the
/// SYSRET layout: STAR[63:48] = 0x18), 0x30 code32 DPL0, 0x40 TSS (16 bytes).
pub fn write_gdt64(m: &mut FlatMem, base: u64) {
    m.w(base + 0x08, 8, seg_desc(0, 0xfffff, 0xb, 0, FLAT_CODE64));
    m.w(base + 0x10, 8, seg_desc(0, 0xfffff, 0x3, 0, FLAT_CODE32));
    m.w(base + 0x18, 8, seg_desc(0, 0xfffff, 0xb, 3, FLAT_CODE32));
    m.w(base + 0x20, 8, seg_desc(0, 0xfffff, 0x3, 3, FLAT_CODE32));
    m.w(base + 0x28, 8, seg_desc(0, 0xfffff, 0xb, 3, FLAT_CODE64));
    m.w(base + 0x30, 8, seg_desc(0, 0xfffff, 0xb, 0, FLAT_CODE32));
}

/// A state in IA-32e mode (64-bit code at `cpl`) using [`write_gdt64`]'s
/// selectors.
pub fn long_state(gdt_base: u64, cpl: u8) -> X86State {
    let mut s = X86State::reset();
    s.cr0 |= ctrl::CR0_PE | ctrl::CR0_PG;
    s.cr4 |= ctrl::CR4_PAE;
    s.efer = ctrl::EFER_LME | ctrl::EFER_LMA | ctrl::EFER_SCE | ctrl::EFER_NXE;
    s.gdtr.base = gdt_base;
    s.gdtr.limit = 0x4f;
    let (cs_sel, cs, ds_sel, ds) = if cpl == 3 {
        (0x2b, seg_desc(0, 0xfffff, 0xb, 3, FLAT_CODE64), 0x23, seg_desc(0, 0xfffff, 0x3, 3, FLAT_CODE32))
    } else {
        (0x08, seg_desc(0, 0xfffff, 0xb, 0, FLAT_CODE64), 0x10, seg_desc(0, 0xfffff, 0x3, 0, FLAT_CODE32))
    };
    let data = crate::tcg::segmentation::Descriptor(ds).cache(ds_sel);
    s.segs = [data; 6];
    s.segs[seg::CS] = crate::tcg::segmentation::Descriptor(cs).cache(cs_sel);
    s.rflags = rflags::FIXED1;
    s.recompute_hflags();
    s
}

/// Whether a cache is what a descriptor load would give.
pub fn cache_of(desc: u64, selector: u16) -> SegmentCache {
    crate::tcg::segmentation::Descriptor(desc).cache(selector)
}
