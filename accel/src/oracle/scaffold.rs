//! The guest the VM oracle runs cases in: engine-neutral (guest memory, a
//! [`CpuState`] and one port), so that TCG can run it exactly as KVM does.
//!
//! Long mode with 4-level paging: the low 2 MiB identity-mapped for the
//! supervisor (one large page), and the oracle's code, data and stack pages
//! mapped as user pages at their linear addresses (code read-only), with
//! the guard pages not present. A GDT with kernel and user segments, a TSS
//! whose RSP0 is the kernel stack, and an IDT whose 32 gates all lead to
//! one recorder.
//!
//! Per case, the host writes the data and stack pages, the code into a
//! supervisor staging page, and an *image*: the GPRs (RSP aside) followed
//! by an IRET frame to the code at CPL3. The CPL0 loop copies the code into
//! the code page itself (`rep movsq`: a guest store, so an emulator's
//! translated-code tracking sees it, as it would not see a host write),
//! points RSP at the image, pops the GPRs and `iretq`s. Whatever exception
//! ends the case (the `ud2` terminator or a fault) enters a handler that
//! pushes the vector (and a zero error code where the CPU pushes none),
//! saves CR2 for #PF, stores the GPRs in a result block and writes
//! [`DONE_PORT`]; the host reads the vector, error code, RIP, RFLAGS and
//! RSP from the kernel stack. The handler then loops back for the next case.
//!
//! The CPL0 part is about 37 instructions per case: POP, PUSH, `mov` to and
//! from CR2 and memory, OUT and IRETQ. PVM emulates each one (about 1 µs),
//! which is still cheaper than reading the GPRs with two more vCPU ioctls.

use iced_x86::code_asm::{AsmRegister64, CodeAssembler, CodeLabel, IcedError};
use iced_x86::BlockEncoderOptions;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{has_error_code, OracleError, Outcome, TestCase, Trap, UserRegs, CODE, DATA, PAGE, STACK, USER_FLAGS};
use crate::{CpuState, DescriptorTable, Segment};

/// Guest physical layout (all below 2 MiB, identity-mapped for CPL0).
pub mod layout {
    pub const GDT: u64 = 0x1000;
    pub const IDT: u64 = 0x2000;
    pub const TSS: u64 = 0x3000;
    pub const PML4: u64 = 0x4000;
    pub const PDPT: u64 = 0x5000;
    pub const PD: u64 = 0x6000;
    pub const PT: u64 = 0x7000;
    /// The GPRs but RSP (encoding order), then the IRET frame.
    pub const IMAGE: u64 = 0x8000;
    /// How many qwords of code to copy from [`STAGE`].
    pub const COPY_QWORDS: u64 = 0x8800;
    /// The next case's code, copied to the code page by the guest.
    pub const STAGE: u64 = 0xa000;
    /// The GPRs at the exception (RSP's slot unused), then CR2 for #PF.
    pub const RESULT: u64 = 0x9000;
    pub const KERNEL_STACK_TOP: u64 = 0x1_0000;
    pub const SCAFFOLD: u64 = 0x1_0000;
    pub const USER_CODE: u64 = 0x2_0000;
    pub const USER_DATA: u64 = 0x2_2000;
    pub const USER_STACK: u64 = 0x2_4000;
    pub const MEM_SIZE: usize = 2 << 20;
}
use layout::*;

/// The scaffold writes here when a case has ended.
pub const DONE_PORT: u16 = 0xf4;

const KERNEL_CODE: u64 = 0x00af_9b00_0000_ffff;
const KERNEL_DATA: u64 = 0x00cf_9300_0000_ffff;
const USER_DATA_SEG: u64 = 0x00cf_f300_0000_ffff;
const USER_CODE_SEG: u64 = 0x00af_fb00_0000_ffff;
const USER_SS: i32 = 0x18 | 3;
const USER_CS: i32 = 0x20 | 3;
const TSS_SELECTOR: u16 = 0x28;

/// What a handler leaves at the top of the kernel stack: vector, error
/// code, then the CPU's frame (RIP, CS, RFLAGS, RSP, SS).
const RECORD: u64 = KERNEL_STACK_TOP - 7 * 8;
/// Written to the vector slot before each case: no handler pushes it.
const NOT_DONE: u64 = u64::MAX;
const CR2_SLOT: u64 = RESULT + 8 * 17;

/// A built scaffold: its memory and the state to start (or restart) it.
pub struct Scaffold {
    pub memory: GuestMemoryMmap,
    pub state: CpuState,
    /// Bytes of the code page the last case may have used.
    code_len: usize,
}

fn mem_err(e: impl std::fmt::Display) -> OracleError {
    OracleError::Scaffold(format!("guest memory: {e}"))
}

fn write_u64(mem: &GuestMemoryMmap, addr: u64, value: u64) -> Result<(), OracleError> {
    mem.write_obj(value, GuestAddress(addr)).map_err(mem_err)
}

fn tss_descriptor() -> (u64, u64) {
    let low = 0x67
        | ((TSS & 0xffff) << 16)
        | (((TSS >> 16) & 0xff) << 32)
        | (0x8b << 40) // present, busy 64-bit TSS
        | (((TSS >> 24) & 0xff) << 56);
    (low, TSS >> 32)
}

fn gprs() -> [AsmRegister64; 16] {
    use iced_x86::code_asm::registers::gpr64::*;
    [rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15]
}

/// The CPL0 code: returns it and the addresses of the start and the 32
/// exception handlers.
fn code() -> Result<(Vec<u8>, u64, Vec<u64>), IcedError> {
    use iced_x86::code_asm::{al, cr2, edi, esi, qword_ptr, rax, rcx, rsp};
    let mut a = CodeAssembler::new(64)?;
    let mut start = a.create_label();
    let mut next = a.create_label();
    let mut handlers: Vec<CodeLabel> = (0..32).map(|_| a.create_label()).collect();

    a.set_label(&mut start)?;
    // Mask both 8259s: no stray timer interrupt may end a case.
    a.mov(al, 0xffu32)?;
    a.out(0x21u32, al)?;
    a.out(0xa1u32, al)?;
    a.set_label(&mut next)?;
    // DF is the user's after an exception: clear it for the copy.
    a.cld()?;
    a.mov(esi, STAGE as u32)?;
    a.mov(edi, USER_CODE as u32)?;
    a.mov(rcx, qword_ptr(COPY_QWORDS))?;
    a.rep().movsq()?;
    a.mov(rsp, IMAGE)?;
    for (_, r) in gprs().into_iter().enumerate().filter(|(i, _)| *i != 4) {
        a.pop(r)?;
    }
    a.iretq()?;

    let mut record = a.create_label();
    for (v, label) in handlers.iter_mut().enumerate() {
        a.set_label(label)?;
        if !has_error_code(v as u8) {
            a.push(0)?;
        }
        a.push(v as i32)?;
        if v == 14 {
            a.mov(qword_ptr(RESULT + 8 * 16), rax)?;
            a.mov(rax, cr2)?;
            a.mov(qword_ptr(CR2_SLOT), rax)?;
            a.mov(rax, qword_ptr(RESULT + 8 * 16))?;
        }
        a.jmp(record)?;
    }
    a.set_label(&mut record)?;
    for (i, r) in gprs().into_iter().enumerate().filter(|(i, _)| *i != 4) {
        a.mov(qword_ptr(RESULT + 8 * i as u64), r)?;
    }
    a.out(u32::from(DONE_PORT), al)?;
    a.jmp(next)?;

    let r = a.assemble_options(SCAFFOLD, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let start = r.label_ip(&start)?;
    let handlers = handlers.iter().map(|l| r.label_ip(l)).collect::<Result<Vec<u64>, _>>()?;
    Ok((r.inner.code_buffer, start, handlers))
}

/// Builds the scaffold's memory and initial CPU state.
pub fn build() -> Result<Scaffold, OracleError> {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).map_err(mem_err)?;
    let (tss_low, tss_high) = tss_descriptor();
    let gdt = [0, KERNEL_CODE, KERNEL_DATA, USER_DATA_SEG, USER_CODE_SEG, tss_low, tss_high];
    for (i, e) in gdt.iter().enumerate() {
        write_u64(&memory, GDT + 8 * i as u64, *e)?;
    }
    // TSS: RSP0 at offset 4; the I/O map base past the limit (no bitmap).
    write_u64(&memory, TSS + 4, KERNEL_STACK_TOP)?;
    memory.write_obj(104u16, GuestAddress(TSS + 102)).map_err(mem_err)?;

    const P: u64 = 1;
    const RW: u64 = 2;
    const US: u64 = 4;
    const PS: u64 = 0x80;
    write_u64(&memory, PML4, PDPT | P | RW | US)?;
    write_u64(&memory, PDPT, PD | P | RW | US)?;
    write_u64(&memory, PD, P | RW | PS)?;
    write_u64(&memory, PD + 8 * ((CODE >> 21) & 511), PT | P | RW | US)?;
    let pte = |linear: u64| PT + 8 * ((linear >> 12) & 511);
    write_u64(&memory, pte(CODE), USER_CODE | P | US)?;
    write_u64(&memory, pte(DATA), USER_DATA | P | RW | US)?;
    write_u64(&memory, pte(STACK), USER_STACK | P | RW | US)?;

    let (code, start, handlers) = code().map_err(|e| OracleError::Scaffold(format!("assembling the scaffold: {e}")))?;
    memory.write_slice(&code, GuestAddress(SCAFFOLD)).map_err(mem_err)?;
    for (v, h) in handlers.iter().enumerate() {
        // 64-bit interrupt gate: selector 0x08, present, DPL 0, type 0xe.
        let low = (h & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | (((h >> 16) & 0xffff) << 48);
        write_u64(&memory, IDT + 16 * v as u64, low)?;
        write_u64(&memory, IDT + 16 * v as u64 + 8, h >> 32)?;
    }

    let data = Segment::from_gdt_entry(0x10, KERNEL_DATA);
    let mut gprs = [0; 16];
    gprs[4] = KERNEL_STACK_TOP;
    let state = CpuState {
        gprs,
        rip: start,
        rflags: 0x2,
        cs: Segment::from_gdt_entry(0x08, KERNEL_CODE),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: Segment { base: TSS, ..Segment::from_gdt_entry(TSS_SELECTOR, tss_low) },
        ldt: Segment::default(),
        gdt: DescriptorTable { base: GDT, limit: (gdt.len() * 8 - 1) as u16 },
        idt: DescriptorTable { base: IDT, limit: (handlers.len() * 16 - 1) as u16 },
        cr0: 0x8001_0031, // PG | WP | NE | ET | PE
        cr3: PML4,
        cr4: 0x20,   // PAE
        efer: 0x500, // LMA | LME
    };
    Ok(Scaffold { memory, state, code_len: PAGE })
}

impl Scaffold {
    /// Writes `case` for the scaffold to run next.
    pub fn load_case(&mut self, case: &TestCase) -> Result<(), OracleError> {
        load_case(&self.memory, case, self.code_len)?;
        self.code_len = case.code.len();
        Ok(())
    }

    /// The outcome of the case loaded last, or `None` if no handler has run
    /// since [`Scaffold::load_case`].
    pub fn read_result(&self, case: &TestCase) -> Result<Option<Outcome>, OracleError> {
        read_result(&self.memory, case)
    }
}

/// Writes `case`; the code copy also overwrites the `last_len` bytes the
/// previous case's code used (with INT3).
fn load_case(mem: &GuestMemoryMmap, case: &TestCase, last_len: usize) -> Result<(), OracleError> {
    if case.code.len() < 2 || case.code.len() > PAGE || case.data.len() != PAGE || case.stack.len() != PAGE {
        return Err(OracleError::BadCase {
            seed: case.seed,
            what: "code must be 2 to 4096 bytes, data and stack 4096",
        });
    }
    let copy = case.code.len().max(last_len).min(PAGE).div_ceil(8) * 8;
    let mut code = vec![0xccu8; copy];
    code[..case.code.len()].copy_from_slice(&case.code);
    mem.write_slice(&code, GuestAddress(STAGE)).map_err(mem_err)?;
    write_u64(mem, COPY_QWORDS, (copy / 8) as u64)?;
    mem.write_slice(&case.data, GuestAddress(USER_DATA)).map_err(mem_err)?;
    mem.write_slice(&case.stack, GuestAddress(USER_STACK)).map_err(mem_err)?;
    let mut image: Vec<u64> = case.init.gprs.iter().enumerate().filter(|(i, _)| *i != 4).map(|(_, v)| *v).collect();
    image.extend([
        CODE,
        USER_CS as u64,
        // IF stays clear at CPL3: nothing may interrupt a case.
        (case.init.rflags & USER_FLAGS) | 0x2,
        case.init.gprs[4],
        USER_SS as u64,
    ]);
    let bytes: Vec<u8> = image.iter().flat_map(|v| v.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(IMAGE)).map_err(mem_err)?;
    write_u64(mem, RECORD, NOT_DONE)
}

fn read_result(mem: &GuestMemoryMmap, case: &TestCase) -> Result<Option<Outcome>, OracleError> {
    let mut raw = [0u8; 8 * 7];
    mem.read_slice(&mut raw, GuestAddress(RECORD)).map_err(mem_err)?;
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    let (vector, error_code, rip, cs, rflags, rsp) = (word(0), word(1), word(2), word(3), word(4), word(5));
    if vector == NOT_DONE {
        return Ok(None);
    }
    if cs != USER_CS as u64 {
        return Err(OracleError::Scaffold(format!(
            "seed {:#x}: exception {vector} at CPL0 (CS {cs:#x}, RIP {rip:#x})",
            case.seed
        )));
    }
    let mut block = [0u8; 8 * 18];
    mem.read_slice(&mut block, GuestAddress(RESULT)).map_err(mem_err)?;
    let result = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&block[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    let mut regs = UserRegs { gprs: [0; 16], rflags };
    for (i, g) in regs.gprs.iter_mut().enumerate() {
        *g = if i == 4 { rsp } else { result(i) };
    }
    let trap = Trap { vector: u8::try_from(vector).unwrap_or(u8::MAX), error_code, cr2: result(17), rip };
    let mut data = vec![0; PAGE];
    let mut stack = vec![0; PAGE];
    mem.read_slice(&mut data, GuestAddress(USER_DATA)).map_err(mem_err)?;
    mem.read_slice(&mut stack, GuestAddress(USER_STACK)).map_err(mem_err)?;
    Ok(Some(Outcome::from_trap(case, trap, regs, data, stack)))
}
