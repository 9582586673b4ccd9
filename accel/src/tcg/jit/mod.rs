//! The JIT: hot translation blocks compiled to host code with Cranelift
//! (QEMU's TCG backend in spirit). A block is interpreted until it has run
//! [`HOT_THRESHOLD`] times, then compiled once for the whole VM, on the
//! JIT's own thread, and linked to its successors (`super::chain`); both forms
//! run the same optimised ops ([`super::bytecode`]) with the same
//! precise-exception and self-modifying-code rules, so a block may switch
//! from one to the other at any entry.
//!
//! - `compiler`: when blocks are compiled (a thread of its own).
//! - `lower`: block ops → Cranelift IR.
//! - `runtime`: the frame and the `extern "C"` entry points compiled code
//!   calls (softmmu loads and stores, helpers).
//!
//! Compiled code is never freed while the VM lives (blocks dropped by
//! self-modifying code leave theirs behind, as QEMU's code buffer does
//! until it is flushed); its size is counted in [`super::stats`].

mod compiler;
mod lower;
mod runtime;

pub use compiler::Compiler;
pub use runtime::Dispatch;

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use cranelift_codegen::ir::{types, AbiParam, InstBuilder, Signature, UserFuncName};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Module};

use super::bytecode::Code;
use super::chain::CHAIN_BUDGET;
use super::context::CpuContext;
use super::exception::Exception;
use super::interp::TbExit;
use super::stats::{self, Counter};
use super::tb_cache::TranslationBlock;
use runtime::{JitFrame, Trampoline};

/// Runs of a block before it is compiled: most blocks run a few times
/// (boot code, one-off initialisation); compiling them would cost more
/// than interpreting them.
pub const HOT_THRESHOLD: u32 = 500;

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

/// A compiled block's entry point (Cranelift's `tail` calling convention,
/// entered through the JIT's trampoline).
#[derive(Debug, Clone, Copy)]
pub struct CompiledBlock(u64);

impl CompiledBlock {
    pub fn entry(self) -> u64 {
        self.0
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

/// The VM's JIT: one Cranelift module that owns all compiled code.
pub struct Jit {
    module: Mutex<JitModule>,
    /// The host's C calling convention (runtime entry points).
    call_conv: CallConv,
    /// Enters a block from Rust: `(frame, entry) -> exit code`.
    trampoline: Trampoline,
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
            // Cranelift's x64 tail calls (chaining) need frame pointers.
            ("preserve_frame_pointers", "true"),
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
        let mut m = JitModule { module, ctx, builder: FunctionBuilderContext::new() };
        let trampoline = m.trampoline(call_conv)?;
        Ok(Jit { module: Mutex::new(m), call_conv, trampoline })
    }

    /// Compiles `code` to host code; its direct jumps chain through the
    /// block's links at `links` (see [`super::chain`]).
    pub fn compile(&self, code: &Code, links: u64) -> Result<CompiledBlock, JitError> {
        self.compile_batch(&[(code, links)]).pop().unwrap_or(Err(JitError::Unsupported("empty batch")))
    }

    /// Compiles several blocks and makes their code executable together
    /// (one `mprotect` round, and the TLB shootdown it costs every thread,
    /// for the batch rather than for each block).
    pub fn compile_batch(&self, blocks: &[(&Code, u64)]) -> Vec<Result<CompiledBlock, JitError>> {
        let start = Instant::now();
        let mut guard = self.module.lock().unwrap_or_else(PoisonError::into_inner);
        let defined: Vec<_> = blocks.iter().map(|&(code, links)| self.define(&mut guard, code, links)).collect();
        let finalized = guard.module.finalize_definitions().map_err(|e| JitError::Codegen(e.to_string()));
        let results = defined
            .into_iter()
            .map(|id| match (&finalized, id) {
                (Ok(()), Ok(id)) => {
                    stats::add(Counter::BlocksCompiled, 1);
                    Ok(CompiledBlock(guard.module.get_finalized_function(id) as u64))
                }
                (Err(e), Ok(_)) => Err(JitError::Codegen(e.to_string())),
                (_, Err(e)) => Err(e),
            })
            .collect();
        stats::add(Counter::CompileNs, start.elapsed().as_nanos() as u64);
        results
    }

    /// Lowers and compiles one block into the module (not yet executable).
    fn define(&self, m: &mut JitModule, code: &Code, links: u64) -> Result<FuncId, JitError> {
        let JitModule { module, ctx, builder } = m;
        module.clear_context(ctx);
        ctx.func.signature = block_signature();
        ctx.func.name = UserFuncName::default();
        let frontend = module.isa().frontend_config();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, builder);
            if let Err(lower::Unsupported(why)) = lower::lower(&mut b, code, self.call_conv, links) {
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
            stats::add(Counter::JitCodeBytes, c.code_buffer().len() as u64);
        }
        module.clear_context(ctx);
        Ok(id)
    }
}

/// Blocks take the frame and return an exit code, in Cranelift's `tail`
/// convention so that chained jumps are tail calls (no stack growth).
pub(super) fn block_signature() -> Signature {
    let mut s = Signature::new(CallConv::Tail);
    s.params.push(AbiParam::new(types::I64));
    s.returns.push(AbiParam::new(types::I64));
    s
}

impl JitModule {
    /// Compiles the trampoline that calls a block from Rust.
    fn trampoline(&mut self, call_conv: CallConv) -> Result<Trampoline, JitError> {
        let JitModule { module, ctx, builder } = self;
        module.clear_context(ctx);
        ctx.func.signature = Signature::new(call_conv);
        ctx.func.signature.params.extend([AbiParam::new(types::I64), AbiParam::new(types::I64)]);
        ctx.func.signature.returns.push(AbiParam::new(types::I64));
        let frontend = module.isa().frontend_config();
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, builder);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let (frame, f) = (b.block_params(entry)[0], b.block_params(entry)[1]);
            let sig = b.import_signature(block_signature());
            let call = b.ins().call_indirect(sig, f, &[frame]);
            let r = b.inst_results(call)[0];
            b.ins().return_(&[r]);
            b.seal_all_blocks();
            b.finalize(frontend);
        }
        let id =
            module.declare_anonymous_function(&ctx.func.signature).map_err(|e| JitError::Codegen(e.to_string()))?;
        module.define_function(id, ctx).map_err(|e| JitError::Codegen(format!("{e:?}")))?;
        module.clear_context(ctx);
        module.finalize_definitions().map_err(|e| JitError::Codegen(e.to_string()))?;
        let ptr = module.get_finalized_function(id);
        // SAFETY: `ptr` is the entry of the function just defined, whose
        // signature (two 64-bit integers in, one out, the host's C calling
        // convention) is `Trampoline`'s.
        Ok(unsafe { std::mem::transmute::<*const u8, Trampoline>(ptr) })
    }
}

/// How a run of compiled code ended.
pub struct ChainExit<'t> {
    pub exit: TbExit,
    /// The block that exited (the entered one, or one chained to).
    pub last: &'t TranslationBlock,
    /// Blocks entered by chaining, and their guest instructions.
    pub chained: u64,
    pub chained_insns: u64,
}

/// Runs compiled block `tb` (`block` is its entry) and whatever it chains
/// to; the exit has [`super::bytecode::run`]'s contract for the block
/// that exited. `signals` is the vCPU's pending-signal word; `dispatch`
/// lets indirect exits go on to the next block without returning.
pub fn run<'t>(
    jit: &Jit,
    ctx: &mut CpuContext<'_>,
    tb: &'t TranslationBlock,
    block: CompiledBlock,
    signals: *const u32,
    dispatch: Option<&Dispatch<'_>>,
) -> ChainExit<'t> {
    let start_rip = ctx.state.rip;
    let generation_start = ctx.code_pages.generation();
    let generation = ctx.code_pages.generation_ptr();
    let tlb = ctx.mem.fast_table(ctx.state);
    let state = std::ptr::from_mut(ctx.state).cast::<u8>();
    let mut frame = JitFrame {
        state,
        generation,
        generation_start,
        value: 0,
        tlb,
        args: [0; 4],
        budget: CHAIN_BUDGET,
        signals,
        tb,
        code: tb.code(),
        chained_insns: 0,
        dispatch,
        ctx,
        exception: None,
    };
    // SAFETY: `block` is `tb`'s compiled code, entered through the
    // trampoline with the calling convention it was compiled for. It
    // accesses the state only inside the ranges `env_access_ok` allows,
    // guest RAM through fast-TLB entries (host pages of guest memory, which
    // outlives the VM's blocks), and everything else through the runtime
    // entry points with this frame, which lives across the call. Rust code
    // holds no reference into the state while compiled code runs: helpers
    // reborrow it from the frame. Chained blocks are live (see `chain`).
    let result = unsafe { (jit.trampoline)(&mut frame, block.entry()) };
    // SAFETY: the frame's block pointer is `tb` or a chained block, and
    // blocks stay allocated for the VM's lifetime.
    let last: &'t TranslationBlock = unsafe { &*frame.tb };
    let code = last.code();
    let chained = CHAIN_BUDGET - frame.budget;
    let chained_insns = frame.chained_insns;
    let exception = frame.exception.take();
    let ctx = frame.ctx;
    let (kind, index, exc) = exit::decode(result);
    let exit = match kind {
        exit::LOOKUP => TbExit::Lookup,
        exit::HALT => TbExit::Halt,
        exit::GOTO => TbExit::Goto { slot: index as u8, pc: ctx.state.rip },
        exit::FAULT => code.fault(ctx.state, start_rip, exception.unwrap_or_else(Exception::ud), index),
        exit::SMC => {
            ctx.state.rip = code.insn_pc(index, start_rip);
            TbExit::Lookup
        }
        _ => code.fault(ctx.state, start_rip, code.raised(exc), index),
    };
    ChainExit { exit, last, chained, chained_insns }
}

#[cfg(test)]
mod tests;
