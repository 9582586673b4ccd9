//! `IrBuilder`: emits IR ops and knows how x86 operands map onto them
//! (registers with their partial-width rules, memory operands' effective
//! addresses with segment bases, immediates).
//!
//! Segmentation model: a memory operand's segment base is added in legacy
//! modes (`hflags::ADDSEG`) and for FS/GS in 64-bit mode; segment limits and
//! access rights are not checked on data accesses (as QEMU in its fast
//! path). Outside 64-bit mode linear addresses wrap at 4 GiB.

use std::mem::offset_of;

use iced_x86::{Instruction, OpKind, Register};

use crate::tcg::flags::{CcOp, OpSize};
use crate::tcg::ir::{
    BinOp, Cond, ExitKind, ExtKind, Helper, Label, MemFlags, MemSize, Op, Temp, UnOp, MAX_HELPER_ARGS,
};
use crate::tcg::state::{hflags, seg, SegmentCache, X86State};

/// Where an operand lives.
#[derive(Debug, Clone, Copy)]
pub enum Loc {
    Reg(Register),
    /// Linear address already computed.
    Mem(Temp),
}

/// The instruction being lowered.
#[derive(Debug, Clone, Copy, Default)]
pub struct InsnInfo {
    pub pc: u64,
    pub next_pc: u64,
}

/// Emits the ops of one translation block.
pub struct IrBuilder {
    ops: Vec<Op>,
    next_temp: u32,
    max_temps: u32,
    /// Op index of each label (usize::MAX until set).
    label_pos: Vec<usize>,
    pub hflags: u64,
    pub insn: InsnInfo,
    /// `cc_op` as statically known at this point of the block (None at the
    /// block's start and after anything that stores it dynamically).
    pub cc_known: Option<CcOp>,
    /// The next instruction overwrites all arithmetic flags without reading
    /// them and cannot fault first: this one need not store `cc_*`.
    pub flags_dead: bool,
    /// Temps of this instruction holding stack addresses (implicit stack
    /// accesses, RSP/RBP-based operands, and sums with them): their
    /// accesses carry [`MemFlags::STACK`].
    stack_addrs: Vec<Temp>,
}

/// Offset of GPR `i` (0..16) in the state.
pub fn gpr_offset(i: usize) -> u32 {
    (offset_of!(X86State, gpr) + 8 * i) as u32
}

pub fn seg_offset(i: usize) -> u32 {
    (offset_of!(X86State, segs) + std::mem::size_of::<SegmentCache>() * i) as u32
}

pub fn seg_selector_offset(i: usize) -> u32 {
    seg_offset(i) + offset_of!(SegmentCache, selector) as u32
}

pub const RIP: u32 = offset_of!(X86State, rip) as u32;
pub const RFLAGS: u32 = offset_of!(X86State, rflags) as u32;
pub const CC_OP: u32 = offset_of!(X86State, cc_op) as u32;
pub const CC_DST: u32 = offset_of!(X86State, cc_dst) as u32;
pub const CC_SRC: u32 = offset_of!(X86State, cc_src) as u32;
pub const CC_SRC2: u32 = offset_of!(X86State, cc_src2) as u32;

/// `(index, high byte)` of a GPR operand, or None for non-GPRs.
pub fn gpr_index(reg: Register) -> Option<(usize, bool)> {
    match reg {
        Register::AH | Register::CH | Register::DH | Register::BH => Some((reg as usize - Register::AH as usize, true)),
        r if r.is_gpr() => Some((r.full_register() as usize - Register::RAX as usize, false)),
        _ => None,
    }
}

pub fn mem_size(size: OpSize) -> MemSize {
    match size {
        OpSize::B1 => MemSize::B1,
        OpSize::B2 => MemSize::B2,
        OpSize::B4 => MemSize::B4,
        OpSize::B8 => MemSize::B8,
    }
}

impl IrBuilder {
    pub fn new(hflags: u64) -> Self {
        IrBuilder {
            ops: Vec::with_capacity(256),
            next_temp: 0,
            max_temps: 0,
            label_pos: Vec::new(),
            hflags,
            insn: InsnInfo::default(),
            cc_known: None,
            flags_dead: false,
            stack_addrs: Vec::new(),
        }
    }

    pub fn code64(&self) -> bool {
        self.hflags & hflags::CS64 != 0
    }

    /// Starts instruction `pc..next_pc`; temps do not live across it.
    pub fn begin_insn(&mut self, pc: u64, next_pc: u64) {
        self.insn = InsnInfo { pc, next_pc };
        self.next_temp = 0;
        self.stack_addrs.clear();
        let len = u8::try_from(next_pc.wrapping_sub(pc)).unwrap_or(15);
        self.push(Op::InsnStart { pc, len });
    }

    /// The ops, the number of temps and the labels' op positions.
    pub fn finish(self) -> (Vec<Op>, usize, Vec<usize>) {
        (self.ops, self.max_temps as usize, self.label_pos)
    }

    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    pub fn temp(&mut self) -> Temp {
        let t = Temp(self.next_temp);
        self.next_temp += 1;
        self.max_temps = self.max_temps.max(self.next_temp);
        t
    }

    pub fn movi(&mut self, imm: u64) -> Temp {
        let dst = self.temp();
        self.push(Op::Movi { dst, imm });
        dst
    }

    pub fn mov(&mut self, dst: Temp, src: Temp) {
        self.push(Op::Mov { dst, src });
    }

    pub fn bin(&mut self, op: BinOp, a: Temp, b: Temp) -> Temp {
        let dst = self.temp();
        self.push(Op::Bin { op, dst, a, b });
        // An offset from a stack address still goes through SS.
        if matches!(op, BinOp::Add | BinOp::Sub) && (self.is_stack_addr(a) || self.is_stack_addr(b)) {
            self.stack_addrs.push(dst);
        }
        dst
    }

    pub fn bini(&mut self, op: BinOp, a: Temp, imm: u64) -> Temp {
        let b = self.movi(imm);
        self.bin(op, a, b)
    }

    pub fn un(&mut self, op: UnOp, a: Temp) -> Temp {
        let dst = self.temp();
        self.push(Op::Un { op, dst, a });
        dst
    }

    pub fn ext(&mut self, kind: ExtKind, a: Temp) -> Temp {
        let dst = self.temp();
        self.push(Op::Ext { kind, dst, a });
        dst
    }

    /// Zero-extends the low `size` bytes of `a`.
    pub fn zext(&mut self, size: OpSize, a: Temp) -> Temp {
        match size {
            OpSize::B1 => self.ext(ExtKind::Zext8, a),
            OpSize::B2 => self.ext(ExtKind::Zext16, a),
            OpSize::B4 => self.ext(ExtKind::Zext32, a),
            OpSize::B8 => a,
        }
    }

    /// Sign-extends the low `size` bytes of `a`.
    pub fn sext(&mut self, size: OpSize, a: Temp) -> Temp {
        match size {
            OpSize::B1 => self.ext(ExtKind::Sext8, a),
            OpSize::B2 => self.ext(ExtKind::Sext16, a),
            OpSize::B4 => self.ext(ExtKind::Sext32, a),
            OpSize::B8 => a,
        }
    }

    pub fn setcond(&mut self, cond: Cond, a: Temp, b: Temp) -> Temp {
        let dst = self.temp();
        self.push(Op::SetCond { cond, dst, a, b });
        dst
    }

    pub fn select(&mut self, cond: Cond, a: Temp, b: Temp, t: Temp, f: Temp) -> Temp {
        let dst = self.temp();
        self.push(Op::Select { cond, dst, a, b, t, f });
        dst
    }

    pub fn ld_env(&mut self, offset: u32, size: MemSize) -> Temp {
        let dst = self.temp();
        self.push(Op::LdEnv { dst, offset, size });
        dst
    }

    pub fn st_env(&mut self, src: Temp, offset: u32, size: MemSize) {
        self.push(Op::StEnv { src, offset, size });
    }

    pub fn st_envi(&mut self, imm: u64, offset: u32, size: MemSize) {
        let t = self.movi(imm);
        self.st_env(t, offset, size);
    }

    /// Whether `t` is an SS-relative address (helpers that access memory
    /// themselves must then turn a non-canonical #GP(0) into #SS(0)).
    pub fn is_stack_addr(&self, t: Temp) -> bool {
        self.stack_addrs.contains(&t)
    }

    /// Marks `t` as a stack address (see [`IrBuilder::is_stack_addr`]).
    pub fn mark_stack_addr(&mut self, t: Temp) {
        self.stack_addrs.push(t);
    }

    fn mem_flags(&self, addr: Temp) -> MemFlags {
        if self.is_stack_addr(addr) {
            MemFlags::STACK
        } else {
            MemFlags::NONE
        }
    }

    pub fn load(&mut self, addr: Temp, size: OpSize) -> Temp {
        let dst = self.temp();
        let flags = self.mem_flags(addr);
        self.push(Op::Load { dst, addr, size: mem_size(size), sign: false, flags });
        dst
    }

    /// The read half of a read-modify-write: checked for write, so a fault
    /// reports W and happens before anything is modified.
    pub fn load_for_write(&mut self, addr: Temp, size: OpSize) -> Temp {
        let dst = self.temp();
        let flags = self.mem_flags(addr).union(MemFlags::RMW);
        self.push(Op::Load { dst, addr, size: mem_size(size), sign: false, flags });
        dst
    }

    pub fn store(&mut self, src: Temp, addr: Temp, size: OpSize) {
        let flags = self.mem_flags(addr);
        self.push(Op::Store { src, addr, size: mem_size(size), flags });
    }

    /// Calls `helper`; the result temp is always allocated (0 if unused).
    pub fn call(&mut self, helper: &'static Helper, args: &[Temp]) -> Temp {
        let ret = self.temp();
        let mut slots = [Temp(0); MAX_HELPER_ARGS];
        let n = args.len().min(MAX_HELPER_ARGS);
        slots[..n].copy_from_slice(&args[..n]);
        self.push(Op::Call { helper, args: slots, nargs: n as u8, ret: Some(ret) });
        if helper.writes.contains(crate::tcg::ir::StateParts::FLAGS) {
            self.cc_known = None;
        }
        ret
    }

    pub fn label(&mut self) -> Label {
        self.label_pos.push(usize::MAX);
        Label(self.label_pos.len() as u32 - 1)
    }

    pub fn set_label(&mut self, label: Label) {
        if let Some(p) = self.label_pos.get_mut(label.0 as usize) {
            *p = self.ops.len();
        }
        self.push(Op::SetLabel { label });
    }

    pub fn br(&mut self, label: Label) {
        self.push(Op::Br { label });
    }

    pub fn brcond(&mut self, cond: Cond, a: Temp, b: Temp, label: Label) {
        self.push(Op::BrCond { cond, a, b, label });
    }

    pub fn exit(&mut self, kind: ExitKind) {
        self.push(Op::ExitTb { kind });
    }

    pub fn goto_tb(&mut self, slot: u8, pc: u64) {
        self.push(Op::GotoTb { slot, pc });
    }

    /// Stores RIP = `pc`.
    pub fn set_rip(&mut self, pc: u64) {
        self.st_envi(pc, RIP, MemSize::B8);
    }

    // ---- general-purpose registers ----

    pub fn gpr(&mut self, i: usize) -> Temp {
        self.ld_env(gpr_offset(i), MemSize::B8)
    }

    pub fn set_gpr(&mut self, i: usize, v: Temp) {
        self.st_env(v, gpr_offset(i), MemSize::B8);
    }

    /// Reads a GPR operand, zero-extended to 64 bits.
    pub fn read_reg(&mut self, reg: Register) -> Temp {
        let Some((i, high)) = gpr_index(reg) else { return self.movi(0) };
        let (offset, size) = if high {
            (gpr_offset(i) + 1, MemSize::B1)
        } else {
            (gpr_offset(i), MemSize::from_bytes(reg.size()).unwrap_or(MemSize::B8))
        };
        self.ld_env(offset, size)
    }

    /// Writes a GPR operand: 8/16-bit writes keep the other bits, 32-bit
    /// writes zero the upper half.
    pub fn write_reg(&mut self, reg: Register, v: Temp) {
        let Some((i, high)) = gpr_index(reg) else { return };
        match (reg.size(), high) {
            (_, true) => self.st_env(v, gpr_offset(i) + 1, MemSize::B1),
            (1, false) => self.st_env(v, gpr_offset(i), MemSize::B1),
            (2, _) => self.st_env(v, gpr_offset(i), MemSize::B2),
            (4, _) => {
                let z = self.ext(ExtKind::Zext32, v);
                self.st_env(z, gpr_offset(i), MemSize::B8);
            }
            _ => self.st_env(v, gpr_offset(i), MemSize::B8),
        }
    }

    /// Writes the low `size` bytes of `v` to GPR `i` with the same rules.
    pub fn write_gpr_sized(&mut self, i: usize, size: OpSize, v: Temp) {
        match size {
            OpSize::B1 => self.st_env(v, gpr_offset(i), MemSize::B1),
            OpSize::B2 => self.st_env(v, gpr_offset(i), MemSize::B2),
            OpSize::B4 => {
                let z = self.ext(ExtKind::Zext32, v);
                self.st_env(z, gpr_offset(i), MemSize::B8);
            }
            OpSize::B8 => self.st_env(v, gpr_offset(i), MemSize::B8),
        }
    }

    pub fn read_gpr_sized(&mut self, i: usize, size: OpSize) -> Temp {
        self.ld_env(gpr_offset(i), mem_size(size))
    }

    // ---- memory operands ----

    /// Linear address = segment base (when it applies) + `offset`, wrapped
    /// to 32 bits outside 64-bit mode.
    pub fn linear(&mut self, segment: Register, offset: Temp) -> Temp {
        let s = segment as usize;
        let seg_i = if (Register::ES as usize..=Register::GS as usize).contains(&s) {
            s - Register::ES as usize
        } else {
            seg::DS
        };
        let add_base = self.hflags & hflags::ADDSEG != 0 || seg_i == seg::FS || seg_i == seg::GS;
        let addr = if add_base {
            let base = self.ld_env(seg_offset(seg_i), MemSize::B8);
            self.bin(BinOp::Add, base, offset)
        } else {
            offset
        };
        if self.code64() {
            addr
        } else {
            self.ext(ExtKind::Zext32, addr)
        }
    }

    /// The effective (segment-relative) address of the instruction's memory
    /// operand, truncated to the address size.
    pub fn effective_offset(&mut self, insn: &Instruction) -> Temp {
        if insn.is_ip_rel_memory_operand() {
            return self.movi(insn.ip_rel_memory_address());
        }
        let base = insn.memory_base();
        let index = insn.memory_index();
        let addr_size = if base != Register::None {
            base.size()
        } else if index != Register::None {
            index.size()
        } else {
            insn.memory_displ_size() as usize
        };
        let mut acc = self.movi(insn.memory_displacement64());
        if base != Register::None {
            let b = self.read_reg(base);
            acc = self.bin(BinOp::Add, acc, b);
        }
        if index != Register::None {
            let i = self.read_reg(index);
            let scaled = match insn.memory_index_scale() {
                1 => i,
                s => self.bini(BinOp::Shl, i, u64::from(s.trailing_zeros())),
            };
            acc = self.bin(BinOp::Add, acc, scaled);
        }
        let off = match addr_size {
            2 => self.ext(ExtKind::Zext16, acc),
            4 => self.ext(ExtKind::Zext32, acc),
            _ => acc,
        };
        // A non-canonical address formed from RSP or RBP raises #SS, from
        // any other base #GP, whatever the segment prefix (as the CPU does).
        if matches!(base.full_register(), Register::RSP | Register::RBP) {
            self.stack_addrs.push(off);
        }
        off
    }

    /// The linear address of the instruction's memory operand.
    pub fn ea(&mut self, insn: &Instruction) -> Temp {
        let off = self.effective_offset(insn);
        self.linear(insn.memory_segment(), off)
    }

    // ---- operands ----

    /// Where operand `n` lives (the memory address is computed now).
    pub fn loc(&mut self, insn: &Instruction, n: u32) -> Option<Loc> {
        match insn.try_op_kind(n).ok()? {
            OpKind::Register => Some(Loc::Reg(insn.try_op_register(n).ok()?)),
            OpKind::Memory => Some(Loc::Mem(self.ea(insn))),
            _ => None,
        }
    }

    pub fn read_loc(&mut self, loc: Loc, size: OpSize) -> Temp {
        match loc {
            Loc::Reg(r) => self.read_reg(r),
            Loc::Mem(addr) => self.load(addr, size),
        }
    }

    /// Reads a read-modify-write destination (see [`IrBuilder::load_for_write`]).
    pub fn read_loc_rmw(&mut self, loc: Loc, size: OpSize) -> Temp {
        match loc {
            Loc::Reg(r) => self.read_reg(r),
            Loc::Mem(addr) => self.load_for_write(addr, size),
        }
    }

    pub fn write_loc(&mut self, loc: Loc, size: OpSize, v: Temp) {
        match loc {
            Loc::Reg(r) => self.write_reg(r, v),
            Loc::Mem(addr) => self.store(v, addr, size),
        }
    }

    /// Reads operand `n` (register, memory or immediate) zero-extended from
    /// `size`; None for operand kinds this doesn't handle.
    pub fn read_operand(&mut self, insn: &Instruction, n: u32, size: OpSize) -> Option<Temp> {
        match insn.try_op_kind(n).ok()? {
            OpKind::Register | OpKind::Memory => {
                let loc = self.loc(insn, n)?;
                Some(self.read_loc(loc, size))
            }
            _ => {
                let imm = insn.try_immediate(n).ok()?;
                Some(self.movi(imm & size.mask()))
            }
        }
    }
}

/// The size in bytes of operand `n` (register or memory).
pub fn operand_size(insn: &Instruction, n: u32) -> Option<OpSize> {
    match insn.try_op_kind(n).ok()? {
        OpKind::Register => OpSize::from_bytes(insn.try_op_register(n).ok()?.size()),
        OpKind::Memory => OpSize::from_bytes(insn.memory_size().size()),
        _ => None,
    }
}
