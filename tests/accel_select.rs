//! `--accel auto` falls back to TCG where KVM is absent or PVM, and says why.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn auto_without_kvm_picks_tcg_and_says_why() {
    let k = builtin_guest("poweroff");
    let out = std::process::Command::new(rxvmm())
        .args(["--kernel", &k.to_string_lossy(), "--mem", "64"])
        .env("RXVMM_NO_KVM", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run rxvmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("KVM unavailable (hidden by RXVMM_NO_KVM); using TCG"), "stderr: {stderr}");
}

#[test]
fn auto_on_this_host_explains_its_choice() {
    let k = builtin_guest("poweroff");
    let run = run_rxvmm(&["--kernel", &k.to_string_lossy(), "--mem", "64"], None, Duration::from_secs(30));
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    if pvm {
        run.assert_stderr_has("/dev/kvm is PVM-emulated; unmodified guest kernels can't run on it; using TCG");
    } else {
        assert!(run.stderr.contains("using KVM") || run.stderr.contains("using TCG"), "stderr: {}", run.stderr);
    }
}
