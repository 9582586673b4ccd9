//! CPU exceptions as values: raised by memory accesses, helpers and
//! decoding, delivered by `interrupts` through the IVT/IDT.

/// Architectural exception vectors.
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const MF: u8 = 16;
    pub const AC: u8 = 17;
    pub const MC: u8 = 18;
    pub const XM: u8 = 19;
}

/// #PF error-code bits.
pub mod pf {
    pub const PRESENT: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const USER: u32 = 1 << 2;
    pub const RSVD: u32 = 1 << 3;
    pub const FETCH: u32 = 1 << 4;
}

/// An exception raised while executing an instruction. Faults leave RIP at
/// the faulting instruction; traps (INT n, INT3, INTO, single-step) after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    pub error_code: Option<u32>,
    /// For #PF: the linear address that faulted (becomes CR2 on delivery).
    pub cr2: Option<u64>,
    /// Raised by INT n / INT3 / INTO: a software interrupt (gate DPL checked
    /// against CPL, return address is the next instruction).
    pub software: bool,
}

impl Exception {
    pub const fn fault(vector: u8) -> Self {
        Exception { vector, error_code: None, cr2: None, software: false }
    }
    pub const fn with_code(vector: u8, code: u32) -> Self {
        Exception { vector, error_code: Some(code), cr2: None, software: false }
    }
    pub const fn ud() -> Self {
        Self::fault(vector::UD)
    }
    pub const fn gp(code: u32) -> Self {
        Self::with_code(vector::GP, code)
    }
    pub const fn gp0() -> Self {
        Self::gp(0)
    }
    pub const fn page_fault(addr: u64, code: u32) -> Self {
        Exception { vector: vector::PF, error_code: Some(code), cr2: Some(addr), software: false }
    }
    pub const fn software(vector: u8) -> Self {
        Exception { vector, error_code: None, cr2: None, software: true }
    }
    /// Whether the vector pushes an error code when delivered in protected mode.
    pub const fn has_error_code(vector: u8) -> bool {
        matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
    }
    /// Contributory exceptions (for the double-fault rule, SDM Table 6-5).
    pub const fn is_contributory(vector: u8) -> bool {
        matches!(vector, 0 | 10..=13)
    }
}

pub type Result<T> = std::result::Result<T, Exception>;
