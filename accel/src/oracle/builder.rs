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
pub(super) const RCX: usize = 1;
pub(super) const RBX: usize = 3;
pub(super) const RSP: usize = 4;
pub(super) const RBP: usize = 5;
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

/// Mnemonics whose memory-destination forms take a LOCK prefix.
const LOCKABLE: &[Mnemonic] = &[
    Mnemonic::Add,
    Mnemonic::Adc,
    Mnemonic::Sub,
    Mnemonic::Sbb,
    Mnemonic::And,
    Mnemonic::Or,
    Mnemonic::Xor,
    Mnemonic::Inc,
    Mnemonic::Dec,
    Mnemonic::Neg,
    Mnemonic::Not,
    Mnemonic::Bts,
    Mnemonic::Btr,
    Mnemonic::Btc,
    Mnemonic::Xchg,
    Mnemonic::Xadd,
    Mnemonic::Cmpxchg,
    Mnemonic::Cmpxchg8b,
    Mnemonic::Cmpxchg16b,
];

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
        [Mem(a), Reg(b), Imm(c)] => Instruction::with3(code, a, b, imm32(c)?),
        [Reg(a), Reg(b), Reg(c)] => Instruction::with3(code, a, b, c),
        [Mem(a), Reg(b), Reg(c)] => Instruction::with3(code, a, b, c),
        _ => return None,
    };
    r.ok()
}

/// An immediate for `kind`, biased towards edge values.
fn immediate(rng: &mut Rng, kind: Imm, mnemonic: Mnemonic) -> i64 {
    use Mnemonic as M;
    let shift =
        matches!(mnemonic, M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shld | M::Shrd);
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
    /// DF where the step starts, if the same on every path there.
    pub df: Option<bool>,
    /// Deliberately faulting accesses left to emit.
    pub fault_budget: u32,
    /// Flags that may be undefined at the current point.
    pub undef: u32,
    pub info: InstructionInfoFactory,
    /// Backward branches (LOOP of a counted loop): (index of the branch,
    /// index of its target) in the case's instruction list.
    pub back_edges: Vec<(usize, usize)>,
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

    /// A deliberately faulting (or code-page) target address. `whole`:
    /// never split across pages (locked accesses).
    fn fault_address(&mut self, size: i64, whole: bool) -> u64 {
        let room = (PAGE as i64 - size) as u64 + 1;
        match self.rng.below(5) {
            0 => GUARD_LOW + self.rng.below(room),
            1 => GUARD_HIGH + self.rng.below(room),
            // Splits: the access starts in the data page, ends in a guard
            // page, or the other way round.
            2 if size > 1 && !whole => DATA + PAGE as u64 - 1 - self.rng.below(size as u64 - 1),
            3 if size > 1 && !whole => DATA - 1 - self.rng.below(size as u64 - 1),
            _ => CODE + self.rng.below(room),
        }
    }

    /// A memory operand for an access of `size` bytes. `exact`: the
    /// address must be known (not a drifting RSI/RDI) and the access must
    /// not split a cache line (locked accesses); `align`: the data address
    /// is a multiple of it.
    pub(super) fn memory(&mut self, size: u8, exact: bool, align: u64) -> Option<MemoryOperand> {
        let size = i64::from(size);
        if self.fault_budget > 0 && self.rng.chance(20) {
            self.fault_budget -= 1;
            if let (Some(f), true) = (self.fault_reg, self.rng.chance(50)) {
                let disp = self.rng.below(256) as i64 - 128;
                return Some(MemoryOperand::with_base_displ(GPR64[f], disp));
            }
            let mut addr = self.fault_address(size, exact || align > 1);
            if exact || align > 1 {
                let a = (size as u64).max(align).next_power_of_two().min(64);
                addr &= !(a - 1);
            }
            return Some(MemoryOperand::with_displ(addr, 4));
        }
        let mut off = self.data_offset(size);
        off &= !(align.max(1) as i64 - 1);
        if exact && off % 64 + size > 64 {
            off &= !63;
        }
        let exact = exact || align > 1;
        let addr = DATA + off as u64;
        // Address-size overrides (0x67): every address here is below 4 GiB.
        let addr32 = self.rng.chance(12);
        match self.rng.below(10) {
            0 if addr32 => return Some(MemoryOperand::with_base_displ(Register::EIP, addr as i64)),
            0 => return Some(MemoryOperand::with_base_displ(Register::RIP, addr as i64)),
            1 => return Some(MemoryOperand::with_displ(addr, 4)),
            _ => {}
        }
        if !exact && self.rng.chance(8) {
            // Through RSP (so SS): RSP stays near the middle of the stack
            // page; if it ever drifted far, this would hit a guard page.
            let base = if addr32 { Register::ESP } else { Register::RSP };
            let disp = self.rng.range(-0x80, 0x80 - size);
            return Some(MemoryOperand::with_base_displ_size(base, disp, 1));
        }
        let p = self.rng.pick(&self.pointers)?;
        if exact && p.lo != p.hi {
            return Some(MemoryOperand::with_displ(addr, 4));
        }
        let (index, scale, scaled) = match self.index {
            Some((r, v)) if self.rng.chance(40) => {
                let scale = 1u32 << self.rng.below(4);
                (sized(r, if addr32 { 4 } else { 8 }), scale, (v * u64::from(scale)) as i64)
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
        let base = sized(p.reg, if addr32 { 4 } else { 8 });
        Some(MemoryOperand::with_base_index_scale_displ_size(base, index, scale, disp, displ_size))
    }

    /// LEA's operand: any registers, any displacement (nothing is accessed).
    fn address(&mut self) -> MemoryOperand {
        let disp = self.rng.value() as i32 as i64;
        if self.rng.chance(15) {
            return MemoryOperand::with_base_displ(Register::RIP, (CODE as i64) + (disp & 0xffff));
        }
        // 32-bit address registers: the result is truncated to 32 bits.
        let bytes = if self.rng.chance(20) { 4 } else { 8 };
        let base = if self.rng.chance(10) { Register::None } else { sized(self.rng.below(16) as usize, bytes) };
        let index = match self.rng.below(17) as usize {
            RSP | 16 => Register::None,
            n => sized(n, bytes),
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
        // LOCK on a memory destination, sometimes. Locked accesses (XCHG
        // with memory always is) never split a cache line: split locks are
        // slow at best and #AC where the host detects them.
        let lock = LOCKABLE.contains(&m)
            && matches!(form.slots.first(), Some(Slot::RegOrMem(_) | Slot::Mem(_)))
            && self.rng.chance(30);
        let exact = lock || m == Mnemonic::Xchg;
        // BT* [mem], reg: the register's value moves the address (a bit
        // string); it must be the index register, whose value is small and
        // known, and the operand gets room for the move (at most 8 bytes).
        let bit_string = matches!(m, Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc)
            && matches!(form.slots.as_slice(), [Slot::RegOrMem(_), Slot::Reg(_)])
            && self.rng.chance(35);
        let bit_index = if bit_string { Some(self.index?.0) } else { None };
        let mut ops = Vec::with_capacity(form.slots.len());
        let mut fixed_size = 8;
        for (k, slot) in form.slots.iter().enumerate() {
            ops.push(match *slot {
                Slot::Reg(b) if bit_string => Opnd::Reg(sized(bit_index?, b)),
                Slot::RegOrMem(b) if bit_string => Opnd::Mem(self.memory(b + 8, exact, 1)?),
                Slot::Reg(b) => Opnd::Reg(self.register(b)),
                Slot::Fixed(r) => {
                    fixed_size = r.size() as u8;
                    Opnd::Reg(r)
                }
                Slot::RegOrMem(b) if (lock && k == 0) || self.rng.chance(35) => Opnd::Mem(self.memory(b, exact, 1)?),
                Slot::RegOrMem(b) => Opnd::Reg(self.register(b)),
                Slot::Mem(b) => {
                    // CMPXCHG16B raises #GP unless 16-byte aligned: mostly aligned.
                    let align = if m == Mnemonic::Cmpxchg16b && (lock || self.rng.chance(85)) { 16 } else { 1 };
                    Opnd::Mem(self.memory(b, exact, align)?)
                }
                Slot::Address => Opnd::Mem(self.address()),
                Slot::MemOffs => {
                    let off = self.data_offset(i64::from(fixed_size.max(1)));
                    // A 32-bit moffs (0x67) sometimes.
                    let displ_size = if self.rng.chance(20) { 4 } else { 8 };
                    Opnd::Mem(MemoryOperand::with_displ(DATA + off as u64, displ_size))
                }
                Slot::Imm(kind) => Opnd::Imm(immediate(&mut self.rng, kind, m)),
            });
        }
        let mut instr = build(form.code, &ops)?;
        if lock {
            instr.set_has_lock_prefix(true);
        }
        if ops.iter().any(|o| matches!(o, Opnd::Mem(_))) && self.rng.chance(8) {
            // Segment overrides that are no-ops in 64-bit mode (FS/GS bases
            // differ between the host and the guest), but SS vs DS decides
            // between #SS and #GP for a non-canonical address.
            let seg = [Register::ES, Register::CS, Register::SS, Register::DS];
            instr.set_segment_prefix(self.rng.pick(&seg)?);
        }
        // BT* with any other register bit offset address memory far from
        // the operand.
        let far_bits = !bit_string
            && matches!(m, Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc)
            && matches!(ops.as_slice(), [Opnd::Mem(_), Opnd::Reg(_)]);
        // SHLD/SHRD of 16 bits by more than 16: result undefined.
        let wide_count = matches!(m, Mnemonic::Shld | Mnemonic::Shrd)
            && matches!(ops.as_slice(), [_, Opnd::Reg(r), Opnd::Imm(c)] if r.size() == 2 && c & 0x1f > 16);
        if far_bits || wide_count || !self.acceptable(&instr) {
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
        // The most iterations that keep every access of RSI/RDI inside,
        // in whichever direction DF may send them.
        let (down, up) = (self.df != Some(false), self.df != Some(true));
        let mut room = if rep { 8 } else { 1 };
        for p in self.pointers.iter().filter(|p| (p.reg == RSI && uses_si) || (p.reg == RDI && uses_di)) {
            if down {
                room = room.min(if p.hi + elem > PAGE as i64 { -1 } else { p.lo / elem + 1 });
            }
            if up {
                room = room.min((PAGE as i64 - p.hi) / elem);
            }
        }
        if room < 1 && !rep {
            return None;
        }
        let count = if rep { self.rng.below(room.max(0) as u64 + 1) as i64 } else { 1 };
        // 32-bit addressing (0x67: ESI/EDI/ECX) sometimes; the pointers are
        // below 4 GiB. The source segment may be overridden (no-op in
        // 64-bit mode).
        let addr_bits = if self.rng.chance(20) { 32 } else { 64 };
        let seg = if uses_si && self.rng.chance(10) {
            self.rng.pick(&[Register::ES, Register::CS, Register::SS, Register::DS])?
        } else {
            Register::None
        };
        let mut instr = string_instruction(codes[size_log], addr_bits, seg)?;
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
                if down {
                    p.lo -= count * elem;
                }
                if up {
                    p.hi += count * elem;
                }
            }
        }
        out.push(instr);
        Some(())
    }
}

/// A string instruction of `code` with `addr_bits`-bit addressing and the
/// source segment `seg` (`Register::None`: DS).
fn string_instruction(code: Code, addr_bits: u32, seg: Register) -> Option<Instruction> {
    use iced_x86::RepPrefixKind as R;
    let (a, s) = (addr_bits, seg);
    let r = match code {
        Code::Movsb_m8_m8 => Instruction::with_movsb(a, s, R::None),
        Code::Movsw_m16_m16 => Instruction::with_movsw(a, s, R::None),
        Code::Movsd_m32_m32 => Instruction::with_movsd(a, s, R::None),
        Code::Movsq_m64_m64 => Instruction::with_movsq(a, s, R::None),
        Code::Stosb_m8_AL => Instruction::with_stosb(a, R::None),
        Code::Stosw_m16_AX => Instruction::with_stosw(a, R::None),
        Code::Stosd_m32_EAX => Instruction::with_stosd(a, R::None),
        Code::Stosq_m64_RAX => Instruction::with_stosq(a, R::None),
        Code::Lodsb_AL_m8 => Instruction::with_lodsb(a, s, R::None),
        Code::Lodsw_AX_m16 => Instruction::with_lodsw(a, s, R::None),
        Code::Lodsd_EAX_m32 => Instruction::with_lodsd(a, s, R::None),
        Code::Lodsq_RAX_m64 => Instruction::with_lodsq(a, s, R::None),
        Code::Cmpsb_m8_m8 => Instruction::with_cmpsb(a, s, R::None),
        Code::Cmpsw_m16_m16 => Instruction::with_cmpsw(a, s, R::None),
        Code::Cmpsd_m32_m32 => Instruction::with_cmpsd(a, s, R::None),
        Code::Cmpsq_m64_m64 => Instruction::with_cmpsq(a, s, R::None),
        Code::Scasb_AL_m8 => Instruction::with_scasb(a, R::None),
        Code::Scasw_AX_m16 => Instruction::with_scasw(a, R::None),
        Code::Scasd_EAX_m32 => Instruction::with_scasd(a, R::None),
        Code::Scasq_RAX_m64 => Instruction::with_scasq(a, R::None),
        _ => return None,
    };
    r.ok()
}
