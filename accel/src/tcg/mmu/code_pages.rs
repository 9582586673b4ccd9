//! Self-modifying code: which guest-physical pages hold translated code,
//! shared by all vCPUs of a VM (QEMU, Bochs and v86 keep the same map).
//!
//! The translator marks a page before reading the bytes it translates.
//! Every write to guest RAM (CPU stores, atomics, A/D updates, DMA through
//! [`CodePages::notify_write`]) checks the page's bit *after* storing; a set
//! bit is cleared, the page queued for [`CodePages::take_invalidated`] and
//! the generation bumped. Pages are re-marked when code on them is
//! translated again, so writes to data next to stale code stay cheap.
//!
//! Ordering. A store racing with a translation of the same page must not
//! leave stale code behind: either the writer sees the bit, or the
//! translator reads the new bytes. That is the store→load pattern x86's
//! store buffer can reorder, so one side needs a full barrier. It goes on
//! the rare side: [`CodePages::mark`] issues `membarrier(PRIVATE_EXPEDITED)`,
//! which acts as a full barrier on every thread of the process, so the
//! store fast path needs only a compiler fence. Without membarrier (old
//! kernels, seccomp) every RAM write executes `fence(SeqCst)` instead.

use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

const PAGE_SHIFT: u32 = 12;

/// The "holds translated code" bitmap of one VM: one bit per 4 KiB page of
/// guest-physical space from 0 to the end of RAM.
pub struct CodePages {
    bits: Box<[AtomicU64]>,
    /// Pages whose code was written to since the last `take_invalidated`.
    invalidated: Mutex<Vec<u64>>,
    generation: AtomicU64,
    /// Serialises marking with its barrier: a second translator that finds
    /// the bit already set must not read code before that barrier is done.
    mark_lock: Mutex<()>,
    /// No membarrier: writers fence instead.
    writer_fence: AtomicBool,
}

impl std::fmt::Debug for CodePages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodePages")
            .field("pages", &(self.bits.len() * 64))
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl CodePages {
    /// A map covering every page of `mem`'s RAM (pages above it are never
    /// marked: code run from there is not tracked).
    pub fn new(mem: &GuestMemoryMmap) -> Self {
        Self::with_pages((mem.last_addr().0 >> PAGE_SHIFT) + 1)
    }

    /// A map of `pages` pages starting at physical address 0.
    pub fn with_pages(pages: u64) -> Self {
        let words = usize::try_from(pages.div_ceil(64)).unwrap_or(0);
        let writer_fence = !membarrier::register();
        if writer_fence {
            log::info!("membarrier unavailable: guest RAM stores fence for self-modifying-code checks");
        }
        CodePages {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            invalidated: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            mark_lock: Mutex::new(()),
            writer_fence: AtomicBool::new(writer_fence),
        }
    }

    fn slot(&self, page: u64) -> Option<(&AtomicU64, u64)> {
        let word = self.bits.get(usize::try_from(page / 64).ok()?)?;
        Some((word, 1 << (page % 64)))
    }

    /// Records that page `page` (physical address >> 12) holds translated
    /// code. Call before reading the bytes to translate. Returns false for a
    /// page outside the map (writes to it will not invalidate anything).
    pub fn mark(&self, page: u64) -> bool {
        let Some((word, bit)) = self.slot(page) else { return false };
        let _guard = self.mark_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let newly = word.fetch_or(bit, Ordering::SeqCst) & bit == 0;
        if newly && !self.writer_fence.load(Ordering::Relaxed) && !membarrier::barrier() {
            log::error!("membarrier failed: falling back to fenced stores");
            self.writer_fence.store(true, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        true
    }

    /// Whether page `page` (physical address >> 12) holds translated code.
    pub fn is_code(&self, page: u64) -> bool {
        self.slot(page).is_some_and(|(word, bit)| word.load(Ordering::Acquire) & bit != 0)
    }

    /// The barrier between a RAM store and the bit check that follows it.
    #[inline]
    fn after_store(&self) {
        if self.writer_fence.load(Ordering::Relaxed) {
            fence(Ordering::SeqCst);
        } else {
            compiler_fence(Ordering::SeqCst);
        }
    }

    /// Reports a completed write to page `page` (physical address >> 12):
    /// the store fast path, one load when the page holds no code.
    #[inline]
    pub fn notify_page(&self, page: u64) {
        self.after_store();
        if let Some((word, bit)) = self.slot(page) {
            if word.load(Ordering::Relaxed) & bit != 0 {
                self.invalidate(word, page, bit);
            }
        }
    }

    /// Reports a completed write of `len` bytes at physical `phys` (CPU
    /// slow paths and DMA by devices): code on those pages is invalidated.
    pub fn notify_write(&self, phys: u64, len: u64) {
        if len == 0 || self.bits.is_empty() {
            return;
        }
        self.after_store();
        let first = phys >> PAGE_SHIFT;
        let last = (phys.saturating_add(len - 1) >> PAGE_SHIFT).min(self.bits.len() as u64 * 64 - 1);
        let mut page = first;
        while page <= last {
            let Some((word, _)) = self.slot(page) else { return };
            // The bits of this word inside [page, last].
            let lo = page % 64;
            let hi = if last / 64 == page / 64 { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            let mut hits = word.load(Ordering::Relaxed) & mask;
            while hits != 0 {
                let b = u64::from(hits.trailing_zeros());
                self.invalidate(word, page - lo + b, 1 << b);
                hits &= hits - 1;
            }
            page = page - lo + 64;
        }
    }

    #[cold]
    fn invalidate(&self, word: &AtomicU64, page: u64, bit: u64) {
        // Only the writer that clears the bit queues the page.
        if word.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
            self.invalidated.lock().unwrap_or_else(PoisonError::into_inner).push(page);
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// Takes the pages (physical address >> 12) whose code was overwritten
    /// since the last call. Meant for the VM's one translation cache, which
    /// drains it before looking blocks up.
    pub fn take_invalidated(&self) -> Vec<u64> {
        std::mem::take(&mut *self.invalidated.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Bumped on every invalidation: a cheap "did anything change" check
    /// (e.g. after a store, to leave a block that may have modified itself).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The address of the word holding page `page`'s bit (bit `page % 64`),
    /// for compiled stores that check it inline; pages outside the map get
    /// a word that is always zero.
    pub fn word_ptr(&self, page: u64) -> *const u64 {
        static NO_CODE: AtomicU64 = AtomicU64::new(0);
        self.slot(page).map_or(NO_CODE.as_ptr(), |(word, _)| word.as_ptr())
    }

    /// Where [`Self::generation`] lives, for compiled code that reads it
    /// directly (an aligned 8-byte load: atomic, and acquire on x86).
    pub fn generation_ptr(&self) -> *const u64 {
        self.generation.as_ptr()
    }
}

/// `membarrier(2)`, private expedited: an IPI-driven full barrier on every
/// CPU running a thread of this process.
mod membarrier {
    const CMD_QUERY: libc::c_int = 0;
    const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    fn call(cmd: libc::c_int) -> libc::c_long {
        // SAFETY: membarrier takes no pointers; flags and cpu_id are 0.
        unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_uint, 0 as libc::c_int) }
    }

    /// Registers the process (idempotent); false if unsupported.
    pub(super) fn register() -> bool {
        let cmds = call(CMD_QUERY);
        cmds >= 0 && cmds & libc::c_long::from(CMD_PRIVATE_EXPEDITED) != 0 && call(CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    }

    pub(super) fn barrier() -> bool {
        call(CMD_PRIVATE_EXPEDITED) == 0
    }
}
