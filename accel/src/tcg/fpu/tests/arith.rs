//! Arithmetic, loads/stores, comparisons and stack instructions against
//! the host, with random operands under every precision and rounding mode.

use super::compare::{sweep, sweep_masks, value, value_near, Rng};
use crate::tcg::fpu::softfloat::F80;

fn mem_of(v: u64, hi: u16) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..8].copy_from_slice(&v.to_le_bytes());
    m[8..10].copy_from_slice(&hi.to_le_bytes());
    m
}

fn two(rng: &mut Rng) -> (Vec<F80>, [u8; 16]) {
    let a = value(rng, 40);
    let b = value_near(rng, a, 70);
    (vec![a, b], mem_of(rng.next(), rng.next() as u16))
}

#[test]
fn register_arithmetic_matches_the_host() {
    sweep(&["fadd", "fsub", "fsubr", "fmul", "fdiv", "fdivr", "fsub_st1_st0", "fsubp_st1", "fdivrp_st1"], 600, 1, two);
}

#[test]
fn memory_arithmetic_matches_the_host() {
    sweep(&["fadd_m32", "fsub_m32", "fmul_m64", "fdivr_m64", "fiadd_m32", "fisubr_m16", "fidiv_m32"], 400, 2, two);
}

#[test]
fn square_root_and_round_to_integer_match_the_host() {
    sweep(&["fsqrt", "frndint", "fchs", "fabs", "fxtract"], 600, 3, |rng| (vec![value(rng, 70)], [0; 16]));
}

#[test]
fn partial_remainders_and_scale_match_the_host() {
    sweep(&["fprem", "fprem1"], 600, 4, two);
    sweep(&["fscale"], 400, 5, |rng| {
        let a = value(rng, 40);
        let e = F80::new(rng.next() & 1 != 0, 0x3fff + rng.below(16) as u16, super::compare::sig(rng));
        (vec![a, if rng.below(4) == 0 { value(rng, 20) } else { e }], [0; 16])
    });
}

#[test]
fn comparisons_match_the_host() {
    let names = [
        "fcom",
        "fcomp",
        "fcompp",
        "fucom",
        "fucompp",
        "fcomi",
        "fcomip",
        "fucomip",
        "ftst",
        "fxam",
        "fcom_m64",
        "ficomp_m32",
    ];
    sweep(&names, 300, 6, |rng| {
        let (mut v, m) = two(rng);
        if rng.below(5) == 0 {
            v[1] = v[0];
        }
        (v, m)
    });
}

#[test]
fn loads_match_the_host() {
    let names = ["fld_m32", "fld_m64", "fld_m80", "fild_m16", "fild_m32", "fild_m64", "fld_st1"];
    sweep(&names, 300, 7, |rng| {
        let v = value(rng, 40);
        let mem = match rng.below(3) {
            0 => mem_of(rng.next(), rng.next() as u16),
            1 => mem_of(v.sig, v.se),
            _ => mem_of(rng.next() >> rng.below(64), 0),
        };
        (vec![v, value(rng, 40)], mem)
    });
}

#[test]
fn stores_match_the_host() {
    let names = [
        "fst_m32",
        "fstp_m64",
        "fstp_m80",
        "fist_m16",
        "fistp_m32",
        "fistp_m64",
        "fisttp_m16",
        "fisttp_m32",
        "fisttp_m64",
        "fbstp",
    ];
    sweep(&names, 400, 8, |rng| {
        // Integer-sized magnitudes for FIST, any for FST.
        let v = if rng.below(2) == 0 {
            F80::new(rng.next() & 1 != 0, 0x3fff + rng.below(66) as u16, super::compare::sig(rng))
        } else {
            value(rng, 1100)
        };
        (vec![v], [0xaa; 16])
    });
}

#[test]
fn bcd_loads_match_the_host() {
    sweep(&["fbld"], 100, 9, |rng| {
        let mut m = [0u8; 16];
        for b in m[..9].iter_mut() {
            let x = rng.below(100) as u8;
            *b = (x / 10) << 4 | (x % 10);
        }
        m[9] = if rng.below(2) == 0 { 0x80 } else { 0 };
        (vec![], m)
    });
}

#[test]
fn stack_instructions_and_constants_match_the_host() {
    let names = [
        "fld_st1", "fstp_st2", "fxch", "ffree", "fincstp", "fdecstp", "fld1", "fldl2t", "fldl2e", "fldpi", "fldlg2",
        "fldln2", "fldz", "fxam", "fadd", "fsqrt", "fst_m32", "fcomi", "fxtract", "fprem",
    ];
    sweep(&names, 40, 10, |rng| {
        let n = rng.below(9) as usize;
        ((0..n).map(|_| value(rng, 40)).collect(), [0; 16])
    });
}

/// Operands whose product/quotient lands within a few binades of the
/// denormal boundary or of overflow, with carry-prone significands.
fn boundary(rng: &mut Rng) -> (Vec<F80>, [u8; 16]) {
    let sig = |rng: &mut Rng| if rng.below(2) == 0 { u64::MAX << rng.below(40) } else { super::compare::sig(rng) };
    // Biased exponents: a product's is ea + eb - BIAS, a quotient's ea - eb + BIAS.
    let ea = 0x2000 + rng.below(0x4000) as i64;
    let target = if rng.below(2) == 0 { rng.below(70) as i64 - 66 } else { 0x7ffe + rng.below(5) as i64 - 2 };
    let eb = if rng.below(2) == 0 { target - ea + 0x3fff } else { ea + 0x3fff - target };
    let (a_exp, b_exp) = (ea, eb.clamp(1, 0x7ffe));
    let a = F80::new(rng.next() & 1 != 0, a_exp as u16, sig(rng));
    let b = F80::new(rng.next() & 1 != 0, (b_exp as u16).clamp(1, 0x7ffe), sig(rng));
    (vec![a, b], [0; 16])
}

#[test]
fn results_near_underflow_and_overflow_match_the_host() {
    sweep(&["fmul", "fdiv", "fdivr"], 500, 11, boundary);
    // Stores near the single/double limits.
    sweep(&["fst_m32", "fstp_m64"], 500, 12, |rng| {
        let e = match rng.below(4) {
            0 => 0x3fff - 126 - rng.below(26),
            1 => 0x3fff - 1022 - rng.below(55),
            2 => 0x3fff + 127 + rng.below(2) - 1,
            _ => 0x3fff + 1023 + rng.below(2) - 1,
        };
        let s = if rng.below(2) == 0 { u64::MAX << rng.below(64) } else { super::compare::sig(rng) };
        (vec![F80::new(rng.next() & 1 != 0, e as u16, s | 1 << 63)], [0; 16])
    });
}

#[test]
fn unmasked_exceptions_match_the_host() {
    use crate::tcg::fpu::fsw;
    let unmaskable = fsw::IE | fsw::DE | fsw::ZE | fsw::PE | fsw::OE | fsw::UE;
    let names = ["fadd", "fsubr", "fmul", "fdiv", "fdivrp_st1", "fadd_m32", "fdivr_m64", "fsqrt", "frndint", "fcomi"];
    sweep_masks(&names, 300, 13, unmaskable, two);
    sweep_masks(&["fmul", "fdiv"], 300, 14, unmaskable, boundary);
    let stores = ["fst_m32", "fstp_m64", "fistp_m32", "fld_m32", "fld_st1", "fprem", "fscale", "fxtract"];
    sweep_masks(&stores, 300, 15, unmaskable, |rng| {
        let (v, _) = two(rng);
        (v, mem_of(rng.next(), 0))
    });
}
