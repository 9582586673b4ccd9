//! The command line, QEMU/Firecracker style.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Default guest built by `resources/build-guest.sh`.
pub fn default_guest_dir() -> PathBuf {
    match std::env::var_os("RXVMM_GUEST_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/resources/cache/guest")),
    }
}

/// Kernel command line used with the default guest when `--cmdline` is absent.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=acpi panic=-1 quiet";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelChoice {
    /// KVM when /dev/kvm is hardware-backed, otherwise TCG.
    Auto,
    /// The host's KVM.
    Kvm,
    /// rxvmm's own x86-64 emulator.
    Tcg,
}

#[derive(Debug, Parser)]
#[command(name = "rxvmm", version, about = "Launch a Linux microVM under KVM or rxvmm's TCG emulator")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub vm: VmArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct VmArgs {
    /// Accelerator: auto picks KVM only when it is hardware-backed.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,

    /// Guest kernel: bzImage or ELF vmlinux (PVH note honoured).
    /// Default: the guest built by resources/build-guest.sh.
    #[arg(long)]
    pub kernel: Option<PathBuf>,

    /// Initial ramdisk. Default: the default guest's, when --kernel is absent.
    #[arg(long)]
    pub initrd: Option<PathBuf>,

    /// Kernel command line.
    #[arg(long)]
    pub cmdline: Option<String>,

    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 256)]
    pub mem: u64,

    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,

    /// A virtio-blk disk on a raw image: path=FILE[,readonly=on]. Repeatable.
    #[arg(long, value_name = "path=FILE[,readonly=on]")]
    pub disk: Vec<String>,

    /// A virtio-rng device fed from the host's getrandom.
    #[arg(long)]
    pub rng: bool,

    /// A virtio-net NIC on a host tap: tap=NAME[,mac=52:54:00:12:34:56]. Repeatable.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure rxvmm beside QEMU: `rxvmm bench kvm|tcg|boot|blk` (see README, "Benchmarks").
    Bench(crate::bench::BenchArgs),
    /// Write one of rxvmm's built-in test guests as an ELF kernel.
    Guest {
        /// Guest name (see `rxvmm guest --list`).
        name: Option<String>,
        /// Output file.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// List the built-in guests.
        #[arg(long)]
        list: bool,
    },
}
