//! `rxvmm bench <name>`: measurements of rxvmm, printed as a Markdown table
//! (or JSON). Each benchmark is one module: `kvm` is the VMM's own cost on
//! the KVM path, `tcg` the TCG engine's guest MIPS and translation cost,
//! `boot` the default Linux guest's boot beside QEMU's, `blk` virtio-blk
//! throughput inside that guest beside QEMU's.

mod blk;
mod boot;
mod child;
mod host;
mod kvm;
mod loops;
mod qemu;
mod randio;
mod report;
mod runs;
mod stats;
mod tcg;
mod translate;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::guests::GuestError;
pub use boot::Engine;
pub use child::ChildError;

/// The benchmarks `rxvmm bench` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Benchmark {
    /// rxvmm on KVM: boot to marker and to exit, peak RSS, PIO and MMIO exit
    /// round trips; QEMU microvm on the same guest when it is installed.
    Kvm,
    /// The TCG engine: guest MIPS on CPU-bound loops (TCG at CPL0 and CPL3,
    /// KVM beside it), and translation time per block.
    Tcg,
    /// The default Linux guest: time to its userspace marker and to exit,
    /// under rxvmm and QEMU with the same engine (`--accel`, TCG by default).
    Boot,
    /// virtio-blk inside the default Linux guest: sequential MB/s and 4 KiB
    /// IOPS, reads and writes, under rxvmm and QEMU (`--accel`, TCG by default).
    Blk,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which benchmark to run.
    #[arg(value_enum)]
    pub benchmark: Benchmark,

    /// Timed runs per measurement [default: kvm: 20 per boot series, 5 per
    /// exit loop; tcg: 3; boot, blk: 3].
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

    /// `boot`, `blk`: the engine rxvmm and QEMU boot with.
    #[arg(long, value_enum, default_value_t = Engine::Tcg)]
    pub accel: Engine,

    /// `boot`, `blk`: give up on a boot after this many seconds [default: 600 under
    /// TCG, 60 under KVM].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: Option<u64>,
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
    #[error("assembling the random I/O tool")]
    RandIo(#[source] iced_x86::IcedError),
    #[error("reading {}", .0.display())]
    ReadGuest(PathBuf, #[source] std::io::Error),
    #[error("building the loop guest")]
    LoopGuest(#[source] loops::LoopError),
    #[error("{} is missing: build the default guest with resources/build-guest.sh", .0.display())]
    NoGuest(PathBuf),
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
    let qemu = match (&args.qemu, args.no_qemu) {
        (_, true) => qemu::QemuChoice::Off,
        (Some(path), false) => qemu::QemuChoice::Path(path.clone()),
        (None, false) => qemu::QemuChoice::Search,
    };
    let (report, ok) = match args.benchmark {
        Benchmark::Kvm => kvm::run(&kvm::Options { runs: args.runs, qemu })?,
        Benchmark::Tcg => tcg::run(&tcg::Options { runs: args.runs })?,
        Benchmark::Boot | Benchmark::Blk => {
            let opts = boot::Options {
                runs: args.runs,
                engine: args.accel,
                qemu,
                timeout: args.timeout.map(Duration::from_secs),
            };
            match args.benchmark {
                Benchmark::Blk => blk::run(&opts)?,
                _ => boot::run(&opts)?,
            }
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
