//! Direct access to one 4 KiB frame of guest RAM through its host address,
//! as cached in the TLB (QEMU's "addend"): the one place the MMU touches
//! guest memory through raw pointers.
//!
//! Guest memory is shared with other vCPU threads and devices, so every
//! access is atomic or volatile, never a plain Rust read or write (through
//! vm-memory's `VolatileSlice` over the frame). Naturally aligned
//! 1/2/4/8-byte accesses are single atomic operations (x86 promises the
//! guest that), anything else is copied bytewise. The Rust memory model
//! forbids mixing atomic sizes on one location; guest memory can't honour
//! that (the guest decides), and x86-64 hardware is coherent for mixed
//! sizes — the same stance vm-memory's `get_atomic_ref` takes.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use vm_memory::{Bytes, VolatileMemory, VolatileSlice};

use super::walker::PAGE_SIZE;

const PAGE: usize = PAGE_SIZE as usize;

/// The host mapping of one guest frame.
///
/// Invariant (established by [`HostPage::new`]): the pointer is the start of
/// `PAGE_SIZE` bytes of mapped guest RAM that stay mapped for as long as the
/// `HostPage` is used. Every method bounds-checks its offset against the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostPage(NonNull<u8>);

// SAFETY: the pointer designates shared guest RAM, which any thread may
// access (only atomically or volatilely, as every method here does).
unsafe impl Send for HostPage {}

impl HostPage {
    /// # Safety
    /// `ptr` must be the start of `PAGE_SIZE` bytes of guest RAM that stay
    /// mapped for as long as the returned value (or a copy) is used.
    pub(crate) unsafe fn new(ptr: NonNull<u8>) -> Self {
        HostPage(ptr)
    }

    /// The frame's host address (for the fast TLB of compiled code).
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.0.as_ptr()
    }

    /// The host address of `[off, off + len)`, if inside the page.
    fn at(&self, off: usize, len: usize) -> Option<*mut u8> {
        (off.checked_add(len)? <= PAGE).then(|| self.0.as_ptr().wrapping_add(off))
    }

    fn slice(&self, off: usize, len: usize) -> Option<VolatileSlice<'_>> {
        let ptr = self.at(off, len)?;
        // SAFETY: `at` checked the range lies in the page, which the type's
        // invariant keeps mapped; every user of guest RAM accesses it
        // volatilely or atomically.
        Some(unsafe { VolatileSlice::new(ptr, len) })
    }

    /// Copies `buf.len()` bytes at `off` into `buf`. False if out of the page.
    pub(crate) fn read(&self, off: usize, buf: &mut [u8]) -> bool {
        self.slice(off, buf.len()).map(|s| s.copy_to(buf)).is_some()
    }

    /// Copies `buf` to `off`. False if out of the page.
    pub(crate) fn write(&self, off: usize, buf: &[u8]) -> bool {
        self.slice(off, buf.len()).map(|s| s.copy_from(buf)).is_some()
    }

    /// Loads a little-endian `size`-byte value (1..=8); atomic when aligned.
    pub(crate) fn load(&self, off: usize, size: usize) -> Option<u64> {
        if size > 8 {
            return None;
        }
        let s = self.slice(off, size)?;
        // vm-memory's `load` is one atomic access, and fails when misaligned.
        let atomic = match size {
            1 => s.load::<u8>(0, Ordering::Relaxed).ok().map(u64::from),
            2 => s.load::<u16>(0, Ordering::Relaxed).ok().map(u64::from),
            4 => s.load::<u32>(0, Ordering::Relaxed).ok().map(u64::from),
            8 => s.load::<u64>(0, Ordering::Relaxed).ok(),
            _ => None,
        };
        Some(atomic.unwrap_or_else(|| {
            let mut buf = [0u8; 8];
            s.copy_to(&mut buf[..size]);
            u64::from_le_bytes(buf)
        }))
    }

    /// Stores the low `size` bytes (1..=8) of `value`; atomic when aligned.
    pub(crate) fn store(&self, off: usize, size: usize, value: u64) -> bool {
        let Some(s) = self.slice(off, size).filter(|_| size <= 8) else { return false };
        let atomic = match size {
            1 => s.store(value as u8, 0, Ordering::Relaxed).is_ok(),
            2 => s.store(value as u16, 0, Ordering::Relaxed).is_ok(),
            4 => s.store(value as u32, 0, Ordering::Relaxed).is_ok(),
            8 => s.store(value, 0, Ordering::Relaxed).is_ok(),
            _ => false,
        };
        if !atomic {
            s.copy_from(&value.to_le_bytes()[..size]);
        }
        true
    }

    /// Atomically replaces the `size`-byte value (1..=16) at `off` with
    /// `f(old)`, returning `old`. `f` may run several times (compare-exchange
    /// loop). Works on the smallest naturally aligned 1/2/4/8/16-byte window
    /// that holds the access, so unaligned operands inside one such window
    /// stay atomic; `None` if there is none (the access straddles a 16-byte
    /// boundary) or 16-byte compare-exchange is unavailable: the caller falls
    /// back to its lock.
    pub(crate) fn rmw(&self, off: usize, size: usize, f: &mut dyn FnMut(u128) -> u128) -> Option<u128> {
        let addr = self.at(off, size)? as usize;
        let width = [1usize, 2, 4, 8, 16].into_iter().find(|&w| w >= size && addr % w + size <= w)?;
        let shift = (addr % width) * 8;
        let window = self.slice(off.checked_sub(addr % width)?, width)?;
        let mask = if size >= 16 { u128::MAX } else { (1u128 << (size * 8)) - 1 };
        let mut cur = load_window(&window, width)?;
        loop {
            let old = (cur >> shift) & mask;
            let new = (cur & !(mask << shift)) | ((f(old) & mask) << shift);
            match cas_window(&window, width, cur, new)? {
                Ok(()) => return Some(old),
                Err(seen) => cur = seen,
            }
        }
    }
}

/// A (possibly torn, for 16 bytes) read of a naturally aligned window: only
/// the first guess of a compare-exchange loop, which validates it.
fn load_window(w: &VolatileSlice<'_>, width: usize) -> Option<u128> {
    let r = Ordering::Relaxed;
    match width {
        1 => w.load::<u8>(0, r).ok().map(u128::from),
        2 => w.load::<u16>(0, r).ok().map(u128::from),
        4 => w.load::<u32>(0, r).ok().map(u128::from),
        8 => w.load::<u64>(0, r).ok().map(u128::from),
        16 => Some(u128::from(w.load::<u64>(0, r).ok()?) | u128::from(w.load::<u64>(8, r).ok()?) << 64),
        _ => None,
    }
}

/// Compare-exchange of a naturally aligned window: `Ok` if it held `old`
/// (now `new`), else the value seen. `None` if not possible on this host.
fn cas_window(w: &VolatileSlice<'_>, width: usize, old: u128, new: u128) -> Option<Result<(), u128>> {
    macro_rules! cas {
        ($atomic:ty, $int:ty) => {
            w.get_atomic_ref::<$atomic>(0)
                .ok()?
                .compare_exchange(old as $int, new as $int, Ordering::SeqCst, Ordering::SeqCst)
                .map(drop)
                .map_err(u128::from)
        };
    }
    Some(match width {
        1 => cas!(AtomicU8, u8),
        2 => cas!(AtomicU16, u16),
        4 => cas!(AtomicU32, u32),
        8 => cas!(AtomicU64, u64),
        16 => return cmpxchg16b(w.ptr_guard_mut().as_ptr(), old, new),
        _ => return None,
    })
}

/// `LOCK CMPXCHG16B` (Rust has no stable `AtomicU128`). `ptr` must point
/// to 16 bytes of mapped guest RAM.
#[cfg(target_arch = "x86_64")]
fn cmpxchg16b(ptr: *mut u8, old: u128, new: u128) -> Option<Result<(), u128>> {
    if !std::arch::is_x86_feature_detected!("cmpxchg16b") || !(ptr as usize).is_multiple_of(16) {
        return None;
    }
    let (prev_lo, prev_hi): (u64, u64);
    // SAFETY: `ptr` is 16-byte aligned with 16 mapped bytes (callers'
    // contract, alignment checked above) and the CPU has CMPXCHG16B. RBX
    // can't be named as an operand (LLVM reserves it), so it is swapped
    // in and out around the instruction. The pointer is pinned to RSI: as
    // a plain `reg` operand the allocator may pick RBX for it, which the
    // swap would overwrite before the CMPXCHG16B uses it.
    unsafe {
        std::arch::asm!(
            "xchg {rbx_tmp}, rbx",
            "lock cmpxchg16b xmmword ptr [rsi]",
            "mov rbx, {rbx_tmp}",
            in("rsi") ptr,
            rbx_tmp = inout(reg) new as u64 => _,
            in("rcx") (new >> 64) as u64,
            inout("rax") old as u64 => prev_lo,
            inout("rdx") (old >> 64) as u64 => prev_hi,
            options(nostack),
        );
    }
    let prev = (u128::from(prev_hi) << 64) | u128::from(prev_lo);
    Some(if prev == old { Ok(()) } else { Err(prev) })
}

#[cfg(not(target_arch = "x86_64"))]
fn cmpxchg16b(_ptr: *mut u8, _old: u128, _new: u128) -> Option<Result<(), u128>> {
    None
}
