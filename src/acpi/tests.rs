//! Builds the tables into guest memory and reads them back the way a guest
//! (and ACPICA's disassembler) would.

use std::path::PathBuf;
use std::process::Command;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Reads a whole table (its length comes from its header) and checks its
/// signature, checksum, OEM ID and that it lies inside the ACPI area.
fn table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
    let header = read(mem, addr, 36);
    assert_eq!(&header[0..4], sig, "signature at {addr:#x}");
    let len = u32_at(&header, 4) as usize;
    assert!(addr >= layout::ACPI_START && addr + len as u64 <= layout::ACPI_END);
    let bytes = read(mem, addr, len);
    assert_eq!(sum(&bytes), 0, "{} checksum", String::from_utf8_lossy(sig));
    assert_eq!(&bytes[10..16], &OEM_ID);
    bytes
}

struct Tables {
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
}

/// Follows RSDP -> XSDT -> {FACP, APIC}, FACP -> DSDT, checking each step.
fn build_and_walk(config: &AcpiConfig) -> Tables {
    let mem = memory();
    let rsdp_addr = create_acpi_tables(&mem, config).unwrap();
    assert_eq!(rsdp_addr, layout::ACPI_START);
    assert_eq!(rsdp_addr % 16, 0);

    let rsdp = read(&mem, rsdp_addr, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[0..20]), 0, "RSDP v1 checksum");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(&rsdp, 20), 36);

    let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
    let entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
    assert_eq!(entries.len(), 2);
    let fadt = table(&mem, entries[0], b"FACP");
    let madt = table(&mem, entries[1], b"APIC");
    let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
    Tables { fadt, madt, dsdt }
}

fn config(vcpus: u8, virtio: usize) -> AcpiConfig {
    AcpiConfig {
        vcpus,
        virtio_devices: (0..virtio as u32)
            .map(|i| VirtioMmioAcpi {
                base: layout::VIRTIO_MMIO_START + u64::from(i) * layout::VIRTIO_MMIO_SIZE,
                size: layout::VIRTIO_MMIO_SIZE,
                gsi: layout::irq::VIRTIO_FIRST + i,
            })
            .collect(),
    }
}

fn power_gas_ok(fadt: &[u8], off: usize) {
    // System I/O, 8 bits wide, offset 0, byte access, port 0x600.
    assert_eq!(&fadt[off..off + 4], &[1, 8, 0, 1], "GAS at {off}");
    assert_eq!(u64_at(fadt, off + 4), 0x600);
}

#[test]
fn fadt_is_hardware_reduced_with_power_registers() {
    let t = build_and_walk(&config(1, 0));
    let fadt = &t.fadt;
    assert_eq!(fadt.len(), 276);
    assert_eq!(fadt[8], 6, "FADT major revision");
    let flags = u32_at(fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    power_gas_ok(fadt, 116);
    assert_eq!(fadt[128], 1, "reset value");
    power_gas_ok(fadt, 244);
    power_gas_ok(fadt, 256);
    let boot_arch = u16_at(fadt, 109);
    assert_ne!(boot_arch & (1 << 2), 0, "VGA not present");
    assert_eq!(boot_arch & (1 << 5), 0, "must not claim the RTC is absent");
    assert_eq!(fadt[108], 0x32, "century index");
    assert_eq!(&fadt[268..276], b"RXVMM\0\0\0");
    assert_eq!(u32_at(fadt, 40), 0, "32-bit DSDT pointer unused");
}

/// (enabled LAPIC ids, IOAPIC entries as (id, address, gsi base), NMI entries)
fn parse_madt(madt: &[u8]) -> (Vec<u8>, Vec<(u8, u32, u32)>, usize) {
    let (mut lapics, mut ioapics, mut nmis) = (Vec::new(), Vec::new(), 0);
    let mut off = 44;
    while off < madt.len() {
        let (kind, len) = (madt[off], madt[off + 1] as usize);
        let entry = &madt[off..off + len];
        match kind {
            0 => {
                assert_eq!(len, 8);
                assert_eq!(entry[2], entry[3], "processor UID = APIC ID");
                if u32_at(entry, 4) & 1 != 0 {
                    lapics.push(entry[3]);
                }
            }
            1 => ioapics.push((entry[2], u32_at(entry, 4), u32_at(entry, 8))),
            4 => {
                assert_eq!(entry, &[4, 6, 0xff, 0, 0, 1]);
                nmis += 1;
            }
            other => panic!("unexpected MADT entry type {other}"),
        }
        off += len;
    }
    assert_eq!(off, madt.len());
    (lapics, ioapics, nmis)
}

#[test]
fn madt_lists_each_vcpu_and_the_ioapic() {
    for vcpus in [1u8, 4, MAX_VCPUS] {
        let t = build_and_walk(&config(vcpus, 0));
        assert_eq!(u32_at(&t.madt, 36) as u64, layout::LAPIC_ADDR);
        assert_eq!(u32_at(&t.madt, 40), 0, "MADT flags");
        let (lapics, ioapics, nmis) = parse_madt(&t.madt);
        assert_eq!(lapics, (0..vcpus).collect::<Vec<_>>());
        assert_eq!(ioapics, [(vcpus, layout::IOAPIC_ADDR as u32, 0)]);
        assert_eq!(nmis, 1);
    }
}

/// Disassembles `aml` with ACPICA's `iasl -d` and returns the ASL text.
fn disassemble(aml: &[u8], name: &str) -> String {
    let dir: PathBuf = std::env::temp_dir().join(format!("rxvmm-acpi-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dsdt.dat"), aml).unwrap();
    let out = match Command::new("iasl").arg("-d").arg("dsdt.dat").current_dir(&dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`iasl` not found: install acpica-tools (apt-get install -y acpica-tools)")
        }
        Err(e) => panic!("running iasl: {e}"),
    };
    let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "iasl -d failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dsl
}

#[test]
fn dsdt_disassembles_without_virtio() {
    let t = build_and_walk(&config(1, 0));
    let dsl = disassemble(&t.dsdt, "plain");
    assert!(dsl.contains("_S5_"), "{dsl}");
    assert!(dsl.contains("PNP0501"), "{dsl}");
    assert!(dsl.contains("QEMU0001"), "{dsl}");
    assert!(!dsl.contains("LNRO0005"), "{dsl}");
}

#[test]
fn dsdt_declares_virtio_devices() {
    let t = build_and_walk(&config(2, 3));
    let dsl = disassemble(&t.dsdt, "virtio");
    assert!(dsl.contains("_S5_"), "{dsl}");
    assert_eq!(dsl.matches("\"LNRO0005\"").count(), 3, "{dsl}");
    for name in ["V000", "V001", "V002"] {
        assert!(dsl.contains(name), "{name} missing: {dsl}");
    }
    // The second device's window and its edge/active-high/exclusive GSI.
    assert!(dsl.contains("0xD0001000"), "{dsl}");
    assert!(dsl.contains("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )"), "{dsl}");
    assert!(dsl.contains("0x00000006"), "{dsl}");
}

#[test]
fn rejects_bad_configs() {
    let mem = memory();
    assert!(matches!(create_acpi_tables(&mem, &config(0, 0)), Err(AcpiError::NoVcpus)));
    assert!(matches!(create_acpi_tables(&mem, &config(255, 0)), Err(AcpiError::TooManyVcpus(255))));
    let mut high = config(1, 1);
    high.virtio_devices[0].base = 0xffff_f800;
    assert!(matches!(create_acpi_tables(&mem, &high), Err(AcpiError::VirtioWindow { .. })));
    let mut empty = config(1, 1);
    empty.virtio_devices[0].size = 0;
    assert!(matches!(create_acpi_tables(&mem, &empty), Err(AcpiError::VirtioWindow { .. })));
    let mut many = config(1, 1);
    many.virtio_devices = vec![many.virtio_devices[0]; MAX_VIRTIO_DEVICES + 1];
    assert!(matches!(create_acpi_tables(&mem, &many), Err(AcpiError::TooManyVirtioDevices(_))));
    let mut big = config(1, 1);
    big.virtio_devices = vec![big.virtio_devices[0]; MAX_VIRTIO_DEVICES];
    assert!(matches!(create_acpi_tables(&mem, &big), Err(AcpiError::TooLarge { .. })));
    let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 512 << 10)]).unwrap();
    assert!(matches!(create_acpi_tables(&small, &config(1, 0)), Err(AcpiError::GuestMemory(_))));
}
