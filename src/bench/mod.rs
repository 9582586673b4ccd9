//! `rxvmm bench <name>`: measurements of rxvmm, printed as a Markdown table
//! (or JSON). Each benchmark is one module; `kvm` is the VMM's own cost on
//! the KVM path. Later ones (`tcg`, `boot`, `blk`) become further
//! [`Benchmark`] values.

mod child;
mod host;
mod kvm;
mod qemu;
mod report;
mod stats;

use std::io::Write;
use std::path::PathBuf;

use crate::guests::GuestError;
pub use child::ChildError;

/// The benchmarks `rxvmm bench` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Benchmark {
    /// rxvmm on KVM: boot to marker and to exit, peak RSS, PIO and MMIO exit
    /// round trips; QEMU microvm on the same guest when it is installed.
    Kvm,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which benchmark to run.
    #[arg(value_enum)]
    pub benchmark: Benchmark,

    /// Timed runs per measurement [default: 20 per boot series, 5 per exit loop].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub runs: Option<u32>,

    /// Print JSON instead of the Markdown table.
    #[arg(long)]
    pub json: bool,

    /// QEMU binary to compare with [default: qemu-system-x86_64 from $PATH].
    #[arg(long, conflicts_with = "no_qemu")]
    pub qemu: Option<PathBuf>,

    /// Skip the QEMU comparison.
    #[arg(long)]
    pub no_qemu: bool,
}

/// Why a benchmark could not produce its report (a failing measurement
/// is a row in the report instead, except for rxvmm's own: see `RxvmmFailed`).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("rxvmm bench kvm needs /dev/kvm: {0}")]
    NoKvm(String),
    #[error("locating the rxvmm executable")]
    CurrentExe(#[source] std::io::Error),
    #[error("building guest {0}")]
    Guest(&'static str, #[source] GuestError),
    #[error("writing {}", .0.display())]
    GuestFile(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error("writing the report")]
    Output(#[source] std::io::Error),
    /// The report was printed; some rxvmm rows say "failed".
    #[error("some rxvmm measurements failed (see the table)")]
    RxvmmFailed,
}

/// Runs the chosen benchmark and prints its report on stdout (progress
/// goes to stderr).
pub fn run(args: &BenchArgs) -> Result<(), BenchError> {
    let (report, ok) = match args.benchmark {
        Benchmark::Kvm => {
            let qemu = match (&args.qemu, args.no_qemu) {
                (_, true) => qemu::QemuChoice::Off,
                (Some(path), false) => qemu::QemuChoice::Path(path.clone()),
                (None, false) => qemu::QemuChoice::Search,
            };
            kvm::run(&kvm::Options { runs: args.runs, qemu })?
        }
    };
    let text = if args.json { report.to_json() } else { report.to_markdown() };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(BenchError::Output)?;
    if ok {
        Ok(())
    } else {
        Err(BenchError::RxvmmFailed)
    }
}
