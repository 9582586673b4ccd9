//! The native oracle: cases run on the host CPU, at user level, in a forked
//! child process, so that nothing a case does can reach the test process.
//!
//! One child runs a whole batch without a trampoline: every case ends in a
//! signal (the `ud2` terminator raises SIGILL; a fault raises SIGSEGV,
//! SIGBUS or SIGFPE), and the handler, on an alternate stack, records the
//! registers from the signal's `ucontext` (GPRs, RIP, RFLAGS, and the
//! kernel's `trapno`, `err` and `cr2`), copies the data and stack pages out,
//! then loads the next case *into the `ucontext`* (GPRs, RFLAGS, RIP at
//! [`CODE`]) and returns: `rt_sigreturn` starts the next case. The child
//! starts the first case with a `ud2` of its own.
//!
//! Inputs and results live in a `MAP_SHARED` anonymous mapping made before
//! the fork. The code page is a memfd mapped twice: read + execute at
//! [`CODE`], and read + write elsewhere for the handler to fill.
//!
//! The child only makes async-signal-safe system calls and never allocates:
//! it is forked from a multi-threaded process. `alarm(1)` before each case
//! bounds a runaway one; the parent then reports a timeout.

use std::io;
use std::mem::size_of;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use libc::{c_int, c_void, siginfo_t, ucontext_t};

use super::{
    OracleError, Outcome, TestCase, Trap, UserRegs, CODE, DATA, GUARD_HIGH, GUARD_LOW, PAGE, STACK, USER_FLAGS,
    WINDOW_END,
};

/// Cases per child process.
const BATCH: usize = 2048;
const ALT_STACK: usize = 64 * 1024;
/// RFLAGS.TF and RFLAGS.AC: never left set for a case.
const TF_AC: u64 = (1 << 8) | (1 << 18);

/// The signals a case can end with.
const SIGNALS: [c_int; 5] = [libc::SIGILL, libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGTRAP];

/// `uc_mcontext.gregs` index of each GPR, in encoding order.
const GREGS: [c_int; 16] = [
    libc::REG_RAX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RBX,
    libc::REG_RSP,
    libc::REG_RBP,
    libc::REG_RSI,
    libc::REG_RDI,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
];

/// Child setup steps, for error reports.
const STAGES: [&str; 9] = [
    "none",
    "reserving the address window",
    "memfd_create",
    "ftruncate",
    "mapping the code page",
    "mapping the code alias",
    "mapping data/stack/guards",
    "sigaltstack",
    "sigaction",
];

#[repr(C)]
struct Header {
    count: u64,
    /// The case in flight.
    current: u64,
    started: u64,
    /// Cases finished.
    done: u64,
    /// The child's writable alias of the code page.
    code_alias: u64,
    setup_stage: u64,
    setup_errno: u64,
}

/// One case: inputs in, results out (registers and pages in place).
#[repr(C)]
struct Slot {
    code_len: u64,
    /// GPRs in encoding order, then RFLAGS.
    regs: [u64; 17],
    trapno: u64,
    err: u64,
    cr2: u64,
    rip: u64,
    signo: u64,
    code: [u8; PAGE],
    data: [u8; PAGE],
    stack: [u8; PAGE],
}

const SLOTS_AT: usize = 64;
const _: () = assert!(size_of::<Header>() <= SLOTS_AT);

/// The shared anonymous mapping of one batch.
struct Shared {
    base: *mut u8,
    len: usize,
    /// Slots in use by the current batch.
    count: usize,
    /// Slots the mapping holds.
    capacity: usize,
}

thread_local! {
    /// Each thread's batch area, kept between batches: a fresh shared
    /// mapping costs a page fault per page touched.
    static AREA: std::cell::RefCell<Option<Shared>> = const { std::cell::RefCell::new(None) };
}

impl Shared {
    /// A mapping for `count` slots, reused if this thread has one as large.
    fn with<T>(count: usize, f: impl FnOnce(&mut Shared) -> T) -> Result<T, OracleError> {
        AREA.with(|area| {
            let mut area = area.borrow_mut();
            let reuse = matches!(&*area, Some(s) if s.capacity >= count);
            if !reuse {
                *area = None;
                *area = Some(Shared::new(count)?);
            }
            let Some(shared) = area.as_mut() else {
                return Err(OracleError::Scaffold("batch area vanished".into()));
            };
            shared.count = count;
            *shared.header() = Header {
                count: count as u64,
                current: 0,
                started: 0,
                done: 0,
                code_alias: 0,
                setup_stage: 0,
                setup_errno: 0,
            };
            Ok(f(shared))
        })
    }

    fn new(count: usize) -> Result<Shared, OracleError> {
        let len = SLOTS_AT + count * size_of::<Slot>();
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os_error("mmap (shared batch area)"));
        }
        Ok(Shared { base: base.cast(), len, count, capacity: count })
    }

    fn header(&mut self) -> &mut Header {
        // SAFETY: the mapping starts with a zero-initialised, suitably
        // aligned Header (all-integer repr(C)), and no child is running
        // while the parent holds this borrow.
        unsafe { &mut *self.base.cast::<Header>() }
    }

    fn slot(&mut self, i: usize) -> Option<&mut Slot> {
        // SAFETY: as for `header`; slot `i < count` lies inside the mapping.
        (i < self.count).then(|| unsafe { &mut *slot_ptr(self.base, i as u64) })
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no borrow outlives self.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

fn slot_ptr(base: *mut u8, i: u64) -> *mut Slot {
    base.wrapping_add(SLOTS_AT + i as usize * size_of::<Slot>()).cast()
}

fn os_error(op: &'static str) -> OracleError {
    OracleError::Os { op, source: io::Error::last_os_error() }
}

/// Runs one case natively.
pub fn run_native(case: &TestCase) -> Result<Outcome, OracleError> {
    run_native_batch(std::slice::from_ref(case))?
        .pop()
        .ok_or_else(|| OracleError::Scaffold("empty native batch result".into()))
}

/// Runs cases natively, one child process per batch of 2048.
pub fn run_native_batch(cases: &[TestCase]) -> Result<Vec<Outcome>, OracleError> {
    let mut out = Vec::with_capacity(cases.len());
    for chunk in cases.chunks(BATCH) {
        out.extend(run_chunk(chunk)?);
    }
    Ok(out)
}

fn check(case: &TestCase) -> Result<(), OracleError> {
    let bad = |what| OracleError::BadCase { seed: case.seed, what };
    if case.code.len() < 2 || case.code.len() > PAGE {
        return Err(bad("code must be 2 to 4096 bytes"));
    }
    if case.data.len() != PAGE || case.stack.len() != PAGE {
        return Err(bad("data and stack must be 4096 bytes each"));
    }
    Ok(())
}

fn run_chunk(cases: &[TestCase]) -> Result<Vec<Outcome>, OracleError> {
    cases.iter().try_for_each(check)?;
    Shared::with(cases.len(), |shared| run_in(shared, cases))?
}

fn run_in(shared: &mut Shared, cases: &[TestCase]) -> Result<Vec<Outcome>, OracleError> {
    for (i, case) in cases.iter().enumerate() {
        let Some(slot) = shared.slot(i) else { break };
        slot.code_len = case.code.len() as u64;
        slot.code[..case.code.len()].copy_from_slice(&case.code);
        slot.regs[..16].copy_from_slice(&case.init.gprs);
        slot.regs[16] = case.init.rflags;
        slot.data.copy_from_slice(&case.data);
        slot.stack.copy_from_slice(&case.stack);
    }
    // SAFETY: fork has no memory-safety preconditions; the child runs only
    // `child_main`, which makes no allocation and takes no lock.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_error("fork"));
    }
    if pid == 0 {
        // SAFETY: in the child, which never returns from here.
        unsafe { child_main(shared.base, SLOTS_AT + cases.len() * size_of::<Slot>()) }
    }
    let status = wait(pid)?;
    let header = shared.header();
    if header.setup_stage != 0 {
        return Err(OracleError::ChildSetup {
            stage: STAGES.get(header.setup_stage as usize).copied().unwrap_or("unknown"),
            errno: header.setup_errno as i32,
        });
    }
    let done = header.done as usize;
    let clean = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if done != cases.len() || !clean {
        let seed = cases.get(done).map_or(0, |c| c.seed);
        if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGALRM {
            return Err(OracleError::Timeout { seed });
        }
        return Err(OracleError::ChildDied { seed, status: describe(status) });
    }
    let mut outcomes = Vec::with_capacity(cases.len());
    for (i, case) in cases.iter().enumerate() {
        let Some(slot) = shared.slot(i) else { break };
        let mut regs = UserRegs::default();
        regs.gprs.copy_from_slice(&slot.regs[..16]);
        regs.rflags = slot.regs[16];
        let trap = Trap {
            vector: u8::try_from(slot.trapno).unwrap_or(u8::MAX),
            error_code: slot.err,
            cr2: slot.cr2,
            rip: slot.rip,
        };
        outcomes.push(Outcome::from_trap(case, trap, regs, slot.data.to_vec(), slot.stack.to_vec()));
    }
    Ok(outcomes)
}

fn wait(pid: libc::pid_t) -> Result<c_int, OracleError> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(os_error("waitpid"));
        }
    }
}

fn describe(status: c_int) -> String {
    if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else {
        format!("wait status {status:#x}")
    }
}

/// The shared area, for the signal handler (set in the child only).
static SHARED: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());

/// Records a failed setup step and leaves.
///
/// # Safety
/// `header` points at the shared area's header.
unsafe fn fail(header: *mut Header, stage: u64) -> ! {
    // SAFETY: per the contract; errno is thread-local and readable.
    unsafe {
        (*header).setup_errno = *libc::__errno_location() as u64;
        (*header).setup_stage = stage;
        libc::_exit(2)
    }
}

/// The child: maps the oracle's pages, installs the handler, and starts the
/// first case by raising #UD itself.
///
/// # Safety
/// Only in a freshly forked child; `shared` is the batch's shared area.
unsafe fn child_main(shared: *mut u8, shared_len: usize) -> ! {
    SHARED.store(shared, Ordering::Relaxed);
    let h = shared.cast::<Header>();
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: plain system calls on addresses this process reserves here
    // (MAP_FIXED_NOREPLACE fails rather than replacing anything), on the
    // memfd it creates, and on fresh anonymous mappings.
    unsafe {
        libc::alarm(2);
        // Fork copies no page-table entries for shared mappings: fault the
        // batch's part of the area in at once rather than page by page (a
        // hint: on failure, the pages just fault in as they are touched).
        libc::madvise(shared.cast(), shared_len, libc::MADV_POPULATE_WRITE);
        let window_len = (WINDOW_END - CODE) as usize;
        let at = |a: u64| a as *mut c_void;
        let r = libc::mmap(at(CODE), window_len, libc::PROT_NONE, anon | libc::MAP_FIXED_NOREPLACE, -1, 0);
        if r != at(CODE) {
            fail(h, 1);
        }
        let fd = libc::memfd_create(c"rxvmm-oracle-code".as_ptr(), libc::MFD_CLOEXEC);
        if fd < 0 {
            fail(h, 2);
        }
        if libc::ftruncate(fd, PAGE as libc::off_t) != 0 {
            fail(h, 3);
        }
        let shared_fixed = libc::MAP_SHARED | libc::MAP_FIXED;
        if libc::mmap(at(CODE), PAGE, libc::PROT_READ | libc::PROT_EXEC, shared_fixed, fd, 0) != at(CODE) {
            fail(h, 4);
        }
        let alias = libc::mmap(ptr::null_mut(), PAGE, rw, libc::MAP_SHARED, fd, 0);
        if alias == libc::MAP_FAILED {
            fail(h, 5);
        }
        (*h).code_alias = alias as u64;
        if libc::mprotect(at(DATA), PAGE, rw) != 0
            || libc::mprotect(at(STACK), PAGE, rw) != 0
            || libc::munmap(at(GUARD_LOW), PAGE) != 0
            || libc::munmap(at(GUARD_HIGH), PAGE) != 0
        {
            fail(h, 6);
        }
        let alt = libc::mmap(ptr::null_mut(), ALT_STACK, rw, anon, -1, 0);
        let ss = libc::stack_t { ss_sp: alt, ss_flags: 0, ss_size: ALT_STACK };
        if alt == libc::MAP_FAILED || libc::sigaltstack(&ss, ptr::null_mut()) != 0 {
            fail(h, 7);
        }
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigfillset(&mut sa.sa_mask);
        let mut unblock: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut unblock);
        for sig in SIGNALS {
            if libc::sigaction(sig, &sa, ptr::null_mut()) != 0 {
                fail(h, 8);
            }
            libc::sigaddset(&mut unblock, sig);
        }
        libc::sigprocmask(libc::SIG_UNBLOCK, &unblock, ptr::null_mut());
        std::arch::asm!("ud2", options(noreturn));
    }
}

extern "C" fn on_signal(signo: c_int, _info: *mut siginfo_t, ctx: *mut c_void) {
    let shared = SHARED.load(Ordering::Relaxed);
    if shared.is_null() || ctx.is_null() {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(3) };
    }
    // SAFETY: only the child installs this handler, after setting SHARED;
    // the kernel passes a valid ucontext for SA_SIGINFO handlers.
    unsafe { next_case(shared, signo, &mut *ctx.cast::<ucontext_t>()) }
}

/// Records the case that just ended (if any) and loads the next into `uc`.
///
/// # Safety
/// Child only, from the signal handler: `shared` is the batch area, and the
/// oracle's pages and the code alias are mapped.
unsafe fn next_case(shared: *mut u8, signo: c_int, uc: &mut ucontext_t) {
    // SAFETY: per the contract; the parent is blocked in waitpid, so this
    // process is the only one touching the shared area.
    unsafe {
        let h = &mut *shared.cast::<Header>();
        let g = &mut uc.uc_mcontext.gregs;
        let reg = |r: c_int| r as usize;
        if h.started != 0 && h.current < h.count {
            let s = &mut *slot_ptr(shared, h.current);
            for (i, r) in GREGS.iter().enumerate() {
                s.regs[i] = g[reg(*r)] as u64;
            }
            s.regs[16] = g[reg(libc::REG_EFL)] as u64;
            s.trapno = g[reg(libc::REG_TRAPNO)] as u64;
            s.err = g[reg(libc::REG_ERR)] as u64;
            s.cr2 = g[reg(libc::REG_CR2)] as u64;
            s.rip = g[reg(libc::REG_RIP)] as u64;
            s.signo = signo as u64;
            ptr::copy_nonoverlapping(DATA as *const u8, s.data.as_mut_ptr(), PAGE);
            ptr::copy_nonoverlapping(STACK as *const u8, s.stack.as_mut_ptr(), PAGE);
            h.current += 1;
            h.done = h.current;
        }
        h.started = 1;
        if h.current >= h.count {
            libc::_exit(0);
        }
        let s = &*slot_ptr(shared, h.current);
        let alias = h.code_alias as *mut u8;
        let len = (s.code_len as usize).min(PAGE);
        ptr::copy_nonoverlapping(s.code.as_ptr(), alias, len);
        // Anything run past the code traps (INT3).
        ptr::write_bytes(alias.add(len), 0xcc, PAGE - len);
        ptr::copy_nonoverlapping(s.data.as_ptr(), DATA as *mut u8, PAGE);
        ptr::copy_nonoverlapping(s.stack.as_ptr(), STACK as *mut u8, PAGE);
        for (i, r) in GREGS.iter().enumerate() {
            g[reg(*r)] = s.regs[i] as i64;
        }
        let flags = g[reg(libc::REG_EFL)] as u64;
        g[reg(libc::REG_EFL)] = ((flags & !(USER_FLAGS | TF_AC)) | (s.regs[16] & USER_FLAGS)) as i64;
        g[reg(libc::REG_RIP)] = CODE as i64;
        libc::alarm(1);
    }
}
