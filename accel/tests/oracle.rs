//! The differential tester's oracles against each other and against
//! hand-written cases with known results. The KVM parts print `SKIP:` and
//! pass when /dev/kvm can't be opened.
//!
//! TCG is checked against both oracles too, every divergence localised to
//! its first diverging instruction.
//!
//! `RXVMM_DIFF_ITERS=N` raises the number of generated cases (default 2000
//! for the oracles, 3000 for TCG against the CPU, 500 against KVM: N/4);
//! `RXVMM_DIFF_SEED=S` moves TCG's seed range (a campaign in slices).

use std::time::Instant;

use accel::oracle::{
    self, compare, generate, localise, open_kvm, run_native, run_native_batch, vector, Fault, OracleError, Outcome,
    TestCase, VmRunner, CODE, DATA, GUARD_HIGH, PAGE, STACK_START,
};
use accel::tcg::{JitPolicy, Tcg};
use iced_x86::code_asm::*;
use iced_x86::{BlockEncoder, BlockEncoderOptions, Code, InstructionBlock, Mnemonic, Register};

/// Seeds of the agreement run start here.
const SEED_BASE: u64 = 0x0dd5_0000;

/// A VM runner on KVM, or why the KVM part is skipped.
fn kvm_or_skip() -> Option<VmRunner> {
    match open_kvm().and_then(|kvm| VmRunner::new(&kvm)) {
        Ok(r) => Some(r),
        Err(OracleError::Unavailable(why)) => {
            println!("SKIP (KVM oracle): {why}");
            None
        }
        Err(e) => panic!("/dev/kvm opens but the scaffold guest fails: {e:?}"),
    }
}

fn run_kvm_batch(r: &mut VmRunner, cases: &[TestCase]) -> Result<Vec<Outcome>, OracleError> {
    cases.iter().map(|c| r.run(c)).collect()
}

/// Mnemonics KVM's instruction emulator doesn't know: under PVM, a #GP the
/// guest user takes on them reaches that emulator, which injects #UD.
const PVM_UNEMULATED: &[Mnemonic] = &[Mnemonic::Popcnt, Mnemonic::Movbe, Mnemonic::Adcx, Mnemonic::Adox];

/// Divergences between the CPU (or an engine that matches it) and
/// KVM-on-PVM that are PVM's, not the oracles': `truth` is the
/// architectural result.
fn known_pvm_quirk(case: &TestCase, truth: &Outcome, kvm: &Outcome) -> Option<&'static str> {
    let (Some(n), Some(k)) = (truth.fault, kvm.fault) else {
        return None;
    };
    let with_true_fault = Outcome { fault: truth.fault, ..kvm.clone() };
    let same_otherwise = compare(case, truth, &with_true_fault).is_ok() && n.rip_offset == k.rip_offset;
    let instr = case.instructions().into_iter().find(|i| i.ip() == CODE + n.rip_offset)?;
    if !same_otherwise {
        return None;
    }
    if n.vector == vector::GP && k.vector == vector::UD && PVM_UNEMULATED.contains(&instr.mnemonic()) {
        return Some("POPCNT/MOVBE/ADCX/ADOX with a non-canonical address: #UD under PVM, #GP(0) on the CPU");
    }
    if (n.vector, k.vector) == (vector::GP, vector::SS) && instr.mnemonic() == Mnemonic::Cmpxchg16b {
        return Some("CMPXCHG16B misaligned and non-canonical via RBP: #SS under PVM, alignment #GP(0) on the CPU");
    }
    // The CPU picks #SS over #GP for a non-canonical address by the base
    // register (RSP/RBP), KVM's emulator by the segment (an SS or DS
    // prefix decides).
    let stack_base = matches!(instr.memory_base().full_register(), Register::RSP | Register::RBP);
    let swapped = matches!((n.vector, k.vector), (vector::GP, vector::SS) | (vector::SS, vector::GP));
    (swapped && instr.segment_prefix() != Register::None && (stack_base == (n.vector == vector::SS)))
        .then_some("segment prefix on a non-canonical address: #SS/#GP by segment under PVM, by base on the CPU")
}

fn iterations() -> u64 {
    std::env::var("RXVMM_DIFF_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

#[test]
fn native_and_kvm_cpl3_oracles_agree() {
    let total = iterations();
    let mut kvm = kvm_or_skip();
    let (mut native_time, mut kvm_time) = (0.0, 0.0);
    let mut faults = std::collections::BTreeMap::<String, u64>::new();
    let mut quirks = std::collections::BTreeMap::<&str, u64>::new();
    let mut failures = Vec::new();
    let seeds: Vec<u64> = (SEED_BASE..SEED_BASE + total).collect();
    for chunk in seeds.chunks(2048) {
        let cases: Vec<TestCase> = chunk.iter().map(|&s| generate(s)).collect();
        let t = Instant::now();
        let native = run_native_batch(&cases).expect("native oracle");
        native_time += t.elapsed().as_secs_f64();
        for o in &native {
            let key = o.fault.map_or("end".into(), |f| format!("vector {}", f.vector));
            *faults.entry(key).or_default() += 1;
        }
        let Some(runner) = kvm.as_mut() else { continue };
        let t = Instant::now();
        let vm = run_kvm_batch(runner, &cases).expect("KVM oracle");
        kvm_time += t.elapsed().as_secs_f64();
        for ((case, n), k) in cases.iter().zip(&native).zip(&vm) {
            let Err(mut d) = compare(case, n, k) else { continue };
            if let Some(q) = known_pvm_quirk(case, n, k) {
                *quirks.entry(q).or_default() += 1;
                continue;
            }
            d.culprit =
                localise(case, &mut run_native_batch, &mut |c: &[TestCase]| run_kvm_batch(runner, c)).unwrap_or(None);
            failures.push(d);
        }
    }
    println!("{total} cases; outcomes (native): {faults:?}");
    println!("native oracle: {:.0} cases/s", total as f64 / native_time.max(1e-9));
    if kvm.is_some() {
        println!("KVM-CPL3 oracle: {:.0} cases/s", total as f64 / kvm_time.max(1e-9));
        println!("known PVM quirks (native is right): {quirks:?}");
        assert_eq!(kvm.as_ref().map(VmRunner::stray_accesses), Some(0));
    }
    for d in failures.iter().take(5) {
        println!("{d}");
    }
    assert!(failures.is_empty(), "{} unexplained divergences", failures.len());
}

/// Assembles a hand-written case: `body`, then the `ud2` terminator.
fn case(body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> TestCase {
    let mut a = CodeAssembler::new(64).unwrap();
    body(&mut a).unwrap();
    a.ud2().unwrap();
    TestCase::with_code(a.assemble(CODE).unwrap())
}

/// Runs `case` on both oracles (KVM when available); they must agree.
fn run_both(case: &TestCase) -> Outcome {
    let native = run_native(case).expect("native oracle");
    if let Some(mut kvm) = kvm_or_skip() {
        let vm = kvm.run(case).expect("KVM oracle");
        if let Err(d) = compare(case, &native, &vm) {
            panic!("oracles disagree on a hand-written case:\n{d}");
        }
    }
    native
}

/// Offset of the `n`th instruction of `case`.
fn offset_of(case: &TestCase, n: usize) -> u64 {
    case.instructions()[n].ip() - CODE
}

#[test]
fn add_gives_twelve_and_flags() {
    let c = case(|a| {
        a.mov(rax, 5u64)?;
        a.add(rax, 7)
    });
    let o = run_both(&c);
    assert_eq!(o.fault, None);
    assert_eq!(o.regs.gprs[0], 12);
    // 12 = 0b1100: PF (even parity), no CF/AF/ZF/SF/OF; DF clear.
    assert_eq!(o.regs.rflags & oracle::USER_FLAGS, 0x4);
    assert_eq!(o.regs.gprs[4], STACK_START);
}

#[test]
fn divide_by_zero_is_de_at_the_div() {
    let c = case(|a| {
        a.xor(edx, edx)?;
        a.mov(eax, 1)?;
        a.xor(ecx, ecx)?;
        a.div(ecx)?;
        a.mov(eax, 2)
    });
    let o = run_both(&c);
    let rip_offset = offset_of(&c, 3);
    assert_eq!(o.fault, Some(Fault { vector: vector::DE, error_code: None, addr: None, rip_offset }));
    assert_eq!(o.regs.gprs[0], 1, "RAX as before the faulting DIV");
}

#[test]
fn page_faults_report_exact_cr2_and_error_code() {
    let pf = |addr, error_code, rip_offset| Fault {
        vector: vector::PF,
        error_code: Some(error_code),
        addr: Some(addr),
        rip_offset,
    };
    // A user read of a not-present page: U.
    let c = case(|a| a.mov(rax, qword_ptr(GUARD_HIGH + 0x10)));
    assert_eq!(run_both(&c).fault, Some(pf(GUARD_HIGH + 0x10, 4, 0)));
    // A user write to the read-only code page: P | W | U.
    let c = case(|a| {
        a.nop()?;
        a.mov(dword_ptr(CODE + 0x100), eax)
    });
    assert_eq!(run_both(&c).fault, Some(pf(CODE + 0x100, 7, 1)));
    // A read split across the end of the data page faults on the guard page.
    let c = case(|a| a.mov(eax, dword_ptr(DATA + PAGE as u64 - 2)));
    assert_eq!(run_both(&c).fault, Some(pf(GUARD_HIGH, 4, 0)));
}

#[test]
fn non_canonical_addresses_raise_gp_and_ss() {
    let c = case(|a| {
        a.mov(rbx, 0x8000_0000_0000_0000u64)?;
        a.mov(al, byte_ptr(rbx))
    });
    let f = run_both(&c).fault.unwrap();
    assert_eq!((f.vector, f.error_code, f.addr), (vector::GP, Some(0), None));
    // Through RBP, the stack segment: #SS(0).
    let c = case(|a| {
        a.mov(rbp, 0x4000_0000_0000_0000u64)?;
        a.mov(al, byte_ptr(rbp + 8))
    });
    let f = run_both(&c).fault.unwrap();
    assert_eq!((f.vector, f.error_code), (vector::SS, Some(0)));
}

#[test]
fn string_ops_and_the_stack_change_memory() {
    let c = case(|a| {
        a.mov(rdi, DATA + 0x100)?;
        a.mov(ecx, 5)?;
        a.mov(al, 0xab)?;
        a.rep().stosb()?;
        a.push(0x1234)?;
        a.pop(rdx)?;
        a.push(rdi)
    });
    let o = run_both(&c);
    assert_eq!(o.fault, None);
    assert_eq!(&o.data[0x100..0x106], &[0xab, 0xab, 0xab, 0xab, 0xab, 0]);
    assert_eq!((o.regs.gprs[1], o.regs.gprs[7]), (0, DATA + 0x105));
    assert_eq!(o.regs.gprs[2], 0x1234);
    let top = (STACK_START - 8 - oracle::STACK) as usize;
    assert_eq!(o.stack[top..top + 8], (DATA + 0x105).to_le_bytes());
}

#[test]
fn runaway_cases_time_out_and_the_oracles_recover() {
    let spin = case(|a| {
        let mut here = a.create_label();
        a.set_label(&mut here)?;
        a.jmp(here)
    });
    let ok = case(|a| a.mov(eax, 1));
    assert!(matches!(run_native(&spin), Err(OracleError::Timeout { .. })));
    assert_eq!(run_native(&ok).unwrap().regs.gprs[0], 1);
    if let Some(mut kvm) = kvm_or_skip() {
        assert!(matches!(kvm.run(&spin), Err(OracleError::Timeout { .. })));
        assert_eq!(kvm.run(&ok).unwrap().regs.gprs[0], 1);
    }
}

/// Re-encodes `c` with instruction `n`'s code replaced by `code`.
fn patched(c: &TestCase, n: usize, code: Code) -> TestCase {
    let mut instrs = c.instructions();
    if let Some(i) = instrs.get_mut(n) {
        i.set_code(code);
    }
    let block = InstructionBlock::new(&instrs, CODE);
    let code = BlockEncoder::encode(64, block, BlockEncoderOptions::NONE).unwrap().code_buffer;
    TestCase { code, ..c.clone() }
}

#[test]
fn localise_finds_the_instruction_a_buggy_engine_gets_wrong() {
    let c = case(|a| {
        a.mov(rax, 1u64)?;
        a.mov(rcx, 2u64)?;
        a.add(rax, rcx)?;
        a.mov(rdx, 3u64)?;
        a.imul_2(rdx, rax)
    });
    assert_eq!(c.instructions()[2].code(), Code::Add_rm64_r64);
    // A "buggy engine": native execution with ADD turned into SUB.
    let mut buggy = |cases: &[TestCase]| {
        let bad: Vec<TestCase> =
            cases.iter().map(|p| if p.len() > 2 { patched(p, 2, Code::Sub_rm64_r64) } else { p.clone() }).collect();
        run_native_batch(&bad)
    };
    let expected = run_native(&c).unwrap();
    let actual = buggy(std::slice::from_ref(&c)).unwrap().remove(0);
    let mut d = compare(&c, &expected, &actual).unwrap_err();
    d.culprit = localise(&c, &mut run_native_batch, &mut buggy).unwrap();
    assert_eq!(d.culprit, Some(2));
    let text = d.to_string();
    println!("{text}");
    assert!(text.contains(">>") && text.contains("add rax,rcx"), "{text}");
    assert!(text.contains("rax: expected"), "{text}");
}

/// One case per divergence class the first TCG report showed (and the
/// ones the widened generator found), against the CPU: a regression test
/// that doesn't depend on the generator drawing them.
#[test]
fn tcg_matches_the_cpu_on_fixed_divergence_classes() {
    let cases = [
        // CMPXCHG and XADD without LOCK, register destinations (32-bit:
        // only the register written loses its upper half).
        case(|a| {
            a.mov(rax, 0x1234_5678_0000_0005u64)?;
            a.mov(rcx, 0xffff_ffff_0000_0005u64)?;
            a.mov(rdx, 9u64)?;
            a.cmpxchg(ecx, edx)?;
            a.cmpxchg(ecx, edx)?;
            a.xadd(rdx, rcx)?;
            a.xadd(ebx, ebx)
        }),
        // POPCNT clears every flag but ZF; BT* change CF only.
        case(|a| {
            a.stc()?;
            a.popcnt(rax, rcx)?;
            a.mov(rdx, -1i64)?;
            a.add(rdx, 1)?;
            a.bt(rdx, 3)?;
            a.bts(ecx, 31)
        }),
        // An RMW of a not-present page reports W (error code 6).
        case(|a| a.add(dword_ptr(GUARD_HIGH + 0x40), 1)),
        case(|a| a.shl(qword_ptr(GUARD_HIGH + 0x80), 0x40)),
        // Non-canonical through RBP/RSP: #SS(0); through RBX with an SS
        // prefix: #GP(0).
        case(|a| {
            a.mov(rbp, 0x4000_0000_0000_0000u64)?;
            a.xchg(qword_ptr(rbp + 8), rax)
        }),
        case(|a| {
            a.mov(rbx, 0x4000_0000_0000_0000u64)?;
            a.inc(qword_ptr(rbx).ss())
        }),
        // 32-bit BSF/BSR of zero keep the whole destination.
        case(|a| {
            a.mov(rax, 0x1234_5678_9abc_def0u64)?;
            a.xor(ecx, ecx)?;
            a.bsf(eax, ecx)?;
            a.bsr(eax, ecx)
        }),
        // Nested ENTER, 16-bit LEAVE, POP to [rsp], XLAT, ROL by an
        // immediate on a register (OF kept) and on memory.
        case(|a| {
            a.mov(rbp, STACK_START - 0x100)?;
            a.enter(0x10u32, 3u32)?;
            a.leave()?;
            a.push(0x55)?;
            a.pop(qword_ptr(rsp - 8))?;
            a.mov(rbx, DATA)?;
            a.mov(eax, 0x80u32)?;
            a.xlatb()?;
            a.mov(rdx, 0xc000_0000_0000_0001u64)?;
            a.rol(rdx, 5)?;
            a.rol(qword_ptr(rbx + 8), 5)
        }),
    ];
    let native = run_native_batch(&cases).expect("native oracle");
    for engine in [INTERPRETER, JIT] {
        let mut tcg = VmRunner::new(&engine).expect("scaffold guest under TCG");
        for (c, n) in cases.iter().zip(&native) {
            let t = tcg.run(c).expect("TCG");
            if let Err(d) = compare(c, n, &t) {
                panic!("TCG ({:?}) differs from the CPU:\n{d}", engine.jit);
            }
        }
    }
}

/// TCG interpreting every block.
const INTERPRETER: Tcg = Tcg { jit: JitPolicy::Off };
/// TCG compiling every block before its first run.
const JIT: Tcg = Tcg { jit: JitPolicy::Always };

/// Seeds of the TCG runs start here (apart from the oracles' own run).
const TCG_SEED_BASE: u64 = 0x7c90_0000;

/// A divergence of TCG from a reference, or a TCG engine error.
enum Failure {
    Diverged(oracle::Divergence),
    Engine(String),
}

/// Tells whether a divergence `(case, tcg, reference)` is a known fault of
/// the reference, and which.
type Excuse = dyn Fn(&TestCase, &Outcome, &Outcome) -> Option<&'static str>;

/// TCG against `reference` on `count` cases from `first_seed`: every
/// divergence localised to its first diverging instruction. Prints the
/// counts by culprit and returns the failures.
fn tcg_against(
    engine: &Tcg,
    name: &str,
    reference: &mut oracle::Runner<'_>,
    excuse: &Excuse,
    first_seed: u64,
    count: u64,
) -> Vec<Failure> {
    let new_runner = || VmRunner::new(engine).expect("scaffold guest under TCG");
    let mut tcg = new_runner();
    let mut failures = Vec::new();
    let mut excused = std::collections::BTreeMap::<&str, u64>::new();
    let mut by_culprit = std::collections::BTreeMap::<String, u64>::new();
    let (mut tcg_time, started) = (0.0, Instant::now());
    let seeds: Vec<u64> = (first_seed..first_seed + count).collect();
    for chunk in seeds.chunks(2048) {
        let cases: Vec<TestCase> = chunk.iter().map(|&s| generate(s)).collect();
        let expected = reference(&cases).expect("reference oracle");
        for (case, e) in cases.iter().zip(&expected) {
            let t = Instant::now();
            let result = tcg.run(case);
            tcg_time += t.elapsed().as_secs_f64();
            let actual = match result {
                Ok(o) => o,
                Err(err) => {
                    *by_culprit.entry("engine error".into()).or_default() += 1;
                    failures.push(Failure::Engine(format!("seed {:#x}: {err}", case.seed)));
                    tcg = new_runner();
                    continue;
                }
            };
            let Err(mut d) = compare(case, e, &actual) else { continue };
            if let Some(why) = excuse(case, &actual, e) {
                *excused.entry(why).or_default() += 1;
                continue;
            }
            let mut run_tcg = |c: &[TestCase]| c.iter().map(|c| tcg.run(c)).collect();
            d.culprit = localise(case, reference, &mut run_tcg).unwrap_or(None);
            let key = d
                .culprit
                .and_then(|k| case.instructions().get(k).map(|i| format!("{:?}", i.mnemonic())))
                .unwrap_or_else(|| "not localised".into());
            *by_culprit.entry(key).or_default() += 1;
            failures.push(Failure::Diverged(d));
        }
    }
    println!(
        "TCG vs {name}: {count} cases from seed {first_seed:#x} in {:.1} s (TCG {:.0} cases/s); {} diverge",
        started.elapsed().as_secs_f64(),
        count as f64 / tcg_time.max(1e-9),
        failures.len()
    );
    if !excused.is_empty() {
        println!("known {name} quirks (TCG is right): {excused:?}");
    }
    let mut ranked: Vec<_> = by_culprit.into_iter().collect();
    ranked.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (culprit, n) in &ranked {
        println!("{n:6}  {culprit}");
    }
    failures
}

/// Fails with the first few divergence reports (seed, disassembly, first
/// diverging instruction).
fn assert_none(failures: &[Failure]) {
    let reports: Vec<String> = failures
        .iter()
        .take(3)
        .map(|f| match f {
            Failure::Diverged(d) => d.to_string(),
            Failure::Engine(e) => format!("engine error: {e}"),
        })
        .collect();
    assert!(failures.is_empty(), "{} TCG divergences; the first:\n{}", failures.len(), reports.join("\n"));
}

/// The first TCG seed: [`TCG_SEED_BASE`], or `RXVMM_DIFF_SEED` (decimal or
/// 0x-hex) to run a campaign in seed ranges.
fn tcg_first_seed() -> u64 {
    let parse = |v: String| match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    };
    std::env::var("RXVMM_DIFF_SEED").ok().and_then(parse).unwrap_or(TCG_SEED_BASE)
}

/// TCG against the CPU: 3,000 generated sequences (`RXVMM_DIFF_ITERS`
/// raises the count), through the same scaffold as the KVM oracle.
#[test]
fn tcg_matches_the_native_oracle() {
    let count = std::env::var("RXVMM_DIFF_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let failures = tcg_against(&INTERPRETER, "native", &mut run_native_batch, &|_, _, _| None, tcg_first_seed(), count);
    assert_none(&failures);
}

/// The same with every block compiled by the JIT, on other seeds.
#[test]
fn tcg_jit_matches_the_native_oracle() {
    let count = std::env::var("RXVMM_DIFF_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let first = tcg_first_seed() + (2 << 20);
    let failures = tcg_against(&JIT, "native", &mut run_native_batch, &|_, _, _| None, first, count);
    assert_none(&failures);
}

/// TCG against the KVM-CPL3 oracle (exception delivery through a guest
/// IDT on both sides) on a smaller set; skipped without /dev/kvm.
#[test]
fn tcg_matches_the_kvm_cpl3_oracle() {
    let Some(mut kvm) = kvm_or_skip() else { return };
    let count = std::env::var("RXVMM_DIFF_ITERS").ok().and_then(|v| v.parse::<u64>().ok()).map_or(500, |n| n / 4);
    let mut run = |c: &[TestCase]| run_kvm_batch(&mut kvm, c);
    let failures = tcg_against(&JIT, "KVM-CPL3", &mut run, &known_pvm_quirk, tcg_first_seed() + (1 << 20), count);
    assert_none(&failures);
}
