//! Differential tests against this host's CPU: each runs the real instruction
//! on pseudo-random operands and flags, then checks `compute_flags` on the
//! operands encoded as the module docs tell the frontend to, and `eval_cond`
//! for every condition whose flags are defined. Flags are compared bit for bit
//! except those documented as undefined *and* differing from the host.

use super::super::super::state::rflags as rf;
use super::*;

/// Random cases per operand size (so ≥ 10k per family over four sizes).
const N: u32 = 3000;

fn msb(size: OpSize, v: u64) -> u64 {
    (v >> (size.bits() - 1)) & 1
}

fn sx(size: OpSize, v: u64) -> i64 {
    let s = 64 - size.bits();
    ((v << s) as i64) >> s
}

/// Checks flags and all defined conditions of one lazy state against the CPU.
#[allow(clippy::too_many_arguments)]
fn lazy(chk: &mut Check, ctx: &dyn Fn() -> String, hw: u64, undefined: u64, op: CcOp, dst: u64, src: u64, src2: u64) {
    chk.flags(ctx, hw, compute_flags(op, dst, src, src2), undefined);
    chk.conds(ctx, hw, undefined, &|c| eval_cond(c, op, dst, src, src2, 0));
}

#[test]
fn add_adc() {
    let mut rng = Rng::new(0xadd);
    let mut chk = Check::new("add/adc");
    for size in SIZES {
        let m = size.mask();
        for _ in 0..N {
            let (a, b, fin) = (rng.operand(), rng.operand(), rng.flags());
            let ctx = || format!("{size:?} {a:#x} {b:#x} in {}", show(fin));
            let (r, f) = cpu::add(size, a, b, fin);
            chk.value(&ctx, r, a.wrapping_add(b) & m);
            lazy(&mut chk, &ctx, f, 0, CcOp::sized(CcFamily::Add, size), r, b, 0);

            let cin = fin & rf::CF;
            let (r, f) = cpu::adc(size, a, b, fin);
            chk.value(&ctx, r, a.wrapping_add(b).wrapping_add(cin) & m);
            lazy(&mut chk, &ctx, f, 0, CcOp::sized(CcFamily::Adc, size), r, b, cin);
        }
    }
    chk.finish();
}

#[test]
fn sub_sbb_neg() {
    let mut rng = Rng::new(0x5b);
    let mut chk = Check::new("sub/sbb/neg");
    for size in SIZES {
        let m = size.mask();
        for _ in 0..N {
            let (a, b, fin) = (rng.operand(), rng.operand(), rng.flags());
            let ctx = || format!("{size:?} {a:#x} {b:#x} in {}", show(fin));
            let (r, f) = cpu::sub(size, a, b, fin);
            chk.value(&ctx, r, a.wrapping_sub(b) & m);
            lazy(&mut chk, &ctx, f, 0, CcOp::sized(CcFamily::Sub, size), r, b, 0);

            let bin = fin & rf::CF;
            let (r, f) = cpu::sbb(size, a, b, fin);
            chk.value(&ctx, r, a.wrapping_sub(b).wrapping_sub(bin) & m);
            lazy(&mut chk, &ctx, f, 0, CcOp::sized(CcFamily::Sbb, size), r, b, bin);

            // NEG a = SUB 0, a: cc_dst = -a, cc_src = a.
            let (r, f) = cpu::neg(size, a, fin);
            chk.value(&ctx, r, a.wrapping_neg() & m);
            lazy(&mut chk, &ctx, f, 0, CcOp::sized(CcFamily::Sub, size), r, a, 0);
        }
    }
    chk.finish();
}

#[test]
fn logic() {
    let mut rng = Rng::new(0x10c);
    let mut chk = Check::new("and/or/xor");
    for size in SIZES {
        let m = size.mask();
        for _ in 0..N {
            let (a, b, fin) = (rng.operand(), rng.operand(), rng.flags());
            let ctx = || format!("{size:?} {a:#x} {b:#x} in {}", show(fin));
            let op = CcOp::sized(CcFamily::Logic, size);
            for (hw, want) in [
                (cpu::and(size, a, b, fin), a & b & m),
                (cpu::or(size, a, b, fin), (a | b) & m),
                (cpu::xor(size, a, b, fin), (a ^ b) & m),
            ] {
                chk.value(&ctx, hw.0, want);
                // AF is undefined but the host clears it, as we do: compared.
                lazy(&mut chk, &ctx, hw.1, 0, op, want, 0, 0);
            }
        }
    }
    chk.finish();
}

#[test]
fn inc_dec() {
    let mut rng = Rng::new(0x1dc);
    let mut chk = Check::new("inc/dec");
    for size in SIZES {
        let m = size.mask();
        for _ in 0..N {
            let (a, fin) = (rng.operand(), rng.flags());
            let ctx = || format!("{size:?} {a:#x} in {}", show(fin));
            let cf = fin & rf::CF;
            let (r, f) = cpu::inc(size, a, fin);
            chk.value(&ctx, r, a.wrapping_add(1) & m);
            lazy(&mut chk, &ctx, f, 0, CcOp::sized(CcFamily::Inc, size), r, cf, 0);
            let (r, f) = cpu::dec(size, a, fin);
            chk.value(&ctx, r, a.wrapping_sub(1) & m);
            lazy(&mut chk, &ctx, f, 0, CcOp::sized(CcFamily::Dec, size), r, cf, 0);
        }
    }
    chk.finish();
}

/// SHL/SHR/SAR for every masked count 1..=31 (63 for 64-bit), which covers
/// 1..bits-1 and, for 8/16-bit, counts past the width; count 0 leaves flags.
#[test]
fn shifts() {
    let mut rng = Rng::new(0x5417);
    let mut chk = Check::new("shl/shr/sar");
    for size in SIZES {
        let m = size.mask();
        let max = if size == OpSize::B8 { 63 } else { 31 };
        for i in 0..N {
            let (a, fin) = (rng.operand() & m, rng.flags());
            // Cycle through all counts, plus raw CL bits above the mask.
            let raw = (i as u64 % max + 1) as u8 | (rng.next() as u8 & !(max as u8));
            let c = u64::from(raw) & max;
            let ctx = || format!("{size:?} {a:#x} count {c} in {}", show(fin));
            // Hardware takes OF from the original operand when count > 1.
            let of_undef = if c > 1 { rf::OF } else { 0 };

            let (r, f) = cpu::shl(size, a, raw, fin);
            chk.value(&ctx, r, (a << c) & m);
            lazy(&mut chk, &ctx, f, of_undef, CcOp::sized(CcFamily::Shl, size), r, (a << (c - 1)) & m, 0);
            // The documented host rule for that OF: its first 1-bit step.
            chk.host_rule(&ctx, f, (msb(size, a) ^ msb(size, a << 1)) * rf::OF, rf::OF);

            let (r, f) = cpu::shr(size, a, raw, fin);
            chk.value(&ctx, r, a >> c);
            lazy(&mut chk, &ctx, f, of_undef, CcOp::sized(CcFamily::Sar, size), r, a >> (c - 1), 0);
            chk.host_rule(&ctx, f, msb(size, a) * rf::OF, rf::OF);

            // SAR's OF (0) matches the host for every count: compared.
            let (r, f) = cpu::sar(size, a, raw, fin);
            chk.value(&ctx, r, (sx(size, a) >> c) as u64 & m);
            lazy(&mut chk, &ctx, f, 0, CcOp::sized(CcFamily::Sar, size), r, (sx(size, a) >> (c - 1)) as u64 & m, 0);
        }
        // Masked count 0: no flag changes (the frontend keeps cc_*).
        for raw in [0u8, (max + 1) as u8] {
            let (a, fin) = (rng.operand(), rng.flags());
            let ctx = || format!("{size:?} {a:#x} count {raw} in {}", show(fin));
            for f in [cpu::shl(size, a, raw, fin).1, cpu::shr(size, a, raw, fin).1, cpu::sar(size, a, raw, fin).1] {
                chk.flags(&ctx, f, fin, 0);
            }
        }
    }
    chk.finish();
}

fn shld_model(size: OpSize, a: u64, b: u64, c: u64) -> u64 {
    let (m, n) = (size.mask(), u64::from(size.bits()));
    if c == 0 {
        a & m
    } else {
        ((a << c) | ((b & m) >> (n - c))) & m
    }
}

fn shrd_model(size: OpSize, a: u64, b: u64, c: u64) -> u64 {
    let (m, n) = (size.mask(), u64::from(size.bits()));
    if c == 0 {
        a & m
    } else {
        (((a & m) >> c) | (b << (n - c))) & m
    }
}

/// SHLD/SHRD with counts 1..bits-1 (larger 16-bit counts give undefined results).
#[test]
fn double_shifts() {
    let mut rng = Rng::new(0xd5);
    let mut chk = Check::new("shld/shrd");
    for size in [OpSize::B2, OpSize::B4, OpSize::B8] {
        let bits = u64::from(size.bits());
        for i in 0..N * 4 / 3 {
            let (a, b, fin) = (rng.operand(), rng.operand(), rng.flags());
            let c = i as u64 % (bits - 1) + 1;
            let ctx = || format!("{size:?} {a:#x} {b:#x} count {c} in {}", show(fin));
            let of_undef = if c > 1 { rf::OF } else { 0 };

            let (r, f) = cpu::shld(size, a, b, c as u8, fin);
            chk.value(&ctx, r, shld_model(size, a, b, c));
            let op = CcOp::sized(CcFamily::Shl, size);
            lazy(&mut chk, &ctx, f, of_undef, op, r, shld_model(size, a, b, c - 1), 0);
            // Host OF for any count: the sign change of the first 1-bit step.
            let first = shld_model(size, a, b, 1);
            chk.host_rule(&ctx, f, (msb(size, a) ^ msb(size, first)) * rf::OF, rf::OF);

            let (r, f) = cpu::shrd(size, a, b, c as u8, fin);
            chk.value(&ctx, r, shrd_model(size, a, b, c));
            let op = CcOp::sized(CcFamily::Sar, size);
            lazy(&mut chk, &ctx, f, of_undef, op, r, shrd_model(size, a, b, c - 1), 0);
            let first = shrd_model(size, a, b, 1);
            chk.host_rule(&ctx, f, (msb(size, a) ^ msb(size, first)) * rf::OF, rf::OF);
        }
    }
    chk.finish();
}

/// MUL and IMUL: CF/OF defined; SF/ZF/AF/PF undefined but matched, so compared.
#[test]
fn mul_imul() {
    let mut rng = Rng::new(0x3a1);
    let mut chk = Check::new("mul/imul");
    for size in SIZES {
        let (m, bits) = (size.mask(), size.bits());
        let op = CcOp::sized(CcFamily::Mul, size);
        for _ in 0..N {
            let (a, b, fin) = (rng.operand(), rng.operand(), rng.flags());
            let ctx = || format!("{size:?} {a:#x} {b:#x} in {}", show(fin));

            let full = u128::from(a & m) * u128::from(b & m);
            let (lo, hi, f) = cpu::mul(size, a, b, fin);
            chk.value(&ctx, lo, full as u64 & m);
            chk.value(&ctx, hi, (full >> bits) as u64 & m);
            lazy(&mut chk, &ctx, f, 0, op, lo, hi, 0);

            // IMUL: cc_src = "full product differs from the sign-extended low half".
            let full = i128::from(sx(size, a)) * i128::from(sx(size, b));
            let low = full as u64 & m;
            let overflow = u64::from(i128::from(sx(size, low)) != full);
            let (lo, hi, f) = cpu::imul1(size, a, b, fin);
            chk.value(&ctx, lo, low);
            lazy(&mut chk, &ctx, f, 0, op, lo, overflow, 0);
            // QEMU's encoding, high - (low >>s (bits-1)), works too.
            let qemu = hi.wrapping_sub((sx(size, lo) >> (bits - 1)) as u64) & m;
            lazy(&mut chk, &ctx, f, 0, op, lo, qemu, 0);
            if size != OpSize::B1 {
                let (r, f) = cpu::imul2(size, a, b, fin);
                chk.value(&ctx, r, low);
                lazy(&mut chk, &ctx, f, 0, op, r, overflow, 0);
            }
        }
    }
    chk.finish();
}

/// ROL/ROR/RCL/RCR through `rotate_result`/`rotate_flags`: every raw CL value,
/// random operands and flags; result and all six flags compared.
#[test]
fn rotates() {
    let mut rng = Rng::new(0x707);
    let mut chk = Check::new("rol/ror/rcl/rcr");
    type Hw = fn(OpSize, u64, u8, u64) -> (u64, u64);
    let kinds: [(RotateKind, Hw); 4] = [
        (RotateKind::Rol, cpu::rol),
        (RotateKind::Ror, cpu::ror),
        (RotateKind::Rcl, cpu::rcl),
        (RotateKind::Rcr, cpu::rcr),
    ];
    for size in SIZES {
        for i in 0..N {
            let (a, fin) = (rng.operand(), rng.flags());
            let count = if i < 256 { i as u8 } else { rng.next() as u8 };
            let ctx = || format!("{size:?} {a:#x} count {count} in {}", show(fin));
            for (kind, hw) in kinds {
                let (r, f) = hw(size, a, count, fin);
                let c = u64::from(count);
                chk.value(&ctx, r, rotate_result(kind, size, a, c, fin));
                chk.flags(&ctx, f, rotate_flags(kind, size, a, c, fin), 0);
            }
        }
    }
    chk.finish();
}

/// CMP and TEST followed by all 16 SETcc on the real CPU, against
/// `eval_cond` on the lazy state (Sub/Logic fast paths) and on `Eflags`.
#[test]
fn conditions_setcc() {
    let mut rng = Rng::new(0xcc);
    let mut chk = Check::new("cmp/test + setcc");
    for size in SIZES {
        let m = size.mask();
        for i in 0..N {
            // Equal operands now and then, so E/BE/LE see both outcomes.
            let a = rng.operand();
            let b = if i % 8 == 0 { a } else { rng.operand() };
            let fin = rng.flags();
            let ctx = || format!("{size:?} {a:#x} {b:#x} in {}", show(fin));
            let sub = (CcOp::sized(CcFamily::Sub, size), a.wrapping_sub(b) & m, b);
            let logic = (CcOp::sized(CcFamily::Logic, size), a & b & m, 0);
            for ((f, set), (op, dst, src)) in
                [(cpu::cmp_setcc(size, a, b, fin), sub), (cpu::test_setcc(size, a, b, fin), logic)]
            {
                chk.flags(&ctx, f, compute_flags(op, dst, src, 0), 0);
                for c in all_conds() {
                    let hw = set[c as usize] != 0;
                    let lazy = eval_cond(c, op, dst, src, 0, 0);
                    let materialised = eval_cond(c, CcOp::Eflags, dst, src, 0, f);
                    if hw != lazy || hw != materialised {
                        chk.fail(format!("{}: {op:?} {c:?} setcc {hw} lazy {lazy} eflags {materialised}", ctx()));
                    }
                }
            }
        }
    }
    chk.finish();
}

/// BMI1/BMI2, LZCNT/TZCNT, POPCNT, BSF/BSR through their `Bmi`/`Logic`
/// encodings; undefined flags matched, so compared.
#[test]
fn bmi_and_bit_scans() {
    let has = |f: bool, what: &str| {
        if !f {
            println!("host lacks {what}: skipped");
        }
        f
    };
    let bmi1 = has(std::arch::is_x86_feature_detected!("bmi1"), "BMI1");
    let bmi2 = has(std::arch::is_x86_feature_detected!("bmi2"), "BMI2");
    let lzcnt = has(std::arch::is_x86_feature_detected!("lzcnt"), "LZCNT");
    let popcnt = has(std::arch::is_x86_feature_detected!("popcnt"), "POPCNT");
    let mut rng = Rng::new(0xb31);
    let mut chk = Check::new("bmi/bsf/bsr/popcnt");
    for size in [OpSize::B2, OpSize::B4, OpSize::B8] {
        let (m, bits) = (size.mask(), size.bits());
        let bmi = CcOp::sized(CcFamily::Bmi, size);
        let logic = CcOp::sized(CcFamily::Logic, size);
        for _ in 0..N * 4 / 3 {
            let (a, b, fin) = (rng.operand(), rng.operand(), rng.flags());
            let am = a & m;
            let ctx = || format!("{size:?} {a:#x} {b:#x} in {}", show(fin));
            let tz = if am == 0 { bits } else { am.trailing_zeros() };
            let lz = if am == 0 { bits } else { am.leading_zeros() - (64 - bits) };

            // BSF/BSR: Logic with 0 for a zero source, else index | 0x100.
            for (hw, index) in [(cpu::bsf(size, a, fin), tz), (cpu::bsr(size, a, fin), (bits - 1).wrapping_sub(lz))] {
                if am != 0 {
                    chk.value(&ctx, hw.0, u64::from(index));
                }
                let dst = if am == 0 { 0 } else { u64::from(index) | 0x100 };
                lazy(&mut chk, &ctx, hw.1, 0, logic, dst, 0, 0);
            }
            if bmi1 {
                let (r, f) = cpu::tzcnt(size, a, fin);
                chk.value(&ctx, r, u64::from(tz));
                lazy(&mut chk, &ctx, f, 0, bmi, r, am, 0);
            }
            if lzcnt {
                let (r, f) = cpu::lzcnt(size, a, fin);
                chk.value(&ctx, r, u64::from(lz));
                lazy(&mut chk, &ctx, f, 0, bmi, r, am, 0);
            }
            if popcnt {
                let (r, f) = cpu::popcnt(size, a, fin);
                chk.value(&ctx, r, u64::from(am.count_ones()));
                lazy(&mut chk, &ctx, f, 0, bmi, r, 1, 0);
            }
            if size == OpSize::B2 {
                continue; // The VEX-encoded forms are 32/64-bit only.
            }
            if bmi1 {
                let (r, f) = cpu::blsi(size, a, fin);
                chk.value(&ctx, r, am & am.wrapping_neg() & m);
                lazy(&mut chk, &ctx, f, 0, bmi, r, u64::from(am == 0), 0);
                let (r, f) = cpu::blsmsk(size, a, fin);
                chk.value(&ctx, r, (am ^ am.wrapping_sub(1)) & m);
                lazy(&mut chk, &ctx, f, 0, bmi, r, am, 0);
                let (r, f) = cpu::blsr(size, a, fin);
                chk.value(&ctx, r, am & am.wrapping_sub(1) & m);
                lazy(&mut chk, &ctx, f, 0, bmi, r, am, 0);
                let (r, f) = cpu::andn(size, a, b, fin);
                chk.value(&ctx, r, !a & b & m);
                lazy(&mut chk, &ctx, f, 0, bmi, r, 1, 0);
            }
            if bmi2 {
                // Index in bits 7:0; bias it towards the interesting 0..=bits+1.
                let idx = if b & 0x100 != 0 { b % u64::from(bits + 2) } else { b };
                let n = idx & 0xff;
                let (r, f) = cpu::bzhi(size, a, idx, fin);
                chk.value(&ctx, r, if n >= u64::from(bits) { am } else { am & ((1 << n) - 1) });
                lazy(&mut chk, &ctx, f, 0, bmi, r, u64::from(n < u64::from(bits)), 0);
            }
        }
    }
    chk.finish();
}

/// BT* keep every flag but CF, DIV/IDIV keep them all: the frontend
/// materialises `(flags & !CF) | bit` for BT* and leaves the lazy state alone
/// for DIV/IDIV.
#[test]
fn bit_tests_and_div_keep_flags() {
    let mut rng = Rng::new(0xb7);
    let mut chk = Check::new("bt*/div/idiv");
    for size in [OpSize::B2, OpSize::B4, OpSize::B8] {
        let m = size.mask();
        for _ in 0..N {
            let (a, b, fin) = (rng.operand(), rng.next(), rng.flags());
            let ctx = || format!("{size:?} {a:#x} {b:#x} in {}", show(fin));
            let mask = 1 << (b & u64::from(size.bits() - 1));
            let want = (fin & !rf::CF) | u64::from(a & mask != 0);
            for (hw, result) in [
                (cpu::bt(size, a, b, fin), a),
                (cpu::bts(size, a, b, fin), a | mask),
                (cpu::btr(size, a, b, fin), a & !mask),
                (cpu::btc(size, a, b, fin), a ^ mask),
            ] {
                chk.value(&ctx, hw.0, result & m);
                chk.flags(&ctx, hw.1, want, 0);
            }
        }
    }
    for _ in 0..N {
        // Even with bit 1 set: not 0 and not -1, so the quotient always fits.
        let (a, b, fin) = (rng.operand(), (rng.operand() | 2) & !1, rng.flags());
        let ctx = || format!("div {a:#x} {b:#x} in {}", show(fin));
        chk.flags(&ctx, cpu::div64(a, b, fin), fin, 0);
        chk.flags(&ctx, cpu::idiv64(a, b, fin), fin, 0);
    }
    chk.finish();
}
