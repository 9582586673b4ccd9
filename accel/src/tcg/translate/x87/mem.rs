//! Guest-memory access for x87 helpers that move more than 8 bytes
//! (FXSAVE/FXRSTOR, FSAVE/FRSTOR, FSTENV/FLDENV, 80-bit operands).
//!
//! Precision: stores are preceded by a write-permission probe of every page
//! the range touches, so a #PF/#GP is raised before any byte (or any FPU
//! state) changes; loads read the whole range into a buffer before the
//! caller commits anything.

use crate::tcg::context::CpuContext;
use crate::tcg::exception::Result;
use crate::tcg::mmu::{Access, Privilege};
use crate::tcg::state::hflags;

const PAGE: u64 = 0x1000;

/// `addr + off`, wrapped to 32 bits outside 64-bit mode.
pub fn offset(ctx: &CpuContext<'_>, addr: u64, off: usize) -> u64 {
    let a = addr.wrapping_add(off as u64);
    if ctx.state.hflags & hflags::CS64 != 0 {
        a
    } else {
        a & 0xffff_ffff
    }
}

/// Splits `len` bytes into naturally sized accesses (8, 4, 2, 1 bytes):
/// `(offset, size)` pairs.
fn pieces(len: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let left = len - at;
        let size = [8, 4, 2, 1].into_iter().find(|&s| s <= left)?;
        at += size;
        Some((at - size, size))
    })
}

/// Reads `buf.len()` bytes at `addr`.
pub fn read(ctx: &mut CpuContext<'_>, addr: u64, buf: &mut [u8]) -> Result<()> {
    for (at, size) in pieces(buf.len()) {
        let a = offset(ctx, addr, at);
        let v = ctx.mem.read(ctx.state, a, size, Access::Read, Privilege::Current)?;
        buf[at..at + size].copy_from_slice(&v.to_le_bytes()[..size]);
    }
    Ok(())
}

/// Checks that `len` bytes at `addr` are writable without changing them
/// (a write-intent read of one byte per page; it sets the dirty bits,
/// which the store that follows would set anyway).
pub fn probe_write(ctx: &mut CpuContext<'_>, addr: u64, len: usize) -> Result<()> {
    let mut at = 0usize;
    while at < len {
        let a = offset(ctx, addr, at);
        ctx.mem.read(ctx.state, a, 1, Access::Write, Privilege::Current)?;
        at += (PAGE - (a & (PAGE - 1))) as usize;
    }
    Ok(())
}

/// Writes `bytes` at `addr` (after [`probe_write`], so it does not fault
/// part-way on ordinary RAM).
pub fn write(ctx: &mut CpuContext<'_>, addr: u64, bytes: &[u8]) -> Result<()> {
    for (at, size) in pieces(bytes.len()) {
        let a = offset(ctx, addr, at);
        let mut v = [0u8; 8];
        v[..size].copy_from_slice(&bytes[at..at + size]);
        ctx.mem.write(ctx.state, a, size, u64::from_le_bytes(v), Privilege::Current)?;
    }
    Ok(())
}
