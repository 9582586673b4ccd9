use std::sync::atomic::AtomicU8;

use super::*;
use crate::irqchip::lapic::{reg, APIC_BASE_EXTD, LVT_MASKED, X2APIC_MSR_FIRST};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Pending,
    Init,
    Startup(u8),
}

/// A vCPU stand-in that records what it was told.
#[derive(Default)]
pub(crate) struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    pub(crate) fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl CpuWakeup for Recorder {
    fn interrupt_pending(&self) {
        self.0.lock().unwrap().push(Event::Pending);
    }
    fn init(&self) {
        self.0.lock().unwrap().push(Event::Init);
    }
    fn startup(&self, vector: u8) {
        self.0.lock().unwrap().push(Event::Startup(vector));
    }
}

/// A bus of `n` software-enabled xAPICs with recorders.
pub(crate) fn bus(n: u8) -> (Arc<ApicBus>, Vec<Arc<Recorder>>) {
    let bus = Arc::new(ApicBus::new(Arc::new(GuestClock::new()), n).unwrap());
    let recorders: Vec<_> = (0..n).map(|_| Arc::new(Recorder::default())).collect();
    for (cpu, r) in (0..n).zip(&recorders) {
        assert!(bus.set_wakeup(cpu, r.clone()));
        write(&bus, cpu, reg::SVR, 0x1ff);
    }
    (bus, recorders)
}

pub(crate) fn write(bus: &ApicBus, cpu: u8, off: u32, value: u32) {
    bus.mmio_write(cpu, off.into(), &value.to_le_bytes());
}

fn read(bus: &ApicBus, cpu: u8, off: u32) -> u32 {
    let mut b = [0u8; 4];
    bus.mmio_read(cpu, off.into(), &mut b);
    u32::from_le_bytes(b)
}

/// Sends an xAPIC IPI from `from`.
fn ipi(bus: &ApicBus, from: u8, dest: u8, icr_low: u32) {
    write(bus, from, reg::ICR_HIGH, u32::from(dest) << 24);
    write(bus, from, reg::ICR_LOW, icr_low);
}

/// Takes vCPU `cpu`'s interrupt and ends it, as a guest handler would.
fn take(bus: &ApicBus, cpu: u8) -> Option<u8> {
    let v = bus.take_interrupt(cpu)?;
    if bus.lapic(cpu).unwrap().mode() == crate::irqchip::ApicMode::X2Apic {
        bus.msr_write(cpu, X2APIC_MSR_FIRST + (reg::EOI >> 4), 0).unwrap();
    } else {
        write(bus, cpu, reg::EOI, 0);
    }
    Some(v)
}

fn pending(bus: &ApicBus) -> Vec<Option<u8>> {
    (0..bus.vcpus()).map(|cpu| take(bus, cpu)).collect()
}

#[test]
fn vcpu_count_is_checked() {
    let clock = Arc::new(GuestClock::new());
    assert!(ApicBus::new(clock.clone(), 0).is_err());
    assert!(ApicBus::new(clock.clone(), 255).is_err());
    assert_eq!(ApicBus::new(clock, 254).unwrap().vcpus(), 254);
}

#[test]
fn self_ipi_reaches_self() {
    let (bus, rec) = bus(2);
    rec[0].take();
    ipi(&bus, 0, 0, 0x4_0040); // shorthand self
    assert_eq!(rec[0].take(), [Event::Pending]);
    assert!(bus.has_interrupt(0));
    assert_eq!(pending(&bus), [Some(0x40), None]);
    assert!(!bus.has_interrupt(0));
    // An EOI with something else held back wakes the vCPU again.
    write(&bus, 0, reg::TPR, 0x50);
    ipi(&bus, 0, 0, 0x4_0041);
    assert_eq!(bus.take_interrupt(0), None);
    rec[0].take();
    write(&bus, 0, reg::TPR, 0);
    assert_eq!(rec[0].take(), [Event::Pending]);
    assert_eq!(bus.take_interrupt(0), Some(0x41));
}

#[test]
fn fixed_ipi_reaches_its_target_only() {
    let (bus, rec) = bus(3);
    rec.iter().for_each(|r| drop(r.take()));
    ipi(&bus, 0, 2, 0x4031);
    assert_eq!(rec[2].take(), [Event::Pending]);
    assert!(rec[0].take().is_empty() && rec[1].take().is_empty());
    assert_eq!(pending(&bus), [None, None, Some(0x31)]);
    // A vector below 16 goes nowhere.
    ipi(&bus, 0, 2, 0x4005);
    assert_eq!(pending(&bus), [None, None, None]);
}

#[test]
fn shorthands_and_broadcast() {
    let (bus, _) = bus(3);
    ipi(&bus, 1, 0, 0x8_0050); // all including self
    assert_eq!(pending(&bus), [Some(0x50); 3]);
    ipi(&bus, 1, 0, 0xc_0051); // all excluding self
    assert_eq!(pending(&bus), [Some(0x51), None, Some(0x51)]);
    ipi(&bus, 1, 0xff, 0x52); // physical broadcast
    assert_eq!(pending(&bus), [Some(0x52); 3]);
}

#[test]
fn logical_flat_and_cluster_destinations() {
    let (bus, _) = bus(4);
    for cpu in 0..4 {
        write(&bus, cpu, reg::LDR, 1 << (24 + cpu));
    }
    ipi(&bus, 0, 0b0110, 0x860); // logical
    assert_eq!(pending(&bus), [None, Some(0x60), Some(0x60), None]);
    // Cluster model: clusters 1 and 2, two CPUs each.
    for (cpu, ldr) in [(0, 0x11), (1, 0x12), (2, 0x21), (3, 0x22)] {
        write(&bus, cpu, reg::DFR, 0x0fff_ffff);
        write(&bus, cpu, reg::LDR, ldr << 24);
    }
    ipi(&bus, 0, 0x23, 0x861);
    assert_eq!(pending(&bus), [None, None, Some(0x61), Some(0x61)]);
    // Lowest priority: one target, the lowest-numbered.
    ipi(&bus, 0, 0x23, 0x962);
    assert_eq!(pending(&bus), [None, None, Some(0x62), None]);
}

#[test]
fn x2apic_ipis() {
    let (bus, rec) = bus(18);
    for cpu in 0..18 {
        let base = bus.msr_read(cpu, MSR_IA32_APIC_BASE).unwrap();
        assert_eq!(
            bus.set_apic_base(cpu, base | APIC_BASE_EXTD),
            Ok(ApicBaseChange { old: crate::irqchip::ApicMode::XApic, new: crate::irqchip::ApicMode::X2Apic })
        );
    }
    let icr = X2APIC_MSR_FIRST + (reg::ICR_LOW >> 4);
    // Physical, 32-bit destination.
    bus.msr_write(0, icr, 17 << 32 | 0x70).unwrap();
    assert_eq!(take(&bus, 17), Some(0x70));
    // Cluster 1 (APIC IDs 16-31), member bit 1 = APIC ID 17.
    bus.msr_write(0, icr, 0x0001_0002 << 32 | 0x871).unwrap();
    assert_eq!(bus.take_interrupt(17), Some(0x71));
    assert_eq!(bus.take_interrupt(1), None);
    // SELF_IPI.
    rec[3].take();
    bus.msr_write(3, X2APIC_MSR_FIRST + 0x3f, 0x72).unwrap();
    assert_eq!(rec[3].take(), [Event::Pending]);
    assert_eq!(bus.take_interrupt(3), Some(0x72));
    // Faults surface as errors (#GP), unknown CPUs too.
    assert!(bus.msr_write(0, X2APIC_MSR_FIRST + 0x0b, 5).is_err());
    assert_eq!(bus.msr_write(200, icr, 0), Err(ApicError::NoSuchCpu(200)));
    assert_eq!(bus.msr_read(200, icr), None);
    assert!(ApicBus::is_apic_msr(icr) && ApicBus::is_apic_msr(0x1b) && !ApicBus::is_apic_msr(0x10));
}

#[test]
fn nmi_init_and_sipi() {
    let (bus, rec) = bus(2);
    rec[1].take();
    ipi(&bus, 0, 1, 0x4400); // NMI
    assert_eq!(rec[1].take(), [Event::Pending]);
    assert!(bus.nmi_pending(1));
    assert!(!bus.has_interrupt(1), "NMIs are not maskable interrupts");
    assert!(bus.take_nmi(1));
    assert!(!bus.take_nmi(1));
    // Linux's wakeup_secondary_cpu_via_init: INIT assert, de-assert, SIPI×2.
    write(&bus, 1, reg::TPR, 0x20);
    ipi(&bus, 0, 1, 0xc500);
    assert_eq!(rec[1].take(), [Event::Init]);
    assert_eq!(read(&bus, 1, reg::TPR), 0, "INIT resets the LAPIC");
    assert_eq!(read(&bus, 1, reg::SVR), 0xff);
    ipi(&bus, 0, 1, 0x8500);
    assert!(rec[1].take().is_empty(), "INIT de-assert is ignored");
    ipi(&bus, 0, 1, 0x4609);
    ipi(&bus, 0, 1, 0x4609);
    assert_eq!(rec[1].take(), [Event::Startup(9), Event::Startup(9)]);
    assert!(rec[0].take().iter().all(|e| *e == Event::Pending));
}

#[test]
fn msi_and_ioapic_messages() {
    let (bus, _) = bus(2);
    assert!(bus.deliver_msi(0xfee0_1000, 0x0045));
    assert_eq!(pending(&bus), [None, Some(0x45)]);
    assert!(!bus.deliver_msi(0xfed0_1000, 0x0045));
    // Logical MSI (address bit 2) to LDR bit 0.
    write(&bus, 0, reg::LDR, 1 << 24);
    assert!(bus.deliver_msi(0xfee0_1004, 0x0046));
    assert_eq!(pending(&bus), [Some(0x46), None]);
    assert!(bus.deliver_ioapic(1, DestMode::Physical, 0x47, DeliveryMode::Fixed, false));
    assert!(!bus.deliver_ioapic(7, DestMode::Physical, 0x47, DeliveryMode::Fixed, false));
    assert!(!bus.deliver_ioapic(1, DestMode::Physical, 0x47, DeliveryMode::ExtInt, false));
    assert_eq!(pending(&bus), [None, Some(0x47)]);
    // A software-disabled APIC refuses fixed interrupts.
    write(&bus, 1, reg::SVR, 0xff);
    assert!(!bus.deliver_ioapic(1, DestMode::Physical, 0x48, DeliveryMode::Fixed, false));
}

#[derive(Default)]
struct Eois(Mutex<Vec<u8>>);

impl EoiListener for Eois {
    fn end_of_interrupt(&self, vector: u8) {
        self.0.lock().unwrap().push(vector);
    }
}

#[test]
fn level_triggered_eoi_is_broadcast() {
    let (bus, _) = bus(1);
    let eois = Arc::new(Eois::default());
    bus.set_eoi_listener(Arc::downgrade(&eois) as Weak<dyn EoiListener>);
    assert!(bus.deliver_ioapic(0, DestMode::Physical, 0x55, DeliveryMode::Fixed, true));
    assert!(bus.deliver_ioapic(0, DestMode::Physical, 0x56, DeliveryMode::Fixed, false));
    assert_eq!(bus.take_interrupt(0), Some(0x56));
    write(&bus, 0, reg::EOI, 0);
    assert_eq!(bus.take_interrupt(0), Some(0x55));
    write(&bus, 0, reg::EOI, 0);
    assert_eq!(*eois.0.lock().unwrap(), [0x55]);
}

struct FakePic(AtomicU8);

impl ExtIntSource for FakePic {
    fn has_interrupt(&self) -> bool {
        self.0.load(Ordering::SeqCst) != 0
    }
    fn intack(&self) -> u8 {
        self.0.swap(0, Ordering::SeqCst)
    }
}

#[test]
fn extint_through_lint0() {
    let (bus, rec) = bus(2);
    let pic = Arc::new(FakePic(AtomicU8::new(0x08)));
    bus.set_extint_source(Arc::downgrade(&pic) as Weak<dyn ExtIntSource>);
    rec[0].take();
    bus.extint_raised();
    assert_eq!(rec[0].take(), [Event::Pending]);
    assert!(rec[1].take().is_empty(), "the AP's LINT0 is masked");
    assert!(bus.has_interrupt(0) && !bus.has_interrupt(1));
    assert_eq!(pending(&bus), [Some(0x08), None]);
    // Masking LINT0 cuts the 8259 off.
    pic.0.store(0x09, Ordering::SeqCst);
    write(&bus, 0, reg::LVT_LINT0, LVT_MASKED | 0x700);
    assert_eq!(bus.take_interrupt(0), None);
}

#[test]
fn cr8_is_tpr_high_nibble() {
    let (bus, _) = bus(1);
    bus.set_cr8(0, 0x5);
    assert_eq!(read(&bus, 0, reg::TPR), 0x50);
    assert_eq!(bus.cr8(0), 5);
    bus.deliver_ioapic(0, DestMode::Physical, 0x55, DeliveryMode::Fixed, false);
    assert!(!bus.has_interrupt(0));
    bus.set_cr8(0, 0);
    assert_eq!(bus.take_interrupt(0), Some(0x55));
}

#[test]
fn unknown_cpus_are_harmless() {
    let (bus, _) = bus(1);
    bus.mmio_write(9, 0xb0, &[0; 4]);
    let mut b = [1u8; 4];
    bus.mmio_read(9, 0x30, &mut b);
    assert_eq!(b, [0; 4]);
    assert!(!bus.set_wakeup(9, Arc::new(Recorder::default())));
    assert!(!bus.set_wakeup(0, Arc::new(Recorder::default())), "already connected");
    assert_eq!(bus.take_interrupt(9), None);
    assert!(!bus.take_nmi(9) && !bus.has_interrupt(9) && !bus.poll_timer(9, Instant::now()));
    assert_eq!(bus.next_timer_deadline(9), None);
    assert_eq!(bus.set_tsc_deadline(9, 1), Err(ApicError::NoSuchCpu(9)));
    bus.set_cr8(9, 1);
    assert_eq!(bus.cr8(9), 0);
}
