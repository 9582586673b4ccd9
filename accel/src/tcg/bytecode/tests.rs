//! The compiled form (and the JIT's host code) against a plain reference
//! interpreter of the IR, on random blocks that keep the IR's contract (a temp is read only where
//! every path defined it in the same guest instruction).

use std::mem::offset_of;

use super::{compile, run};
use crate::tcg::context::CpuContext;
use crate::tcg::exception::Exception;
use crate::tcg::interp::{bin, ext, ld_env, st_env, stack_fault, un, validate, TbExit};
use crate::tcg::ir::{
    BinOp, Cond, ExitKind, ExtKind, Helper, Label, MemFlags, MemSize, Op, StateParts, Temp, UnOp, MAX_HELPER_ARGS,
};
use crate::tcg::mmu::{Access, CodePages, Privilege};
use crate::tcg::state::X86State;
use crate::tcg::tb_cache::TranslationBlock;
use crate::tcg::test_support::{context, Flat};

const MEM_SIZE: usize = 0x2000;

/// Writes R15 (a state write the compiler must see); #GP on an odd arg 0.
fn helper_mix(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let a = args.first().copied().unwrap_or(0);
    if a & 1 == 1 && a & 0x100 != 0 {
        return Err(Exception::gp0());
    }
    let v = args.iter().fold(0x9e37_79b9u64, |h, x| h.rotate_left(7) ^ x);
    ctx.state.gpr[15] = ctx.state.gpr[15].wrapping_add(v);
    Ok(v)
}

/// Reads only.
fn helper_peek(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    Ok(ctx.state.gpr[3] ^ args.first().copied().unwrap_or(0))
}

static MIX: Helper =
    Helper { name: "mix", func: helper_mix, may_fault: true, reads: StateParts::ALL, writes: StateParts::GPRS };
static PEEK: Helper =
    Helper { name: "peek", func: helper_peek, may_fault: false, reads: StateParts::GPRS, writes: StateParts::NONE };

/// The IR's semantics, op by op (no self-modifying-code check: the tests'
/// code generation never moves).
fn reference(ctx: &mut CpuContext<'_>, ops: &[Op], label_pos: &[usize], temps: &mut [u64]) -> TbExit {
    let (mut pc, mut len) = (ctx.state.rip, 0u8);
    let fault = |e: Exception, pc: u64, len: u8| TbExit::Exception { exception: e, pc, next_pc: pc + u64::from(len) };
    let mut i = 0;
    while let Some(op) = ops.get(i) {
        i += 1;
        let t = |x: Temp| x.0 as usize;
        match *op {
            Op::InsnStart { pc: p, len: l } => (pc, len) = (p, l),
            Op::Movi { dst, imm } => temps[t(dst)] = imm,
            Op::Mov { dst, src } => temps[t(dst)] = temps[t(src)],
            Op::Bin { op, dst, a, b } => temps[t(dst)] = bin(op, temps[t(a)], temps[t(b)]),
            Op::Un { op, dst, a } => temps[t(dst)] = un(op, temps[t(a)]),
            Op::Ext { kind, dst, a } => temps[t(dst)] = ext(kind, temps[t(a)]),
            Op::SetCond { cond, dst, a, b } => temps[t(dst)] = u64::from(cond.eval(temps[t(a)], temps[t(b)])),
            Op::Select { cond, dst, a, b, t: x, f } => {
                temps[t(dst)] = if cond.eval(temps[t(a)], temps[t(b)]) { temps[t(x)] } else { temps[t(f)] }
            }
            Op::LdEnv { dst, offset, size } => temps[t(dst)] = ld_env(ctx.state, offset, size),
            Op::StEnv { src, offset, size } => st_env(ctx.state, offset, size, temps[t(src)]),
            Op::Load { dst, addr, size, sign, flags } => {
                match ctx.mem.read(ctx.state, temps[t(addr)], size.bytes(), Access::Read, Privilege::Current) {
                    Ok(v) => {
                        let shift = 64 - 8 * size.bytes() as u32;
                        temps[t(dst)] = if sign { (((v << shift) as i64) >> shift) as u64 } else { v };
                    }
                    Err(e) => {
                        ctx.state.rip = pc;
                        return fault(stack_fault(e, flags, temps[t(addr)], size.bytes()), pc, len);
                    }
                }
            }
            Op::Store { src, addr, size, flags } => {
                let (a, v) = (temps[t(addr)], temps[t(src)]);
                if let Err(e) = ctx.mem.write(ctx.state, a, size.bytes(), v, Privilege::Current) {
                    ctx.state.rip = pc;
                    return fault(stack_fault(e, flags, a, size.bytes()), pc, len);
                }
            }
            Op::Call { helper, ref args, nargs, ret } => {
                let values: Vec<u64> = args[..usize::from(nargs)].iter().map(|a| temps[t(*a)]).collect();
                match (helper.func)(ctx, &values) {
                    Ok(v) => {
                        if let Some(r) = ret {
                            temps[t(r)] = v;
                        }
                    }
                    Err(e) => {
                        ctx.state.rip = pc;
                        return fault(e, pc, len);
                    }
                }
            }
            Op::Br { label } => i = label_pos[label.0 as usize],
            Op::BrCond { cond, a, b, label } => {
                if cond.eval(temps[t(a)], temps[t(b)]) {
                    i = label_pos[label.0 as usize];
                }
            }
            Op::SetLabel { .. } => {}
            Op::ExitTb { kind: ExitKind::Lookup } => return TbExit::Lookup,
            Op::ExitTb { kind: ExitKind::Halt } => return TbExit::Halt,
            Op::ExitTb { kind: ExitKind::Raise(e) } => {
                ctx.state.rip = pc;
                return fault(e, pc, len);
            }
            Op::GotoTb { slot, pc } => {
                ctx.state.rip = pc;
                return TbExit::Goto { slot, pc };
            }
        }
    }
    TbExit::Lookup
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

const TEMPS: u32 = 6;
const GPR0: u32 = offset_of!(X86State, gpr) as u32;
const CC_OP: u32 = offset_of!(X86State, cc_op) as u32;
const CC_DST: u32 = offset_of!(X86State, cc_dst) as u32;
const SIZES: [MemSize; 4] = [MemSize::B1, MemSize::B2, MemSize::B4, MemSize::B8];
const BINOPS: [BinOp; 17] = [
    BinOp::Add,
    BinOp::Sub,
    BinOp::Mul,
    BinOp::And,
    BinOp::Or,
    BinOp::Xor,
    BinOp::Shl,
    BinOp::Shr,
    BinOp::Sar,
    BinOp::Rotl,
    BinOp::Rotr,
    BinOp::MulHu,
    BinOp::MulHs,
    BinOp::DivU,
    BinOp::DivS,
    BinOp::RemU,
    BinOp::RemS,
];
const CONDS: [Cond; 12] = [
    Cond::Eq,
    Cond::Ne,
    Cond::Lt,
    Cond::Le,
    Cond::Gt,
    Cond::Ge,
    Cond::Ltu,
    Cond::Leu,
    Cond::Gtu,
    Cond::Geu,
    Cond::TstEq,
    Cond::TstNe,
];

/// A random block of a few instructions, its temp count and label positions.
fn random_block(r: &mut Rng) -> (Vec<Op>, usize, Vec<usize>) {
    let mut ops = Vec::new();
    let mut labels = Vec::new();
    for insn in 0..1 + r.below(8) {
        ops.push(Op::InsnStart { pc: 0x1000 + 4 * insn as u64, len: 4 });
        let mut defined: Vec<Temp> = Vec::new();
        // Open labels and the temps defined when their branch was taken.
        let mut open: Vec<(Label, Vec<Temp>)> = Vec::new();
        for _ in 0..1 + r.below(10) {
            let dst = Temp(r.below(TEMPS as usize) as u32);
            let have = !defined.is_empty();
            let src = |r: &mut Rng, defined: &[Temp]| defined[r.below(defined.len())];
            let small =
                [0u64, 1, 2, 3, 8, 63, 64, u64::MAX, 0x7f, 0xff, 0x7fff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff];
            let op = match r.below(if have { 16 } else { 3 }) {
                0 => Op::Movi { dst, imm: if r.below(2) == 0 { r.pick(&small) } else { r.next() } },
                1 => Op::LdEnv { dst, offset: GPR0 + 8 * r.below(16) as u32, size: r.pick(&SIZES) },
                2 => Op::LdEnv { dst, offset: CC_DST, size: MemSize::B8 },
                3 => Op::Mov { dst, src: src(r, &defined) },
                4 | 5 => Op::Bin { op: r.pick(&BINOPS), dst, a: src(r, &defined), b: src(r, &defined) },
                6 => Op::Un {
                    op: r.pick(&[UnOp::Not, UnOp::Neg, UnOp::Bswap32, UnOp::Ctz, UnOp::Popcnt]),
                    dst,
                    a: src(r, &defined),
                },
                7 => Op::Ext {
                    kind: r.pick(&[ExtKind::Zext8, ExtKind::Zext16, ExtKind::Sext16, ExtKind::Zext32, ExtKind::Sext32]),
                    dst,
                    a: src(r, &defined),
                },
                8 => Op::SetCond { cond: r.pick(&CONDS), dst, a: src(r, &defined), b: src(r, &defined) },
                9 => Op::Select {
                    cond: r.pick(&CONDS),
                    dst,
                    a: src(r, &defined),
                    b: src(r, &defined),
                    t: src(r, &defined),
                    f: src(r, &defined),
                },
                10 => {
                    let gpr = GPR0 + 8 * r.below(16) as u32;
                    let offset = r.pick(&[gpr, gpr, CC_DST, CC_OP]);
                    let size = if offset == CC_OP { MemSize::B8 } else { r.pick(&SIZES) };
                    Op::StEnv { src: src(r, &defined), offset, size }
                }
                11 => {
                    // Mostly in range, sometimes a #PF.
                    let a = Temp(r.below(TEMPS as usize) as u32);
                    let addr = if r.below(8) == 0 { 0x10_0000 } else { 0x100 + 8 * r.below(0x300) as u64 };
                    ops.push(Op::Movi { dst: a, imm: addr });
                    defined.push(a);
                    let size = r.pick(&SIZES);
                    if r.below(2) == 0 {
                        Op::Load { dst, addr: a, size, sign: r.below(2) == 0, flags: MemFlags::NONE }
                    } else {
                        Op::Store { src: src(r, &defined), addr: a, size, flags: MemFlags::NONE }
                    }
                }
                12 => {
                    let n = r.below(MAX_HELPER_ARGS + 1);
                    let mut args = [Temp(0); MAX_HELPER_ARGS];
                    args[..n].iter_mut().for_each(|a| *a = src(r, &defined));
                    let helper = if r.below(2) == 0 { &MIX } else { &PEEK };
                    Op::Call { helper, args, nargs: n as u8, ret: (r.below(2) == 0).then_some(dst) }
                }
                13 | 14 => {
                    let label = Label(labels.len() as u32);
                    labels.push(usize::MAX);
                    open.push((label, defined.clone()));
                    Op::BrCond { cond: r.pick(&CONDS), a: src(r, &defined), b: src(r, &defined), label }
                }
                _ => match open.pop() {
                    Some((label, at_branch)) => {
                        labels[label.0 as usize] = ops.len();
                        defined = at_branch;
                        Op::SetLabel { label }
                    }
                    None => Op::Movi { dst, imm: r.next() },
                },
            };
            let defines = match &op {
                Op::Call { ret, .. } => *ret,
                Op::Store { .. } | Op::StEnv { .. } | Op::BrCond { .. } | Op::SetLabel { .. } => None,
                _ => Some(dst),
            };
            ops.push(op);
            if let Some(d) = defines {
                defined.push(d);
            }
        }
        while let Some((label, _)) = open.pop() {
            labels[label.0 as usize] = ops.len();
            ops.push(Op::SetLabel { label });
        }
    }
    ops.push(match r.below(3) {
        0 => Op::ExitTb { kind: ExitKind::Lookup },
        1 => Op::ExitTb { kind: ExitKind::Raise(Exception::ud()) },
        _ => Op::GotoTb { slot: 1, pc: 0x4000 },
    });
    (ops, TEMPS as usize, labels)
}

fn start_state(r: &mut Rng) -> X86State {
    let mut s = X86State::reset();
    for g in s.gpr.iter_mut() {
        *g = if r.below(3) == 0 { r.below(0x1000) as u64 } else { r.next() };
    }
    s.rip = 0x1000;
    s
}

#[test]
fn compiled_blocks_and_host_code_match_the_reference_interpreter() {
    let mut r = Rng(0x1234_5678_9abc_def1);
    let code_pages = CodePages::with_pages(0);
    let jit = crate::tcg::jit::Jit::new().expect("Cranelift supports this host");
    let no_signals = std::sync::atomic::AtomicU32::new(0);
    for case in 0..100_000 {
        let (ops, num_temps, labels) = random_block(&mut r);
        validate(&ops, num_temps, &labels).unwrap_or_else(|e| panic!("case {case}: generator bug: {e}"));
        let state = start_state(&mut r);
        let mem = Flat((0..MEM_SIZE).map(|i| (i * 7 + case) as u8).collect());

        let (mut s1, mut m1) = (state.clone(), mem.clone());
        let mut ctx = context(&mut s1, &mut m1, &code_pages);
        let want = reference(&mut ctx, &ops, &labels, &mut vec![0; num_temps]);

        let code = compile(&ops, num_temps, &labels);
        let (mut s2, mut m2) = (state.clone(), mem.clone());
        let mut ctx = context(&mut s2, &mut m2, &code_pages);
        let got = run(&mut ctx, &code, &mut vec![0; code.num_temps()]);

        let ctx_msg = || format!("case {case}\nIR:\n{ops:#?}\ncompiled:\n{}", code.dump());
        assert_eq!(got, want, "exit, {}", ctx_msg());
        assert_eq!(s2.gpr, s1.gpr, "GPRs, {}", ctx_msg());
        assert_eq!((s2.rip, s2.cc_op, s2.cc_dst), (s1.rip, s1.cc_op, s1.cc_dst), "RIP/cc, {}", ctx_msg());
        assert!(m2 == m1, "memory, {}", ctx_msg());

        // Every 8th block also as host code from the JIT.
        if case % 8 == 0 {
            let tb = TranslationBlock::new(state.rip, 0, 0, 0, vec![0], 1, ops.clone(), num_temps, labels.clone());
            let block = tb.compile_with(&jit).unwrap_or_else(|| panic!("JIT declined, {}", ctx_msg()));
            let (mut s3, mut m3) = (state.clone(), mem.clone());
            let mut ctx = context(&mut s3, &mut m3, &code_pages);
            let jitted = crate::tcg::jit::run(&jit, &mut ctx, &tb, block, no_signals.as_ptr(), None).exit;
            assert_eq!(jitted, want, "JIT exit, {}", ctx_msg());
            assert_eq!(s3.gpr, s1.gpr, "JIT GPRs, {}", ctx_msg());
            assert_eq!((s3.rip, s3.cc_op, s3.cc_dst), (s1.rip, s1.cc_op, s1.cc_dst), "JIT RIP/cc, {}", ctx_msg());
            assert!(m3 == m1, "JIT memory, {}", ctx_msg());
        }
    }
}

#[test]
fn folding_and_forwarding_shrink_a_typical_block() {
    let t = Temp;
    // add rax, 8; mov rbx, rax; (the second reads RAX from the first's slot)
    let ops = vec![
        Op::InsnStart { pc: 0, len: 4 },
        Op::LdEnv { dst: t(0), offset: GPR0, size: MemSize::B8 },
        Op::Movi { dst: t(1), imm: 8 },
        Op::Bin { op: BinOp::Add, dst: t(2), a: t(0), b: t(1) },
        Op::StEnv { src: t(2), offset: GPR0, size: MemSize::B8 },
        Op::InsnStart { pc: 4, len: 3 },
        Op::LdEnv { dst: t(0), offset: GPR0, size: MemSize::B8 },
        Op::Mov { dst: t(1), src: t(0) },
        Op::StEnv { src: t(1), offset: GPR0 + 24, size: MemSize::B8 },
        Op::ExitTb { kind: ExitKind::Lookup },
    ];
    let code = compile(&ops, 3, &[]);
    // LdEnv64, AddI, StEnv64, StEnv64, Exit (+ the final fallback Exit).
    assert_eq!(code.len(), 6, "{}", code.dump());
}
