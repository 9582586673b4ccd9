//! Small guest kernels, assembled in Rust with iced-x86, that exercise the
//! VMM's engines: `rxvmm --kernel <file>` with a file from [`build`].
//!
//! Every guest is an ELF64 executable loaded at [`LOAD_ADDR`] and entered in
//! 64-bit mode through the Linux boot protocol (RSI = boot_params, the VMM's
//! identity page tables, flat 64-bit CS). Their CPL0 code uses only plain
//! integer instructions, control-register and MSR moves, descriptor-table
//! loads, `in`/`out`, `hlt` and `iretq`, because on a PVM host KVM's
//! instruction emulator runs it; no SSE, x87, string instructions or `int3`.
//! The same images run unchanged under the TCG engine.
//!
//! Output goes to the COM1 UART (0x3f8), which needs no set-up for `out`.
//!
//! Verified to run on a PVM-backed KVM (rxvmm and a bare kvm-ioctls harness)
//! and under QEMU's TCG. One PVM quirk shapes `boot-report`: `int n` at CPL3
//! raises #UD there instead of going through the IDT gate, so the guest's #UD
//! handler recognises `int 0x80` and completes the call (`user trap=`).

mod apic;
mod boot_report;
mod elf;
mod image;
mod rt;
mod simple;
mod virtio_blk;

use iced_x86::IcedError;

pub use apic::TRAMPOLINE_ADDR;
pub use boot_report::BOOT_REPORT_USER_RESULT;
pub use elf::elf64_image;
pub use image::LOAD_ADDR;
pub use rt::ACPI_S5_VALUE;

/// Port the benchmark and `apic-id` guests write to; the VMM should ignore
/// it cheaply (no device, no logging).
pub const BENCH_PORT: u16 = 0x511;
/// MMIO address `mmio-loop` writes to: inside the MMIO hole, no device.
pub const BENCH_MMIO_ADDR: u64 = 0xc000_1000;
/// Port or MMIO writes per run of `pio-loop` / `mmio-loop`.
pub const BENCH_ITERATIONS: u32 = 100_000;
/// MMIO address `unmapped-mmio` writes, then reads (no device behind it).
pub const UNMAPPED_MMIO_ADDR: u64 = 0xc000_2000;
/// Byte `hello` writes to the boot-timer MMIO address.
pub const BOOT_MARKER: u8 = 123;

pub const HELLO_LINE: &str = "rxvmm-hello: hello from the guest\n";
pub const POWEROFF_LINE: &str = "rxvmm-poweroff\n";
pub const BENCH_START_LINE: &str = "rxvmm-bench: start\n";
pub const BENCH_DONE_LINE: &str = "rxvmm-bench: done\n";
pub const TRIPLE_FAULT_LINE: &str = "rxvmm-triple-fault: faulting\n";
/// Followed by the 8 hex digits read.
pub const UNMAPPED_MMIO_PREFIX: &str = "rxvmm-mmio: ";
/// What `unmapped-mmio` prints when unmapped reads return all-ones.
pub const UNMAPPED_MMIO_LINE: &str = "rxvmm-mmio: ffffffff\n";
/// Lines `bsp <id>`, `madt-cpus <n>`, `ap <id>` (one per AP), `cpus <n>`, all decimal.
pub const APIC_PREFIX: &str = "rxvmm-apic: ";
/// Lines `entry=linux64|pvh`; `<name>=<16 hex digits>` for cr0, cr3, cr4,
/// efer, cs, ds, ss, gdt_base, gdt_limit, bootinfo; `e820: <addr> <size>
/// <type>` (16 hex digits each); `rsdp=`; `rsdp_sig=RSD PTR ` (if rsdp != 0);
/// `user trap=int80|int80-as-ud`; `user cs=` (0x23: CPL3); `user result=`
/// ([`BOOT_REPORT_USER_RESULT`]). Then it powers off. A fault prints
/// `exception=` lines and triple-faults.
pub const BOOT_REPORT_PREFIX: &str = "rxvmm-boot: ";
/// `virtio-blk` prints `read-status`, `data` (sector 0's first 8 bytes as
/// a little-endian u64), `isr`, `write-status`, `flush-status` lines, then
/// `done`, and powers off.
pub const VIRTIO_BLK_PREFIX: &str = "rxvmm-virtio: ";
/// What `virtio-blk` writes at the start of sector 1.
pub const VIRTIO_BLK_PATTERN: &[u8; 8] = b"rxvmmblk";

/// Errors building a guest image.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// No guest has this name.
    #[error("unknown guest {0:?}; known guests: {list}", list = NAMES.join(", "))]
    Unknown(String),
    /// The assembler rejected the guest's code (a bug in the guest builder).
    #[error("assembling guest code")]
    Assemble(#[from] IcedError),
    /// A piece of code outgrew its slot in the image layout.
    #[error("{what} is {size:#x} bytes, its slot holds {max:#x}")]
    TooLarge { what: &'static str, size: usize, max: usize },
    /// A far-jump target does not fit in 32 bits.
    #[error("address {0:#x} is not reachable from 32-bit code")]
    AddressTooHigh(u64),
}

type Builder = fn() -> Result<image::Built, GuestError>;

const NAMES: [&str; 10] = [
    "hello",
    "poweroff",
    "pio-loop",
    "mmio-loop",
    "apic-id",
    "triple-fault",
    "unmapped-mmio",
    "boot-report",
    "boot-report-linux64",
    "virtio-blk",
];

fn builder(name: &str) -> Option<Builder> {
    let f: Builder = match name {
        "hello" => simple::hello,
        "poweroff" => simple::poweroff,
        "pio-loop" => simple::pio_loop,
        "mmio-loop" => simple::mmio_loop,
        "apic-id" => apic::apic_id,
        "triple-fault" => simple::triple_fault,
        "unmapped-mmio" => simple::unmapped_mmio,
        "boot-report" => boot_report::boot_report,
        "boot-report-linux64" => boot_report::boot_report_linux64,
        "virtio-blk" => simple::virtio_blk,
        _ => return None,
    };
    Some(f)
}

/// Names accepted by [`build`].
pub fn names() -> &'static [&'static str] {
    &NAMES
}

/// The ELF image of the guest called `name`.
pub fn build(name: &str) -> Result<Vec<u8>, GuestError> {
    let built = builder(name).ok_or_else(|| GuestError::Unknown(name.to_owned()))?()?;
    Ok(built.image.into_elf(built.entry, built.pvh_entry))
}

#[cfg(test)]
mod tests;
