//! Composite steps: instructions that only keep the sequence invariants
//! (see [`sequence`](super::sequence)) together with a neighbour.
//!
//! - PUSHF, then an AND that clears the pushed bits the host and the guest
//!   disagree on (IF; ID…) and the flags undefined at that point;
//! - a pushed constant, then POPF (user-visible bits, plus IF and IOPL,
//!   which CPL3 silently keeps; never TF, AC, NT, ID);
//! - ENTER (nested up to level 5 when its RBP frame is known), then LEAVE
//!   for some of them;
//! - XLAT through a data pointer in RBX;
//! - a counted loop: `mov ecx, n`, a body of plain instructions that leave
//!   RCX alone, then LOOP/LOOPE/LOOPNE back to the body (at most 4 rounds).

use iced_x86::{Code, Instruction, MemoryOperand, Register};

use super::builder::{Gen, RBP, RBX, RCX};
use super::flags::{self, TRACKED};
use super::{PAGE, USER_FLAGS};

/// RFLAGS.IF and IOPL: ignored by POPF at CPL3 with IOPL 0.
const IF_IOPL: u64 = 0x3200;
const DF: u64 = 0x400;

impl Gen {
    /// One composite step, or nothing if it doesn't fit here.
    pub(super) fn composite(&mut self, out: &mut Vec<Instruction>) -> Option<()> {
        match self.rng.below(5) {
            0 => self.pushf(out),
            1 => self.popf(out),
            2 => self.frame(out),
            3 => self.xlat(out),
            _ => self.counted_loop(out),
        }
    }

    fn pushf(&mut self, out: &mut Vec<Instruction>) -> Option<()> {
        let mask = (USER_FLAGS | 2) & !flags::to_rflags(self.undef);
        let rsp = MemoryOperand::with_base(Register::RSP);
        if self.rng.chance(75) {
            out.push(Instruction::with(Code::Pushfq));
            out.push(Instruction::with2(Code::And_rm64_imm32, rsp, mask as i32).ok()?);
        } else {
            out.push(Instruction::with(Code::Pushfw));
            out.push(Instruction::with2(Code::And_rm16_imm16, rsp, mask as u32).ok()?);
        }
        Some(())
    }

    fn popf(&mut self, out: &mut Vec<Instruction>) -> Option<()> {
        let value = (self.rng.next() & (USER_FLAGS | IF_IOPL)) | 2;
        if self.rng.chance(75) {
            // Reserved bits 22..63 (imm32 sign-extended) are ignored.
            let high = if self.rng.chance(30) { self.rng.next() & 0xffc0_0000 } else { 0 };
            out.push(Instruction::with1(Code::Pushq_imm32, (value | high) as u32 as i32).ok()?);
            out.push(Instruction::with(Code::Popfq));
        } else {
            out.push(Instruction::with1(Code::Push_imm16, value as u32).ok()?);
            out.push(Instruction::with(Code::Popfw));
        }
        self.df = Some(value & DF != 0);
        Some(())
    }

    /// ENTER/LEAVE. The first ENTER's level is 0 or 1 (deeper levels copy
    /// frame pointers from the old RBP, which is random here); a second,
    /// nested one copies from the first one's frame. 16-bit ENTER only
    /// sets BP (RBP's upper half stays random), so nothing uses it after.
    fn frame(&mut self, out: &mut Vec<Instruction>) -> Option<()> {
        if self.reserved & (1 << RBP) != 0 {
            return None;
        }
        let alloc = |g: &mut Gen| if g.rng.chance(20) { 0 } else { g.rng.below(0x40) as u32 };
        if self.rng.chance(20) {
            let a = alloc(self);
            out.push(Instruction::with2(Code::Enterw_imm16_imm8, a, self.rng.below(2) as u32).ok()?);
            return Some(());
        }
        let a = alloc(self);
        out.push(Instruction::with2(Code::Enterq_imm16_imm8, a, self.rng.below(2) as u32).ok()?);
        let mut frames = 1;
        if self.rng.chance(40) {
            let a = alloc(self);
            out.push(Instruction::with2(Code::Enterq_imm16_imm8, a, self.rng.below(6) as u32).ok()?);
            frames += 1;
        }
        for _ in 0..self.rng.below(frames + 1) {
            let code = if self.rng.chance(80) { Code::Leaveq } else { Code::Leavew };
            out.push(Instruction::with(code));
            if code == Code::Leavew {
                break; // RBP's upper half is the old one's again: no frame.
            }
        }
        Some(())
    }

    /// XLAT when RBX is a data pointer with 256 bytes of room.
    fn xlat(&mut self, out: &mut Vec<Instruction>) -> Option<()> {
        let p = self.pointers.iter().find(|p| p.reg == RBX)?;
        if p.lo < 0 || p.hi + 256 > PAGE as i64 {
            return None;
        }
        let base = if self.rng.chance(25) { Register::EBX } else { Register::RBX };
        let mut instr = Instruction::with1(Code::Xlat_m8, MemoryOperand::with_base_index(base, Register::AL)).ok()?;
        if self.rng.chance(15) {
            instr.set_segment_prefix(self.rng.pick(&[Register::ES, Register::CS, Register::SS, Register::DS])?);
        }
        out.push(instr);
        Some(())
    }

    /// `mov ecx, n`, a body, LOOPcc back to the body. Every instruction of
    /// the body must read only flags defined on every round.
    fn counted_loop(&mut self, out: &mut Vec<Instruction>) -> Option<()> {
        let before = self.undef;
        let reserved = self.reserved;
        self.reserved |= 1 << RCX;
        let mut body = Vec::new();
        for _ in 0..1 + self.rng.below(3) {
            let Some((i, _)) = self.plain() else { continue };
            self.undef = flags::effect(&i).apply(self.undef) & TRACKED;
            body.push(i);
        }
        self.reserved = reserved;
        let code = match self.rng.below(8) {
            0 => Code::Loop_rel8_64_ECX,
            1 => Code::Loope_rel8_64_RCX,
            2 => Code::Loopne_rel8_64_RCX,
            _ => Code::Loop_rel8_64_RCX,
        };
        let back = Instruction::with_branch(code, 0).ok()?;
        // Fixpoint of the maybe-undefined flags at the body's start.
        let mut head = before;
        let ok = (0..4).all(|_| {
            let mut state = head;
            let reads_ok = body.iter().chain(std::iter::once(&back)).all(|i| {
                let e = flags::effect(i);
                let ok = e.read & state == 0;
                state = e.apply(state) & TRACKED;
                ok
            });
            head |= state;
            reads_ok
        });
        if body.is_empty() || !ok {
            self.undef = before;
            return None;
        }
        let rounds = 1 + self.rng.below(4) as u32;
        out.push(Instruction::with2(Code::Mov_r32_imm32, Register::ECX, rounds).ok()?);
        let start = out.len();
        out.extend(body);
        self.back_edges.push((out.len(), start));
        out.push(back);
        // The step's effect on `undef` is applied by the caller.
        self.undef = before;
        Some(())
    }
}
