//! What compiled blocks call back into: the frame a block runs with and the
//! `extern "C"` entry points for the operations kept out of line (guest
//! memory through the softmmu, helper calls, the rare IR ops).
//!
//! Every entry point returns a status (0 = go on, 1 = an exception is stored
//! in the frame) and leaves a value, if any, in [`JitFrame::value`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::tcg::bytecode::Code;
use crate::tcg::context::CpuContext;
use crate::tcg::exception::Exception;
use crate::tcg::interp::{bin, guest_load, guest_store, st_env};
use crate::tcg::ir::{BinOp, MemFlags, MemSize, MAX_HELPER_ARGS};
use crate::tcg::mmu::fast_tlb::FastEntry;
use crate::tcg::mmu::Access;
use crate::tcg::state::{hflags, rflags, seg};
use crate::tcg::tb_cache::{JumpCache, TbCache, TranslationBlock};

/// A block's run-time frame; compiled code reaches its fields by offset.
#[repr(C)]
pub(super) struct JitFrame<'c, 'a> {
    /// The guest state (`X86State`) the block's env ops address.
    pub(super) state: *mut u8,
    /// The VM's self-modifying-code generation (an `AtomicU64`'s value).
    pub(super) generation: *const u64,
    /// Its value when the block started.
    pub(super) generation_start: u64,
    /// Results of out-of-line operations.
    pub(super) value: u64,
    /// The fast TLB table for the block's privilege (a block runs at one CPL).
    pub(super) tlb: *const FastEntry,
    /// Helper-call arguments, stored by the block before the call.
    pub(super) args: [u64; MAX_HELPER_ARGS],
    /// Chained jumps left before the chain must return to the vCPU loop.
    pub(super) budget: u64,
    /// The vCPU's pending-signal word: non-zero stops chaining.
    pub(super) signals: *const u32,
    /// The running block and its code (chaining updates them).
    pub(super) tb: *const TranslationBlock,
    pub(super) code: *const Code,
    /// Guest instructions of the blocks entered by chaining (statistics).
    pub(super) chained_insns: u64,
    /// Where indirect exits look for their next block (none: they return).
    pub(super) dispatch: Option<&'c Dispatch<'c>>,
    pub(super) ctx: &'c mut CpuContext<'a>,
    /// The exception an entry point returned status 1 for.
    pub(super) exception: Option<Exception>,
}

impl JitFrame<'_, '_> {
    /// The running block's code.
    pub(super) fn code(&self) -> &Code {
        // SAFETY: `code` points into a translation block, and blocks stay
        // allocated for the VM's lifetime (see `chain`).
        unsafe { &*self.code }
    }
}

/// Field offsets compiled code uses.
pub(super) mod offsets {
    use super::JitFrame;
    use std::mem::offset_of;
    pub const STATE: i32 = offset_of!(JitFrame<'static, 'static>, state) as i32;
    pub const GENERATION: i32 = offset_of!(JitFrame<'static, 'static>, generation) as i32;
    pub const GENERATION_START: i32 = offset_of!(JitFrame<'static, 'static>, generation_start) as i32;
    pub const VALUE: i32 = offset_of!(JitFrame<'static, 'static>, value) as i32;
    pub const TLB: i32 = offset_of!(JitFrame<'static, 'static>, tlb) as i32;
    pub const BUDGET: i32 = offset_of!(JitFrame<'static, 'static>, budget) as i32;
    pub const SIGNALS: i32 = offset_of!(JitFrame<'static, 'static>, signals) as i32;
    pub const TB: i32 = offset_of!(JitFrame<'static, 'static>, tb) as i32;
    pub const CODE: i32 = offset_of!(JitFrame<'static, 'static>, code) as i32;
    pub const CHAINED_INSNS: i32 = offset_of!(JitFrame<'static, 'static>, chained_insns) as i32;
    pub const ARGS: i32 = offset_of!(JitFrame<'static, 'static>, args) as i32;
}

/// The trampoline that enters compiled block `entry` with `frame`.
pub(super) type Trampoline = unsafe extern "C" fn(frame: *mut JitFrame<'_, '_>, entry: u64) -> u64;

/// What the vCPU loop lends compiled code to find the next block of an
/// indirect jump itself (QEMU's `lookup_and_goto_ptr`).
pub struct Dispatch<'v> {
    pub jump_cache: &'v JumpCache,
    pub tb_cache: &'v TbCache,
    /// The vCPU loop has an interrupt to deliver once RFLAGS.IF allows.
    pub irq_pending: bool,
}

/// An indirect exit (`RIP` stored): the compiled entry of the block for
/// the new RIP, with the frame moved to it, or 0 to return to the vCPU
/// loop. Only exact jump-cache hits of compiled blocks qualify, and only
/// while the chain's budget lasts, no signal or deliverable interrupt
/// waits, no interrupt shadow is open and no code was invalidated (the
/// loop must drop it first).
pub(super) extern "C" fn next_block(frame: *mut JitFrame<'_, '_>) -> u64 {
    // SAFETY: as in `load`.
    let frame = unsafe { &mut *frame };
    let Some(d) = frame.dispatch else { return 0 };
    // SAFETY: `signals` points to the vCPU's pending word, alive for the run.
    let signalled = unsafe { (*frame.signals.cast::<AtomicU32>()).load(Ordering::Relaxed) } != 0;
    let ctx = &*frame.ctx;
    let state = &*ctx.state;
    // The STI / MOV SS shadow is the vCPU loop's to end (at its next block).
    if frame.budget == 0
        || signalled
        || state.hflags & hflags::INHIBIT_IRQ != 0
        || (d.irq_pending && state.rflags & rflags::IF != 0)
        || ctx.code_pages.generation() != frame.generation_start
    {
        return 0;
    }
    let code64 = state.hflags & hflags::CS64 != 0;
    let cs_base = if code64 { 0 } else { state.segs[seg::CS].base };
    let key = state.hflags & hflags::TB_KEY_MASK;
    let epoch = ctx.mem.tlb_epoch();
    let Some(tb) = d.jump_cache.find_hit(d.tb_cache.generation(), state.rip, cs_base, key, epoch) else { return 0 };
    let Some(entry) = tb.compiled_entry() else { return 0 };
    frame.budget -= 1;
    frame.chained_insns += tb.code().insn_count() as u64;
    frame.tb = Arc::as_ptr(tb);
    frame.code = tb.code();
    entry
}

/// Packs a memory access's shape into one argument.
pub(super) fn mem_desc(size: MemSize, sign: bool, flags: MemFlags) -> u64 {
    size.bytes() as u64 | u64::from(sign) << 8 | u64::from(flags.0) << 16
}

fn unpack(desc: u64) -> (MemSize, bool, MemFlags) {
    let size = MemSize::from_bytes((desc & 0xff) as usize).unwrap_or(MemSize::B8);
    (size, desc & 0x100 != 0, MemFlags((desc >> 16) as u8))
}

/// Guest-memory load: the value in `frame.value`.
pub(super) extern "C" fn load(frame: *mut JitFrame<'_, '_>, addr: u64, desc: u64) -> u64 {
    // SAFETY: compiled code passes the frame `run` built, which outlives
    // the block, and nothing else references it during this call.
    let frame = unsafe { &mut *frame };
    let (size, sign, flags) = unpack(desc);
    let ctx = &mut *frame.ctx;
    match guest_load(ctx, addr, size, sign, flags) {
        Ok(v) => {
            let access = if flags.contains(MemFlags::RMW) { Access::Write } else { Access::Read };
            ctx.mem.fill_fast(ctx.state, addr, access);
            frame.value = v;
            0
        }
        Err(e) => {
            frame.exception = Some(e);
            1
        }
    }
}

/// Guest-memory store.
pub(super) extern "C" fn store(frame: *mut JitFrame<'_, '_>, addr: u64, value: u64, desc: u64) -> u64 {
    // SAFETY: as in `load`.
    let frame = unsafe { &mut *frame };
    let (size, _, flags) = unpack(desc);
    let ctx = &mut *frame.ctx;
    match guest_store(ctx, addr, size, value, flags) {
        Ok(()) => {
            ctx.mem.fill_fast(ctx.state, addr, Access::Write);
            0
        }
        Err(e) => {
            frame.exception = Some(e);
            1
        }
    }
}

/// A compiled store hit a page whose "holds code" bit is set: the Rust
/// store path's invalidation.
pub(super) extern "C" fn code_written(frame: *mut JitFrame<'_, '_>, page: u64) {
    // SAFETY: as in `load`.
    let frame = unsafe { &mut *frame };
    frame.ctx.code_pages.notify_page(page);
}

/// Helper call `site` of the block's code, arguments in `frame.args`.
pub(super) extern "C" fn call(frame: *mut JitFrame<'_, '_>, site: u64) -> u64 {
    // SAFETY: as in `load`.
    let frame = unsafe { &mut *frame };
    let Some(c) = frame.code().calls.get(site as usize).cloned() else {
        frame.exception = Some(Exception::ud());
        return 1;
    };
    let nargs = usize::from(c.nargs).min(MAX_HELPER_ARGS);
    let args = frame.args;
    match (c.helper.func)(frame.ctx, &args[..nargs]) {
        Ok(v) => {
            frame.value = v;
            0
        }
        Err(e) => {
            frame.exception = Some(e);
            1
        }
    }
}

/// Division and remainder (kept out of line: a zero divisor, a
/// translator bug, must not trap the host).
pub(super) extern "C" fn divide(op: u64, a: u64, b: u64) -> u64 {
    let op = match op {
        0 => BinOp::DivU,
        1 => BinOp::DivS,
        2 => BinOp::RemU,
        _ => BinOp::RemS,
    };
    bin(op, a, b)
}

/// The argument [`divide`] takes for `op` (None: not a division).
pub(super) fn divide_code(op: BinOp) -> Option<u64> {
    match op {
        BinOp::DivU => Some(0),
        BinOp::DivS => Some(1),
        BinOp::RemU => Some(2),
        BinOp::RemS => Some(3),
        _ => None,
    }
}

/// An env store that needs sanitising (`cc_op`), at `offset` of `size`.
pub(super) extern "C" fn store_env_checked(frame: *mut JitFrame<'_, '_>, offset: u64, value: u64, size: u64) {
    // SAFETY: as in `load`.
    let frame = unsafe { &mut *frame };
    let size = MemSize::from_bytes(size as usize).unwrap_or(MemSize::B8);
    st_env(frame.ctx.state, offset as u32, size, value);
}
