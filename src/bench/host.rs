//! Facts about the host that the figures depend on, and finding QEMU.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use accel::kvm::KvmHost;

use super::report::Report;

/// What the host is, for the report's header.
#[derive(Debug, Clone)]
pub struct Host {
    pub kvm: KvmHost,
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
}

impl Host {
    pub fn probe() -> Host {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|v| v.split_once(':')))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        Host { kvm: accel::kvm::probe(), cpu_model, cpus, kernel }
    }

    /// Short machine name of the KVM kind.
    pub fn kvm_kind(&self) -> &'static str {
        match self.kvm {
            KvmHost::Hardware => "hardware",
            KvmHost::Pvm => "pvm",
            KvmHost::Unavailable(_) => "unavailable",
        }
    }
}

/// `name` in `$PATH`, as a shell would find it.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// First line of `<program> --version`, if it runs.
pub fn version_line(program: &Path) -> Option<String> {
    let out = Command::new(program).arg("--version").stdin(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty())
}

/// The 1-minute load average: other work on the host inflates wall-clock
/// figures (not CPU times), so the report shows it.
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next().map(str::to_owned)
}

/// The header facts every benchmark shows: CPU, host kernel, KVM kind, the
/// rxvmm binary and build profile, and the QEMU compared with (if any).
pub fn facts(report: &mut Report, host: &Host, exe: &Path, qemu: Option<&Result<PathBuf, String>>) {
    report.fact("cpu", "CPU", format!("{} ({} CPUs)", host.cpu_model, host.cpus));
    report.fact("kernel", "Host kernel", host.kernel.clone());
    report.fact("kvm", "KVM", host.kvm_kind());
    let detail = match host.kvm {
        KvmHost::Pvm => format!("{}; every guest figure includes that emulation", host.kvm.describe()),
        _ => host.kvm.describe(),
    };
    report.fact("kvm_detail", "KVM kind", detail);
    let profile = if cfg!(debug_assertions) { "debug build: not representative" } else { "release build" };
    report.fact("rxvmm", "rxvmm", format!("{} {} ({profile})", exe.display(), env!("CARGO_PKG_VERSION")));
    let qemu_fact = match qemu {
        Some(Ok(path)) => {
            let version = version_line(path).unwrap_or_else(|| "version unknown".into());
            format!("{} ({version})", path.display())
        }
        Some(Err(why)) => why.clone(),
        None => return,
    };
    report.fact("qemu", "QEMU", qemu_fact);
}

/// The load fact: the 1-minute load average at the start (`before`) and now.
pub fn load_fact(report: &mut Report, before: Option<String>) {
    if let (Some(before), Some(after)) = (before, load_average()) {
        let note = "1-minute load average before and after; other work on the host inflates \
                    wall-clock figures, not the CPU-time rows";
        report.fact("load", "Host load", format!("{before} → {after} ({note})"));
    }
}
