//! `rxvmm bench kvm`: what rxvmm itself costs on the KVM path, measured from
//! outside on child processes (so exec, dynamic linking and teardown count),
//! next to QEMU microvm on the same guest when QEMU is here.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use accel::kvm::KvmHost;

use super::child::{spawn_floor_kib, ChildRun, ChildSpec, Ended};
use super::host::{self, Host};
use super::qemu::{self, QemuChoice};
use super::report::{Outcome, Report, Unit};
use super::runs::{ms, series, Expect, GuestDir, Series};
use super::BenchError;
use crate::exit_code;
use crate::guests::{self, BENCH_DONE_LINE, BENCH_ITERATIONS, BENCH_START_LINE, BOOT_REPORT_PREFIX, HELLO_LINE};

const BOOT_RUNS: u32 = 20;
const EXIT_RUNS: u32 = 5;
const MEM_MIB: u32 = 64;
const BOOT_TIMEOUT: Duration = Duration::from_secs(10);
/// 100,000 exits take about a second under PVM; allow for a slow host.
const LOOP_TIMEOUT: Duration = Duration::from_secs(120);
const RSS_FLOOR_NOTE: &str = "ru_maxrss of /bin/true spawned the same way (exec folds the forked \
                              spawner's RSS into ru_maxrss, so no RSS figure here can be lower)";

#[derive(Debug, Clone)]
pub struct Options {
    /// Runs per measurement; `None` for each one's default.
    pub runs: Option<u32>,
    pub qemu: QemuChoice,
}

/// A line a boot row is timed to: row key, what the label calls it, prefix.
struct Marker {
    key: &'static str,
    name: &'static str,
    prefix: String,
}

/// boot-report's first and last lines: boot to first guest output, and to
/// the end of its work (report printed, CPL3 code run).
fn report_markers() -> Vec<Marker> {
    vec![
        Marker { key: "first_line", name: "first report line", prefix: format!("{BOOT_REPORT_PREFIX}entry=") },
        Marker {
            key: "last_line",
            name: "last report line (CPL3 result)",
            prefix: format!("{BOOT_REPORT_PREFIX}user result="),
        },
    ]
}

struct Bench {
    exe: PathBuf,
    dir: GuestDir,
    boot_runs: u32,
    exit_runs: u32,
    report: Report,
}

/// Runs the benchmark; returns the report and whether every rxvmm
/// measurement succeeded.
pub fn run(opts: &Options) -> Result<(Report, bool), BenchError> {
    let host = Host::probe();
    if let KvmHost::Unavailable(why) = &host.kvm {
        return Err(BenchError::NoKvm(why.clone()));
    }
    let qemu = qemu::find(&opts.qemu);
    let load_before = host::load_average();
    let mut b = Bench {
        exe: std::env::current_exe().map_err(BenchError::CurrentExe)?,
        dir: GuestDir::create()?,
        boot_runs: opts.runs.unwrap_or(BOOT_RUNS),
        exit_runs: opts.runs.unwrap_or(EXIT_RUNS),
        report: Report { bench: "kvm", ..Report::default() },
    };
    header(&mut b.report, &host, &b.exe, &qemu);
    b.process_floor()?;
    b.hello()?;
    b.exit_loops(host.kvm == KvmHost::Pvm)?;
    b.boot_report(&qemu)?;

    host::load_fact(&mut b.report, load_before);
    if let Some(kib) = spawn_floor_kib() {
        let why = RSS_FLOOR_NOTE;
        b.report.fact("rss_floor_kib", "RSS floor", format!("{kib} KiB, {why}"));
    }
    let ok = b.report.rxvmm_ok();
    Ok((b.report, ok))
}

impl Bench {
    /// `rxvmm --version`: what exec, dynamic linking and exit cost before
    /// any VM work, the floor under every rxvmm time.
    fn process_floor(&mut self) -> Result<(), BenchError> {
        let spec = ChildSpec {
            program: self.exe.clone(),
            args: vec!["--version".into()],
            markers: Vec::new(),
            timeout: BOOT_TIMEOUT,
            exit_grace: BOOT_TIMEOUT,
        };
        let runs = series(&spec, "--version", self.boot_runs, true, Expect::Exit(0))?;
        let label = "rxvmm `--version`: start → exit (process floor, no VM)";
        self.report.row("rxvmm.version.exit", label, Unit::Ms, runs.outcome(|r| r.exited_after.map(ms)));
        Ok(())
    }

    /// Boot to the marker line and to exit, and peak RSS, on `hello`.
    fn hello(&mut self) -> Result<(), BenchError> {
        let marker = Marker { key: "marker", name: "HELLO line", prefix: HELLO_LINE.trim_end().to_owned() };
        let spec = self.rxvmm_spec("hello", std::slice::from_ref(&marker), BOOT_TIMEOUT)?;
        let runs = series(&spec, "hello", self.boot_runs, true, Expect::Exit(exit_code::REBOOT))?;
        self.report.notes.push(self.dir.command("hello", &spec));
        boot_rows(&mut self.report, "rxvmm.hello", "rxvmm `hello`", &[marker], &runs, None);
        Ok(())
    }

    /// Port and MMIO exit round trips, and the CPU time split per exit.
    fn exit_loops(&mut self, pvm: bool) -> Result<(), BenchError> {
        let emulated = if pvm { "; PVM: each loop iteration also runs through KVM's instruction emulator" } else { "" };
        let loops = [
            ("pio-loop", "rxvmm.pio", format!("PIO exit (`out` to port {:#x})", guests::BENCH_PORT)),
            ("mmio-loop", "rxvmm.mmio", format!("MMIO exit (store to {:#x})", guests::BENCH_MMIO_ADDR)),
        ];
        for (guest, id, what) in loops {
            let markers = [BENCH_START_LINE, BENCH_DONE_LINE].map(|l| Marker {
                key: "",
                name: "",
                prefix: l.trim_end().to_owned(),
            });
            let spec = self.rxvmm_spec(guest, &markers, LOOP_TIMEOUT)?;
            let runs = series(&spec, guest, self.exit_runs, false, Expect::Exit(exit_code::REBOOT))?;
            self.report.notes.push(self.dir.command(guest, &spec));
            let per_exit = |d: Duration| d.as_nanos() as f64 / f64::from(BENCH_ITERATIONS);
            let label = format!("rxvmm {what}: round trip ({BENCH_ITERATIONS} per `{guest}` run{emulated})");
            let outcome = runs.outcome(|r| Some(per_exit(r.marks.get(1).copied()??.saturating_sub(r.marks[0]?))));
            self.report.row(format!("{id}.exit_ns"), label, Unit::NsPerExit, outcome);
            // Whole-process CPU over the loop's exits: an upper bound, as
            // set-up and teardown (about a millisecond) are included.
            let label = format!("rxvmm {what}: user-space CPU per exit (whole run, so an upper bound)");
            self.report.row(
                format!("{id}.user_ns"),
                label,
                Unit::NsPerExit,
                runs.outcome(|r| Some(per_exit(r.user_cpu))),
            );
            let label = format!("rxvmm {what}: kernel CPU per exit (whole run, so an upper bound)");
            self.report.row(
                format!("{id}.sys_ns"),
                label,
                Unit::NsPerExit,
                runs.outcome(|r| Some(per_exit(r.sys_cpu))),
            );
        }
        Ok(())
    }

    /// The same PVH guest under rxvmm and QEMU, and their ratios.
    fn boot_report(&mut self, qemu: &Result<PathBuf, String>) -> Result<(), BenchError> {
        let markers = report_markers();
        let spec = self.rxvmm_spec("boot-report", &markers, BOOT_TIMEOUT)?;
        let runs = series(&spec, "boot-report", self.boot_runs, true, Expect::Exit(exit_code::POWEROFF))?;
        self.report.notes.push(self.dir.command("boot-report", &spec));
        let who = "rxvmm `boot-report` (PVH entry)";
        boot_rows(&mut self.report, "rxvmm.boot_report", who, &markers, &runs, None);

        let runs = match qemu {
            Ok(path) => {
                let kernel = self.dir.path.join("boot-report.elf");
                let prefixes = markers.iter().map(|m| m.prefix.clone()).collect();
                let spec = qemu::spec(path, &kernel, MEM_MIB, prefixes, BOOT_TIMEOUT);
                self.report.notes.push(self.dir.command("boot-report", &spec));
                series(&spec, "boot-report", self.boot_runs, true, Expect::Markers)?
            }
            Err(why) => Series::Skipped(why.clone()),
        };
        let who = "QEMU microvm `boot-report` (PVH entry)";
        boot_rows(&mut self.report, "qemu.boot_report", who, &markers, &runs, Some(qemu::poweroff_code()));

        let skip = match &runs {
            Series::Done(_) => "no QEMU figure".to_owned(),
            Series::Failed(_) => "QEMU failed".to_owned(),
            Series::Skipped(why) => why.clone(),
        };
        let keys = markers.iter().map(|m| (m.key, m.name)).chain([("exit", "exit"), ("rss", "peak RSS")]);
        for (key, what) in keys {
            let rx = self.report.median(&format!("rxvmm.boot_report.{key}"));
            let q = self.report.median(&format!("qemu.boot_report.{key}"));
            let outcome = match (rx, q) {
                (Some(rx), Some(q)) if q > 0.0 => Outcome::Value(rx / q),
                _ => Outcome::Skipped(skip.clone()),
            };
            let label = format!("rxvmm / QEMU, `boot-report`: {what} (medians)");
            self.report.row(format!("ratio.{key}"), label, Unit::Ratio, outcome);
        }
        Ok(())
    }

    /// `rxvmm --accel kvm --kernel <guest>.elf --mem 64`, guest built here.
    fn rxvmm_spec(&self, guest: &'static str, markers: &[Marker], timeout: Duration) -> Result<ChildSpec, BenchError> {
        let kernel = self.dir.write(guest)?;
        let args = ["--accel", "kvm", "--kernel"].map(OsString::from).into_iter();
        let args = args.chain([kernel.into(), "--mem".into(), MEM_MIB.to_string().into()]).collect();
        Ok(ChildSpec {
            program: self.exe.clone(),
            args,
            markers: markers.iter().map(|m| m.prefix.clone()).collect(),
            timeout,
            // rxvmm must end by itself; only the timeout stops it.
            exit_grace: timeout,
        })
    }
}

fn header(report: &mut Report, host: &Host, exe: &Path, qemu: &Result<PathBuf, String>) {
    host::facts(report, host, exe, Some(qemu));
    report.fact(
        "method",
        "Method",
        "each run is a child process; times run from just before the spawn to the newline of a line on \
         its stdout pipe, and to its exit (pidfd); one untimed warm-up run before each boot series",
    );
}

/// Marker, exit and RSS rows of a boot series. `exit_code`: the code a run
/// must exit with for its exit time to count, when `series` didn't check.
fn boot_rows(report: &mut Report, id: &str, who: &str, markers: &[Marker], series: &Series, exit_code: Option<i32>) {
    for (i, m) in markers.iter().enumerate() {
        let outcome = series.outcome(|r| r.marks[i].map(ms));
        report.row(format!("{id}.{}", m.key), format!("{who}: start → {}", m.name), Unit::Ms, outcome);
    }
    let unclean = match series {
        Series::Done(runs) => runs.iter().find_map(|r| match (r.killed, &r.ended, exit_code) {
            (Some(why), _, _) => Some(format!("not measured: killed, {why}")),
            (None, ended, Some(code)) if *ended != Ended::Code(code) => {
                Some(format!("not measured: {ended}, expected {code}"))
            }
            _ => None,
        }),
        _ => None,
    };
    // Per run, so the spread is the wind-down's own.
    let after_last = |r: &ChildRun| {
        let last = r.marks.last().copied().flatten()?;
        Some(ms(r.exited_after?.saturating_sub(last)))
    };
    let (exit, teardown) = match unclean {
        Some(why) => (Outcome::Skipped(why.clone()), Outcome::Skipped(why)),
        None => (series.outcome(|r| r.exited_after.map(ms)), series.outcome(after_last)),
    };
    report.row(format!("{id}.exit"), format!("{who}: start → exit"), Unit::Ms, exit);
    let last = markers.last().map_or("start", |m| m.name);
    let label = format!("{who}: {last} → exit (wind-down, teardown)");
    report.row(format!("{id}.teardown"), label, Unit::Ms, teardown);
    let rss = series.outcome(|r| Some(r.max_rss_kib as f64));
    report.row(format!("{id}.rss"), format!("{who}: peak RSS (ru_maxrss)"), Unit::Kib, rss);
}
