//! Runs one instruction twice: natively on the host (a generated stub in
//! an executable mapping) and as a guest through the TCG pipeline, from
//! the same [`Regs`] and data bytes.

use iced_x86::code_asm::*;

use crate::tcg::flags;
use crate::tcg::interp::{execute, TbExit};
use crate::tcg::mmu::CodePages;
use crate::tcg::state::{ctrl, reg, seg, SegmentCache, X86State};
pub use crate::tcg::test_support::{context, Flat};
use crate::tcg::translate::translate_block;

/// Guest code and data addresses (identity-mapped flat memory).
pub const CODE: u64 = 0x1000;
pub const DATA: u64 = 0x3000;
pub const MEM_SIZE: usize = 0x8000;

/// The 64 data bytes an instruction's memory operand points into.
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Data(pub [u8; 64]);

/// The register file an instruction sees and leaves. GPRs are RAX, RCX,
/// RDX, RBX; RSI holds the data address.
#[repr(C, align(16))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regs {
    pub xmm: [u128; 16],
    pub gpr: [u64; 4],
    /// Only the arithmetic flags are loaded and compared.
    pub rflags: u64,
    pub mxcsr: u32,
    pub host_mxcsr: u32,
}

impl Regs {
    pub fn new(xmm: [u128; 16], gpr: [u64; 4], rflags: u64, mxcsr: u32) -> Self {
        Regs { xmm, gpr, rflags: rflags & crate::tcg::state::rflags::ARITH, mxcsr, host_mxcsr: 0 }
    }
}

// ---- the host side ----

/// An instruction assembled between a load and a store of [`Regs`], in an
/// executable mapping: `extern "C" fn(regs: *mut Regs, data: *mut u8)`.
pub struct HostStub {
    code: *mut libc::c_void,
    len: usize,
}

impl HostStub {
    pub fn new(insn: &[u8]) -> Self {
        let mut a = CodeAssembler::new(64).unwrap();
        let (x, g, f, m, hm) = (0i32, 256i32, 288i32, 296i32, 300i32);
        a.push(rbx).unwrap();
        a.stmxcsr(dword_ptr(rdi + hm)).unwrap();
        a.ldmxcsr(dword_ptr(rdi + m)).unwrap();
        for (i, r) in [rax, rcx, rdx, rbx].into_iter().enumerate() {
            a.mov(r, qword_ptr(rdi + g + 8 * i as i32)).unwrap();
        }
        for (i, r) in xmm_regs().into_iter().enumerate() {
            a.movdqu(r, xmmword_ptr(rdi + x + 16 * i as i32)).unwrap();
        }
        a.push(qword_ptr(rdi + f)).unwrap();
        a.popfq().unwrap();
        a.db(insn).unwrap();
        a.pushfq().unwrap();
        a.pop(qword_ptr(rdi + f)).unwrap();
        for (i, r) in xmm_regs().into_iter().enumerate() {
            a.movdqu(xmmword_ptr(rdi + x + 16 * i as i32), r).unwrap();
        }
        for (i, r) in [rax, rcx, rdx, rbx].into_iter().enumerate() {
            a.mov(qword_ptr(rdi + g + 8 * i as i32), r).unwrap();
        }
        a.stmxcsr(dword_ptr(rdi + m)).unwrap();
        a.ldmxcsr(dword_ptr(rdi + hm)).unwrap();
        a.pop(rbx).unwrap();
        a.ret().unwrap();
        let bytes = a.assemble(0).unwrap();
        let len = bytes.len().next_multiple_of(4096);
        // SAFETY: a fresh private anonymous mapping; checked for failure.
        let code = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(code, libc::MAP_FAILED);
        // SAFETY: `code` is a writable mapping of `len >= bytes.len()` bytes;
        // it becomes read+execute only once written.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), code.cast::<u8>(), bytes.len());
            assert_eq!(libc::mprotect(code, len, libc::PROT_READ | libc::PROT_EXEC), 0);
        }
        HostStub { code, len }
    }

    /// Runs the instruction on the host with all MXCSR exceptions masked by
    /// the caller (an unmasked one would trap).
    pub fn run(&self, regs: &mut Regs, data: &mut Data, rsi_offset: usize) {
        assert_eq!(regs.mxcsr & 0x1f80, 0x1f80, "host runs need masked exceptions");
        assert!(rsi_offset <= 32);
        self.run_raw(regs, data, rsi_offset);
        regs.rflags &= crate::tcg::state::rflags::ARITH;
        regs.host_mxcsr = 0;
    }

    /// [`HostStub::run`] without checks or allocation (for a forked child
    /// whose SIGFPE handler skips a trapping instruction); `rsi_offset` <= 32.
    pub fn run_raw(&self, regs: &mut Regs, data: &mut Data, rsi_offset: usize) {
        // SAFETY: the mapping holds the stub assembled in `new`, which only
        // reads and writes `*regs` and, through RSI, at most 16 bytes of
        // `data` from `rsi_offset` (the instruction forms under test), and
        // restores RBX, MXCSR and RSP before returning.
        unsafe {
            let f: extern "C" fn(*mut Regs, *mut u8) = std::mem::transmute(self.code);
            f(regs, data.0.as_mut_ptr().add(rsi_offset.min(32)));
        }
    }
}

impl Drop for HostStub {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.code, self.len) };
    }
}

fn xmm_regs() -> [AsmRegisterXmm; 16] {
    [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15]
}

// ---- the guest side ----

/// Zeroed flat memory of [`MEM_SIZE`] bytes.
pub fn flat() -> Flat {
    Flat(vec![0; MEM_SIZE])
}

/// 64-bit mode at CPL 0 with paging off (the flat memory is the linear
/// space), CR4.OSFXSR and OSXMMEXCPT set.
pub fn long_mode() -> X86State {
    let mut s = X86State::reset();
    s.cr0 = ctrl::CR0_PE | ctrl::CR0_ET | ctrl::CR0_NE | ctrl::CR0_MP;
    s.cr4 = ctrl::CR4_OSFXSR | ctrl::CR4_OSXMMEXCPT;
    s.efer = ctrl::EFER_LME | ctrl::EFER_LMA;
    s.segs[seg::CS] = SegmentCache { base: 0, limit: u32::MAX, attr: 0x9b | SegmentCache::ATTR_L, selector: 8 };
    for i in [seg::SS, seg::DS, seg::ES] {
        s.segs[i] = SegmentCache { base: 0, limit: u32::MAX, attr: 0x93 | SegmentCache::ATTR_DB, selector: 0x10 };
    }
    s.recompute_hflags();
    s
}

/// Places `code` + HLT at [`CODE`] and runs that one block.
pub fn run_code(state: &mut X86State, mem: &mut Flat, code: &[u8]) -> TbExit {
    let at = CODE as usize;
    mem.0[at..at + code.len()].copy_from_slice(code);
    mem.0[at + code.len()] = 0xf4;
    state.rip = CODE;
    let code_pages = CodePages::with_pages(16);
    let tb = match translate_block(mem, state, &code_pages, CODE, CODE) {
        Ok(tb) => tb,
        Err(e) => return TbExit::Exception { exception: e, pc: CODE, next_pc: CODE },
    };
    let mut temps = vec![0; tb.code().num_temps()];
    let mut ctx = context(state, mem, &code_pages);
    crate::tcg::bytecode::run(&mut ctx, tb.code(), &mut temps)
}

/// Runs `insn` as a guest from `regs` and `data` (at [`DATA`], RSI
/// pointing at it plus `rsi_offset`); returns the exit and updates both.
pub fn run_guest(insn: &[u8], regs: &mut Regs, data: &mut Data, rsi_offset: usize) -> TbExit {
    let mut state = long_mode();
    let mut mem = flat();
    mem.0[DATA as usize..DATA as usize + 64].copy_from_slice(&data.0);
    state.fpu.xmm = regs.xmm;
    state.fpu.mxcsr = regs.mxcsr;
    state.gpr[..4].copy_from_slice(&regs.gpr);
    state.gpr[reg::RSI] = DATA + rsi_offset as u64;
    flags::set_rflags_arith(&mut state, regs.rflags);
    let exit = run_code(&mut state, &mut mem, insn);
    regs.xmm = state.fpu.xmm;
    regs.mxcsr = state.fpu.mxcsr;
    regs.gpr.copy_from_slice(&state.gpr[..4]);
    regs.rflags = flags::rflags(&state) & crate::tcg::state::rflags::ARITH;
    data.0.copy_from_slice(&mem.0[DATA as usize..DATA as usize + 64]);
    exit
}
