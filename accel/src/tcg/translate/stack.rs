//! The stack: PUSH POP PUSHF POPF LAHF SAHF ENTER LEAVE, and the
//! push/pop primitives other families use (CALL, RET, INT frames are
//! `interrupts`'s).

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::builder::{operand_size, seg_selector_offset, IrBuilder};
use super::Lowered;
use crate::tcg::context::CpuContext;
use crate::tcg::exception::Exception;
use crate::tcg::flags::{CcOp, OpSize};
use crate::tcg::ir::{BinOp, ExitKind, Helper, MemSize, StateParts, Temp};
use crate::tcg::state::{hflags, reg, rflags as rf};

impl IrBuilder {
    /// Width of the stack pointer: RSP in 64-bit mode, else ESP or SP by SS.B.
    pub fn sp_size(&self) -> OpSize {
        if self.code64() {
            OpSize::B8
        } else if self.hflags & hflags::SS32 != 0 {
            OpSize::B4
        } else {
            OpSize::B2
        }
    }

    /// Linear address of stack offset `sp`.
    pub fn stack_addr(&mut self, sp: Temp) -> Temp {
        let sp = self.zext(self.sp_size(), sp);
        let addr = self.linear(Register::SS, sp);
        self.mark_stack_addr(addr);
        addr
    }

    /// Stores `v` (`size` bytes) below the stack top; returns the new stack
    /// pointer, which the caller commits with [`IrBuilder::commit_sp`]
    /// after its last faulting op.
    pub fn push_value(&mut self, sp: Temp, v: Temp, size: OpSize) -> Temp {
        let new_sp = self.bini(BinOp::Sub, sp, size as u64);
        let addr = self.stack_addr(new_sp);
        self.store(v, addr, size);
        new_sp
    }

    /// Loads `size` bytes from the stack top; returns (value, new sp).
    pub fn pop_value(&mut self, sp: Temp, size: OpSize) -> (Temp, Temp) {
        let addr = self.stack_addr(sp);
        let v = self.load(addr, size);
        let new_sp = self.bini(BinOp::Add, sp, size as u64);
        (v, new_sp)
    }

    pub fn read_sp(&mut self) -> Temp {
        self.gpr(reg::RSP)
    }

    /// Writes the stack pointer at its width (SP alone keeps RSP's upper bits).
    pub fn commit_sp(&mut self, sp: Temp) {
        let size = self.sp_size();
        self.write_gpr_sized(reg::RSP, size, sp);
    }
}

/// Operand size of a push/pop from the stack-pointer change iced reports.
fn stack_op_size(insn: &Instruction) -> Option<OpSize> {
    OpSize::from_bytes(insn.stack_pointer_increment().unsigned_abs() as usize)
}

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    use Mnemonic as M;
    match insn.mnemonic() {
        M::Push | M::Pushf | M::Pushfd | M::Pushfq => push(b, insn),
        M::Pop | M::Popf | M::Popfd | M::Popfq => pop(b, insn),
        M::Lahf => {
            let f = b.rflags();
            let ah = b.bini(BinOp::And, f, 0xd7);
            b.write_reg(Register::AH, ah);
            Lowered::Next
        }
        M::Sahf => {
            let f = b.rflags();
            let keep = b.bini(BinOp::And, f, !0xd5u64);
            let ah = b.read_reg(Register::AH);
            let ah = b.bini(BinOp::And, ah, 0xd5);
            let v = b.bin(BinOp::Or, keep, ah);
            b.set_rflags(v);
            Lowered::Next
        }
        M::Enter => enter(b, insn),
        M::Leave => {
            // The pop's size is the operand size (iced's stack increment
            // for LEAVE is not it).
            let size = match insn.code() {
                iced_x86::Code::Leavew => OpSize::B2,
                iced_x86::Code::Leaved => OpSize::B4,
                _ => OpSize::B8,
            };
            let bp = b.gpr(reg::RBP);
            let (v, sp) = b.pop_value(bp, size);
            b.commit_sp(sp);
            b.write_gpr_sized(reg::RBP, size, v);
            Lowered::Next
        }
        _ => Lowered::Unsupported,
    }
}

fn push(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let Some(size) = stack_op_size(insn) else { return Lowered::Unsupported };
    let v = match insn.mnemonic() {
        Mnemonic::Push => match insn.try_op_kind(0) {
            Ok(OpKind::Register) => {
                let Ok(r) = insn.try_op_register(0) else { return Lowered::Unsupported };
                if r.is_segment_register() {
                    let i = r as usize - Register::ES as usize;
                    b.ld_env(seg_selector_offset(i), MemSize::B2)
                } else {
                    b.read_reg(r)
                }
            }
            _ => {
                let src_size = operand_size(insn, 0).unwrap_or(size);
                let Some(v) = b.read_operand(insn, 0, src_size) else { return Lowered::Unsupported };
                v
            }
        },
        // PUSHF: VM and RF read as 0 in the image.
        _ => {
            let f = b.rflags();
            b.bini(BinOp::And, f, !(rf::VM | rf::RF))
        }
    };
    let sp = b.read_sp();
    let new_sp = b.push_value(sp, v, size);
    b.commit_sp(new_sp);
    Lowered::Next
}

fn pop(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let Some(size) = stack_op_size(insn) else { return Lowered::Unsupported };
    if insn.mnemonic() == Mnemonic::Pop {
        if insn.try_op_register(0).is_ok_and(|r| r.is_segment_register()) {
            return super::system::lower_pop_sreg(b, insn);
        }
        let Some(dst) = pop_destination(b, insn, size) else { return Lowered::Unsupported };
        let sp = b.read_sp();
        let (v, new_sp) = b.pop_value(sp, size);
        if let super::builder::Loc::Mem(addr) = dst {
            b.store(v, addr, size);
        }
        b.commit_sp(new_sp);
        if let super::builder::Loc::Reg(r) = dst {
            b.write_reg(r, v);
        }
        return Lowered::Next;
    }
    // POPF: which bits change depends on CPL and IOPL; may toggle IF/TF, so
    // the block ends for an interrupt check and fresh hflags.
    let sp = b.read_sp();
    let (v, new_sp) = b.pop_value(sp, size);
    b.commit_sp(new_sp);
    let width = b.movi(size as u64);
    b.call(&POPF_HELPER, &[v, width]);
    b.set_rip(b.insn.next_pc);
    b.exit(ExitKind::Lookup);
    Lowered::End
}

/// POP's destination. An RSP-based memory address uses RSP as incremented
/// by the pop (SDM Vol. 2 POP), though RSP itself is committed last.
fn pop_destination(b: &mut IrBuilder, insn: &Instruction, size: OpSize) -> Option<super::builder::Loc> {
    let base = insn.memory_base();
    if insn.try_op_kind(0).ok()? != OpKind::Memory || base.full_register() != Register::RSP {
        return b.loc(insn, 0);
    }
    let off = b.effective_offset(insn);
    let off = b.bini(BinOp::Add, off, size as u64);
    let off = match base.size() {
        4 => b.zext(OpSize::B4, off),
        2 => b.zext(OpSize::B2, off),
        _ => off,
    };
    Some(super::builder::Loc::Mem(b.linear(insn.memory_segment(), off)))
}

/// Writes the popped image `args[0]` (`args[1]` bytes wide) into RFLAGS
/// under the POPF privilege rules (SDM Vol. 2 POPF).
fn helper_popf(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let (value, width) = (args.first().copied().unwrap_or(0), args.get(1).copied().unwrap_or(8));
    let state = &mut *ctx.state;
    let cpl = u64::from(state.cpl());
    let iopl = (state.rflags & rf::IOPL) >> 12;
    let mut mask = rf::ARITH | rf::TF | rf::DF | rf::NT | rf::AC | rf::ID;
    if cpl == 0 {
        mask |= rf::IOPL;
    }
    if cpl <= iopl {
        mask |= rf::IF;
    }
    if width == 2 {
        mask &= 0xffff;
    }
    let old = crate::tcg::flags::rflags(state);
    state.rflags = (old & !mask) | (value & mask) | rf::FIXED1;
    state.rflags &= !rf::RF;
    state.cc_op = CcOp::Eflags;
    state.recompute_hflags();
    Ok(0)
}

static POPF_HELPER: Helper = Helper {
    name: "popf",
    func: helper_popf,
    may_fault: false,
    reads: StateParts::FLAGS.union(StateParts::SYSTEM),
    writes: StateParts::FLAGS.union(StateParts::SYSTEM),
};

/// ENTER alloc, level (SDM Vol. 2 ENTER): push RBP; for a nested frame
/// (level > 0), copy `level - 1` frame pointers from the old frame (read
/// through SS from RBP downwards) and push the new frame pointer; then
/// RBP = frame, RSP -= alloc. Registers are written after the last store.
fn enter(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let size = match insn.code() {
        iced_x86::Code::Enterw_imm16_imm8 => OpSize::B2,
        iced_x86::Code::Enterd_imm16_imm8 => OpSize::B4,
        _ => OpSize::B8,
    };
    let alloc = u64::from(insn.immediate16());
    let level = u64::from(insn.immediate8_2nd() & 0x1f);
    let sp = b.read_sp();
    let bp = b.gpr(reg::RBP);
    let frame = b.push_value(sp, bp, size);
    let mut top = frame;
    if level > 0 {
        for i in 1..level {
            let at = b.bini(BinOp::Sub, bp, i * size as u64);
            let addr = b.stack_addr(at);
            let v = b.load(addr, size);
            top = b.push_value(top, v, size);
        }
        top = b.push_value(top, frame, size);
    }
    let new_sp = b.bini(BinOp::Sub, top, alloc);
    b.commit_sp(new_sp);
    b.write_gpr_sized(reg::RBP, size, frame);
    Lowered::Next
}
