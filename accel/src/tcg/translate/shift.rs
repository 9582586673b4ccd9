//! Shifts and rotates: SHL/SAL SHR SAR ROL ROR RCL RCR SHLD SHRD.
//!
//! A masked count of 0 leaves the flags alone, so counts from CL branch
//! around the flag update (and leave `cc_op` statically unknown).

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::builder::{operand_size, IrBuilder, Loc};
use super::Lowered;
use crate::tcg::context::CpuContext;
use crate::tcg::exception::Exception;
use crate::tcg::flags::{self, CcFamily, OpSize, RotateKind};
use crate::tcg::ir::{BinOp, Cond, Helper, StateParts, Temp};
use crate::tcg::state::rflags as rf;

/// The masked shift count: an immediate (Some) or a temp from CL.
enum Count {
    Const(u64),
    Dynamic(Temp),
}

fn count(b: &mut IrBuilder, insn: &Instruction, n: u32, size: OpSize) -> Option<Count> {
    let mask = if size == OpSize::B8 { 0x3f } else { 0x1f };
    Some(match insn.try_op_kind(n).ok()? {
        OpKind::Register => {
            let cl = b.read_reg(insn.try_op_register(n).ok()?);
            Count::Dynamic(b.bini(BinOp::And, cl, mask))
        }
        _ => Count::Const(insn.try_immediate(n).ok()? & mask),
    })
}

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let Some(size) = operand_size(insn, 0) else { return Lowered::Unsupported };
    let Some(dst) = b.loc(insn, 0) else { return Lowered::Unsupported };
    let m = insn.mnemonic();
    let n = if matches!(m, Mnemonic::Shld | Mnemonic::Shrd) { 2 } else { 1 };
    let c = if insn.op_count() <= n {
        Count::Const(1)
    } else {
        let Some(c) = count(b, insn, n, size) else { return Lowered::Unsupported };
        c
    };
    if let Count::Const(0) = c {
        // No flags change, but the destination is still accessed as a
        // read-modify-write: a 32-bit register is zero-extended, memory is
        // checked for write (it faults as the CPU's RMW does).
        match dst {
            Loc::Reg(r) => {
                let v = b.read_reg(r);
                b.write_reg(r, v);
            }
            Loc::Mem(addr) => {
                b.load_for_write(addr, size);
            }
        }
        return Lowered::Next;
    }
    let a = b.read_loc_rmw(dst, size);
    let cnt = match c {
        Count::Const(k) => b.movi(k),
        Count::Dynamic(t) => t,
    };
    let skip_flags = b.label();
    match m {
        Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar => {
            let (r, src) = plain_shift(b, m, size, a, cnt);
            b.write_loc(dst, size, r);
            flag_guard(b, &c, cnt, skip_flags);
            let family = if matches!(m, Mnemonic::Shl | Mnemonic::Sal) { CcFamily::Shl } else { CcFamily::Sar };
            b.set_cc(family, size, r, Some(src), None);
        }
        Mnemonic::Rol | Mnemonic::Ror => {
            let r = rotate(b, m == Mnemonic::Rol, size, a, cnt);
            b.write_loc(dst, size, r);
            flag_guard(b, &c, cnt, skip_flags);
            // The host's choice for the undefined OF differs by encoding.
            let keep_of = matches!((&c, dst), (Count::Const(k), Loc::Reg(_)) if *k > 1);
            rotate_flags(b, m == Mnemonic::Rol, size, a, r, keep_of);
        }
        Mnemonic::Rcl | Mnemonic::Rcr => {
            let mode = b.movi(size as u64 | if m == Mnemonic::Rcl { 0x100 } else { 0 });
            let r = b.call(&RCX_RESULT, &[a, cnt, mode]);
            b.write_loc(dst, size, r);
            flag_guard(b, &c, cnt, skip_flags);
            b.call(&RCX_FLAGS, &[a, cnt, mode]);
        }
        Mnemonic::Shld | Mnemonic::Shrd => {
            let Some(src) = b.read_operand(insn, 1, size) else { return Lowered::Unsupported };
            let mode = b.movi(size as u64 | if m == Mnemonic::Shld { 0x100 } else { 0 });
            let r = b.call(&DOUBLE_SHIFT, &[a, src, cnt, mode]);
            let prev_cnt = b.bini(BinOp::Sub, cnt, 1);
            let prev = b.call(&DOUBLE_SHIFT, &[a, src, prev_cnt, mode]);
            b.write_loc(dst, size, r);
            flag_guard(b, &c, cnt, skip_flags);
            let family = if m == Mnemonic::Shld { CcFamily::Shl } else { CcFamily::Sar };
            b.set_cc(family, size, r, Some(prev), None);
        }
        _ => return Lowered::Unsupported,
    }
    b.set_label(skip_flags);
    if let Count::Dynamic(_) = c {
        b.cc_known = None;
    }
    Lowered::Next
}

/// Branches to `skip` when a dynamic count is zero.
fn flag_guard(b: &mut IrBuilder, c: &Count, cnt: Temp, skip: crate::tcg::ir::Label) {
    if let Count::Dynamic(_) = c {
        let zero = b.movi(0);
        b.brcond(Cond::Eq, cnt, zero, skip);
    }
}

/// SHL/SHR/SAR by `cnt` (1..=63): (result, operand shifted by cnt-1).
fn plain_shift(b: &mut IrBuilder, m: Mnemonic, size: OpSize, a: Temp, cnt: Temp) -> (Temp, Temp) {
    let one = b.movi(1);
    let prev = b.bin(BinOp::Sub, cnt, one);
    match m {
        Mnemonic::Shl | Mnemonic::Sal => {
            let r = b.bin(BinOp::Shl, a, cnt);
            let s = b.bin(BinOp::Shl, a, prev);
            (b.zext(size, r), b.zext(size, s))
        }
        Mnemonic::Shr => (b.bin(BinOp::Shr, a, cnt), b.bin(BinOp::Shr, a, prev)),
        _ => {
            let sa = b.sext(size, a);
            let r = b.bin(BinOp::Sar, sa, cnt);
            let s = b.bin(BinOp::Sar, sa, prev);
            (b.zext(size, r), b.zext(size, s))
        }
    }
}

/// Rotate within `size` bits by `cnt` (taken modulo the width).
fn rotate(b: &mut IrBuilder, left: bool, size: OpSize, a: Temp, cnt: Temp) -> Temp {
    let bits = u64::from(size.bits());
    if bits == 64 {
        return b.bin(if left { BinOp::Rotl } else { BinOp::Rotr }, a, cnt);
    }
    let c = b.bini(BinOp::And, cnt, bits - 1);
    let w = b.movi(bits);
    let back = b.bin(BinOp::Sub, w, c);
    let back = b.bini(BinOp::And, back, bits - 1);
    let (x, y) = if left {
        (b.bin(BinOp::Shl, a, c), b.bin(BinOp::Shr, a, back))
    } else {
        (b.bin(BinOp::Shr, a, c), b.bin(BinOp::Shl, a, back))
    };
    let r = b.bin(BinOp::Or, x, y);
    b.zext(size, r)
}

/// ROL: CF = bit 0 of the result; ROR: CF = its MSB. OF is exact for a
/// count of 1; for the SDM-undefined count > 1 this does what the host
/// does: by CL, OF of the first 1-bit step from the original operand `a`
/// (ROL MSB ^ MSB-1, ROR LSB ^ MSB, as [`flags::rotate_flags`]), and the
/// same by an immediate on memory; by an immediate on a register
/// (`keep_of`), OF unchanged. Other flags are kept, so RFLAGS is
/// materialised.
fn rotate_flags(b: &mut IrBuilder, left: bool, size: OpSize, a: Temp, r: Temp, keep_of: bool) {
    let f = b.rflags();
    let top = u64::from(size.bits() - 1);
    let bit = |b: &mut IrBuilder, v: Temp, n: u64| {
        let s = b.bini(BinOp::Shr, v, n);
        b.bini(BinOp::And, s, 1)
    };
    let cf = if left { bit(b, r, 0) } else { bit(b, r, top) };
    if keep_of {
        let f = b.bini(BinOp::And, f, !rf::CF);
        let f = b.bin(BinOp::Or, f, cf);
        b.set_rflags(f);
        return;
    }
    let f = b.bini(BinOp::And, f, !(rf::CF | rf::OF));
    let msb = bit(b, a, top);
    let other = if left { bit(b, a, top - 1) } else { bit(b, a, 0) };
    let of = b.bin(BinOp::Xor, msb, other);
    let of = b.bini(BinOp::Shl, of, 11);
    let f = b.bin(BinOp::Or, f, cf);
    let f = b.bin(BinOp::Or, f, of);
    b.set_rflags(f);
}

fn arg(args: &[u64], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

fn mode(args: &[u64], i: usize) -> (OpSize, bool) {
    let m = arg(args, i);
    (OpSize::from_bytes((m & 0xff) as usize).unwrap_or(OpSize::B8), m & 0x100 != 0)
}

fn rcx_kind(left: bool) -> RotateKind {
    if left {
        RotateKind::Rcl
    } else {
        RotateKind::Rcr
    }
}

fn helper_rcx_result(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let (size, left) = mode(args, 2);
    let f = flags::rflags(ctx.state);
    Ok(flags::rotate_result(rcx_kind(left), size, arg(args, 0), arg(args, 1), f))
}

fn helper_rcx_flags(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let (size, left) = mode(args, 2);
    let f = flags::rflags(ctx.state);
    let f = flags::rotate_flags(rcx_kind(left), size, arg(args, 0), arg(args, 1), f);
    ctx.state.rflags = f;
    ctx.state.cc_op = flags::CcOp::Eflags;
    Ok(0)
}

/// SHLD/SHRD of `args[0]` with bits from `args[1]` by `args[2]` (< width).
fn helper_double_shift(_: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let (size, left) = mode(args, 3);
    let bits = size.bits();
    let (d, s, c) = (arg(args, 0) & size.mask(), arg(args, 1) & size.mask(), (arg(args, 2) as u32) % 64);
    if c == 0 {
        return Ok(d);
    }
    // 16-bit counts above 16 are undefined; a 128-bit window keeps it total.
    let wide = if left { (u128::from(d) << bits) | u128::from(s) } else { (u128::from(s) << bits) | u128::from(d) };
    let r = if left { (wide << c) >> bits } else { wide >> c };
    Ok(r as u64 & size.mask())
}

static RCX_RESULT: Helper = Helper {
    name: "rcl_rcr",
    func: helper_rcx_result,
    may_fault: false,
    reads: StateParts::FLAGS,
    writes: StateParts::NONE,
};
static RCX_FLAGS: Helper = Helper {
    name: "rcl_rcr_flags",
    func: helper_rcx_flags,
    may_fault: false,
    reads: StateParts::FLAGS,
    writes: StateParts::FLAGS,
};
static DOUBLE_SHIFT: Helper = Helper {
    name: "shld_shrd",
    func: helper_double_shift,
    may_fault: false,
    reads: StateParts::NONE,
    writes: StateParts::NONE,
};
