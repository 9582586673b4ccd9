use std::time::Duration;

use super::apic_bus::tests::{write, Event, Recorder};
use super::lapic::reg;
use super::*;
use crate::BusDevice;

fn chip(vcpus: u8) -> (IrqChip, Vec<Arc<Recorder>>) {
    let chip = IrqChip::new(vcpus).unwrap();
    let rec: Vec<_> = (0..vcpus).map(|_| Arc::new(Recorder::default())).collect();
    for (cpu, r) in (0..vcpus).zip(&rec) {
        assert!(chip.apic_bus.set_wakeup(cpu, r.clone()));
        write(&chip.apic_bus, cpu, reg::SVR, 0x1ff);
    }
    (chip, rec)
}

fn ioapic_route(chip: &IrqChip, pin: u8, low: u32, dest: u8) {
    for (index, value) in [(0x11 + 2 * pin, u32::from(dest) << 24), (0x10 + 2 * pin, low)] {
        chip.ioapic.write(0, &[index]);
        chip.ioapic.write(0x10, &value.to_le_bytes());
    }
}

#[test]
fn serial_irq_reaches_the_guest_through_the_ioapic() {
    let (chip, rec) = chip(2);
    ioapic_route(&chip, 4, 0x24, 1);
    rec[1].take();
    let line = chip.irq_line(4).unwrap();
    line.trigger().unwrap();
    assert_eq!(rec[1].take(), [Event::Pending]);
    assert!(chip.apic_bus.has_interrupt(1));
    assert_eq!(chip.apic_bus.take_interrupt(1), Some(0x24));
    // The 8259 was never initialised: nothing on CPU 0's LINT0.
    assert!(!chip.apic_bus.has_interrupt(0));
    assert!(chip.irq_line(23).is_ok());
    assert_eq!(chip.irq_line(24).err(), Some(IrqChipError::Gsi(24)));
}

#[test]
fn level_eoi_reaches_the_ioapic() {
    let (chip, _) = chip(1);
    ioapic_route(&chip, 10, 1 << 15 | 0x5a, 0);
    chip.ioapic.set_irq(10, true);
    assert_eq!(chip.apic_bus.take_interrupt(0), Some(0x5a));
    assert_ne!(chip.ioapic.redirection_entry(10).unwrap() & 1 << 14, 0);
    chip.ioapic.set_irq(10, false);
    write(&chip.apic_bus, 0, reg::EOI, 0);
    assert_eq!(chip.ioapic.redirection_entry(10).unwrap() & 1 << 14, 0, "remote IRR cleared");
}

#[test]
fn pic_interrupts_reach_the_bsp_through_lint0() {
    let (chip, rec) = chip(2);
    let ports = chip.pic.ports();
    let out = |port: u64, value: u8| {
        let (base, dev) = ports.iter().find(|(b, _)| (*b..*b + 2).contains(&port)).unwrap();
        dev.write(port - base, &[value]);
    };
    for (port, value) in [(0x20, 0x11), (0x21, 0x08), (0x21, 0x04), (0x21, 0x01), (0x21, 0xef)] {
        out(port, value);
    }
    rec[0].take();
    chip.irq_line(4).unwrap().trigger().unwrap();
    assert_eq!(rec[0].take(), [Event::Pending]);
    assert!(chip.apic_bus.has_interrupt(0));
    assert_eq!(chip.apic_bus.take_interrupt(0), Some(0x0c));
    assert_eq!(chip.apic_bus.take_interrupt(1), None);
}

#[test]
fn pit_irq0_through_the_ioapic_on_the_bsp_timeline() {
    let (chip, _) = chip(2);
    ioapic_route(&chip, 0, 0x30, 0);
    assert_eq!(chip.next_deadline(0), None);
    chip.pit.write(3, &[0x34]);
    chip.pit.write(0, &[0x52]);
    let start = Instant::now();
    chip.pit.write(0, &[0x09]); // 2386: ~2 ms
    assert_eq!(chip.next_deadline(1), None, "only the BSP polls the PIT");
    for k in 1..=2u32 {
        let deadline = chip.next_deadline(0).unwrap();
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        chip.poll(0, Instant::now());
        assert_eq!(chip.apic_bus.take_interrupt(0), Some(0x30));
        write(&chip.apic_bus, 0, reg::EOI, 0);
        assert!(Instant::now() >= start + Duration::from_micros(1999) * k);
    }
}

#[test]
fn lapic_timer_wakes_through_poll() {
    let (chip, rec) = chip(2);
    write(&chip.apic_bus, 1, reg::TIMER_DIVIDE, 0xb);
    write(&chip.apic_bus, 1, reg::LVT_TIMER, 0xef);
    let start = Instant::now();
    write(&chip.apic_bus, 1, reg::TIMER_INITIAL, 50_000); // 2 ms
    let deadline = chip.next_deadline(1).unwrap();
    assert!(deadline >= start + Duration::from_millis(2));
    rec[1].take();
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    chip.poll(1, Instant::now());
    assert_eq!(rec[1].take(), [Event::Pending]);
    assert_eq!(chip.apic_bus.take_interrupt(1), Some(0xef));
    assert_eq!(chip.next_deadline(1), None);
}
