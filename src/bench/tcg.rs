//! `rxvmm bench tcg`: guest MIPS of the TCG engine on CPU-bound loops, next
//! to the same loops under KVM in the same run, plus the frontend's
//! translation cost per block.
//!
//! The loops guest ([`super::loops`]) prints a line before and after each
//! loop; MIPS = the loop's executed instructions (counted from its
//! assembled code) / the time between the two lines' arrival on rxvmm's
//! stdout. Under PVM KVM, CPL0 code runs in KVM's instruction emulator, so
//! the KVM column runs the loops at CPL3, where PVM runs them natively.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use accel::kvm::KvmHost;

use super::child::{ChildRun, ChildSpec};
use super::host::{self, Host};
use super::loops::{self, LoopGuest, KINDS};
use super::report::{Outcome, Report, Unit};
use super::runs::{series, Expect, GuestDir, Series};
use super::translate::{self, TranslateStats};
use super::BenchError;
use crate::exit_code;
use crate::guests::LOAD_ADDR;

const RUNS: u32 = 3;
const MEM_MIB: u32 = 64;
/// Instructions per loop natively: a few hundred milliseconds at a few
/// thousand MIPS, long enough that line-arrival jitter (well under a
/// millisecond) doesn't matter.
const NATIVE_INSNS: u64 = 2_500_000_000;
/// Instructions per loop under the TCG interpreter: about a second or two.
const TCG_INSNS: u64 = 60_000_000;
/// Instructions per loop under KVM's instruction emulator (PVM CPL0).
const EMULATOR_INSNS: u64 = 2_000_000;
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Blocks of rxvmm's own code the translation sweep covers.
const SWEEP_BLOCKS: usize = 20_000;

#[derive(Debug, Clone)]
pub struct Options {
    pub runs: Option<u32>,
}

/// One column: an engine and the CPL the loops run at.
struct Config {
    /// Row-id part, e.g. `tcg_cpl0`.
    id: &'static str,
    label: String,
    accel: &'static str,
    cpl3: bool,
    insns_per_loop: u64,
    /// Why this column isn't run here.
    skip: Option<String>,
}

fn configs(kvm: &KvmHost) -> Vec<Config> {
    let kvm_skip = match kvm {
        KvmHost::Unavailable(why) => Some(format!("no KVM: {why}")),
        _ => None,
    };
    let (native, emulated) = match kvm {
        KvmHost::Pvm => ("KVM/PVM CPL3 = native speed", "KVM/PVM CPL0 = KVM's instruction emulator"),
        _ => ("KVM CPL3 (native)", "KVM CPL0 (native)"),
    };
    let cpl0_insns = if *kvm == KvmHost::Pvm { EMULATOR_INSNS } else { NATIVE_INSNS };
    vec![
        Config {
            id: "kvm_cpl3",
            label: native.into(),
            accel: "kvm",
            cpl3: true,
            insns_per_loop: NATIVE_INSNS,
            skip: kvm_skip.clone(),
        },
        Config {
            id: "kvm_cpl0",
            label: emulated.into(),
            accel: "kvm",
            cpl3: false,
            insns_per_loop: cpl0_insns,
            skip: kvm_skip,
        },
        Config {
            id: "tcg_cpl0",
            label: "TCG CPL0".into(),
            accel: "tcg",
            cpl3: false,
            insns_per_loop: TCG_INSNS,
            skip: None,
        },
        Config {
            id: "tcg_cpl3",
            label: "TCG CPL3".into(),
            accel: "tcg",
            cpl3: true,
            insns_per_loop: TCG_INSNS,
            skip: None,
        },
    ]
}

/// Runs the benchmark; returns the report and whether every rxvmm
/// measurement succeeded.
pub fn run(opts: &Options) -> Result<(Report, bool), BenchError> {
    let host = Host::probe();
    let exe = std::env::current_exe().map_err(BenchError::CurrentExe)?;
    let dir = GuestDir::create()?;
    let runs = opts.runs.unwrap_or(RUNS);
    let load_before = host::load_average();
    let mut report = Report { bench: "tcg", ..Report::default() };
    host::facts(&mut report, &host, &exe, None);
    report.fact(
        "method",
        "Method",
        "one rxvmm process per column runs the three loops in turn; MIPS = the loop's instructions (counted \
         from its assembled code) / the time between its start and done lines on rxvmm's stdout",
    );

    let configs = configs(&host.kvm);
    for c in &configs {
        let guest = loops::build(c.cpl3, c.insns_per_loop).map_err(BenchError::LoopGuest)?;
        let series = match &c.skip {
            Some(why) => Series::Skipped(why.clone()),
            None => {
                let spec = rxvmm_spec(&exe, &dir, c, &guest)?;
                report.notes.push(dir.command(c.id, &spec));
                series(&spec, &format!("loops ({})", c.label), runs, false, Expect::Exit(exit_code::POWEROFF))?
            }
        };
        mips_rows(&mut report, c, &guest, &series);
    }
    for kind in KINDS {
        for (num, den, what) in [
            ("kvm_cpl3", "tcg_cpl0", "native (KVM CPL3) / TCG CPL0: TCG slowdown"),
            ("tcg_cpl0", "kvm_cpl0", "TCG CPL0 / KVM CPL0: TCG vs the host's CPL0 path"),
        ] {
            let mips = |id: &str| report.median(&format!("rxvmm.{id}.{}.mips", kind.name()));
            let outcome = match (mips(num), mips(den)) {
                (Some(n), Some(d)) if d > 0.0 => Outcome::Value(n / d),
                _ => Outcome::Skipped("a column is missing".into()),
            };
            let label = format!("{what}, {}", kind.describe());
            report.row(format!("ratio.{num}.{den}.{}", kind.name()), label, Unit::Ratio, outcome);
        }
    }
    report.notes.push(
        "`loops-*.elf` are built by the bench itself (`src/bench/loops.rs`), in a temporary directory removed \
         afterwards; `rxvmm guest` doesn't list them."
            .into(),
    );
    translation_rows(&mut report)?;

    host::load_fact(&mut report, load_before);
    let ok = report.rxvmm_ok();
    Ok((report, ok))
}

/// `rxvmm --accel <engine> --kernel loops-<id>.elf --mem 64`, markers the
/// loops' start and done lines in order.
fn rxvmm_spec(exe: &std::path::Path, dir: &GuestDir, c: &Config, guest: &LoopGuest) -> Result<ChildSpec, BenchError> {
    let kernel: PathBuf = dir.write_image(&format!("loops-{}", c.id), &guest.elf)?;
    let args = ["--accel", c.accel, "--kernel"].map(OsString::from).into_iter();
    let args = args.chain([kernel.into(), "--mem".into(), MEM_MIB.to_string().into()]).collect();
    let markers = guest.counts.iter().flat_map(|l| [l.kind.start_line(), l.kind.done_line()]).collect();
    Ok(ChildSpec { program: exe.to_owned(), args, markers, timeout: RUN_TIMEOUT, exit_grace: RUN_TIMEOUT })
}

/// One MIPS row per loop of column `c`.
fn mips_rows(report: &mut Report, c: &Config, guest: &LoopGuest, series: &Series) {
    for (i, count) in guest.counts.iter().enumerate() {
        let total = count.total;
        let mips = move |r: &ChildRun| {
            let (start, done) = (r.marks.get(2 * i).copied()??, r.marks.get(2 * i + 1).copied()??);
            let secs = done.checked_sub(start)?.as_secs_f64();
            (secs > 0.0).then(|| total as f64 / secs / 1e6)
        };
        let label = format!(
            "{}: {} ({} instructions/iteration, {:.0} M per run)",
            c.label,
            count.kind.describe(),
            count.per_iteration,
            total as f64 / 1e6
        );
        report.row(format!("rxvmm.{}.{}.mips", c.id, count.kind.name()), label, Unit::Mips, series.outcome(mips));
    }
}

/// The frontend's cost per block: on the loops guest's own code, and on a
/// larger sweep of compiled code (this binary's).
fn translation_rows(report: &mut Report) -> Result<(), BenchError> {
    eprintln!("rxvmm bench: translating blocks in process");
    let guest = loops::build(false, 1).map_err(BenchError::LoopGuest)?;
    let own = translate::sweep(&guest.code, LOAD_ADDR, usize::MAX);
    stats_rows(report, "loops", "loop guest's code (every block)", &own);
    match translate::own_code() {
        Some((vaddr, code)) => {
            let s = translate::sweep(&code, vaddr, SWEEP_BLOCKS);
            let what = format!("rxvmm's own x86-64 code (first {} blocks of its text)", s.blocks);
            stats_rows(report, "sweep", &what, &s);
        }
        None => {
            let why = Outcome::Skipped("cannot read /proc/self/exe's code".into());
            report.row("tcg.translate.sweep.block_us", "TCG translation, compiled code", Unit::Us, why);
        }
    }
    report.notes.push(
        "Translation rows time `accel::tcg::translate::translate_block` in this process (decode + lowering \
         to IR; not the TB-cache insert), fastest of 5 translations per block, blocks taken one after \
         another from the start of the code. The engine has no counters yet (blocks translated, \
         translation time, instructions executed), so a guest run's own translation share is not \
         reported."
            .into(),
    );
    Ok(())
}

fn stats_rows(report: &mut Report, key: &str, what: &str, s: &TranslateStats) {
    let id = format!("tcg.translate.{key}");
    let us = Outcome::from_samples(s.block_ns.iter().map(|ns| ns / 1e3).collect());
    report.row(format!("{id}.block_us"), format!("TCG translation, {what}: time per block"), Unit::Us, us);
    let rows = [
        ("insn_us", "time per guest instruction (sum / instructions)", Unit::Us, s.ns_per_insn() / 1e3),
        ("insns_per_block", "guest instructions per block", Unit::Count, s.insns_per_block()),
        ("ops_per_insn", "IR ops per guest instruction", Unit::Count, s.ops_per_insn()),
    ];
    for (key, label, unit, value) in rows {
        report.row(format!("{id}.{key}"), format!("TCG translation, {what}: {label}"), unit, Outcome::Value(value));
    }
}
