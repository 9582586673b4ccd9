//! The page walker: linear → physical for every paging mode the CPU
//! advertises (paging off, legacy 32-bit with PSE/PSE-36, PAE, 4-level long
//! mode), with the architectural permission and reserved-bit checks and the
//! accessed/dirty updates, following SDM Vol. 3 chapter 4.
//!
//! Non-leaf accessed bits are set as each level is used; the leaf's A (and D
//! for writes) only once the access is known to be allowed, as QEMU does.
//! Every update is a compare-exchange on the guest's entry, and a lost race
//! (another vCPU, or the guest kernel clearing A/D) restarts the walk.

use super::phys::PhysMemory;
use super::{Access, Privilege};
use crate::tcg::exception::{pf, Exception, Result};
use crate::tcg::state::{ctrl, rflags, X86State};

/// Guest physical address width (CPUID 0x80000008 EAX[7:0]). 40 bits, as
/// QEMU's TCG default: 1 TiB of guest-physical space, and PSE-36 covers it.
pub const PHYS_ADDR_BITS: u32 = 40;
/// Guest linear address width (CPUID 0x80000008 EAX[15:8]): 4-level paging.
pub const LINEAR_ADDR_BITS: u32 = 48;

pub const PAGE_SIZE: u64 = 4096;
pub(crate) const PAGE_OFFSET: u64 = PAGE_SIZE - 1;

/// Paging-structure entry bits.
pub mod pte {
    pub const P: u64 = 1 << 0;
    pub const RW: u64 = 1 << 1;
    pub const US: u64 = 1 << 2;
    pub const A: u64 = 1 << 5;
    pub const D: u64 = 1 << 6;
    pub const PS: u64 = 1 << 7;
    pub const G: u64 = 1 << 8;
    pub const XD: u64 = 1 << 63;
    /// Address bits of a 64-bit entry (51:12).
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
}

/// Physical address bits at or above [`PHYS_ADDR_BITS`] in an entry's
/// address field (51:M): reserved in every 64-bit entry.
const PHYS_RSVD: u64 = pte::ADDR & !((1 << PHYS_ADDR_BITS) - 1);

/// The effective rights of a mapping (combined over all levels walked) plus
/// the leaf's G and D bits: what a TLB entry needs to check any later access
/// without walking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights(u8);

impl Rights {
    /// U/S = 1 at every level.
    pub const USER: u8 = 1 << 0;
    /// R/W = 1 at every level.
    pub const WRITE: u8 = 1 << 1;
    /// XD = 1 at some level (with EFER.NXE).
    pub const NX: u8 = 1 << 2;
    /// The leaf is global (G with CR4.PGE).
    pub const GLOBAL: u8 = 1 << 3;
    /// The leaf's dirty bit is known to be set in guest memory.
    pub const DIRTY: u8 = 1 << 4;
    /// Paging off: anything goes, nothing to update.
    pub const IDENTITY: Rights = Rights(Self::USER | Self::WRITE | Self::DIRTY);

    pub const fn from_bits(bits: u8) -> Self {
        Rights(bits)
    }
    pub const fn bits(self) -> u8 {
        self.0
    }
    pub const fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// A successful walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the 4 KiB frame holding the linear address.
    pub phys_page: u64,
    /// Size of the page that maps it: 4 KiB, 2 MiB, 4 MiB or 1 GiB.
    pub page_size: u64,
    pub rights: Rights,
}

/// One access's view of the control state: everything the permission check
/// and the #PF error code depend on, computed once per access.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checker {
    access: Access,
    paging: bool,
    /// A user-mode access: explicit, at CPL 3.
    user: bool,
    /// CR0.WP: supervisor writes honour R/W.
    wp: bool,
    /// CR4.SMEP: supervisor fetches from user pages fault.
    smep: bool,
    /// CR4.SMAP applies to this access: supervisor data access to a user page
    /// faults (implicit accesses always, explicit ones unless RFLAGS.AC).
    smap: bool,
    /// The error-code bits every #PF of this access carries (W/R, U/S, I/D).
    code: u32,
}

impl Checker {
    pub(crate) fn new(state: &X86State, access: Access, privilege: Privilege) -> Self {
        let paging = state.cr0 & ctrl::CR0_PG != 0;
        let user = privilege == Privilege::Current && state.cpl() == 3;
        let smap_on = paging && state.cr4 & ctrl::CR4_SMAP != 0;
        let smap = smap_on && (privilege == Privilege::Supervisor || state.rflags & rflags::AC == 0);
        let smep = paging && state.cr4 & ctrl::CR4_SMEP != 0;
        let nxe = state.efer & ctrl::EFER_NXE != 0;
        let pae = state.cr4 & ctrl::CR4_PAE != 0;
        let mut code = 0;
        if access == Access::Write {
            code |= pf::WRITE;
        }
        if user {
            code |= pf::USER;
        }
        // SDM 4.7: I/D is reported only with SMEP, or with NX in PAE/4-level paging.
        if access == Access::Fetch && (smep || (pae && nxe)) {
            code |= pf::FETCH;
        }
        Checker { access, paging, user, wp: state.cr0 & ctrl::CR0_WP != 0, smep, smap, code }
    }

    /// Whether `rights` allow this access (SDM 4.6). The dirty bit is not
    /// considered: see [`Checker::hits`].
    pub(crate) fn permits(&self, rights: Rights) -> bool {
        if !self.paging {
            return true;
        }
        let user_page = rights.has(Rights::USER);
        let writable = rights.has(Rights::WRITE);
        match self.access {
            Access::Fetch if rights.has(Rights::NX) => false,
            Access::Fetch if self.user => user_page,
            Access::Fetch => !(user_page && self.smep),
            Access::Read if self.user => user_page,
            Access::Read => !(user_page && self.smap),
            Access::Write if self.user => user_page && writable,
            Access::Write => !(user_page && self.smap) && (writable || !self.wp),
        }
    }

    /// Whether a cached translation can serve this access without a walk:
    /// allowed, and for writes the dirty bit already set in the guest's PTE.
    #[inline]
    pub(crate) fn hits(&self, rights: Rights) -> bool {
        (self.access != Access::Write || rights.has(Rights::DIRTY)) && self.permits(rights)
    }

    fn not_present(&self, linear: u64) -> Exception {
        Exception::page_fault(linear, self.code)
    }
    fn reserved(&self, linear: u64) -> Exception {
        Exception::page_fault(linear, self.code | pf::PRESENT | pf::RSVD)
    }
    fn protection(&self, linear: u64) -> Exception {
        Exception::page_fault(linear, self.code | pf::PRESENT)
    }
}

/// Whether `linear` is canonical for 48-bit linear addresses.
pub fn is_canonical(linear: u64) -> bool {
    let shift = 64 - LINEAR_ADDR_BITS;
    (((linear << shift) as i64) >> shift) as u64 == linear
}

/// Translates `linear` for `access` under the paging mode of `state`,
/// setting A/D bits in guest memory. `linear` must already be truncated to
/// 32 bits outside long mode; in long mode a non-canonical address raises
/// #GP(0) here (callers that owe #SS for stack accesses check first).
pub fn walk(
    mem: &PhysMemory,
    state: &X86State,
    linear: u64,
    access: Access,
    privilege: Privilege,
) -> Result<Translation> {
    walk_checked(mem, state, &Checker::new(state, access, privilege), linear)
}

pub(crate) fn walk_checked(mem: &PhysMemory, state: &X86State, chk: &Checker, linear: u64) -> Result<Translation> {
    if !chk.paging {
        return Ok(Translation { phys_page: linear & !PAGE_OFFSET, page_size: PAGE_SIZE, rights: Rights::IDENTITY });
    }
    let long = state.efer & ctrl::EFER_LMA != 0;
    if long && !is_canonical(linear) {
        return Err(Exception::gp0());
    }
    // A lost compare-exchange means the tables changed under us: start over,
    // as the CPU's walk would see the new entries.
    loop {
        let step = if long {
            walk_long(mem, state, chk, linear)
        } else if state.cr4 & ctrl::CR4_PAE != 0 {
            walk_pae(mem, state, chk, linear)
        } else {
            walk_legacy(mem, state, chk, linear)
        };
        if let Some(result) = step {
            return result;
        }
    }
}

/// `None`: an A/D update lost a race; walk again.
type Step = Option<Result<Translation>>;

/// Rights accumulated over the levels walked so far.
#[derive(Clone, Copy)]
struct Acc {
    user: bool,
    write: bool,
    nx: bool,
}

impl Acc {
    const TOP: Acc = Acc { user: true, write: true, nx: false };

    fn add(&mut self, entry: u64, nxe: bool) {
        self.user &= entry & pte::US != 0;
        self.write &= entry & pte::RW != 0;
        self.nx |= nxe && entry & pte::XD != 0;
    }

    fn rights(self, leaf: u64, pge: bool, dirty: bool) -> Rights {
        let mut bits = 0;
        for (on, bit) in [
            (self.user, Rights::USER),
            (self.write, Rights::WRITE),
            (self.nx, Rights::NX),
            (pge && leaf & pte::G != 0, Rights::GLOBAL),
            (dirty, Rights::DIRTY),
        ] {
            if on {
                bits |= bit;
            }
        }
        Rights(bits)
    }
}

/// Finishes a walk at its leaf entry `entry` (at physical `addr`, 4 or 8
/// bytes wide): permission check, then A (and D for writes) set atomically.
#[allow(clippy::too_many_arguments)]
fn leaf(
    mem: &PhysMemory,
    state: &X86State,
    chk: &Checker,
    linear: u64,
    acc: Acc,
    addr: u64,
    entry: u64,
    wide: bool,
    frame: u64,
    page_size: u64,
) -> Step {
    let pge = state.cr4 & ctrl::CR4_PGE != 0;
    let write = chk.access == Access::Write;
    if !chk.permits(acc.rights(entry, pge, false)) {
        return Some(Err(chk.protection(linear)));
    }
    let want = pte::A | if write { pte::D } else { 0 };
    if !set_bits(mem, addr, entry, want, wide) {
        return None;
    }
    let rights = acc.rights(entry, pge, write || entry & pte::D != 0);
    let phys_page = frame | (linear & (page_size - 1) & !PAGE_OFFSET);
    Some(Ok(Translation { phys_page, page_size, rights }))
}

/// Sets `bits` in the entry at `addr` if the entry still holds `entry`.
/// Returns false if it changed meanwhile.
fn set_bits(mem: &PhysMemory, addr: u64, entry: u64, bits: u64, wide: bool) -> bool {
    if entry & bits == bits {
        return true;
    }
    if wide {
        mem.cmpxchg_pte64(addr, entry, entry | bits)
    } else {
        // A 32-bit entry: the high half of `entry` is zero.
        mem.cmpxchg_pte32(addr, entry as u32, (entry | bits) as u32)
    }
}

/// Bits 13..shift of a large-page entry: reserved below the frame address
/// (bit 12 is PAT).
const fn large_page_rsvd(shift: u32) -> u64 {
    ((1 << shift) - 1) & !0x1fff
}

/// The 9-bit-per-level part of the walk shared by 4-level and PAE paging:
/// `table` is the physical address of the level indexed by linear bits
/// `shifts[0]..`, `hi_rsvd` the reserved high bits of every entry.
#[allow(clippy::too_many_arguments)]
fn walk64(
    mem: &PhysMemory,
    state: &X86State,
    chk: &Checker,
    linear: u64,
    mut table: u64,
    shifts: &[u32],
    hi_rsvd: u64,
    nxe: bool,
) -> Step {
    let mut acc = Acc::TOP;
    for &shift in shifts {
        let addr = table + ((linear >> shift) & 0x1ff) * 8;
        let entry = mem.read_pte64(addr);
        if entry & pte::P == 0 {
            return Some(Err(chk.not_present(linear)));
        }
        // PS is reserved in a PML4E; it maps a 1 GiB / 2 MiB page in a PDPTE / PDE.
        let large = entry & pte::PS != 0 && (shift == 30 || shift == 21);
        let mut rsvd = hi_rsvd;
        if shift == 39 {
            rsvd |= pte::PS;
        }
        if large {
            rsvd |= large_page_rsvd(shift);
        }
        if entry & rsvd != 0 {
            return Some(Err(chk.reserved(linear)));
        }
        acc.add(entry, nxe);
        if large || shift == 12 {
            let page_size = 1u64 << shift;
            let frame = entry & pte::ADDR & !(page_size - 1);
            return leaf(mem, state, chk, linear, acc, addr, entry, true, frame, page_size);
        }
        if !set_bits(mem, addr, entry, pte::A, true) {
            return None;
        }
        table = entry & pte::ADDR;
    }
    // `shifts` always ends at 12, which returns above.
    Some(Err(chk.not_present(linear)))
}

fn walk_long(mem: &PhysMemory, state: &X86State, chk: &Checker, linear: u64) -> Step {
    let nxe = state.efer & ctrl::EFER_NXE != 0;
    let hi_rsvd = PHYS_RSVD | if nxe { 0 } else { pte::XD };
    // CR3 bits 11:0 are flags or the PCID; bits at and above MAXPHYADDR are
    // rejected by MOV CR3 (system helpers), so masking is enough here.
    let pml4 = state.cr3 & pte::ADDR & !PHYS_RSVD;
    walk64(mem, state, chk, linear, pml4, &[39, 30, 21, 12], hi_rsvd, nxe)
}

/// PAE paging. The PDPTEs are read at walk time; hardware caches them at CR3
/// load and raises #GP there for reserved bits, whereas here a bad PDPTE
/// raises #PF (RSVD) on use. [`pae_pdptes_valid`] lets MOV CR3 check them.
fn walk_pae(mem: &PhysMemory, state: &X86State, chk: &Checker, linear: u64) -> Step {
    let nxe = state.efer & ctrl::EFER_NXE != 0;
    let addr = (state.cr3 & 0xffff_ffe0) + ((linear >> 30) & 3) * 8;
    let pdpte = mem.read_pte64(addr);
    if pdpte & pte::P == 0 {
        return Some(Err(chk.not_present(linear)));
    }
    if pdpte & PAE_PDPTE_RSVD != 0 {
        return Some(Err(chk.reserved(linear)));
    }
    // PAE PDPTEs carry no R/W, U/S or A bits. PAE entries reserve 62:M too.
    let hi_rsvd = PHYS_RSVD | 0x7ff0_0000_0000_0000 | if nxe { 0 } else { pte::XD };
    walk64(mem, state, chk, linear, pdpte & pte::ADDR, &[21, 12], hi_rsvd, nxe)
}

/// Reserved bits of a PAE PDPTE: 63:M, 8:5 and 2:1.
const PAE_PDPTE_RSVD: u64 = !((1 << PHYS_ADDR_BITS) - 1) | 0x1e6;

/// Whether the four PDPTEs that `cr3` points to are free of reserved bits
/// (a MOV CR3 / paging enable in PAE mode raises #GP(0) otherwise).
pub fn pae_pdptes_valid(mem: &PhysMemory, cr3: u64) -> bool {
    (0..4).all(|i| {
        let e = mem.read_pte64((cr3 & 0xffff_ffe0) + i * 8);
        e & pte::P == 0 || e & PAE_PDPTE_RSVD == 0
    })
}

/// Legacy 32-bit paging: 4 KiB pages, and 4 MiB pages with CR4.PSE (PSE-36:
/// PDE bits 20:13 give physical bits 39:32).
fn walk_legacy(mem: &PhysMemory, state: &X86State, chk: &Checker, linear: u64) -> Step {
    let pde_addr = (state.cr3 & 0xffff_f000) + ((linear >> 22) & 0x3ff) * 4;
    let pde = u64::from(mem.read_pte32(pde_addr));
    if pde & pte::P == 0 {
        return Some(Err(chk.not_present(linear)));
    }
    let mut acc = Acc::TOP;
    acc.add(pde, false);
    if pde & pte::PS != 0 && state.cr4 & ctrl::CR4_PSE != 0 {
        // Bits 21:(13 + M - 32) are reserved; below them, PA bits M-1:32.
        const HI_BITS: u32 = PHYS_ADDR_BITS - 32;
        if pde & (0x3f_e000 & !(((1 << HI_BITS) - 1) << 13)) != 0 {
            return Some(Err(chk.reserved(linear)));
        }
        let frame = (pde & 0xffc0_0000) | (((pde >> 13) & ((1 << HI_BITS) - 1)) << 32);
        return leaf(mem, state, chk, linear, acc, pde_addr, pde, false, frame, 4 << 20);
    }
    if !set_bits(mem, pde_addr, pde, pte::A, false) {
        return None;
    }
    let pte_addr = (pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4;
    let entry = u64::from(mem.read_pte32(pte_addr));
    if entry & pte::P == 0 {
        return Some(Err(chk.not_present(linear)));
    }
    acc.add(entry, false);
    leaf(mem, state, chk, linear, acc, pte_addr, entry, false, entry & 0xffff_f000, PAGE_SIZE)
}
