//! `rxvmm bench blk`: virtio-blk throughput inside the default Linux guest,
//! under rxvmm and under QEMU with the same engine (TCG by default), same
//! kernel, initrd and raw image. The guest's `blk` run script
//! (`resources/guest/run/blk`) times sequential 1 MiB and 4 KiB O_DIRECT
//! reads and writes with busybox dd on its monotonic clock and prints one
//! `rxvmm-blk:` line per test, which the host turns into MB/s and IOPS.

use std::io::Write;
use std::path::Path;

use super::boot::{Bench, Options};
use super::child::ChildRun;
use super::qemu;
use super::randio;
use super::report::{Report, Unit};
use super::runs::GuestDir;
use super::BenchError;

const SCRIPT: &str = "blk";
/// MiB the 1 MiB tests move, and the 4 KiB tests' I/O count (the run
/// script's defaults; the image is made big enough for both).
const SEQ_MIB: u64 = 128;
const IOS_4K: u64 = 4096;
const IMAGE_MIB: u64 = SEQ_MIB + 16;
const DONE_LINE: &str = "rxvmm-blk: done";
const ERROR_LINE: &str = "rxvmm-blk: error=";

/// The guest's tests (its line's name and the row's label) and the unit
/// of their figure: MB/s from bytes, IOPS from I/Os, or ms for the time.
const TESTS: [(&str, &str, Unit); 7] = [
    ("dd_start", "busybox dd with nothing to copy (count=0): the process cost in each figure", Unit::Ms),
    ("seq_read", "sequential read, 1 MiB O_DIRECT (dd)", Unit::MBps),
    ("seq_write", "sequential write, 1 MiB O_DIRECT (dd)", Unit::MBps),
    ("read_4k", "4 KiB O_DIRECT reads, QD1, consecutive offsets (one dd)", Unit::Iops),
    ("write_4k", "4 KiB O_DIRECT writes, QD1, consecutive offsets (one dd)", Unit::Iops),
    ("rand_read_4k", "4 KiB O_DIRECT reads, QD1, random offsets (rxvmm-randread)", Unit::Iops),
    ("rand_write_4k", "4 KiB O_DIRECT writes, QD1, random offsets (rxvmm-randwrite)", Unit::Iops),
];

/// Runs the benchmark; returns the report and whether every rxvmm
/// measurement succeeded.
pub fn run(opts: &Options) -> Result<(Report, bool), BenchError> {
    let mut b = Bench::new(opts, "blk")?;
    let dir = GuestDir::create()?;
    let image = dir.path.join("disk.img");
    write_image(&image)?;
    b.disk = Some(image);
    let initrd = crate::cli::default_guest_dir().join("initrd.img");
    let base = std::fs::read(&initrd).map_err(|e| BenchError::ReadGuest(initrd, e))?;
    let with_tools = randio::initrd_with_tools(&base, IOS_4K as u32).map_err(BenchError::RandIo)?;
    let initrd = dir.path.join("initrd-blk.img");
    std::fs::write(&initrd, with_tools).map_err(|e| BenchError::GuestFile(initrd.clone(), e))?;
    b.initrd = Some(initrd);
    let first = b.markers.len();
    b.markers.extend(TESTS.iter().map(|(test, ..)| format!("rxvmm-blk: {test} ")));
    b.markers.extend([DONE_LINE.to_owned(), ERROR_LINE.to_owned()]);
    b.required = vec![0, first + TESTS.len()];
    b.failure = Some(first + TESTS.len() + 1);
    b.report.fact(
        "method",
        "Method",
        format!(
            "a {IMAGE_MIB} MiB raw image (in the host's page cache) as the guest's /dev/vda; in the guest, one \
             process per test: busybox dd for {SEQ_MIB} × 1 MiB, then {IOS_4K} × 4 KiB at consecutive offsets \
             from offset 0, then the bench's own static tools (appended to the initramfs) for {IOS_4K} × 4 KiB \
             pread64/pwrite64 at random 4 KiB-aligned offsets over the disk; all O_DIRECT at queue depth 1, reads \
             before writes; timed in the guest from just before the process starts to just after it exits \
             (monotonic clock, ns: /proc/timer_list), so each figure includes one process start and exit (the \
             dd_start row shows a dd's); MB = 10^6 bytes; rxvmm uses virtio-mmio, QEMU virtio-blk-pci (-M {}); \
             one boot per run",
            qemu::LINUX_MACHINE
        ),
    );
    let series = b.both(SCRIPT, None)?;
    let who = b.who();
    for (i, &(key, what, unit)) in TESTS.iter().enumerate() {
        let line = first + i;
        let sample = move |r: &ChildRun| figure(r.lines.get(line)?.as_deref()?, unit);
        for (side, (s, who)) in ["rxvmm", "qemu"].iter().zip(series.iter().zip(&who)) {
            b.report.row(format!("{side}.blk.{key}"), format!("{who}: {what}"), unit, s.outcome(sample));
        }
        b.ratio(&format!("blk.{key}"), what);
    }
    drop(dir);
    Ok(b.finish())
}

/// MB/s, IOPS or ms (`unit`) from a `rxvmm-blk: <test> bytes=B ios=N ns=T` line.
fn figure(line: &str, unit: Unit) -> Option<f64> {
    let field =
        |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse::<f64>().ok());
    let ns = field("ns").filter(|&ns| ns > 0.0)?;
    match unit {
        Unit::MBps => Some(field("bytes")? * 1e3 / ns),
        Unit::Iops => Some(field("ios")? * 1e9 / ns),
        _ => Some(ns / 1e6),
    }
}

/// The image: non-zero pseudo-random bytes (no holes, nothing a host could
/// shortcut), a 1 MiB pattern repeated.
fn write_image(path: &Path) -> Result<(), BenchError> {
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in block.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    let err = |e| BenchError::GuestFile(path.to_owned(), e);
    let mut file = std::fs::File::create(path).map_err(err)?;
    for _ in 0..IMAGE_MIB {
        file.write_all(&block).map_err(err)?;
    }
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_guest_lines() {
        let line = "rxvmm-blk: seq_read bytes=134217728 ios=128 ns=1000000000";
        assert_eq!(figure(line, Unit::MBps), Some(134.217728));
        assert_eq!(figure(line, Unit::Iops), Some(128.0));
        assert_eq!(figure(line, Unit::Ms), Some(1000.0));
        assert_eq!(figure("rxvmm-blk: read_4k bytes=4096 ios=1 ns=0", Unit::Iops), None);
        assert_eq!(figure("rxvmm-blk: read_4k bytes=x ios=1", Unit::MBps), None);
    }
}
