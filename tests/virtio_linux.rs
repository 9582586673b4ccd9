//! The virtio devices as Linux drives them: the default guest under TCG with
//! `--disk` (read-write and read-only), `--rng` and `--net`, commands typed
//! into its shell, results printed as `rxvmm-vt: key=value` lines.
//!
//! One boot per test (about a minute and a half of TCG on a loaded host).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use rxvmm::cli::DEFAULT_CMDLINE;

const TIMEOUT: Duration = Duration::from_secs(600);
const USERSPACE_UP: &str = "rxvmm: userspace up";
/// The shell echoes what it is sent: the commands build the prefix from
/// `$P` so that only their output contains it.
const PREFIX: &str = "rxvmm-vt: ";
const SET_PREFIX: &str = "P=rxvmm-vt\n";

/// rxvmm's arguments to boot the default guest's interactive shell under TCG.
fn shell_args() -> Vec<String> {
    let guest = default_guest();
    let cmdline = format!("{DEFAULT_CMDLINE} rxvmm.run=shell");
    [
        "--accel",
        "tcg",
        "--kernel",
        &guest.kernel.to_string_lossy(),
        "--initrd",
        &guest.initrd.to_string_lossy(),
        "--cmdline",
        &cmdline,
        "--mem",
        "256",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn value<'a>(run: &'a Run, key: &str) -> &'a str {
    run.stdout_value(&format!("{PREFIX}{key}="))
        .map(str::trim_end)
        .unwrap_or_else(|| panic!("the guest printed no {key}\n--- stdout\n{}\n--- stderr\n{}", run.stdout, run.stderr))
}

#[test]
fn linux_uses_virtio_blk_and_rng() {
    let rw = scratch_dir().join("linux-rw.img");
    let ro = scratch_dir().join("linux-ro.img");
    let mut bytes = vec![0u8; 8 << 20];
    bytes[..8].copy_from_slice(b"BOOTSECT");
    std::fs::write(&rw, &bytes).expect("write image");
    std::fs::write(&ro, &bytes).expect("write image");

    let mut args = shell_args();
    args.extend(["--disk".into(), format!("path={}", rw.display())]);
    args.extend(["--disk".into(), format!("path={},readonly=on", ro.display())]);
    args.push("--rng".into());
    let script = [
        SET_PREFIX,
        "echo \"$P: sizes=$(cat /sys/block/vda/size),$(cat /sys/block/vdb/size)\"\n",
        "echo \"$P: ro=$(cat /sys/block/vda/ro),$(cat /sys/block/vdb/ro)\"\n",
        "echo \"$P: sector0=$(head -c 8 /dev/vda)\"\n",
        "echo guest-wrote-this | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null\n",
        "echo 3 > /proc/sys/vm/drop_caches\n",
        "echo \"$P: sector1=$(dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | head -c 16)\"\n",
        "echo x | dd of=/dev/vdb bs=512 seek=1 conv=fsync 2>/dev/null; echo \"$P: ro_write=$?\"\n",
        "echo \"$P: rng=$(cat /sys/devices/virtual/misc/hw_random/rng_current)\"\n",
        "echo \"$P: hwrng_bytes=$(head -c 64 /dev/hwrng | wc -c)\"\n",
        "poweroff -f\n",
    ]
    .concat();
    let opts = RunOptions { input_after: Some((USERSPACE_UP, script.as_bytes())), ..RunOptions::timeout(TIMEOUT) };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_rxvmm_with(&args, &opts);
    run.assert_finished().assert_code(EXIT_POWEROFF);

    assert_eq!(value(&run, "sizes"), "16384,16384");
    assert_eq!(value(&run, "ro"), "0,1");
    assert_eq!(value(&run, "sector0"), "BOOTSECT");
    assert_eq!(value(&run, "sector1"), "guest-wrote-this");
    assert_ne!(value(&run, "ro_write"), "0", "writing the read-only disk failed in the guest");
    assert_eq!(value(&run, "rng"), "virtio_rng.0");
    assert_eq!(value(&run, "hwrng_bytes"), "64");
    let after = std::fs::read(&rw).expect("read image");
    assert_eq!(&after[512..529], b"guest-wrote-this\n");
    assert_eq!(std::fs::read(&ro).expect("read image"), bytes, "the read-only image changed");
}

/// virtio-net on a tap in a network namespace of its own: the guest pings
/// the host end, small and near-MTU frames. Needs root (or user namespaces)
/// and iproute2; skipped otherwise.
#[test]
fn linux_uses_virtio_net() {
    let probe = Command::new("unshare").args(["-n", "ip", "tuntap", "add", "dev", "rxtap0", "mode", "tap"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            println!("SKIP linux_uses_virtio_net: no tap in a netns: {}", String::from_utf8_lossy(&out.stderr));
            return;
        }
        Err(e) => {
            println!("SKIP linux_uses_virtio_net: unshare: {e}");
            return;
        }
    }
    // Host end 10.0.0.1 in a fresh namespace: nothing leaves this test.
    let setup = "ip link set lo up && ip tuntap add dev rxtap0 mode tap && ip addr add 10.0.0.1/24 dev rxtap0 \
                 && ip link set rxtap0 up && exec \"$0\" \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sh", "-c", setup, rxvmm()]);
    cmd.args(shell_args());
    cmd.args(["--net", "tap=rxtap0,mac=52:54:00:12:34:56"]);
    let script = [
        SET_PREFIX,
        "ip link set eth0 up && ip addr add 10.0.0.2/24 dev eth0\n",
        "echo \"$P: mac=$(cat /sys/class/net/eth0/address)\"\n",
        "ping -c 3 -W 5 10.0.0.1 >/dev/null; echo \"$P: ping=$?\"\n",
        "ping -c 2 -W 5 -s 1400 10.0.0.1 >/dev/null; echo \"$P: ping_large=$?\"\n",
        "poweroff -f\n",
    ]
    .concat();
    let run = run_bounded(cmd, Some((USERSPACE_UP, script.as_bytes())), TIMEOUT);
    run.assert_finished().assert_code(EXIT_POWEROFF);
    assert_eq!(value(&run, "mac"), "52:54:00:12:34:56");
    assert_eq!(value(&run, "ping"), "0", "small pings lost");
    assert_eq!(value(&run, "ping_large"), "0", "near-MTU pings lost");
}
