//! The per-vCPU software TLB: a direct-mapped cache of walks, keyed by
//! linear page number.
//!
//! An entry keeps the walk's combined rights rather than one verdict per
//! access kind, and every hit re-checks them against the current CPL,
//! RFLAGS.AC, CR0.WP, SMEP/SMAP: so privilege changes need no flush, and
//! one entry serves reads, writes and fetches. A hit that fails the check
//! (or a write whose PTE dirty bit isn't known set) walks again, so a stale
//! entry never causes a spurious fault. Flushing after CR0/CR4/EFER changes
//! is the caller's call to `flush_all`.
//!
//! Large pages are cached as 4 KiB pieces; `flush_page` on an address in the
//! range covered by any large page drops everything (QEMU's approach), since
//! INVLPG must drop the whole large translation.

use super::host::HostPage;
use super::walker::{Rights, Translation, PAGE_SIZE};

/// Number of entries (a power of two).
pub const TLB_ENTRIES: usize = 1024;

/// A tag no linear page number can have (they are below 2^52).
const INVALID: u64 = u64::MAX;

/// One cached translation of a 4 KiB linear page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TlbEntry {
    vpn: u64,
    /// Physical address of the frame.
    pub(crate) phys_page: u64,
    /// Its host mapping when it is plain RAM; `None` for MMIO or a frame
    /// that straddles RAM regions (slow path through [`super::PhysMemory`]).
    pub(crate) host: Option<HostPage>,
    pub(crate) rights: Rights,
}

impl TlbEntry {
    const EMPTY: TlbEntry = TlbEntry { vpn: INVALID, phys_page: 0, host: None, rights: Rights::from_bits(0) };
}

/// See the module documentation. Filled only by [`super::CpuMemory`], which
/// owns the guest memory its host addresses point into.
pub struct SoftTlb {
    entries: Box<[TlbEntry; TLB_ENTRIES]>,
    /// Linear range (`addr` under `mask`) that covers every large page
    /// cached since the last full flush; `mask == 0` and `addr == INVALID`
    /// when there is none.
    large_addr: u64,
    large_mask: u64,
    /// Bumped by every flush: translations cached elsewhere (the vCPU's
    /// jump cache, linear PC → block) are re-checked when it moved.
    epoch: u64,
}

impl Default for SoftTlb {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SoftTlb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let valid = self.entries.iter().filter(|e| e.vpn != INVALID).count();
        f.debug_struct("SoftTlb").field("valid", &valid).finish_non_exhaustive()
    }
}

fn slot(vpn: u64) -> usize {
    (vpn as usize) & (TLB_ENTRIES - 1)
}

impl SoftTlb {
    pub fn new() -> Self {
        SoftTlb { entries: Box::new([TlbEntry::EMPTY; TLB_ENTRIES]), large_addr: INVALID, large_mask: 0, epoch: 0 }
    }

    #[inline]
    pub(crate) fn lookup(&self, linear: u64) -> Option<&TlbEntry> {
        let vpn = linear / PAGE_SIZE;
        let e = &self.entries[slot(vpn)];
        (e.vpn == vpn).then_some(e)
    }

    /// Whether `linear`'s page has a cached translation.
    pub fn contains(&self, linear: u64) -> bool {
        self.lookup(linear).is_some()
    }

    pub(crate) fn insert(&mut self, linear: u64, t: &Translation, host: Option<HostPage>) -> TlbEntry {
        let vpn = linear / PAGE_SIZE;
        if t.page_size > PAGE_SIZE {
            self.add_large_page(linear, t.page_size);
        }
        let e = TlbEntry { vpn, phys_page: t.phys_page, host, rights: t.rights };
        self.entries[slot(vpn)] = e;
        e
    }

    /// Widens the tracked large-page range to cover `[linear, +size)`.
    fn add_large_page(&mut self, linear: u64, size: u64) {
        let mask = !(size - 1);
        if self.large_addr == INVALID {
            self.large_addr = linear & mask;
            self.large_mask = mask;
            return;
        }
        let mut m = self.large_mask & mask;
        while (self.large_addr ^ linear) & m != 0 {
            m <<= 1;
        }
        self.large_addr &= m;
        self.large_mask = m;
    }

    /// Drops every entry, global ones included (CR4.PGE toggles, CR0/CR4/EFER
    /// paging changes, or a CR3 write without PGE).
    pub fn flush_all(&mut self) {
        self.epoch += 1;
        self.entries.fill(TlbEntry::EMPTY);
        self.large_addr = INVALID;
        self.large_mask = 0;
    }

    /// Changes with every flush (see the field).
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Drops every non-global entry (a CR3 write with CR4.PGE).
    pub fn flush_nonglobal(&mut self) {
        self.epoch += 1;
        for e in self.entries.iter_mut().filter(|e| !e.rights.has(Rights::GLOBAL)) {
            *e = TlbEntry::EMPTY;
        }
        // Global large pages may remain: keep tracking their range.
    }

    /// Drops the translation of the page holding `linear`, global or not
    /// (INVLPG), and every entry if that page may belong to a large page
    /// (then returns true).
    pub fn flush_page(&mut self, linear: u64) -> bool {
        self.epoch += 1;
        if self.large_addr != INVALID && linear & self.large_mask == self.large_addr {
            self.flush_all();
            return true;
        }
        let vpn = linear / PAGE_SIZE;
        let e = &mut self.entries[slot(vpn)];
        if e.vpn == vpn {
            *e = TlbEntry::EMPTY;
        }
        false
    }
}
