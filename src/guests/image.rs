//! The fixed layout every guest image shares, and the data the builder
//! writes into it directly (GDT, TSS, IDT gates, PVH page tables).
//!
//! ```text
//! offset   (image loaded at LOAD_ADDR = 2 MiB)
//! 0x0000   64-bit code, then the runtime's strings and tables
//! 0x4000   32-bit code (PVH entry stub, AP protected-mode step)
//! 0x4800   16-bit AP trampoline, copied to TRAMPOLINE_ADDR at run time
//! 0x5000   GDT, GDTR, IDTR, TSS, entry-state block, shared variables
//! 0x6000   IDT (256 gates)
//! 0x7000   PML4, PDPT (0x8000), PD (0x9000): identity map of 1 GiB, 2 MiB
//!          pages with the User bit, for the PVH entry (the VMM builds none)
//! 0xa000   kernel stack (top 0xc000), user stack (top 0xd000),
//!          user buffer 0xd000..0xe000, AP stacks 0xe000..0x16000
//! ```
//!
//! Fixed offsets keep cross-mode references trivial: 16- and 32-bit code
//! address the data by absolute constants instead of labels.

use iced_x86::code_asm::{CodeAssembler, CodeAssemblerResult};
use iced_x86::BlockEncoderOptions;

use super::elf::elf64_image;
use super::GuestError;

/// Guest-physical (= virtual, identity-mapped) address of image offset 0.
pub const LOAD_ADDR: u64 = 0x20_0000;

pub(super) const MAIN_OFF: usize = 0;
pub(super) const MAIN_MAX: usize = 0x4000;
pub(super) const CODE32_OFF: usize = 0x4000;
pub(super) const CODE32_MAX: usize = 0x800;
pub(super) const CODE16_OFF: usize = 0x4800;
/// Code of the trampoline; its GDTR copy sits at `TRAMP_GDTR_OFF` in the slot.
pub(super) const CODE16_MAX: usize = 0x7f0;
pub(super) const CODE16_SLOT: usize = 0x800;
/// Offset (inside the 16-bit slot, so also from the trampoline's CS base) of
/// the GDTR copy that real-mode code can reach.
pub(super) const TRAMP_GDTR_OFF: usize = 0x7f0;

const GDT_OFF: usize = 0x5000;
const GDTR_OFF: usize = 0x5040;
const IDTR_OFF: usize = 0x5050;
const TSS_OFF: usize = 0x5080;
/// Entry-state block of boot-report (`state` offsets below).
pub(super) const STATE_OFF: usize = 0x5100;
/// Shared variables of the guests (spinlock, counters).
pub(super) const VARS_OFF: usize = 0x5200;
const IDT_OFF: usize = 0x6000;
const IDT_ENTRIES: usize = 256;
const PML4_OFF: usize = 0x7000;
const PDPT_OFF: usize = 0x8000;
const PD_OFF: usize = 0x9000;
pub(super) const KSTACK_TOP_OFF: usize = 0xc000;
pub(super) const USTACK_TOP_OFF: usize = 0xd000;
pub(super) const UBUF_OFF: usize = 0xd000;
pub(super) const UBUF_LEN: usize = 0x1000;
pub(super) const AP_STACKS_OFF: usize = 0xe000;
pub(super) const AP_STACK_SIZE: usize = 0x400;
/// APs beyond this many get no stack; they only check in.
pub(super) const MAX_APS: usize = 32;
const IMAGE_SIZE: usize = AP_STACKS_OFF + MAX_APS * AP_STACK_SIZE;
// The slots must not overlap each other or the data.
const _: () = assert!(MAIN_OFF + MAIN_MAX <= CODE32_OFF && CODE32_OFF + CODE32_MAX <= CODE16_OFF);
const _: () = assert!(CODE16_MAX <= TRAMP_GDTR_OFF && CODE16_OFF + CODE16_SLOT <= GDT_OFF);
const _: () = assert!(GDT_OFF + GDT_BYTES <= GDTR_OFF && TSS_OFF + TSS_LEN <= STATE_OFF);
const _: () = assert!(IDT_OFF + IDT_ENTRIES * 16 <= PML4_OFF && PD_OFF + 0x1000 <= KSTACK_TOP_OFF - 0x2000);

/// Guest address of an image offset.
pub(super) const fn addr(off: usize) -> u64 {
    LOAD_ADDR + off as u64
}

pub(super) const GDTR_ADDR: u64 = addr(GDTR_OFF);
pub(super) const IDTR_ADDR: u64 = addr(IDTR_OFF);
pub(super) const PML4_ADDR: u64 = addr(PML4_OFF);

/// GDT selectors. User data precedes user code, the order `sysret` needs.
pub(super) mod sel {
    pub const KCODE64: u32 = 0x08;
    pub const KDATA: u32 = 0x10;
    pub const UDATA: u32 = 0x18;
    pub const UCODE64: u32 = 0x20;
    pub const TSS: u32 = 0x28;
    pub const KCODE32: u32 = 0x38;
}

/// Descriptors have the accessed bit preset, so loading a selector never
/// writes to the GDT (APs load them concurrently).
const GDT: [u64; 6] = [
    0,
    0x00af_9b00_0000_ffff, // 0x08 kernel code, 64-bit
    0x00cf_9300_0000_ffff, // 0x10 kernel data
    0x00cf_f300_0000_ffff, // 0x18 user data, DPL 3
    0x00af_fb00_0000_ffff, // 0x20 user code, 64-bit, DPL 3
    0,                     // 0x28 TSS, 16 bytes, filled in by `Image::new`
];
const GDT_CODE32: u64 = 0x00cf_9b00_0000_ffff; // 0x38 kernel code, 32-bit
const GDT_BYTES: usize = 0x40;
const TSS_LEN: usize = 104;

/// Page-table entry flags: present, writable, user; `PS` marks a 2 MiB page.
const PTE_PWU: u64 = 0x7;
const PTE_PS: u64 = 0x80;

/// The image being built: `IMAGE_SIZE` bytes with the fixed data in place.
pub(super) struct Image {
    bytes: Vec<u8>,
}

impl Image {
    pub fn new() -> Self {
        let mut image = Image { bytes: vec![0; IMAGE_SIZE] };
        for (i, desc) in GDT.iter().enumerate() {
            image.put(GDT_OFF + i * 8, &desc.to_le_bytes());
        }
        image.put(GDT_OFF + sel::TSS as usize, &tss_descriptor(addr(TSS_OFF)));
        image.put(GDT_OFF + sel::KCODE32 as usize, &GDT_CODE32.to_le_bytes());
        image.put(GDTR_OFF, &pseudo_descriptor(GDT_BYTES, addr(GDT_OFF)));
        image.put(IDTR_OFF, &pseudo_descriptor(IDT_ENTRIES * 16, addr(IDT_OFF)));
        // Real mode reaches only its own segment: the trampoline carries a GDTR copy.
        image.put(CODE16_OFF + TRAMP_GDTR_OFF, &pseudo_descriptor(GDT_BYTES, addr(GDT_OFF))[..6]);
        // 64-bit TSS: RSP0 at 4; the I/O bitmap offset at 102 points past the end (no bitmap).
        image.put(TSS_OFF + 4, &addr(KSTACK_TOP_OFF).to_le_bytes());
        image.put(TSS_OFF + 102, &(TSS_LEN as u16).to_le_bytes());
        image.put(PML4_OFF, &(addr(PDPT_OFF) | PTE_PWU).to_le_bytes());
        image.put(PDPT_OFF, &(addr(PD_OFF) | PTE_PWU).to_le_bytes());
        for i in 0..512u64 {
            image.put(PD_OFF + i as usize * 8, &((i << 21) | PTE_PS | PTE_PWU).to_le_bytes());
        }
        image
    }

    fn put(&mut self, off: usize, data: &[u8]) {
        self.bytes[off..off + data.len()].copy_from_slice(data);
    }

    /// Copies assembled code into its slot.
    pub fn place(&mut self, what: &'static str, off: usize, max: usize, code: &[u8]) -> Result<(), GuestError> {
        if code.len() > max {
            return Err(GuestError::TooLarge { what, size: code.len(), max });
        }
        self.put(off, code);
        Ok(())
    }

    /// Installs a 64-bit interrupt gate (IF cleared on entry) for `vector`.
    pub fn idt_gate(&mut self, vector: u8, handler: u64, dpl: u8) {
        let mut gate = [0u8; 16];
        gate[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
        gate[2..4].copy_from_slice(&(sel::KCODE64 as u16).to_le_bytes());
        gate[5] = 0x8e | ((dpl & 3) << 5);
        gate[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
        gate[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
        self.put(IDT_OFF + usize::from(vector) * 16, &gate);
    }

    /// The image's bytes (for the tests' disassembly).
    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_elf(self, entry: u64, pvh_entry: Option<u32>) -> Vec<u8> {
        elf64_image(LOAD_ADDR, &self.bytes, entry, pvh_entry)
    }
}

/// `lgdt`/`lidt` operand: 16-bit limit, then the base (8 bytes; 32-bit and
/// 16-bit code read only the first 4).
fn pseudo_descriptor(size: usize, base: u64) -> [u8; 10] {
    let mut d = [0u8; 10];
    d[0..2].copy_from_slice(&((size - 1) as u16).to_le_bytes());
    d[2..10].copy_from_slice(&base.to_le_bytes());
    d
}

/// Available 64-bit TSS descriptor (type 9, present), 16 bytes.
fn tss_descriptor(base: u64) -> [u8; 16] {
    let limit = (TSS_LEN - 1) as u64;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&low.to_le_bytes());
    d[8..12].copy_from_slice(&((base >> 32) as u32).to_le_bytes());
    d
}

/// Assembles `a` for `ip`, keeping label addresses available.
pub(super) fn assemble(a: &mut CodeAssembler, ip: u64) -> Result<CodeAssemblerResult, GuestError> {
    Ok(a.assemble_options(ip, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?)
}

/// A range of code in the image, for the tests' instruction audit.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(test), allow(dead_code))]
pub(super) struct CodeRange {
    pub ip: u64,
    pub len: usize,
    pub bitness: u32,
    /// Offset of the first byte in the image.
    pub off: usize,
}

/// A built guest before ELF packaging.
pub(super) struct Built {
    pub image: Image,
    pub entry: u64,
    pub pvh_entry: Option<u32>,
    /// Where the code is, for the tests' instruction audit.
    #[cfg_attr(not(test), allow(dead_code))]
    pub code: Vec<CodeRange>,
}

impl Built {
    /// A guest whose only code is the 64-bit main slot, entered at `entry`.
    pub fn main_only(main: &CodeAssemblerResult, data_start: u64, entry: u64) -> Result<Self, GuestError> {
        let mut image = Image::new();
        image.place("64-bit code", MAIN_OFF, MAIN_MAX, &main.inner.code_buffer)?;
        Ok(Built { image, entry, pvh_entry: None, code: vec![main_range(data_start)] })
    }
}

/// The 64-bit code range: from the load address to the runtime's data.
pub(super) fn main_range(data_start: u64) -> CodeRange {
    CodeRange { ip: LOAD_ADDR, len: (data_start - LOAD_ADDR) as usize, bitness: 64, off: MAIN_OFF }
}
