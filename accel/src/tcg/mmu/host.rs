//! Direct access to one 4 KiB frame of guest RAM through its host address,
//! as cached in the TLB (QEMU's "addend"): the one place the MMU touches
//! guest memory through raw pointers.
//!
//! Guest memory is shared with other vCPU threads and devices, so every
//! access is atomic or volatile, never a plain Rust read or write. Naturally
//! aligned 1/2/4/8-byte accesses are single atomic operations (x86 promises
//! the guest that), anything else is copied bytewise. The Rust memory model
//! forbids mixing atomic sizes on one location; guest memory can't honour
//! that (the guest decides), and x86-64 hardware is coherent for mixed
//! sizes — the same stance vm-memory's `get_atomic_ref` takes.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use vm_memory::VolatileSlice;

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
        let ptr = self.at(off, size)?;
        // SAFETY (all arms): `ptr..ptr + size` is in the mapped page (`at`)
        // and aligned for the atomic type (the match guard).
        Some(match size {
            1 => u64::from(unsafe { AtomicU8::from_ptr(ptr) }.load(Ordering::Relaxed)),
            2 if aligned(ptr, 2) => u64::from(unsafe { AtomicU16::from_ptr(ptr.cast()) }.load(Ordering::Relaxed)),
            4 if aligned(ptr, 4) => u64::from(unsafe { AtomicU32::from_ptr(ptr.cast()) }.load(Ordering::Relaxed)),
            8 if aligned(ptr, 8) => unsafe { AtomicU64::from_ptr(ptr.cast()) }.load(Ordering::Relaxed),
            _ => {
                let mut buf = [0u8; 8];
                self.read(off, buf.get_mut(..size)?);
                u64::from_le_bytes(buf)
            }
        })
    }

    /// Stores the low `size` bytes (1..=8) of `value`; atomic when aligned.
    pub(crate) fn store(&self, off: usize, size: usize, value: u64) -> bool {
        let Some(ptr) = self.at(off, size) else { return false };
        // SAFETY (all arms): as in `load`.
        match size {
            1 => unsafe { AtomicU8::from_ptr(ptr) }.store(value as u8, Ordering::Relaxed),
            2 if aligned(ptr, 2) => unsafe { AtomicU16::from_ptr(ptr.cast()) }.store(value as u16, Ordering::Relaxed),
            4 if aligned(ptr, 4) => unsafe { AtomicU32::from_ptr(ptr.cast()) }.store(value as u32, Ordering::Relaxed),
            8 if aligned(ptr, 8) => unsafe { AtomicU64::from_ptr(ptr.cast()) }.store(value, Ordering::Relaxed),
            _ => return value.to_le_bytes().get(..size).is_some_and(|bytes| self.write(off, bytes)),
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
        let ptr = self.at(off, size)?;
        let addr = ptr as usize;
        let width = [1usize, 2, 4, 8, 16].into_iter().find(|&w| w >= size && addr % w + size <= w)?;
        let shift = (addr % width) * 8;
        let win_off = off.checked_sub(addr % width)?;
        let win = self.at(win_off, width)?;
        let mask = if size >= 16 { u128::MAX } else { (1u128 << (size * 8)) - 1 };
        let mut cur = load_window(win, width)?;
        loop {
            let old = (cur >> shift) & mask;
            let new = (cur & !(mask << shift)) | ((f(old) & mask) << shift);
            match cas_window(win, width, cur, new)? {
                Ok(()) => return Some(old),
                Err(seen) => cur = seen,
            }
        }
    }
}

fn aligned(ptr: *mut u8, align: usize) -> bool {
    (ptr as usize).is_multiple_of(align)
}

/// A (possibly torn, for 16 bytes) read of a window: only the first guess
/// of a compare-exchange loop, which validates it.
fn load_window(ptr: *mut u8, width: usize) -> Option<u128> {
    // SAFETY (all arms): callers pass a pointer inside a mapped guest page
    // with `width` bytes after it, aligned to `width`.
    Some(match width {
        1 => u128::from(unsafe { AtomicU8::from_ptr(ptr) }.load(Ordering::Relaxed)),
        2 => u128::from(unsafe { AtomicU16::from_ptr(ptr.cast()) }.load(Ordering::Relaxed)),
        4 => u128::from(unsafe { AtomicU32::from_ptr(ptr.cast()) }.load(Ordering::Relaxed)),
        8 => u128::from(unsafe { AtomicU64::from_ptr(ptr.cast()) }.load(Ordering::Relaxed)),
        16 => {
            let lo = unsafe { AtomicU64::from_ptr(ptr.cast()) }.load(Ordering::Relaxed);
            let hi = unsafe { AtomicU64::from_ptr(ptr.wrapping_add(8).cast()) }.load(Ordering::Relaxed);
            (u128::from(hi) << 64) | u128::from(lo)
        }
        _ => return None,
    })
}

/// Compare-exchange of a naturally aligned window: `Ok` if it held `old`
/// (now `new`), else the value seen. `None` if not possible on this host.
fn cas_window(ptr: *mut u8, width: usize, old: u128, new: u128) -> Option<Result<(), u128>> {
    macro_rules! cas {
        ($atomic:ty, $int:ty) => {{
            // SAFETY: as in `load_window`.
            let atomic = unsafe { <$atomic>::from_ptr(ptr.cast()) };
            atomic
                .compare_exchange(old as $int, new as $int, Ordering::SeqCst, Ordering::SeqCst)
                .map(drop)
                .map_err(u128::from)
        }};
    }
    Some(match width {
        1 => cas!(AtomicU8, u8),
        2 => cas!(AtomicU16, u16),
        4 => cas!(AtomicU32, u32),
        8 => cas!(AtomicU64, u64),
        16 => return cmpxchg16b(ptr, old, new),
        _ => return None,
    })
}

/// `LOCK CMPXCHG16B` (Rust has no stable `AtomicU128`).
#[cfg(target_arch = "x86_64")]
fn cmpxchg16b(ptr: *mut u8, old: u128, new: u128) -> Option<Result<(), u128>> {
    if !std::arch::is_x86_feature_detected!("cmpxchg16b") || !aligned(ptr, 16) {
        return None;
    }
    let (prev_lo, prev_hi): (u64, u64);
    // SAFETY: `ptr` is 16-byte aligned with 16 mapped bytes (callers'
    // contract, alignment checked above) and the CPU has CMPXCHG16B. RBX
    // can't be named as an operand (LLVM reserves it), so it is swapped
    // in and out around the instruction.
    unsafe {
        std::arch::asm!(
            "xchg {rbx_tmp}, rbx",
            "lock cmpxchg16b xmmword ptr [{ptr}]",
            "mov rbx, {rbx_tmp}",
            ptr = in(reg) ptr,
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
