//! Series of timed child runs shared by the benchmarks: run one command N
//! times, check each run, and keep the guest images they boot.

use std::path::PathBuf;
use std::time::Duration;

use super::child::{run_child, ChildError, ChildRun, ChildSpec, Ended};
use super::report::Outcome;
use super::BenchError;
use crate::guests;

/// How a run must end to count.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// Exit by itself with this code.
    Exit(u8),
    /// Only the marker lines matter (QEMU may need killing).
    Markers,
}

/// The runs of one measurement, or why there are none.
pub enum Series {
    Done(Vec<ChildRun>),
    Failed(String),
    Skipped(String),
}

impl Series {
    /// A row's outcome: `sample` of each run.
    pub fn outcome(&self, sample: impl Fn(&ChildRun) -> Option<f64>) -> Outcome {
        match self {
            Series::Done(runs) => Outcome::from_samples(runs.iter().filter_map(sample).collect()),
            Series::Failed(why) => Outcome::Failed(why.clone()),
            Series::Skipped(why) => Outcome::Skipped(why.clone()),
        }
    }
}

/// `n` timed runs of `spec` (after one untimed one with `warm_up`, so the
/// first sample doesn't pay for a cold page cache). Stops at the first run
/// that doesn't meet `expect`, with the reason.
pub fn series(spec: &ChildSpec, what: &str, n: u32, warm_up: bool, expect: Expect) -> Result<Series, BenchError> {
    series_checked(spec, what, n, warm_up, |run| check(run, spec, expect))
}

/// [`series`] with the bench's own test of each run; progress on stderr
/// names `what`.
pub fn series_checked(
    spec: &ChildSpec,
    what: &str,
    n: u32,
    warm_up: bool,
    check: impl Fn(&ChildRun) -> Result<(), String>,
) -> Result<Series, BenchError> {
    let program = spec.program.file_name().unwrap_or_default();
    eprintln!("rxvmm bench: {} {what} × {n}", program.to_string_lossy());
    let mut runs = Vec::new();
    for i in 0..n + u32::from(warm_up) {
        let run = match run_child(spec) {
            Ok(run) => run,
            // A missing or broken binary is this row's failure, not the bench's.
            Err(ChildError::Spawn { program, source }) => {
                return Ok(Series::Failed(format!("cannot start {program}: {source}")))
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(why) = check(&run) {
            return Ok(Series::Failed(why));
        }
        if i > 0 || !warm_up {
            runs.push(run);
        }
    }
    Ok(Series::Done(runs))
}

/// Why `run` doesn't count, led by the child's own first error line.
pub fn check(run: &ChildRun, spec: &ChildSpec, expect: Expect) -> Result<(), String> {
    let all: Vec<usize> = (0..spec.markers.len()).collect();
    check_markers(run, spec, &all, expect)
}

/// [`check`] for the markers at `required` only (the others may be
/// absent), naming the last line the child printed when one is missing.
pub fn check_markers(run: &ChildRun, spec: &ChildSpec, required: &[usize], expect: Expect) -> Result<(), String> {
    let reason = |what: String| match run.stderr_reason() {
        Some(line) => format!("{line} ({what})"),
        None => what,
    };
    if let Some(&i) = required.iter().find(|&&i| run.marks.get(i).copied().flatten().is_none()) {
        let end = run.killed.map_or_else(|| run.ended.to_string(), str::to_owned);
        let last = match run.last_line.as_str() {
            "" => String::new(),
            line => format!("; last line on stdout: {line:?}"),
        };
        return Err(reason(format!("no line starting {:?}; {end}{last}", spec.markers[i])));
    }
    if let Expect::Exit(code) = expect {
        if let Some(why) = run.killed {
            return Err(reason(format!("killed: {why}")));
        }
        if run.ended != Ended::Code(code.into()) {
            return Err(reason(format!("{}, expected exit code {code}", run.ended)));
        }
    }
    Ok(())
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A private directory for the guest images, removed when dropped.
pub struct GuestDir {
    pub path: PathBuf,
}

impl GuestDir {
    pub fn create() -> Result<GuestDir, BenchError> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("rxvmm-bench-{}-{nanos}", std::process::id()));
        // create_dir (not _all) fails if the path exists, so it is ours alone.
        std::fs::create_dir(&path).map_err(|e| BenchError::GuestFile(path.clone(), e))?;
        Ok(GuestDir { path })
    }

    /// Builds guest `name` into `<dir>/<name>.elf` (again if it is there).
    pub fn write(&self, name: &'static str) -> Result<PathBuf, BenchError> {
        let image = guests::build(name).map_err(|e| BenchError::Guest(name, e))?;
        self.write_image(name, &image)
    }

    /// Writes an image built by the bench itself to `<dir>/<name>.elf`.
    pub fn write_image(&self, name: &str, image: &[u8]) -> Result<PathBuf, BenchError> {
        let path = self.path.join(format!("{name}.elf"));
        std::fs::write(&path, image).map_err(|e| BenchError::GuestFile(path.clone(), e))?;
        Ok(path)
    }

    /// `spec`'s command line as a reader can rerun it: guest files by name
    /// (`rxvmm guest <name> -o <name>.elf` writes the built-in ones).
    pub fn command(&self, guest: &str, spec: &ChildSpec) -> String {
        let line = spec.display().replace(&format!("{}/", self.path.display()), "");
        format!("`{guest}`: `{line}`")
    }
}

impl Drop for GuestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
