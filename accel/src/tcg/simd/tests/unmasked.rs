//! Unmasked SIMD exceptions against the host: a forked child runs the cases
//! natively with the random MXCSR masks loaded, its SIGFPE handler records
//! the trap and skips the instruction (the signal return restores the
//! faulting MXCSR and XMM state, which the stub then stores); the guest
//! must raise #XM exactly then, with the same MXCSR and registers.

use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use iced_x86::code_asm::*;
use libc::{c_int, c_void, siginfo_t, ucontext_t};

use super::machine::{run_guest, Data, HostStub, Regs, CODE};
use super::Rng;
use crate::tcg::exception::vector;
use crate::tcg::interp::TbExit;

#[repr(C)]
#[derive(Clone, Copy)]
struct Case {
    regs: Regs,
    data: Data,
    /// The host's trap number (19 = #XM), 0 if none.
    trap: u64,
}

static SKIP: AtomicU64 = AtomicU64::new(0);
static TRAP: AtomicPtr<u64> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_fpe(_: c_int, _: *mut siginfo_t, ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid `ucontext_t` to an SA_SIGINFO
    // handler; TRAP is null or points into the child's live shared mapping.
    unsafe {
        let uc = &mut *ctx.cast::<ucontext_t>();
        let g = &mut uc.uc_mcontext.gregs;
        let t = TRAP.load(Ordering::Relaxed);
        if !t.is_null() {
            *t = g[libc::REG_TRAPNO as usize] as u64;
        }
        g[libc::REG_RIP as usize] += SKIP.load(Ordering::Relaxed) as i64;
    }
}

/// Runs every case on the host in a forked child.
fn run_host(stub: &HostStub, insn_len: usize, cases: &mut [Case]) {
    let len = std::mem::size_of_val(cases);
    // SAFETY: a fresh shared anonymous mapping, checked for failure, sized
    // for `cases`; the child only runs the stub on it (no allocation, only
    // async-signal-safe calls) and `_exit`s.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        let shared = std::slice::from_raw_parts_mut(map.cast::<Case>(), cases.len());
        shared.copy_from_slice(cases);
        SKIP.store(insn_len as u64, Ordering::Relaxed);
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fpe as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            if libc::sigaction(libc::SIGFPE, &sa, std::ptr::null_mut()) != 0 {
                libc::_exit(2);
            }
            for case in shared.iter_mut() {
                TRAP.store(&mut case.trap, Ordering::Relaxed);
                case.regs.rflags &= 0x8d5;
                stub.run_raw(&mut case.regs, &mut case.data, 0);
            }
            libc::_exit(0);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
        cases.copy_from_slice(shared);
        libc::munmap(map, len);
    }
    for c in cases {
        c.regs.rflags &= crate::tcg::state::rflags::ARITH;
        c.regs.host_mxcsr = 0;
    }
}

type Enc = fn(&mut CodeAssembler) -> Result<(), IcedError>;

/// Lanes with exponents near either end of the range (f32 or f64 lanes),
/// where products, quotients and sums overflow or underflow.
fn extreme(rng: &mut Rng) -> u128 {
    let r = rng.next();
    if r & 1 == 0 {
        (0..4).fold(0, |acc, i| {
            let e = if rng.next() & 1 == 0 { rng.below(40) } else { 215 + rng.below(40) } as u32;
            let v = (rng.next() as u32 & 0x807f_ffff) | (e << 23);
            acc | (u128::from(v) << (32 * i))
        })
    } else {
        (0..2).fold(0, |acc, i| {
            let e = if rng.next() & 1 == 0 { rng.below(60) } else { 1990 + rng.below(57) };
            let v = (rng.next() & 0x800f_ffff_ffff_ffff) | (e << 52);
            acc | (u128::from(v) << (64 * i))
        })
    }
}

#[test]
fn unmasked_exceptions_match_the_host() {
    let forms: [(&str, Enc); 30] = [
        ("addps", |a| a.addps(xmm1, xmm2)),
        ("addps m", |a| a.addps(xmm1, xmmword_ptr(rsi))),
        ("subss", |a| a.subss(xmm1, xmm2)),
        ("subpd", |a| a.subpd(xmm1, xmm2)),
        ("addsd", |a| a.addsd(xmm1, xmm2)),
        ("mulps", |a| a.mulps(xmm1, xmm2)),
        ("mulsd", |a| a.mulsd(xmm1, xmm2)),
        ("divpd", |a| a.divpd(xmm1, xmm2)),
        ("divss", |a| a.divss(xmm1, xmm2)),
        ("mulpd", |a| a.mulpd(xmm1, xmm2)),
        ("mulss", |a| a.mulss(xmm1, xmm2)),
        ("divps", |a| a.divps(xmm1, xmm2)),
        ("divsd", |a| a.divsd(xmm1, xmm2)),
        ("sqrtps", |a| a.sqrtps(xmm1, xmm2)),
        ("sqrtsd", |a| a.sqrtsd(xmm1, xmm2)),
        ("minps", |a| a.minps(xmm1, xmm2)),
        ("maxsd", |a| a.maxsd(xmm1, xmm2)),
        ("cmpps lt", |a| a.cmpps(xmm1, xmm2, 1)),
        ("cmpsd eq", |a| a.cmpsd_3(xmm1, xmm2, 0)),
        ("comiss", |a| a.comiss(xmm1, xmm2)),
        ("ucomisd", |a| a.ucomisd(xmm1, xmm2)),
        ("cvtps2dq", |a| a.cvtps2dq(xmm1, xmm2)),
        ("cvttpd2dq", |a| a.cvttpd2dq(xmm1, xmm2)),
        ("cvtsd2ss", |a| a.cvtsd2ss(xmm1, xmm2)),
        ("cvtss2sd", |a| a.cvtss2sd(xmm1, xmm2)),
        ("cvtdq2ps", |a| a.cvtdq2ps(xmm1, xmm2)),
        ("cvtpd2ps", |a| a.cvtpd2ps(xmm1, xmm2)),
        ("cvtsi2ss", |a| a.cvtsi2ss(xmm1, rcx)),
        ("cvttss2si", |a| a.cvttss2si(eax, xmm2)),
        ("cvtsd2si", |a| a.cvtsd2si(rax, xmm2)),
    ];
    let mut rng = Rng::new(0x5eed_00fe);
    let mut mismatches = Vec::new();
    for (name, enc) in forms {
        let mut a = CodeAssembler::new(64).unwrap();
        enc(&mut a).unwrap();
        let bytes = a.assemble(CODE).unwrap();
        let stub = HostStub::new(&bytes);
        let mut cases: Vec<Case> = (0..600)
            .map(|_| {
                let mut xmm: [u128; 16] = std::array::from_fn(|_| rng.xmm());
                if rng.below(2) == 0 {
                    xmm[1] = extreme(&mut rng);
                    xmm[2] = extreme(&mut rng);
                }
                let gpr = std::array::from_fn(|_| rng.next() >> rng.below(64));
                let mut masks = 0x1f80u32;
                for bit in 7..13 {
                    if rng.below(3) == 0 {
                        masks &= !(1 << bit);
                    }
                }
                let mxcsr = masks | ((rng.below(4) as u32) << 13) | if rng.below(4) == 0 { 1 << 15 } else { 0 };
                let mut data = Data([0; 64]);
                data.0[..16].copy_from_slice(&rng.xmm().to_le_bytes());
                Case { regs: Regs::new(xmm, gpr, rng.next(), mxcsr), data, trap: 0 }
            })
            .collect();
        let inputs = cases.clone();
        run_host(&stub, bytes.len(), &mut cases);
        for (i, (input, host)) in inputs.iter().zip(&cases).enumerate() {
            let (mut regs, mut data) = (input.regs, input.data);
            let exit = run_guest(&bytes, &mut regs, &mut data, 0);
            let trapped = match exit {
                TbExit::Halt => 0,
                TbExit::Exception { exception, .. } => u64::from(exception.vector),
                other => panic!("{name}: {other:?}"),
            };
            if trapped != host.trap || regs != host.regs {
                mismatches.push(format!(
                    "{name} case {i}: mxcsr in {:#06x} x1 {:032x} x2 {:032x}\n  host trap {} mxcsr {:#06x} x1 {:032x}\n  \
                     ours trap {} mxcsr {:#06x} x1 {:032x}",
                    input.regs.mxcsr,
                    input.regs.xmm[1],
                    input.regs.xmm[2],
                    host.trap,
                    host.regs.mxcsr,
                    host.regs.xmm[1],
                    trapped,
                    regs.mxcsr,
                    regs.xmm[1],
                ));
            }
            assert!(trapped == 0 || trapped == u64::from(vector::XM));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(30)].join("\n")
    );
}
