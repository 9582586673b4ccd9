//! Lazy condition codes in the IR: recording a flag-setting operation
//! (`cc_op` + operands, per the table in [`crate::tcg::flags`]), and reading
//! conditions back, with IR fast paths when the block statically knows the
//! last operation (CMP/SUB/TEST/logic followed by Jcc/SETcc/CMOVcc).

use iced_x86::ConditionCode;

use super::builder::{IrBuilder, CC_DST, CC_OP, CC_SRC, CC_SRC2, RFLAGS};
use crate::tcg::context::CpuContext;
use crate::tcg::exception::Exception;
use crate::tcg::flags::{self, CcFamily, CcOp, OpSize};
use crate::tcg::ir::{BinOp, Cond, Helper, MemSize, StateParts, Temp};
use crate::tcg::state::rflags as rf;

fn helper_rflags(ctx: &mut CpuContext<'_>, _: &[u64]) -> Result<u64, Exception> {
    Ok(flags::rflags(ctx.state))
}

/// Returns the full RFLAGS (arithmetic flags computed).
pub static RFLAGS_HELPER: Helper = Helper {
    name: "rflags",
    func: helper_rflags,
    may_fault: false,
    reads: StateParts::FLAGS,
    writes: StateParts::NONE,
};

impl IrBuilder {
    /// Records a flag-setting operation of `family` at `size`. `dst` and
    /// `src` must already be truncated to `size`.
    pub fn set_cc(&mut self, family: CcFamily, size: OpSize, dst: Temp, src: Option<Temp>, src2: Option<Temp>) {
        let op = CcOp::sized(family, size);
        self.cc_known = Some(op);
        if self.flags_dead {
            return;
        }
        self.st_envi(op as u64, CC_OP, MemSize::B8);
        self.st_env(dst, CC_DST, MemSize::B8);
        if let Some(s) = src {
            self.st_env(s, CC_SRC, MemSize::B8);
        }
        if let Some(s) = src2 {
            self.st_env(s, CC_SRC2, MemSize::B8);
        }
    }

    /// Full RFLAGS as a temp (a helper call unless already materialised).
    pub fn rflags(&mut self) -> Temp {
        if self.cc_known == Some(CcOp::Eflags) {
            return self.ld_env(RFLAGS, MemSize::B8);
        }
        self.call(&RFLAGS_HELPER, &[])
    }

    /// Makes `value` the new RFLAGS (arithmetic flags included) and switches
    /// the lazy state to `Eflags`. Bit 1 is forced on.
    pub fn set_rflags(&mut self, value: Temp) {
        let v = self.bini(BinOp::Or, value, rf::FIXED1);
        self.st_env(v, RFLAGS, MemSize::B8);
        self.st_envi(CcOp::Eflags as u64, CC_OP, MemSize::B8);
        self.cc_known = Some(CcOp::Eflags);
    }

    /// The carry flag as 0/1.
    pub fn carry(&mut self) -> Temp {
        let (c, a, b) = self.cond(ConditionCode::b);
        self.setcond(c, a, b)
    }

    /// `cc` as a comparison `(cond, a, b)` for BrCond/SetCond/Select.
    pub fn cond(&mut self, cc: ConditionCode) -> (Cond, Temp, Temp) {
        if let Some(r) = self.cond_fast(cc) {
            return r;
        }
        let f = self.rflags();
        self.cond_from_rflags(cc, f)
    }

    fn cond_from_rflags(&mut self, cc: ConditionCode, f: Temp) -> (Cond, Temp, Temp) {
        use ConditionCode as C;
        let test = |b: &mut IrBuilder, bits: u64, set: bool| {
            let m = b.movi(bits);
            (if set { Cond::TstNe } else { Cond::TstEq }, f, m)
        };
        // SF != OF as bit 0 of (f >> 7) ^ (f >> 11).
        let sf_ne_of = |b: &mut IrBuilder| {
            let s = b.bini(BinOp::Shr, f, 7);
            let o = b.bini(BinOp::Shr, f, 11);
            b.bin(BinOp::Xor, s, o)
        };
        match cc {
            C::o => test(self, rf::OF, true),
            C::no => test(self, rf::OF, false),
            C::b => test(self, rf::CF, true),
            C::ae => test(self, rf::CF, false),
            C::e => test(self, rf::ZF, true),
            C::ne => test(self, rf::ZF, false),
            C::be => test(self, rf::CF | rf::ZF, true),
            C::a => test(self, rf::CF | rf::ZF, false),
            C::s => test(self, rf::SF, true),
            C::ns => test(self, rf::SF, false),
            C::p => test(self, rf::PF, true),
            C::np => test(self, rf::PF, false),
            C::l | C::ge => {
                let x = sf_ne_of(self);
                let one = self.movi(1);
                (if cc == C::l { Cond::TstNe } else { Cond::TstEq }, x, one)
            }
            C::le | C::g => {
                let x = sf_ne_of(self);
                let z = self.bini(BinOp::Shr, f, 6);
                let y = self.bin(BinOp::Or, x, z);
                let one = self.movi(1);
                (if cc == C::le { Cond::TstNe } else { Cond::TstEq }, y, one)
            }
            C::None => {
                let z = self.movi(0);
                (Cond::Eq, z, z)
            }
        }
    }

    /// Direct comparisons when the block knows `cc_op` is SUB (CMP) or a
    /// logic op (TEST/AND/OR/XOR): no flags materialised.
    fn cond_fast(&mut self, cc: ConditionCode) -> Option<(Cond, Temp, Temp)> {
        use ConditionCode as C;
        let op = self.cc_known?;
        let idx = (op as u64).checked_sub(1)?;
        let size = [OpSize::B1, OpSize::B2, OpSize::B4, OpSize::B8][(idx % 4) as usize];
        let family = idx / 4;
        let (is_sub, is_logic, zs_only) = (family == 2, family == 4, matches!(family, 0 | 5 | 6 | 7 | 8));
        if !(is_sub || is_logic || zs_only) {
            return None;
        }
        let dst = self.ld_env(CC_DST, MemSize::B8);
        let zero = self.movi(0);
        match cc {
            C::e => return Some((Cond::Eq, dst, zero)),
            C::ne => return Some((Cond::Ne, dst, zero)),
            C::s | C::ns => {
                let sd = self.sext(size, dst);
                return Some((if cc == C::s { Cond::Lt } else { Cond::Ge }, sd, zero));
            }
            _ => {}
        }
        if is_logic {
            let sd = self.sext(size, dst);
            return Some(match cc {
                C::b | C::o => (Cond::Ne, zero, zero),
                C::ae | C::no => (Cond::Eq, zero, zero),
                C::be => (Cond::Eq, dst, zero),
                C::a => (Cond::Ne, dst, zero),
                C::l => (Cond::Lt, sd, zero),
                C::ge => (Cond::Ge, sd, zero),
                C::le => (Cond::Le, sd, zero),
                C::g => (Cond::Gt, sd, zero),
                _ => return None,
            });
        }
        if !is_sub {
            return None;
        }
        // CMP a, b: cc_dst = a - b, cc_src = b.
        let b = self.ld_env(CC_SRC, MemSize::B8);
        let sum = self.bin(BinOp::Add, dst, b);
        let a = self.zext(size, sum);
        let (sa, sb) = (self.sext(size, a), self.sext(size, b));
        Some(match cc {
            C::b => (Cond::Ltu, a, b),
            C::ae => (Cond::Geu, a, b),
            C::be => (Cond::Leu, a, b),
            C::a => (Cond::Gtu, a, b),
            C::l => (Cond::Lt, sa, sb),
            C::ge => (Cond::Ge, sa, sb),
            C::le => (Cond::Le, sa, sb),
            C::g => (Cond::Gt, sa, sb),
            _ => return None,
        })
    }
}
