//! `rxvmm bench boot`: the default Linux guest booted to its userspace
//! marker and powered off, under rxvmm and under QEMU with the same engine
//! kind (TCG by default), same kernel, initrd, command line and RAM; then
//! the guest's `workload` run script, timed from the marker to the exit.
//!
//! A failing rxvmm boot is a row ("failed: …" with the last line the guest
//! printed); the QEMU rows are measured regardless.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::child::{ChildRun, ChildSpec};
use super::host::{self, Host};
use super::qemu::{self, QemuChoice};
use super::report::{Outcome, Report, Unit};
use super::runs::{check_markers, series_checked, Expect, Series};
use super::BenchError;
use crate::cli::DEFAULT_CMDLINE;
use crate::exit_code;

const RUNS: u32 = 3;
const MEM_MIB: u32 = 256;
/// The line init prints once userspace runs (`resources/guest/init`).
pub const USERSPACE_LINE: &str = "rxvmm: userspace up";
/// What init prints for a `rxvmm.run=` script the initrd doesn't have.
const UNKNOWN_SCRIPT_LINE: &str = "rxvmm: unknown run script";
/// The workload script's last line (`resources/guest/run/workload`).
const WORKLOAD_DONE_LINE: &str = "rxvmm-work: done";
/// The run script of the boot series: prints three lines, then init powers off.
const BOOT_SCRIPT: &str = "info";
const WORKLOAD_SCRIPT: &str = "workload";
const TCG_TIMEOUT: Duration = Duration::from_secs(600);
const KVM_TIMEOUT: Duration = Duration::from_secs(60);

/// The engine both VMMs boot with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Tcg,
    Kvm,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Tcg => "tcg",
            Engine::Kvm => "kvm",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub runs: Option<u32>,
    pub engine: Engine,
    pub qemu: QemuChoice,
    pub timeout: Option<Duration>,
}

/// One figure of a run, if it has it.
type Sample = fn(&ChildRun) -> Option<f64>;

/// A Linux boot both VMMs are given.
pub struct LinuxBoot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub mem_mib: u32,
    /// A raw image as the guest's virtio-blk disk (`/dev/vda`).
    pub disk: Option<PathBuf>,
}

/// Series of default-guest boots under rxvmm and QEMU, and the report they
/// fill: shared by `bench boot` and `bench blk`.
pub struct Bench {
    exe: PathBuf,
    engine: Engine,
    qemu: Result<PathBuf, String>,
    guest_dir: PathBuf,
    runs: u32,
    timeout: Duration,
    pub report: Report,
    load_before: Option<String>,
    /// Lines each boot is timed to: [`markers`], then the benchmark's own.
    pub markers: Vec<String>,
    /// Markers a boot must print to count (indexes into `markers`).
    pub required: Vec<usize>,
    /// A marker whose line means the run script failed; the line says why.
    pub failure: Option<usize>,
    /// The disk every boot gets.
    pub disk: Option<PathBuf>,
    /// The initramfs instead of the default guest's.
    pub initrd: Option<PathBuf>,
}

/// Runs the benchmark; returns the report and whether every rxvmm
/// measurement succeeded.
pub fn run(opts: &Options) -> Result<(Report, bool), BenchError> {
    let mut b = Bench::new(opts, "boot")?;
    b.report.fact(
        "method",
        "Method",
        format!(
            "each boot is a child process timed from just before the spawn to the newline of `{USERSPACE_LINE}` \
             on its stdout, and to its exit (the guest powers off after its run script); no warm-up runs; \
             rxvmm's series, then QEMU's; a run that fails ends its series"
        ),
    );
    b.boot()?;
    b.workload()?;
    Ok(b.finish())
}

impl Bench {
    /// Checks the default guest is there and starts the report `name` with
    /// the host, guest and engine facts.
    pub fn new(opts: &Options, name: &'static str) -> Result<Bench, BenchError> {
        let host = Host::probe();
        let guest_dir = crate::cli::default_guest_dir();
        for file in ["bzImage", "initrd.img"] {
            if !guest_dir.join(file).is_file() {
                return Err(BenchError::NoGuest(guest_dir.join(file)));
            }
        }
        let mut b = Bench {
            exe: std::env::current_exe().map_err(BenchError::CurrentExe)?,
            engine: opts.engine,
            qemu: qemu::find(&opts.qemu),
            guest_dir,
            runs: opts.runs.unwrap_or(RUNS),
            timeout: opts.timeout.unwrap_or(match opts.engine {
                Engine::Tcg => TCG_TIMEOUT,
                Engine::Kvm => KVM_TIMEOUT,
            }),
            report: Report { bench: name, ..Report::default() },
            load_before: host::load_average(),
            markers: markers(),
            required: vec![0],
            failure: None,
            disk: None,
            initrd: None,
        };
        host::facts(&mut b.report, &host, &b.exe, Some(&b.qemu));
        let kernel = std::fs::read_to_string(b.guest_dir.join("kernel.release")).unwrap_or_default();
        let guest = format!("{} (Linux {}), {MEM_MIB} MiB, 1 vCPU", b.guest_dir.display(), kernel.trim());
        b.report.fact("guest", "Guest", guest);
        b.report.fact("engine", "Engine", b.engine.name());
        Ok(b)
    }

    /// The report, with the host load fact, and whether every rxvmm
    /// measurement succeeded.
    pub fn finish(mut self) -> (Report, bool) {
        host::load_fact(&mut self.report, self.load_before.take());
        let ok = self.report.rxvmm_ok();
        (self.report, ok)
    }

    fn linux(&self, script: &str) -> LinuxBoot {
        LinuxBoot {
            kernel: self.guest_dir.join("bzImage"),
            initrd: self.initrd.clone().unwrap_or_else(|| self.guest_dir.join("initrd.img")),
            cmdline: format!("{DEFAULT_CMDLINE} rxvmm.run={script}"),
            mem_mib: MEM_MIB,
            disk: self.disk.clone(),
        }
    }

    /// `rxvmm --accel <engine> --kernel … --initrd … --cmdline … --mem 256`.
    fn rxvmm_spec(&self, boot: &LinuxBoot) -> ChildSpec {
        let mut args: Vec<OsString> = ["--accel", self.engine.name(), "--kernel"].map(OsString::from).into();
        args.extend([boot.kernel.clone().into(), "--initrd".into(), boot.initrd.clone().into()]);
        args.extend(["--cmdline".into(), boot.cmdline.clone().into()]);
        args.extend(["--mem".into(), boot.mem_mib.to_string().into()]);
        if let Some(disk) = &boot.disk {
            let mut value = OsString::from("path=");
            value.push(disk);
            args.extend(["--disk".into(), value]);
        }
        ChildSpec {
            program: self.exe.clone(),
            args,
            markers: self.markers.clone(),
            timeout: self.timeout,
            exit_grace: self.timeout,
        }
    }

    /// Both VMMs' series of `script` boots: rxvmm's (unless `rxvmm_skip`
    /// says why not), then QEMU's.
    pub fn both(&mut self, script: &str, rxvmm_skip: Option<String>) -> Result<[Series; 2], BenchError> {
        let boot = self.linux(script);
        let what = format!("{} boot, rxvmm.run={script}", self.engine.name());
        let rxvmm = match rxvmm_skip {
            Some(why) => Series::Skipped(why),
            None => {
                let spec = self.rxvmm_spec(&boot);
                self.report.notes.push(format!("rxvmm: `{}`", quoted(&spec)));
                series_checked(&spec, &what, self.runs, false, |r| self.check(r, &spec))?
            }
        };
        let theirs = match &self.qemu {
            Ok(path) => {
                let spec = qemu::linux_spec(path, self.engine.name(), &boot, self.markers.clone(), self.timeout);
                self.report.notes.push(format!("QEMU: `{}`", quoted(&spec)));
                series_checked(&spec, &what, self.runs, false, |r| self.check(r, &spec))?
            }
            Err(why) => Series::Skipped(why.clone()),
        };
        Ok([rxvmm, theirs])
    }

    pub fn who(&self) -> [String; 2] {
        let e = self.engine.name().to_uppercase();
        [format!("rxvmm {e}"), format!("QEMU {e} (-M {})", qemu::LINUX_MACHINE)]
    }

    /// Time to the marker and to the exit, peak RSS, CPU time, and ratios.
    fn boot(&mut self) -> Result<(), BenchError> {
        let series = self.both(BOOT_SCRIPT, None)?;
        let rows: [(&str, &str, Unit, Sample); 4] = [
            ("marker", "start → `rxvmm: userspace up`", Unit::S, |r| Some(r.marks[0]?.as_secs_f64())),
            ("exit", "start → exit (run=info, then power off)", Unit::S, |r| Some(r.exited_after?.as_secs_f64())),
            ("cpu", "CPU time, user + system", Unit::S, |r| Some((r.user_cpu + r.sys_cpu).as_secs_f64())),
            ("rss", "peak RSS (ru_maxrss)", Unit::Kib, |r| Some(r.max_rss_kib as f64)),
        ];
        let who = self.who();
        for (i, (key, what, unit, sample)) in rows.into_iter().enumerate() {
            for (side, (s, who)) in ["rxvmm", "qemu"].iter().zip(series.iter().zip(&who)) {
                let label = format!("{who}: {what}");
                let outcome = match s.outcome(sample) {
                    // The reason once, in the first row.
                    Outcome::Failed(_) if i > 0 => Outcome::Failed(format!("see {side}.boot.marker")),
                    outcome => outcome,
                };
                self.report.row(format!("{side}.boot.{key}"), label, unit, outcome);
            }
            self.ratio(&format!("boot.{key}"), &format!("boot {what}"));
        }
        Ok(())
    }

    /// The `workload` run script, marker → exit, if the guest sources have it.
    fn workload(&mut self) -> Result<(), BenchError> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/guest/run").join(WORKLOAD_SCRIPT);
        let series = if script.is_file() {
            let booted = self.report.median("rxvmm.boot.marker").is_some();
            self.both(WORKLOAD_SCRIPT, (!booted).then(|| "rxvmm did not boot (see above)".to_owned()))?
        } else {
            let why = format!("no {} yet", script.display());
            [Series::Skipped(why.clone()), Series::Skipped(why)]
        };
        let to_done = |r: &ChildRun| Some(r.marks[2]?.checked_sub(r.marks[0]?)?.as_secs_f64());
        let to_exit = |r: &ChildRun| Some(r.exited_after?.checked_sub(r.marks[0]?)?.as_secs_f64());
        let rows: [(&str, &str, Sample); 2] =
            [("done", &format!("`{WORKLOAD_DONE_LINE}`"), to_done), ("time", "exit", to_exit)];
        let who = self.who();
        for (key, end, sample) in rows {
            let what = format!("`rxvmm.run=workload`: `{USERSPACE_LINE}` → {end}");
            for (side, (s, who)) in ["rxvmm", "qemu"].iter().zip(series.iter().zip(&who)) {
                let label = format!("{who}: {what}");
                self.report.row(format!("{side}.workload.{key}"), label, Unit::S, s.outcome(sample));
            }
            self.ratio(&format!("workload.{key}"), &format!("workload, marker → {end}"));
        }
        Ok(())
    }

    pub fn ratio(&mut self, key: &str, what: &str) {
        let (rx, q) = (self.report.median(&format!("rxvmm.{key}")), self.report.median(&format!("qemu.{key}")));
        let outcome = match (rx, q) {
            (Some(rx), Some(q)) if q > 0.0 => Outcome::Value(rx / q),
            (None, _) => Outcome::Skipped("no rxvmm figure".into()),
            _ => Outcome::Skipped("no QEMU figure".into()),
        };
        self.report.row(format!("ratio.{key}"), format!("rxvmm / QEMU, {what} (medians)"), Unit::Ratio, outcome);
    }
}

/// The marker, the line that says the initrd lacks the run script, and
/// the workload's last line (only the first is required).
pub fn markers() -> Vec<String> {
    vec![USERSPACE_LINE.into(), UNKNOWN_SCRIPT_LINE.into(), WORKLOAD_DONE_LINE.into()]
}

impl Bench {
    /// A boot counts if it reached userspace, found its run script, printed
    /// the required markers and no failure line, and powered off by itself.
    fn check(&self, run: &ChildRun, spec: &ChildSpec) -> Result<(), String> {
        if run.marks.get(1).copied().flatten().is_some() {
            return Err(format!(
                "{}: the initrd lacks this run script (rebuild it: resources/build-guest.sh)",
                run.last_line
            ));
        }
        if let Some(line) = self.failure.and_then(|i| run.lines.get(i)?.as_deref()) {
            return Err(line.to_owned());
        }
        check_markers(run, spec, &self.required, Expect::Exit(exit_code::POWEROFF))
    }
}

/// A command line a shell can rerun: arguments with spaces quoted.
fn quoted(spec: &ChildSpec) -> String {
    let mut s = spec.program.display().to_string();
    for a in &spec.args {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.contains(' ') {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(&a);
        }
    }
    s
}
