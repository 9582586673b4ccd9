//! Building one instruction of a case: operands (registers, memory
//! operands kept inside the oracle's pages, immediates), and the checks
//! every candidate passes (no read of a possibly undefined flag, no write to
//! a reserved register, encodable). See [`sequence`](super::sequence) for
//! the invariants this keeps.

use iced_x86::{
    Code, Encoder, Instruction, InstructionInfoFactory, MemoryOperand, Mnemonic, OpAccess, OpKind, Register,
};

use super::families::{Form, Imm, Slot};
use super::flags;
use super::rng::Rng;
use super::{CODE, DATA, GUARD_HIGH, GUARD_LOW, PAGE};

pub(super) const GPR64: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];
pub(super) const RSP: usize = 4;
pub(super) const RSI: usize = 6;
pub(super) const RDI: usize = 7;
/// Registers that may become pointers, index or fault registers (never the
/// implicit operands RAX, RCX, RDX, nor RSP).
pub(super) const ADDRESS_POOL: [usize; 10] = [3, 5, 8, 9, 10, 11, 12, 13, 14, 15];

/// Encoding number of a general register's full 64-bit register.
fn gpr_index(reg: Register) -> Option<usize> {
    let full = reg.full_register();
    GPR64.iter().position(|r| *r == full)
}

/// A general register of `bytes` size by encoding number; 16..20 are
/// AH, CH, DH, BH for byte registers.
fn sized(n: usize, bytes: u8) -> Register {
    const HIGH: [Register; 4] = [Register::AH, Register::CH, Register::DH, Register::BH];
    let base = match bytes {
        1 if n >= 16 => return HIGH[(n - 16) % 4],
        1 => [
            Register::AL,
            Register::CL,
            Register::DL,
            Register::BL,
            Register::SPL,
            Register::BPL,
            Register::SIL,
            Register::DIL,
            Register::R8L,
            Register::R9L,
            Register::R10L,
            Register::R11L,
            Register::R12L,
            Register::R13L,
            Register::R14L,
            Register::R15L,
        ],
        2 => [
            Register::AX,
            Register::CX,
            Register::DX,
            Register::BX,
            Register::SP,
            Register::BP,
            Register::SI,
            Register::DI,
            Register::R8W,
            Register::R9W,
            Register::R10W,
            Register::R11W,
            Register::R12W,
            Register::R13W,
            Register::R14W,
            Register::R15W,
        ],
        4 => [
            Register::EAX,
            Register::ECX,
            Register::EDX,
            Register::EBX,
            Register::ESP,
            Register::EBP,
            Register::ESI,
            Register::EDI,
            Register::R8D,
            Register::R9D,
            Register::R10D,
            Register::R11D,
            Register::R12D,
            Register::R13D,
            Register::R14D,
            Register::R15D,
        ],
        _ => GPR64,
    };
    base[n % 16]
}

/// A pointer register and the range of its value, as offsets from [`DATA`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Pointer {
    pub reg: usize,
    pub lo: i64,
    pub hi: i64,
}

/// An operand as the generator builds it.
#[derive(Debug, Clone, Copy)]
enum Opnd {
    Reg(Register),
    Mem(MemoryOperand),
    Imm(i64),
}

/// Builds an instruction from a code and up to three operands.
fn build(code: Code, ops: &[Opnd]) -> Option<Instruction> {
    use Opnd::*;
    let imm32 = |v: i64| i32::try_from(v).ok();
    let r = match *ops {
        [] => Ok(Instruction::with(code)),
        [Reg(a)] => Instruction::with1(code, a),
        [Mem(a)] => Instruction::with1(code, a),
        [Imm(a)] => Instruction::with1(code, imm32(a)?),
        [Reg(a), Reg(b)] => Instruction::with2(code, a, b),
        [Reg(a), Mem(b)] => Instruction::with2(code, a, b),
        [Mem(a), Reg(b)] => Instruction::with2(code, a, b),
        [Reg(a), Imm(b)] if code == Code::Mov_r64_imm64 => Instruction::with2(code, a, b),
        [Reg(a), Imm(b)] => Instruction::with2(code, a, imm32(b)?),
        [Mem(a), Imm(b)] => Instruction::with2(code, a, imm32(b)?),
        [Reg(a), Reg(b), Imm(c)] => Instruction::with3(code, a, b, imm32(c)?),
        [Reg(a), Mem(b), Imm(c)] => Instruction::with3(code, a, b, imm32(c)?),
        _ => return None,
    };
    r.ok()
}

/// An immediate for `kind`, biased towards edge values.
fn immediate(rng: &mut Rng, kind: Imm, mnemonic: Mnemonic) -> i64 {
    let shift = matches!(
        mnemonic,
        Mnemonic::Shl | Mnemonic::Shr | Mnemonic::Sar | Mnemonic::Rol | Mnemonic::Ror | Mnemonic::Rcl | Mnemonic::Rcr
    );
    match kind {
        Imm::One => 1,
        Imm::I8 if shift => rng.below(70) as i64,
        Imm::I8 | Imm::I8Sex => rng.value_bits(8) as i64,
        Imm::I16 => rng.value_bits(16) as i64,
        Imm::I32 => rng.value_bits(32) as i64,
        Imm::I64 => rng.value() as i64,
    }
}

/// Generation state of one case.
pub(super) struct Gen {
    pub rng: Rng,
    pub pointers: Vec<Pointer>,
    /// The index register and its (small, fixed) value.
    pub index: Option<(usize, u64)>,
    /// A register holding a non-canonical or guard-page address.
    pub fault_reg: Option<usize>,
    /// Registers nothing may write, as a bit mask of encoding numbers.
    pub reserved: u32,
    pub df: bool,
    /// Deliberately faulting accesses left to emit.
    pub fault_budget: u32,
    /// Flags that may be undefined at the current point.
    pub undef: u32,
    pub info: InstructionInfoFactory,
}

impl Gen {
    /// Draws a target offset in the data page for an access of `size`.
    fn data_offset(&mut self, size: i64) -> i64 {
        let max = PAGE as i64 - size;
        match self.rng.below(8) {
            0 => 0,
            1 => max,
            2 => (self.rng.below(max as u64 + 1) as i64) & !(size - 1),
            _ => self.rng.below(max as u64 + 1) as i64,
        }
    }

    /// A deliberately faulting (or code-page) target address.
    fn fault_address(&mut self, size: i64) -> u64 {
        let room = (PAGE as i64 - size) as u64 + 1;
        match self.rng.below(5) {
            0 => GUARD_LOW + self.rng.below(room),
            1 => GUARD_HIGH + self.rng.below(room),
            // Splits: the access starts in the data page, ends in a guard
            // page, or the other way round.
            2 if size > 1 => DATA + PAGE as u64 - 1 - self.rng.below(size as u64 - 1),
            3 if size > 1 => DATA - 1 - self.rng.below(size as u64 - 1),
            _ => CODE + self.rng.below(room),
        }
    }

    /// A memory operand for an access of `size` bytes. `exact`: the
    /// address must be known (not a drifting RSI/RDI), for XCHG alignment.
    fn memory(&mut self, size: u8, exact: bool) -> Option<MemoryOperand> {
        let size = i64::from(size);
        if self.fault_budget > 0 && self.rng.chance(20) {
            self.fault_budget -= 1;
            if let (Some(f), true) = (self.fault_reg, self.rng.chance(50)) {
                let disp = self.rng.below(256) as i64 - 128;
                return Some(MemoryOperand::with_base_displ(GPR64[f], disp));
            }
            let addr = self.fault_address(size);
            return Some(MemoryOperand::with_displ(addr, 4));
        }
        let mut off = self.data_offset(size);
        if exact && off % 64 + size > 64 {
            off &= !63;
        }
        let addr = DATA + off as u64;
        match self.rng.below(10) {
            0 => return Some(MemoryOperand::with_base_displ(Register::RIP, addr as i64)),
            1 => return Some(MemoryOperand::with_displ(addr, 4)),
            _ => {}
        }
        let p = self.rng.pick(&self.pointers)?;
        if exact && p.lo != p.hi {
            return Some(MemoryOperand::with_displ(addr, 4));
        }
        let (index, scale, scaled) = match self.index {
            Some((r, v)) if self.rng.chance(40) => {
                let scale = 1u32 << self.rng.below(4);
                (GPR64[r], scale, (v * u64::from(scale)) as i64)
            }
            _ => (Register::None, 1, 0),
        };
        // Any value of the pointer in [lo, hi] must keep the access inside.
        let lo_disp = -p.lo - scaled;
        let hi_disp = PAGE as i64 - size - p.hi - scaled;
        if lo_disp > hi_disp {
            return Some(MemoryOperand::with_displ(addr, 4));
        }
        let disp = if exact {
            off - p.lo - scaled
        } else if self.rng.chance(50) && lo_disp <= 127 && hi_disp >= -128 {
            self.rng.range(lo_disp.max(-128), hi_disp.min(127))
        } else {
            self.rng.range(lo_disp, hi_disp)
        };
        let displ_size = if self.rng.chance(15) { 4 } else { 1 };
        Some(MemoryOperand::with_base_index_scale_displ_size(GPR64[p.reg], index, scale, disp, displ_size))
    }

    /// LEA's operand: any registers, any displacement (nothing is accessed).
    fn address(&mut self) -> MemoryOperand {
        let disp = self.rng.value() as i32 as i64;
        if self.rng.chance(15) {
            return MemoryOperand::with_base_displ(Register::RIP, (CODE as i64) + (disp & 0xffff));
        }
        let base = if self.rng.chance(10) { Register::None } else { GPR64[self.rng.below(16) as usize] };
        let index = match self.rng.below(17) as usize {
            RSP | 16 => Register::None,
            n => GPR64[n],
        };
        let scale = 1 << self.rng.below(4);
        let displ_size = if base == Register::None { 4 } else { 1 };
        MemoryOperand::with_base_index_scale_displ_size(base, index, scale, disp, displ_size)
    }

    /// A register of `bytes`, mostly one nothing forbids writing.
    fn register(&mut self, bytes: u8) -> Register {
        let high = if bytes == 1 { 4 } else { 0 };
        for _ in 0..4 {
            let n = self.rng.below(16 + high) as usize;
            if n >= 16 || self.reserved & (1 << n) == 0 || self.rng.chance(20) {
                return sized(n, bytes);
            }
        }
        sized(0, bytes)
    }

    /// Fills `form`'s operands; checks the result against the invariants.
    pub(super) fn instance(&mut self, form: &Form) -> Option<Instruction> {
        let m = form.code.mnemonic();
        let locked = m == Mnemonic::Xchg;
        let mut ops = Vec::with_capacity(form.slots.len());
        let mut fixed_size = 8;
        for slot in &form.slots {
            ops.push(match *slot {
                Slot::Reg(b) => Opnd::Reg(self.register(b)),
                Slot::Fixed(r) => {
                    fixed_size = r.size() as u8;
                    Opnd::Reg(r)
                }
                Slot::RegOrMem(b) if self.rng.chance(35) => Opnd::Mem(self.memory(b, locked)?),
                Slot::RegOrMem(b) => Opnd::Reg(self.register(b)),
                Slot::Address => Opnd::Mem(self.address()),
                Slot::MemOffs => {
                    let off = self.data_offset(i64::from(fixed_size.max(1)));
                    Opnd::Mem(MemoryOperand::with_displ(DATA + off as u64, 8))
                }
                Slot::Imm(kind) => Opnd::Imm(immediate(&mut self.rng, kind, m)),
            });
        }
        let instr = build(form.code, &ops)?;
        // BT* with a register bit offset address memory far from the operand.
        let bit_string = matches!(m, Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc)
            && matches!(ops.as_slice(), [Opnd::Mem(_), Opnd::Reg(_)]);
        if bit_string || !self.acceptable(&instr) {
            return None;
        }
        Some(instr)
    }

    /// Flags it reads are defined; it writes no reserved register; it encodes.
    fn acceptable(&mut self, instr: &Instruction) -> bool {
        if flags::effect(instr).read & self.undef != 0 {
            return false;
        }
        let stack_op = matches!(instr.mnemonic(), Mnemonic::Push | Mnemonic::Pop);
        let explicit_rsp = (0..instr.op_count())
            .any(|i| instr.op_kind(i) == OpKind::Register && gpr_index(instr.op_register(i)) == Some(RSP));
        let reserved = self.reserved | 1 << RSP;
        let info = self.info.info(instr);
        let bad_write = info.used_registers().iter().any(|u| {
            let writes = matches!(
                u.access(),
                OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
            );
            match gpr_index(u.register()) {
                Some(RSP) if writes => !stack_op || explicit_rsp,
                Some(n) => writes && reserved & (1 << n) != 0,
                None => false,
            }
        });
        !bad_write && Encoder::new(64).encode(instr, CODE).is_ok()
    }

    /// A string instruction (with `mov ecx, n` before a REP form), or
    /// nothing if RSI/RDI have no room left.
    pub(super) fn string_op(&mut self, out: &mut Vec<Instruction>) -> Option<()> {
        use Code as C;
        let kind = self.rng.below(5) as usize;
        let size_log = self.rng.below(4) as usize;
        let elem = 1i64 << size_log;
        let (codes, uses_si, uses_di) = match kind {
            0 => ([C::Movsb_m8_m8, C::Movsw_m16_m16, C::Movsd_m32_m32, C::Movsq_m64_m64], true, true),
            1 => ([C::Stosb_m8_AL, C::Stosw_m16_AX, C::Stosd_m32_EAX, C::Stosq_m64_RAX], false, true),
            2 => ([C::Lodsb_AL_m8, C::Lodsw_AX_m16, C::Lodsd_EAX_m32, C::Lodsq_RAX_m64], true, false),
            3 => ([C::Cmpsb_m8_m8, C::Cmpsw_m16_m16, C::Cmpsd_m32_m32, C::Cmpsq_m64_m64], true, true),
            _ => ([C::Scasb_AL_m8, C::Scasw_AX_m16, C::Scasd_EAX_m32, C::Scasq_RAX_m64], false, true),
        };
        let rep = self.rng.chance(60);
        // The most iterations that keep every access of RSI/RDI inside.
        let mut room = if rep { 8 } else { 1 };
        for p in self.pointers.iter().filter(|p| (p.reg == RSI && uses_si) || (p.reg == RDI && uses_di)) {
            let fit = if self.df {
                if p.hi + elem > PAGE as i64 {
                    -1
                } else {
                    p.lo / elem + 1
                }
            } else {
                (PAGE as i64 - p.hi) / elem
            };
            room = room.min(fit);
        }
        if room < 1 && !rep {
            return None;
        }
        let count = if rep { self.rng.below(room.max(0) as u64 + 1) as i64 } else { 1 };
        let mut instr = string_instruction(codes[size_log])?;
        if rep {
            let compare = kind >= 3;
            match (compare, self.rng.chance(50)) {
                (true, true) => instr.set_has_repne_prefix(true),
                _ => instr.set_has_repe_prefix(true),
            }
            out.push(Instruction::with2(Code::Mov_r32_imm32, Register::ECX, count as u32).ok()?);
        }
        if flags::effect(&instr).read & self.undef != 0 {
            return None;
        }
        for p in &mut self.pointers {
            if (p.reg == RSI && uses_si) || (p.reg == RDI && uses_di) {
                if self.df {
                    p.lo -= count * elem;
                } else {
                    p.hi += count * elem;
                }
            }
        }
        out.push(instr);
        Some(())
    }
}

/// A string instruction of `code` with 64-bit addressing and DS/ES default
/// segments.
fn string_instruction(code: Code) -> Option<Instruction> {
    use iced_x86::RepPrefixKind as R;
    let none = Register::None;
    let r = match code {
        Code::Movsb_m8_m8 => Instruction::with_movsb(64, none, R::None),
        Code::Movsw_m16_m16 => Instruction::with_movsw(64, none, R::None),
        Code::Movsd_m32_m32 => Instruction::with_movsd(64, none, R::None),
        Code::Movsq_m64_m64 => Instruction::with_movsq(64, none, R::None),
        Code::Stosb_m8_AL => Instruction::with_stosb(64, R::None),
        Code::Stosw_m16_AX => Instruction::with_stosw(64, R::None),
        Code::Stosd_m32_EAX => Instruction::with_stosd(64, R::None),
        Code::Stosq_m64_RAX => Instruction::with_stosq(64, R::None),
        Code::Lodsb_AL_m8 => Instruction::with_lodsb(64, none, R::None),
        Code::Lodsw_AX_m16 => Instruction::with_lodsw(64, none, R::None),
        Code::Lodsd_EAX_m32 => Instruction::with_lodsd(64, none, R::None),
        Code::Lodsq_RAX_m64 => Instruction::with_lodsq(64, none, R::None),
        Code::Cmpsb_m8_m8 => Instruction::with_cmpsb(64, none, R::None),
        Code::Cmpsw_m16_m16 => Instruction::with_cmpsw(64, none, R::None),
        Code::Cmpsd_m32_m32 => Instruction::with_cmpsd(64, none, R::None),
        Code::Cmpsq_m64_m64 => Instruction::with_cmpsq(64, none, R::None),
        Code::Scasb_AL_m8 => Instruction::with_scasb(64, R::None),
        Code::Scasw_AX_m16 => Instruction::with_scasw(64, R::None),
        Code::Scasd_EAX_m32 => Instruction::with_scasd(64, R::None),
        Code::Scasq_RAX_m64 => Instruction::with_scasq(64, R::None),
        _ => return None,
    };
    r.ok()
}
