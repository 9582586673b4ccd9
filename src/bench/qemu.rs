//! QEMU as the reference VMM: finding it, and its command lines (microvm
//! with a PVH guest for `bench kvm`, the Linux guest for `bench boot` and
//! `bench blk`). The
//! bench never installs it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::boot::LinuxBoot;
use super::child::ChildSpec;
use super::host;
use crate::guests;
use crate::layout::pio;

const QEMU: &str = "qemu-system-x86_64";
const QEMU_INSTALL: &str = "apt-get install qemu-system-x86";
/// How long QEMU may run on after the last marker before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// QEMU's machine for the Linux guest. microvm would be the closest to
/// rxvmm, but under TCG the guest hangs in it in about 3 boots of 10, right
/// after "tsc: Marking TSC unstable" (no kvmclock, and no PIT or HPET to
/// calibrate against; pit=on doesn't help); pc boots it fastest (q35 is no
/// faster).
pub const LINUX_MACHINE: &str = "pc";

/// Which QEMU to compare with.
#[derive(Debug, Clone)]
pub enum QemuChoice {
    /// `qemu-system-x86_64` from `$PATH`, if installed.
    Search,
    Path(PathBuf),
    Off,
}

/// The QEMU binary, or why there is none (said on stderr too, with how to
/// install it).
pub fn find(choice: &QemuChoice) -> Result<PathBuf, String> {
    match choice {
        QemuChoice::Off => Err("--no-qemu".into()),
        QemuChoice::Path(p) => Ok(p.clone()),
        QemuChoice::Search => host::find_in_path(QEMU).ok_or_else(|| {
            eprintln!(
                "rxvmm bench: {QEMU} not found, skipping the QEMU comparison; \
                 to add it: {QEMU_INSTALL}"
            );
            format!("{QEMU} not installed (Debian: `{QEMU_INSTALL}`)")
        }),
    }
}

/// QEMU microvm running `kernel` (a PVH ELF) with the serial console on
/// stdio. microvm has no device at the ACPI power port the guests write to
/// power off, so isa-debug-exit sits there and QEMU exits with
/// [`poweroff_code`]; should it not exit, the run is killed after the last
/// marker.
pub fn spec(qemu: &Path, kernel: &Path, mem_mib: u32, markers: Vec<String>, timeout: Duration) -> ChildSpec {
    let exit_dev = format!("isa-debug-exit,iobase={:#x},iosize=1", pio::ACPI_POWER);
    let mut args = common_args("kvm", "microvm", mem_mib);
    args.extend(["-device".into(), exit_dev.into(), "-kernel".into(), kernel.into()]);
    ChildSpec { program: qemu.to_owned(), args, markers, timeout, exit_grace: EXIT_GRACE }
}

/// The arguments every QEMU run shares: one vCPU, serial console on stdio and
/// nothing else (`-nodefaults`: no VGA, NIC, floppy or CD-ROM), no reboot.
fn common_args(accel: &str, machine: &str, mem_mib: impl std::fmt::Display) -> Vec<OsString> {
    let mem = mem_mib.to_string();
    let args = [
        "-accel",
        accel,
        "-M",
        machine,
        "-m",
        &mem,
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ];
    args.iter().map(OsString::from).collect()
}

/// QEMU's exit code for the guests' power-off write through isa-debug-exit.
pub fn poweroff_code() -> i32 {
    (i32::from(guests::ACPI_S5_VALUE) << 1) | 1
}

/// QEMU [`LINUX_MACHINE`] on `accel` (`tcg` or `kvm`) booting `boot`: serial
/// console on stdio and nothing else (`-nodefaults`: no VGA, NIC, floppy or
/// CD-ROM; firmware output stays off the serial line). The guest powers off
/// through the machine's ACPI, so QEMU exits by itself with code 0.
pub fn linux_spec(qemu: &Path, accel: &str, boot: &LinuxBoot, markers: Vec<String>, timeout: Duration) -> ChildSpec {
    let mut args = common_args(accel, LINUX_MACHINE, boot.mem_mib);
    args.extend(["-kernel".into(), boot.kernel.clone().into(), "-initrd".into(), boot.initrd.clone().into()]);
    args.extend(["-append".into(), boot.cmdline.clone().into()]);
    if let Some(disk) = &boot.disk {
        // The same raw file as rxvmm's --disk: host page cache, no flush per
        // write (rxvmm's pwrite), behind virtio-blk on the machine's PCI bus.
        let mut drive = OsString::from("file=");
        drive.push(disk);
        drive.push(",format=raw,if=none,id=vda,cache=writeback,aio=threads");
        args.extend(["-drive".into(), drive, "-device".into(), "virtio-blk-pci,drive=vda".into()]);
    }
    ChildSpec { program: qemu.to_owned(), args, markers, timeout, exit_grace: timeout }
}
