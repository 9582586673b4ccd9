//! Random test sequences: 1 to 16 steps of integer instructions (a step is
//! one instruction, or two where the second needs a set-up: `mov ecx, n`
//! before a REP string op, a zeroed RDX before some divisions), then the
//! `ud2` terminator.
//!
//! Invariants that keep both oracles and the emulator comparable:
//! - registers used to address memory (the *pointers*: RSI/RDI when string
//!   ops are drawn, one or two others), the index register and the fault
//!   register are never written, except RSI/RDI by string ops, whose drift
//!   the generator bounds; RSP changes only through PUSH/POP;
//! - every access lands in the data page, the read-only code page (reads
//!   only, or a deliberate write fault), the stack page, or — in at most one
//!   deliberately faulting access per case — a guard page or a
//!   non-canonical address;
//! - jumps only go forward, to a later step or the terminator: every case
//!   terminates;
//! - no instruction reads a flag that may be undefined at that point
//!   (see [`flags`](super::flags)), so undefined values never reach
//!   registers, memory or control flow;
//! - no segment prefixes (FS/GS bases differ between host and guest), no
//!   LOCK, and implicitly locked XCHG with memory never splits a cache line.
//!
//! The forms drawn depend on the host CPU (LZCNT/TZCNT/POPCNT only where
//! present), so a seed reproduces a case on hosts with the same features.

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Encoder, Instruction, InstructionBlock,
    InstructionInfoFactory, MemoryOperand, Mnemonic, OpAccess, OpKind, Register,
};

use super::families::{families, Form, Imm, Slot, JCC};
use super::flags::{self, TRACKED};
use super::rng::Rng;
use super::{UserRegs, CODE, DATA, GUARD_HIGH, GUARD_LOW, PAGE, STACK_START, USER_FLAGS};

/// One generated (or hand-written) test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    pub seed: u64,
    /// Code loaded at [`CODE`]; its last instruction is the `ud2` terminator.
    pub code: Vec<u8>,
    /// GPRs and RFLAGS at the first instruction (only [`USER_FLAGS`] count).
    pub init: UserRegs,
    /// The data page at [`DATA`] (4 KiB).
    pub data: Vec<u8>,
    /// The stack page at [`STACK`](super::STACK) (4 KiB).
    pub stack: Vec<u8>,
}

impl TestCase {
    /// A case running `code` (which must end with `ud2`) from zeroed
    /// registers and pages, RSP at [`STACK_START`].
    pub fn with_code(code: Vec<u8>) -> TestCase {
        let mut init = UserRegs {
            rflags: 0x2,
            ..UserRegs::default()
        };
        init.gprs[4] = STACK_START;
        TestCase {
            seed: 0,
            code,
            init,
            data: vec![0; PAGE],
            stack: vec![0; PAGE],
        }
    }

    /// Offset of the terminating `ud2`.
    pub fn terminator_offset(&self) -> u64 {
        self.code.len().saturating_sub(2) as u64
    }

    /// The decoded code, terminator included, IPs as loaded at [`CODE`].
    pub fn instructions(&self) -> Vec<Instruction> {
        flags::decode(&self.code)
    }

    /// Instructions before the terminator.
    pub fn len(&self) -> usize {
        self.instructions().len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same case cut after its first `n` instructions: a `ud2` takes
    /// the place of instruction `n`, and jumps past it land on it.
    pub fn prefix(&self, n: usize) -> Option<TestCase> {
        let instrs = self.instructions();
        let body = instrs.len().saturating_sub(1);
        let n = n.min(body);
        let end_ip = instrs.get(n)?.ip();
        let mut cut: Vec<Instruction> = instrs[..n].to_vec();
        for i in &mut cut {
            if i.op0_kind() == OpKind::NearBranch64 && i.near_branch64() > end_ip {
                i.set_near_branch64(end_ip);
            }
        }
        let mut ud2 = Instruction::with(Code::Ud2);
        ud2.set_ip(end_ip);
        cut.push(ud2);
        let code = encode_block(&cut)?;
        Some(TestCase {
            code,
            ..self.clone()
        })
    }
}

fn encode_block(instrs: &[Instruction]) -> Option<Vec<u8>> {
    BlockEncoder::encode(
        64,
        InstructionBlock::new(instrs, CODE),
        BlockEncoderOptions::NONE,
    )
    .ok()
    .map(|r| r.code_buffer)
}

const GPR64: [Register; 16] = [
    Register::RAX, Register::RCX, Register::RDX, Register::RBX, Register::RSP, Register::RBP,
    Register::RSI, Register::RDI, Register::R8, Register::R9, Register::R10, Register::R11,
    Register::R12, Register::R13, Register::R14, Register::R15,
];
const RSP: usize = 4;
const RSI: usize = 6;
const RDI: usize = 7;
/// Registers that may become pointers, index or fault registers (never the
/// implicit operands RAX, RCX, RDX, nor RSP).
const ADDRESS_POOL: [usize; 10] = [3, 5, 8, 9, 10, 11, 12, 13, 14, 15];

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
            Register::AL, Register::CL, Register::DL, Register::BL, Register::SPL, Register::BPL,
            Register::SIL, Register::DIL, Register::R8L, Register::R9L, Register::R10L,
            Register::R11L, Register::R12L, Register::R13L, Register::R14L, Register::R15L,
        ],
        2 => [
            Register::AX, Register::CX, Register::DX, Register::BX, Register::SP, Register::BP,
            Register::SI, Register::DI, Register::R8W, Register::R9W, Register::R10W,
            Register::R11W, Register::R12W, Register::R13W, Register::R14W, Register::R15W,
        ],
        4 => [
            Register::EAX, Register::ECX, Register::EDX, Register::EBX, Register::ESP,
            Register::EBP, Register::ESI, Register::EDI, Register::R8D, Register::R9D,
            Register::R10D, Register::R11D, Register::R12D, Register::R13D, Register::R14D,
            Register::R15D,
        ],
        _ => GPR64,
    };
    base[n % 16]
}

/// A pointer register and the range of its value, as offsets from [`DATA`].
#[derive(Debug, Clone, Copy)]
struct Pointer {
    reg: usize,
    lo: i64,
    hi: i64,
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
        Mnemonic::Shl | Mnemonic::Shr | Mnemonic::Sar | Mnemonic::Rol | Mnemonic::Ror
            | Mnemonic::Rcl | Mnemonic::Rcr
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
struct Gen {
    rng: Rng,
    pointers: Vec<Pointer>,
    /// The index register and its (small, fixed) value.
    index: Option<(usize, u64)>,
    /// A register holding a non-canonical or guard-page address.
    fault_reg: Option<usize>,
    /// Registers nothing may write, as a bit mask of encoding numbers.
    reserved: u32,
    df: bool,
    /// Deliberately faulting accesses left to emit.
    fault_budget: u32,
    /// Flags that may be undefined at the current point.
    undef: u32,
    info: InstructionInfoFactory,
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
        Some(MemoryOperand::with_base_index_scale_displ_size(
            GPR64[p.reg],
            index,
            scale,
            disp,
            displ_size,
        ))
    }

    /// LEA's operand: any registers, any displacement (nothing is accessed).
    fn address(&mut self) -> MemoryOperand {
        let disp = self.rng.value() as i32 as i64;
        if self.rng.chance(15) {
            return MemoryOperand::with_base_displ(Register::RIP, (CODE as i64) + (disp & 0xffff));
        }
        let base = if self.rng.chance(10) {
            Register::None
        } else {
            GPR64[self.rng.below(16) as usize]
        };
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
    fn instance(&mut self, form: &Form) -> Option<Instruction> {
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
        let explicit_rsp = (0..instr.op_count()).any(|i| {
            instr.op_kind(i) == OpKind::Register && gpr_index(instr.op_register(i)) == Some(RSP)
        });
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
    fn string_op(&mut self, out: &mut Vec<Instruction>) -> Option<()> {
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
        for p in self.pointers.iter().filter(|p| {
            (p.reg == RSI && uses_si) || (p.reg == RDI && uses_di)
        }) {
            let fit = if self.df {
                if p.hi + elem > PAGE as i64 { -1 } else { p.lo / elem + 1 }
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

/// Where the generator's fake instruction addresses start (BlockEncoder
/// only uses them to tell instructions apart and resolve branch targets).
const FAKE_IP: u64 = 0x4000_0000;

/// A jump a step emitted: its target step, and whether it is a JMP.
struct Jump {
    target: usize,
    unconditional: bool,
}

impl Gen {
    /// Emits one step at `step` of `steps`; returns the jump if it was one.
    fn step(
        &mut self,
        out: &mut Vec<Instruction>,
        step: usize,
        steps: usize,
        jumps: &mut Vec<(usize, usize)>,
    ) -> Option<Jump> {
        let fams = families();
        let total: u64 = fams.iter().map(|f| f.weight).sum();
        for _ in 0..32 {
            let roll = self.rng.below(100);
            if roll < 8 {
                let (short, near) = self.rng.pick(JCC)?;
                let code = if self.rng.chance(70) { short } else { near };
                let Ok(instr) = Instruction::with_branch(code, 0) else { continue };
                if flags::effect(&instr).read & self.undef != 0 {
                    continue;
                }
                let target = step + 1 + self.rng.below((steps - step) as u64) as usize;
                jumps.push((out.len(), target));
                out.push(instr);
                let unconditional = matches!(code, Code::Jmp_rel8_64 | Code::Jmp_rel32_64);
                return Some(Jump {
                    target,
                    unconditional,
                });
            }
            if roll < 16 {
                if self.pointers.iter().any(|p| p.reg == RSI) && self.string_op(out).is_some() {
                    return None;
                }
                continue;
            }
            let mut pick = self.rng.below(total);
            let Some(fam) = fams.iter().find(|f| {
                let hit = pick < f.weight;
                pick = pick.saturating_sub(f.weight);
                hit
            }) else {
                continue;
            };
            let Some(form) = fam.forms.get(self.rng.below(fam.forms.len() as u64) as usize) else {
                continue;
            };
            let Some(instr) = self.instance(form) else { continue };
            if fam.name == "div" && self.rng.chance(50) {
                // Make a quotient that fits likely: zero RDX first.
                if let Ok(x) = Instruction::with2(Code::Xor_r32_rm32, Register::EDX, Register::EDX) {
                    out.push(x);
                }
            }
            out.push(instr);
            return None;
        }
        out.push(Instruction::with(Code::Nopd));
        None
    }
}

fn join(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a | b),
        (a, b) => a.or(b),
    }
}

/// Random page contents: noise, with edge values at random 8-byte slots.
fn page(rng: &mut Rng) -> Vec<u8> {
    let mut words = [0u64; PAGE / 8];
    words.iter_mut().for_each(|w| *w = rng.next());
    for _ in 0..64 {
        let at = rng.below(words.len() as u64) as usize;
        words[at] = rng.value();
    }
    let mut bytes = Vec::with_capacity(PAGE);
    for w in words {
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    bytes
}

/// Generates the case for `seed`.
pub fn generate(seed: u64) -> TestCase {
    let mut rng = Rng::new(seed);
    let strings = rng.chance(30);
    let mut pool = ADDRESS_POOL;
    rng.shuffle(&mut pool);
    let mut pool = pool.into_iter();
    let mut regs: Vec<usize> = if strings { vec![RSI, RDI] } else { vec![] };
    for _ in 0..=rng.below(2) {
        regs.extend(pool.next());
    }
    let pointers: Vec<Pointer> = regs
        .into_iter()
        .map(|reg| {
            let start = 0x200 + rng.below(0xc00) as i64;
            Pointer {
                reg,
                lo: start,
                hi: start,
            }
        })
        .collect();
    let index = if rng.chance(50) {
        pool.next().map(|r| (r, rng.below(0x40)))
    } else {
        None
    };
    let faulting = rng.chance(25);
    let fault_reg = if faulting && rng.chance(50) { pool.next() } else { None };

    let mut init = UserRegs::default();
    for g in &mut init.gprs {
        *g = rng.value();
    }
    for p in &pointers {
        init.gprs[p.reg] = DATA + p.lo as u64;
    }
    if let Some((r, v)) = index {
        init.gprs[r] = v;
    }
    if let Some(r) = fault_reg {
        init.gprs[r] = if rng.chance(50) {
            // Non-canonical: bit 62 set, bit 63 clear.
            0x4000_0000_0000_0000 | (rng.next() & 0x0000_7fff_ffff_f000)
        } else {
            GUARD_HIGH + 0x100 + rng.below(0xe00)
        };
    }
    init.gprs[RSP] = STACK_START;
    init.rflags = (rng.next() & USER_FLAGS) | 0x2;
    let data = page(&mut rng);
    let stack = page(&mut rng);

    let reserved = pointers
        .iter()
        .map(|p| p.reg)
        .chain(index.map(|(r, _)| r))
        .chain(fault_reg)
        .fold(0u32, |m, r| m | 1 << r);
    let mut g = Gen {
        rng,
        df: init.rflags & 0x400 != 0,
        pointers,
        index,
        fault_reg,
        reserved,
        fault_budget: u32::from(faulting),
        undef: 0,
        info: InstructionInfoFactory::new(),
    };

    let steps = 1 + g.rng.below(16) as usize;
    let mut out: Vec<Instruction> = Vec::with_capacity(2 * steps + 1);
    let mut starts = Vec::with_capacity(steps + 1);
    let mut jumps = Vec::new();
    let mut incoming: Vec<Option<u32>> = vec![None; steps + 1];
    let mut live = Some(0);
    for step in 0..steps {
        starts.push(out.len());
        live = join(live, incoming[step]);
        // Dead code (after a JMP nothing jumps over) never runs: any state.
        g.undef = live.unwrap_or(0);
        let first = out.len();
        let jump = g.step(&mut out, step, steps, &mut jumps);
        for i in &out[first..] {
            g.undef = flags::effect(i).apply(g.undef) & TRACKED;
        }
        match jump {
            Some(j) => {
                incoming[j.target] = join(incoming[j.target], live.map(|_| g.undef));
                live = if j.unconditional { None } else { live.map(|_| g.undef) };
            }
            None => live = live.map(|_| g.undef),
        }
    }
    starts.push(out.len());
    out.push(Instruction::with(Code::Ud2));
    for (k, i) in out.iter_mut().enumerate() {
        i.set_ip(FAKE_IP + 16 * k as u64);
    }
    for (at, target) in jumps {
        let ip = FAKE_IP + 16 * starts[target] as u64;
        out[at].set_near_branch64(ip);
    }
    let code = encode_block(&out).unwrap_or_else(|| vec![0x0f, 0x0b]);
    TestCase {
        seed,
        code,
        init,
        data,
        stack,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_ends_in_ud2() {
        for seed in 0..2000 {
            let a = generate(seed);
            assert_eq!(a, generate(seed));
            let instrs = a.instructions();
            let last = instrs.last().unwrap();
            assert_eq!(last.code(), Code::Ud2, "seed {seed}");
            assert_eq!(last.ip() - CODE, a.terminator_offset());
            assert!(instrs.iter().all(|i| i.code() != Code::INVALID), "seed {seed}");
            assert!(a.code.len() <= PAGE);
            assert_eq!((a.data.len(), a.stack.len()), (PAGE, PAGE));
        }
    }

    #[test]
    fn jumps_only_go_forward_to_instruction_starts() {
        for seed in 0..2000 {
            let case = generate(seed);
            let instrs = case.instructions();
            for i in instrs.iter().filter(|i| i.op0_kind() == OpKind::NearBranch64) {
                let t = i.near_branch64();
                assert!(t > i.ip(), "seed {seed}: backward jump");
                assert!(instrs.iter().any(|j| j.ip() == t), "seed {seed}: mid-instruction");
            }
        }
    }

    #[test]
    fn prefixes_cut_and_retarget() {
        let case = (0..500)
            .map(generate)
            .find(|c| c.len() > 6 && c.instructions().iter().any(|i| i.is_jcc_short_or_near()))
            .unwrap();
        for n in 0..=case.len() {
            let p = case.prefix(n).unwrap();
            assert_eq!(p.len(), n);
            let want: Vec<Code> = case.instructions()[..n].iter().map(|i| i.code()).collect();
            let got: Vec<Code> = p.instructions()[..n].iter().map(|i| i.code()).collect();
            assert_eq!(want.len(), got.len());
            assert!(p.instructions().iter().all(|i| i.op0_kind() != OpKind::NearBranch64
                || i.near_branch64() <= CODE + p.terminator_offset()));
        }
    }

    #[test]
    fn no_reachable_instruction_reads_a_possibly_undefined_flag() {
        // Checked again on the final code: no instruction reads a flag that
        // may be undefined before it.
        for seed in 0..3000 {
            let case = generate(seed);
            for (i, before) in flags::flag_states(&case.code) {
                let Some(undef) = before else { continue }; // dead code
                assert_eq!(
                    flags::effect(&i).read & undef,
                    0,
                    "seed {seed}: {i} reads an undefined flag"
                );
            }
        }
    }
}
