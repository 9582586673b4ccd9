//! String instructions: MOVS STOS LODS CMPS SCAS INS OUTS, with REP /
//! REPE / REPNE and 16/32/64-bit address sizes, as one helper.
//!
//! The helper commits RCX/RSI/RDI after every element (a fault mid-REP
//! leaves them at the faulting element, as the SDM allows) and runs at most
//! [`CHUNK`] elements per call; when work remains the block exits with RIP
//! at the same instruction, so interrupts and kicks are seen between chunks.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};
use vm_memory::VolatileSlice;

use super::builder::IrBuilder;
use super::Lowered;
use crate::tcg::context::CpuContext;
use crate::tcg::exception::Exception;
use crate::tcg::flags::{CcFamily, CcOp, OpSize};
use crate::tcg::ir::{Cond, ExitKind, Helper, StateParts};
use crate::tcg::mmu::{Access, Privilege};
use crate::tcg::state::{hflags, reg, rflags as rf, seg, X86State};

/// Most elements one helper call processes.
const CHUNK: u64 = 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Movs = 0,
    Stos,
    Lods,
    Cmps,
    Scas,
    Ins,
    Outs,
}

const KINDS: [Kind; 7] = [Kind::Movs, Kind::Stos, Kind::Lods, Kind::Cmps, Kind::Scas, Kind::Ins, Kind::Outs];

/// REP prefix meaning: none, REP/REPE (stop when ZF=0 for CMPS/SCAS), REPNE.
const REP_NONE: u64 = 0;
const REP_E: u64 = 1;
const REP_NE: u64 = 2;

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    use Mnemonic as M;
    let kind = match insn.mnemonic() {
        M::Movsb | M::Movsw | M::Movsd | M::Movsq => Kind::Movs,
        M::Stosb | M::Stosw | M::Stosd | M::Stosq => Kind::Stos,
        M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => Kind::Lods,
        M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => Kind::Cmps,
        M::Scasb | M::Scasw | M::Scasd | M::Scasq => Kind::Scas,
        M::Insb | M::Insw | M::Insd => Kind::Ins,
        M::Outsb | M::Outsw | M::Outsd => Kind::Outs,
        _ => return Lowered::Unsupported,
    };
    // Element size and address size from the operands (the SSE MOVSD/CMPSD
    // share mnemonics with the string forms; those have no string operand).
    let mut elem = 0usize;
    let mut addr_size = 0u64;
    let mut src_seg = Register::DS;
    for i in 0..insn.op_count() {
        match insn.try_op_kind(i) {
            Ok(OpKind::MemorySegSI | OpKind::MemoryESDI) | Ok(OpKind::MemorySegDI) => addr_size = 2,
            Ok(OpKind::MemorySegESI | OpKind::MemoryESEDI) | Ok(OpKind::MemorySegEDI) => addr_size = 4,
            Ok(OpKind::MemorySegRSI | OpKind::MemoryESRDI) | Ok(OpKind::MemorySegRDI) => addr_size = 8,
            Ok(OpKind::Register) => {
                if let Ok(r) = insn.try_op_register(i) {
                    if r != Register::DX {
                        elem = r.size();
                    }
                }
            }
            _ => {}
        }
        if matches!(insn.try_op_kind(i), Ok(OpKind::MemorySegSI | OpKind::MemorySegESI | OpKind::MemorySegRSI)) {
            src_seg = insn.memory_segment();
        }
    }
    if addr_size == 0 {
        return Lowered::Unsupported;
    }
    if elem == 0 {
        elem = insn.memory_size().size();
    }
    if OpSize::from_bytes(elem).is_none() {
        return Lowered::Unsupported;
    }
    let rep = if insn.has_repne_prefix() && matches!(kind, Kind::Cmps | Kind::Scas) {
        REP_NE
    } else if insn.has_rep_prefix() || insn.has_repe_prefix() || insn.has_repne_prefix() {
        REP_E
    } else {
        REP_NONE
    };
    let seg_i = (src_seg as usize).wrapping_sub(Register::ES as usize).min(seg::GS) as u64;
    let packed = kind as u64 | (elem as u64) << 8 | addr_size << 16 | rep << 24 | seg_i << 32;
    let packed = b.movi(packed);
    if matches!(kind, Kind::Cmps | Kind::Scas) {
        b.cc_known = None;
    }
    let more = b.call(&STRING_OP, &[packed]);
    if rep != REP_NONE {
        let zero = b.movi(0);
        let done = b.label();
        b.brcond(Cond::Eq, more, zero, done);
        b.set_rip(b.insn.pc);
        b.exit(ExitKind::Lookup);
        b.set_label(done);
    }
    Lowered::Next
}

struct Regs {
    addr_mask: u64,
    step: u64,
}

impl Regs {
    fn get(&self, s: &X86State, r: usize) -> u64 {
        s.gpr[r] & self.addr_mask
    }
    /// Writes the low address-size bits (a 32-bit write zero-extends).
    fn set(&self, s: &mut X86State, r: usize, v: u64) {
        s.gpr[r] = match self.addr_mask {
            0xffff => (s.gpr[r] & !0xffff) | (v & 0xffff),
            m => v & m,
        };
    }
    fn advance(&self, s: &mut X86State, r: usize) {
        let v = if s.rflags & rf::DF != 0 {
            self.get(s, r).wrapping_sub(self.step)
        } else {
            self.get(s, r).wrapping_add(self.step)
        };
        self.set(s, r, v);
    }
}

fn linear(s: &X86State, seg_i: usize, offset: u64) -> u64 {
    let add = s.hflags & hflags::ADDSEG != 0 || seg_i == seg::FS || seg_i == seg::GS;
    let a = if add { s.segs[seg_i].base.wrapping_add(offset) } else { offset };
    if s.hflags & hflags::CS64 != 0 {
        a
    } else {
        a & 0xffff_ffff
    }
}

/// Runs up to [`CHUNK`] elements; returns 1 if the REP must go on.
fn helper_string(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let p = args.first().copied().unwrap_or(0);
    let kind = KINDS[((p & 0xff) as usize).min(KINDS.len() - 1)];
    let elem = ((p >> 8) & 0xff) as usize;
    let size = OpSize::from_bytes(elem).unwrap_or(OpSize::B1);
    let addr_mask = match (p >> 16) & 0xff {
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    };
    let rep = (p >> 24) & 0xff;
    let src_seg = ((p >> 32) & 0xff) as usize;
    let regs = Regs { addr_mask, step: elem as u64 };
    if matches!(kind, Kind::Ins | Kind::Outs) {
        let port = ctx.state.gpr[reg::RDX] as u16;
        crate::tcg::system::io_permitted(ctx.state, &mut *ctx.mem, port, elem.min(4) as u8)?;
    }
    let bulk_kind = rep != REP_NONE && matches!(kind, Kind::Movs | Kind::Stos);
    for _ in 0..CHUNK {
        if bulk_kind && regs.get(ctx.state, reg::RCX) != 0 && bulk(ctx, kind, elem, &regs, src_seg)? {
            continue;
        }
        let s = &mut *ctx.state;
        if rep != REP_NONE && regs.get(s, reg::RCX) == 0 {
            return Ok(0);
        }
        let src = linear(s, src_seg, regs.get(s, reg::RSI));
        let dst = linear(s, seg::ES, regs.get(s, reg::RDI));
        let acc = s.gpr[reg::RAX] & size.mask();
        let mut compare = None;
        match kind {
            Kind::Movs => {
                let v = ctx.mem.read(ctx.state, src, elem, Access::Read, Privilege::Current)?;
                ctx.mem.write(ctx.state, dst, elem, v, Privilege::Current)?;
                regs.advance(ctx.state, reg::RSI);
                regs.advance(ctx.state, reg::RDI);
            }
            Kind::Stos => {
                ctx.mem.write(ctx.state, dst, elem, acc, Privilege::Current)?;
                regs.advance(ctx.state, reg::RDI);
            }
            Kind::Lods => {
                let v = ctx.mem.read(ctx.state, src, elem, Access::Read, Privilege::Current)?;
                write_acc(ctx.state, size, v);
                regs.advance(ctx.state, reg::RSI);
            }
            Kind::Cmps => {
                let a = ctx.mem.read(ctx.state, src, elem, Access::Read, Privilege::Current)?;
                let v = ctx.mem.read(ctx.state, dst, elem, Access::Read, Privilege::Current)?;
                regs.advance(ctx.state, reg::RSI);
                regs.advance(ctx.state, reg::RDI);
                compare = Some((a, v));
            }
            Kind::Scas => {
                let v = ctx.mem.read(ctx.state, dst, elem, Access::Read, Privilege::Current)?;
                regs.advance(ctx.state, reg::RDI);
                compare = Some((acc, v));
            }
            Kind::Ins => {
                // Probe the destination first so a fault doesn't lose the port read.
                ctx.mem.read(ctx.state, dst, elem, Access::Write, Privilege::Current)?;
                let mut data = [0u8; 8];
                ctx.io.pio_read(ctx.state.gpr[reg::RDX] as u16, &mut data[..elem.min(4)]);
                ctx.mem.write(ctx.state, dst, elem, u64::from_le_bytes(data), Privilege::Current)?;
                regs.advance(ctx.state, reg::RDI);
            }
            Kind::Outs => {
                let v = ctx.mem.read(ctx.state, src, elem, Access::Read, Privilege::Current)?;
                let data = v.to_le_bytes();
                ctx.io.pio_write(ctx.state.gpr[reg::RDX] as u16, &data[..elem.min(4)]);
                regs.advance(ctx.state, reg::RSI);
            }
        }
        let s = &mut *ctx.state;
        if let Some((a, v)) = compare {
            s.cc_op = CcOp::sized(CcFamily::Sub, size);
            s.cc_dst = a.wrapping_sub(v) & size.mask();
            s.cc_src = v;
        }
        if rep == REP_NONE {
            return Ok(0);
        }
        let count = regs.get(s, reg::RCX).wrapping_sub(1);
        regs.set(s, reg::RCX, count);
        if count == 0 {
            return Ok(0);
        }
        if let Some((a, v)) = compare {
            if (rep == REP_E) != (a == v) {
                return Ok(0);
            }
        }
    }
    Ok(1)
}

/// REP MOVS / REP STOS going up through plain RAM: the elements that fit
/// in the current destination (and source) page at once, as one copy or
/// fill, then the registers advanced past them. False (nothing done) sends
/// the caller element by element: DF set, MMIO, fewer than two elements,
/// an address-size wrap, or overlapping MOVS (whose element-wise result
/// differs from a block copy). A fault can only come from translating the
/// two pages, before anything is written: precise, as element-wise.
fn bulk(ctx: &mut CpuContext<'_>, kind: Kind, elem: usize, regs: &Regs, src_seg: usize) -> Result<bool, Exception> {
    let s = &*ctx.state;
    if s.rflags & rf::DF != 0 {
        return Ok(false);
    }
    let (rsi, rdi) = (regs.get(s, reg::RSI), regs.get(s, reg::RDI));
    let (src, dst) = (linear(s, src_seg, rsi), linear(s, seg::ES, rdi));
    let room = |a: u64| (0x1000 - (a & 0xfff)) / elem as u64;
    let mut n = regs.get(s, reg::RCX).min(room(dst));
    if kind == Kind::Movs {
        n = n.min(room(src));
    }
    let bytes = n * elem as u64;
    let wraps = |r: u64| r.checked_add(bytes).is_none_or(|end| end - 1 > regs.addr_mask);
    if n < 2 || wraps(rdi) || (kind == Kind::Movs && wraps(rsi)) {
        return Ok(false);
    }
    let len = bytes as usize;
    let from = match kind {
        Kind::Movs => match ctx.mem.ram_span(ctx.state, src, len, Access::Read)? {
            Some(span) => Some(span),
            None => return Ok(false),
        },
        _ => None,
    };
    let Some(to) = ctx.mem.ram_span(ctx.state, dst, len, Access::Write)? else { return Ok(false) };
    // SAFETY: `ram_span` gave `len` bytes of guest RAM inside one page,
    // which stays mapped for the VM's lifetime; guest RAM is only accessed
    // through volatile or atomic operations (VolatileSlice's copies).
    let to_slice = unsafe { VolatileSlice::new(to.host, len) };
    match from {
        Some(from) => {
            if from.phys < to.phys + bytes && to.phys < from.phys + bytes {
                return Ok(false);
            }
            // SAFETY: as for `to_slice`.
            let from_slice = unsafe { VolatileSlice::new(from.host, len) };
            from_slice.copy_to_volatile_slice(to_slice);
        }
        None => {
            let value = ctx.state.gpr[reg::RAX].to_le_bytes();
            let mut pattern = [0u8; 4096];
            for e in pattern[..len].chunks_mut(elem) {
                e.copy_from_slice(&value[..elem]);
            }
            to_slice.copy_from(&pattern[..len]);
        }
    }
    ctx.code_pages.notify_write(to.phys, bytes);
    let s = &mut *ctx.state;
    regs.set(s, reg::RDI, rdi + bytes);
    if kind == Kind::Movs {
        regs.set(s, reg::RSI, rsi + bytes);
    }
    let left = regs.get(s, reg::RCX) - n;
    regs.set(s, reg::RCX, left);
    Ok(true)
}

fn write_acc(s: &mut X86State, size: OpSize, v: u64) {
    let r = &mut s.gpr[reg::RAX];
    *r = match size {
        OpSize::B1 => (*r & !0xff) | (v & 0xff),
        OpSize::B2 => (*r & !0xffff) | (v & 0xffff),
        OpSize::B4 => v & 0xffff_ffff,
        OpSize::B8 => v,
    };
}

static STRING_OP: Helper = Helper {
    name: "string_op",
    func: helper_string,
    may_fault: true,
    reads: StateParts::ALL,
    writes: StateParts::GPRS.union(StateParts::FLAGS),
};
