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
//!   (see [`flags`]), so undefined values never reach
//!   registers, memory or control flow;
//! - no segment prefixes (FS/GS bases differ between host and guest), no
//!   LOCK, and implicitly locked XCHG with memory never splits a cache line.
//!
//! The forms drawn depend on the host CPU (LZCNT/TZCNT/POPCNT only where
//! present), so a seed reproduces a case on hosts with the same features.

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Instruction, InstructionBlock, InstructionInfoFactory, OpKind, Register,
};

use super::builder::{Gen, Pointer, ADDRESS_POOL, RDI, RSI, RSP};
use super::families::{families, JCC};
use super::flags::{self, TRACKED};
use super::rng::Rng;
use super::{UserRegs, CODE, DATA, GUARD_HIGH, PAGE, STACK_START, USER_FLAGS};

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
        let mut init = UserRegs { rflags: 0x2, ..UserRegs::default() };
        init.gprs[4] = STACK_START;
        TestCase { seed: 0, code, init, data: vec![0; PAGE], stack: vec![0; PAGE] }
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
        Some(TestCase { code, ..self.clone() })
    }
}

fn encode_block(instrs: &[Instruction]) -> Option<Vec<u8>> {
    BlockEncoder::encode(64, InstructionBlock::new(instrs, CODE), BlockEncoderOptions::NONE).ok().map(|r| r.code_buffer)
}

/// Where the generator's fake instruction addresses start (BlockEncoder
/// only uses them to tell instructions apart and resolve branch targets).
const FAKE_IP: u64 = 0x4000_0000;

/// A jump a step emitted: its target step, and whether it never falls
/// through (JMP, CALL).
struct Jump {
    target: usize,
    unconditional: bool,
}

/// Counted forward branches: LOOP/LOOPE/LOOPNE by RCX or ECX (0x67), JRCXZ
/// and JECXZ. rel8 only, so their targets are at most three steps ahead.
const COUNTED: &[Code] = &[
    Code::Loop_rel8_64_RCX,
    Code::Loop_rel8_64_ECX,
    Code::Loope_rel8_64_RCX,
    Code::Loopne_rel8_64_RCX,
    Code::Loopne_rel8_64_ECX,
    Code::Jrcxz_rel8_64,
    Code::Jecxz_rel8_64,
];

impl Gen {
    /// A forward branch from `step` of `steps`: Jcc/JMP, a counted branch,
    /// or a CALL (pushes its return address and never returns).
    fn branch(&mut self, step: usize, steps: usize) -> Option<(Instruction, usize, bool)> {
        let mut reach = (steps - step) as u64;
        let (code, unconditional) = match self.rng.below(10) {
            0 => (Code::Call_rel32_64, true),
            1 => {
                reach = reach.min(3);
                (self.rng.pick(COUNTED)?, false)
            }
            _ => {
                let (short, near) = self.rng.pick(JCC)?;
                let code = if self.rng.chance(70) { short } else { near };
                (code, matches!(code, Code::Jmp_rel8_64 | Code::Jmp_rel32_64))
            }
        };
        let instr = Instruction::with_branch(code, 0).ok()?;
        if flags::effect(&instr).read & self.undef != 0 {
            return None;
        }
        let target = step + 1 + self.rng.below(reach) as usize;
        Some((instr, target, unconditional))
    }

    /// An instruction of a random family: (instruction, its family's name).
    pub(super) fn plain(&mut self) -> Option<(Instruction, &'static str)> {
        let fams = families();
        let total: u64 = fams.iter().map(|f| f.weight).sum();
        let mut pick = self.rng.below(total);
        let fam = fams.iter().find(|f| {
            let hit = pick < f.weight;
            pick = pick.saturating_sub(f.weight);
            hit
        })?;
        let form = fam.forms.get(self.rng.below(fam.forms.len() as u64) as usize)?;
        Some((self.instance(form)?, fam.name))
    }

    /// Emits one step at `step` of `steps`; returns the jump if it was one.
    fn step(
        &mut self,
        out: &mut Vec<Instruction>,
        step: usize,
        steps: usize,
        jumps: &mut Vec<(usize, usize)>,
    ) -> Option<Jump> {
        for _ in 0..32 {
            let roll = self.rng.below(100);
            if roll < 8 {
                let Some((instr, target, unconditional)) = self.branch(step, steps) else { continue };
                jumps.push((out.len(), target));
                out.push(instr);
                return Some(Jump { target, unconditional });
            }
            if roll < 16 {
                if self.pointers.iter().any(|p| p.reg == RSI) && self.string_op(out).is_some() {
                    return None;
                }
                continue;
            }
            if roll < 22 {
                if self.composite(out).is_some() {
                    return None;
                }
                continue;
            }
            let Some((instr, family)) = self.plain() else { continue };
            if family == "div" && self.rng.chance(50) {
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

/// DF where paths meet: `None` for no path yet, `Some(None)` if the paths
/// disagree.
fn join_df(a: Option<Option<bool>>, b: Option<Option<bool>>) -> Option<Option<bool>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a == b { a } else { None }),
        (a, b) => a.or(b),
    }
}

/// DF after `i`, given DF before (POPF's is set by the step that made it).
fn df_after(i: &Instruction, df: Option<bool>) -> Option<bool> {
    match i.mnemonic() {
        iced_x86::Mnemonic::Cld => Some(false),
        iced_x86::Mnemonic::Std => Some(true),
        _ => df,
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
            Pointer { reg, lo: start, hi: start }
        })
        .collect();
    let index = if rng.chance(50) { pool.next().map(|r| (r, rng.below(0x40))) } else { None };
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

    let reserved =
        pointers.iter().map(|p| p.reg).chain(index.map(|(r, _)| r)).chain(fault_reg).fold(0u32, |m, r| m | 1 << r);
    let mut g = Gen {
        rng,
        df: Some(init.rflags & 0x400 != 0),
        pointers,
        index,
        fault_reg,
        reserved,
        fault_budget: u32::from(faulting),
        undef: 0,
        info: InstructionInfoFactory::new(),
        back_edges: Vec::new(),
    };

    let steps = 1 + g.rng.below(16) as usize;
    let mut out: Vec<Instruction> = Vec::with_capacity(2 * steps + 1);
    let mut starts = Vec::with_capacity(steps + 1);
    let mut jumps = Vec::new();
    let mut incoming: Vec<Option<u32>> = vec![None; steps + 1];
    let mut incoming_df: Vec<Option<Option<bool>>> = vec![None; steps + 1];
    let mut live = Some(0);
    let mut live_df = Some(g.df);
    for step in 0..steps {
        starts.push(out.len());
        live = join(live, incoming[step]);
        live_df = join_df(live_df, incoming_df[step]);
        // Dead code (after a JMP nothing jumps over) never runs: any state.
        g.undef = live.unwrap_or(0);
        g.df = live_df.flatten();
        let first = out.len();
        let df_before = g.df;
        let jump = g.step(&mut out, step, steps, &mut jumps);
        // A POPF step set g.df itself; CLD/STD are applied here.
        let mut df = if g.df != df_before { g.df } else { df_before };
        for i in &out[first..] {
            g.undef = flags::effect(i).apply(g.undef) & TRACKED;
            df = df_after(i, df);
        }
        g.df = df;
        let here = live.map(|_| g.undef);
        let here_df = live_df.map(|_| g.df);
        match jump {
            Some(j) => {
                incoming[j.target] = join(incoming[j.target], here);
                incoming_df[j.target] = join_df(incoming_df[j.target], here_df);
                live = if j.unconditional { None } else { here };
                live_df = if j.unconditional { None } else { here_df };
            }
            None => (live, live_df) = (here, here_df),
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
    for (at, target) in std::mem::take(&mut g.back_edges) {
        out[at].set_near_branch64(FAKE_IP + 16 * target as u64);
    }
    let code = encode_block(&out).unwrap_or_else(|| vec![0x0f, 0x0b]);
    TestCase { seed, code, init, data, stack }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::Mnemonic;

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
    fn jumps_go_forward_or_close_a_counted_loop() {
        let mut loops = 0;
        for seed in 0..2000 {
            let case = generate(seed);
            let instrs = case.instructions();
            for (k, i) in instrs.iter().enumerate().filter(|(_, i)| i.op0_kind() == OpKind::NearBranch64) {
                let t = i.near_branch64();
                assert!(instrs.iter().any(|j| j.ip() == t), "seed {seed}: mid-instruction");
                if t <= i.ip() {
                    // Backward: LOOPcc after `mov ecx, n` (n <= 4) and a
                    // body that doesn't write RCX.
                    assert!(matches!(i.mnemonic(), Mnemonic::Loop | Mnemonic::Loope | Mnemonic::Loopne), "seed {seed}");
                    let start = instrs.iter().position(|j| j.ip() == t).unwrap();
                    let init = &instrs[start - 1];
                    assert_eq!(init.code(), Code::Mov_r32_imm32, "seed {seed}");
                    assert!(init.op0_register() == Register::ECX && (1..=4).contains(&init.immediate32()));
                    assert!(instrs[start..k].iter().all(|j| !j.is_jcc_short_or_near() && !j.is_loop()));
                    loops += 1;
                }
            }
        }
        assert!(loops > 10, "only {loops} counted loops");
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
            assert!(p
                .instructions()
                .iter()
                .all(|i| i.op0_kind() != OpKind::NearBranch64 || i.near_branch64() <= CODE + p.terminator_offset()));
        }
    }

    #[test]
    fn no_reachable_instruction_reads_a_possibly_undefined_flag() {
        // Checked again on the final code: no instruction reads a flag that
        // may be undefined before it.
        for seed in 0..3000 {
            let case = generate(seed);
            let states = flags::flag_states(&case.code);
            for (k, (i, before)) in states.iter().enumerate() {
                let Some(undef) = before else { continue }; // dead code
                                                            // PUSHF's image has its undefined bits cleared by the next
                                                            // instruction, an AND to [rsp].
                let masked = matches!(i.mnemonic(), Mnemonic::Pushf | Mnemonic::Pushfq)
                    && states
                        .get(k + 1)
                        .is_some_and(|(n, _)| n.mnemonic() == Mnemonic::And && n.memory_base() == Register::RSP);
                if !masked {
                    assert_eq!(flags::effect(i).read & undef, 0, "seed {seed}: {i} reads an undefined flag");
                }
            }
        }
    }
}
