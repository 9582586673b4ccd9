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
    std::fs::write(&path, image).expect("write guest");
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
