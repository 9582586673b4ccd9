//! Bad input gets a one-line error and the VMM-error exit code, never a
//! panic or a hang. None of these needs /dev/kvm: each fails before a vCPU runs.

mod common;

use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(30);

fn tcg_or_kvm() -> &'static str {
    // The loader runs before the engine creates the VM, under either; pick KVM
    // where it opens so the test reaches the loader even before TCG exists.
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok() {
        "kvm"
    } else {
        "tcg"
    }
}

/// Runs rxvmm and checks it failed as a VMM error with `needle` on stderr,
/// with no panic and a single `rxvmm: error:` line.
fn fails_with(args: &[&str], needle: &str) -> Run {
    let run = run_rxvmm(args, None, TIMEOUT);
    run.assert_code(EXIT_VMM_ERROR).assert_stderr_has(needle);
    assert!(!run.stderr.contains("panicked"), "panic:\n{}", run.stderr);
    assert_eq!(run.stderr.matches("rxvmm: error:").count(), 1, "stderr:\n{}", run.stderr);
    run
}

fn file_with(name: &str, bytes: &[u8]) -> String {
    let path = scratch_dir().join(name);
    std::fs::write(&path, bytes).expect("write test file");
    path.to_string_lossy().into_owned()
}

#[test]
fn missing_kernel() {
    let accel = tcg_or_kvm();
    fails_with(&["--accel", accel, "--kernel", "/nonexistent/vmlinux"], "/nonexistent/vmlinux");
}

#[test]
fn empty_kernel() {
    let k = file_with("empty.bin", b"");
    fails_with(&["--accel", tcg_or_kvm(), "--kernel", &k], "empty");
}

#[test]
fn kernel_that_is_not_a_kernel() {
    let k =
        file_with("random.bin", &(0..8192u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<_>>());
    fails_with(&["--accel", tcg_or_kvm(), "--kernel", &k], "neither an ELF vmlinux nor a bzImage");
}

#[test]
fn truncated_bzimage() {
    let kernel = &default_guest().kernel;
    let bytes = std::fs::read(kernel).expect("read bzImage");
    let k = file_with("truncated-bzImage", &bytes[..bytes.len() / 3]);
    fails_with(&["--accel", tcg_or_kvm(), "--kernel", &k], "truncated-bzImage");
}

#[test]
fn truncated_elf() {
    let image = rxvmm::guests::build("hello").expect("build hello");
    let k = file_with("truncated.elf", &image[..100]);
    fails_with(&["--accel", tcg_or_kvm(), "--kernel", &k], "truncated.elf");
}

#[test]
fn initrd_larger_than_memory() {
    let kernel = &default_guest().kernel;
    let initrd = scratch_dir().join("huge-initrd");
    let f = std::fs::File::create(&initrd).expect("create initrd");
    f.set_len(200 << 20).expect("size initrd");
    fails_with(
        &[
            "--accel",
            tcg_or_kvm(),
            "--kernel",
            &kernel.to_string_lossy(),
            "--initrd",
            &initrd.to_string_lossy(),
            "--mem",
            "128",
        ],
        "initrd",
    );
}

#[test]
fn memory_too_small() {
    let k = builtin_guest("hello");
    fails_with(&["--accel", tcg_or_kvm(), "--kernel", &k.to_string_lossy(), "--mem", "4"], "too small");
}

#[test]
fn zero_and_too_many_cpus() {
    let k = builtin_guest("hello");
    let k = k.to_string_lossy();
    fails_with(&["--accel", tcg_or_kvm(), "--kernel", &k, "--cpus", "0"], "--cpus 0");
    fails_with(&["--accel", tcg_or_kvm(), "--kernel", &k, "--cpus", "255"], "--cpus 255");
}

#[test]
fn kvm_forced_without_kvm() {
    let k = builtin_guest("hello");
    let run = std::process::Command::new(rxvmm())
        .args(["--accel", "kvm", "--kernel", &k.to_string_lossy()])
        .env("RXVMM_NO_KVM", "1")
        .output()
        .expect("run rxvmm");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(EXIT_VMM_ERROR), "stderr: {stderr}");
    assert!(stderr.contains("--accel kvm:"), "stderr: {stderr}");
}

#[test]
fn usage_errors_use_clap_code() {
    let run = run_rxvmm(&["--accel", "bogus"], None, TIMEOUT);
    run.assert_code(2);
    let run = run_rxvmm(&["--mem", "lots"], None, TIMEOUT);
    run.assert_code(2);
}

/// `--disk`/`--net` problems: one line naming the option, before any vCPU runs.
fn fails_with_device(device_args: &[&str], needle: &str) {
    let k = builtin_guest("hello");
    let k = k.to_string_lossy();
    let mut args = vec!["--accel", tcg_or_kvm(), "--kernel", &k];
    args.extend_from_slice(device_args);
    fails_with(&args, needle);
}

#[test]
fn disk_without_a_path() {
    fails_with_device(&["--disk", "readonly=on"], "--disk readonly=on: missing path=FILE");
}

#[test]
fn disk_image_that_does_not_exist() {
    fails_with_device(&["--disk", "path=/nonexistent/disk.img"], "cannot open disk image /nonexistent/disk.img");
}

#[test]
fn disk_image_that_is_a_directory() {
    let dir = scratch_dir().to_string_lossy().into_owned();
    fails_with_device(&["--disk", &format!("path={dir},readonly=on")], "not a regular file");
}

#[test]
fn malformed_disk_options() {
    let img = file_with("disk.img", &[0; 4096]);
    fails_with_device(&["--disk", &format!("path={img},cache=none")], "unknown key \"cache\"");
    fails_with_device(&["--disk", &img], "expected key=value");
    fails_with_device(&["--disk", &format!("path={img},readonly=maybe")], "readonly=maybe: expected on or off");
}

#[test]
fn tap_that_cannot_be_opened() {
    // "lo" exists and is not a tap: TUNSETIFF refuses it (or /dev/net/tun
    // itself is unavailable); either way nothing is created on the host.
    fails_with_device(&["--net", "tap=lo"], "--net: cannot");
    fails_with_device(&["--net", "tap=a-name-longer-than-ifnamsiz"], "must be 1 to 15 bytes");
    fails_with_device(&["--net", "tap=t0,mac=01:02:03:04:05:06"], "unicast");
}

#[test]
fn disk_image_that_cannot_be_read() {
    let img = scratch_dir().join("unreadable.img");
    std::fs::write(&img, [0u8; 4096]).expect("write image");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o000)).expect("chmod image");
    let k = builtin_guest("hello");
    let args = ["--accel", "tcg", "--kernel", &k.to_string_lossy(), "--disk", &format!("path={}", img.display())];
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let needle = format!("cannot open disk image {}", img.display());
    if std::fs::File::open(&img).is_err() {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = fails_with(&args, &needle);
        run.assert_stderr_has("Permission denied");
        return;
    }
    // We are root, who reads anything: run rxvmm as nobody instead.
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", rxvmm()]).args(&args);
    let run = run_bounded(cmd, None, TIMEOUT);
    if run.code == Some(127) || run.stderr.contains("setpriv:") {
        println!("SKIP disk_image_that_cannot_be_read: cannot drop privileges: {}", run.stderr.trim());
        return;
    }
    run.assert_code(EXIT_VMM_ERROR).assert_stderr_has(&needle).assert_stderr_has("Permission denied");
    assert!(!run.stderr.contains("panicked"), "panic:\n{}", run.stderr);
    assert_eq!(run.stderr.matches("rxvmm: error:").count(), 1, "stderr:\n{}", run.stderr);
}

#[test]
fn disk_image_in_use() {
    use std::os::fd::AsRawFd;
    let img = file_with("locked.img", &[0; 4096]);
    let holder = std::fs::File::open(&img).expect("open image");
    // SAFETY: flock on a file descriptor this test owns.
    let locked = unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(locked, 0, "flock: {}", std::io::Error::last_os_error());
    fails_with_device(&["--disk", &format!("path={img}")], "is in use by another process");
    fails_with_device(&["--disk", &format!("path={img},readonly=on")], "is in use by another process");
    drop(holder);
}
