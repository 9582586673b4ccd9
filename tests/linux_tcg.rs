//! The default Linux guest (Debian's cloud kernel, busybox initramfs) under
//! the TCG engine, through the rxvmm binary: boot to userspace, what the
//! guest sees (vCPUs, memory, kernel), the ways a guest ends (poweroff,
//! reboot, panic), serial input, `--accel auto`'s fallback, and a CPU-heavy
//! workload whose results must equal the host's, byte for byte.
//!
//! Each test is one boot (a few seconds to tens of seconds under TCG);
//! everything asserted is guest output and exit codes, never timing. A
//! boot that hangs is killed at [`TIMEOUT`] and fails with its output.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use rxvmm::cli::DEFAULT_CMDLINE;

/// Per boot: only there to turn a hang into a failure. Generous: CI has 2
/// cores shared by the tests running in parallel, and the interpreter's boot
/// takes minutes of CPU on a loaded host.
const TIMEOUT: Duration = Duration::from_secs(600);
/// The workload run natively on the host takes well under a second.
const HOST_TIMEOUT: Duration = Duration::from_secs(120);

/// Printed by the guest's /init once userspace runs.
const USERSPACE_UP: &str = "rxvmm: userspace up";
/// The prefix of the workload's result lines.
const WORK: &str = "rxvmm-work: ";

/// Boots the default guest under `accel` running `/etc/rxvmm/run/<script>`,
/// with `--mem 256` unless `extra` sets `--mem`.
fn boot_with(accel: &str, script: &str, extra: &[&str], opts: &RunOptions) -> Run {
    let guest = default_guest();
    let kernel = guest.kernel.to_string_lossy();
    let initrd = guest.initrd.to_string_lossy();
    let cmdline = format!("{DEFAULT_CMDLINE} rxvmm.run={script}");
    let mut args = vec!["--accel", accel, "--kernel", &kernel, "--initrd", &initrd, "--cmdline", &cmdline];
    if !extra.contains(&"--mem") {
        args.extend(["--mem", "256"]);
    }
    args.extend_from_slice(extra);
    let run = run_rxvmm_with(&args, opts);
    run.assert_finished();
    assert!(
        !run.stdout.contains("rxvmm: unknown run script"),
        "the initramfs has no run script {script:?}: rebuild the guest (resources/build-guest.sh)\n--- stdout\n{}",
        run.stdout
    );
    run
}

fn boot(script: &str, extra: &[&str]) -> Run {
    boot_with("tcg", script, extra, &RunOptions::timeout(TIMEOUT))
}

/// The value of the guest's `rxvmm-info: <key>=<value>` line.
fn info<'a>(run: &'a Run, key: &str) -> &'a str {
    run.stdout_value(&format!("rxvmm-info: {key}=")).unwrap_or_else(|| {
        panic!("the guest printed no rxvmm-info {key}\n--- stdout\n{}\n--- stderr\n{}", run.stdout, run.stderr)
    })
}

fn info_number(run: &Run, key: &str) -> u64 {
    let value = info(run, key);
    value.parse().unwrap_or_else(|e| panic!("rxvmm-info {key}={value:?} is not a number: {e}"))
}

/// Boots `info` and checks it got to userspace and powered off.
fn boot_info(extra: &[&str]) -> Run {
    let run = boot("info", extra);
    run.assert_code(EXIT_POWEROFF).assert_stdout_has(USERSPACE_UP);
    run
}

#[test]
fn boots_to_userspace_and_powers_off() {
    let run = boot_info(&[]);
    assert_eq!(info(&run, "cpus"), "1", "stdout:\n{}", run.stdout);
    let release_file = default_guest().dir.join("kernel.release");
    let release = std::fs::read_to_string(&release_file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", release_file.display()));
    assert_eq!(info(&run, "kernel"), release.trim(), "the guest runs another kernel than the one built");
}

#[test]
fn two_vcpus_and_512_mib() {
    let run = boot_info(&["--cpus", "2", "--mem", "512"]);
    assert_eq!(info(&run, "cpus"), "2", "stdout:\n{}", run.stdout);
    // MemTotal is RAM minus what firmware, the kernel image and early
    // allocations keep: a few percent below --mem.
    let total = 512 * 1024;
    let memtotal_kb = info_number(&run, "memtotal_kb");
    assert!(
        (total * 9 / 10..=total).contains(&memtotal_kb),
        "MemTotal {memtotal_kb} kB for --mem 512: expected 90-100% of {total} kB"
    );
}

#[test]
fn four_vcpus() {
    let run = boot_info(&["--cpus", "4"]);
    assert_eq!(info(&run, "cpus"), "4", "stdout:\n{}", run.stdout);
}

#[test]
fn guest_reboot_exits_with_reboot_code() {
    boot("reboot", &[])
        .assert_code(EXIT_REBOOT)
        .assert_stdout_has(USERSPACE_UP)
        .assert_stdout_has("rxvmm: reboot")
        .assert_stderr_has("guest reset the machine");
}

#[test]
fn guest_kernel_panic_is_a_guest_crash() {
    boot("panic", &[])
        .assert_code(EXIT_GUEST_CRASH)
        .assert_stdout_has("rxvmm: panic")
        .assert_stdout_has("Kernel panic")
        .assert_stderr_has("guest crashed")
        .assert_stderr_has("panicked");
}

#[test]
fn serial_input_reaches_the_guest() {
    let line = "hello from the host: The quick brown fox, 0123456789 ~!@#$%&*()";
    let input = format!("{line}\n");
    let opts =
        RunOptions { input_after: Some(("rxvmm: echo ready", input.as_bytes())), ..RunOptions::timeout(TIMEOUT) };
    boot_with("tcg", "echo", &[], &opts)
        .assert_code(EXIT_POWEROFF)
        .assert_stdout_has("rxvmm: echo ready")
        .assert_stdout_has(&format!("rxvmm-echo: {line}"));
}

#[test]
fn auto_without_kvm_boots_linux_under_tcg() {
    let opts = RunOptions { env: vec![("RXVMM_NO_KVM", "1")], ..RunOptions::timeout(TIMEOUT) };
    boot_with("auto", "poweroff", &[], &opts)
        .assert_code(EXIT_POWEROFF)
        .assert_stdout_has(USERSPACE_UP)
        .assert_stdout_has("rxvmm: poweroff")
        .assert_stderr_has("KVM unavailable (hidden by RXVMM_NO_KVM); using TCG");
}

#[test]
fn auto_on_this_host_boots_linux() {
    let run = boot_with("auto", "poweroff", &[], &RunOptions::timeout(TIMEOUT));
    run.assert_code(EXIT_POWEROFF).assert_stdout_has(USERSPACE_UP);
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        run.assert_stderr_has("/dev/kvm is PVM-emulated; unmodified guest kernels can't run on it; using TCG");
    } else {
        // Hardware KVM, or none: either way auto says which engine it took.
        assert!(run.stderr.contains("using KVM") || run.stderr.contains("using TCG"), "stderr: {}", run.stderr);
    }
}

/// The `rxvmm-work:` lines of some output, without the tty's `\r`.
fn work_lines(output: &str) -> Vec<&str> {
    output.lines().map(|l| l.trim_end_matches('\r')).filter(|l| l.starts_with(WORK)).collect()
}

/// Runs the workload script natively with the guest's busybox: its `sh`,
/// and only its applets on `PATH`, in an empty environment.
fn workload_on_host() -> Run {
    let script = repo_root().join("resources/guest/run/workload");
    let tmp = scratch_dir().join("workload-tmp");
    std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
    let applets = guest_busybox_applets();
    let mut cmd = Command::new(applets.join("sh"));
    cmd.arg(&script).env_clear().env("PATH", applets).env("TMPDIR", &tmp).current_dir(&tmp);
    let run = run_bounded(cmd, None, HOST_TIMEOUT);
    run.assert_finished().assert_code(0);
    run
}

/// Each line where the two differ, for the failure message.
fn line_diff(guest: &[&str], host: &[&str]) -> String {
    let mut diff = String::new();
    for i in 0..guest.len().max(host.len()) {
        let (g, h) = (guest.get(i).copied(), host.get(i).copied());
        if g != h {
            diff +=
                &format!("line {}:\n  guest: {}\n  host:  {}\n", i + 1, g.unwrap_or("<none>"), h.unwrap_or("<none>"));
        }
    }
    diff
}

#[test]
fn workload_results_match_the_host() {
    let host = workload_on_host();
    let host_lines = work_lines(&host.stdout);
    assert_eq!(
        host_lines.last(),
        Some(&"rxvmm-work: done"),
        "the workload did not complete on the host\n--- stdout\n{}\n--- stderr\n{}",
        host.stdout,
        host.stderr
    );
    assert!(!host.stdout.contains("MISMATCH"), "a round trip failed on the host:\n{}", host.stdout);

    let guest = boot("workload", &[]);
    guest.assert_code(EXIT_POWEROFF).assert_stdout_has(USERSPACE_UP);
    let guest_lines = work_lines(&guest.stdout);
    assert!(
        guest_lines == host_lines,
        "the guest's workload results differ from the host's:\n{}\n--- guest stdout\n{}\n--- guest stderr\n{}",
        line_diff(&guest_lines, &host_lines),
        guest.stdout,
        guest.stderr
    );
}
