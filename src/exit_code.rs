//! Process exit codes: how a script tells what happened to the VM.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the guest powered off (or the user quit with Ctrl-A x) |
//! | 1 | VMM error: bad input, host failure |
//! | 2 | command-line usage error (clap's own code) |
//! | 3 | the guest rebooted (i8042 reset, ACPI reset, KVM reset event) |
//! | 4 | the guest crashed: triple fault, emulation failure, unhandled exit |

use devices::ExitReason;

pub const POWEROFF: u8 = 0;
pub const VMM_ERROR: u8 = 1;
pub const USAGE: u8 = 2;
pub const REBOOT: u8 = 3;
pub const GUEST_CRASH: u8 = 4;

/// The exit code for how the VM ended.
pub fn for_reason(reason: &ExitReason) -> u8 {
    match reason {
        ExitReason::Poweroff | ExitReason::UserQuit => POWEROFF,
        ExitReason::Reset => REBOOT,
        ExitReason::GuestCrash(_) => GUEST_CRASH,
        ExitReason::VmmError(_) => VMM_ERROR,
    }
}
