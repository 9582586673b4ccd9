//! Lowering of a block's compiled ops ([`crate::tcg::bytecode`]) to
//! Cranelift IR: temps become Cranelift variables (SSA is built by
//! `cranelift-frontend`), env ops plain loads and stores off the state
//! pointer, branches Cranelift blocks; guest memory and helpers are calls
//! into [`super::runtime`]. The function returns an [`super::exit`] code.

use std::collections::BTreeSet;
use std::mem::offset_of;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, Block, BlockArg, InstBuilder, MemFlagsData as ClMem, SigRef, Signature, Value,
};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, Variable};

use super::exit;
use super::runtime::{self, offsets};
use crate::tcg::bytecode::{Code, ExitKind2, X};
use crate::tcg::chain::ChainLink;
use crate::tcg::interp::{env_access_ok, CC_OP_OFFSET};
use crate::tcg::ir::{BinOp, Cond, ExtKind, MemFlags, MemSize, UnOp, MAX_HELPER_ARGS};
use crate::tcg::mmu::fast_tlb::{self, FastEntry};
use crate::tcg::state::{hflags, X86State};

const I64: types::Type = types::I64;

/// The signatures of the runtime entry points, imported into the function.
struct Sigs {
    load: SigRef,
    store: SigRef,
    call: SigRef,
    divide: SigRef,
    store_env: SigRef,
    code_written: SigRef,
    /// A compiled block's (tail-called when chaining).
    block: SigRef,
    next_block: SigRef,
}

fn signature(call_conv: CallConv, params: usize, returns: bool) -> Signature {
    let mut s = Signature::new(call_conv);
    s.params.extend((0..params).map(|_| AbiParam::new(I64)));
    if returns {
        s.returns.push(AbiParam::new(I64));
    }
    s
}

/// Why a block cannot be compiled (it is then interpreted).
#[derive(Debug)]
pub(super) struct Unsupported(pub(super) &'static str);

struct Lowering<'f, 'b, 'c> {
    b: &'b mut FunctionBuilder<'f>,
    code: &'c Code,
    vars: Vec<Variable>,
    frame: Value,
    state: Value,
    /// The fast TLB table (`*const FastEntry`).
    tlb: Value,
    sigs: Sigs,
    /// Address of the block's chain links (see [`crate::tcg::chain`]).
    links: u64,
    /// Cranelift block of each op index that is a branch target.
    targets: Vec<Option<Block>>,
    /// Whether the current block already ended (code after it is dead).
    terminated: bool,
}

/// Builds the body of `code`'s function into `b` (whose signature is
/// `(frame) -> exit code`).
pub(super) fn lower(
    b: &mut FunctionBuilder<'_>,
    code: &Code,
    call_conv: CallConv,
    links: u64,
) -> Result<(), Unsupported> {
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let frame = b.block_params(entry)[0];
    let state = b.ins().load(I64, ClMem::trusted(), frame, offsets::STATE);
    let sigs = Sigs {
        load: b.import_signature(signature(call_conv, 3, true)),
        store: b.import_signature(signature(call_conv, 4, true)),
        call: b.import_signature(signature(call_conv, 2, true)),
        divide: b.import_signature(signature(call_conv, 3, true)),
        store_env: b.import_signature(signature(call_conv, 4, false)),
        code_written: b.import_signature(signature(call_conv, 2, false)),
        block: b.import_signature(super::block_signature()),
        next_block: b.import_signature(signature(call_conv, 1, true)),
    };
    let tlb = b.ins().load(I64, ClMem::trusted(), frame, offsets::TLB);
    let zero = b.ins().iconst(I64, 0);
    let vars: Vec<Variable> = (0..code.num_temps)
        .map(|_| {
            let v = b.declare_var(I64);
            b.def_var(v, zero);
            v
        })
        .collect();
    let mut jump_targets = BTreeSet::new();
    for x in &code.ops {
        if let X::Br { to } | X::BrCond { to, .. } | X::BrCondI { to, .. } = *x {
            jump_targets.insert(to as usize);
        }
    }
    let mut targets = vec![None; code.ops.len() + 1];
    for &t in &jump_targets {
        let slot = targets.get_mut(t).ok_or(Unsupported("branch out of the block"))?;
        *slot = Some(b.create_block());
    }
    let mut l = Lowering { b, code, vars, frame, state, tlb, sigs, links, targets, terminated: false };
    for (i, x) in code.ops.iter().enumerate() {
        l.enter(i);
        l.op(*x)?;
    }
    l.enter(code.ops.len());
    if !l.terminated {
        let r = l.b.ins().iconst(I64, exit::LOOKUP as i64);
        l.b.ins().return_(&[r]);
    }
    l.b.seal_all_blocks();
    Ok(())
}

fn int_cc(cond: Cond) -> IntCC {
    match cond {
        Cond::Eq | Cond::TstEq => IntCC::Equal,
        Cond::Ne | Cond::TstNe => IntCC::NotEqual,
        Cond::Lt => IntCC::SignedLessThan,
        Cond::Le => IntCC::SignedLessThanOrEqual,
        Cond::Gt => IntCC::SignedGreaterThan,
        Cond::Ge => IntCC::SignedGreaterThanOrEqual,
        Cond::Ltu => IntCC::UnsignedLessThan,
        Cond::Leu => IntCC::UnsignedLessThanOrEqual,
        Cond::Gtu => IntCC::UnsignedGreaterThan,
        Cond::Geu => IntCC::UnsignedGreaterThanOrEqual,
    }
}

fn narrow(size: MemSize) -> types::Type {
    match size {
        MemSize::B1 => types::I8,
        MemSize::B2 => types::I16,
        MemSize::B4 => types::I32,
        MemSize::B8 => I64,
    }
}

impl Lowering<'_, '_, '_> {
    /// Starts op `i`: a branch target begins a new Cranelift block.
    fn enter(&mut self, i: usize) {
        if let Some(Some(block)) = self.targets.get(i).copied() {
            if !self.terminated {
                self.b.ins().jump(block, &[]);
            }
            self.b.switch_to_block(block);
            self.terminated = false;
        } else if self.terminated {
            // Unreachable code after an exit: give it a block of its own.
            let dead = self.b.create_block();
            self.b.switch_to_block(dead);
            self.terminated = false;
        }
    }

    fn get(&mut self, t: u16) -> Value {
        self.b.use_var(self.vars[usize::from(t)])
    }

    fn set(&mut self, t: u16, v: Value) {
        self.b.def_var(self.vars[usize::from(t)], v);
    }

    fn imm(&mut self, v: u64) -> Value {
        self.b.ins().iconst(I64, v as i64)
    }

    fn ret(&mut self, code: u64) {
        let r = self.imm(code);
        self.b.ins().return_(&[r]);
        self.terminated = true;
    }

    /// Returns `exit_code` from the function when `status` is non-zero.
    fn exit_if(&mut self, status: Value, exit_code: u64) {
        let out = self.b.create_block();
        let next = self.b.create_block();
        self.b.ins().brif(status, out, &[], next, &[]);
        self.b.set_cold_block(out);
        self.b.switch_to_block(out);
        let r = self.b.ins().iconst(I64, exit_code as i64);
        self.b.ins().return_(&[r]);
        self.b.switch_to_block(next);
    }

    fn frame_value(&mut self) -> Value {
        self.b.ins().load(I64, ClMem::trusted(), self.frame, offsets::VALUE)
    }

    fn call_runtime(&mut self, sig: SigRef, f: usize, args: &[Value]) -> Option<Value> {
        let callee = self.b.ins().iconst(I64, f as i64);
        let inst = self.b.ins().call_indirect(sig, callee, args);
        self.b.inst_results(inst).first().copied()
    }

    fn bin(&mut self, op: BinOp, a: Value, b: Value) -> Value {
        let ins = self.b.ins();
        match op {
            BinOp::Add => ins.iadd(a, b),
            BinOp::Sub => ins.isub(a, b),
            BinOp::Mul => ins.imul(a, b),
            BinOp::And => ins.band(a, b),
            BinOp::Or => ins.bor(a, b),
            BinOp::Xor => ins.bxor(a, b),
            // Cranelift takes shift counts modulo the width, as the IR does.
            BinOp::Shl => ins.ishl(a, b),
            BinOp::Shr => ins.ushr(a, b),
            BinOp::Sar => ins.sshr(a, b),
            BinOp::Rotl => ins.rotl(a, b),
            BinOp::Rotr => ins.rotr(a, b),
            BinOp::MulHu => ins.umulhi(a, b),
            BinOp::MulHs => ins.smulhi(a, b),
            BinOp::DivU | BinOp::DivS | BinOp::RemU | BinOp::RemS => {
                let which = runtime::divide_code(op).unwrap_or(0);
                let which = self.imm(which);
                let sig = self.sigs.divide;
                self.call_runtime(sig, runtime::divide as *const () as usize, &[which, a, b]).unwrap_or(a)
            }
        }
    }

    fn un(&mut self, op: UnOp, a: Value) -> Value {
        let ins = self.b.ins();
        match op {
            UnOp::Not => ins.bnot(a),
            UnOp::Neg => ins.ineg(a),
            UnOp::Bswap16 | UnOp::Bswap32 => {
                let ty = if op == UnOp::Bswap16 { types::I16 } else { types::I32 };
                let n = self.b.ins().ireduce(ty, a);
                let s = self.b.ins().bswap(n);
                self.b.ins().uextend(I64, s)
            }
            UnOp::Bswap64 => ins.bswap(a),
            UnOp::Ctz => ins.ctz(a),
            UnOp::Clz => ins.clz(a),
            UnOp::Popcnt => ins.popcnt(a),
        }
    }

    fn ext(&mut self, kind: ExtKind, a: Value) -> Value {
        let (ty, signed) = match kind {
            ExtKind::Zext8 => (types::I8, false),
            ExtKind::Zext16 => (types::I16, false),
            ExtKind::Zext32 => (types::I32, false),
            ExtKind::Sext8 => (types::I8, true),
            ExtKind::Sext16 => (types::I16, true),
            ExtKind::Sext32 => (types::I32, true),
        };
        let n = self.b.ins().ireduce(ty, a);
        if signed {
            self.b.ins().sextend(I64, n)
        } else {
            self.b.ins().uextend(I64, n)
        }
    }

    /// `cond(a, b)` as an `i8` truth value.
    fn compare(&mut self, cond: Cond, a: Value, b: Value) -> Value {
        match cond {
            Cond::TstEq | Cond::TstNe => {
                let m = self.b.ins().band(a, b);
                self.b.ins().icmp_imm_u(int_cc(cond), m, 0)
            }
            _ => self.b.ins().icmp(int_cc(cond), a, b),
        }
    }

    fn ld_env(&mut self, d: u16, off: u32, size: MemSize) -> Result<(), Unsupported> {
        if !env_access_ok(off, size.bytes()) {
            return Err(Unsupported("env access out of range"));
        }
        let v = self.b.ins().load(narrow(size), ClMem::new().with_notrap(), self.state, off as i32);
        let v = if size == MemSize::B8 { v } else { self.b.ins().uextend(I64, v) };
        self.set(d, v);
        Ok(())
    }

    fn st_env(&mut self, v: Value, off: u32, size: MemSize, checked: bool) -> Result<(), Unsupported> {
        if !env_access_ok(off, size.bytes()) {
            return Err(Unsupported("env access out of range"));
        }
        if checked && off == CC_OP_OFFSET {
            let (frame, off, size) = (self.frame, self.imm(u64::from(off)), self.imm(size.bytes() as u64));
            let sig = self.sigs.store_env;
            self.call_runtime(sig, runtime::store_env_checked as *const () as usize, &[frame, off, v, size]);
            return Ok(());
        }
        let v = if size == MemSize::B8 { v } else { self.b.ins().ireduce(narrow(size), v) };
        self.b.ins().store(ClMem::new().with_notrap(), v, self.state, off as i32);
        Ok(())
    }

    fn op(&mut self, x: X) -> Result<(), Unsupported> {
        match x {
            X::Movi { d, imm } => {
                let v = self.imm(imm);
                self.set(d, v);
            }
            X::Mov { d, s } => {
                let v = self.get(s);
                self.set(d, v);
            }
            X::Add { d, a, b } => self.bin_tt(BinOp::Add, d, a, b),
            X::Sub { d, a, b } => self.bin_tt(BinOp::Sub, d, a, b),
            X::And { d, a, b } => self.bin_tt(BinOp::And, d, a, b),
            X::Or { d, a, b } => self.bin_tt(BinOp::Or, d, a, b),
            X::Xor { d, a, b } => self.bin_tt(BinOp::Xor, d, a, b),
            X::Bin { op, d, a, b } => self.bin_tt(op, d, a, b),
            X::AddI { d, a, imm } => self.bin_ti(BinOp::Add, d, a, imm),
            X::AndI { d, a, imm } => self.bin_ti(BinOp::And, d, a, imm),
            X::ShlI { d, a, imm } => self.bin_ti(BinOp::Shl, d, a, u64::from(imm)),
            X::ShrI { d, a, imm } => self.bin_ti(BinOp::Shr, d, a, u64::from(imm)),
            X::SarI { d, a, imm } => self.bin_ti(BinOp::Sar, d, a, u64::from(imm)),
            X::BinI { op, d, a, imm } => self.bin_ti(op, d, a, imm),
            X::Un { op, d, a } => {
                let a = self.get(a);
                let v = self.un(op, a);
                self.set(d, v);
            }
            X::Ext { kind, d, a } => {
                let a = self.get(a);
                let v = self.ext(kind, a);
                self.set(d, v);
            }
            X::SetCond { cond, d, a, b } => {
                let (a, b) = (self.get(a), self.get(b));
                let c = self.compare(cond, a, b);
                let v = self.b.ins().uextend(I64, c);
                self.set(d, v);
            }
            X::SetCondI { cond, d, a, imm } => {
                let (a, b) = (self.get(a), self.imm(imm as i64 as u64));
                let c = self.compare(cond, a, b);
                let v = self.b.ins().uextend(I64, c);
                self.set(d, v);
            }
            X::Select { cond, d, a, b, t, f } => {
                let (a, b, t, f) = (self.get(a), self.get(b), self.get(t), self.get(f));
                let c = self.compare(cond, a, b);
                let v = self.b.ins().select(c, t, f);
                self.set(d, v);
            }
            X::LdEnv64 { d, off } => self.ld_env(d, off, MemSize::B8)?,
            X::LdEnv { d, off, size } => self.ld_env(d, off, size)?,
            X::StEnv64 { s, off } => {
                let v = self.get(s);
                self.st_env(v, off, MemSize::B8, false)?;
            }
            X::StEnv { s, off, size } => {
                let v = self.get(s);
                self.st_env(v, off, size, true)?;
            }
            X::StEnvI { off, size, imm } => {
                let v = self.imm(imm);
                self.st_env(v, off, size, false)?;
            }
            X::Load { d, addr, insn, size, sign, flags } => {
                let addr = self.get(addr);
                let v = self.load(addr, insn, size, sign, flags);
                self.set(d, v);
            }
            X::Store { s, addr, insn, size, flags } => {
                let v = self.get(s);
                self.store(v, addr, insn, size, flags);
            }
            X::StoreI { imm, addr, insn, size, flags } => {
                let v = self.imm(imm);
                self.store(v, addr, insn, size, flags);
            }
            X::Call { site, insn } => {
                let c = self.code.calls.get(usize::from(site)).ok_or(Unsupported("unknown call site"))?.clone();
                for (k, a) in c.args.iter().take(usize::from(c.nargs).min(MAX_HELPER_ARGS)).enumerate() {
                    let v = self.get(*a);
                    self.b.ins().store(ClMem::trusted(), v, self.frame, offsets::ARGS + 8 * k as i32);
                }
                let (sig, frame, site_v) = (self.sigs.call, self.frame, self.imm(u64::from(site)));
                let status = self.call_runtime(sig, runtime::call as *const () as usize, &[frame, site_v]);
                self.exit_if(status.unwrap_or(frame), exit::fault(insn));
                if let Some(r) = c.ret {
                    let v = self.frame_value();
                    self.set(r, v);
                }
            }
            X::Br { to } => {
                let block = self.target(to)?;
                self.b.ins().jump(block, &[]);
                self.terminated = true;
            }
            X::BrCond { cond, a, b, to } => {
                let (a, b) = (self.get(a), self.get(b));
                self.branch(cond, a, b, to)?;
            }
            X::BrCondI { cond, a, imm, to } => {
                let (a, b) = (self.get(a), self.imm(imm as i64 as u64));
                self.branch(cond, a, b, to)?;
            }
            X::SmcCheck { insn } => {
                let p = self.b.ins().load(I64, ClMem::trusted(), self.frame, offsets::GENERATION);
                let now = self.b.ins().load(I64, ClMem::trusted(), p, 0);
                let start = self.b.ins().load(I64, ClMem::trusted(), self.frame, offsets::GENERATION_START);
                let moved = self.b.ins().icmp(IntCC::NotEqual, now, start);
                self.exit_if(moved, exit::smc(insn));
            }
            X::Exit { kind: ExitKind2::Lookup } => {
                let (sig, frame) = (self.sigs.next_block, self.frame);
                let next = self.call_runtime(sig, runtime::next_block as *const () as usize, &[frame]);
                let exit = self.b.create_block();
                let none = self.b.ins().icmp_imm_u(IntCC::Equal, next.unwrap_or(frame), 0);
                self.continue_unless(none, exit);
                let sig = self.sigs.block;
                self.b.ins().return_call_indirect(sig, next.unwrap_or(frame), &[frame]);
                self.b.switch_to_block(exit);
                self.ret(exit::LOOKUP);
            }
            X::Exit { kind: ExitKind2::Halt } => self.ret(exit::HALT),
            X::Raise { insn, exc } => self.ret(exit::raise(insn, exc)),
            X::GotoTb { slot, pc } => {
                let v = self.imm(pc);
                self.b.ins().store(ClMem::trusted(), v, self.state, offset_of!(X86State, rip) as i32);
                self.chain(slot);
                self.ret(exit::goto(slot));
            }
        }
        Ok(())
    }

    fn bin_tt(&mut self, op: BinOp, d: u16, a: u16, b: u16) {
        let (a, b) = (self.get(a), self.get(b));
        let v = self.bin(op, a, b);
        self.set(d, v);
    }

    fn bin_ti(&mut self, op: BinOp, d: u16, a: u16, imm: u64) {
        let (a, b) = (self.get(a), self.imm(imm));
        let v = self.bin(op, a, b);
        self.set(d, v);
    }

    /// The fast TLB entry for `addr` and whether its tag at `tag_offset`
    /// matches an access of `size` (aligned, so within the page).
    fn fast_lookup(&mut self, addr: Value, size: MemSize, tag_offset: usize) -> (Value, Value) {
        let ins = self.b.ins();
        let page = ins.ushr_imm_u(addr, 12);
        let index = self.b.ins().band_imm_u(page, (fast_tlb::FAST_ENTRIES - 1) as i64);
        let offset = self.b.ins().imul_imm_u(index, fast_tlb::ENTRY_SIZE as i64);
        let entry = self.b.ins().iadd(self.tlb, offset);
        let tag = self.b.ins().load(I64, ClMem::trusted(), entry, tag_offset as i32);
        let masked = self.b.ins().band_imm_s(addr, (!0xfffu64 | (size.bytes() as u64 - 1)) as i64);
        let hit = self.b.ins().icmp(IntCC::Equal, masked, tag);
        (entry, hit)
    }

    /// Host address of a fast-TLB hit.
    fn host_address(&mut self, entry: Value, addr: Value) -> Value {
        let addend = self.b.ins().load(I64, ClMem::trusted(), entry, offset_of!(FastEntry, addend) as i32);
        self.b.ins().iadd(addr, addend)
    }

    /// Guest-memory load: inline through the fast TLB, else the softmmu.
    fn load(&mut self, addr: Value, insn: u16, size: MemSize, sign: bool, flags: MemFlags) -> Value {
        let tag =
            if flags.contains(MemFlags::RMW) { offset_of!(FastEntry, write) } else { offset_of!(FastEntry, read) };
        let (entry, hit) = self.fast_lookup(addr, size, tag);
        let (fast, slow, join) = (self.b.create_block(), self.b.create_block(), self.b.create_block());
        self.b.append_block_param(join, I64);
        self.b.ins().brif(hit, fast, &[], slow, &[]);

        self.b.switch_to_block(fast);
        let host = self.host_address(entry, addr);
        // An atomic load: guest memory is shared with other vCPUs and
        // devices, so Cranelift must not merge or drop the access.
        let v = self.b.ins().atomic_load(narrow(size), ClMem::trusted(), host);
        let v = match (size, sign) {
            (MemSize::B8, _) => v,
            (_, true) => self.b.ins().sextend(I64, v),
            (_, false) => self.b.ins().uextend(I64, v),
        };
        self.b.ins().jump(join, &[BlockArg::Value(v)]);

        self.b.set_cold_block(slow);
        self.b.switch_to_block(slow);
        let desc = self.imm(runtime::mem_desc(size, sign, flags));
        let (sig, frame) = (self.sigs.load, self.frame);
        let status = self.call_runtime(sig, runtime::load as *const () as usize, &[frame, addr, desc]);
        self.exit_if(status.unwrap_or(addr), exit::fault(insn));
        let v = self.frame_value();
        self.b.ins().jump(join, &[BlockArg::Value(v)]);

        self.b.switch_to_block(join);
        self.b.block_params(join)[0]
    }

    /// Guest-memory store: inline through the fast TLB (then the page's
    /// "holds code" bit is checked, as the Rust store path does), else the
    /// softmmu.
    fn store(&mut self, v: Value, addr: u16, insn: u16, size: MemSize, flags: MemFlags) {
        let addr = self.get(addr);
        let (entry, hit) = self.fast_lookup(addr, size, offset_of!(FastEntry, write));
        let (fast, slow, join) = (self.b.create_block(), self.b.create_block(), self.b.create_block());
        self.b.ins().brif(hit, fast, &[], slow, &[]);

        self.b.switch_to_block(fast);
        let host = self.host_address(entry, addr);
        let narrow_v = if size == MemSize::B8 { v } else { self.b.ins().ireduce(narrow(size), v) };
        self.b.ins().store(ClMem::trusted(), narrow_v, host, 0);
        let word_ptr = self.b.ins().load(I64, ClMem::trusted(), entry, offset_of!(FastEntry, code_word) as i32);
        let word = self.b.ins().load(I64, ClMem::trusted(), word_ptr, 0);
        let page = self.b.ins().load(I64, ClMem::trusted(), entry, offset_of!(FastEntry, page) as i32);
        let bit = self.b.ins().ushr(word, page);
        let code = self.b.ins().band_imm_u(bit, 1);
        let notify = self.b.create_block();
        self.b.ins().brif(code, notify, &[], join, &[]);
        self.b.set_cold_block(notify);
        self.b.switch_to_block(notify);
        let (sig, frame) = (self.sigs.code_written, self.frame);
        self.call_runtime(sig, runtime::code_written as *const () as usize, &[frame, page]);
        self.b.ins().jump(join, &[]);

        self.b.set_cold_block(slow);
        self.b.switch_to_block(slow);
        let desc = self.imm(runtime::mem_desc(size, false, flags));
        let (sig, frame) = (self.sigs.store, self.frame);
        let status = self.call_runtime(sig, runtime::store as *const () as usize, &[frame, addr, v, desc]);
        self.exit_if(status.unwrap_or(addr), exit::fault(insn));
        self.b.ins().jump(join, &[]);

        self.b.switch_to_block(join);
    }

    /// Tail-calls the block `slot` is linked to, if the link is live, the
    /// budget not spent, no signal pending and no interrupt shadow open;
    /// falls through otherwise.
    fn chain(&mut self, slot: u8) {
        let exit = self.b.create_block();
        let link_addr = self.imm(self.links + 8 * u64::from(slot));
        let link = self.b.ins().atomic_load(I64, ClMem::trusted(), link_addr);
        let no_link = self.b.ins().icmp_imm_u(IntCC::Equal, link, 0);
        self.continue_unless(no_link, exit);
        let budget = self.b.ins().load(I64, ClMem::trusted(), self.frame, offsets::BUDGET);
        let spent = self.b.ins().icmp_imm_u(IntCC::Equal, budget, 0);
        self.continue_unless(spent, exit);
        let signals = self.b.ins().load(I64, ClMem::trusted(), self.frame, offsets::SIGNALS);
        let pending = self.b.ins().atomic_load(types::I32, ClMem::trusted(), signals);
        self.continue_unless(pending, exit);
        // An STI / MOV SS shadow is the vCPU loop's to end.
        let flags = self.b.ins().load(I64, ClMem::trusted(), self.state, offset_of!(X86State, hflags) as i32);
        let shadow = self.b.ins().band_imm_u(flags, hflags::INHIBIT_IRQ as i64);
        self.continue_unless(shadow, exit);
        let generation = self.b.ins().load(I64, ClMem::trusted(), self.frame, offsets::GENERATION);
        let now = self.b.ins().atomic_load(I64, ClMem::trusted(), generation);
        let field = |f: usize| f as i32;
        let valid_at = self.b.ins().load(I64, ClMem::trusted(), link, field(offset_of!(ChainLink, generation)));
        let stale = self.b.ins().icmp(IntCC::NotEqual, now, valid_at);
        self.continue_unless(stale, exit);
        let left = self.b.ins().iadd_imm_s(budget, -1);
        self.b.ins().store(ClMem::trusted(), left, self.frame, offsets::BUDGET);
        self.b.ins().store(ClMem::trusted(), now, self.frame, offsets::GENERATION_START);
        for (from, to) in [(offset_of!(ChainLink, tb), offsets::TB), (offset_of!(ChainLink, code), offsets::CODE)] {
            let v = self.b.ins().load(I64, ClMem::trusted(), link, field(from));
            self.b.ins().store(ClMem::trusted(), v, self.frame, to);
        }
        let insns = self.b.ins().load(I64, ClMem::trusted(), link, field(offset_of!(ChainLink, insns)));
        let total = self.b.ins().load(I64, ClMem::trusted(), self.frame, offsets::CHAINED_INSNS);
        let total = self.b.ins().iadd(total, insns);
        self.b.ins().store(ClMem::trusted(), total, self.frame, offsets::CHAINED_INSNS);
        let func = self.b.ins().load(I64, ClMem::trusted(), link, field(offset_of!(ChainLink, func)));
        let sig = self.sigs.block;
        self.b.ins().return_call_indirect(sig, func, &[self.frame]);
        self.b.switch_to_block(exit);
    }

    /// Goes on in a new block when `cond` is zero, else jumps to `out`.
    fn continue_unless(&mut self, cond: Value, out: Block) {
        let next = self.b.create_block();
        self.b.ins().brif(cond, out, &[], next, &[]);
        self.b.switch_to_block(next);
    }

    fn target(&self, to: u32) -> Result<Block, Unsupported> {
        self.targets.get(to as usize).copied().flatten().ok_or(Unsupported("unknown branch target"))
    }

    fn branch(&mut self, cond: Cond, a: Value, b: Value, to: u32) -> Result<(), Unsupported> {
        let taken = self.target(to)?;
        let c = self.compare(cond, a, b);
        let next = self.b.create_block();
        self.b.ins().brif(c, taken, &[], next, &[]);
        self.b.switch_to_block(next);
        Ok(())
    }
}
