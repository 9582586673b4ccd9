//! The JIT against the interpreter: every IR operation on awkward values,
//! and the exits (faults with precise RIP, self-modifying code, helpers).

use std::mem::offset_of;

use super::{run, Jit};
use std::sync::atomic::AtomicU32;

use crate::tcg::context::CpuContext;
use crate::tcg::exception::{Exception, Result as ExcResult};
use crate::tcg::interp::{bin, ext, un, TbExit};
use crate::tcg::ir::{BinOp, Cond, ExitKind, ExtKind, Helper, Label, MemFlags, MemSize, Op, StateParts, Temp, UnOp};
use crate::tcg::mmu::CodePages;
use crate::tcg::state::X86State;
use crate::tcg::tb_cache::TranslationBlock;
use crate::tcg::test_support::{context, Flat};

const RAX: u32 = offset_of!(X86State, gpr) as u32;
const RCX: u32 = RAX + 8;
const RDX: u32 = RAX + 16;

const VALUES: [u64; 12] = [
    0,
    1,
    2,
    63,
    64,
    0x7f,
    0x80,
    0xffff_ffff,
    0x8000_0000_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
    0x1234_5678_9abc_def0,
];

/// A block compiled on its own (no chaining).
struct Compiled {
    jit: Jit,
    tb: TranslationBlock,
}

fn compile(ops: &[Op], num_temps: usize, labels: &[usize]) -> Compiled {
    let jit = Jit::new().expect("Cranelift supports this host");
    let tb = TranslationBlock::new(0, 0, 0, 0, vec![0], 1, ops.to_vec(), num_temps, labels.to_vec());
    assert!(tb.compile_with(&jit).is_some(), "block compiles");
    Compiled { jit, tb }
}

fn exec(state: &mut X86State, mem: &mut Flat, c: &Compiled) -> TbExit {
    let no_signals = AtomicU32::new(0);
    let code_pages = CodePages::with_pages(0);
    let mut ctx = context(state, mem, &code_pages);
    let block = c.tb.compile_with(&c.jit).expect("compiled");
    run(&c.jit, &mut ctx, &c.tb, block, no_signals.as_ptr(), None).exit
}

/// `RAX = f(RAX, RCX)` for one operation, operands loaded from the state so
/// that nothing is folded at compile time.
fn binary(op: impl Fn(Temp, Temp, Temp) -> Op) -> Compiled {
    let (a, b, d) = (Temp(0), Temp(1), Temp(2));
    let ops = vec![
        Op::InsnStart { pc: 0x100, len: 1 },
        Op::LdEnv { dst: a, offset: RAX, size: MemSize::B8 },
        Op::LdEnv { dst: b, offset: RCX, size: MemSize::B8 },
        op(d, a, b),
        Op::StEnv { src: d, offset: RAX, size: MemSize::B8 },
        Op::ExitTb { kind: ExitKind::Lookup },
    ];
    compile(&ops, 3, &[])
}

fn eval(code: &Compiled, a: u64, b: u64) -> u64 {
    let mut s = X86State::reset();
    s.gpr[0] = a;
    s.gpr[1] = b;
    assert_eq!(exec(&mut s, &mut Flat(vec![]), code), TbExit::Lookup);
    s.gpr[0]
}

#[test]
fn every_operation_matches_the_interpreter() {
    use BinOp::*;
    for op in [Add, Sub, Mul, And, Or, Xor, Shl, Shr, Sar, Rotl, Rotr, MulHu, MulHs, DivU, DivS, RemU, RemS] {
        let c = binary(|dst, a, b| Op::Bin { op, dst, a, b });
        for a in VALUES {
            for b in VALUES {
                assert_eq!(eval(&c, a, b), bin(op, a, b), "{op:?} {a:#x} {b:#x}");
            }
        }
    }
    use UnOp::*;
    for op in [Not, Neg, Bswap16, Bswap32, Bswap64, Ctz, Clz, Popcnt] {
        let c = binary(|dst, a, _| Op::Un { op, dst, a });
        for a in VALUES {
            assert_eq!(eval(&c, a, 0), un(op, a), "{op:?} {a:#x}");
        }
    }
    use ExtKind::*;
    for kind in [Zext8, Zext16, Zext32, Sext8, Sext16, Sext32] {
        let c = binary(|dst, a, _| Op::Ext { kind, dst, a });
        for a in VALUES {
            assert_eq!(eval(&c, a, 0), ext(kind, a), "{kind:?} {a:#x}");
        }
    }
    use Cond::*;
    for cond in [Eq, Ne, Lt, Le, Gt, Ge, Ltu, Leu, Gtu, Geu, TstEq, TstNe] {
        let set = binary(|dst, a, b| Op::SetCond { cond, dst, a, b });
        let select = binary(|dst, a, b| Op::Select { cond, dst, a, b, t: a, f: b });
        for a in VALUES {
            for b in VALUES {
                assert_eq!(eval(&set, a, b), u64::from(cond.eval(a, b)), "{cond:?} {a:#x} {b:#x}");
                assert_eq!(eval(&select, a, b), if cond.eval(a, b) { a } else { b }, "{cond:?}");
            }
        }
    }
}

#[test]
fn narrow_env_stores_keep_the_other_bytes() {
    let c = binary(|dst, a, _| Op::Mov { dst, src: a });
    let ops = vec![
        Op::InsnStart { pc: 0, len: 1 },
        Op::LdEnv { dst: Temp(0), offset: RCX, size: MemSize::B8 },
        Op::StEnv { src: Temp(0), offset: RAX + 1, size: MemSize::B1 },
        Op::StEnv { src: Temp(0), offset: RDX + 4, size: MemSize::B2 },
        Op::GotoTb { slot: 1, pc: 0x40 },
    ];
    let block = compile(&ops, 1, &[]);
    let mut s = X86State::reset();
    s.gpr[0] = 0x1111_2222_3333_4444;
    s.gpr[1] = 0xaabb;
    s.gpr[2] = u64::MAX;
    assert_eq!(exec(&mut s, &mut Flat(vec![]), &block), TbExit::Goto { slot: 1, pc: 0x40 });
    assert_eq!((s.gpr[0], s.gpr[2], s.rip), (0x1111_2222_3333_bb44, 0xffff_aabb_ffff_ffff, 0x40));
    assert_eq!(eval(&c, 5, 0), 5);
}

#[test]
fn a_loop_then_a_faulting_store_leaves_rip_at_the_store() {
    let (i, acc, one, addr) = (Temp(0), Temp(1), Temp(2), Temp(3));
    let ops = vec![
        Op::InsnStart { pc: 0x100, len: 3 },
        Op::LdEnv { dst: i, offset: RCX, size: MemSize::B8 },
        Op::Movi { dst: acc, imm: 0 },
        Op::Movi { dst: one, imm: 1 },
        Op::SetLabel { label: Label(0) },
        Op::Bin { op: BinOp::Add, dst: acc, a: acc, b: i },
        Op::Bin { op: BinOp::Sub, dst: i, a: i, b: one },
        Op::BrCond { cond: Cond::Ne, a: i, b: Temp(4), label: Label(0) },
        Op::StEnv { src: acc, offset: RAX, size: MemSize::B8 },
        // Temps live within one instruction: reload what the next one uses.
        Op::InsnStart { pc: 0x103, len: 4 },
        Op::LdEnv { dst: acc, offset: RAX, size: MemSize::B8 },
        Op::LdEnv { dst: addr, offset: RDX, size: MemSize::B8 },
        Op::Store { src: acc, addr, size: MemSize::B4, flags: MemFlags::NONE },
        Op::Load { dst: i, addr, size: MemSize::B2, sign: true, flags: MemFlags::NONE },
        Op::StEnv { src: i, offset: RCX, size: MemSize::B8 },
        Op::ExitTb { kind: ExitKind::Lookup },
    ];
    let block = compile(&ops, 5, &[4]);
    let mut s = X86State::reset();
    s.gpr[1] = 10;
    s.gpr[2] = 0x10_0000;
    let exit = exec(&mut s, &mut Flat(vec![0; 0x1000]), &block);
    assert_eq!(s.gpr[0], 55);
    assert_eq!(s.rip, 0x103, "RIP of the faulting instruction");
    assert!(matches!(exit, TbExit::Exception { exception, pc: 0x103, next_pc: 0x107 } if exception.vector == 14));

    // In bounds the store lands and the load reads it back sign-extended.
    let mut s = X86State::reset();
    s.gpr[1] = 400;
    s.gpr[2] = 0x10;
    let mut mem = Flat(vec![0; 0x1000]);
    assert_eq!(exec(&mut s, &mut mem, &block), TbExit::Lookup);
    assert_eq!(s.gpr[0], 80_200);
    assert_eq!(&mem.0[0x10..0x14], &80_200u32.to_le_bytes());
    assert_eq!(s.gpr[1], 80_200u64 as u16 as i16 as i64 as u64);
}

fn add_or_fault(_: &mut CpuContext<'_>, args: &[u64]) -> ExcResult<u64> {
    match args {
        [a, b] if *b != 0 => Ok(a + b),
        _ => Err(Exception::gp0()),
    }
}

static ADD_OR_FAULT: Helper = Helper {
    name: "add_or_fault",
    func: add_or_fault,
    may_fault: true,
    reads: StateParts::NONE,
    writes: StateParts::NONE,
};

#[test]
fn helper_calls_return_values_and_faults() {
    let (a, b, r) = (Temp(0), Temp(1), Temp(2));
    let ops = vec![
        Op::InsnStart { pc: 0x200, len: 2 },
        Op::LdEnv { dst: a, offset: RAX, size: MemSize::B8 },
        Op::LdEnv { dst: b, offset: RCX, size: MemSize::B8 },
        Op::Call { helper: &ADD_OR_FAULT, args: [a, b, a, a], nargs: 2, ret: Some(r) },
        Op::StEnv { src: r, offset: RDX, size: MemSize::B8 },
        Op::InsnStart { pc: 0x202, len: 2 },
        Op::ExitTb { kind: ExitKind::Raise(Exception::ud()) },
    ];
    let block = compile(&ops, 3, &[]);
    let mut s = X86State::reset();
    (s.gpr[0], s.gpr[1]) = (40, 2);
    let exit = exec(&mut s, &mut Flat(vec![]), &block);
    assert_eq!(s.gpr[2], 42);
    assert_eq!(exit, TbExit::Exception { exception: Exception::ud(), pc: 0x202, next_pc: 0x204 });
    let mut s = X86State::reset();
    (s.gpr[0], s.gpr[1]) = (40, 0);
    let exit = exec(&mut s, &mut Flat(vec![]), &block);
    assert_eq!((s.gpr[2], s.rip), (X86State::reset().gpr[2], 0x200), "nothing of the faulting instruction");
    assert_eq!(exit, TbExit::Exception { exception: Exception::gp0(), pc: 0x200, next_pc: 0x202 });
}
