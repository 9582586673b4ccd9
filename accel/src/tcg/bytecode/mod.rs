//! The interpreter's own form of a block: the IR of [`super::ir`] compiled
//! once, when the block is built, into compact 16-byte ops that are cheaper
//! to dispatch, and fewer of them:
//!
//! - `InsnStart` and `SetLabel` vanish: faulting ops carry the index of
//!   their guest instruction (a side table holds its pc and length), and
//!   branches jump to op indexes.
//! - The self-modifying-code check runs only after guest instructions that
//!   can write memory (a store or a helper call), not at every instruction.
//! - Constants are folded: a `Movi` feeding an arithmetic op, a comparison,
//!   a state or memory store becomes that op's immediate, and a `Movi`
//!   nobody reads any more is dropped; operations on constants are done here.
//! - Copies vanish: `Mov` and identities (`x + 0`, `x << 0`…) make the
//!   destination another name for the source, and a full-width state load
//!   of a register the block stored earlier reads the stored value instead
//!   (each guest instruction's temps get slots of their own, so values
//!   outlive their instruction).
//! - The commonest binary operations and full-width state accesses have ops
//!   of their own, saving a second dispatch on the operation.
//!
//! The IR stays the contract (and what a JIT compiles); this is only how the
//! interpreter runs it. [`super::interp::execute`] goes through here too, so
//! every interpreter test exercises this form.

mod compile;
mod dse;
#[cfg(test)]
mod tests;

pub use compile::compile;

use crate::tcg::context::CpuContext;
use crate::tcg::exception::Exception;
use crate::tcg::interp::{bin, ext, guest_load, guest_store, ld_env, st_env, st_env_raw, un, TbExit};
use crate::tcg::ir::{BinOp, Cond, ExtKind, Helper, MemFlags, MemSize, UnOp, MAX_HELPER_ARGS};
use crate::tcg::state::X86State;

/// A temp index (blocks have far fewer than 65536 temps; checked).
pub(super) type T = u16;

/// One compiled op. Kept to 16 bytes.
#[derive(Debug, Clone, Copy)]
pub(super) enum X {
    Movi {
        d: T,
        imm: u64,
    },
    Mov {
        d: T,
        s: T,
    },
    Add {
        d: T,
        a: T,
        b: T,
    },
    Sub {
        d: T,
        a: T,
        b: T,
    },
    And {
        d: T,
        a: T,
        b: T,
    },
    Or {
        d: T,
        a: T,
        b: T,
    },
    Xor {
        d: T,
        a: T,
        b: T,
    },
    Bin {
        op: BinOp,
        d: T,
        a: T,
        b: T,
    },
    AddI {
        d: T,
        a: T,
        imm: u64,
    },
    AndI {
        d: T,
        a: T,
        imm: u64,
    },
    ShlI {
        d: T,
        a: T,
        imm: u8,
    },
    ShrI {
        d: T,
        a: T,
        imm: u8,
    },
    SarI {
        d: T,
        a: T,
        imm: u8,
    },
    BinI {
        op: BinOp,
        d: T,
        a: T,
        imm: u64,
    },
    Un {
        op: UnOp,
        d: T,
        a: T,
    },
    Ext {
        kind: ExtKind,
        d: T,
        a: T,
    },
    SetCond {
        cond: Cond,
        d: T,
        a: T,
        b: T,
    },
    SetCondI {
        cond: Cond,
        d: T,
        a: T,
        imm: i32,
    },
    Select {
        cond: Cond,
        d: T,
        a: T,
        b: T,
        t: T,
        f: T,
    },
    LdEnv64 {
        d: T,
        off: u32,
    },
    LdEnv {
        d: T,
        off: u32,
        size: MemSize,
    },
    StEnv64 {
        s: T,
        off: u32,
    },
    StEnv {
        s: T,
        off: u32,
        size: MemSize,
    },
    StEnvI {
        off: u32,
        size: MemSize,
        imm: u64,
    },
    Load {
        d: T,
        addr: T,
        insn: u16,
        size: MemSize,
        sign: bool,
        flags: MemFlags,
    },
    Store {
        s: T,
        addr: T,
        insn: u16,
        size: MemSize,
        flags: MemFlags,
    },
    StoreI {
        imm: u64,
        addr: T,
        insn: u16,
        size: MemSize,
        flags: MemFlags,
    },
    /// A helper call: `site` indexes [`Code::calls`].
    Call {
        site: u16,
        insn: u16,
    },
    Br {
        to: u32,
    },
    BrCond {
        cond: Cond,
        a: T,
        b: T,
        to: u32,
    },
    BrCondI {
        cond: Cond,
        a: T,
        imm: i32,
        to: u32,
    },
    /// Leaves the block at guest instruction `insn` if a store since the
    /// block started hit a page holding translated code.
    SmcCheck {
        insn: u16,
    },
    Exit {
        kind: ExitKind2,
    },
    Raise {
        insn: u16,
        exc: u16,
    },
    GotoTb {
        slot: u8,
        pc: u64,
    },
}

const _: () = assert!(std::mem::size_of::<X>() == 16);

/// The non-exception exits (exceptions are [`X::Raise`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExitKind2 {
    Lookup,
    Halt,
}

/// A helper call's operands.
#[derive(Debug, Clone)]
pub(super) struct CallSite {
    pub(super) helper: &'static Helper,
    pub(super) args: [T; MAX_HELPER_ARGS],
    pub(super) nargs: u8,
    pub(super) ret: Option<T>,
}

/// A compiled block.
#[derive(Debug, Clone, Default)]
pub struct Code {
    pub(super) ops: Vec<X>,
    /// pc and length of each guest instruction, by index.
    pub(super) insns: Vec<(u64, u8)>,
    pub(super) calls: Vec<CallSite>,
    pub(super) raises: Vec<Exception>,
    pub(super) num_temps: usize,
}

impl Code {
    pub fn num_temps(&self) -> usize {
        self.num_temps
    }

    /// The pc of guest instruction `insn` (`start_rip` if out of range).
    pub(super) fn insn_pc(&self, insn: u16, start_rip: u64) -> u64 {
        self.insns.get(usize::from(insn)).map_or(start_rip, |&(pc, _)| pc)
    }

    /// The exit for `exception` raised by guest instruction `insn`, with
    /// RIP set to it (the IR's precise-exception rule: nothing of it was
    /// committed).
    pub(super) fn fault(&self, state: &mut X86State, start_rip: u64, exception: Exception, insn: u16) -> TbExit {
        let (pc, len) = self.insns.get(usize::from(insn)).copied().unwrap_or((start_rip, 0));
        state.rip = pc;
        TbExit::Exception { exception, pc, next_pc: pc.wrapping_add(u64::from(len)) }
    }

    /// The exception a `Raise` op with index `exc` raises.
    pub(super) fn raised(&self, exc: u16) -> Exception {
        self.raises.get(usize::from(exc)).copied().unwrap_or_else(Exception::ud)
    }

    /// Guest instructions in the block.
    pub fn insn_count(&self) -> usize {
        self.insns.len()
    }

    /// Compiled ops (statistics).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// One line per op (debugging).
    pub fn dump(&self) -> String {
        self.ops.iter().enumerate().map(|(i, x)| format!("{i:4}: {x:?}\n")).collect()
    }
}

/// Runs compiled `code` until the block exits. `temps` must hold at least
/// `code.num_temps()` values.
pub fn run(ctx: &mut CpuContext<'_>, code: &Code, temps: &mut [u64]) -> TbExit {
    let start_rip = ctx.state.rip;
    let code_generation = ctx.code_pages.generation();
    if temps.len() < code.num_temps {
        log::error!("TCG: {} temps for a block needing {}", temps.len(), code.num_temps);
        return TbExit::Lookup;
    }
    let ops = &code.ops[..];
    let mut i = 0usize;
    macro_rules! t {
        ($t:expr) => {
            temps[usize::from($t)]
        };
    }
    while let Some(&x) = ops.get(i) {
        i += 1;
        match x {
            X::Movi { d, imm } => t!(d) = imm,
            X::Mov { d, s } => t!(d) = t!(s),
            X::Add { d, a, b } => t!(d) = t!(a).wrapping_add(t!(b)),
            X::Sub { d, a, b } => t!(d) = t!(a).wrapping_sub(t!(b)),
            X::And { d, a, b } => t!(d) = t!(a) & t!(b),
            X::Or { d, a, b } => t!(d) = t!(a) | t!(b),
            X::Xor { d, a, b } => t!(d) = t!(a) ^ t!(b),
            X::Bin { op, d, a, b } => t!(d) = bin(op, t!(a), t!(b)),
            X::AddI { d, a, imm } => t!(d) = t!(a).wrapping_add(imm),
            X::AndI { d, a, imm } => t!(d) = t!(a) & imm,
            X::ShlI { d, a, imm } => t!(d) = t!(a) << imm,
            X::ShrI { d, a, imm } => t!(d) = t!(a) >> imm,
            X::SarI { d, a, imm } => t!(d) = ((t!(a) as i64) >> imm) as u64,
            X::BinI { op, d, a, imm } => t!(d) = bin(op, t!(a), imm),
            X::Un { op, d, a } => t!(d) = un(op, t!(a)),
            X::Ext { kind, d, a } => t!(d) = ext(kind, t!(a)),
            X::SetCond { cond, d, a, b } => t!(d) = u64::from(cond.eval(t!(a), t!(b))),
            X::SetCondI { cond, d, a, imm } => t!(d) = u64::from(cond.eval(t!(a), imm as i64 as u64)),
            X::Select { cond, d, a, b, t, f } => t!(d) = if cond.eval(t!(a), t!(b)) { t!(t) } else { t!(f) },
            X::LdEnv64 { d, off } => t!(d) = ld_env(ctx.state, off, MemSize::B8),
            X::LdEnv { d, off, size } => t!(d) = ld_env(ctx.state, off, size),
            X::StEnv64 { s, off } => st_env_raw(ctx.state, off, MemSize::B8, t!(s)),
            X::StEnv { s, off, size } => st_env(ctx.state, off, size, t!(s)),
            X::StEnvI { off, size, imm } => st_env_raw(ctx.state, off, size, imm),
            X::Load { d, addr, insn: n, size, sign, flags } => match guest_load(ctx, t!(addr), size, sign, flags) {
                Ok(v) => t!(d) = v,
                Err(e) => return code.fault(ctx.state, start_rip, e, n),
            },
            X::Store { s, addr, insn: n, size, flags } => {
                if let Err(e) = guest_store(ctx, t!(addr), size, t!(s), flags) {
                    return code.fault(ctx.state, start_rip, e, n);
                }
            }
            X::StoreI { imm, addr, insn: n, size, flags } => {
                if let Err(e) = guest_store(ctx, t!(addr), size, imm, flags) {
                    return code.fault(ctx.state, start_rip, e, n);
                }
            }
            X::Call { site, insn: n } => {
                let Some(c) = code.calls.get(usize::from(site)) else { return TbExit::Lookup };
                let nargs = usize::from(c.nargs).min(MAX_HELPER_ARGS);
                let mut values = [0u64; MAX_HELPER_ARGS];
                for (v, a) in values.iter_mut().zip(&c.args[..nargs]) {
                    *v = t!(*a);
                }
                match (c.helper.func)(ctx, &values[..nargs]) {
                    Ok(v) => {
                        if let Some(r) = c.ret {
                            t!(r) = v;
                        }
                    }
                    Err(e) => return code.fault(ctx.state, start_rip, e, n),
                }
            }
            X::Br { to } => i = to as usize,
            X::BrCond { cond, a, b, to } => {
                if cond.eval(t!(a), t!(b)) {
                    i = to as usize;
                }
            }
            X::BrCondI { cond, a, imm, to } => {
                if cond.eval(t!(a), imm as i64 as u64) {
                    i = to as usize;
                }
            }
            X::SmcCheck { insn: n } => {
                if ctx.code_pages.generation() != code_generation {
                    ctx.state.rip = code.insn_pc(n, start_rip);
                    return TbExit::Lookup;
                }
            }
            X::Exit { kind: ExitKind2::Lookup } => return TbExit::Lookup,
            X::Exit { kind: ExitKind2::Halt } => return TbExit::Halt,
            X::Raise { insn: n, exc } => return code.fault(ctx.state, start_rip, code.raised(exc), n),
            X::GotoTb { slot, pc } => {
                ctx.state.rip = pc;
                return TbExit::Goto { slot, pc };
            }
        }
    }
    TbExit::Lookup
}
