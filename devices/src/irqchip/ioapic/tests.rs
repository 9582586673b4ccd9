use super::*;
use crate::irqchip::apic_bus::tests::{bus, write, Event};
use crate::irqchip::lapic::reg;

fn ioapic(vcpus: u8) -> (Arc<Ioapic>, Arc<ApicBus>, Vec<Arc<crate::irqchip::apic_bus::tests::Recorder>>) {
    let (bus, rec) = bus(vcpus);
    let ioapic = Arc::new(Ioapic::new(bus.clone(), vcpus));
    bus.set_eoi_listener(Arc::downgrade(&ioapic) as std::sync::Weak<dyn EoiListener>);
    (ioapic, bus, rec)
}

fn reg_write(io: &Ioapic, index: u8, value: u32) {
    io.write(IOREGSEL, &[index]);
    io.write(IOWIN, &value.to_le_bytes());
}

fn reg_read(io: &Ioapic, index: u8) -> u32 {
    io.write(IOREGSEL, &[index]);
    let mut b = [0u8; 4];
    io.read(IOWIN, &mut b);
    u32::from_le_bytes(b)
}

/// Programs pin `pin`: `low` is the entry's low dword, to APIC ID `dest`.
fn route(io: &Ioapic, pin: u8, low: u32, dest: u8) {
    reg_write(io, REG_REDTBL + 2 * pin + 1, u32::from(dest) << 24);
    reg_write(io, REG_REDTBL + 2 * pin, low);
}

fn eoi(bus: &ApicBus, cpu: u8) {
    write(bus, cpu, reg::EOI, 0);
}

#[test]
fn identification_registers() {
    let (io, _, _) = ioapic(2);
    assert_eq!(reg_read(&io, REG_ID), 2 << 24);
    assert_eq!(reg_read(&io, REG_VERSION), IOAPIC_VERSION);
    assert_eq!(reg_read(&io, REG_ARBITRATION), 2 << 24);
    reg_write(&io, REG_ID, 0xffff_ffff);
    assert_eq!(reg_read(&io, REG_ID), 0x0f00_0000);
    reg_write(&io, REG_VERSION, 0);
    assert_eq!(reg_read(&io, REG_VERSION), IOAPIC_VERSION);
    // IOREGSEL reads back; unknown registers read 0.
    io.write(IOREGSEL, &[0x99]);
    let mut b = [0u8; 4];
    io.read(IOREGSEL, &mut b);
    assert_eq!(b, [0x99, 0, 0, 0]);
    assert_eq!(reg_read(&io, 0x99), 0);
}

#[test]
fn redirection_entries_round_trip() {
    let (io, _, _) = ioapic(1);
    assert_eq!(reg_read(&io, REG_REDTBL), 1 << 16, "pins start masked");
    route(&io, 23, 0xffff_ffff, 0xff);
    // Delivery status and remote IRR are read-only.
    assert_eq!(reg_read(&io, REG_REDTBL + 46), 0x0001_afff);
    assert_eq!(reg_read(&io, REG_REDTBL + 47), 0xff00_0000);
    assert_eq!(io.redirection_entry(23), Some(0xff00_0000_0001_afff));
    assert_eq!(io.redirection_entry(24), None);
    // A byte write to IOWIN changes just that byte.
    io.write(IOREGSEL, &[REG_REDTBL + 46]);
    io.write(IOWIN + 1, &[0x01]);
    assert_eq!(reg_read(&io, REG_REDTBL + 46), 0x0001_01ff);
}

#[test]
fn edge_pin_reaches_its_lapic_vector() {
    let (io, bus, rec) = ioapic(2);
    rec[1].take();
    route(&io, 4, 0x34, 1);
    IoapicIrqLine::new(io.clone(), 4).trigger().unwrap();
    assert_eq!(rec[1].take(), [Event::Pending]);
    assert_eq!(bus.take_interrupt(1), Some(0x34));
    assert_eq!(bus.take_interrupt(0), None);
    eoi(&bus, 1);
    // Held high, an edge pin fires once.
    io.set_irq(4, true);
    io.set_irq(4, true);
    assert_eq!(bus.take_interrupt(1), Some(0x34));
    eoi(&bus, 1);
    assert_eq!(bus.take_interrupt(1), None);
}

#[test]
fn masked_edges_are_dropped() {
    let (io, bus, _) = ioapic(1);
    route(&io, 3, 1 << 16 | 0x33, 0);
    io.pulse(3);
    route(&io, 3, 0x33, 0);
    assert_eq!(bus.take_interrupt(0), None);
    io.pulse(3);
    assert_eq!(bus.take_interrupt(0), Some(0x33));
}

#[test]
fn logical_destination() {
    let (io, bus, _) = ioapic(3);
    write(&bus, 2, reg::LDR, 0x0400_0000);
    route(&io, 9, 1 << 11 | 0x39, 0x04);
    io.pulse(9);
    assert_eq!(bus.take_interrupt(2), Some(0x39));
}

#[test]
fn level_pin_remote_irr_and_eoi() {
    let (io, bus, _) = ioapic(1);
    let rte = 1 << 15 | 0x45;
    route(&io, 5, rte, 0);
    io.set_irq(5, true);
    assert_eq!(bus.take_interrupt(0), Some(0x45));
    assert_eq!(io.redirection_entry(5).unwrap() as u32, rte | RTE_REMOTE_IRR as u32);
    // Still asserted: nothing more until EOI, then it fires again.
    io.set_irq(5, true);
    assert_eq!(bus.take_interrupt(0), None);
    eoi(&bus, 0);
    assert_eq!(bus.take_interrupt(0), Some(0x45));
    // The device drops the line; the EOI clears remote IRR for good.
    io.set_irq(5, false);
    eoi(&bus, 0);
    assert_eq!(bus.take_interrupt(0), None);
    assert_eq!(io.redirection_entry(5).unwrap() as u32, rte);
}

#[test]
fn level_pin_asserted_while_masked_fires_on_unmask() {
    let (io, bus, _) = ioapic(1);
    route(&io, 6, 1 << 16 | 1 << 15 | 0x46, 0);
    io.set_irq(6, true);
    assert_eq!(bus.take_interrupt(0), None);
    route(&io, 6, 1 << 15 | 0x46, 0);
    assert_eq!(bus.take_interrupt(0), Some(0x46));
    // Linux's EOI for IOAPICs without an EOI register: flip to edge and
    // back, which clears remote IRR (and the pin fires again, still high).
    route(&io, 6, 1 << 16 | 0x46, 0);
    assert_eq!(io.redirection_entry(6).unwrap() & RTE_REMOTE_IRR, 0);
    eoi(&bus, 0);
    route(&io, 6, 1 << 15 | 0x46, 0);
    assert_eq!(bus.take_interrupt(0), Some(0x46));
}

#[test]
fn guest_garbage_never_panics() {
    let (io, _, _) = ioapic(1);
    let mut x = 0x9e37_79b9u32;
    for sel in 0..=255u8 {
        for off in [0u64, 1, 3, 0x10, 0x11, 0x13, 0x14, 0x20, 0xfff] {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            io.write(IOREGSEL, &[sel]);
            io.write(off, &x.to_le_bytes());
            io.write(off, &[]);
            io.read(off, &mut [0u8; 8]);
            io.read(off, &mut []);
        }
    }
    io.set_irq(24, true);
    io.set_irq(u32::MAX, true);
    io.end_of_interrupt(0);
}
