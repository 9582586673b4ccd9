//! The typed IR a translation block is lowered to (QEMU's TCG ops are the
//! model). It is the one place instruction semantics live: the interpreter
//! ([`super::interp`]) executes it and a JIT can compile it later.
//!
//! Values are 64-bit; narrower operations are spelled with explicit
//! [`ExtKind`] extensions and masks. Guest registers are not IR values: they
//! live in [`X86State`](super::state::X86State) and are read and written by
//! field offset ([`Op::LdEnv`]/[`Op::StEnv`]), so a JIT can cache them in host
//! registers within a block and write them back at exits and before helpers
//! whose [`Helper::effects`] say they observe them.
//!
//! # Precise exceptions
//!
//! Every guest instruction starts with [`Op::InsnStart`]. The lowering of an
//! instruction writes architectural state (GPRs, RIP, RFLAGS, `cc_*`,
//! segment registers) only *after* the instruction's last op that may fault
//! ([`Op::Load`], [`Op::Store`], a [`Op::Call`] whose helper may fault, or an
//! exception exit). So when an op faults, the executor only sets RIP to the
//! current `InsnStart`'s pc and reports the exception: everything before
//! that instruction is committed, nothing of it is. Memory stores of
//! multi-store instructions (PUSH of several values, ENTER) may be partly
//! done, as on hardware that faults mid-instruction. Helpers that update
//! state piecemeal must leave it architecturally valid themselves (REP
//! string helpers commit RCX/RSI/RDI per iteration, which the SDM allows).
//!
//! # Helper calls and a JIT
//!
//! Helpers are plain Rust functions ([`HelperFn`]) described by a static
//! [`Helper`]. A JIT calls them through one `extern "C"` shim taking
//! `(*mut CpuContext, *const u64 args, usize nargs, *mut u64 ret) -> u32`
//! (0 = ok, 1 = exception stored in the context); the descriptor's
//! [`StateParts`] tell it which cached guest registers to write back before
//! the call and reload after it.

use std::fmt;

use super::context::CpuContext;
use super::exception::Exception;

/// A virtual 64-bit register. Temps hold values within one guest
/// instruction only: the frontend reuses their numbers after each
/// [`Op::InsnStart`], which keeps the interpreter's temp array small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Temp(pub u32);

/// A branch target inside one translation block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Label(pub u32);

/// Two-operand arithmetic. Shift and rotate counts are taken modulo 64 (the
/// frontend masks x86 counts itself). Division ops are only emitted where the
/// frontend has proved the divisor non-zero and the quotient in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    And,
    Or,
    Xor,
    Shl,
    Shr,
    Sar,
    Rotl,
    Rotr,
    /// High 64 bits of the unsigned 128-bit product.
    MulHu,
    /// High 64 bits of the signed 128-bit product.
    MulHs,
    DivU,
    DivS,
    RemU,
    RemS,
}

/// One-operand arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Not,
    Neg,
    /// Byte swap of the low 16 / 32 bits (upper bits cleared) or all 64.
    Bswap16,
    Bswap32,
    Bswap64,
    /// Count trailing / leading zeros of the 64-bit value (64 for zero).
    Ctz,
    Clz,
    Popcnt,
}

/// Zero or sign extension from the low 8/16/32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtKind {
    Zext8,
    Zext16,
    Zext32,
    Sext8,
    Sext16,
    Sext32,
}

/// Comparison of two 64-bit values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    Eq,
    Ne,
    /// Signed.
    Lt,
    Le,
    Gt,
    Ge,
    /// Unsigned.
    Ltu,
    Leu,
    Gtu,
    Geu,
    /// `a & b == 0` / `!= 0`.
    TstEq,
    TstNe,
}

impl Cond {
    pub fn eval(self, a: u64, b: u64) -> bool {
        match self {
            Cond::Eq => a == b,
            Cond::Ne => a != b,
            Cond::Lt => (a as i64) < (b as i64),
            Cond::Le => (a as i64) <= (b as i64),
            Cond::Gt => (a as i64) > (b as i64),
            Cond::Ge => (a as i64) >= (b as i64),
            Cond::Ltu => a < b,
            Cond::Leu => a <= b,
            Cond::Gtu => a > b,
            Cond::Geu => a >= b,
            Cond::TstEq => a & b == 0,
            Cond::TstNe => a & b != 0,
        }
    }

    pub fn invert(self) -> Cond {
        match self {
            Cond::Eq => Cond::Ne,
            Cond::Ne => Cond::Eq,
            Cond::Lt => Cond::Ge,
            Cond::Le => Cond::Gt,
            Cond::Gt => Cond::Le,
            Cond::Ge => Cond::Lt,
            Cond::Ltu => Cond::Geu,
            Cond::Leu => Cond::Gtu,
            Cond::Gtu => Cond::Leu,
            Cond::Geu => Cond::Ltu,
            Cond::TstEq => Cond::TstNe,
            Cond::TstNe => Cond::TstEq,
        }
    }
}

/// Width of an env or guest-memory access, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemSize {
    B1 = 1,
    B2 = 2,
    B4 = 4,
    B8 = 8,
}

impl MemSize {
    pub fn bytes(self) -> usize {
        self as usize
    }
    pub fn from_bytes(n: usize) -> Option<MemSize> {
        match n {
            1 => Some(MemSize::B1),
            2 => Some(MemSize::B2),
            4 => Some(MemSize::B4),
            8 => Some(MemSize::B8),
            _ => None,
        }
    }
}

/// How a guest-memory access is checked, beyond its size (bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemFlags(pub u8);

impl MemFlags {
    pub const NONE: MemFlags = MemFlags(0);
    /// The read half of a read-modify-write: checked for write permission
    /// (a #PF reports W, and the dirty bit is set), as the CPU does, so a
    /// faulting RMW reports the same error code whichever half faults.
    pub const RMW: MemFlags = MemFlags(1 << 0);
    /// A stack reference (implicit, or formed from RSP/RBP): a
    /// non-canonical address raises #SS(0), not #GP(0).
    pub const STACK: MemFlags = MemFlags(1 << 1);

    pub const fn union(self, other: MemFlags) -> MemFlags {
        MemFlags(self.0 | other.0)
    }
    pub const fn contains(self, other: MemFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Parts of the CPU state a helper may read or write (bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateParts(pub u32);

impl StateParts {
    pub const NONE: StateParts = StateParts(0);
    pub const GPRS: StateParts = StateParts(1 << 0);
    pub const RIP: StateParts = StateParts(1 << 1);
    /// RFLAGS and the lazy `cc_*` fields.
    pub const FLAGS: StateParts = StateParts(1 << 2);
    pub const SEGS: StateParts = StateParts(1 << 3);
    /// Control registers, MSRs, descriptor tables, hflags, FPU state.
    pub const SYSTEM: StateParts = StateParts(1 << 4);
    pub const ALL: StateParts = StateParts(0x1f);

    pub const fn union(self, other: StateParts) -> StateParts {
        StateParts(self.0 | other.0)
    }
    pub const fn contains(self, other: StateParts) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A helper's entry point: `args` are the call's temps' values.
pub type HelperFn = fn(&mut CpuContext<'_>, &[u64]) -> Result<u64, Exception>;

/// A helper and what a compiler must know to call it.
pub struct Helper {
    pub name: &'static str,
    pub func: HelperFn,
    /// Whether it may return an exception (it is then the instruction's
    /// last faulting op, or it commits its own partial state).
    pub may_fault: bool,
    pub reads: StateParts,
    pub writes: StateParts,
}

impl fmt::Debug for Helper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// Up to four helper arguments, stored inline (no allocation per op).
pub const MAX_HELPER_ARGS: usize = 4;

/// Why a translation block returns to the main loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// RIP has been stored; look the next block up (indirect jumps, returns,
    /// instructions that changed the mode and need fresh hflags).
    Lookup,
    /// Raise `exception` at the current instruction (its RIP is the
    /// `InsnStart` pc; for software interrupts, the return address is the
    /// pc + len).
    Raise(Exception),
    /// HLT: RIP has been stored (after the HLT); park until an interrupt.
    Halt,
}

/// One IR operation.
#[derive(Debug, Clone)]
pub enum Op {
    /// Starts guest instruction at linear `pc` of `len` bytes.
    InsnStart {
        pc: u64,
        len: u8,
    },
    Movi {
        dst: Temp,
        imm: u64,
    },
    Mov {
        dst: Temp,
        src: Temp,
    },
    Bin {
        op: BinOp,
        dst: Temp,
        a: Temp,
        b: Temp,
    },
    Un {
        op: UnOp,
        dst: Temp,
        a: Temp,
    },
    Ext {
        kind: ExtKind,
        dst: Temp,
        a: Temp,
    },
    /// `dst = cond(a, b) as u64`.
    SetCond {
        cond: Cond,
        dst: Temp,
        a: Temp,
        b: Temp,
    },
    /// `dst = if cond(a, b) { t } else { f }`.
    Select {
        cond: Cond,
        dst: Temp,
        a: Temp,
        b: Temp,
        t: Temp,
        f: Temp,
    },
    /// Reads `size` bytes of the state at byte `offset` (zero-extended).
    LdEnv {
        dst: Temp,
        offset: u32,
        size: MemSize,
    },
    /// Writes the low `size` bytes of `src` to the state at `offset`; the
    /// other bytes of the field are untouched (partial register writes).
    StEnv {
        src: Temp,
        offset: u32,
        size: MemSize,
    },
    /// Guest-memory read at linear `addr`; may fault.
    Load {
        dst: Temp,
        addr: Temp,
        size: MemSize,
        sign: bool,
        flags: MemFlags,
    },
    /// Guest-memory write at linear `addr`; may fault. Only
    /// [`MemFlags::STACK`] means anything here.
    Store {
        src: Temp,
        addr: Temp,
        size: MemSize,
        flags: MemFlags,
    },
    Call {
        helper: &'static Helper,
        args: [Temp; MAX_HELPER_ARGS],
        nargs: u8,
        ret: Option<Temp>,
    },
    Br {
        label: Label,
    },
    BrCond {
        cond: Cond,
        a: Temp,
        b: Temp,
        label: Label,
    },
    SetLabel {
        label: Label,
    },
    /// Leaves the block; see [`ExitKind`].
    ExitTb {
        kind: ExitKind,
    },
    /// Stores RIP = `pc` and continues at the block for `pc` (direct jump;
    /// `slot` 0 = taken/only successor, 1 = fall-through), the hook for
    /// block chaining.
    GotoTb {
        slot: u8,
        pc: u64,
    },
}
