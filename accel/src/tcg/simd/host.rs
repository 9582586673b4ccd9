//! Rounding SSE operations run as the host's own instruction, with the
//! guest's MXCSR controls in the host MXCSR (see the module doc of
//! [`super`] for why). Every function takes the guest MXCSR and returns
//! its result with the exception flags the operation raised.
//!
//! Each asm block saves the host MXCSR, loads [`control`], runs the one
//! instruction on copies of the operands, reads MXCSR back and restores
//! the host's: all inside the block, so no compiler-generated float code
//! ever runs with the guest's rounding mode, and the host's own sticky
//! flags are untouched. All exceptions are masked while it runs, so the
//! host never traps; unmasked guest exceptions are decided afterwards from
//! the flags (`exec::settle`).

use core::arch::asm;

use super::mxcsr::{DAZ, FLAGS, FTZ, MASKS, RC};

/// The host MXCSR for running a guest operation: the guest's rounding
/// control, FTZ and DAZ; every exception masked; flags clear.
pub fn control(guest: u32) -> u32 {
    (guest & (RC | FTZ | DAZ)) | MASKS
}

/// `fn(a, b, mxcsr) -> (a', flags)` for `mn xmm0, xmm1` with xmm0 = a, xmm1 = b.
macro_rules! xmm_xmm {
    ($($name:ident => $mn:literal),* $(,)?) => {$(
        pub fn $name(a: u128, b: u128, mxcsr: u32) -> (u128, u32) {
            let mut x = [a, b];
            // [guest control in, flags out; host MXCSR save slot]
            let mut csr = [control(mxcsr), 0u32];
            // SAFETY: reads and writes only `x` (32 bytes) and `csr` (8
            // bytes) through pointers to these locals and clobbers only the
            // declared xmm0/xmm1; the host MXCSR is restored before the
            // block ends and every exception is masked while it runs.
            unsafe {
                asm!(
                    "stmxcsr dword ptr [{c} + 4]",
                    "ldmxcsr dword ptr [{c}]",
                    "movdqu xmm0, xmmword ptr [{x}]",
                    "movdqu xmm1, xmmword ptr [{x} + 16]",
                    concat!($mn, " xmm0, xmm1"),
                    "movdqu xmmword ptr [{x}], xmm0",
                    "stmxcsr dword ptr [{c}]",
                    "ldmxcsr dword ptr [{c} + 4]",
                    x = in(reg) x.as_mut_ptr(),
                    c = in(reg) csr.as_mut_ptr(),
                    out("xmm0") _,
                    out("xmm1") _,
                    options(nostack, preserves_flags),
                );
            }
            (x[0], csr[0] & FLAGS)
        }
    )*};
}

/// `fn(a, v, mxcsr) -> (a', flags)` for `mn xmm0, r32/r64` with xmm0 = a.
macro_rules! xmm_gpr {
    ($($name:ident => $mn:literal, $r:literal),* $(,)?) => {$(
        pub fn $name(a: u128, v: u64, mxcsr: u32) -> (u128, u32) {
            let mut x = [a];
            let mut csr = [control(mxcsr), 0u32];
            // SAFETY: as in `xmm_xmm`: only the locals `x` and `csr` are
            // accessed, xmm0 is declared clobbered, MXCSR is restored.
            unsafe {
                asm!(
                    "stmxcsr dword ptr [{c} + 4]",
                    "ldmxcsr dword ptr [{c}]",
                    "movdqu xmm0, xmmword ptr [{x}]",
                    concat!($mn, " xmm0, ", $r),
                    "movdqu xmmword ptr [{x}], xmm0",
                    "stmxcsr dword ptr [{c}]",
                    "ldmxcsr dword ptr [{c} + 4]",
                    x = in(reg) x.as_mut_ptr(),
                    c = in(reg) csr.as_mut_ptr(),
                    v = in(reg) v,
                    out("xmm0") _,
                    options(nostack, preserves_flags),
                );
            }
            (x[0], csr[0] & FLAGS)
        }
    )*};
}

/// `fn(b, mxcsr) -> (value, flags)` for `mn r32/r64, xmm0` with xmm0 = b
/// (32-bit results zero-extended).
macro_rules! gpr_xmm {
    ($($name:ident => $mn:literal, $r:literal),* $(,)?) => {$(
        pub fn $name(b: u128, mxcsr: u32) -> (u64, u32) {
            let x = [b];
            let mut csr = [control(mxcsr), 0u32];
            let v: u64;
            // SAFETY: as in `xmm_xmm`: only the locals `x` (read) and `csr`
            // are accessed, xmm0 is declared clobbered, MXCSR is restored.
            unsafe {
                asm!(
                    "stmxcsr dword ptr [{c} + 4]",
                    "ldmxcsr dword ptr [{c}]",
                    "movdqu xmm0, xmmword ptr [{x}]",
                    concat!($mn, " ", $r, ", xmm0"),
                    "stmxcsr dword ptr [{c}]",
                    "ldmxcsr dword ptr [{c} + 4]",
                    x = in(reg) x.as_ptr(),
                    c = in(reg) csr.as_mut_ptr(),
                    v = out(reg) v,
                    out("xmm0") _,
                    options(nostack, preserves_flags),
                );
            }
            (v, csr[0] & FLAGS)
        }
    )*};
}

xmm_xmm! {
    addps => "addps", addpd => "addpd", addss => "addss", addsd => "addsd",
    subps => "subps", subpd => "subpd", subss => "subss", subsd => "subsd",
    mulps => "mulps", mulpd => "mulpd", mulss => "mulss", mulsd => "mulsd",
    divps => "divps", divpd => "divpd", divss => "divss", divsd => "divsd",
    minps => "minps", minpd => "minpd", minss => "minss", minsd => "minsd",
    maxps => "maxps", maxpd => "maxpd", maxss => "maxss", maxsd => "maxsd",
    sqrtps => "sqrtps", sqrtpd => "sqrtpd", sqrtss => "sqrtss", sqrtsd => "sqrtsd",
    rcpps => "rcpps", rcpss => "rcpss", rsqrtps => "rsqrtps", rsqrtss => "rsqrtss",
    cvtss2sd => "cvtss2sd", cvtsd2ss => "cvtsd2ss",
    cvtdq2ps => "cvtdq2ps", cvtps2dq => "cvtps2dq", cvttps2dq => "cvttps2dq",
    cvtdq2pd => "cvtdq2pd", cvtpd2dq => "cvtpd2dq", cvttpd2dq => "cvttpd2dq",
    cvtps2pd => "cvtps2pd", cvtpd2ps => "cvtpd2ps",
}

xmm_gpr! {
    cvtsi2ss32 => "cvtsi2ss", "{v:e}", cvtsi2ss64 => "cvtsi2ss", "{v}",
    cvtsi2sd32 => "cvtsi2sd", "{v:e}", cvtsi2sd64 => "cvtsi2sd", "{v}",
}

gpr_xmm! {
    cvtss2si32 => "cvtss2si", "{v:e}", cvtss2si64 => "cvtss2si", "{v}",
    cvttss2si32 => "cvttss2si", "{v:e}", cvttss2si64 => "cvttss2si", "{v}",
    cvtsd2si32 => "cvtsd2si", "{v:e}", cvtsd2si64 => "cvtsd2si", "{v}",
    cvttsd2si32 => "cvttsd2si", "{v:e}", cvttsd2si64 => "cvttsd2si", "{v}",
}
