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
