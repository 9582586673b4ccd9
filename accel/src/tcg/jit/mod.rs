//! The JIT: hot translation blocks compiled to host code with Cranelift
//! (QEMU's TCG backend in spirit). A block is interpreted until it has run
//! [`HOT_THRESHOLD`] times, then compiled once for the whole VM; both forms
//! run the same optimised ops ([`super::bytecode`]) with the same
//! precise-exception and self-modifying-code rules, so a block may switch
//! from one to the other at any entry.
//!
//! - `lower`: block ops → Cranelift IR.
//! - `runtime`: the frame and the `extern "C"` entry points compiled code
//!   calls (softmmu loads and stores, helpers).
//!
//! Compiled code is never freed while the VM lives (blocks dropped by
//! self-modifying code leave theirs behind, as QEMU's code buffer does
//! until it is flushed); its size is logged with the statistics.

mod lower;
mod runtime;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use cranelift_codegen::ir::{types, AbiParam, UserFuncName};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Module};

use super::bytecode::Code;
use super::context::CpuContext;
use super::exception::Exception;
use super::interp::TbExit;
use runtime::{BlockFn, JitFrame};

/// Runs of a block before it is compiled: most blocks run a few times
/// (boot code, one-off initialisation); compiling them would cost more
/// than interpreting them.
pub const HOT_THRESHOLD: u32 = 24;

/// Exit codes a compiled block returns: kind in the low byte, then the
/// guest instruction index, then an exception index.
mod exit {
    pub const LOOKUP: u64 = 0;
    pub const HALT: u64 = 1;
    pub const GOTO: u64 = 2;
    pub const FAULT: u64 = 3;
    pub const SMC: u64 = 4;
    pub const RAISE: u64 = 5;

    pub fn goto(slot: u8) -> u64 {
        GOTO | u64::from(slot) << 8
    }
    pub fn fault(insn: u16) -> u64 {
        FAULT | u64::from(insn) << 8
    }
    pub fn smc(insn: u16) -> u64 {
        SMC | u64::from(insn) << 8
    }
    pub fn raise(insn: u16, exc: u16) -> u64 {
        RAISE | u64::from(insn) << 8 | u64::from(exc) << 32
    }

    /// (kind, slot or insn, exception index)
    pub fn decode(code: u64) -> (u64, u16, u16) {
        (code & 0xff, (code >> 8) as u16, (code >> 32) as u16)
    }
}

/// A compiled block's entry point.
#[derive(Clone, Copy)]
pub struct CompiledBlock(BlockFn);

impl std::fmt::Debug for CompiledBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompiledBlock({:p})", self.0 as *const u8)
    }
}

/// Why compiling failed (the block stays interpreted).
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    #[error("this host is not supported by Cranelift: {0}")]
    Host(String),
    #[error("the block uses what the JIT does not compile: {0}")]
    Unsupported(&'static str),
    #[error("Cranelift: {0}")]
    Codegen(String),
}

/// Counters for the statistics line.
#[derive(Debug, Default)]
pub struct JitStats {
    pub compiled: AtomicU64,
    pub failed: AtomicU64,
    pub compile_ns: AtomicU64,
    pub code_bytes: AtomicU64,
}

/// The VM's JIT: one Cranelift module that owns all compiled code.
pub struct Jit {
    module: Mutex<JitModule>,
    call_conv: CallConv,
    pub stats: JitStats,
}

struct JitModule {
    module: JITModule,
    ctx: cranelift_codegen::Context,
    builder: FunctionBuilderContext,
}

// SAFETY: the module is only used under the mutex; the code it owns is
// immutable once finalised and callable from any thread.
unsafe impl Send for JitModule {}

impl Jit {
    pub fn new() -> Result<Jit, JitError> {
        let mut flags = settings::builder();
        for (k, v) in [
            ("opt_level", "speed"),
            ("is_pic", "false"),
            ("use_colocated_libcalls", "false"),
            ("enable_verifier", "false"),
        ] {
            flags.set(k, v).map_err(|e| JitError::Host(e.to_string()))?;
        }
        let isa: OwnedTargetIsa = cranelift_native::builder()
            .map_err(|e| JitError::Host(e.to_string()))?
            .finish(settings::Flags::new(flags))
            .map_err(|e| JitError::Host(e.to_string()))?;
        let call_conv = isa.default_call_conv();
        let module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        let ctx = module.make_context();
        Ok(Jit {
            module: Mutex::new(JitModule { module, ctx, builder: FunctionBuilderContext::new() }),
            call_conv,
            stats: JitStats::default(),
        })
    }

    /// Compiles `code` to host code.
    pub fn compile(&self, code: &Code) -> Result<CompiledBlock, JitError> {
        let start = Instant::now();
        let result = self.compile_locked(code);
        let s = &self.stats;
        match &result {
            Ok(_) => s.compiled.fetch_add(1, Ordering::Relaxed),
            Err(_) => s.failed.fetch_add(1, Ordering::Relaxed),
        };
        s.compile_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        result
    }

    fn compile_locked(&self, code: &Code) -> Result<CompiledBlock, JitError> {
        let mut guard = self.module.lock().unwrap_or_else(PoisonError::into_inner);
        let JitModule { module, ctx, builder } = &mut *guard;
        module.clear_context(ctx);
        ctx.func.signature.call_conv = self.call_conv;
        ctx.func.signature.params.push(AbiParam::new(types::I64));
        ctx.func.signature.returns.push(AbiParam::new(types::I64));
        ctx.func.name = UserFuncName::default();
        let frontend = module.isa().frontend_config();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, builder);
            if let Err(lower::Unsupported(why)) = lower::lower(&mut b, code, self.call_conv) {
                // Only `finalize` resets the builder state: start afresh.
                *builder = FunctionBuilderContext::new();
                return Err(JitError::Unsupported(why));
            }
            b.finalize(frontend);
        }
        let id =
            module.declare_anonymous_function(&ctx.func.signature).map_err(|e| JitError::Codegen(e.to_string()))?;
        module.define_function(id, ctx).map_err(|e| JitError::Codegen(format!("{e:?}")))?;
        if let Some(c) = ctx.compiled_code() {
            self.stats.code_bytes.fetch_add(c.code_buffer().len() as u64, Ordering::Relaxed);
        }
        module.clear_context(ctx);
        module.finalize_definitions().map_err(|e| JitError::Codegen(e.to_string()))?;
        let ptr = module.get_finalized_function(id);
        // SAFETY: `ptr` is the entry of the function just defined with the
        // signature `BlockFn` describes (one pointer in, one u64 out, the
        // ISA's default calling convention = extern "C" on this host).
        let f = unsafe { std::mem::transmute::<*const u8, BlockFn>(ptr) };
        Ok(CompiledBlock(f))
    }
}

/// Runs a compiled block; the same contract as [`super::bytecode::run`].
pub fn run(ctx: &mut CpuContext<'_>, code: &Code, block: CompiledBlock) -> TbExit {
    let start_rip = ctx.state.rip;
    let generation_start = ctx.code_pages.generation();
    let generation = ctx.code_pages.generation_ptr();
    let state = std::ptr::from_mut(ctx.state).cast::<u8>();
    let mut frame =
        JitFrame { state, generation, generation_start, value: 0, args: [0; 4], ctx, code, exception: None };
    // SAFETY: the block was compiled from `code` (the caller passes the
    // pair stored together in one translation block); it accesses the
    // state only inside the ranges `env_access_ok` allows, and everything
    // else through the runtime entry points with this frame, which lives
    // across the call. Rust code never holds a reference into the state
    // while compiled code runs: helpers reborrow it from the frame.
    let result = unsafe { (block.0)(&mut frame) };
    let exception = frame.exception.take();
    let (kind, index, exc) = exit::decode(result);
    let insn = |i: u16| code.insns.get(usize::from(i)).copied().unwrap_or((start_rip, 0));
    let fault = |ctx: &mut CpuContext<'_>, exception: Exception, i: u16| {
        let (pc, len) = insn(i);
        ctx.state.rip = pc;
        TbExit::Exception { exception, pc, next_pc: pc.wrapping_add(u64::from(len)) }
    };
    match kind {
        exit::LOOKUP => TbExit::Lookup,
        exit::HALT => TbExit::Halt,
        exit::GOTO => TbExit::Goto { slot: index as u8, pc: frame.ctx.state.rip },
        exit::FAULT => fault(frame.ctx, exception.unwrap_or_else(Exception::ud), index),
        exit::SMC => {
            frame.ctx.state.rip = insn(index).0;
            TbExit::Lookup
        }
        _ => {
            let e = code.raises.get(usize::from(exc)).copied().unwrap_or_else(Exception::ud);
            fault(frame.ctx, e, index)
        }
    }
}

#[cfg(test)]
mod tests;

impl Drop for Jit {
    fn drop(&mut self) {
        let s = &self.stats;
        log::debug!(
            "TCG JIT: {} blocks compiled ({} declined) in {} ms, {} KiB of host code",
            s.compiled.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
            s.compile_ns.load(Ordering::Relaxed) / 1_000_000,
            s.code_bytes.load(Ordering::Relaxed) / 1024
        );
    }
}
