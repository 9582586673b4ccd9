//! How devices and vCPU threads ask the VMM to end the VM.

use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

/// Why the VM ends. The binary maps each to a process exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5).
    Poweroff,
    /// The guest asked for a reset (i8042, ACPI reset register, KVM system event).
    Reset,
    /// The guest crashed: triple fault, internal emulation error, panic device…
    GuestCrash(String),
    /// The VMM itself failed while running the guest.
    VmmError(String),
    /// The user ended the VM from the console (Ctrl-A x).
    UserQuit,
}

/// A one-shot "the VM should end" latch with an eventfd the main loop polls.
///
/// The first reason recorded wins: a reset that causes vCPUs to report being
/// kicked must not overwrite the reset itself.
pub struct VmExitSignal {
    reason: Mutex<Option<ExitReason>>,
    event: EventFd,
}

impl VmExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self { reason: Mutex::new(None), event: EventFd::new(libc::EFD_NONBLOCK)? })
    }

    /// Records `reason` unless one was recorded before, and wakes the main loop.
    pub fn request(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            log::debug!("VM exit requested: {reason:?}");
            *slot = Some(reason);
        }
        drop(slot);
        if let Err(e) = self.event.write(1) {
            log::error!("failed to signal VM exit: {e}");
        }
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The eventfd that becomes readable once an exit is requested.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = VmExitSignal::new().unwrap();
        assert_eq!(s.reason(), None);
        s.request(ExitReason::Reset);
        s.request(ExitReason::Poweroff);
        assert_eq!(s.reason(), Some(ExitReason::Reset));
        assert_eq!(s.event().read().unwrap(), 2);
    }
}
