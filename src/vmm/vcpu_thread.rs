//! One host thread per vCPU, looping in the engine's `run`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use accel::{Vcpu, VcpuExit, VcpuKicker};
use devices::{ExitReason, VmExitSignal};

/// A running vCPU thread and the handle that brings it back.
pub struct VcpuThread {
    id: u8,
    kicker: Arc<dyn VcpuKicker>,
    handle: Option<JoinHandle<()>>,
}

impl VcpuThread {
    /// Starts `vcpu` on its own thread. Its exits that end the VM are
    /// reported through `exit`; `stop` tells it a kick means "return".
    pub fn spawn(mut vcpu: Box<dyn Vcpu>, exit: Arc<VmExitSignal>, stop: Arc<AtomicBool>) -> std::io::Result<Self> {
        let id = vcpu.id();
        let kicker = vcpu.kicker();
        let handle = std::thread::Builder::new().name(format!("vcpu{id}")).spawn(move || {
            run_loop(vcpu.as_mut(), &exit, &stop);
        })?;
        Ok(Self { id, kicker, handle: Some(handle) })
    }

    pub fn kick(&self) {
        self.kicker.kick();
    }

    /// Waits for the thread; a panic in it is reported, not propagated.
    pub fn join(mut self) {
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                log::error!("vCPU {} thread panicked", self.id);
            }
        }
    }
}

fn run_loop(vcpu: &mut dyn Vcpu, exit: &VmExitSignal, stop: &AtomicBool) {
    let id = vcpu.id();
    loop {
        let reason = match vcpu.run() {
            Ok(VcpuExit::Kicked) => {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                continue;
            }
            Ok(VcpuExit::Reset) => ExitReason::Reset,
            Ok(VcpuExit::Poweroff) => ExitReason::Poweroff,
            Ok(VcpuExit::Shutdown) => {
                ExitReason::GuestCrash(format!("vCPU {id}: triple fault (CPU shutdown)\n{}", vcpu.dump_state()))
            }
            Ok(VcpuExit::Crash(what)) => ExitReason::GuestCrash(format!("vCPU {id}: {what}\n{}", vcpu.dump_state())),
            Err(e) => ExitReason::VmmError(format!("vCPU {id}: {}", error_chain(&e))),
        };
        exit.request(reason);
        return;
    }
}

/// `e` and its sources, "outer: inner: …", as anyhow's `{:#}` prints them.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
