//! The guest-physical memory map every engine shares.
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BIOS data area
//! 0x0000_0500  GDT            (BOOT_GDT_START)
//! 0x0000_0520  IDT            (BOOT_IDT_START)
//! 0x0000_6000  PVH start_info, then its memory map and module list (PVH_INFO_START)
//! 0x0000_7000  Linux boot_params "zero page" (ZERO_PAGE_START)
//! 0x0000_8ff0  initial boot stack top (BOOT_STACK_POINTER)
//! 0x0000_9000  PML4, then PDPT at 0xa000, 4 PDs at 0xb000..0xf000:
//!              identity map of the first 4 GiB with 2 MiB pages
//! 0x0002_0000  kernel command line (CMDLINE_START, CMDLINE_MAX_SIZE)
//! 0x0009_fc00  EBDA (reserved, up to EBDA_END)
//! 0x000a_0000  legacy VGA/ROM area: neither RAM nor listed in the e820 map
//! 0x000e_0000  ACPI RSDP and tables (ACPI_START .. 0x10_0000, reserved)
//! 0x0010_0000  kernel (HIMEM_START); initrd at the top of low RAM
//! 0xc000_0000  32-bit MMIO hole (MMIO_HOLE_START .. 4 GiB):
//!              0xc000_0000 boot-timer marker, 0xd000_0000 virtio-mmio windows,
//!              0xfec0_0000 IOAPIC, 0xfee0_0000 LAPIC
//! 0x1_0000_0000 RAM above 4 GiB when --mem exceeds the hole's start
//! ```

pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Number of page directories: together they identity-map 4 GiB.
pub const PDE_COUNT: u64 = 4;
pub const CMDLINE_START: u64 = 0x2_0000;
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
pub const EBDA_START: u64 = 0x9_fc00;
pub const EBDA_END: u64 = 0xa_0000;
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_END: u64 = 0x10_0000;
pub const HIMEM_START: u64 = 0x10_0000;

pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Guest writes here mark boot phases (Firecracker's boot timer).
pub const BOOT_TIMER_ADDR: u64 = 0xc000_0000;
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// Port I/O map.
pub mod pio {
    /// The i8042's data port; its command/status port is [`I8042_COMMAND`].
    /// Port 0x61 between them is system control port B, which belongs to
    /// the PIT (in-kernel under KVM, the engine's own under TCG).
    pub const I8042: u64 = 0x60;
    pub const I8042_COMMAND: u64 = 0x64;
    pub const RTC: u64 = 0x70;
    pub const RTC_LEN: u64 = 2;
    /// POST/debug port: boot phase markers.
    pub const DEBUG_PORT: u64 = 0x80;
    pub const SERIAL_COM1: u64 = 0x3f8;
    pub const SERIAL_LEN: u64 = 8;
    /// ACPI hardware-reduced sleep control/status and reset register.
    pub const ACPI_POWER: u64 = 0x600;
    pub const ACPI_POWER_LEN: u64 = 1;
    /// pvpanic (QEMU's ISA port), declared in the DSDT as QEMU0001.
    pub const PVPANIC: u64 = 0x505;
}

/// Interrupt lines (GSIs on the IOAPIC).
pub mod irq {
    pub const SERIAL_COM1: u32 = 4;
    /// First GSI for virtio-mmio devices.
    pub const VIRTIO_FIRST: u32 = 5;
}

/// Smallest `--mem` accepted, in MiB.
pub const MIN_MEM_MIB: u64 = 8;
/// Largest `--mem` accepted, in MiB: 256 GiB keeps the top of RAM (257 GiB,
/// past the hole) below 2^39, the narrowest guest-physical address width of
/// current x86 hosts.
pub const MAX_MEM_MIB: u64 = 256 << 10;

/// Guest RAM regions for `mem_size` bytes: below the hole, then above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO_HOLE_START), (HIGH_RAM_START, mem_size - MMIO_HOLE_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_split_around_the_hole() {
        assert_eq!(ram_regions(512 << 20), vec![(0, 512 << 20)]);
        assert_eq!(ram_regions(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
        assert_eq!(ram_regions(6 << 30), vec![(0, MMIO_HOLE_START), (HIGH_RAM_START, (6 << 30) - MMIO_HOLE_START)]);
    }
}
