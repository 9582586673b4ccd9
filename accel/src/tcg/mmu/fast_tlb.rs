//! The TLB compiled code reads inline (QEMU's `CPUTLBEntry`): per privilege
//! class (supervisor, user), a direct-mapped table of pages whose plain-RAM
//! accesses need no check beyond the tag compare. It is a cache of the
//! [`super::SoftTlb`]: filled from it after a slow access succeeded, and
//! flushed with it.
//!
//! A tag is the page's linear address when the access kind is allowed
//! there at that privilege, else [`INVALID`]; compiled code compares it with
//! the address masked to the page *and* the access's alignment bits, so
//! unaligned and page-crossing accesses take the slow path. Stores check
//! the page's "holds code" bit after writing (`code_word` / `page`), as the
//! Rust store path does, so self-modifying code is still caught.

/// Entries per privilege class (a power of two).
pub const FAST_ENTRIES: usize = 512;

/// A tag no access matches (its low bits are never set by the mask).
pub const INVALID: u64 = u64::MAX;

/// One page. Field order and size are read by compiled code.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FastEntry {
    pub read: u64,
    pub write: u64,
    /// Host address minus linear address.
    pub addend: u64,
    /// Address of the `CodePages` word holding the page's bit (a word that
    /// is always zero for pages outside the map).
    pub code_word: u64,
    /// The physical page number (its bit is `1 << (page % 64)`).
    pub page: u64,
}

impl FastEntry {
    pub const EMPTY: FastEntry = FastEntry { read: INVALID, write: INVALID, addend: 0, code_word: 0, page: 0 };
}

pub const ENTRY_SIZE: usize = std::mem::size_of::<FastEntry>();

/// An all-invalid table, for memories without a fast TLB.
pub static EMPTY_TABLE: [FastEntry; FAST_ENTRIES] = [FastEntry::EMPTY; FAST_ENTRIES];

pub fn slot(linear: u64) -> usize {
    ((linear >> 12) as usize) & (FAST_ENTRIES - 1)
}

/// See the module documentation.
pub struct FastTlb {
    /// `[supervisor, user]`.
    tables: Box<[[FastEntry; FAST_ENTRIES]; 2]>,
}

impl Default for FastTlb {
    fn default() -> Self {
        FastTlb { tables: Box::new([[FastEntry::EMPTY; FAST_ENTRIES]; 2]) }
    }
}

impl FastTlb {
    /// The table for accesses at CPL 3 (`user`) or below.
    pub fn table(&self, user: bool) -> *const FastEntry {
        self.tables[usize::from(user)].as_ptr()
    }

    pub fn flush_all(&mut self) {
        for t in self.tables.iter_mut() {
            t.fill(FastEntry::EMPTY);
        }
    }

    pub fn flush_page(&mut self, linear: u64) {
        let page = linear & !0xfff;
        for t in self.tables.iter_mut() {
            let e = &mut t[slot(linear)];
            if e.read == page || e.write == page {
                *e = FastEntry::EMPTY;
            }
        }
    }

    /// Allows `write`s (else reads) to `page` (page-aligned linear) at this
    /// privilege class, through host address `host` of the frame.
    pub fn fill(&mut self, user: bool, page: u64, write: bool, host: u64, code_word: u64, phys_page: u64) {
        let e = &mut self.tables[usize::from(user)][slot(page)];
        let addend = host.wrapping_sub(page);
        if (e.read != page && e.write != page) || e.addend != addend {
            *e = FastEntry { read: INVALID, write: INVALID, addend, code_word, page: phys_page };
        }
        if write {
            e.write = page;
        } else {
            e.read = page;
        }
    }
}
