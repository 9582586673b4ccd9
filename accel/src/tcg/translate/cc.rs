//! Lazy condition codes in the IR: recording a flag-setting operation
//! (`cc_op` + operands, per the table in [`crate::tcg::flags`]), and reading
//! conditions back, with IR fast paths when the block statically knows the
//! last operation (CMP/SUB/TEST/logic followed by Jcc/SETcc/CMOVcc).

use iced_x86::ConditionCode;

use super::builder::{IrBuilder, CC_DST, CC_OP, CC_SRC, CC_SRC2, RFLAGS};
use crate::tcg::context::CpuContext;
use crate::tcg::exception::Exception;
use crate::tcg::flags::{CcFamily, CcOp, OpSize};
use crate::tcg::ir::{BinOp, Cond, Helper, MemSize, StateParts, Temp};
use crate::tcg::state::{rflags as rf, X86State};

/// RFLAGS with the arithmetic flags computed from the lazy state.
// TODO(flags engineer): replace the body with `flags::rflags(state)` once
// flags.rs exports it; `lazy_arith_flags` below is a local stand-in.
pub fn current_rflags(state: &X86State) -> u64 {
    if state.cc_op == CcOp::Eflags {
        return state.rflags;
    }
    (state.rflags & !rf::ARITH) | lazy_arith_flags(state.cc_op, state.cc_dst, state.cc_src, state.cc_src2)
}

/// Stand-in for flags.rs's `compute_flags` (QEMU's `cc_compute_all`).
fn lazy_arith_flags(op: CcOp, dst: u64, src: u64, src2: u64) -> u64 {
    let Some(idx) = (op as u64).checked_sub(1) else { return 0 };
    let size = [OpSize::B1, OpSize::B2, OpSize::B4, OpSize::B8][(idx % 4) as usize];
    let (mask, sign) = (size.mask(), size.sign_bit());
    let d = dst & mask;
    let s = src & mask;
    let mut f = 0;
    if d == 0 {
        f |= rf::ZF;
    }
    if d & sign != 0 {
        f |= rf::SF;
    }
    if (d as u8).count_ones() % 2 == 0 {
        f |= rf::PF;
    }
    let flag = |b: bool, bit: u64| if b { bit } else { 0 };
    let af = |a: u64, b: u64| flag((a ^ b ^ d) & 0x10 != 0, rf::AF);
    f |= match idx / 4 {
        0 | 1 => {
            // ADD/ADC: first operand = dst - src - carry.
            let carry = if idx / 4 == 1 { src2 & 1 } else { 0 };
            let a = d.wrapping_sub(s).wrapping_sub(carry) & mask;
            let cf = if carry != 0 { d <= s } else { d < s };
            flag(cf, rf::CF) | af(a, s) | flag((a ^ s ^ mask) & (a ^ d) & sign != 0, rf::OF)
        }
        2 | 3 => {
            // SUB/SBB: first operand = dst + src + borrow.
            let borrow = if idx / 4 == 3 { src2 & 1 } else { 0 };
            let a = d.wrapping_add(s).wrapping_add(borrow) & mask;
            let cf = if borrow != 0 { a <= s } else { a < s };
            flag(cf, rf::CF) | af(a, s) | flag((a ^ s) & (a ^ d) & sign != 0, rf::OF)
        }
        4 => 0,
        5 => flag(src & 1 != 0, rf::CF) | af(d.wrapping_sub(1) & mask, 1) | flag(d == sign, rf::OF),
        6 => flag(src & 1 != 0, rf::CF) | af(d.wrapping_add(1) & mask, 1) | flag(d == sign - 1, rf::OF),
        7 => flag(s & sign != 0, rf::CF) | flag((s ^ d) & sign != 0, rf::OF),
        8 => flag(s & 1 != 0, rf::CF) | flag((s ^ d) & sign != 0, rf::OF),
        9 => flag(s != 0, rf::CF | rf::OF),
        _ => flag(s == 0, rf::CF),
    };
    f
}

fn helper_rflags(ctx: &mut CpuContext<'_>, _: &[u64]) -> Result<u64, Exception> {
    Ok(current_rflags(ctx.state))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_flags_match_hardware_rules() {
        // 1 - 2 (8-bit): result 0xff, CF=1, SF=1, OF=0, AF=1.
        let f = lazy_arith_flags(CcOp::Sub8, 0xff, 2, 0);
        assert_eq!(f & (rf::CF | rf::SF | rf::OF | rf::ZF | rf::AF), rf::CF | rf::SF | rf::AF);
        // 0x80 - 1 (8-bit): 0x7f, OF=1.
        let f = lazy_arith_flags(CcOp::Sub8, 0x7f, 1, 0);
        assert_ne!(f & rf::OF, 0);
        // 0x7fffffff + 1 (32-bit): OF=1, SF=1.
        let f = lazy_arith_flags(CcOp::Add32, 0x8000_0000, 1, 0);
        assert_eq!(f & (rf::OF | rf::SF | rf::CF), rf::OF | rf::SF);
    }
}
