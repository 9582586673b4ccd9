//! `boot-report`: the loader's test kernel. It prints the CPU state it was
//! entered with and the boot information it was handed, then drops to CPL3,
//! computes [`BOOT_REPORT_USER_RESULT`] natively and returns it via `int 0x80`.
//!
//! Two entries: `e_entry` (Linux 64-bit boot protocol, RSI = boot_params)
//! and the PVH note's 32-bit stub (EBX = hvm_start_info), which captures the
//! same state, then enters long mode on the image's own page tables and GDT.

use iced_x86::code_asm::{CodeAssembler, CodeLabel};
use iced_x86::{Code, Instruction};

use super::image::{
    addr, assemble, main_range, sel, Built, CodeRange, Image, CODE32_MAX, CODE32_OFF, GDTR_ADDR, IDTR_ADDR,
    KSTACK_TOP_OFF, LOAD_ADDR, MAIN_MAX, MAIN_OFF, PML4_ADDR, STATE_OFF, UBUF_LEN, UBUF_OFF, USTACK_TOP_OFF,
};
use super::rt::Rt;
use super::{GuestError, BOOT_REPORT_PREFIX};

/// What the CPL3 code computes: FNV-1a over 4 KiB of xorshift64 output
/// seeded with the sum of i*i for i in 1..=100000 (all mod 2^64).
pub const BOOT_REPORT_USER_RESULT: u64 = user_result();

const SUM_SQUARES_N: u32 = 100_000;
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

const fn user_result() -> u64 {
    let mut x: u64 = 0;
    let mut i: u64 = 1;
    while i <= SUM_SQUARES_N as u64 {
        x = x.wrapping_add(i.wrapping_mul(i));
        i += 1;
    }
    let mut hash = FNV_OFFSET;
    let mut n = 0;
    while n < UBUF_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        hash = (hash ^ (x & 0xff)).wrapping_mul(FNV_PRIME);
        n += 1;
    }
    hash
}

// Entry-state block: one u64 per field.
const S_KIND: u64 = addr(STATE_OFF); // 0 = linux64, 1 = pvh
const S_CR0: u64 = S_KIND + 0x08;
const S_CR3: u64 = S_KIND + 0x10;
const S_CR4: u64 = S_KIND + 0x18;
const S_EFER: u64 = S_KIND + 0x20;
const S_CS: u64 = S_KIND + 0x28;
const S_DS: u64 = S_KIND + 0x30;
const S_SS: u64 = S_KIND + 0x38;
const S_GDT_BASE: u64 = S_KIND + 0x40;
const S_GDT_LIMIT: u64 = S_KIND + 0x48;
const S_BOOTINFO: u64 = S_KIND + 0x50;
/// Raw `sgdt` output (6 or 10 bytes).
const S_GDT_RAW: u64 = S_KIND + 0x60;

const REPORTED: [(&str, u64); 10] = [
    ("cr0", S_CR0),
    ("cr3", S_CR3),
    ("cr4", S_CR4),
    ("efer", S_EFER),
    ("cs", S_CS),
    ("ds", S_DS),
    ("ss", S_SS),
    ("gdt_base", S_GDT_BASE),
    ("gdt_limit", S_GDT_LIMIT),
    ("bootinfo", S_BOOTINFO),
];

const MSR_EFER: u32 = 0xc000_0080;
const EFER_LME: i32 = 1 << 8;
const CR4_PAE: i32 = 1 << 5;
const CR0_PG: u32 = 1 << 31;
/// Upper bound on printed memory-map entries (the zero page holds 128).
const MAX_E820: u32 = 128;
const INT_SYSCALL: u8 = 0x80;
/// `int 0x80` as a little-endian word (CD 80).
const INT80_BYTES: u32 = 0x80cd;
const UD_VECTOR: u8 = 6;
const EXCEPTIONS: u8 = 32;

// boot_params and hvm_start_info offsets.
const BP_RSDP: i32 = 0x70;
const BP_E820_ENTRIES: i32 = 0x1e8;
const BP_E820_TABLE: i32 = 0x2d0;
const BP_E820_ENTRY_SIZE: u32 = 20;
const SI_RSDP: i32 = 0x20;
const SI_MEMMAP: i32 = 0x28;
const SI_MEMMAP_ENTRIES: i32 = 0x30;
const SI_MEMMAP_ENTRY_SIZE: u32 = 24;

/// The same kernel without its PVH note, so the VMM enters it through the
/// Linux 64-bit boot protocol.
pub(super) fn boot_report_linux64() -> Result<Built, GuestError> {
    Ok(Built { pvh_entry: None, ..boot_report()? })
}

pub(super) fn boot_report() -> Result<Built, GuestError> {
    use iced_x86::code_asm::*;
    let p = BOOT_REPORT_PREFIX;
    let mut a = CodeAssembler::new(64)?;
    let mut rt = Rt::new(&mut a);
    let (mut pvh64, mut common, mut is_pvh, mut report) =
        (a.create_label(), a.create_label(), a.create_label(), a.create_label());
    let (mut int80, mut exc_common, mut user) = (a.create_label(), a.create_label(), a.create_label());
    let mut exc_stubs: Vec<CodeLabel> = (0..EXCEPTIONS).map(|_| a.create_label()).collect();

    // Linux 64-bit entry: record the state before changing any of it.
    a.cli()?;
    a.mov(qword_ptr(S_KIND), 0)?;
    for (cr, slot) in [(cr0, S_CR0), (cr3, S_CR3), (cr4, S_CR4)] {
        a.mov(rax, cr)?;
        a.mov(qword_ptr(slot), rax)?;
    }
    a.mov(ecx, MSR_EFER)?;
    a.rdmsr()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(qword_ptr(S_EFER), rax)?;
    for (seg, slot) in [(cs, S_CS), (ds, S_DS), (ss, S_SS)] {
        a.mov(rax, seg)?;
        a.mov(qword_ptr(slot), rax)?;
    }
    a.sgdt(ptr(S_GDT_RAW))?;
    a.movzx(eax, word_ptr(S_GDT_RAW))?;
    a.mov(qword_ptr(S_GDT_LIMIT), rax)?;
    a.mov(rax, qword_ptr(S_GDT_RAW + 2))?;
    a.mov(qword_ptr(S_GDT_BASE), rax)?;
    a.mov(qword_ptr(S_BOOTINFO), rsi)?;
    a.mov(rsp, addr(KSTACK_TOP_OFF))?;
    a.jmp(common)?;

    // PVH, arriving from the 32-bit stub on the image's GDT.
    a.set_label(&mut pvh64)?;
    a.mov(eax, sel::KDATA)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(rsp, addr(KSTACK_TOP_OFF))?;

    // Common report. R12 = memory map, R13 = entries, R14 = entry size.
    a.set_label(&mut common)?;
    a.mov(rbx, qword_ptr(S_BOOTINFO))?;
    a.cmp(qword_ptr(S_KIND), 0)?;
    a.jne(is_pvh)?;
    rt.print(&mut a, &format!("{p}entry=linux64\n"))?;
    a.movzx(r13d, byte_ptr(rbx + BP_E820_ENTRIES))?;
    a.lea(r12, qword_ptr(rbx + BP_E820_TABLE))?;
    a.mov(r14d, BP_E820_ENTRY_SIZE)?;
    a.mov(r15, qword_ptr(rbx + BP_RSDP))?;
    a.jmp(report)?;
    a.set_label(&mut is_pvh)?;
    rt.print(&mut a, &format!("{p}entry=pvh\n"))?;
    a.mov(r12, qword_ptr(rbx + SI_MEMMAP))?;
    a.mov(r13d, dword_ptr(rbx + SI_MEMMAP_ENTRIES))?;
    a.mov(r14d, SI_MEMMAP_ENTRY_SIZE)?;
    a.mov(r15, qword_ptr(rbx + SI_RSDP))?;

    a.set_label(&mut report)?;
    for (name, slot) in REPORTED {
        a.mov(rax, qword_ptr(slot))?;
        rt.print_hex_line(&mut a, &format!("{p}{name}="))?;
    }
    let (mut clamped, mut e820_next, mut e820_done) = (a.create_label(), a.create_label(), a.create_label());
    a.cmp(r13d, MAX_E820)?;
    a.jbe(clamped)?;
    a.mov(r13d, MAX_E820)?;
    a.set_label(&mut clamped)?;
    a.test(r13d, r13d)?;
    a.jz(e820_done)?;
    a.set_label(&mut e820_next)?;
    rt.print(&mut a, &format!("{p}e820: "))?;
    a.mov(rax, qword_ptr(r12))?;
    a.call(rt.print_hex64)?;
    rt.print(&mut a, " ")?;
    a.mov(rax, qword_ptr(r12 + 8))?;
    a.call(rt.print_hex64)?;
    rt.print(&mut a, " ")?;
    a.mov(eax, dword_ptr(r12 + 16))?;
    a.call(rt.print_hex64)?;
    rt.print(&mut a, "\n")?;
    a.add(r12, r14)?;
    a.dec(r13d)?;
    a.jnz(e820_next)?;
    a.set_label(&mut e820_done)?;

    // RSDP address, then its signature as characters (non-printables as '.').
    let (mut no_sig, mut sig_next, mut dot, mut put) =
        (a.create_label(), a.create_label(), a.create_label(), a.create_label());
    a.mov(rax, r15)?;
    rt.print_hex_line(&mut a, &format!("{p}rsdp="))?;
    a.test(r15, r15)?;
    a.jz(no_sig)?;
    rt.print(&mut a, &format!("{p}rsdp_sig="))?;
    a.mov(ecx, 8)?;
    a.set_label(&mut sig_next)?;
    a.mov(al, byte_ptr(r15))?;
    a.cmp(al, 0x20)?;
    a.jb(dot)?;
    a.cmp(al, 0x7e)?;
    a.jbe(put)?;
    a.set_label(&mut dot)?;
    a.mov(al, b'.' as u32)?;
    a.set_label(&mut put)?;
    a.call(rt.print_char)?;
    a.inc(r15)?;
    a.dec(ecx)?;
    a.jnz(sig_next)?;
    rt.print(&mut a, "\n")?;
    a.set_label(&mut no_sig)?;

    // Own GDT (reload CS with a far return), TSS, IDT; then iretq to CPL3.
    let mut reloaded = a.create_label();
    a.lgdt(ptr(GDTR_ADDR))?;
    a.push(sel::KCODE64 as i32)?;
    a.lea(rax, ptr(reloaded))?;
    a.push(rax)?;
    a.retf()?;
    a.set_label(&mut reloaded)?;
    a.mov(eax, sel::KDATA)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(eax, sel::TSS)?;
    a.ltr(ax)?;
    a.lidt(ptr(IDTR_ADDR))?;
    a.push((sel::UDATA | 3) as i32)?;
    a.push(addr(USTACK_TOP_OFF) as i32)?;
    a.push(0x2i32)?; // RFLAGS: reserved bit only, IF=0
    a.push((sel::UCODE64 | 3) as i32)?;
    a.lea(rax, ptr(user))?;
    a.push(rax)?;
    a.iretq()?;

    // int 0x80 (DPL 3 gate): RAX = result; the frame's CS shows the caller's CPL.
    let mut syscall = a.create_label();
    a.set_label(&mut int80)?;
    rt.print(&mut a, &format!("{p}user trap=int80\n"))?;
    a.set_label(&mut syscall)?;
    a.mov(rbx, rax)?;
    a.mov(rax, qword_ptr(rsp + 8))?;
    rt.print_hex_line(&mut a, &format!("{p}user cs="))?;
    a.mov(rax, rbx)?;
    rt.print_hex_line(&mut a, &format!("{p}user result="))?;
    a.jmp(rt.poweroff)?;

    // Exceptions: report vector, error code, RIP and CS, then crash so the
    // VMM sees a failure. Stubs push a 0 where the CPU pushes no error code.
    // PVM hosts raise #UD for `int n` at CPL3 instead of using the gate, so a
    // user #UD on the bytes of `int 0x80` is that call.
    for (vector, stub) in exc_stubs.iter_mut().enumerate() {
        a.set_label(stub)?;
        if vector == usize::from(UD_VECTOR) {
            let mut not_int80 = a.create_label();
            a.test(byte_ptr(rsp + 8), 3)?;
            a.jz(not_int80)?;
            a.mov(rbx, qword_ptr(rsp))?;
            a.cmp(word_ptr(rbx), INT80_BYTES)?;
            a.jne(not_int80)?;
            rt.print(&mut a, &format!("{p}user trap=int80-as-ud\n"))?;
            a.jmp(syscall)?;
            a.set_label(&mut not_int80)?;
        }
        if !has_error_code(vector) {
            a.push(0)?;
        }
        a.mov(ebx, vector as u32)?;
        a.jmp(exc_common)?;
    }
    a.set_label(&mut exc_common)?;
    a.mov(rax, rbx)?;
    rt.print_hex_line(&mut a, &format!("{p}exception="))?;
    for (i, what) in ["error", "rip", "cs"].iter().enumerate() {
        a.mov(rax, qword_ptr(rsp + 8 * i))?;
        rt.print_hex_line(&mut a, &format!("{p}exception {what}="))?;
    }
    a.jmp(rt.crash)?;

    emit_user_code(&mut a, &mut user)?;
    let data_start = rt.emit(&mut a)?;
    let main = assemble(&mut a, LOAD_ADDR)?;

    let code32 = pvh_stub(main.label_ip(&pvh64)?)?;
    let mut image = Image::new();
    image.place("64-bit code", MAIN_OFF, MAIN_MAX, &main.inner.code_buffer)?;
    image.place("PVH stub", CODE32_OFF, CODE32_MAX, &code32)?;
    for (vector, stub) in exc_stubs.iter().enumerate() {
        image.idt_gate(vector as u8, main.label_ip(stub)?, 0);
    }
    image.idt_gate(INT_SYSCALL, main.label_ip(&int80)?, 3);
    let pvh_entry = addr(CODE32_OFF);
    Ok(Built {
        image,
        entry: LOAD_ADDR,
        pvh_entry: Some(u32::try_from(pvh_entry).map_err(|_| GuestError::AddressTooHigh(pvh_entry))?),
        code: vec![
            main_range(main.label_ip(&data_start)?),
            CodeRange { ip: pvh_entry, len: code32.len(), bitness: 32, off: CODE32_OFF },
        ],
    })
}

/// Exceptions for which the CPU pushes an error code (#DF, #TS, #NP, #SS,
/// #GP, #PF, #AC, #CP, #VC, #SX).
fn has_error_code(vector: usize) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The CPL3 computation (see [`user_result`]), ending in `int 0x80`.
fn emit_user_code(a: &mut CodeAssembler, entry: &mut CodeLabel) -> Result<(), GuestError> {
    use iced_x86::code_asm::*;
    let (mut squares, mut fill, mut hash, mut stuck) =
        (a.create_label(), a.create_label(), a.create_label(), a.create_label());
    a.set_label(entry)?;
    a.xor(eax, eax)?;
    a.mov(ecx, 1)?;
    a.set_label(&mut squares)?;
    a.mov(rdx, rcx)?;
    a.imul_2(rdx, rcx)?;
    a.add(rax, rdx)?;
    a.inc(rcx)?;
    a.cmp(rcx, SUM_SQUARES_N as i32)?;
    a.jbe(squares)?;

    a.mov(rdi, addr(UBUF_OFF))?;
    a.mov(ecx, UBUF_LEN as u32)?;
    a.set_label(&mut fill)?;
    for (left, amount) in [(true, 13), (false, 7), (true, 17)] {
        a.mov(rdx, rax)?;
        if left {
            a.shl(rdx, amount)?;
        } else {
            a.shr(rdx, amount)?;
        }
        a.xor(rax, rdx)?;
    }
    a.mov(byte_ptr(rdi), al)?;
    a.inc(rdi)?;
    a.dec(ecx)?;
    a.jnz(fill)?;

    a.mov(rax, FNV_OFFSET)?;
    a.mov(r8, FNV_PRIME)?;
    a.mov(rdi, addr(UBUF_OFF))?;
    a.mov(ecx, UBUF_LEN as u32)?;
    a.set_label(&mut hash)?;
    a.movzx(edx, byte_ptr(rdi))?;
    a.xor(rax, rdx)?;
    a.imul_2(rax, r8)?;
    a.inc(rdi)?;
    a.dec(ecx)?;
    a.jnz(hash)?;
    a.int(u32::from(INT_SYSCALL))?;
    a.set_label(&mut stuck)?;
    a.jmp(stuck)?;
    Ok(())
}

/// The PVH entry (32-bit, paging off, EBX = start_info): record the state,
/// enable PAE paging on the image's identity tables and long mode, then
/// far-jump to `pvh64` through the image's GDT.
fn pvh_stub(pvh64: u64) -> Result<Vec<u8>, GuestError> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(32)?;
    a.cli()?;
    // 32-bit stores: low half, then zero the high half.
    let store = |a: &mut CodeAssembler, slot: u64, value: AsmRegister32| -> Result<(), GuestError> {
        a.mov(dword_ptr(slot), value)?;
        a.mov(dword_ptr(slot + 4), 0)?;
        Ok(())
    };
    a.mov(eax, 1)?;
    store(&mut a, S_KIND, eax)?;
    for (cr, slot) in [(cr0, S_CR0), (cr3, S_CR3), (cr4, S_CR4)] {
        a.mov(eax, cr)?;
        store(&mut a, slot, eax)?;
    }
    a.mov(ecx, MSR_EFER)?;
    a.rdmsr()?;
    a.mov(dword_ptr(S_EFER), eax)?;
    a.mov(dword_ptr(S_EFER + 4), edx)?;
    for (seg, slot) in [(cs, S_CS), (ds, S_DS), (ss, S_SS)] {
        a.xor(eax, eax)?;
        a.mov(ax, seg)?;
        store(&mut a, slot, eax)?;
    }
    a.sgdt(ptr(S_GDT_RAW))?;
    a.movzx(eax, word_ptr(S_GDT_RAW))?;
    store(&mut a, S_GDT_LIMIT, eax)?;
    a.mov(eax, dword_ptr(S_GDT_RAW + 2))?;
    store(&mut a, S_GDT_BASE, eax)?;
    store(&mut a, S_BOOTINFO, ebx)?;

    a.lgdt(ptr(GDTR_ADDR))?;
    a.mov(eax, cr4)?;
    a.or(eax, CR4_PAE)?;
    a.mov(cr4, eax)?;
    a.mov(eax, PML4_ADDR as u32)?;
    a.mov(cr3, eax)?;
    a.mov(ecx, MSR_EFER)?;
    a.rdmsr()?;
    a.or(eax, EFER_LME)?;
    a.wrmsr()?;
    a.mov(eax, cr0)?;
    a.or(eax, CR0_PG as i32)?;
    a.mov(cr0, eax)?;
    let target = u32::try_from(pvh64).map_err(|_| GuestError::AddressTooHigh(pvh64))?;
    a.add_instruction(Instruction::with_far_branch(Code::Jmp_ptr1632, sel::KCODE64 as u16, target)?)?;
    Ok(assemble(&mut a, addr(CODE32_OFF))?.inner.code_buffer)
}
