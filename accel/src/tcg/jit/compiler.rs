//! When blocks get compiled: [`Compiler`] applies the VM's [`JitPolicy`].
//! Hot blocks are compiled on a thread of their own while the vCPU goes on
//! interpreting them, so compile time (Cranelift takes a few hundred
//! microseconds a block) is not spent on the vCPU thread; `Always` compiles
//! synchronously before a block's first run (for tests of the JIT).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{CompiledBlock, Jit};
use crate::tcg::tb_cache::TranslationBlock;
use crate::tcg::JitPolicy;

/// Blocks waiting for the compiler thread at most; beyond that a hot block
/// stays interpreted until it is hot again (a multiple of the threshold).
const QUEUE: usize = 16_384;

pub struct Compiler {
    jit: Arc<Jit>,
    /// Runs before a block is queued; 0 = compile synchronously, at once.
    threshold: u32,
    queue: Option<SyncSender<Arc<TranslationBlock>>>,
    worker: Option<JoinHandle<()>>,
}

impl Compiler {
    /// The compiler the policy asks for; `None` if it is off or Cranelift
    /// can't target this host (logged).
    pub fn new(policy: JitPolicy) -> Option<Compiler> {
        let threshold = match policy {
            JitPolicy::Off => return None,
            JitPolicy::Always => 0,
            JitPolicy::Hot(n) => n.max(1),
        };
        let jit = match Jit::new() {
            Ok(j) => Arc::new(j),
            Err(e) => {
                log::warn!("TCG: no JIT, interpreting everything: {e}");
                return None;
            }
        };
        let (mut queue, mut worker) = (None, None);
        if threshold > 0 {
            let (tx, rx) = sync_channel(QUEUE);
            let j = jit.clone();
            match std::thread::Builder::new().name("tcg-jit".into()).spawn(move || compile_loop(&j, &rx)) {
                Ok(handle) => (queue, worker) = (Some(tx), Some(handle)),
                Err(e) => log::warn!("TCG: no JIT thread ({e}); compiling on the vCPU threads"),
            }
        }
        Some(Compiler { jit, threshold, queue, worker })
    }

    pub fn jit(&self) -> &Jit {
        &self.jit
    }

    /// `tb`'s host code if it has some; otherwise counts this run and,
    /// once the block is hot, has it compiled.
    #[inline]
    pub fn code_for(&self, tb: &Arc<TranslationBlock>) -> Option<CompiledBlock> {
        if let Some(c) = tb.compiled_block() {
            return c;
        }
        if self.threshold == 0 {
            return tb.compile_with(&self.jit);
        }
        let runs = tb.count_run();
        if runs % self.threshold.saturating_mul(16) != self.threshold {
            return None;
        }
        match &self.queue {
            Some(queue) => match queue.try_send(tb.clone()) {
                Ok(()) | Err(TrySendError::Full(_)) => None,
                Err(TrySendError::Disconnected(_)) => tb.compile_with(&self.jit),
            },
            None => tb.compile_with(&self.jit),
        }
    }
}

impl Drop for Compiler {
    fn drop(&mut self) {
        self.queue = None;
        if let Some(w) = self.worker.take() {
            if w.join().is_err() {
                log::error!("TCG: the JIT thread panicked");
            }
        }
    }
}

/// Blocks compiled together at most: enough to amortise making code
/// executable, few enough that the first of them isn't kept waiting.
const BATCH: usize = 16;

fn compile_loop(jit: &Jit, queue: &Receiver<Arc<TranslationBlock>>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(tb) => batch.push(tb),
                Err(_) => break,
            }
        }
        batch.retain(|tb| tb.compiled_block().is_none());
        let blocks: Vec<_> = batch.iter().map(|tb| (tb.code(), tb.links().address())).collect();
        for (tb, result) in batch.iter().zip(jit.compile_batch(&blocks)) {
            tb.set_compiled(result);
        }
    }
}
