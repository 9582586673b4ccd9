//! The virtio devices as Linux drives them: the default guest under TCG with
//! `--disk` (read-write and read-only), `--rng` and `--net`, commands typed
//! into its shell, results printed as `rxvmm-vt: key=value` lines.
//!
//! One boot per test (one to two minutes of TCG on a loaded host).

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

/// Where the guest copies the read-only disk into the read-write one: not
/// page-aligned, so the guest's page cache merges partial pages.
const COPY_OFFSET: usize = 5001 * 512;
const RW_SIZE: usize = 8 << 20;
const RO_SIZE: usize = 4 << 20;

/// The first offset where `got` and `want` differ, for a readable failure
/// instead of two 8 MiB dumps.
fn first_difference(got: &[u8], want: &[u8]) -> Option<usize> {
    got.iter().zip(want).position(|(a, b)| a != b).or((got.len() != want.len()).then(|| got.len().min(want.len())))
}

/// Disks with known pseudo-random content: the guest hashes the read-only
/// one (its SHA-256 must be the host's), copies it into the read-write one
/// at an odd offset through its page cache, writes a sector with fsync,
/// `sync`s and lets init power off; afterwards the read-write image holds
/// exactly those writes and nothing else changed, and the read-only image
/// (which the guest failed to write) is untouched.
#[test]
fn linux_uses_virtio_blk_and_rng() {
    let rw = scratch_dir().join("linux-rw.img");
    let ro = scratch_dir().join("linux-ro.img");
    let mut rw_bytes = pseudo_random_bytes(0x5eed_0001, RW_SIZE);
    rw_bytes[..8].copy_from_slice(b"BOOTSECT");
    let ro_bytes = pseudo_random_bytes(0x5eed_0002, RO_SIZE);
    std::fs::write(&rw, &rw_bytes).expect("write image");
    std::fs::write(&ro, &ro_bytes).expect("write image");
    let ro_sha256 = sha256_of_file(&ro);

    let mut args = shell_args();
    args.extend(["--disk".into(), format!("path={}", rw.display())]);
    args.extend(["--disk".into(), format!("path={},readonly=on", ro.display())]);
    args.push("--rng".into());
    let copy = format!(
        "dd if=/dev/vdb of=/dev/vda bs=64k seek={COPY_OFFSET} oflag=seek_bytes 2>/dev/null; echo \"$P: copy=$?\"\n"
    );
    let readback = format!(
        "dd if=/dev/vda bs=64k skip={COPY_OFFSET} count={} iflag=skip_bytes 2>/dev/null | cmp - /dev/vdb; \
         echo \"$P: readback=$?\"\n",
        RO_SIZE / (64 << 10)
    );
    let script = [
        SET_PREFIX,
        "echo \"$P: sizes=$(cat /sys/block/vda/size),$(cat /sys/block/vdb/size)\"\n",
        "echo \"$P: ro=$(cat /sys/block/vda/ro),$(cat /sys/block/vdb/ro)\"\n",
        "echo \"$P: sector0=$(head -c 8 /dev/vda)\"\n",
        "echo \"$P: vdb_sha256=$(sha256sum /dev/vdb | cut -d' ' -f1)\"\n",
        "echo guest-wrote-this | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null\n",
        &copy,
        "sync; echo \"$P: sync=$?\"\n",
        "echo 3 > /proc/sys/vm/drop_caches\n",
        "echo \"$P: sector1=$(dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | head -c 16)\"\n",
        &readback,
        "echo x | dd of=/dev/vdb bs=512 seek=1 conv=fsync 2>/dev/null; echo \"$P: ro_write=$?\"\n",
        "echo \"$P: rng=$(cat /sys/devices/virtual/misc/hw_random/rng_current)\"\n",
        "echo \"$P: hwrng_bytes=$(head -c 64 /dev/hwrng | wc -c)\"\n",
        // Leave the shell: init powers off (its own `poweroff -f`).
        "exit\n",
    ]
    .concat();
    let opts = RunOptions { input_after: Some((USERSPACE_UP, script.as_bytes())), ..RunOptions::timeout(TIMEOUT) };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_rxvmm_with(&args, &opts);
    run.assert_finished().assert_code(EXIT_POWEROFF);

    let sectors = |bytes: usize| (bytes / 512).to_string();
    assert_eq!(value(&run, "sizes"), format!("{},{}", sectors(RW_SIZE), sectors(RO_SIZE)));
    assert_eq!(value(&run, "ro"), "0,1");
    assert_eq!(value(&run, "sector0"), "BOOTSECT");
    assert_eq!(value(&run, "vdb_sha256"), ro_sha256, "the guest read other bytes than the image holds");
    assert_eq!(value(&run, "copy"), "0");
    assert_eq!(value(&run, "sync"), "0");
    assert_eq!(value(&run, "sector1"), "guest-wrote-this");
    assert_eq!(value(&run, "readback"), "0", "the copy read back in the guest differs from /dev/vdb");
    assert_ne!(value(&run, "ro_write"), "0", "writing the read-only disk succeeded in the guest");
    assert_eq!(value(&run, "rng"), "virtio_rng.0");
    assert_eq!(value(&run, "hwrng_bytes"), "64");

    // Nothing lost, nothing else touched: sector 1 (zero-padded by
    // conv=sync), the 4 MiB copy, and the original bytes everywhere else.
    let mut want = rw_bytes;
    let line = b"guest-wrote-this\n";
    want[512..1024].fill(0);
    want[512..512 + line.len()].copy_from_slice(line);
    want[COPY_OFFSET..COPY_OFFSET + RO_SIZE].copy_from_slice(&ro_bytes);
    let after = std::fs::read(&rw).expect("read image");
    assert_eq!(first_difference(&after, &want), None, "the read-write image is not what the guest wrote");
    assert_eq!(sha256_of_file(&ro), ro_sha256, "the read-only image changed");
    assert!(std::fs::read(&ro).expect("read image") == ro_bytes, "the read-only image changed");
}

/// Bytes the host sends the guest over TCP: odd-sized, so no buffer
/// boundary hides a lost tail.
const TO_GUEST_LEN: usize = (1 << 20) + 12_345;
const FROM_GUEST_LEN: usize = 1 << 20;

/// virtio-net on a tap in a network namespace of its own: the guest pings
/// the host end (small and near-MTU frames), then TCP in both directions
/// with busybox `nc` on both ends (the guest's static busybox runs on the
/// host): byte counts and SHA-256 must match. Needs root (or user
/// namespaces) and iproute2; skipped otherwise.
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
    let dir = scratch_dir().join("net");
    std::fs::create_dir_all(&dir).expect("create net dir");
    let to_guest = dir.join("to-guest.bin");
    let from_guest = dir.join("from-guest.bin");
    std::fs::write(&to_guest, pseudo_random_bytes(0x5eed_0003, TO_GUEST_LEN)).expect("write to-guest.bin");
    let _ = std::fs::remove_file(&from_guest);
    let to_guest_sha256 = sha256_of_file(&to_guest);

    // Host end 10.0.0.1 in a fresh namespace: nothing leaves this test. Two
    // busybox nc servers: 5001 keeps what the guest sends (its stdin is a
    // FIFO held open, so it never half-closes first), 5002 sends
    // to-guest.bin and half-closes. `timeout` ends them if the guest never
    // connects.
    let setup = r#"bb=$1 d=$2; shift 2
        ip link set lo up && ip tuntap add dev rxtap0 mode tap && ip addr add 10.0.0.1/24 dev rxtap0 \
            && ip link set rxtap0 up && mkfifo "$d/hold" || exit 1
        exec 3<>"$d/hold"
        "$bb" timeout 900 "$bb" nc -l -p 5001 <&3 >"$d/from-guest.bin" 2>"$d/nc-5001.err" &
        "$bb" timeout 900 "$bb" nc -l -p 5002 <"$d/to-guest.bin" >/dev/null 2>"$d/nc-5002.err" &
        exec 3>&-
        exec "$@""#;
    let _ = std::fs::remove_file(dir.join("hold"));
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "sh", "-c", setup, "sh"]).arg(guest_busybox()).arg(&dir).arg(rxvmm());
    cmd.args(shell_args());
    cmd.args(["--net", "tap=rxtap0,mac=52:54:00:12:34:56"]);
    let send = format!("head -c {FROM_GUEST_LEN} /dev/urandom > /tmp/out\n");
    let script = [
        SET_PREFIX,
        "ip link set eth0 up && ip addr add 10.0.0.2/24 dev eth0\n",
        "echo \"$P: mac=$(cat /sys/class/net/eth0/address)\"\n",
        "ping -c 3 -W 5 10.0.0.1 >/dev/null; echo \"$P: ping=$?\"\n",
        "ping -c 2 -W 5 -s 1400 10.0.0.1 >/dev/null; echo \"$P: ping_large=$?\"\n",
        &send,
        "echo \"$P: out_sha256=$(sha256sum /tmp/out | cut -d' ' -f1)\"\n",
        "nc 10.0.0.1 5001 </tmp/out >/dev/null; echo \"$P: send=$?\"\n",
        // stdin held open, so this nc stops at the host's half-close only.
        "mkfifo /tmp/hold; exec 3<>/tmp/hold\n",
        "nc 10.0.0.1 5002 <&3 >/tmp/in; echo \"$P: recv=$?\"\n",
        "echo \"$P: in_bytes=$(wc -c </tmp/in)\"\n",
        "echo \"$P: in_sha256=$(sha256sum /tmp/in | cut -d' ' -f1)\"\n",
        "poweroff -f\n",
    ]
    .concat();
    let run = run_bounded(cmd, Some((USERSPACE_UP, script.as_bytes())), TIMEOUT);
    run.assert_finished().assert_code(EXIT_POWEROFF);
    assert_eq!(value(&run, "mac"), "52:54:00:12:34:56");
    assert_eq!(value(&run, "ping"), "0", "small pings lost");
    assert_eq!(value(&run, "ping_large"), "0", "near-MTU pings lost");

    // Host → guest.
    assert_eq!(value(&run, "recv"), "0");
    assert_eq!(value(&run, "in_bytes"), TO_GUEST_LEN.to_string(), "the guest received another byte count");
    assert_eq!(value(&run, "in_sha256"), to_guest_sha256, "the guest received other bytes");
    // Guest → host: the server exits once the guest half-closes, which
    // came before the guest's nc returned.
    assert_eq!(value(&run, "send"), "0");
    let got = std::fs::metadata(&from_guest).map(|m| m.len()).unwrap_or(0);
    let errors = std::fs::read_to_string(dir.join("nc-5001.err")).unwrap_or_default();
    assert_eq!(got, FROM_GUEST_LEN as u64, "the host received another byte count (nc: {errors})");
    assert_eq!(sha256_of_file(&from_guest), value(&run, "out_sha256"), "the host received other bytes");
}
