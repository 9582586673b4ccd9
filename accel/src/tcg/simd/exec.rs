//! What every SSE helper does around its operation: the CR0/CR4 checks,
//! fetching the source (XMM, memory with the alignment rule, or a value),
//! MXCSR flag accumulation with unmasked-exception delivery, and writing
//! the destination last.
//!
//! Fault order follows the SDM: #UD / #NM first, then #GP for a misaligned
//! 16-byte operand, then #PF from the access, then SIMD exceptions.

use super::mxcsr::{FLAGS, MASK_SHIFT, PRE};
use super::{Operands, Source};
use crate::tcg::context::CpuContext;
use crate::tcg::exception::{vector, Exception};
use crate::tcg::flags::set_rflags_arith;
use crate::tcg::mmu::{Access, Privilege};
use crate::tcg::state::{ctrl, hflags, X86State};

pub type Result<T> = std::result::Result<T, Exception>;

/// `dst = op(dst, src, imm, mxcsr)`, returning the new value and the MXCSR
/// exception flags raised.
pub type XmmOp = fn(u128, u128, u8, u32) -> (u128, u32);
/// `value = op(src, imm, mxcsr)` for a GPR or memory destination.
pub type ValueOp = fn(u128, u8, u32) -> (u64, u32);
/// `eflags = op(dst, src, mxcsr)` (arithmetic flags only).
pub type FlagsOp = fn(u128, u128, u32) -> (u64, u32);

fn arg(args: &[u64], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

/// #UD when CR0.EM is set or CR4.OSFXSR clear, then #NM when CR0.TS is set
/// (the SDM's rules for SSE/SSE2 instructions under CR0.EM/TS and CR4.OSFXSR).
pub fn check_sse(state: &X86State) -> Result<()> {
    if state.cr0 & ctrl::CR0_EM != 0 || state.cr4 & ctrl::CR4_OSFXSR == 0 {
        return Err(Exception::ud());
    }
    if state.cr0 & ctrl::CR0_TS != 0 {
        return Err(Exception::fault(vector::NM));
    }
    Ok(())
}

/// Accumulates `flags` into MXCSR. If one of them is unmasked the operation
/// must not complete: returns #XM (CR4.OSXMMEXCPT set) or #UD, with the
/// flags the hardware reports — only the pre-computation ones (IE, DE, ZE)
/// when one of those is unmasked, since the operation is then not
/// performed. (Operations that can overflow or underflow already report
/// the unmasked OE/UE/PE rules through [`super::post`].)
pub fn settle(state: &mut X86State, flags: u32) -> Result<()> {
    let flags = flags & FLAGS;
    let mx = state.fpu.mxcsr;
    let masked = (mx >> MASK_SHIFT) & FLAGS;
    let unmasked = flags & !masked;
    if unmasked == 0 {
        state.fpu.mxcsr = mx | flags;
        return Ok(());
    }
    let reported = if unmasked & PRE != 0 { flags & PRE } else { flags };
    state.fpu.mxcsr = mx | reported;
    if state.cr4 & ctrl::CR4_OSXMMEXCPT != 0 {
        Err(Exception::fault(vector::XM))
    } else {
        Err(Exception::ud())
    }
}

/// `addr + off` as the CPU forms the address of the next bytes of one
/// operand: wrapping at 4 GiB outside 64-bit code.
fn advance(state: &X86State, addr: u64, off: u64) -> u64 {
    let a = addr.wrapping_add(off);
    if state.hflags & hflags::CS64 != 0 {
        a
    } else {
        a & 0xffff_ffff
    }
}

fn check_alignment(addr: u64, aligned: bool) -> Result<()> {
    if aligned && addr & 15 != 0 {
        return Err(Exception::gp0());
    }
    Ok(())
}

/// Reads a `size`-byte (1, 2, 4, 8 or 16) memory operand, zero-extended.
pub fn load(ctx: &mut CpuContext<'_>, addr: u64, size: usize, aligned: bool) -> Result<u128> {
    check_alignment(addr, aligned)?;
    let (access, privilege) = (Access::Read, Privilege::Current);
    if size <= 8 {
        return ctx.mem.read(ctx.state, addr, size.max(1), access, privilege).map(u128::from);
    }
    let lo = ctx.mem.read(ctx.state, addr, 8, access, privilege)?;
    let hi_addr = advance(ctx.state, addr, 8);
    let hi = ctx.mem.read(ctx.state, hi_addr, 8, access, privilege)?;
    Ok(u128::from(lo) | (u128::from(hi) << 64))
}

/// Writes the low `size` (1..=8 or 16) bytes of `v`. A 16-byte store that
/// crosses a page first writes an 8-byte window straddling the boundary
/// (the MMU translates both pages of it before writing a byte), so a #PF
/// on either page leaves memory untouched; then the two halves.
/// Consequence: a page-crossing store into MMIO writes some bytes twice.
pub fn store(ctx: &mut CpuContext<'_>, addr: u64, size: usize, v: u128, aligned: bool) -> Result<()> {
    check_alignment(addr, aligned)?;
    let p = Privilege::Current;
    if size <= 8 {
        return ctx.mem.write(ctx.state, addr, size.max(1), v as u64, p);
    }
    let in_page = addr & 0xfff;
    if in_page > 0x1000 - 16 {
        // Window [s, s + 8) of the operand contains the crossing point k.
        let k = 0x1000 - in_page;
        let s = k.saturating_sub(4).min(8);
        let at = advance(ctx.state, addr, s);
        ctx.mem.write(ctx.state, at, 8, (v >> (8 * s)) as u64, p)?;
    }
    ctx.mem.write(ctx.state, addr, 8, v as u64, p)?;
    let hi_addr = advance(ctx.state, addr, 8);
    ctx.mem.write(ctx.state, hi_addr, 8, (v >> 64) as u64, p)
}

/// The source operand's value.
fn source(ctx: &mut CpuContext<'_>, ops: Operands, x: u64) -> Result<u128> {
    match ops.source() {
        Source::Xmm(i) => Ok(ctx.state.fpu.xmm[i]),
        Source::Mem { size, aligned } => load(ctx, x, size, aligned),
        Source::Value => Ok(u128::from(x)),
    }
}

/// `args`: [`Operands`], address or value. XMM destination.
pub fn run_xmm(ctx: &mut CpuContext<'_>, args: &[u64], op: XmmOp) -> Result<u64> {
    let ops = Operands(arg(args, 0));
    check_sse(ctx.state)?;
    let b = source(ctx, ops, arg(args, 1))?;
    let dst = ops.dst();
    let (r, flags) = op(ctx.state.fpu.xmm[dst], b, ops.imm8(), ctx.state.fpu.mxcsr);
    settle(ctx.state, flags)?;
    ctx.state.fpu.xmm[dst] = r;
    Ok(0)
}

/// `args`: [`Operands`], address. Returns the value for the frontend to
/// write to a GPR.
pub fn run_value(ctx: &mut CpuContext<'_>, args: &[u64], op: ValueOp) -> Result<u64> {
    let ops = Operands(arg(args, 0));
    check_sse(ctx.state)?;
    let b = source(ctx, ops, arg(args, 1))?;
    let (v, flags) = op(b, ops.imm8(), ctx.state.fpu.mxcsr);
    settle(ctx.state, flags)?;
    Ok(v)
}

/// `args`: [`Operands`], address. Sets ZF/PF/CF (the rest of the six
/// arithmetic flags cleared) and makes them authoritative.
pub fn run_flags(ctx: &mut CpuContext<'_>, args: &[u64], op: FlagsOp) -> Result<u64> {
    let ops = Operands(arg(args, 0));
    check_sse(ctx.state)?;
    let b = source(ctx, ops, arg(args, 1))?;
    let (eflags, flags) = op(ctx.state.fpu.xmm[ops.dst()], b, ctx.state.fpu.mxcsr);
    settle(ctx.state, flags)?;
    set_rflags_arith(ctx.state, eflags);
    Ok(0)
}

/// `args`: [`Operands`] (dst = the XMM stored; memory size and alignment;
/// imm = byte offset of the stored part), address.
pub fn run_store(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64> {
    let ops = Operands(arg(args, 0));
    check_sse(ctx.state)?;
    let Source::Mem { size, aligned } = ops.source() else { return Err(Exception::ud()) };
    let v = ctx.state.fpu.xmm[ops.dst()] >> (8 * u32::from(ops.imm8() & 15));
    store(ctx, arg(args, 1), size, v, aligned)?;
    Ok(0)
}

/// MASKMOVDQU: `args`: [`Operands`] (dst = data, source XMM = mask), the
/// linear address of DS:rDI. Writes the bytes whose mask byte has bit 7
/// set, one at a time (a #PF part-way leaves earlier bytes written).
pub fn run_maskmov(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64> {
    let ops = Operands(arg(args, 0));
    check_sse(ctx.state)?;
    let Source::Xmm(m) = ops.source() else { return Err(Exception::ud()) };
    let (data, mask) = (ctx.state.fpu.xmm[ops.dst()].to_le_bytes(), ctx.state.fpu.xmm[m].to_le_bytes());
    let addr = arg(args, 1);
    for (i, (&d, &k)) in data.iter().zip(&mask).enumerate() {
        if k & 0x80 != 0 {
            let at = advance(ctx.state, addr, i as u64);
            ctx.mem.write(ctx.state, at, 1, u64::from(d), Privilege::Current)?;
        }
    }
    Ok(0)
}
