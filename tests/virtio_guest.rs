//! Virtio devices through the whole VMM under every engine, driven by the
//! built-in `virtio-blk` guest (a polling driver in a few hundred bytes of
//! guest code): `--disk` wiring, the MMIO transport, queue notifications
//! (ioeventfd under KVM, the engine's write path under TCG), the event loop,
//! the block device and the disk image on the host.

mod common;

use std::time::Duration;

use common::*;
use rxvmm::guests::{VIRTIO_BLK_PATTERN, VIRTIO_BLK_PREFIX};

const TIMEOUT: Duration = Duration::from_secs(60);
const SECTOR0: &[u8; 8] = b"BOOTSECT";

/// A 4-sector image named for the test, sector 0 starting with [`SECTOR0`].
fn image(name: &str) -> std::path::PathBuf {
    let path = scratch_dir().join(name);
    let mut bytes = vec![0u8; 4 * 512];
    bytes[..8].copy_from_slice(SECTOR0);
    std::fs::write(&path, bytes).expect("write disk image");
    path
}

/// The guest, written once: tests run in parallel and `builtin_guest`
/// rewrites its file on every call.
fn kernel() -> &'static std::path::Path {
    static KERNEL: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    KERNEL.get_or_init(|| builtin_guest("virtio-blk"))
}

fn run(accel: &str, args: &[&str]) -> Run {
    let kernel = kernel().to_string_lossy();
    let mut all = vec!["--accel", accel, "--kernel", &kernel, "--mem", "64"];
    all.extend_from_slice(args);
    run_rxvmm(&all, None, TIMEOUT)
}

fn line(what: &str) -> String {
    format!("{VIRTIO_BLK_PREFIX}{what}\n")
}

fn engine_available(accel: &str, test: &str) -> bool {
    accel != "kvm" || kvm_or_skip(test)
}

macro_rules! engine_tests {
    ($($engine:ident),+) => {$(
        mod $engine {
            use super::*;
            const ACCEL: &str = stringify!($engine);

            #[test]
            fn disk_read_write_flush() {
                if !engine_available(ACCEL, "disk_read_write_flush") {
                    return;
                }
                let img = image(concat!(stringify!($engine), "-rw.img"));
                let disk = format!("path={}", img.display());
                let r = run(ACCEL, &["--disk", &disk]);
                r.assert_code(EXIT_POWEROFF);
                r.assert_stdout_has(&line("read-status 00"));
                r.assert_stdout_has(&line(&format!("data {:016x}", u64::from_le_bytes(*SECTOR0))));
                // The device raised its used-buffer interrupt.
                r.assert_stdout_has(&line("isr 1"));
                r.assert_stdout_has(&line("write-status 00"));
                r.assert_stdout_has(&line("flush-status 00"));
                r.assert_stdout_has(&line("done"));
                let bytes = std::fs::read(&img).expect("read image");
                assert_eq!(&bytes[512..520], VIRTIO_BLK_PATTERN);
                assert_eq!(bytes.len(), 4 * 512);
            }

            #[test]
            fn readonly_disk_refuses_writes() {
                if !engine_available(ACCEL, "readonly_disk_refuses_writes") {
                    return;
                }
                let img = image(concat!(stringify!($engine), "-ro.img"));
                let before = std::fs::read(&img).expect("read image");
                let disk = format!("path={},readonly=on", img.display());
                let r = run(ACCEL, &["--disk", &disk]);
                r.assert_code(EXIT_POWEROFF);
                r.assert_stdout_has(&line("read-status 00"));
                r.assert_stdout_has(&line("write-status 01"));
                r.assert_stdout_has(&line("flush-status 00"));
                assert_eq!(std::fs::read(&img).expect("read image"), before);
            }

            #[test]
            fn no_disk_means_no_device() {
                if !engine_available(ACCEL, "no_disk_means_no_device") {
                    return;
                }
                // Nothing at the first window: the guest finds no magic.
                run(ACCEL, &[]).assert_code(EXIT_POWEROFF).assert_stdout_has(&line("no virtio-blk device"));
                // An rng first: the right magic, the wrong device type.
                run(ACCEL, &["--rng"]).assert_code(EXIT_POWEROFF).assert_stdout_has(&line("no virtio-blk device"));
            }
        }
    )+};
}

engine_tests!(kvm, tcg);
