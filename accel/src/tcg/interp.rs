//! The IR interpreter: executes one translation block's ops against a
//! [`CpuContext`]. Temps live in a small per-vCPU array; guest registers stay
//! in [`X86State`], read and written by byte offset.
//!
//! On a faulting op it applies the IR's precise-exception rule (see
//! [`super::ir`]): the current instruction committed nothing, so RIP is set
//! to its `InsnStart` pc and the exception is reported.

use std::mem::{offset_of, size_of};

use super::context::CpuContext;
use super::exception::Exception;
use super::flags::CcOp;
use super::ir::{BinOp, ExtKind, MemFlags, MemSize, Op, UnOp};
use super::mmu::walker::is_canonical;
use super::mmu::{Access, Privilege};
use super::state::{Msrs, TableReg, X86State};

/// Why a block stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TbExit {
    /// RIP is stored; find the block for it.
    Lookup,
    /// Direct jump to `pc` (RIP stored): a chaining candidate.
    Goto { slot: u8, pc: u64 },
    /// An exception at the instruction starting at `pc` (RIP is already
    /// `pc`); `next_pc` is the return address for software interrupts.
    Exception { exception: Exception, pc: u64, next_pc: u64 },
    /// HLT executed; RIP points after it.
    Halt,
}

/// The `(start, end)` byte ranges of [`X86State`] that the IR may access:
/// plain integer fields without padding. `cc_op` is among them because
/// stores to it are sanitised into a valid [`CcOp`].
fn env_ranges() -> [(usize, usize); 6] {
    let gdtr = offset_of!(X86State, gdtr);
    let idtr = offset_of!(X86State, idtr);
    let base = offset_of!(TableReg, base);
    let limit = offset_of!(TableReg, limit);
    let msr = offset_of!(X86State, msr);
    [
        // GPRs, RIP, RFLAGS, cc_*, segment caches, LDTR, TR.
        (0, gdtr),
        (gdtr + base, gdtr + base + 8),
        (gdtr + limit, gdtr + limit + 4),
        (idtr + base, idtr + base + 8),
        (idtr + limit, idtr + limit + 4),
        // CR0..CR8, EFER, XCR0, DR0..7, hflags, then the MSR block.
        (offset_of!(X86State, cr0), msr + size_of::<Msrs>()),
    ]
}

/// Whether an env access of `size` bytes at `offset` stays inside one of the
/// ranges of [`env_ranges`].
pub fn env_access_ok(offset: u32, size: usize) -> bool {
    let start = offset as usize;
    let Some(end) = start.checked_add(size) else { return false };
    env_ranges().iter().any(|&(lo, hi)| lo <= start && end <= hi)
}

/// Checks what [`execute`] relies on: env offsets in bounds, labels defined,
/// temps below `num_temps`. Returns a description of the first problem.
pub fn validate(ops: &[Op], num_temps: usize, label_pos: &[usize]) -> Result<(), String> {
    let temp_ok = |t: &super::ir::Temp| (t.0 as usize) < num_temps;
    for (i, op) in ops.iter().enumerate() {
        let ok = match op {
            Op::LdEnv { dst, offset, size } => temp_ok(dst) && env_access_ok(*offset, size.bytes()),
            Op::StEnv { src, offset, size } => temp_ok(src) && env_access_ok(*offset, size.bytes()),
            Op::Br { label } | Op::SetLabel { label } => {
                label_pos.get(label.0 as usize).is_some_and(|&p| p <= ops.len())
            }
            Op::BrCond { a, b, label, .. } => {
                temp_ok(a) && temp_ok(b) && label_pos.get(label.0 as usize).is_some_and(|&p| p <= ops.len())
            }
            Op::Movi { dst, .. } => temp_ok(dst),
            Op::Mov { dst, src } | Op::Un { dst, a: src, .. } | Op::Ext { dst, a: src, .. } => {
                temp_ok(dst) && temp_ok(src)
            }
            Op::Bin { dst, a, b, .. } | Op::SetCond { dst, a, b, .. } => temp_ok(dst) && temp_ok(a) && temp_ok(b),
            Op::Select { dst, a, b, t, f, .. } => [dst, a, b, t, f].into_iter().all(temp_ok),
            Op::Load { dst, addr, .. } => temp_ok(dst) && temp_ok(addr),
            Op::Store { src, addr, .. } => temp_ok(src) && temp_ok(addr),
            Op::Call { args, nargs, ret, .. } => {
                usize::from(*nargs) <= args.len()
                    && args[..usize::from(*nargs)].iter().all(temp_ok)
                    && ret.as_ref().is_none_or(temp_ok)
            }
            Op::InsnStart { .. } | Op::ExitTb { .. } | Op::GotoTb { .. } => true,
        };
        if !ok {
            return Err(format!("invalid IR op {i}: {op:?}"));
        }
    }
    Ok(())
}

/// Where `cc_op` lives: stores to it are sanitised into a valid [`CcOp`].
pub(super) const CC_OP_OFFSET: u32 = offset_of!(X86State, cc_op) as u32;

#[inline(always)]
pub(super) fn ld_env(state: &X86State, offset: u32, size: MemSize) -> u64 {
    let p = (state as *const X86State as *const u8).wrapping_add(offset as usize);
    // SAFETY: `validate` (run when the block was built) checked that
    // `offset..offset+size` lies inside plain-integer fields of X86State
    // without padding, so these bytes are initialised and in bounds. The
    // reads are unaligned-tolerant; one typed load per size, no memcpy call.
    unsafe {
        match size {
            MemSize::B1 => u64::from(p.read()),
            MemSize::B2 => u64::from(p.cast::<u16>().read_unaligned()),
            MemSize::B4 => u64::from(p.cast::<u32>().read_unaligned()),
            MemSize::B8 => p.cast::<u64>().read_unaligned(),
        }
    }
}

#[inline(always)]
pub(super) fn st_env(state: &mut X86State, offset: u32, size: MemSize, value: u64) {
    let value = if offset == CC_OP_OFFSET { CcOp::from_u64(value).unwrap_or(CcOp::Eflags) as u64 } else { value };
    st_env_raw(state, offset, size, value);
}

/// [`st_env`] for a store known not to be to `cc_op`, or of a valid `CcOp`.
#[inline(always)]
pub(super) fn st_env_raw(state: &mut X86State, offset: u32, size: MemSize, value: u64) {
    let p = (state as *mut X86State as *mut u8).wrapping_add(offset as usize);
    // SAFETY: as in `ld_env`: the range is inside plain-integer fields,
    // where any bit pattern is valid; a `cc_op` value is a valid CcOp (the
    // callers sanitise it).
    unsafe {
        match size {
            MemSize::B1 => p.write(value as u8),
            MemSize::B2 => p.cast::<u16>().write_unaligned(value as u16),
            MemSize::B4 => p.cast::<u32>().write_unaligned(value as u32),
            MemSize::B8 => p.cast::<u64>().write_unaligned(value),
        }
    }
}

pub(super) fn bin(op: BinOp, a: u64, b: u64) -> u64 {
    match op {
        BinOp::Add => a.wrapping_add(b),
        BinOp::Sub => a.wrapping_sub(b),
        BinOp::Mul => a.wrapping_mul(b),
        BinOp::And => a & b,
        BinOp::Or => a | b,
        BinOp::Xor => a ^ b,
        BinOp::Shl => a << (b & 63),
        BinOp::Shr => a >> (b & 63),
        BinOp::Sar => ((a as i64) >> (b & 63)) as u64,
        BinOp::Rotl => a.rotate_left((b & 63) as u32),
        BinOp::Rotr => a.rotate_right((b & 63) as u32),
        BinOp::MulHu => ((u128::from(a) * u128::from(b)) >> 64) as u64,
        BinOp::MulHs => ((i128::from(a as i64) * i128::from(b as i64)) >> 64) as u64,
        // The frontend emits divisions only where it proved them safe; a
        // zero divisor here is a translator bug, answered without a panic.
        BinOp::DivU => a.checked_div(b).unwrap_or(0),
        BinOp::DivS => (a as i64).checked_div(b as i64).unwrap_or(0) as u64,
        BinOp::RemU => a.checked_rem(b).unwrap_or(0),
        BinOp::RemS => (a as i64).checked_rem(b as i64).unwrap_or(0) as u64,
    }
}

pub(super) fn un(op: UnOp, a: u64) -> u64 {
    match op {
        UnOp::Not => !a,
        UnOp::Neg => a.wrapping_neg(),
        UnOp::Bswap16 => u64::from((a as u16).swap_bytes()),
        UnOp::Bswap32 => u64::from((a as u32).swap_bytes()),
        UnOp::Bswap64 => a.swap_bytes(),
        UnOp::Ctz => u64::from(a.trailing_zeros()),
        UnOp::Clz => u64::from(a.leading_zeros()),
        UnOp::Popcnt => u64::from(a.count_ones()),
    }
}

pub(super) fn ext(kind: ExtKind, a: u64) -> u64 {
    match kind {
        ExtKind::Zext8 => a & 0xff,
        ExtKind::Zext16 => a & 0xffff,
        ExtKind::Zext32 => a & 0xffff_ffff,
        ExtKind::Sext8 => a as i8 as i64 as u64,
        ExtKind::Sext16 => a as i16 as i64 as u64,
        ExtKind::Sext32 => a as i32 as i64 as u64,
    }
}

/// The MMU reports a non-canonical address as #GP(0); for a stack
/// reference (`size` bytes at `addr`) the CPU raises #SS(0) instead.
pub(super) fn stack_fault(e: Exception, flags: MemFlags, addr: u64, size: usize) -> Exception {
    let last = addr.wrapping_add(size.max(1) as u64 - 1);
    let non_canonical = !is_canonical(addr) || !is_canonical(last);
    if flags.contains(MemFlags::STACK) && e == Exception::gp0() && non_canonical {
        Exception::with_code(super::exception::vector::SS, 0)
    } else {
        e
    }
}

/// An IR guest-memory load of `size` bytes at linear `addr` (checked for
/// write permission when it is an RMW's read), sign-extended if asked,
/// faulting as [`stack_fault`] says.
pub(super) fn guest_load(
    ctx: &mut CpuContext<'_>,
    addr: u64,
    size: MemSize,
    sign: bool,
    flags: MemFlags,
) -> Result<u64, Exception> {
    let access = if flags.contains(MemFlags::RMW) { Access::Write } else { Access::Read };
    let v = ctx
        .mem
        .read(ctx.state, addr, size.bytes(), access, Privilege::Current)
        .map_err(|e| stack_fault(e, flags, addr, size.bytes()))?;
    Ok(if sign {
        let shift = 64 - 8 * size.bytes() as u32;
        (((v << shift) as i64) >> shift) as u64
    } else {
        v
    })
}

/// An IR guest-memory store of the low `size` bytes of `value` at `addr`.
pub(super) fn guest_store(
    ctx: &mut CpuContext<'_>,
    addr: u64,
    size: MemSize,
    value: u64,
    flags: MemFlags,
) -> Result<(), Exception> {
    ctx.mem
        .write(ctx.state, addr, size.bytes(), value, Privilege::Current)
        .map_err(|e| stack_fault(e, flags, addr, size.bytes()))
}

/// Runs `ops` (validated by [`validate`] against `temps.len()` and
/// `label_pos`) until the block exits, through the interpreter's compiled
/// form ([`super::bytecode`]); translation blocks keep theirs compiled.
pub fn execute(ctx: &mut CpuContext<'_>, ops: &[Op], label_pos: &[usize], temps: &mut [u64]) -> TbExit {
    let code = super::bytecode::compile(ops, temps.len(), label_pos);
    if code.num_temps() <= temps.len() {
        return super::bytecode::run(ctx, &code, temps);
    }
    // The compiled form gives each guest instruction slots of its own.
    let mut slots = vec![0; code.num_temps()];
    super::bytecode::run(ctx, &code, &mut slots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcg::ir::{BinOp, Cond, ExitKind, Label, MemSize, Temp};
    use crate::tcg::mmu::CodePages;
    use crate::tcg::test_support::{context, Flat};

    fn run(state: &mut X86State, mem: &mut Flat, ops: &[Op], labels: &[usize]) -> TbExit {
        let code_pages = CodePages::with_pages(0);
        let temps_needed = 8;
        validate(ops, temps_needed, labels).unwrap();
        let mut ctx = context(state, mem, &code_pages);
        execute(&mut ctx, ops, labels, &mut [0; 8])
    }

    const RAX: u32 = offset_of!(X86State, gpr) as u32;

    #[test]
    fn env_ranges_exclude_padding_and_non_integer_fields() {
        assert!(env_access_ok(RAX, 8));
        assert!(env_access_ok(offset_of!(X86State, rip) as u32, 8));
        let gdtr_limit = (offset_of!(X86State, gdtr) + offset_of!(TableReg, limit)) as u32;
        assert!(env_access_ok(gdtr_limit, 4));
        assert!(!env_access_ok(gdtr_limit, 8), "padding after the limit");
        assert!(!env_access_ok(offset_of!(X86State, halted) as u32, 1));
        assert!(!env_access_ok(u32::MAX, 8));
        let bad = [Op::LdEnv { dst: Temp(0), offset: offset_of!(X86State, fpu) as u32, size: MemSize::B8 }];
        assert!(validate(&bad, 1, &[]).is_err());
        let bad_label = [Op::Br { label: Label(0) }];
        assert!(validate(&bad_label, 1, &[usize::MAX]).is_err());
    }

    #[test]
    fn loop_in_ir_and_a_faulting_store_restore_rip() {
        let mut state = X86State::reset();
        let mut mem = Flat(vec![0; 0x1000]);
        let (i, acc, one, zero) = (Temp(0), Temp(1), Temp(2), Temp(3));
        let ops = vec![
            Op::InsnStart { pc: 0x100, len: 3 },
            Op::Movi { dst: i, imm: 10 },
            Op::Movi { dst: acc, imm: 0 },
            Op::Movi { dst: one, imm: 1 },
            Op::Movi { dst: zero, imm: 0 },
            Op::SetLabel { label: Label(0) },
            Op::Bin { op: BinOp::Add, dst: acc, a: acc, b: i },
            Op::Bin { op: BinOp::Sub, dst: i, a: i, b: one },
            Op::BrCond { cond: Cond::Ne, a: i, b: zero, label: Label(0) },
            Op::StEnv { src: acc, offset: RAX, size: MemSize::B8 },
            Op::InsnStart { pc: 0x103, len: 4 },
            Op::Movi { dst: i, imm: 0x10_0000 },
            Op::Store { src: acc, addr: i, size: MemSize::B4, flags: MemFlags::NONE },
            Op::ExitTb { kind: ExitKind::Lookup },
        ];
        let exit = run(&mut state, &mut mem, &ops, &[5]);
        assert_eq!(state.gpr[0], 55);
        assert_eq!(state.rip, 0x103, "RIP of the faulting instruction");
        assert!(matches!(exit, TbExit::Exception { exception, pc: 0x103, next_pc: 0x107 } if exception.vector == 14));
    }

    #[test]
    fn narrow_env_stores_keep_the_other_bytes() {
        let mut state = X86State::reset();
        state.gpr[0] = 0x1111_2222_3333_4444;
        let ops = vec![
            Op::InsnStart { pc: 0, len: 1 },
            Op::Movi { dst: Temp(0), imm: 0xaabb },
            Op::StEnv { src: Temp(0), offset: RAX + 1, size: MemSize::B1 },
            Op::GotoTb { slot: 0, pc: 0x40 },
        ];
        assert_eq!(run(&mut state, &mut Flat(vec![]), &ops, &[]), TbExit::Goto { slot: 0, pc: 0x40 });
        assert_eq!(state.gpr[0], 0x1111_2222_3333_bb44);
        assert_eq!(state.rip, 0x40);
    }
}
