//! The oracle side of the differential tester: random integer instruction
//! sequences run on the real CPU, to be compared with an emulator's results.
//!
//! - [`sequence`]: [`TestCase`]s generated from a seed (iced-x86 encodes
//!   them; `builder` makes one instruction, `families` lists the forms).
//! - [`flags`]: which RFLAGS bits are architecturally undefined where a run ends.
//! - [`native`]: runs cases in a forked child process on the host CPU: the
//!   reference.
//! - [`scaffold`] + [`kvm_cpl3`]: runs cases at CPL3 in a tiny long-mode guest
//!   through any [`Accelerator`](crate::Accelerator). Under KVM on PVM the
//!   user code runs natively, so this is a second oracle that also checks
//!   exception delivery; under [`Tcg`](crate::tcg::Tcg) it runs the engine
//!   under test.
//! - [`compare`](mod@compare): compares two [`Outcome`]s and localises a divergence by
//!   running prefixes of the sequence.
//!
//! Known oracle disagreements, all PVM's (it hands a guest-user #GP/#SS to
//! KVM's instruction emulator); the native run is right:
//! - POPCNT, MOVBE, ADCX, ADOX with a non-canonical memory operand raise
//!   #UD instead of #GP(0) (the emulator lacks them);
//! - with a segment prefix, a non-canonical address raises #SS or #GP by
//!   the segment; the CPU decides by the base register (RSP/RBP: #SS);
//! - a misaligned CMPXCHG16B through a non-canonical RBP raises #SS; the
//!   CPU's alignment #GP(0) comes first.
//!
//! # Address layout (the same in the host child, the guest, and TCG runs)
//!
//! | linear address | page                                          |
//! |----------------|-----------------------------------------------|
//! | `0x1000_0000`  | code (read + execute)                         |
//! | `0x1000_1000`  | unmapped guard page                           |
//! | `0x1000_2000`  | data (read + write)                           |
//! | `0x1000_3000`  | unmapped guard page                           |
//! | `0x1000_4000`  | stack (read + write), RSP starts at `+0x800`  |
//!
//! Generated accesses only ever reach these five pages or non-canonical
//! addresses.

mod builder;
pub mod compare;
mod families;
pub mod flags;
pub mod kvm_cpl3;
pub mod native;
mod rng;
pub mod scaffold;
pub mod sequence;
mod steps;

pub use compare::{compare, localise, Divergence, Runner};
pub use flags::undefined_flags_mask;
pub use kvm_cpl3::{open_kvm, run_kvm, run_vm, VmRunner};
pub use native::{run_native, run_native_batch};
pub use sequence::{generate, TestCase};

/// Size of each of the oracle's pages.
pub const PAGE: usize = 4096;
/// Where the test code starts.
pub const CODE: u64 = 0x1000_0000;
/// Unmapped page between code and data.
pub const GUARD_LOW: u64 = CODE + 0x1000;
/// The data page pointer registers point into.
pub const DATA: u64 = CODE + 0x2000;
/// Unmapped page between data and stack.
pub const GUARD_HIGH: u64 = CODE + 0x3000;
/// The stack page.
pub const STACK: u64 = CODE + 0x4000;
/// RSP when a case starts: pushes and pops both have room.
pub const STACK_START: u64 = STACK + 0x800;
/// The first byte past the five-page window.
pub const WINDOW_END: u64 = CODE + 0x5000;

/// The RFLAGS bits a case sets and compares: CF PF AF ZF SF DF OF.
pub const USER_FLAGS: u64 = 0x0cd5;

/// Exception vectors an outcome may report.
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const BP: u8 = 3;
    pub const UD: u8 = 6;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const AC: u8 = 17;
}

/// Whether the CPU pushes an error code for `vector` (SDM vol. 3, 6.13).
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// The registers a case starts with and ends with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserRegs {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 in encoding order
    /// (as [`CpuState::gprs`](crate::CpuState)).
    pub gprs: [u64; 16],
    pub rflags: u64,
}

/// GPR names in encoding order, for reports.
pub const GPR_NAMES: [&str; 16] =
    ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

/// An exception that ended a case before its terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub vector: u8,
    /// Only for vectors that push one.
    pub error_code: Option<u32>,
    /// CR2, only for #PF.
    pub addr: Option<u64>,
    /// RIP of the faulting instruction minus [`CODE`].
    pub rip_offset: u64,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const NAMES: [&str; 20] = [
            "DE", "DB", "NMI", "BP", "OF", "BR", "UD", "NM", "DF", "MP", "TS", "NP", "SS", "GP", "PF", "15", "MF",
            "AC", "MC", "XM",
        ];
        match NAMES.get(usize::from(self.vector)) {
            Some(name) => write!(f, "#{name}")?,
            None => write!(f, "vector {}", self.vector)?,
        }
        if let Some(code) = self.error_code {
            write!(f, "({code:#x})")?;
        }
        if let Some(addr) = self.addr {
            write!(f, " at {addr:#x}")?;
        }
        write!(f, " by the instruction at +{:#x}", self.rip_offset)
    }
}

/// How a case ended: registers, the data and stack pages, and the fault if
/// it didn't reach its terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub regs: UserRegs,
    pub data: Vec<u8>,
    pub stack: Vec<u8>,
    pub fault: Option<Fault>,
}

/// What a runner observed when the case stopped, before interpretation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trap {
    pub vector: u8,
    pub error_code: u64,
    pub cr2: u64,
    pub rip: u64,
}

impl Outcome {
    /// Builds an outcome; #UD at the case's terminator is the normal end.
    pub fn from_trap(case: &TestCase, trap: Trap, regs: UserRegs, data: Vec<u8>, stack: Vec<u8>) -> Outcome {
        let rip_offset = trap.rip.wrapping_sub(CODE);
        let fault = if trap.vector == vector::UD && rip_offset == case.terminator_offset() {
            None
        } else {
            Some(Fault {
                vector: trap.vector,
                error_code: has_error_code(trap.vector).then_some(trap.error_code as u32),
                addr: (trap.vector == vector::PF).then_some(trap.cr2),
                rip_offset,
            })
        };
        Outcome { regs, data, stack, fault }
    }

    /// Where execution stopped, as an offset into the code.
    pub fn end_offset(&self, case: &TestCase) -> u64 {
        self.fault.map_or(case.terminator_offset(), |f| f.rip_offset)
    }
}

/// Errors of the oracles themselves (never of the code under test).
#[derive(Debug, thiserror::Error)]
pub enum OracleError {
    /// `/dev/kvm` (or another engine) can't be used here.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The engine failed while creating or running the scaffold guest.
    #[error("engine error")]
    Engine(#[from] crate::Error),
    /// A host system call failed.
    #[error("{op} failed")]
    Os {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The child process could not set up the oracle's address window.
    #[error("native oracle child setup failed at {stage} (errno {errno})")]
    ChildSetup { stage: &'static str, errno: i32 },
    /// The child process died without finishing the batch.
    #[error("native oracle child died ({status}) while running seed {seed:#x}")]
    ChildDied { seed: u64, status: String },
    /// A case ran for longer than a second.
    #[error("case with seed {seed:#x} timed out")]
    Timeout { seed: u64 },
    /// A case doesn't fit the oracle's pages.
    #[error("malformed case {seed:#x}: {what}")]
    BadCase { seed: u64, what: &'static str },
    /// The scaffold guest stopped in an unexpected way.
    #[error("scaffold guest stopped unexpectedly: {0}")]
    Scaffold(String),
}
