//! ACPI tables for a hardware-reduced x86 microVM: RSDP, XSDT, FADT, DSDT, MADT.
//!
//! Everything lives in `[ACPI_START, ACPI_END)`, with the RSDP first so a
//! kernel scanning 0xE0000-0xFFFFF for "RSD PTR " finds it without a hint.
//! There is no FACS (optional in hardware-reduced mode) and no PM timer, GPE
//! or SCI: power-off and reset go through the one-byte register at port 0x600
//! ([`devices::acpi::AcpiPower`]).

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use devices::acpi::{ACPI_POWER_PORT, RESET_VALUE, S5_SLEEP_TYPE};
use devices::legacy::cmos::CENTURY_INDEX;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

#[cfg(test)]
mod tests;

/// OEM ID in every table header.
pub const OEM_ID: [u8; 6] = *b"RXVMM ";
const OEM_REVISION: u32 = 1;
/// FADT "hypervisor vendor identity" (ACPI 6.0+).
const HYPERVISOR_VENDOR: [u8; 8] = *b"RXVMM\0\0\0";
/// DSDT revision 2: the AML interpreter uses 64-bit integers.
const DSDT_REVISION: u8 = 2;
/// MADT revision for ACPI 6.2+.
const MADT_REVISION: u8 = 5;
/// Tables start on 16-byte boundaries (the RSDP must; the rest are tidy).
const TABLE_ALIGN: u64 = 16;

/// IAPC_BOOT_ARCH "VGA not present". We leave LEGACY_DEVICES and 8042 clear
/// (so Linux doesn't probe the i8042 or ISA PnP), and "CMOS RTC not present"
/// clear because the RTC at 0x70 exists.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

// MADT interrupt controller structure types.
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_LAPIC_ENABLED: u32 = 1;
/// Local APIC NMI entry: "all processors".
const ALL_PROCESSORS: u8 = 0xff;
/// Local APIC NMI entry: NMI arrives on LINT1.
const LINT1: u8 = 1;
/// APIC ID 0xFF is the xAPIC broadcast ID; no vCPU may use it.
pub const MAX_VCPUS: u8 = 254;
/// Virtio-mmio devices are named V000..VFFF in the DSDT.
pub const MAX_VIRTIO_DEVICES: usize = 0x1000;

const _: () = assert!(layout::LAPIC_ADDR <= u32::MAX as u64);
const _: () = assert!(layout::IOAPIC_ADDR <= u32::MAX as u64);
const _: () = assert!(layout::ACPI_START.is_multiple_of(TABLE_ALIGN));
const _: () = assert!(layout::pio::SERIAL_COM1 + layout::pio::SERIAL_LEN <= u16::MAX as u64);
const _: () = assert!(layout::pio::SERIAL_LEN <= u8::MAX as u64);

/// One virtio-mmio transport, as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioAcpi {
    /// Guest-physical base of its register window.
    pub base: u64,
    /// Size of the window in bytes.
    pub size: u64,
    /// Its interrupt line (an IOAPIC GSI).
    pub gsi: u32,
}

/// What the tables describe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcpiConfig {
    pub vcpus: u8,
    pub virtio_devices: Vec<VirtioMmioAcpi>,
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The MADT needs at least one processor.
    #[error("ACPI tables need at least one vCPU")]
    NoVcpus,
    /// More vCPUs than xAPIC IDs.
    #[error("{0} vCPUs exceed the {MAX_VCPUS} the MADT can describe")]
    TooManyVcpus(u8),
    /// More devices than DSDT names.
    #[error("{0} virtio-mmio devices exceed the {MAX_VIRTIO_DEVICES} the DSDT can name")]
    TooManyVirtioDevices(usize),
    /// A window a Memory32Fixed descriptor can't express.
    #[error("virtio-mmio window {base:#x}+{size:#x} is empty or not below 4 GiB")]
    VirtioWindow { base: u64, size: u64 },
    /// The tables overflow the area reserved for them.
    #[error("ACPI tables end at {end:#x}, past the reserved area's end {limit:#x}")]
    TooLarge { end: u64, limit: u64 },
    /// Guest memory doesn't cover the ACPI area.
    #[error("writing ACPI tables to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// Writes the ACPI tables into `mem` at [`layout::ACPI_START`] and returns
/// the RSDP's guest-physical address (for boot_params / PVH start_info).
pub fn create_acpi_tables(mem: &GuestMemoryMmap, config: &AcpiConfig) -> Result<u64, AcpiError> {
    validate(config)?;

    // The DSDT and MADT don't depend on addresses: build them first, then
    // lay every table out and build the ones that point at others.
    let dsdt = create_dsdt(&config.virtio_devices);
    let madt = create_madt(config.vcpus);

    let rsdp_addr = layout::ACPI_START;
    let dsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let madt_addr = align(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let xsdt_addr = align(madt_addr + madt.len() as u64);

    let fadt = to_bytes(&create_fadt(dsdt_addr));
    let mut xsdt = XSDT::new(OEM_ID, *b"RXVMXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = to_bytes(&xsdt);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    let end = xsdt_addr + xsdt.len() as u64;
    if end > layout::ACPI_END {
        return Err(AcpiError::TooLarge { end, limit: layout::ACPI_END });
    }

    for (addr, bytes) in [
        (rsdp_addr, rsdp.as_slice()),
        (dsdt_addr, dsdt.as_slice()),
        (fadt_addr, fadt.as_slice()),
        (madt_addr, madt.as_slice()),
        (xsdt_addr, xsdt.as_slice()),
    ] {
        mem.write_slice(bytes, GuestAddress(addr)).map_err(AcpiError::GuestMemory)?;
    }
    log::debug!(
        "ACPI tables at {rsdp_addr:#x}..{end:#x}: DSDT {dsdt_addr:#x}, FADT {fadt_addr:#x}, \
         MADT {madt_addr:#x}, XSDT {xsdt_addr:#x}"
    );
    Ok(rsdp_addr)
}

fn validate(config: &AcpiConfig) -> Result<(), AcpiError> {
    match config.vcpus {
        0 => return Err(AcpiError::NoVcpus),
        n if n > MAX_VCPUS => return Err(AcpiError::TooManyVcpus(n)),
        _ => {}
    }
    if config.virtio_devices.len() > MAX_VIRTIO_DEVICES {
        return Err(AcpiError::TooManyVirtioDevices(config.virtio_devices.len()));
    }
    for dev in &config.virtio_devices {
        let fits = dev.size > 0 && dev.base.checked_add(dev.size).is_some_and(|end| end <= 1 << 32);
        if !fits {
            return Err(AcpiError::VirtioWindow { base: dev.base, size: dev.size });
        }
    }
    Ok(())
}

fn align(addr: u64) -> u64 {
    addr.next_multiple_of(TABLE_ALIGN)
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Port 0x600 as an 8-bit system I/O register.
fn power_register() -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(ACPI_POWER_PORT))
}

/// FADT 6.5, hardware-reduced: the sleep and reset registers are the only
/// fixed hardware.
fn create_fadt(dsdt_addr: u64) -> acpi_tables::fadt::FADT {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"RXVMFACP", OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt_addr);
    fadt.reset_reg = power_register();
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = power_register();
    fadt.sleep_status_reg = power_register();
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    // Linux reads the RTC's century byte only when the FADT names it.
    fadt.century = CENTURY_INDEX;
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();
    fadt.finalize()
}

/// A virtio-mmio transport as a `LNRO0005` device, the ID Linux's
/// virtio_mmio driver matches; the same description Firecracker uses.
struct VirtioMmioDevice {
    uid: u32,
    base: u32,
    size: u32,
    gsi: u32,
}

impl Aml for VirtioMmioDevice {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let name = format!("V{:03X}", self.uid);
        let window = aml::Memory32Fixed::new(true, self.base, self.size);
        // Edge-triggered, active-high, exclusive: each IrqLine trigger is
        // one edge, as with Firecracker's irqfds.
        let irq = aml::Interrupt::new(true, true, false, false, self.gsi);
        let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
        aml::Device::new(
            name.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &self.uid),
                // DMA is cache-coherent.
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// COM1 as a PNP0501 device (as Cloud Hypervisor describes it), so the
/// guest's serial driver binds to it through ACPI.
struct Com1;

impl Aml for Com1 {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let irq = aml::Interrupt::new(true, true, false, false, layout::irq::SERIAL_COM1);
        // The port range is a compile-time constant well inside 16 bits.
        let base = layout::pio::SERIAL_COM1 as u16;
        let ports = aml::IO::new(base, base, 0, layout::pio::SERIAL_LEN as u8);
        let crs = aml::ResourceTemplate::new(vec![&irq, &ports]);
        aml::Device::new(
            "COM1".into(),
            vec![
                &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
                &aml::Name::new("_UID".into(), &aml::ZERO),
                &aml::Name::new("_DDN".into(), &"COM1"),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// The pvpanic device as QEMU declares it, so Linux's `pvpanic_mmio` binds.
struct PvPanic;

impl Aml for PvPanic {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let base = layout::pio::PVPANIC as u16;
        let ports = aml::IO::new(base, base, 1, 1);
        let crs = aml::ResourceTemplate::new(vec![&ports]);
        aml::Device::new(
            "PEVT".into(),
            vec![
                &aml::Name::new("_HID".into(), &"QEMU0001"),
                &aml::Name::new("_UID".into(), &aml::ZERO),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(sink);
    }
}

/// The DSDT: `\_S5_`, COM1, pvpanic and the virtio-mmio devices.
fn create_dsdt(virtio: &[VirtioMmioAcpi]) -> Sdt {
    let mut aml_bytes = Vec::new();

    // SLP_TYPa (the only one hardware-reduced ACPI uses), SLP_TYPb, reserved.
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLEEP_TYPE, &0u8, &0u8, &0u8]))
        .to_aml_bytes(&mut aml_bytes);

    // validate() checked every window fits in 32 bits and the count in u32.
    let virtio_devices: Vec<VirtioMmioDevice> = virtio
        .iter()
        .enumerate()
        .map(|(i, d)| VirtioMmioDevice { uid: i as u32, base: d.base as u32, size: d.size as u32, gsi: d.gsi })
        .collect();
    let mut sb_children: Vec<&dyn Aml> = vec![&Com1, &PvPanic];
    sb_children.extend(virtio_devices.iter().map(|d| d as &dyn Aml));
    aml::Scope::new("\\_SB_".into(), sb_children).to_aml_bytes(&mut aml_bytes);

    let mut dsdt = Sdt::new(*b"DSDT", 36, DSDT_REVISION, OEM_ID, *b"RXVMDSDT", OEM_REVISION);
    dsdt.append_slice(&aml_bytes);
    dsdt
}

/// The MADT: one enabled local APIC per vCPU (ACPI UID = APIC ID = index),
/// the IOAPIC, and NMI on LINT1 of every local APIC.
///
/// Flags are 0 (no PCAT_COMPAT), as Cloud Hypervisor and Firecracker do: in
/// hardware-reduced mode Linux never touches a legacy 8259 anyway, and with
/// no interrupt source overrides ISA IRQs map 1:1 onto IOAPIC pins.
fn create_madt(vcpus: u8) -> Sdt {
    let mut madt = Sdt::new(*b"APIC", 44, MADT_REVISION, OEM_ID, *b"RXVMAPIC", OEM_REVISION);
    madt.write_u32(36, layout::LAPIC_ADDR as u32);
    madt.write_u32(40, 0);

    for id in 0..vcpus {
        let mut lapic = vec![MADT_LOCAL_APIC, 8, id, id];
        lapic.extend_from_slice(&MADT_LAPIC_ENABLED.to_le_bytes());
        madt.append_slice(&lapic);
    }

    // The IOAPIC takes the first ID after the vCPUs' and serves GSIs from 0.
    let mut ioapic = vec![MADT_IO_APIC, 12, vcpus, 0];
    ioapic.extend_from_slice(&(layout::IOAPIC_ADDR as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    madt.append_slice(&ioapic);

    // Flags 0: polarity and trigger mode conform to the bus (as QEMU does).
    madt.append_slice(&[MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS, 0, 0, LINT1]);
    madt
}
