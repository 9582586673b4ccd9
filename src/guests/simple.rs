//! Single-vCPU guests that each exercise one exit path: serial output, the
//! boot-timer marker, reset, power off, port and MMIO loops, a triple fault
//! and an unmapped-MMIO read.

use iced_x86::code_asm::CodeAssembler;

use super::image::{addr, assemble, Built, KSTACK_TOP_OFF, LOAD_ADDR};
use super::rt::Rt;
use super::{
    GuestError, BENCH_DONE_LINE, BENCH_ITERATIONS, BENCH_MMIO_ADDR, BENCH_PORT, BENCH_START_LINE, BOOT_MARKER,
    HELLO_LINE, POWEROFF_LINE, TRIPLE_FAULT_LINE, UNMAPPED_MMIO_ADDR, UNMAPPED_MMIO_PREFIX,
};
use crate::layout::BOOT_TIMER_ADDR;

/// Interrupts off and a stack inside the image; the VMM's RSP is not relied on.
pub(super) fn prologue(a: &mut CodeAssembler) -> Result<(), GuestError> {
    use iced_x86::code_asm::*;
    a.cli()?;
    a.mov(rsp, addr(KSTACK_TOP_OFF))?;
    Ok(())
}

/// Assembles a guest whose entry is the first instruction of `body`.
fn single(body: impl FnOnce(&mut CodeAssembler, &mut Rt) -> Result<(), GuestError>) -> Result<Built, GuestError> {
    let mut a = CodeAssembler::new(64)?;
    let mut rt = Rt::new(&mut a);
    prologue(&mut a)?;
    body(&mut a, &mut rt)?;
    let data_start = rt.emit(&mut a)?;
    let main = assemble(&mut a, LOAD_ADDR)?;
    Built::main_only(&main, main.label_ip(&data_start)?, LOAD_ADDR)
}

pub(super) fn hello() -> Result<Built, GuestError> {
    single(|a, rt| {
        use iced_x86::code_asm::*;
        rt.print(a, HELLO_LINE)?;
        a.mov(rax, BOOT_TIMER_ADDR)?;
        a.mov(byte_ptr(rax), u32::from(BOOT_MARKER))?;
        a.jmp(rt.reset)?;
        Ok(())
    })
}

pub(super) fn poweroff() -> Result<Built, GuestError> {
    single(|a, rt| {
        rt.print(a, POWEROFF_LINE)?;
        a.jmp(rt.poweroff)?;
        Ok(())
    })
}

pub(super) fn pio_loop() -> Result<Built, GuestError> {
    single(|a, rt| {
        use iced_x86::code_asm::*;
        rt.print(a, BENCH_START_LINE)?;
        let mut again = a.create_label();
        a.mov(ecx, BENCH_ITERATIONS)?;
        a.mov(edx, u32::from(BENCH_PORT))?;
        a.set_label(&mut again)?;
        a.mov(eax, ecx)?;
        a.out(dx, al)?;
        a.dec(ecx)?;
        a.jnz(again)?;
        rt.print(a, BENCH_DONE_LINE)?;
        a.jmp(rt.reset)?;
        Ok(())
    })
}

pub(super) fn mmio_loop() -> Result<Built, GuestError> {
    single(|a, rt| {
        use iced_x86::code_asm::*;
        rt.print(a, BENCH_START_LINE)?;
        let mut again = a.create_label();
        a.mov(ecx, BENCH_ITERATIONS)?;
        a.mov(rdi, BENCH_MMIO_ADDR)?;
        a.set_label(&mut again)?;
        a.mov(dword_ptr(rdi), ecx)?;
        a.dec(ecx)?;
        a.jnz(again)?;
        rt.print(a, BENCH_DONE_LINE)?;
        a.jmp(rt.reset)?;
        Ok(())
    })
}

pub(super) fn virtio_blk() -> Result<Built, GuestError> {
    single(super::virtio_blk::body)
}

pub(super) fn triple_fault() -> Result<Built, GuestError> {
    single(|a, rt| {
        rt.print(a, TRIPLE_FAULT_LINE)?;
        a.jmp(rt.crash)?;
        Ok(())
    })
}

/// Writes first, then reads: the read still returning all-ones shows the
/// write was dropped.
pub(super) fn unmapped_mmio() -> Result<Built, GuestError> {
    single(|a, rt| {
        use iced_x86::code_asm::*;
        a.mov(rdi, UNMAPPED_MMIO_ADDR)?;
        a.mov(dword_ptr(rdi), 0x1234_5678u32)?;
        a.mov(eax, dword_ptr(rdi))?;
        rt.print(a, UNMAPPED_MMIO_PREFIX)?;
        a.mov(ecx, 8)?;
        a.call(rt.print_hex)?;
        rt.print(a, "\n")?;
        a.jmp(rt.poweroff)?;
        Ok(())
    })
}
