//! `apic-id`: the BSP wakes the APs with INIT-SIPI-SIPI and each CPU reports
//! its initial APIC ID.
//!
//! The APs start in real mode at `TRAMPOLINE_ADDR` (the BSP copies the
//! 16-bit trampoline there), switch to protected mode with the image's GDT,
//! then to long mode with the BSP's page tables, and join the 64-bit code.
//! How many CPUs to wait for comes from the ACPI MADT; the wait is bounded by
//! RTC seconds (and an iteration cap), so it ends promptly whether the code
//! runs natively or under an instruction emulator.
//!
//! Real-mode and 32-bit AP code cannot run on a PVM host; there the BSP
//! reports only itself after the timeout.

use iced_x86::code_asm::{CodeAssembler, CodeLabel};
use iced_x86::{Code, Instruction};

use super::image::{
    addr, assemble, main_range, sel, Built, CodeRange, Image, AP_STACKS_OFF, AP_STACK_SIZE, CODE16_MAX, CODE16_OFF,
    CODE16_SLOT, CODE32_MAX, CODE32_OFF, LOAD_ADDR, MAIN_MAX, MAIN_OFF, MAX_APS, TRAMP_GDTR_OFF, VARS_OFF,
};
use super::rt::Rt;
use super::simple::prologue;
use super::{GuestError, APIC_PREFIX, BENCH_PORT};
use crate::layout::{pio, LAPIC_ADDR};

/// Where the APs start: SIPI vector 0x10 means CS base 0x10000. Free in the
/// memory map (below the command line at 0x20000).
pub const TRAMPOLINE_ADDR: u64 = 0x1_0000;
const SIPI_VECTOR: u32 = (TRAMPOLINE_ADDR >> 12) as u32;
// A SIPI page below 1 MiB, and the copied slot clear of the command line.
const _: () = assert!(TRAMPOLINE_ADDR.is_multiple_of(0x1000) && TRAMPOLINE_ADDR < 0x10_0000);
const _: () = assert!(TRAMPOLINE_ADDR + CODE16_SLOT as u64 <= crate::layout::CMDLINE_START);

// Shared variables.
const AP_COUNT: u64 = addr(VARS_OFF);
const PRINT_LOCK: u64 = addr(VARS_OFF + 8);
const AP_SLOT: u64 = addr(VARS_OFF + 0x10);
const AP_CR3: u64 = addr(VARS_OFF + 0x18);
const AP_EFER: u64 = addr(VARS_OFF + 0x20);

// Local APIC registers and ICR values: destination shorthand "all excluding
// self", level assert, delivery mode INIT (5) or start-up (6).
const LAPIC_SVR: u32 = 0xf0;
const LAPIC_ICR_LOW: u32 = 0x300;
const LAPIC_ICR_HIGH: u32 = 0x310;
const ICR_INIT_ALL_BUT_SELF: u32 = 0x000c_4500;
const ICR_SIPI_ALL_BUT_SELF: u32 = 0x000c_4600;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;

const MSR_EFER: u32 = 0xc000_0080;
const EFER_LME: u32 = 1 << 8;
const EFER_LMA: u32 = 1 << 10;
const CR4_PAE: u32 = 1 << 5;
/// PG | NE | ET | PE: caching enabled (CD/NW clear), unlike the reset value.
const CR0_LONG: u32 = 0x8000_0031;
/// boot_params.acpi_rsdp_addr.
const BOOT_PARAMS_RSDP: i32 = 0x70;

/// The wait for APs: spins of 2^16 polls, up to `WAIT_ROUNDS` of them, ending
/// early after `WAIT_RTC_TICKS` changes of the RTC seconds (2-3 s).
const WAIT_SPINS: u32 = 1 << 16;
const WAIT_ROUNDS: u32 = 1 << 12;
const WAIT_RTC_TICKS: u32 = 3;

pub(super) fn apic_id() -> Result<Built, GuestError> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64)?;
    let mut rt = Rt::new(&mut a);
    let mut ap64 = a.create_label();
    let mut lock_acquire = a.create_label();
    let mut lock_release = a.create_label();
    let mut count_cpus = a.create_label();

    // --- BSP ---
    prologue(&mut a)?;
    a.mov(r15, rsi)?;
    for var in [AP_COUNT, PRINT_LOCK, AP_SLOT] {
        a.mov(qword_ptr(var), 0)?;
    }
    // The APs reuse the BSP's paging; LMA is read-only, so drop it.
    a.mov(rax, cr3)?;
    a.mov(dword_ptr(AP_CR3), eax)?;
    a.mov(ecx, MSR_EFER)?;
    a.rdmsr()?;
    a.and(eax, !EFER_LMA as i32)?;
    a.or(eax, EFER_LME as i32)?;
    a.mov(dword_ptr(AP_EFER), eax)?;

    report_apic_id(&mut a, &mut rt, "bsp ")?;
    a.mov(rdi, qword_ptr(r15 + BOOT_PARAMS_RSDP))?;
    a.call(count_cpus)?;
    a.mov(r14d, eax)?;
    rt.print_dec_line(&mut a, &format!("{APIC_PREFIX}madt-cpus "))?;

    // Copy the trampoline below 1 MiB, 8 bytes at a time (no string instructions).
    let mut copy = a.create_label();
    a.mov(rsi, addr(CODE16_OFF))?;
    a.mov(edi, TRAMPOLINE_ADDR as u32)?;
    a.mov(ecx, (CODE16_SLOT / 8) as u32)?;
    a.set_label(&mut copy)?;
    a.mov(rax, qword_ptr(rsi))?;
    a.mov(qword_ptr(rdi), rax)?;
    a.add(rsi, 8)?;
    a.add(rdi, 8)?;
    a.dec(ecx)?;
    a.jnz(copy)?;

    // INIT, then two SIPIs, to every other CPU.
    a.mov(edi, LAPIC_ADDR as u32)?;
    a.mov(eax, dword_ptr(rdi + LAPIC_SVR))?;
    a.or(eax, 0x100)?;
    a.mov(dword_ptr(rdi + LAPIC_SVR), eax)?;
    a.mov(dword_ptr(rdi + LAPIC_ICR_HIGH), 0)?;
    for (icr, delay) in [
        (ICR_INIT_ALL_BUT_SELF, 1 << 16),
        (ICR_SIPI_ALL_BUT_SELF | SIPI_VECTOR, 1 << 12),
        (ICR_SIPI_ALL_BUT_SELF | SIPI_VECTOR, 1 << 12),
    ] {
        send_ipi(&mut a, icr, delay)?;
    }

    // Wait until the MADT's count has checked in (any number if unknown).
    let (mut outer, mut inner, mut same, mut done) =
        (a.create_label(), a.create_label(), a.create_label(), a.create_label());
    let mut unknown = a.create_label();
    a.mov(r13d, u32::MAX)?;
    a.test(r14d, r14d)?;
    a.jz(unknown)?;
    a.lea(r13d, dword_ptr(r14 - 1))?;
    a.set_label(&mut unknown)?;
    a.xor(r12d, r12d)?;
    read_rtc_seconds(&mut a)?;
    a.mov(r11d, eax)?;
    a.mov(r10d, WAIT_ROUNDS)?;
    a.set_label(&mut outer)?;
    a.mov(ecx, WAIT_SPINS)?;
    a.set_label(&mut inner)?;
    a.mov(eax, dword_ptr(AP_COUNT))?;
    a.cmp(eax, r13d)?;
    a.jae(done)?;
    a.dec(ecx)?;
    a.jnz(inner)?;
    read_rtc_seconds(&mut a)?;
    a.cmp(eax, r11d)?;
    a.je(same)?;
    a.mov(r11d, eax)?;
    a.inc(r12d)?;
    a.cmp(r12d, WAIT_RTC_TICKS)?;
    a.jae(done)?;
    a.set_label(&mut same)?;
    a.dec(r10d)?;
    a.jnz(outer)?;
    a.set_label(&mut done)?;

    a.call(lock_acquire)?;
    a.mov(eax, dword_ptr(AP_COUNT))?;
    a.inc(eax)?;
    rt.print_dec_line(&mut a, &format!("{APIC_PREFIX}cpus "))?;
    a.call(lock_release)?;
    a.jmp(rt.poweroff)?;

    // --- AP, arriving from the 32-bit step in long mode ---
    let (mut has_stack, mut park) = (a.create_label(), a.create_label());
    a.set_label(&mut ap64)?;
    a.mov(eax, 1)?;
    a.lock().xadd(dword_ptr(AP_SLOT), eax)?;
    a.cmp(eax, MAX_APS as u32)?;
    a.jb(has_stack)?;
    a.lock().inc(dword_ptr(AP_COUNT))?;
    a.jmp(park)?;
    a.set_label(&mut has_stack)?;
    a.inc(eax)?;
    a.imul_3(eax, eax, AP_STACK_SIZE as i32)?;
    a.add(eax, addr(AP_STACKS_OFF) as i32)?;
    a.mov(esp, eax)?;
    a.call(lock_acquire)?;
    report_apic_id(&mut a, &mut rt, "ap ")?;
    a.call(lock_release)?;
    // Counted only after printing, so the BSP's last line comes last.
    a.lock().inc(dword_ptr(AP_COUNT))?;
    a.set_label(&mut park)?;
    a.jmp(rt.halt)?;

    // Spinlock serialising serial output; `xchg` with memory is atomic.
    let mut spin = a.create_label();
    a.set_label(&mut lock_acquire)?;
    a.push(rax)?;
    a.set_label(&mut spin)?;
    a.mov(eax, 1)?;
    a.xchg(dword_ptr(PRINT_LOCK), eax)?;
    a.test(eax, eax)?;
    a.jnz(spin)?;
    a.pop(rax)?;
    a.ret()?;
    a.set_label(&mut lock_release)?;
    a.mov(dword_ptr(PRINT_LOCK), 0)?;
    a.ret()?;

    emit_count_cpus(&mut a, &mut count_cpus)?;
    let data_start = rt.emit(&mut a)?;
    let main = assemble(&mut a, LOAD_ADDR)?;

    let code32 = ap_protected_mode(main.label_ip(&ap64)?)?;
    let code16 = ap_trampoline()?;
    let mut image = Image::new();
    image.place("64-bit code", MAIN_OFF, MAIN_MAX, &main.inner.code_buffer)?;
    image.place("32-bit AP code", CODE32_OFF, CODE32_MAX, &code32)?;
    image.place("AP trampoline", CODE16_OFF, CODE16_MAX, &code16)?;
    Ok(Built {
        image,
        entry: LOAD_ADDR,
        pvh_entry: None,
        code: vec![
            main_range(main.label_ip(&data_start)?),
            CodeRange { ip: addr(CODE32_OFF), len: code32.len(), bitness: 32, off: CODE32_OFF },
            CodeRange { ip: 0, len: code16.len(), bitness: 16, off: CODE16_OFF },
        ],
    })
}

/// Prints `rxvmm-apic: <who><id>` and writes the ID to the bench port.
fn report_apic_id(a: &mut CodeAssembler, rt: &mut Rt, who: &str) -> Result<(), GuestError> {
    use iced_x86::code_asm::*;
    a.mov(eax, 1)?;
    a.cpuid()?;
    a.shr(ebx, 24)?;
    a.mov(eax, ebx)?;
    a.mov(edx, u32::from(BENCH_PORT))?;
    a.out(dx, al)?;
    rt.print_dec_line(a, &format!("{APIC_PREFIX}{who}"))?;
    Ok(())
}

/// Writes the ICR (RDI = LAPIC base), waits (bounded) for delivery, then
/// spins `delay` iterations.
fn send_ipi(a: &mut CodeAssembler, icr: u32, delay: u32) -> Result<(), GuestError> {
    use iced_x86::code_asm::*;
    let (mut pending, mut sent, mut wait) = (a.create_label(), a.create_label(), a.create_label());
    a.mov(dword_ptr(rdi + LAPIC_ICR_LOW), icr)?;
    a.mov(ecx, 1u32 << 16)?;
    a.set_label(&mut pending)?;
    a.test(dword_ptr(rdi + LAPIC_ICR_LOW), ICR_DELIVERY_PENDING)?;
    a.jz(sent)?;
    a.dec(ecx)?;
    a.jnz(pending)?;
    a.set_label(&mut sent)?;
    a.mov(ecx, delay)?;
    a.set_label(&mut wait)?;
    a.dec(ecx)?;
    a.jnz(wait)?;
    Ok(())
}

/// EAX = CMOS RTC seconds register (raw, BCD or binary: only changes matter).
fn read_rtc_seconds(a: &mut CodeAssembler) -> Result<(), GuestError> {
    use iced_x86::code_asm::*;
    a.xor(eax, eax)?;
    a.out(pio::RTC as u32, al)?;
    a.in_(al, (pio::RTC + 1) as u32)?;
    Ok(())
}

/// `count_cpus`: RDI = RSDP address (or 0); returns in EAX the number of
/// enabled Processor Local APIC / x2APIC entries of the MADT, 0 if not found.
/// Clobbers RCX, RDX, RSI, RDI, R8-R11.
fn emit_count_cpus(a: &mut CodeAssembler, entry: &mut CodeLabel) -> Result<(), GuestError> {
    use iced_x86::code_asm::*;
    let mut done = a.create_label();
    let (mut use_rsdt, mut have_sdt, mut next_table, mut narrow, mut got) =
        (a.create_label(), a.create_label(), a.create_label(), a.create_label(), a.create_label());
    let (mut next_entry, mut not_lapic, mut advance) = (a.create_label(), a.create_label(), a.create_label());

    a.set_label(entry)?;
    a.xor(r8d, r8d)?;
    a.test(rdi, rdi)?;
    a.jz(done)?;
    a.mov(rax, u64::from_le_bytes(*b"RSD PTR "))?;
    a.cmp(qword_ptr(rdi), rax)?;
    a.jne(done)?;
    // ACPI 2.0+: prefer the XSDT (8-byte entries) over the RSDT (4-byte).
    a.cmp(byte_ptr(rdi + 15), 2)?;
    a.jb(use_rsdt)?;
    a.mov(rsi, qword_ptr(rdi + 0x18))?;
    a.mov(r9d, 8)?;
    a.test(rsi, rsi)?;
    a.jnz(have_sdt)?;
    a.set_label(&mut use_rsdt)?;
    a.mov(esi, dword_ptr(rdi + 0x10))?;
    a.mov(r9d, 4)?;
    a.test(rsi, rsi)?;
    a.jz(done)?;
    a.set_label(&mut have_sdt)?;
    a.mov(r10d, dword_ptr(rsi + 4))?;
    a.add(r10, rsi)?;
    a.lea(r11, qword_ptr(rsi + 36))?;
    a.set_label(&mut next_table)?;
    a.lea(rax, qword_ptr(r11 + r9))?;
    a.cmp(rax, r10)?;
    a.ja(done)?;
    a.cmp(r9d, 8)?;
    a.jne(narrow)?;
    a.mov(rdx, qword_ptr(r11))?;
    a.jmp(got)?;
    a.set_label(&mut narrow)?;
    a.mov(edx, dword_ptr(r11))?;
    a.set_label(&mut got)?;
    a.mov(r11, rax)?;
    a.cmp(dword_ptr(rdx), u32::from_le_bytes(*b"APIC"))?;
    a.jne(next_table)?;

    // MADT: 44-byte header, then (type, length) records.
    a.mov(ecx, dword_ptr(rdx + 4))?;
    a.add(rcx, rdx)?;
    a.lea(rsi, qword_ptr(rdx + 44))?;
    a.set_label(&mut next_entry)?;
    a.lea(rax, qword_ptr(rsi + 2))?;
    a.cmp(rax, rcx)?;
    a.ja(done)?;
    a.movzx(eax, byte_ptr(rsi + 1))?;
    a.cmp(eax, 2)?;
    a.jb(done)?; // malformed length: stop instead of looping
    a.movzx(edx, byte_ptr(rsi))?;
    a.test(edx, edx)?;
    a.jnz(not_lapic)?;
    a.test(byte_ptr(rsi + 4), 1)?; // Processor Local APIC: flags.enabled
    a.jz(advance)?;
    a.inc(r8d)?;
    a.jmp(advance)?;
    a.set_label(&mut not_lapic)?;
    a.cmp(edx, 9)?;
    a.jne(advance)?;
    a.test(byte_ptr(rsi + 8), 1)?; // Processor Local x2APIC: flags.enabled
    a.jz(advance)?;
    a.inc(r8d)?;
    a.set_label(&mut advance)?;
    a.add(rsi, rax)?;
    a.jmp(next_entry)?;

    a.set_label(&mut done)?;
    a.mov(eax, r8d)?;
    a.ret()?;
    Ok(())
}

/// 32-bit step at `CODE32_OFF`: PAE, the BSP's CR3 and EFER, paging on,
/// then a far jump into 64-bit code at `ap64`.
fn ap_protected_mode(ap64: u64) -> Result<Vec<u8>, GuestError> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(32)?;
    a.mov(eax, sel::KDATA)?;
    for seg in [ds, es, ss, fs, gs] {
        a.mov(seg, ax)?;
    }
    a.mov(eax, CR4_PAE)?;
    a.mov(cr4, eax)?;
    a.mov(eax, dword_ptr(AP_CR3))?;
    a.mov(cr3, eax)?;
    a.mov(ecx, MSR_EFER)?;
    a.mov(eax, dword_ptr(AP_EFER))?;
    a.xor(edx, edx)?;
    a.wrmsr()?;
    a.mov(eax, CR0_LONG)?;
    a.mov(cr0, eax)?;
    let ap64 = u32::try_from(ap64).map_err(|_| GuestError::AddressTooHigh(ap64))?;
    a.add_instruction(Instruction::with_far_branch(Code::Jmp_ptr1632, sel::KCODE64 as u16, ap64)?)?;
    Ok(assemble(&mut a, addr(CODE32_OFF))?.inner.code_buffer)
}

/// 16-bit trampoline, run at CS:IP = (TRAMPOLINE_ADDR >> 4):0: load the GDT
/// through the slot's GDTR copy, set CR0.PE and far-jump to the 32-bit step.
fn ap_trampoline() -> Result<Vec<u8>, GuestError> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(16)?;
    a.cli()?;
    a.mov(ax, cs)?;
    a.mov(ds, ax)?;
    a.lgdt(ptr(TRAMP_GDTR_OFF as u64))?;
    a.mov(eax, cr0)?;
    a.or(eax, 1)?;
    a.mov(cr0, eax)?;
    let target = addr(CODE32_OFF);
    let target = u32::try_from(target).map_err(|_| GuestError::AddressTooHigh(target))?;
    a.add_instruction(Instruction::with_far_branch(Code::Jmp_ptr1632, sel::KCODE32 as u16, target)?)?;
    Ok(assemble(&mut a, 0)?.inner.code_buffer)
}
