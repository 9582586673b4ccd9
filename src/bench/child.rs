//! Runs one child process and times it: lines on its stdout, its exit, and
//! its peak RSS from `wait4`.
//!
//! One thread, one `poll` over stdout, stderr and a pidfd: each read is
//! timestamped the moment it arrives, and the exit is seen when it happens
//! (not when the pipes close), without helper threads competing with the
//! child for this host's few CPUs.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Lines longer than this are matched on their first `MAX_LINE` bytes only,
/// so a guest printing without newlines can't grow the buffer.
const MAX_LINE: usize = 4096;
/// Stderr kept for failure messages.
const MAX_STDERR: usize = 16 * 1024;
/// After a kill, how long to wait for the end to show before reaping anyway.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// Records when the first line starting with each pattern was completed.
#[derive(Debug)]
pub struct LineClock {
    patterns: Vec<String>,
    seen: Vec<Option<Duration>>,
    /// For each pattern, the text of the line that matched it first.
    texts: Vec<Option<String>>,
    line: Vec<u8>,
    /// The last complete line that had any text, for failure messages.
    last: Vec<u8>,
}

impl LineClock {
    /// `patterns` are line prefixes; a trailing newline in them is ignored,
    /// so the guests' `*_LINE` constants can be passed as they are.
    pub fn new(patterns: &[&str]) -> Self {
        Self {
            patterns: patterns.iter().map(|p| p.trim_end_matches('\n').to_owned()).collect(),
            seen: vec![None; patterns.len()],
            texts: vec![None; patterns.len()],
            line: Vec::new(),
            last: Vec::new(),
        }
    }

    /// Takes the next chunk of output, read at `at`. A line counts when its
    /// newline arrives, whatever chunks it was split into.
    pub fn feed(&mut self, bytes: &[u8], at: Duration) {
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            let (body, complete) = match piece.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (piece, false),
            };
            let room = MAX_LINE.saturating_sub(self.line.len());
            self.line.extend_from_slice(&body[..body.len().min(room)]);
            if complete {
                self.end_line(at);
            }
        }
    }

    fn end_line(&mut self, at: Duration) {
        // QEMU's and terminals' CRLF endings count as plain newlines, and
        // terminal control sequences before the text (firmware clearing
        // the screen) don't hide a line's start.
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        let line = skip_escapes(line);
        for ((pattern, seen), text) in self.patterns.iter().zip(self.seen.iter_mut()).zip(self.texts.iter_mut()) {
            if seen.is_none() && line.starts_with(pattern.as_bytes()) {
                *seen = Some(at);
                *text = Some(String::from_utf8_lossy(line).into_owned());
            }
        }
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            self.last.clear();
            self.last.extend_from_slice(line);
        }
        self.line.clear();
    }

    /// The last line with any text in it, lossily decoded: the unfinished
    /// one if it has text (a guest that stopped mid-line), else the last
    /// complete one.
    pub fn last_line(&self) -> String {
        let partial = skip_escapes(&self.line);
        let line = if partial.iter().any(|b| !b.is_ascii_whitespace()) { partial } else { &self.last };
        String::from_utf8_lossy(line).trim().to_owned()
    }

    /// For each pattern, when its line was first seen.
    pub fn seen(&self) -> &[Option<Duration>] {
        &self.seen
    }

    /// For each pattern, the line that matched it (without its line end).
    pub fn texts(&self) -> &[Option<String>] {
        &self.texts
    }

    pub fn all_seen(&self) -> bool {
        self.seen.iter().all(Option::is_some)
    }
}

/// `line` past any leading ANSI escape sequences (`ESC c`, `ESC [ … final`).
fn skip_escapes(mut line: &[u8]) -> &[u8] {
    while let [0x1b, rest @ ..] = line {
        line = match rest {
            [b'[', csi @ ..] => {
                // Parameters and intermediates, then one final byte 0x40..=0x7e.
                let end = csi.iter().position(|b| (0x40..=0x7e).contains(b)).map_or(csi.len(), |i| i + 1);
                &csi[end..]
            }
            [_, after @ ..] => after,
            [] => rest,
        };
    }
    line
}

/// What to run and when to give up on it.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Line prefixes to timestamp (see [`LineClock`]).
    pub markers: Vec<String>,
    /// Whole-run limit; the child is killed when it passes.
    pub timeout: Duration,
    /// Once every marker was seen, how long the child may take to exit by
    /// itself before it is killed (QEMU may have no way to power off).
    pub exit_grace: Duration,
}

impl ChildSpec {
    /// The command line, for the report.
    pub fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

/// How the child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Code(c) => write!(f, "exit code {c}"),
            Ended::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// One timed run. Times are from just before the spawn.
#[derive(Debug)]
pub struct ChildRun {
    /// Per marker, when its line arrived.
    pub marks: Vec<Option<Duration>>,
    /// Per marker, the whole line that matched it (results the guest
    /// prints after a marker's prefix).
    pub lines: Vec<Option<String>>,
    /// When the child exited by itself; `None` if it had to be killed.
    pub exited_after: Option<Duration>,
    /// Why the bench killed it, if it did.
    pub killed: Option<&'static str>,
    pub ended: Ended,
    /// `ru_maxrss` in KiB. Linux folds the RSS of the forked copy of this
    /// process into it at `exec`, so it is never below [`spawn_floor_kib`].
    pub max_rss_kib: u64,
    /// CPU time the child spent in user space and in the kernel.
    pub user_cpu: Duration,
    pub sys_cpu: Duration,
    pub stderr: String,
    /// The last line with text on stdout (the guest's serial console).
    pub last_line: String,
}

impl ChildRun {
    /// The first stderr line that says what went wrong, skipping warnings;
    /// the first line if all are warnings.
    pub fn stderr_reason(&self) -> Option<&str> {
        let mut lines = self.stderr.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.clone().next();
        lines.find(|l| !l.to_ascii_lowercase().contains("warn")).or(first)
    }
}

/// Why a child could not be run or watched (not: why it failed).
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("starting {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("watching child {pid}")]
    Watch {
        pid: i32,
        #[source]
        source: io::Error,
    },
}

/// Kills and reaps the child unless it was reaped, so an error path never
/// leaves a VM running. The pid can't be reused before the reap.
struct Reaper {
    pid: libc::pid_t,
    reaped: bool,
}

impl Reaper {
    fn kill(&self) {
        // SAFETY: plain syscall on our own unreaped child; the pid can't
        // have been recycled yet.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    /// Blocking `wait4`: the exit status and the rusage.
    fn wait(&mut self) -> io::Result<(i32, libc::rusage)> {
        let mut status = 0;
        // SAFETY: rusage is plain data that wait4 fills.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: valid pointers to locals; pid is our child.
            let r = unsafe { libc::wait4(self.pid, &mut status, 0, &mut usage) };
            if r == self.pid {
                self.reaped = true;
                return Ok((status, usage));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            let _ = self.wait();
        }
    }
}

/// A pidfd for `pid`: readable once the process has exited.
fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the syscall just returned this fd and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The child's open pipes and pidfd, polled together.
struct Watched {
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    pidfd: Option<OwnedFd>,
}

const OUT: usize = 0;
const ERR: usize = 1;
const PID: usize = 2;

impl Watched {
    fn fds(&self) -> [Option<RawFd>; 3] {
        [
            self.stdout.as_ref().map(AsRawFd::as_raw_fd),
            self.stderr.as_ref().map(AsRawFd::as_raw_fd),
            self.pidfd.as_ref().map(AsRawFd::as_raw_fd),
        ]
    }

    /// Waits up to `timeout` for events; returns which of OUT/ERR/PID fired.
    fn poll(&self, timeout: Duration) -> io::Result<[bool; 3]> {
        let fds = self.fds();
        let mut pollfds: Vec<libc::pollfd> =
            fds.iter().flatten().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
        // Round up so a sub-millisecond remainder doesn't spin.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: pollfds is a valid array of its length.
        let r = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok([false; 3]) } else { Err(e) };
        }
        let mut ready = [false; 3];
        let mut polled = pollfds.iter();
        for (slot, fd) in fds.iter().enumerate() {
            if fd.is_some() {
                ready[slot] = polled.next().is_some_and(|p| p.revents != 0);
            }
        }
        Ok(ready)
    }
}

/// Reads what is there; `None` at end of file.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match r.read(buf) {
            Ok(0) => return Ok(None),
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Runs `spec` once: stdin from /dev/null, stdout and stderr captured.
pub fn run_child(spec: &ChildSpec) -> Result<ChildRun, ChildError> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Any pre_exec hook makes std fork instead of posix_spawn (vfork). That
    // matters for ru_maxrss: exec folds the old mm's peak RSS into it, and
    // under vfork the old mm is this whole process; a forked copy holds only
    // our anonymous pages, so the floor drops to about 1 MiB (see
    // `spawn_floor_kib`).
    // SAFETY: the hook runs between fork and exec and does nothing, so it
    // can't touch locks or allocate.
    unsafe { cmd.pre_exec(|| Ok(())) };
    let markers: Vec<&str> = spec.markers.iter().map(String::as_str).collect();
    let mut clock = LineClock::new(&markers);

    let start = Instant::now();
    let mut child =
        cmd.spawn().map_err(|source| ChildError::Spawn { program: spec.program.display().to_string(), source })?;
    // Linux pids are positive i32s, so the cast can't wrap.
    let pid = child.id() as libc::pid_t;
    let mut reaper = Reaper { pid, reaped: false };
    let watch_err = |source| ChildError::Watch { pid, source };
    let mut w = Watched { stdout: child.stdout.take(), stderr: child.stderr.take(), pidfd: pidfd_open(pid) };
    let have_pidfd = w.pidfd.is_some();

    let mut buf = [0u8; 8192];
    let mut stderr = Vec::new();
    let mut exited_after = None;
    let mut killed = None;
    let mut markers_done_at = None;
    // Set once the pidfd fired: the process is gone, its output is in the pipes.
    let mut gone = false;
    loop {
        let pipes_open = w.stdout.is_some() || w.stderr.is_some();
        if !pipes_open && (gone || !have_pidfd) {
            break;
        }
        let now = start.elapsed();
        if markers_done_at.is_none() && clock.all_seen() {
            markers_done_at = Some(now);
        }
        let (limit, why) = match markers_done_at {
            Some(t) if t + spec.exit_grace < spec.timeout => {
                (t + spec.exit_grace, "did not exit after its last marker line")
            }
            _ => (spec.timeout, "timed out"),
        };
        if !gone && killed.is_none() && now >= limit {
            reaper.kill();
            killed = Some(why);
        }
        let wait = if gone {
            // Drain what the process left; a grandchild holding the pipes
            // open must not keep us here.
            Duration::ZERO
        } else if killed.is_some() {
            KILL_WAIT
        } else {
            limit.saturating_sub(now)
        };
        let ready = w.poll(wait).map_err(watch_err)?;
        if ready == [false; 3] && (gone || killed.is_some()) {
            break;
        }
        let at = start.elapsed();
        if ready[OUT] {
            if let Some(out) = w.stdout.as_mut() {
                match read_some(out, &mut buf).map_err(watch_err)? {
                    Some(n) => clock.feed(&buf[..n], at),
                    None => w.stdout = None,
                }
            }
        }
        if ready[ERR] {
            if let Some(err) = w.stderr.as_mut() {
                match read_some(err, &mut buf).map_err(watch_err)? {
                    Some(n) => {
                        let room = MAX_STDERR.saturating_sub(stderr.len());
                        stderr.extend_from_slice(&buf[..n.min(room)]);
                    }
                    None => w.stderr = None,
                }
            }
        }
        if ready[PID] {
            w.pidfd = None;
            gone = true;
            if killed.is_none() {
                exited_after = Some(at);
            }
        }
    }
    let (status, usage) = reaper.wait().map_err(watch_err)?;
    if !have_pidfd && killed.is_none() {
        // Without a pidfd the exit is only known once the pipes closed.
        exited_after = Some(start.elapsed());
    }
    let ended = if libc::WIFSIGNALED(status) {
        Ended::Signal(libc::WTERMSIG(status))
    } else {
        Ended::Code(libc::WEXITSTATUS(status))
    };
    Ok(ChildRun {
        marks: clock.seen().to_vec(),
        lines: clock.texts().to_vec(),
        exited_after,
        killed,
        ended,
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        user_cpu: timeval(usage.ru_utime),
        sys_cpu: timeval(usage.ru_stime),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        last_line: clock.last_line(),
    })
}

fn timeval(t: libc::timeval) -> Duration {
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let micros = u32::try_from(t.tv_usec).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(micros.into())
}

/// The lowest `ru_maxrss` a child spawned by [`run_child`] can report:
/// that of `/bin/true` (about 1 MiB by itself), spawned the same way.
pub fn spawn_floor_kib() -> Option<u64> {
    let spec = ChildSpec {
        program: "/bin/true".into(),
        args: Vec::new(),
        markers: Vec::new(),
        timeout: Duration::from_secs(10),
        exit_grace: Duration::from_secs(10),
    };
    run_child(&spec).ok().map(|r| r.max_rss_kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn line_counts_when_its_newline_arrives() {
        let mut c = LineClock::new(&["rxvmm-hello: hello from the guest\n", "done"]);
        c.feed(b"boot noise\nrxvmm-hel", ms(1));
        c.feed(b"lo: hello from the guest", ms(2));
        assert_eq!(c.seen(), &[None, None]);
        c.feed(b"\r\nnot done\ndone", ms(3));
        assert_eq!(c.seen(), &[Some(ms(3)), None]);
        assert!(!c.all_seen());
        c.feed(b" and more\n", ms(4));
        assert_eq!(c.seen(), &[Some(ms(3)), Some(ms(4))]);
        assert!(c.all_seen());
    }

    #[test]
    fn first_occurrence_wins_and_prefixes_are_line_starts() {
        let mut c = LineClock::new(&["rxvmm-boot: entry="]);
        c.feed(b"x rxvmm-boot: entry=pvh\n", ms(1));
        assert_eq!(c.seen(), &[None]);
        c.feed(b"rxvmm-boot: entry=pvh\nrxvmm-boot: entry=pvh\n", ms(2));
        c.feed(b"rxvmm-boot: entry=linux64\n", ms(3));
        assert_eq!(c.seen(), &[Some(ms(2))]);
        assert_eq!(c.texts(), &[Some("rxvmm-boot: entry=pvh".to_owned())]);
    }

    #[test]
    fn escape_sequences_before_a_line_are_skipped() {
        let mut c = LineClock::new(&["rxvmm: userspace up"]);
        c.feed(b"\x1bc\x1b[?7l\x1b[2Jrxvmm: userspace up\r\n  \n", ms(5));
        assert_eq!(c.seen(), &[Some(ms(5))]);
        assert_eq!(c.last_line(), "rxvmm: userspace up");
        assert_eq!(skip_escapes(b"\x1b["), b"");
        assert_eq!(skip_escapes(b"\x1b"), b"");
    }

    #[test]
    fn long_lines_are_capped_but_still_end() {
        let mut c = LineClock::new(&["abc"]);
        c.feed(&vec![b'z'; 3 * MAX_LINE], ms(1));
        assert!(c.line.len() <= MAX_LINE);
        c.feed(b"\nabc\n", ms(2));
        assert_eq!(c.seen(), &[Some(ms(2))]);
    }

    #[test]
    fn runs_a_real_child_and_reports_lines_exit_and_stderr() {
        let spec = ChildSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo 'warning: noise' >&2; echo start; echo oops >&2; echo done; exit 7".into()],
            markers: vec!["start".into(), "done".into(), "never".into()],
            timeout: Duration::from_secs(30),
            exit_grace: Duration::from_secs(30),
        };
        let run = run_child(&spec).expect("run /bin/sh");
        assert!(run.marks[0].is_some() && run.marks[1].is_some() && run.marks[2].is_none());
        assert!(run.marks[0] <= run.marks[1]);
        assert_eq!(run.ended, Ended::Code(7));
        assert!(run.exited_after.is_some() && run.killed.is_none());
        assert_eq!(run.stderr_reason(), Some("oops"));
        assert_eq!(run.last_line, "done");
    }

    #[test]
    fn a_child_that_outlives_its_markers_is_killed() {
        let spec = ChildSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo ready; exec sleep 30".into()],
            markers: vec!["ready".into()],
            timeout: Duration::from_secs(30),
            exit_grace: Duration::from_millis(50),
        };
        let run = run_child(&spec).expect("run /bin/sh");
        assert!(run.marks[0].is_some());
        assert_eq!(run.killed, Some("did not exit after its last marker line"));
        assert_eq!(run.exited_after, None);
        assert_eq!(run.ended, Ended::Signal(libc::SIGKILL));
    }
}
