//! Instructions with no family of their own: NOP and hints, flag bit
//! instructions (CLC STC CMC CLD STD CLI STI), HLT, IN/OUT, INT n / INT3 /
//! INTO / UD2, XLAT.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::builder::{IrBuilder, RFLAGS};
use super::Lowered;
use crate::tcg::context::CpuContext;
use crate::tcg::exception::{vector, Exception};
use crate::tcg::flags::OpSize;
use crate::tcg::ir::{BinOp, ExitKind, Helper, MemSize, StateParts};
use crate::tcg::state::{hflags, reg, rflags as rf, X86State};
use crate::tcg::system;

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    use Mnemonic as M;
    match insn.mnemonic() {
        M::Nop
        | M::Pause
        | M::Lfence
        | M::Mfence
        | M::Sfence
        | M::Prefetchnta
        | M::Prefetcht0
        | M::Prefetcht1
        | M::Prefetcht2
        | M::Prefetchw
        | M::Endbr32
        | M::Endbr64
        | M::Clflush
        | M::Clflushopt => {}
        M::Clc | M::Stc | M::Cmc => {
            let f = b.rflags();
            let op = match insn.mnemonic() {
                M::Clc => BinOp::And,
                M::Stc => BinOp::Or,
                _ => BinOp::Xor,
            };
            let bit = if op == BinOp::And { !rf::CF } else { rf::CF };
            let v = b.bini(op, f, bit);
            b.set_rflags(v);
        }
        // DF is not a lazy flag: flip it in place.
        M::Cld | M::Std => {
            let f = b.ld_env(RFLAGS, MemSize::B8);
            let v =
                if insn.mnemonic() == M::Cld { b.bini(BinOp::And, f, !rf::DF) } else { b.bini(BinOp::Or, f, rf::DF) };
            b.st_env(v, RFLAGS, MemSize::B8);
        }
        M::Cli | M::Sti => {
            let set = b.movi(u64::from(insn.mnemonic() == M::Sti));
            b.call(&SET_IF, &[set]);
            if insn.mnemonic() == M::Sti {
                // Interrupts may now be deliverable (after the shadow).
                b.set_rip(b.insn.next_pc);
                b.exit(ExitKind::Lookup);
                return Lowered::End;
            }
        }
        M::Hlt => {
            if b.hflags & hflags::CPL_MASK != 0 {
                b.exit(ExitKind::Raise(Exception::gp0()));
            } else {
                b.set_rip(b.insn.next_pc);
                b.exit(ExitKind::Halt);
            }
            return Lowered::End;
        }
        M::In | M::Out => return port_io(b, insn),
        M::Int => {
            let v = insn.try_immediate(0).unwrap_or(0) as u8;
            b.exit(ExitKind::Raise(Exception::software(v)));
            return Lowered::End;
        }
        M::Int3 => {
            b.exit(ExitKind::Raise(Exception::software(vector::BP)));
            return Lowered::End;
        }
        M::Into => {
            let (c, x, y) = b.cond(iced_x86::ConditionCode::o);
            let no = b.label();
            b.brcond(c.invert(), x, y, no);
            b.exit(ExitKind::Raise(Exception::software(vector::OF)));
            b.set_label(no);
        }
        M::Ud0 | M::Ud1 | M::Ud2 => {
            b.exit(ExitKind::Raise(Exception::ud()));
            return Lowered::End;
        }
        M::Xlatb => {
            // iced decodes the operand as [rBX+AL]: the effective address
            // already adds AL (truncated to the address size).
            let addr = b.ea(insn);
            let v = b.load(addr, OpSize::B1);
            b.write_gpr_sized(reg::RAX, OpSize::B1, v);
        }
        _ => return Lowered::Unsupported,
    }
    Lowered::Next
}

fn port_io(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let is_in = insn.mnemonic() == Mnemonic::In;
    let (data_op, port_op) = if is_in { (0, 1) } else { (1, 0) };
    let Ok(data) = insn.try_op_register(data_op) else { return Lowered::Unsupported };
    let size = b.movi(data.size() as u64);
    let port = match insn.try_op_kind(port_op) {
        Ok(OpKind::Register) => b.read_reg(Register::DX),
        _ => b.movi(insn.try_immediate(port_op).unwrap_or(0) & 0xff),
    };
    if is_in {
        let v = b.call(&PIO_IN, &[port, size]);
        b.write_reg(data, v);
    } else {
        let v = b.read_reg(data);
        b.call(&PIO_OUT, &[port, size, v]);
    }
    Lowered::Next
}

/// #GP(0) unless CLI/STI is allowed at this CPL/IOPL.
fn check_iopl(state: &X86State) -> Result<(), Exception> {
    let iopl = (state.rflags & rf::IOPL) >> 12;
    let protected = state.hflags & hflags::PE != 0;
    if protected && u64::from(state.cpl()) > iopl {
        return Err(Exception::gp0());
    }
    Ok(())
}

fn arg(args: &[u64], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

/// `args`: port, size (1/2/4). Returns the value read, zero-extended.
fn helper_in(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let size = (arg(args, 1) as usize).clamp(1, 4);
    system::io_permitted(ctx.state, &mut *ctx.mem, arg(args, 0) as u16, size as u8)?;
    let mut data = [0u8; 4];
    ctx.io.pio_read(arg(args, 0) as u16, &mut data[..size]);
    Ok(u64::from(u32::from_le_bytes(data)))
}

/// `args`: port, size (1/2/4), value.
fn helper_out(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let size = (arg(args, 1) as usize).clamp(1, 4);
    system::io_permitted(ctx.state, &mut *ctx.mem, arg(args, 0) as u16, size as u8)?;
    let data = (arg(args, 2) as u32).to_le_bytes();
    ctx.io.pio_write(arg(args, 0) as u16, &data[..size]);
    Ok(0)
}

/// CLI (`args[0]` = 0) / STI (1). STI with IF clear opens the interrupt
/// shadow for the next instruction.
fn helper_set_if(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    check_iopl(ctx.state)?;
    let state = &mut *ctx.state;
    if arg(args, 0) != 0 {
        if state.rflags & rf::IF == 0 {
            state.hflags |= hflags::INHIBIT_IRQ;
        }
        state.rflags |= rf::IF;
    } else {
        state.rflags &= !rf::IF;
    }
    Ok(0)
}

static PIO_IN: Helper =
    Helper { name: "pio_in", func: helper_in, may_fault: true, reads: StateParts::FLAGS, writes: StateParts::NONE };
static PIO_OUT: Helper =
    Helper { name: "pio_out", func: helper_out, may_fault: true, reads: StateParts::FLAGS, writes: StateParts::NONE };
static SET_IF: Helper = Helper {
    name: "set_if",
    func: helper_set_if,
    may_fault: true,
    reads: StateParts::FLAGS.union(StateParts::SYSTEM),
    writes: StateParts::FLAGS.union(StateParts::SYSTEM),
};
