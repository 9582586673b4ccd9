//! IR → compiled ops (see the parent module for what changes).
//!
//! One forward pass over the IR with what is statically known about each
//! slot (a constant, another slot it equals, the `Movi` that defined it) and
//! about the state (which slot or constant each 8-byte field last received
//! in this block), then a pass that drops the ops nobody needs and points
//! branches at op indexes.
//!
//! Soundness rests on straight-line order: knowledge is dropped at every
//! label (control may arrive from elsewhere) and made real at every branch
//! (pending copies are emitted, pending constants kept), and on the IR's
//! contract that a temp does not live beyond its guest instruction.

use std::mem::offset_of;

use super::{CallSite, Code, ExitKind2, T, X};
use crate::tcg::exception::Exception;
use crate::tcg::flags::CcOp;
use crate::tcg::interp::{bin, ext, un};
use crate::tcg::ir::{BinOp, Cond, ExitKind, ExtKind, MemSize, Op, StateParts, Temp, MAX_HELPER_ARGS};
use crate::tcg::state::X86State;

const CC_OP_OFFSET: u32 = offset_of!(X86State, cc_op) as u32;

/// What is statically known about a slot.
#[derive(Clone, Copy, Default)]
struct SlotInfo {
    /// Its value, while no label has been crossed since its `Movi`.
    konst: Option<u64>,
    /// The emitted `Movi` that defined it (kept only if the slot itself,
    /// not the folded constant, is read).
    movi: Option<usize>,
    /// It holds the same value as this slot, and no op was emitted to copy
    /// it: reads go to that slot instead.
    alias: Option<T>,
    /// Its value fits in this many low bits (0: unknown), so zero-extending
    /// it from as many bits or more is a copy.
    bits: u8,
}

/// What a state field last received in this block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Known {
    Slot(T),
    Const(u64),
}

struct Compiler {
    out: Vec<X>,
    needed: Vec<bool>,
    slots: Vec<SlotInfo>,
    /// The slots whose `alias` is set (so a clobber scans few).
    aliased: Vec<usize>,
    /// State offset → its value, for full-width fields stored in this block.
    env: Vec<(u32, Known)>,
    /// Per IR label: its position in `out` once set.
    label_at: Vec<usize>,
    /// IR labels some branch targets (others need no merge).
    targeted: Vec<bool>,
    /// Branches to patch: (position in `out`, IR label).
    fixups: Vec<(usize, usize)>,
    code: Code,
    insn: u16,
    /// Slots of the current guest instruction: `base .. base + stride`.
    base: usize,
    stride: usize,
    /// The current guest instruction can write memory (store or helper).
    may_store: bool,
}

/// `cond(a, b)` as `cond'(b, a)`.
fn swapped(cond: Cond) -> Cond {
    match cond {
        Cond::Lt => Cond::Gt,
        Cond::Gt => Cond::Lt,
        Cond::Le => Cond::Ge,
        Cond::Ge => Cond::Le,
        Cond::Ltu => Cond::Gtu,
        Cond::Gtu => Cond::Ltu,
        Cond::Leu => Cond::Geu,
        Cond::Geu => Cond::Leu,
        c => c,
    }
}

fn commutative(op: BinOp) -> bool {
    matches!(op, BinOp::Add | BinOp::Mul | BinOp::And | BinOp::Or | BinOp::Xor | BinOp::MulHu | BinOp::MulHs)
}

/// Whether `x op imm` is `x`.
fn identity(op: BinOp, imm: u64) -> bool {
    match op {
        BinOp::Add | BinOp::Sub | BinOp::Or | BinOp::Xor => imm == 0,
        BinOp::Shl | BinOp::Shr | BinOp::Sar | BinOp::Rotl | BinOp::Rotr => imm & 63 == 0,
        BinOp::And => imm == u64::MAX,
        BinOp::Mul => imm == 1,
        _ => false,
    }
}

/// A constant that survives as a sign-extended 32-bit immediate.
fn imm32(v: u64) -> Option<i32> {
    i32::try_from(v as i64).ok()
}

/// A comparison's operands after folding.
enum Cmp {
    Known(bool),
    Imm(Cond, T, i32),
    Slots(Cond, T, T),
}

impl Compiler {
    fn slot(&self, t: Temp) -> usize {
        self.base + t.0 as usize
    }

    fn emit(&mut self, x: X) -> usize {
        self.out.push(x);
        self.needed.push(true);
        self.out.len() - 1
    }

    /// Resolves `t` for reading as a slot: its alias, and keeps the `Movi`
    /// that gives it its value.
    fn read(&mut self, t: Temp) -> T {
        let s = self.slot(t);
        self.read_slot(s)
    }

    fn read_slot(&mut self, s: usize) -> T {
        let info = self.slots[s];
        if let Some(a) = info.alias {
            return self.read_slot(usize::from(a));
        }
        if let Some(i) = info.movi {
            self.needed[i] = true;
        }
        // `compile` checked every slot index fits.
        s as T
    }

    /// How many low bits `t`'s value may use (64 if unknown).
    fn bits(&self, t: Temp) -> u32 {
        let info = &self.slots[self.slot(t)];
        let info = info.alias.map_or(info, |a| &self.slots[usize::from(a)]);
        match (info.konst, info.bits) {
            (Some(k), _) => 64 - k.leading_zeros(),
            (None, 0) => 64,
            (None, b) => u32::from(b),
        }
    }

    /// Records that slot `d` (just defined) fits in `bits` bits.
    fn set_bits(&mut self, d: T, bits: u32) {
        if bits < 64 {
            self.slots[usize::from(d)].bits = bits.max(1) as u8;
        }
    }

    fn konst(&self, t: Temp) -> Option<u64> {
        let info = &self.slots[self.slot(t)];
        match info.alias {
            Some(a) => self.slots[usize::from(a)].konst,
            None => info.konst,
        }
    }

    /// Slot `s` is about to be overwritten: slots that are other names for
    /// its old value get real copies first, and the state no longer
    /// "contains" it.
    fn clobber(&mut self, s: usize) {
        let mut i = 0;
        while i < self.aliased.len() {
            let other = self.aliased[i];
            if other == s {
                self.aliased.swap_remove(i);
            } else if self.slots[other].alias == Some(s as T) {
                self.aliased.swap_remove(i);
                self.slots[other].alias = None;
                let src = self.read_slot(s);
                self.emit(X::Mov { d: other as T, s: src });
            } else {
                i += 1;
            }
        }
        self.env.retain(|&(_, k)| k != Known::Slot(s as T));
        self.slots[s] = SlotInfo::default();
    }

    /// Slot `d` (just defined) is another name for resolved slot `s`.
    fn set_alias(&mut self, d: T, s: T) {
        if d != s {
            self.slots[usize::from(d)].alias = Some(s);
            self.aliased.push(usize::from(d));
        }
    }

    /// `dst` gets a value that isn't a known constant or copy.
    fn def(&mut self, dst: Temp) -> T {
        let s = self.slot(dst);
        self.clobber(s);
        s as T
    }

    fn def_const(&mut self, dst: Temp, imm: u64) {
        let d = self.def(dst);
        let i = self.emit(X::Movi { d, imm });
        // Dropped unless something reads the slot itself.
        self.needed[i] = false;
        self.slots[usize::from(d)] = SlotInfo { konst: Some(imm), movi: Some(i), alias: None, bits: 0 };
    }

    /// `dst` takes the value of `src`, without an op if possible.
    fn def_copy(&mut self, dst: Temp, src: Temp) {
        if let Some(k) = self.konst(src) {
            return self.def_const(dst, k);
        }
        let s = self.read(src);
        let d = self.def(dst);
        self.set_alias(d, s);
    }

    fn bin(&mut self, op: BinOp, dst: Temp, a: Temp, b: Temp) {
        let (ka, kb) = (self.konst(a), self.konst(b));
        if let (Some(x), Some(y)) = (ka, kb) {
            // Division ops come with checked operands; `bin` answers a zero
            // divisor without panicking anyway.
            return self.def_const(dst, bin(op, x, y));
        }
        let (a, imm) = match (ka, kb) {
            (_, Some(y)) => (a, Some(y)),
            (Some(x), None) if commutative(op) => (b, Some(x)),
            _ => (a, None),
        };
        // Masking off bits that are already clear: a copy.
        let no_op_mask = |imm: u64, bits: u32| op == BinOp::And && bits < 64 && imm | !((1u64 << bits) - 1) == u64::MAX;
        let x = match imm {
            Some(imm) if identity(op, imm) || no_op_mask(imm, self.bits(a)) => return self.def_copy(dst, a),
            Some(imm) => {
                let bits = match op {
                    BinOp::And => 64 - imm.leading_zeros(),
                    BinOp::Shr => self.bits(a).saturating_sub((imm & 63) as u32),
                    _ => 64,
                };
                let a = self.read(a);
                let d = self.def(dst);
                self.set_bits(d, bits);
                match op {
                    BinOp::Add => X::AddI { d, a, imm },
                    BinOp::Sub => X::AddI { d, a, imm: imm.wrapping_neg() },
                    BinOp::And => X::AndI { d, a, imm },
                    BinOp::Shl => X::ShlI { d, a, imm: (imm & 63) as u8 },
                    BinOp::Shr => X::ShrI { d, a, imm: (imm & 63) as u8 },
                    BinOp::Sar => X::SarI { d, a, imm: (imm & 63) as u8 },
                    op => X::BinI { op, d, a, imm },
                }
            }
            None => {
                let (a, b) = (self.read(a), self.read(b));
                let d = self.def(dst);
                match op {
                    BinOp::Add => X::Add { d, a, b },
                    BinOp::Sub => X::Sub { d, a, b },
                    BinOp::And => X::And { d, a, b },
                    BinOp::Or => X::Or { d, a, b },
                    BinOp::Xor => X::Xor { d, a, b },
                    op => X::Bin { op, d, a, b },
                }
            }
        };
        self.emit(x);
    }

    fn cmp(&mut self, cond: Cond, a: Temp, b: Temp) -> Cmp {
        match (self.konst(a), self.konst(b)) {
            (Some(x), Some(y)) => Cmp::Known(cond.eval(x, y)),
            (_, Some(y)) if imm32(y).is_some() => Cmp::Imm(cond, self.read(a), imm32(y).unwrap_or(0)),
            (Some(x), None) if imm32(x).is_some() => Cmp::Imm(swapped(cond), self.read(b), imm32(x).unwrap_or(0)),
            _ => {
                let (a, b) = (self.read(a), self.read(b));
                Cmp::Slots(cond, a, b)
            }
        }
    }

    /// Before control leaves straight-line order: the current instruction's
    /// copies become real and its constants stay materialised (slots of
    /// earlier instructions are dead, by the IR's contract).
    fn make_real(&mut self) {
        for s in std::mem::take(&mut self.aliased) {
            if let Some(a) = self.slots[s].alias.take() {
                if (self.base..self.base + self.stride).contains(&s) {
                    self.emit(X::Mov { d: s as T, s: a });
                }
            }
        }
        for s in self.base..(self.base + self.stride).min(self.slots.len()) {
            if let Some(i) = self.slots[s].movi {
                self.needed[i] = true;
            }
        }
    }

    /// Control may arrive at a targeted label from elsewhere with other
    /// values: nothing is known after it.
    fn label(&mut self, label: usize) {
        if self.targeted.get(label).copied().unwrap_or(false) {
            self.make_real();
            self.slots.iter_mut().for_each(|s| (s.konst, s.bits) = (None, 0));
            self.env.clear();
        }
        if let Some(slot) = self.label_at.get_mut(label) {
            *slot = self.out.len();
        }
    }

    fn branch(&mut self, x: X, label: usize) {
        self.make_real();
        let at = self.emit(x);
        self.fixups.push((at, label));
        // A backward branch: values defined in the loop body flow back to
        // its head, where reads were already compiled. Keep every Movi of
        // the body (rare: the frontend loops in helpers, not in IR).
        let target = self.label_at.get(label).copied().unwrap_or(usize::MAX);
        if target <= at {
            self.needed[target..=at].iter_mut().for_each(|n| *n = true);
        }
    }

    /// A state store of `size` at `off`: forget what overlapped it.
    fn env_store(&mut self, off: u32, size: MemSize, value: Option<Known>) {
        let end = off + size.bytes() as u32;
        self.env.retain(|&(o, _)| o + 8 <= off || o >= end);
        if let (MemSize::B8, Some(k)) = (size, value) {
            self.env.push((off, k));
        }
    }

    fn insn_start(&mut self, pc: u64, len: u8) {
        let idx = self.code.insns.len();
        self.code.insns.push((pc, len));
        self.insn = u16::try_from(idx).unwrap_or(u16::MAX);
        // Fresh slots per instruction (if they fit), so values the block
        // stored in the state stay readable from their slots afterwards.
        // The last instruction's temps are dead (the IR's contract): its
        // copies need never become real.
        for s in std::mem::take(&mut self.aliased) {
            self.slots[s].alias = None;
        }
        let next = self.base + self.stride;
        if idx > 0 && next + self.stride <= self.slots.len() {
            self.base = next;
        } else if idx > 0 {
            // Out of slots: reuse (values of earlier instructions go).
            self.slots.iter_mut().for_each(|s| *s = SlotInfo::default());
            self.env.clear();
        }
        if std::mem::take(&mut self.may_store) {
            self.emit(X::SmcCheck { insn: self.insn });
        }
    }

    fn op(&mut self, op: &Op) {
        match *op {
            Op::InsnStart { pc, len } => self.insn_start(pc, len),
            Op::Movi { dst, imm } => self.def_const(dst, imm),
            Op::Mov { dst, src } => self.def_copy(dst, src),
            Op::Bin { op, dst, a, b } => self.bin(op, dst, a, b),
            Op::Un { op, dst, a } => match self.konst(a) {
                Some(k) => self.def_const(dst, un(op, k)),
                None => {
                    let a = self.read(a);
                    let d = self.def(dst);
                    self.emit(X::Un { op, d, a });
                }
            },
            Op::Ext { kind, dst, a } => {
                let zext_bits = match kind {
                    ExtKind::Zext8 => Some(8),
                    ExtKind::Zext16 => Some(16),
                    ExtKind::Zext32 => Some(32),
                    _ => None,
                };
                match (self.konst(a), zext_bits) {
                    (Some(k), _) => self.def_const(dst, ext(kind, k)),
                    // Zero-extending what already fits: a copy.
                    (None, Some(n)) if self.bits(a) <= n => self.def_copy(dst, a),
                    (None, _) => {
                        let a = self.read(a);
                        let d = self.def(dst);
                        self.emit(X::Ext { kind, d, a });
                        if let Some(n) = zext_bits {
                            self.set_bits(d, n);
                        }
                    }
                }
            }
            Op::SetCond { cond, dst, a, b } => match self.cmp(cond, a, b) {
                Cmp::Known(v) => self.def_const(dst, u64::from(v)),
                Cmp::Imm(cond, a, imm) => {
                    let d = self.def(dst);
                    self.emit(X::SetCondI { cond, d, a, imm });
                    self.set_bits(d, 1);
                }
                Cmp::Slots(cond, a, b) => {
                    let d = self.def(dst);
                    self.emit(X::SetCond { cond, d, a, b });
                    self.set_bits(d, 1);
                }
            },
            Op::Select { cond, dst, a, b, t, f } => {
                let (a, b, t, f) = (self.read(a), self.read(b), self.read(t), self.read(f));
                let d = self.def(dst);
                self.emit(X::Select { cond, d, a, b, t, f });
            }
            Op::LdEnv { dst, offset, size } => {
                let known = self.env.iter().rev().find(|&&(o, _)| o == offset).map(|&(_, k)| k);
                match (size, known) {
                    (MemSize::B8, Some(Known::Const(k))) => self.def_const(dst, k),
                    (MemSize::B8, Some(Known::Slot(s))) => {
                        let s = self.read_slot(usize::from(s));
                        let d = self.def(dst);
                        self.set_alias(d, s);
                    }
                    _ => {
                        let d = self.def(dst);
                        self.emit(if size == MemSize::B8 {
                            X::LdEnv64 { d, off: offset }
                        } else {
                            X::LdEnv { d, off: offset, size }
                        });
                        self.set_bits(d, 8 * size.bytes() as u32);
                    }
                }
            }
            Op::StEnv { src, offset, size } => match self.konst(src) {
                Some(imm) => {
                    // `cc_op` stores are sanitised into a valid CcOp (as `st_env`).
                    let imm =
                        if offset == CC_OP_OFFSET { CcOp::from_u64(imm).unwrap_or(CcOp::Eflags) as u64 } else { imm };
                    self.emit(X::StEnvI { off: offset, size, imm });
                    self.env_store(offset, size, Some(Known::Const(imm)));
                }
                None => {
                    let s = self.read(src);
                    let raw = size == MemSize::B8 && offset != CC_OP_OFFSET;
                    self.emit(if raw { X::StEnv64 { s, off: offset } } else { X::StEnv { s, off: offset, size } });
                    self.env_store(offset, size, raw.then_some(Known::Slot(s)));
                }
            },
            Op::Load { dst, addr, size, sign, flags } => {
                let addr = self.read(addr);
                let d = self.def(dst);
                self.emit(X::Load { d, addr, insn: self.insn, size, sign, flags });
                if !sign {
                    self.set_bits(d, 8 * size.bytes() as u32);
                }
            }
            Op::Store { src, addr, size, flags } => {
                self.may_store = true;
                let addr = self.read(addr);
                let x = match self.konst(src) {
                    Some(imm) => X::StoreI { imm, addr, insn: self.insn, size, flags },
                    None => X::Store { s: self.read(src), addr, insn: self.insn, size, flags },
                };
                self.emit(x);
            }
            Op::Call { helper, ref args, nargs, ret } => {
                self.may_store = true;
                let mut site = CallSite { helper, args: [0; MAX_HELPER_ARGS], nargs, ret: None };
                for (slot, a) in site.args.iter_mut().zip(&args[..usize::from(nargs).min(MAX_HELPER_ARGS)]) {
                    *slot = self.read(*a);
                }
                site.ret = ret.map(|r| self.def(r));
                if helper.writes != StateParts::NONE {
                    // It may change any state field the block knows.
                    self.env.clear();
                }
                let idx = u16::try_from(self.code.calls.len()).unwrap_or(u16::MAX);
                self.code.calls.push(site);
                self.emit(X::Call { site: idx, insn: self.insn });
            }
            Op::Br { label } => self.branch(X::Br { to: 0 }, label.0 as usize),
            Op::BrCond { cond, a, b, label } => match self.cmp(cond, a, b) {
                Cmp::Known(true) => self.branch(X::Br { to: 0 }, label.0 as usize),
                Cmp::Known(false) => {}
                Cmp::Imm(cond, a, imm) => self.branch(X::BrCondI { cond, a, imm, to: 0 }, label.0 as usize),
                Cmp::Slots(cond, a, b) => self.branch(X::BrCond { cond, a, b, to: 0 }, label.0 as usize),
            },
            Op::SetLabel { label } => self.label(label.0 as usize),
            Op::ExitTb { kind } => {
                let x = match kind {
                    ExitKind::Lookup => X::Exit { kind: ExitKind2::Lookup },
                    ExitKind::Halt => X::Exit { kind: ExitKind2::Halt },
                    ExitKind::Raise(e) => {
                        let exc = u16::try_from(self.code.raises.len()).unwrap_or(u16::MAX);
                        self.code.raises.push(e);
                        X::Raise { insn: self.insn, exc }
                    }
                };
                self.emit(x);
            }
            Op::GotoTb { slot, pc } => {
                self.emit(X::GotoTb { slot, pc });
            }
        }
    }

    /// Drops the unneeded ops and points branches at op indexes.
    fn finish(mut self) -> Code {
        // Running off the end continues at the stored RIP, as `execute` does.
        self.emit(X::Exit { kind: ExitKind2::Lookup });
        super::dse::drop_dead_env_stores(&self.out, &mut self.needed);
        let mut new_pos = Vec::with_capacity(self.out.len() + 1);
        let mut n = 0u32;
        for needed in &self.needed {
            new_pos.push(n);
            n += u32::from(*needed);
        }
        new_pos.push(n);
        for &(at, label) in &self.fixups {
            let target = self.label_at.get(label).and_then(|&p| new_pos.get(p)).copied().unwrap_or(n);
            if let Some(X::Br { to } | X::BrCond { to, .. } | X::BrCondI { to, .. }) = self.out.get_mut(at) {
                *to = target;
            }
        }
        self.code.ops = self.out.into_iter().zip(self.needed).filter_map(|(x, needed)| needed.then_some(x)).collect();
        self.code.ops.shrink_to_fit();
        self.code
    }
}

/// Compiles a block's IR, which [`crate::tcg::interp::validate`] accepted
/// against `num_temps` and `label_pos`.
pub fn compile(ops: &[Op], num_temps: usize, label_pos: &[usize]) -> Code {
    let insns = ops.iter().filter(|op| matches!(op, Op::InsnStart { .. })).count().max(1);
    let stride = num_temps.max(1);
    let total = stride.saturating_mul(insns);
    // Per-instruction slots when they fit in the slot index type (always,
    // in practice), else one set reused by every instruction.
    let slots = if total <= usize::from(T::MAX) { total } else { stride };
    if stride > usize::from(T::MAX) {
        log::error!("TCG: a block with {num_temps} temps can't be interpreted; it raises #UD");
        let raises = vec![Exception::ud()];
        return Code { ops: vec![X::Raise { insn: u16::MAX, exc: 0 }], raises, ..Code::default() };
    }
    let mut targeted = vec![false; label_pos.len()];
    for op in ops {
        if let Op::Br { label } | Op::BrCond { label, .. } = op {
            if let Some(t) = targeted.get_mut(label.0 as usize) {
                *t = true;
            }
        }
    }
    let mut c = Compiler {
        out: Vec::with_capacity(ops.len() + 1),
        needed: Vec::with_capacity(ops.len() + 1),
        slots: vec![SlotInfo::default(); slots],
        aliased: Vec::new(),
        env: Vec::new(),
        label_at: vec![usize::MAX; label_pos.len()],
        targeted,
        fixups: Vec::new(),
        code: Code { num_temps: slots, ..Code::default() },
        insn: u16::MAX,
        base: 0,
        stride,
        may_store: false,
    };
    for op in ops {
        c.op(op);
    }
    c.finish()
}
