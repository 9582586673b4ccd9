//! Native x87 execution for the comparisons. Each wrapper saves the
//! host's own x87/SSE state with FXSAVE64, runs the instruction sequence
//! on a state loaded from an image, captures the result with FXSAVE64 and
//! restores the host state, all in one `asm!` block, so no register the
//! compiler uses is changed.

/// A 16-byte aligned FXSAVE area.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
pub struct Area(pub [u8; 512]);

/// Loads `input` with FXRSTOR64, saves it back with FXSAVE64.
pub fn roundtrip(input: &Area) -> Area {
    let mut saved = Area([0; 512]);
    let mut out = Area([0; 512]);
    // SAFETY: the three areas are 512 bytes, 16-byte aligned and valid for
    // the accesses; `input` holds a valid MXCSR (callers build it so). The
    // block restores the host's x87/SSE state before it ends.
    unsafe {
        core::arch::asm!(
            "fxsave64 [{saved}]",
            "fxrstor64 [{input}]",
            "fxsave64 [{out}]",
            "fxrstor64 [{saved}]",
            saved = in(reg) saved.0.as_mut_ptr(),
            input = in(reg) input.0.as_ptr(),
            out = in(reg) out.0.as_mut_ptr(),
            options(nostack),
        );
    }
    out
}

/// FNINIT, then FXSAVE64 (after loading `input`).
pub fn after_fninit(input: &Area) -> Area {
    let mut saved = Area([0; 512]);
    let mut out = Area([0; 512]);
    // SAFETY: as in `roundtrip`.
    unsafe {
        core::arch::asm!(
            "fxsave64 [{saved}]",
            "fxrstor64 [{input}]",
            "fninit",
            "fxsave64 [{out}]",
            "fxrstor64 [{saved}]",
            saved = in(reg) saved.0.as_mut_ptr(),
            input = in(reg) input.0.as_ptr(),
            out = in(reg) out.0.as_mut_ptr(),
            options(nostack),
        );
    }
    out
}

/// A host instruction run by [`host_ops`]: the FXSAVE image after it and
/// RFLAGS. The memory operand (if any) is `[rax]` = the 16-byte buffer.
pub type HostFn = fn(&Area, &mut [u8; 16]) -> (Area, u64);

/// One instruction: its name, its bytes, and the native runner.
pub struct HostOp {
    pub name: &'static str,
    pub bytes: &'static [u8],
    pub run: HostFn,
}

macro_rules! host_ops {
    ($($name:ident = [$($b:literal),+];)*) => {
        $(
            fn $name(input: &Area, mem: &mut [u8; 16]) -> (Area, u64) {
                let mut saved = Area([0; 512]);
                let mut out = Area([0; 512]);
                let flags: u64;
                // SAFETY: as in `roundtrip`; the instruction's memory
                // operand is [rax], the caller's 16-byte buffer; `input`
                // has no pending unmasked exception, so the instruction
                // cannot raise #MF.
                unsafe {
                    core::arch::asm!(
                        "fxsave64 [{saved}]",
                        "fxrstor64 [{input}]",
                        concat!(".byte ", stringify!($($b),+)),
                        "pushfq",
                        "pop {fl}",
                        "fxsave64 [{out}]",
                        "fxrstor64 [{saved}]",
                        saved = in(reg) saved.0.as_mut_ptr(),
                        input = in(reg) input.0.as_ptr(),
                        out = in(reg) out.0.as_mut_ptr(),
                        fl = out(reg) flags,
                        in("rax") mem.as_mut_ptr(),
                    );
                }
                (out, flags)
            }
        )*
        pub static OPS: &[HostOp] = &[
            $(HostOp { name: stringify!($name), bytes: &[$($b),+], run: $name },)*
        ];
    };
}

host_ops! {
    fadd = [0xd8, 0xc1];
    fsub = [0xd8, 0xe1];
    fsubr = [0xd8, 0xe9];
    fmul = [0xd8, 0xc9];
    fdiv = [0xd8, 0xf1];
    fdivr = [0xd8, 0xf9];
    fsub_st1_st0 = [0xdc, 0xe9];
    fsubp_st1 = [0xde, 0xe9];
    fdivrp_st1 = [0xde, 0xf1];
    fadd_m32 = [0xd8, 0x00];
    fsub_m32 = [0xd8, 0x20];
    fmul_m64 = [0xdc, 0x08];
    fdivr_m64 = [0xdc, 0x38];
    fiadd_m32 = [0xda, 0x00];
    fisubr_m16 = [0xde, 0x28];
    fidiv_m32 = [0xda, 0x30];
    fld_m32 = [0xd9, 0x00];
    fld_m64 = [0xdd, 0x00];
    fld_m80 = [0xdb, 0x28];
    fild_m16 = [0xdf, 0x00];
    fild_m32 = [0xdb, 0x00];
    fild_m64 = [0xdf, 0x28];
    fbld = [0xdf, 0x20];
    fst_m32 = [0xd9, 0x10];
    fstp_m64 = [0xdd, 0x18];
    fstp_m80 = [0xdb, 0x38];
    fist_m16 = [0xdf, 0x10];
    fistp_m32 = [0xdb, 0x18];
    fistp_m64 = [0xdf, 0x38];
    fisttp_m16 = [0xdf, 0x08];
    fisttp_m32 = [0xdb, 0x08];
    fisttp_m64 = [0xdd, 0x08];
    fbstp = [0xdf, 0x30];
    fcom_m64 = [0xdc, 0x10];
    ficomp_m32 = [0xda, 0x18];
    fsqrt = [0xd9, 0xfa];
    frndint = [0xd9, 0xfc];
    fchs = [0xd9, 0xe0];
    fabs = [0xd9, 0xe1];
    ftst = [0xd9, 0xe4];
    fxam = [0xd9, 0xe5];
    fprem = [0xd9, 0xf8];
    fprem1 = [0xd9, 0xf5];
    fscale = [0xd9, 0xfd];
    fxtract = [0xd9, 0xf4];
    fcom = [0xd8, 0xd1];
    fcomp = [0xd8, 0xd9];
    fcompp = [0xde, 0xd9];
    fucom = [0xdd, 0xe1];
    fucompp = [0xda, 0xe9];
    fcomi = [0xdb, 0xf1];
    fcomip = [0xdf, 0xf1];
    fucomip = [0xdf, 0xe9];
    fld_st1 = [0xd9, 0xc1];
    fstp_st2 = [0xdd, 0xda];
    fxch = [0xd9, 0xc9];
    ffree = [0xdd, 0xc1];
    fincstp = [0xd9, 0xf7];
    fdecstp = [0xd9, 0xf6];
    fld1 = [0xd9, 0xe8];
    fldl2t = [0xd9, 0xe9];
    fldl2e = [0xd9, 0xea];
    fldpi = [0xd9, 0xeb];
    fldlg2 = [0xd9, 0xec];
    fldln2 = [0xd9, 0xed];
    fldz = [0xd9, 0xee];
}

/// The host op called `name`.
pub fn op(name: &str) -> &'static HostOp {
    OPS.iter().find(|o| o.name == name).unwrap_or_else(|| panic!("no host op {name}"))
}

/// FNSAVE of the state `input` (108-byte protected-mode image) and the
/// state left behind (after FNSAVE's implicit FNINIT).
pub fn fnsave(input: &Area) -> ([u8; 108], Area) {
    let mut saved = Area([0; 512]);
    let mut out = Area([0; 512]);
    let mut image = [0u8; 108];
    // SAFETY: as in `roundtrip`; `image` is 108 writable bytes.
    unsafe {
        core::arch::asm!(
            "fxsave64 [{saved}]",
            "fxrstor64 [{input}]",
            "fnsave [{image}]",
            "fxsave64 [{out}]",
            "fxrstor64 [{saved}]",
            saved = in(reg) saved.0.as_mut_ptr(),
            input = in(reg) input.0.as_ptr(),
            out = in(reg) out.0.as_mut_ptr(),
            image = in(reg) image.as_mut_ptr(),
            options(nostack),
        );
    }
    (image, out)
}

/// FNSTENV of `input` (28 bytes) and the state after it.
pub fn fnstenv(input: &Area) -> ([u8; 28], Area) {
    let mut saved = Area([0; 512]);
    let mut out = Area([0; 512]);
    let mut image = [0u8; 28];
    // SAFETY: as in `fnsave`.
    unsafe {
        core::arch::asm!(
            "fxsave64 [{saved}]",
            "fxrstor64 [{input}]",
            "fnstenv [{image}]",
            "fxsave64 [{out}]",
            "fxrstor64 [{saved}]",
            saved = in(reg) saved.0.as_mut_ptr(),
            input = in(reg) input.0.as_ptr(),
            out = in(reg) out.0.as_mut_ptr(),
            image = in(reg) image.as_mut_ptr(),
            options(nostack),
        );
    }
    (image, out)
}

/// FRSTOR of `image` (after FNINIT), then FXSAVE64.
pub fn frstor(image: &[u8; 108]) -> Area {
    let mut saved = Area([0; 512]);
    let mut out = Area([0; 512]);
    // SAFETY: as in `roundtrip`; the caller's image has no pending
    // unmasked exception (FRSTOR itself does not fault on one).
    unsafe {
        core::arch::asm!(
            "fxsave64 [{saved}]",
            "fninit",
            "frstor [{image}]",
            "fxsave64 [{out}]",
            "fxrstor64 [{saved}]",
            saved = in(reg) saved.0.as_mut_ptr(),
            image = in(reg) image.as_ptr(),
            out = in(reg) out.0.as_mut_ptr(),
            options(nostack),
        );
    }
    out
}

/// Runs one of FSIN, FCOS, FPTAN, FPATAN, FYL2X, FYL2XP1, F2XM1 on ST0/ST1.
pub fn transcendental(name: &str, input: &Area) -> Area {
    let mut saved = Area([0; 512]);
    let mut out = Area([0; 512]);
    macro_rules! run {
        ($insn:literal) => {
            // SAFETY: as in `roundtrip`.
            unsafe {
                core::arch::asm!(
                    "fxsave64 [{saved}]",
                    "fxrstor64 [{input}]",
                    $insn,
                    "fxsave64 [{out}]",
                    "fxrstor64 [{saved}]",
                    saved = in(reg) saved.0.as_mut_ptr(),
                    input = in(reg) input.0.as_ptr(),
                    out = in(reg) out.0.as_mut_ptr(),
                    options(nostack),
                )
            }
        };
    }
    match name {
        "fsin" => run!("fsin"),
        "fcos" => run!("fcos"),
        "fptan" => run!("fptan"),
        "fpatan" => run!("fpatan"),
        "fyl2x" => run!("fyl2x"),
        "fyl2xp1" => run!("fyl2xp1"),
        "f2xm1" => run!("f2xm1"),
        "fsincos" => run!("fsincos"),
        _ => panic!("no transcendental {name}"),
    }
    out
}
