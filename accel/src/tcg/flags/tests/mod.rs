//! Tests of the lazy flags: self-consistency here, the real CPU in `vs_cpu`.

mod cpu;
mod vs_cpu;

use super::super::state::{rflags as rf, X86State};
use super::*;

/// Arithmetic flags the CPU harness loads before an instruction.
const ARITH_IN: u64 = rf::ARITH;

const SIZES: [OpSize; 4] = [OpSize::B1, OpSize::B2, OpSize::B4, OpSize::B8];

const FAMILIES: [CcFamily; 11] = [
    CcFamily::Add,
    CcFamily::Adc,
    CcFamily::Sub,
    CcFamily::Sbb,
    CcFamily::Logic,
    CcFamily::Inc,
    CcFamily::Dec,
    CcFamily::Shl,
    CcFamily::Sar,
    CcFamily::Mul,
    CcFamily::Bmi,
];

/// xorshift64: fixed seeds make every run see the same cases.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// An operand, biased towards the values where flags flip: 0, all ones,
    /// each size's sign boundary, small numbers and their neighbours.
    fn operand(&mut self) -> u64 {
        const EDGES: [u64; 14] = [
            0,
            1,
            0x0f,
            0x10,
            0x7f,
            0x80,
            0xff,
            0x7fff,
            0x8000,
            0xffff,
            0x7fff_ffff,
            0x8000_0000,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
        ];
        let r = self.next();
        let edge = EDGES[(r >> 8) as usize % EDGES.len()];
        match r & 7 {
            0 => edge,
            // Edge ± a little, also reaching all-ones (0 - 1).
            1 => edge.wrapping_add((r >> 32) % 5).wrapping_sub(2),
            2 => (r >> 16) & 0x1f,
            // Sign-extended small negative numbers.
            3 => ((r >> 16) & 0xf).wrapping_neg(),
            _ => self.next(),
        }
    }

    /// Random arithmetic flags.
    fn flags(&mut self) -> u64 {
        self.next() & rf::ARITH
    }
}

/// The flags a condition reads.
fn cond_reads(c: X86Cond) -> u64 {
    match c as u8 >> 1 {
        0 => rf::OF,
        1 => rf::CF,
        2 => rf::ZF,
        3 => rf::CF | rf::ZF,
        4 => rf::SF,
        5 => rf::PF,
        6 => rf::SF | rf::OF,
        _ => rf::ZF | rf::SF | rf::OF,
    }
}

fn all_conds() -> impl Iterator<Item = X86Cond> {
    (0..16).map(X86Cond::from_cc_nibble)
}

fn show(f: u64) -> String {
    [(rf::OF, 'O'), (rf::SF, 'S'), (rf::ZF, 'Z'), (rf::AF, 'A'), (rf::PF, 'P'), (rf::CF, 'C')]
        .iter()
        .map(|&(b, c)| if f & b != 0 { c } else { '.' })
        .collect()
}

/// Collects mismatches of one family and reports them all at the end.
struct Check {
    name: &'static str,
    cases: u64,
    /// Failed checks (flags, result or a condition), not cases.
    failures: u64,
    examples: Vec<String>,
}

impl Check {
    fn new(name: &'static str) -> Self {
        Check { name, cases: 0, failures: 0, examples: Vec::new() }
    }

    fn fail(&mut self, msg: String) {
        self.failures += 1;
        if self.examples.len() < 8 {
            self.examples.push(msg);
        }
    }

    /// One case: `hw` and `model` flags must agree outside `undefined`.
    fn flags(&mut self, ctx: &dyn Fn() -> String, hw: u64, model: u64, undefined: u64) {
        self.cases += 1;
        let diff = (hw ^ model) & rf::ARITH & !undefined;
        if diff != 0 {
            let (hw, model, diff) = (show(hw), show(model), show(diff));
            self.fail(format!("{}: cpu {hw} model {model} differ {diff}", ctx()));
        }
    }

    /// A documented host rule for flags in `compared` (not a new case).
    fn host_rule(&mut self, ctx: &dyn Fn() -> String, hw: u64, want: u64, compared: u64) {
        if (hw ^ want) & compared != 0 {
            let (hw, want) = (show(hw & compared), show(want & compared));
            self.fail(format!("{}: host rule says {want}, cpu {hw}", ctx()));
        }
    }

    fn value(&mut self, ctx: &dyn Fn() -> String, hw: u64, model: u64) {
        if hw != model {
            self.fail(format!("{}: cpu result {hw:#x} model {model:#x}", ctx()));
        }
    }

    /// Every condition that reads only flags outside `undefined` must agree
    /// between the CPU's flags and `eval` on the lazy state.
    fn conds(&mut self, ctx: &dyn Fn() -> String, hw: u64, undefined: u64, eval: &dyn Fn(X86Cond) -> bool) {
        for c in all_conds() {
            if cond_reads(c) & undefined == 0 && c.eval_flags(hw) != eval(c) {
                self.fail(format!("{}: {c:?} cpu flags {} say {}", ctx(), show(hw), c.eval_flags(hw)));
            }
        }
    }

    /// Panics with the collected mismatches; returns the number of cases.
    fn finish(self) -> u64 {
        println!("{}: {} cases, {} failed checks", self.name, self.cases, self.failures);
        assert!(
            self.failures == 0,
            "{}: {} failed checks in {} cases, e.g.\n{}",
            self.name,
            self.failures,
            self.cases,
            self.examples.join("\n")
        );
        self.cases
    }
}

#[test]
fn ccop_family_and_size_round_trip() {
    assert_eq!(CcOp::Eflags.family(), None);
    assert_eq!(CcOp::Eflags.size(), None);
    for family in FAMILIES {
        for size in SIZES {
            let op = CcOp::sized(family, size);
            assert_eq!((op.family(), op.size()), (Some(family), Some(size)), "{op:?}");
            assert_eq!(CcOp::from_u64(op as u64), Some(op));
        }
    }
    assert_eq!(CcOp::from_u64(45), None);
    assert_eq!(CcOp::from_u64(u64::MAX), None);
}

#[test]
fn cond_encoding() {
    for n in 0..=255u8 {
        let c = X86Cond::from_cc_nibble(n);
        assert_eq!(c.cc_nibble(), n & 0xf);
        assert_eq!(c.negate().cc_nibble(), (n & 0xf) ^ 1);
    }
    assert_eq!(X86Cond::from_cc_nibble(0x74), X86Cond::E);
    assert_eq!(X86Cond::from_cc_nibble(0x8f), X86Cond::G);
    for f in 0..=rf::ARITH {
        for c in all_conds() {
            assert_ne!(c.eval_flags(f), c.negate().eval_flags(f));
        }
    }
}

/// The fast paths (compute_cf, eval_cond) agree with compute_flags for every
/// op on any input, including untruncated garbage.
#[test]
fn fast_paths_agree_with_compute_flags() {
    let mut rng = Rng::new(0x5eed_0001);
    let mut cases = 0u64;
    for v in 0..45 {
        let op = CcOp::from_u64(v).unwrap();
        for i in 0..4000 {
            let (dst, src, src2) = if i % 2 == 0 {
                (rng.operand(), rng.operand(), rng.next() & 1)
            } else {
                (rng.next(), rng.next(), rng.next())
            };
            let eflags = rng.next();
            let flags = arith_flags(op, dst, src, src2, eflags);
            assert_eq!(flags & !rf::ARITH, 0);
            if op != CcOp::Eflags {
                assert_eq!(flags, compute_flags(op, dst, src, src2));
                assert_eq!(compute_cf(op, dst, src, src2), flags & rf::CF != 0, "{op:?} {dst:#x} {src:#x}");
            }
            for c in all_conds() {
                let got = eval_cond(c, op, dst, src, src2, eflags);
                assert_eq!(got, c.eval_flags(flags), "{c:?} {op:?} {dst:#x} {src:#x} {src2:#x}");
            }
            cases += 1;
        }
    }
    println!("fast paths: {cases} cases x 16 conditions");
}

#[test]
fn eflags_op_reads_rflags() {
    assert_eq!(compute_flags(CcOp::Eflags, 1, 2, 3), 0);
    assert!(!compute_cf(CcOp::Eflags, 0, 1, 0));
    assert!(eval_cond(X86Cond::B, CcOp::Eflags, 0, 0, 0, rf::CF));
    assert!(eval_cond(X86Cond::L, CcOp::Eflags, 0, 0, 0, rf::SF));
    assert!(!eval_cond(X86Cond::L, CcOp::Eflags, 0, 0, 0, rf::SF | rf::OF));
}

#[test]
fn rflags_round_trip() {
    let mut s = X86State::reset();
    s.rflags = rf::IF | rf::DF | rf::ID | rf::ARITH; // stale arithmetic bits
                                                     // CMP 1, 2 (8-bit): 0xff, borrow, negative, half borrow, even parity.
    s.cc_op = CcOp::Sub8;
    s.cc_dst = 0xff;
    s.cc_src = 2;
    let f = rflags(&s);
    assert_eq!(f, rf::IF | rf::DF | rf::ID | rf::FIXED1 | rf::CF | rf::SF | rf::AF | rf::PF);
    assert!(eval_cond_state(&s, X86Cond::B) && eval_cond_state(&s, X86Cond::L) && !eval_cond_state(&s, X86Cond::E));

    set_rflags_arith(&mut s, rf::ZF | rf::OF | rf::TF | rf::VM);
    assert_eq!(s.cc_op, CcOp::Eflags);
    // Only the arithmetic bits are taken; system bits are untouched.
    assert_eq!(rflags(&s), rf::IF | rf::DF | rf::ID | rf::FIXED1 | rf::ZF | rf::OF);
    assert!(eval_cond_state(&s, X86Cond::E) && eval_cond_state(&s, X86Cond::O) && !eval_cond_state(&s, X86Cond::B));

    // Bit 1 always reads as set, even if the stored value lost it.
    s.rflags = 0;
    assert_eq!(rflags(&s), rf::FIXED1);
}

#[test]
fn rotate_count_zero_and_total() {
    let mut rng = Rng::new(7);
    for size in SIZES {
        for kind in [RotateKind::Rol, RotateKind::Ror, RotateKind::Rcl, RotateKind::Rcr] {
            for count in [0u64, 32, 64, 256, 1 << 40] {
                // These counts mask to 0 for 8/16/32-bit (and 64-bit but 32).
                if size == OpSize::B8 && count == 32 {
                    continue;
                }
                let (v, f) = (rng.next(), rng.next());
                assert_eq!(rotate_flags(kind, size, v, count, f), f);
                assert_eq!(rotate_result(kind, size, v, count, f), v & size.mask());
            }
            for count in 0..=255 {
                let (v, f) = (rng.next(), rng.next());
                let r = rotate_result(kind, size, v, count, f);
                assert_eq!(r & !size.mask(), 0);
                let nf = rotate_flags(kind, size, v, count, f);
                assert_eq!(nf & !(rf::CF | rf::OF), f & !(rf::CF | rf::OF));
            }
            let _ = rotate_flags(kind, size, u64::MAX, u64::MAX, u64::MAX);
        }
    }
}
