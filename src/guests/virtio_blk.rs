//! `virtio-blk`: a guest driver for the first virtio-mmio device (expected
//! to be a `--disk`), by polling. It does Linux's handshake, sets up one
//! queue, then reads sector 0, writes [`VIRTIO_BLK_PATTERN`] into sector 1
//! and flushes, printing each status and what it read, then powers off.
//! Proves the whole path without Linux: MMIO transport, queue notify
//! (ioeventfd or bus), the event loop, the device, the used ring and
//! InterruptStatus.

use iced_x86::code_asm::*;

use super::rt::Rt;
use super::{GuestError, VIRTIO_BLK_PATTERN, VIRTIO_BLK_PREFIX};
use crate::layout::VIRTIO_MMIO_START;

/// Scratch RAM above the image (it ends below 2 MiB + 0x20000).
const RINGS: u64 = 0x30_0000;
const DESC: i32 = 0;
const AVAIL: i32 = 0x100;
const USED: i32 = 0x200;
const HEADERS: i32 = 0x1000;
const STATUS: i32 = 0x1100;
const READ_BUF: u64 = RINGS + 0x2000;
const WRITE_BUF: u64 = RINGS + 0x3000;
const QUEUE_SIZE: u32 = 8;

const VIRTIO_MAGIC: u32 = 0x7472_6976;
const BLOCK_DEVICE: u32 = 2;
const F_FLUSH: u32 = 1 << 9;
const F_NEXT: u32 = 1;
const F_WRITE: u32 = 2;

/// Writes descriptor `index` (RBX = RINGS).
fn desc(a: &mut CodeAssembler, index: i32, addr: u64, len: u32, flags: u32, next: u32) -> Result<(), IcedError> {
    let at = DESC + 16 * index;
    a.mov(rax, addr)?;
    a.mov(qword_ptr(rbx + at), rax)?;
    a.mov(dword_ptr(rbx + at + 8), len)?;
    a.mov(dword_ptr(rbx + at + 12), flags | (next << 16))
}

/// Makes chain `head` available in slot `slot`, notifies, waits for the used
/// ring to reach `slot + 1` (RDI = device base, RBX = RINGS).
fn submit(a: &mut CodeAssembler, slot: i32, head: u32) -> Result<(), IcedError> {
    a.mov(word_ptr(rbx + AVAIL + 4 + 2 * slot), head)?;
    a.mov(word_ptr(rbx + AVAIL + 2), (slot + 1) as u32)?;
    a.mov(dword_ptr(rdi + 0x50), 0u32)?;
    let mut wait = a.create_label();
    a.set_label(&mut wait)?;
    a.movzx(eax, word_ptr(rbx + USED + 2))?;
    a.cmp(eax, (slot + 1) as u32)?;
    a.jb(wait)
}

/// Prints `<prefix><what> <2 hex digits of the status byte at STATUS+index>`.
fn print_status(a: &mut CodeAssembler, rt: &mut Rt, what: &str, index: i32) -> Result<(), IcedError> {
    rt.print(a, &format!("{VIRTIO_BLK_PREFIX}{what} "))?;
    a.movzx(eax, byte_ptr(rbx + STATUS + index))?;
    a.mov(ecx, 2)?;
    a.call(rt.print_hex)?;
    rt.print(a, "\n")
}

pub(super) fn body(a: &mut CodeAssembler, rt: &mut Rt) -> Result<(), GuestError> {
    let mut fail = a.create_label();
    a.mov(rdi, VIRTIO_MMIO_START)?;
    a.mov(rbx, RINGS)?;
    a.mov(eax, dword_ptr(rdi))?;
    a.cmp(eax, VIRTIO_MAGIC)?;
    a.jne(fail)?;
    a.mov(eax, dword_ptr(rdi + 8))?;
    a.cmp(eax, BLOCK_DEVICE)?;
    a.jne(fail)?;

    // Reset, ACKNOWLEDGE, DRIVER, features (VERSION_1 | FLUSH), FEATURES_OK.
    a.mov(dword_ptr(rdi + 0x70), 0u32)?;
    a.mov(dword_ptr(rdi + 0x70), 1u32)?;
    a.mov(dword_ptr(rdi + 0x70), 3u32)?;
    a.mov(dword_ptr(rdi + 0x24), 1u32)?;
    a.mov(dword_ptr(rdi + 0x20), 1u32)?;
    a.mov(dword_ptr(rdi + 0x24), 0u32)?;
    a.mov(dword_ptr(rdi + 0x20), F_FLUSH)?;
    a.mov(dword_ptr(rdi + 0x70), 0xbu32)?;
    a.mov(eax, dword_ptr(rdi + 0x70))?;
    a.test(eax, 8)?;
    a.jz(fail)?;

    // Queue 0 (fresh guest RAM is zero, so the rings start empty).
    a.mov(dword_ptr(rdi + 0x30), 0u32)?;
    a.mov(dword_ptr(rdi + 0x38), QUEUE_SIZE)?;
    for (reg, off) in [(0x80, DESC), (0x90, AVAIL), (0xa0, USED)] {
        a.mov(dword_ptr(rdi + reg), (RINGS as u32) + off as u32)?;
        a.mov(dword_ptr(rdi + reg + 4), 0u32)?;
    }
    a.mov(dword_ptr(rdi + 0x44), 1u32)?;
    a.mov(dword_ptr(rdi + 0x70), 0xfu32)?;
    a.mov(eax, dword_ptr(rdi + 0x70))?;
    a.test(eax, 0x40)?;
    a.jnz(fail)?;

    // Headers: read sector 0, write sector 1, flush (16 bytes each).
    let headers = RINGS + HEADERS as u64;
    a.mov(dword_ptr(rbx + HEADERS), 0u32)?;
    a.mov(dword_ptr(rbx + HEADERS + 8), 0u32)?;
    a.mov(dword_ptr(rbx + HEADERS + 16), 1u32)?;
    a.mov(dword_ptr(rbx + HEADERS + 24), 1u32)?;
    a.mov(dword_ptr(rbx + HEADERS + 32), 4u32)?;
    a.mov(rax, u64::from_le_bytes(*VIRTIO_BLK_PATTERN))?;
    a.mov(rdx, WRITE_BUF)?;
    a.mov(qword_ptr(rdx), rax)?;
    for i in 0..3 {
        a.mov(byte_ptr(rbx + STATUS + i), 0xffu32)?;
    }
    let status = RINGS + STATUS as u64;

    desc(a, 0, headers, 16, F_NEXT, 1)?;
    desc(a, 1, READ_BUF, 512, F_NEXT | F_WRITE, 2)?;
    desc(a, 2, status, 1, F_WRITE, 0)?;
    submit(a, 0, 0)?;
    print_status(a, rt, "read-status", 0)?;
    rt.print(a, &format!("{VIRTIO_BLK_PREFIX}data "))?;
    a.mov(rdx, READ_BUF)?;
    a.mov(rax, qword_ptr(rdx))?;
    a.call(rt.print_hex64)?;
    rt.print(a, "\n")?;
    rt.print(a, &format!("{VIRTIO_BLK_PREFIX}isr "))?;
    a.mov(eax, dword_ptr(rdi + 0x60))?;
    a.mov(dword_ptr(rdi + 0x64), eax)?;
    a.mov(ecx, 1)?;
    a.call(rt.print_hex)?;
    rt.print(a, "\n")?;

    desc(a, 3, headers + 16, 16, F_NEXT, 4)?;
    desc(a, 4, WRITE_BUF, 512, F_NEXT, 5)?;
    desc(a, 5, status + 1, 1, F_WRITE, 0)?;
    submit(a, 1, 3)?;
    print_status(a, rt, "write-status", 1)?;

    desc(a, 6, headers + 32, 16, F_NEXT, 7)?;
    desc(a, 7, status + 2, 1, F_WRITE, 0)?;
    submit(a, 2, 6)?;
    print_status(a, rt, "flush-status", 2)?;
    rt.print(a, &format!("{VIRTIO_BLK_PREFIX}done\n"))?;
    a.jmp(rt.poweroff)?;

    a.set_label(&mut fail)?;
    rt.print(a, &format!("{VIRTIO_BLK_PREFIX}no virtio-blk device\n"))?;
    a.jmp(rt.poweroff)?;
    Ok(())
}
