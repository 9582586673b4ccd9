//! x87 FPU, FPU-state (FXSAVE/FXRSTOR, LDMXCSR/STMXCSR) and EMMS
//! instructions. The FPU state is not addressable by IR env ops, so every
//! instruction is a helper call into `crate::tcg::fpu`; memory operands of
//! up to 8 bytes are loaded/stored by IR ops around the call where that
//! keeps the helper free of memory accesses.
//!
//! Availability: CR0.TS/EM are part of the TB key (`hflags::FPU_TRAP`), so
//! blocks translated with both clear carry no check; otherwise each
//! instruction starts with a call that raises #NM/#UD per its class.

pub(crate) mod arith;
mod control;
mod env;
mod mem;

use iced_x86::{Instruction, Mnemonic};

use super::builder::IrBuilder;
use super::Lowered;
use crate::tcg::context::CpuContext;
use crate::tcg::exception::Result;
use crate::tcg::fpu::{self, DeviceClass};
use crate::tcg::ir::{Helper, StateParts};
use crate::tcg::state::hflags;

/// Whether `m` belongs to this module.
pub(super) fn handles(m: Mnemonic) -> bool {
    use Mnemonic as M;
    arith::handles(m)
        || env::handles(m)
        || matches!(
            m,
            M::Fninit
                | M::Finit
                | M::Fnclex
                | M::Fclex
                | M::Fnstsw
                | M::Fstsw
                | M::Fnstcw
                | M::Fstcw
                | M::Fldcw
                | M::Wait
                | M::Emms
                | M::Ldmxcsr
                | M::Stmxcsr
                | M::Fxsave
                | M::Fxsave64
                | M::Fxrstor
                | M::Fxrstor64
        )
}

/// The availability rules `m` follows.
fn device_class(m: Mnemonic) -> DeviceClass {
    use Mnemonic as M;
    match m {
        M::Wait => DeviceClass::Wait,
        M::Emms => DeviceClass::Mmx,
        M::Ldmxcsr | M::Stmxcsr => DeviceClass::Sse,
        _ => DeviceClass::X87,
    }
}

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let m = insn.mnemonic();
    if b.hflags & hflags::FPU_TRAP != 0 {
        let class = b.movi(device_class(m) as u64);
        b.call(&CHECK_DEVICE, &[class]);
    }
    if arith::handles(m) {
        arith::lower(b, insn)
    } else if env::handles(m) {
        env::lower(b, insn)
    } else {
        control::lower(b, insn)
    }
}

/// `args`: [`DeviceClass`].
fn helper_check_device(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64> {
    fpu::check_device(ctx.state, DeviceClass::from_u64(args.first().copied().unwrap_or(0)))?;
    Ok(0)
}

static CHECK_DEVICE: Helper = Helper {
    name: "fpu_check_device",
    func: helper_check_device,
    may_fault: true,
    reads: StateParts::SYSTEM,
    writes: StateParts::NONE,
};
