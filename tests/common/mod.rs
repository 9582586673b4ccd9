//! Shared fixtures for the integration tests: the rxvmm binary, the default
//! guest (built once per test run), built-in guests, and a bounded runner.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const EXIT_POWEROFF: i32 = 0;
pub const EXIT_VMM_ERROR: i32 = 1;
pub const EXIT_REBOOT: i32 = 3;
pub const EXIT_GUEST_CRASH: i32 = 4;

pub fn rxvmm() -> &'static str {
    env!("CARGO_BIN_EXE_rxvmm")
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The default guest: kernel and initramfs paths, plus the output dir holding
/// `kernel.release` and `modules.builtin`.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub dir: PathBuf,
}

/// Builds the default guest with `resources/build-guest.sh` (or reuses the
/// cached one) once per test process. The script is idempotent and
/// serialises concurrent runs with flock, so any test binary may call this.
pub fn default_guest() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let script = repo_root().join("resources/build-guest.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{} failed ({}): {stdout}", script.display(), out.status);
        // Last stdout line: "<dir>/bzImage <dir>/initrd.img" (split on the
        // fixed file name so that spaces in the directory do not matter).
        let line = stdout.lines().last().expect("build-guest.sh printed nothing");
        let (kernel, initrd) = line
            .split_once("/bzImage ")
            .map(|(dir, initrd)| (format!("{dir}/bzImage"), initrd))
            .unwrap_or_else(|| panic!("unexpected build-guest.sh output: {line:?}"));
        let kernel = PathBuf::from(kernel);
        let dir = kernel.parent().expect("bzImage has a parent dir").to_path_buf();
        GuestImage { kernel, initrd: PathBuf::from(initrd), dir }
    })
}

/// A scratch directory unique to this test process.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rxvmm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    })
}

/// Writes built-in guest `name` to an ELF file and returns its path.
pub fn builtin_guest(name: &str) -> PathBuf {
    let path = scratch_dir().join(format!("{name}.elf"));
    let image = rxvmm::guests::build(name).unwrap_or_else(|e| panic!("build guest {name}: {e}"));
    // Write then rename: tests running in parallel may be reading `path`.
    let tmp = scratch_dir().join(format!("{name}.elf.{:?}", std::thread::current().id()));
    std::fs::write(&tmp, image).expect("write guest");
    std::fs::rename(&tmp, &path).expect("rename guest");
    path
}

/// Whether /dev/kvm opens; prints the SKIP line when it doesn't.
pub fn kvm_or_skip(test: &str) -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) => {
            println!("SKIP {test}: /dev/kvm not available ({e})");
            false
        }
    }
}

/// What an rxvmm run left behind.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn assert_stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn assert_stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs rxvmm with `args`, feeding `stdin`, killing it after `timeout`
/// (a hang is a test failure, reported as code None).
pub fn run_rxvmm(args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Run {
    let start = Instant::now();
    let mut child = Command::new(rxvmm())
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rxvmm");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
            // Keep the pipe open a while so the guest can read before EOF.
            std::thread::sleep(Duration::from_secs(600));
        });
    }
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait rxvmm") {
            break status.code();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Run { code, stdout, stderr, elapsed: start.elapsed() }
}

impl Run {
    /// Fails unless rxvmm exited by itself: a run killed at its timeout (a
    /// hung guest or VMM) is reported as such, with the end of its output.
    pub fn assert_finished(&self) -> &Self {
        assert!(
            self.code.is_some(),
            "rxvmm did not exit: killed after {:.0} s (hung, or far too slow)\n--- stdout (end)\n{}\n--- stderr (end)\n{}",
            self.elapsed.as_secs_f64(),
            tail(&self.stdout, 3000),
            tail(&self.stderr, 3000)
        );
        self
    }

    /// The guest's serial output as lines, without the `\r` its tty adds.
    pub fn stdout_lines(&self) -> impl Iterator<Item = &str> {
        self.stdout.lines().map(|l| l.trim_end_matches('\r'))
    }

    /// The value of the first stdout line that starts with `prefix`, if any.
    pub fn stdout_value(&self, prefix: &str) -> Option<&str> {
        self.stdout_lines().find_map(|l| l.strip_prefix(prefix))
    }
}

/// The last `max` bytes of `s` (on a char boundary), for failure messages.
pub fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// How [`run_rxvmm_with`] runs rxvmm.
#[derive(Debug, Clone)]
pub struct RunOptions<'a> {
    /// Extra environment variables.
    pub env: Vec<(&'a str, &'a str)>,
    /// `(marker, input)`: write `input` to stdin once stdout contains
    /// `marker` (stdin stays open, empty, until then and after).
    pub input_after: Option<(&'a str, &'a [u8])>,
    /// Kill rxvmm after this long (the run then has code None).
    pub timeout: Duration,
}

impl RunOptions<'_> {
    pub fn timeout(timeout: Duration) -> Self {
        RunOptions { env: Vec::new(), input_after: None, timeout }
    }
}

/// Runs rxvmm with `args` as [`run_rxvmm`] does, plus the environment and
/// the stdin written after a stdout marker that `opts` asks for.
pub fn run_rxvmm_with(args: &[&str], opts: &RunOptions) -> Run {
    let mut cmd = Command::new(rxvmm());
    cmd.args(args);
    for (key, value) in &opts.env {
        cmd.env(key, value);
    }
    run_bounded(cmd, opts.input_after, opts.timeout)
}

/// Runs `cmd` with piped stdio, killing it after `timeout` (code None).
/// With `input_after = Some((marker, input))`, `input` is written to its
/// stdin as soon as its stdout contains `marker`; stdin is closed only when
/// the process has ended, so a reader never sees an early EOF.
pub fn run_bounded(mut cmd: Command, input_after: Option<(&str, &[u8])>, timeout: Duration) -> Run {
    use std::sync::{Arc, Mutex};

    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let mut stdin = child.stdin.take();
    // stdout is collected as it arrives so the marker can be watched for.
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let mut out = child.stdout.take().expect("stdout pipe");
    let out_t = {
        let stdout = Arc::clone(&stdout);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => stdout.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        })
    };
    let mut err = child.stderr.take().expect("stderr pipe");
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let mut pending = input_after;
    let code = loop {
        if let Some((marker, input)) = pending {
            let seen = {
                let so_far = stdout.lock().unwrap_or_else(|e| e.into_inner());
                String::from_utf8_lossy(&so_far).contains(marker)
            };
            if seen {
                if let Some(pipe) = stdin.as_mut() {
                    // A failed write means the process is gone: its exit
                    // status and output tell the story.
                    let _ = pipe.write_all(input).and_then(|()| pipe.flush());
                }
                pending = None;
            }
        }
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status.code();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(stdin);
    let _ = out_t.join();
    let stdout = std::mem::take(&mut *stdout.lock().unwrap_or_else(|e| e.into_inner()));
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Run { code, stdout, stderr, elapsed: start.elapsed() }
}

/// The busybox binary of the default guest, extracted from its initramfs
/// (once per test process): the very code the guest runs, which runs on the
/// host too (it is static).
pub fn guest_busybox() -> &'static Path {
    static BUSYBOX: OnceLock<PathBuf> = OnceLock::new();
    BUSYBOX.get_or_init(|| {
        let initrd = &default_guest().initrd;
        let path = scratch_dir().join("busybox");
        let out = Command::new("bash")
            .args(["-c", r#"set -o pipefail; gzip -dc "$1" | cpio -i --quiet --to-stdout bin/busybox >"$2""#, "-"])
            .arg(initrd)
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run bash to extract busybox: {e}"));
        assert!(
            out.status.success(),
            "extracting bin/busybox from {} failed ({}; gzip and cpio are needed): {}",
            initrd.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let image = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert!(image.starts_with(b"\x7fELF"), "bin/busybox from {} is not an ELF file", initrd.display());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        path
    })
}

/// A directory with one symlink to [`guest_busybox`] per applet (`sh`,
/// `awk`, `sort`...): as `PATH`, it makes the host run exactly the guest's
/// tools.
pub fn guest_busybox_applets() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let busybox = guest_busybox();
        let out = Command::new(busybox)
            .arg("--list")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} on the host: {e}", busybox.display()));
        assert!(out.status.success(), "{} --list failed ({})", busybox.display(), out.status);
        let dir = scratch_dir().join("busybox-applets");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        for applet in String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|a| !a.is_empty()) {
            let link = dir.join(applet);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(busybox, &link)
                    .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
            }
        }
        dir
    })
}

/// `len` bytes from a fixed-seed generator (xorshift64*): the same content
/// for the same seed on every run, incompressible for the guest and host.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The SHA-256 of `path` as hex, computed on the host by the guest's own
/// busybox `sha256sum` (so guest and host agree on the format).
pub fn sha256_of_file(path: &Path) -> String {
    let out = Command::new(guest_busybox())
        .arg("sha256sum")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run busybox sha256sum on the host: {e}"));
    assert!(out.status.success(), "sha256sum {} failed ({})", path.display(), out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let hash = text.split_whitespace().next().unwrap_or_default();
    assert_eq!(hash.len(), 64, "unexpected sha256sum output: {text:?}");
    hash.to_owned()
}
