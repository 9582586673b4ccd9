//! Bringing a vCPU thread out of `KVM_RUN` from any thread (Firecracker's
//! design: a flag, a real-time signal, and `kvm_run.immediate_exit`).
//!
//! Why it is race-free:
//! - The flag `kicked` is the truth; the signal and `immediate_exit` only
//!   wake the thread up. `kick` stores the flag *before* it looks for the
//!   thread, and `run` publishes its thread *before* its first flag check,
//!   both under the same mutex. So either `kick` finds the thread and
//!   signals it, or `run`'s next check sees the flag.
//! - `run` checks the flag before every `KVM_RUN`. A kick landing after that
//!   check but before the kernel enters the guest is not lost: its signal
//!   handler sets `immediate_exit`, so `KVM_RUN` returns `EINTR` at once
//!   instead of entering the guest. A kick during `KVM_RUN` interrupts it
//!   with `EINTR` (the signal is pending) and the handler sets
//!   `immediate_exit` as well. After every `EINTR` the loop clears
//!   `immediate_exit` and checks the flag again, so clearing never loses a
//!   kick: the flag was stored before the signal was sent.
//! - The signal is only sent while the thread is registered, under the
//!   mutex, and `run` deregisters under the same mutex before it returns,
//!   so `pthread_kill` never targets a thread that has left `run` (or
//!   exited). A signal still in flight when `run` deregisters finds the
//!   thread-local pointer cleared, or sets `immediate_exit` on a later run,
//!   which then sees a spurious `EINTR` and goes on: harmless.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use kvm_bindings::kvm_run;
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{register_signal_handler, unblock_signal, SIGRTMIN};

use super::KvmError;
use crate::VcpuKicker;

thread_local! {
    /// The `kvm_run` of the vCPU this thread is running, for the signal
    /// handler. Const-initialised without a destructor, so touching it from
    /// a signal handler is a plain TLS access.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

/// The kick signal: the first real-time signal, as Firecracker uses.
fn kick_signal() -> c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is set only while this thread is inside
        // `KvmVcpu::run`, which keeps the vCPU (and so its kvm_run mmap)
        // alive, and is cleared before `run` returns. A volatile byte write
        // is async-signal-safe, and KVM reads the field on its next entry.
        unsafe { ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick signal handler, once per process.
pub(crate) fn install_handler() -> Result<(), KvmError> {
    static INSTALLED: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    INSTALLED.get_or_init(|| register_signal_handler(kick_signal(), handle_kick)).map_err(KvmError::SignalHandler)
}

/// What a vCPU and its kickers share.
#[derive(Default)]
pub(crate) struct KickState {
    kicked: AtomicBool,
    /// The thread inside `run`, if any.
    thread: Mutex<Option<libc::pthread_t>>,
}

impl KickState {
    /// Consumes a pending kick.
    pub(crate) fn take(&self) -> bool {
        self.kicked.swap(false, Ordering::SeqCst)
    }

    /// Registers the calling thread as running the vCPU whose `kvm_run` is
    /// `run`, until the returned guard is dropped.
    pub(crate) fn enter(&self, run: *mut kvm_run) -> RunGuard<'_> {
        // Kicks must be able to interrupt this thread even if the VMM
        // blocked the signal; failure only costs kick latency.
        if let Err(e) = unblock_signal(kick_signal()) {
            log::warn!("cannot unblock the vCPU kick signal: {e}");
        }
        KVM_RUN.with(|c| c.set(run));
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        *self.lock_thread() = Some(me);
        RunGuard { state: self }
    }

    fn lock_thread(&self) -> std::sync::MutexGuard<'_, Option<libc::pthread_t>> {
        // The data is a plain thread id; a poisoned lock holds a valid one.
        self.thread.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl VcpuKicker for KickState {
    fn kick(&self) {
        self.kicked.store(true, Ordering::SeqCst);
        let thread = self.lock_thread();
        if let Some(t) = *thread {
            // SAFETY: `t` is registered only while its thread is inside
            // `run`, and `run` deregisters under this lock before leaving,
            // so the thread is alive while we hold the lock.
            let rc = unsafe { libc::pthread_kill(t, kick_signal()) };
            if rc != 0 {
                log::error!("kicking vCPU thread: pthread_kill failed with {rc}");
            }
        }
    }
}

/// Deregisters the running thread when `run` leaves (also on panic).
pub(crate) struct RunGuard<'a> {
    state: &'a KickState,
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        *self.state.lock_thread() = None;
        KVM_RUN.with(|c| c.set(ptr::null_mut()));
    }
}
