use std::time::Duration;

use super::*;
use crate::irqchip::clock::TSC_HZ;

fn lapic(id: u32) -> Lapic {
    Lapic::new(id, Arc::new(GuestClock::new()))
}

/// A software-enabled APIC, as after Linux's `setup_local_APIC`.
fn enabled(id: u32) -> Lapic {
    let mut l = lapic(id);
    assert_eq!(w(&mut l, reg::SVR, 0x1ff), LapicOutput::default());
    l
}

fn w(l: &mut Lapic, off: u32, value: u32) -> LapicOutput {
    l.mmio_write(off.into(), &value.to_le_bytes())
}

fn r(l: &mut Lapic, off: u32) -> u32 {
    let mut b = [0u8; 4];
    l.mmio_read(off.into(), &mut b);
    u32::from_le_bytes(b)
}

fn x2apic(id: u32) -> Lapic {
    let mut l = enabled(id);
    let base = l.apic_base() | APIC_BASE_EXTD;
    assert_eq!(l.set_apic_base(base), Ok(ApicBaseChange { old: ApicMode::XApic, new: ApicMode::X2Apic }));
    l
}

fn msr(reg: u32) -> u32 {
    X2APIC_MSR_FIRST + (reg >> 4)
}

#[test]
fn power_up_state() {
    let mut bsp = lapic(0);
    let mut ap = lapic(3);
    assert_eq!(bsp.apic_base(), 0xfee0_0900);
    assert_eq!(ap.apic_base(), 0xfee0_0800);
    assert_eq!(r(&mut ap, reg::ID), 3 << 24);
    assert_eq!(r(&mut ap, reg::VERSION), 0x0005_0014);
    assert_eq!(r(&mut ap, reg::SVR), 0xff);
    assert_eq!(r(&mut ap, reg::DFR), u32::MAX);
    assert_eq!(r(&mut ap, reg::LVT_TIMER), LVT_MASKED);
    // The BSP's LINT0 is in virtual-wire mode; the AP's is masked.
    assert_eq!(r(&mut bsp, reg::LVT_LINT0), 0x700);
    assert!(bsp.accepts_pic_interrupts());
    assert!(!ap.accepts_pic_interrupts());
    assert_eq!(bsp.xapic_window(), Some(DEFAULT_APIC_BASE));
}

#[test]
fn xapic_register_round_trips() {
    let mut l = enabled(1);
    for (off, value, expect) in [
        (reg::TPR, 0x1234_5678, 0x78),
        (reg::LDR, 0x0312_3456, 0x0300_0000),
        (reg::DFR, 0x0123_4567, 0x0fff_ffff),
        (reg::SVR, 0xffff_f1ff, 0x1ff),
        (reg::ICR_HIGH, 0x1234_5678, 0x1200_0000),
        (reg::LVT_TIMER, 0xffff_ffff, 0x0007_00ff),
        (0x330, 0xffff_ffff, 0x0001_07ff),
        (0x340, 0xffff_ffff, 0x0001_07ff),
        (reg::LVT_LINT0, 0xffff_ffff, 0x0001_a7ff),
        (0x360, 0xffff_ffff, 0x0001_a7ff),
        (reg::LVT_ERROR, 0xffff_ffff, 0x0001_00ff),
        (reg::TIMER_DIVIDE, 0xffff_ffff, 0xb),
        (reg::TIMER_INITIAL, 0x1234, 0x1234),
    ] {
        let _ = w(&mut l, off, value);
        assert_eq!(r(&mut l, off), expect, "register {off:#x}");
    }
    // Read-only registers ignore writes.
    let _ = w(&mut l, reg::ID, 0x0500_0000);
    let _ = w(&mut l, reg::VERSION, 0);
    assert_eq!((r(&mut l, reg::ID), r(&mut l, reg::VERSION)), (1 << 24, APIC_VERSION));
    // Byte reads see their part of a register; unaligned writes are ignored.
    let mut b = [0u8; 1];
    l.mmio_read(u64::from(reg::SVR) + 1, &mut b);
    assert_eq!(b, [0x01]);
    l.mmio_read(u64::from(reg::SVR) + 4, &mut b);
    assert_eq!(b, [0]);
    let _ = l.mmio_write(u64::from(reg::TPR) + 1, &[0xff; 4]);
    let _ = l.mmio_write(reg::TPR.into(), &[0xff; 2]);
    assert_eq!(r(&mut l, reg::TPR), 0x78);
}

#[test]
fn esr_latches_errors_on_write() {
    let mut l = enabled(0);
    let _ = w(&mut l, 0x2f0, 1); // CMCI: absent with 6 LVTs
    assert_eq!(r(&mut l, reg::ESR), 0);
    let _ = w(&mut l, reg::ESR, 0);
    assert_eq!(r(&mut l, reg::ESR), ESR_ILLEGAL_REGISTER);
    assert!(!l.accept(3, false));
    let _ = w(&mut l, reg::ESR, 0);
    assert_eq!(r(&mut l, reg::ESR), ESR_RECEIVE_ILLEGAL_VECTOR);
    // With the error LVT unmasked, errors raise its vector.
    let _ = w(&mut l, reg::LVT_ERROR, 0xfe);
    assert_eq!(w(&mut l, reg::ICR_LOW, 0x4_0005).ipi, None);
    assert_eq!(l.acknowledge(), Some(0xfe));
    let _ = w(&mut l, reg::ESR, 0);
    assert_eq!(r(&mut l, reg::ESR), ESR_SEND_ILLEGAL_VECTOR);
}

#[test]
fn x2apic_msr_round_trips_and_faults() {
    let mut l = x2apic(0x13);
    assert_eq!(l.xapic_window(), None);
    assert_eq!(l.msr_read(msr(reg::ID)), Some(0x13));
    assert_eq!(l.msr_read(msr(reg::LDR)), Some(1 << 16 | 1 << 3));
    assert_eq!(l.msr_read(msr(reg::VERSION)), Some(APIC_VERSION.into()));
    assert_eq!(l.msr_write(msr(reg::TPR), 0x20), Ok(LapicOutput::default()));
    assert_eq!(l.msr_read(msr(reg::TPR)), Some(0x20));
    assert_eq!(l.msr_write(msr(reg::LVT_TIMER), 0x2_00ef).map(|_| ()), Ok(()));
    assert_eq!(l.msr_read(msr(reg::LVT_TIMER)), Some(0x2_00ef));
    // ICR is one 64-bit register; writing it sends the IPI.
    let out = l.msr_write(msr(reg::ICR_LOW), 0x0000_0007_0000_4031).unwrap();
    assert_eq!(l.msr_read(msr(reg::ICR_LOW)), Some(0x0000_0007_0000_4031));
    let ipi = out.ipi.unwrap();
    assert_eq!((ipi.vector, ipi.dest, ipi.x2apic_dest), (0x31, 7, true));
    // SELF_IPI.
    let out = l.msr_write(msr(reg::SELF_IPI), 0x45).unwrap();
    assert_eq!(out.ipi, Some(InterruptMessage::self_ipi(0x45)));
    // #GP cases (SDM §11.12.1.2).
    for absent in [reg::APR, 0xc0, reg::DFR, reg::ICR_HIGH, 0x2f0, 0x3a0] {
        assert_eq!(l.msr_read(msr(absent)), None, "{absent:#x}");
    }
    assert_eq!(l.msr_read(msr(reg::EOI)), None);
    assert_eq!(l.msr_read(msr(reg::SELF_IPI)), None);
    assert!(l.msr_write(msr(reg::EOI), 1).is_err());
    assert!(l.msr_write(msr(reg::ESR), 1).is_err());
    assert!(l.msr_write(msr(reg::SELF_IPI), 0x100).is_err());
    assert!(l.msr_write(msr(reg::TPR), 1 << 32).is_err());
    assert!(l.msr_write(msr(reg::ID), 0).is_err());
    assert!(l.msr_write(msr(reg::LDR), 0).is_err());
    assert!(l.msr_write(msr(reg::ICR_LOW), 1 << 13).is_err());
    assert!(l.msr_write(0x900, 0).is_err());
    assert_eq!(l.msr_write(msr(reg::EOI), 0), Ok(LapicOutput::default()));
    // MMIO is off in x2APIC mode.
    assert_eq!(r(&mut l, reg::VERSION), 0);
    // And MSRs are off in xAPIC mode.
    let mut x = enabled(0);
    assert_eq!(x.msr_read(msr(reg::VERSION)), None);
    assert_eq!(x.msr_write(msr(reg::TPR), 0), Err(ApicError::NotX2Apic(msr(reg::TPR))));
}

#[test]
fn apic_base_transitions() {
    let mut l = enabled(0);
    let base = l.apic_base();
    let _ = w(&mut l, reg::TPR, 0x30);
    let x2 = base | APIC_BASE_EXTD;
    let off = base & !(APIC_BASE_ENABLE | APIC_BASE_EXTD);
    assert!(matches!(l.set_apic_base(base | 1), Err(ApicError::InvalidApicBase(_))));
    assert!(matches!(l.set_apic_base(off | APIC_BASE_EXTD), Err(ApicError::InvalidApicBase(_))));
    assert!(l.set_apic_base(x2).is_ok());
    assert_eq!(l.msr_read(msr(reg::TPR)), Some(0x30), "xAPIC → x2APIC keeps state");
    assert!(matches!(l.set_apic_base(base), Err(ApicError::InvalidTransition { .. })));
    assert_eq!(l.set_apic_base(off), Ok(ApicBaseChange { old: ApicMode::X2Apic, new: ApicMode::Disabled }));
    assert!(matches!(l.set_apic_base(x2), Err(ApicError::InvalidTransition { .. })));
    assert!(!l.accept(0x40, false));
    assert_eq!(l.set_apic_base(base), Ok(ApicBaseChange { old: ApicMode::Disabled, new: ApicMode::XApic }));
    assert_eq!((r(&mut l, reg::TPR), r(&mut l, reg::SVR)), (0, 0xff), "disabling resets the APIC");
    // The BSP flag is read-only; the base may move.
    assert!(l.set_apic_base(0xfed0_0000 | APIC_BASE_ENABLE).is_ok());
    assert_eq!(l.apic_base(), 0xfed0_0000 | APIC_BASE_ENABLE | APIC_BASE_BSP);
    assert_eq!(l.xapic_window(), Some(0xfed0_0000));
}

#[test]
fn ppr_follows_tpr_and_isr() {
    let mut l = enabled(0);
    assert_eq!(l.ppr(), 0);
    l.set_tpr(0x35);
    assert_eq!(l.ppr(), 0x35);
    assert!(l.accept(0x51, false));
    assert_eq!(l.acknowledge(), Some(0x51));
    assert_eq!(l.ppr(), 0x50);
    l.set_tpr(0x62);
    assert_eq!(l.ppr(), 0x62);
    assert_eq!(r(&mut l, reg::PPR), 0x62);
}

#[test]
fn accept_acknowledge_eoi() {
    let mut l = enabled(0);
    assert!(l.accept(0x41, false));
    assert!(l.accept(0x62, true));
    assert!(l.accept(0x45, false));
    assert_eq!(r(&mut l, reg::IRR + 0x20), 1 << 1 | 1 << 5); // vectors 0x41, 0x45
    assert_eq!(r(&mut l, reg::TMR + 0x30), 1 << 2); // vector 0x62
    assert_eq!(l.highest_pending(), Some(0x62));
    assert_eq!(l.acknowledge(), Some(0x62));
    assert_eq!(r(&mut l, reg::ISR + 0x30), 1 << 2);
    // 0x45 is in a lower class than the in-service 0x62: held.
    assert_eq!(l.highest_pending(), None);
    assert_eq!(l.acknowledge(), None);
    // A higher class nests.
    assert!(l.accept(0x71, false));
    assert_eq!(l.acknowledge(), Some(0x71));
    assert_eq!(w(&mut l, reg::EOI, 0).eoi, None, "edge-triggered: no EOI broadcast");
    assert_eq!(w(&mut l, reg::EOI, 0).eoi, Some(0x62), "level-triggered: broadcast");
    assert_eq!(l.acknowledge(), Some(0x45));
    // Same class as TPR is blocked; TPR 0 lets it through.
    let _ = w(&mut l, reg::EOI, 0);
    l.set_tpr(0x40);
    assert_eq!(l.highest_pending(), None);
    l.set_tpr(0);
    assert_eq!(l.acknowledge(), Some(0x41));
    let _ = w(&mut l, reg::EOI, 0);
    assert_eq!(l.eoi(), None);
}

#[test]
fn software_disable_drops_interrupts_and_masks_lvts() {
    let mut l = lapic(0);
    assert!(!l.accept(0x40, false), "SVR.8 is clear at power-up");
    let _ = w(&mut l, reg::LVT_TIMER, 0x40);
    assert_eq!(r(&mut l, reg::LVT_TIMER), LVT_MASKED | 0x40);
    let _ = w(&mut l, reg::SVR, 0x1ff);
    let _ = w(&mut l, reg::LVT_TIMER, 0x40);
    assert_eq!(r(&mut l, reg::LVT_TIMER), 0x40);
    let _ = w(&mut l, reg::SVR, 0xff);
    assert_eq!(r(&mut l, reg::LVT_TIMER), LVT_MASKED | 0x40);
    assert!(!l.accepts_pic_interrupts());
}

#[test]
fn icr_write_produces_ipis() {
    let mut l = enabled(2);
    let _ = w(&mut l, reg::ICR_HIGH, 0x0500_0000);
    let ipi = w(&mut l, reg::ICR_LOW, 0x4831).ipi.unwrap();
    assert_eq!(ipi.dest, 5);
    assert_eq!(ipi.dest_mode, DestMode::Logical);
    assert_eq!(ipi.delivery, DeliveryMode::Fixed);
    assert!(ipi.assert && !ipi.x2apic_dest && !ipi.level_triggered);
    // Delivery status reads idle.
    assert_eq!(r(&mut l, reg::ICR_LOW), 0x4831);
    let ipi = w(&mut l, reg::ICR_LOW, 0x4_4040).ipi.unwrap();
    assert_eq!(ipi.shorthand, Shorthand::SelfOnly);
    // INIT level de-assert keeps its trigger bit for the bus to ignore.
    let ipi = w(&mut l, reg::ICR_LOW, 0x8500).ipi.unwrap();
    assert!(ipi.level_triggered && !ipi.assert);
}

#[test]
fn destination_matching() {
    let msg = |dest, dest_mode, x2apic_dest| InterruptMessage {
        dest,
        dest_mode,
        x2apic_dest,
        ..InterruptMessage::self_ipi(0x40)
    };
    let mut flat = enabled(3);
    let _ = w(&mut flat, reg::LDR, 0x0400_0000);
    assert!(flat.matches(&msg(3, DestMode::Physical, false)));
    assert!(!flat.matches(&msg(4, DestMode::Physical, false)));
    assert!(flat.matches(&msg(0xff, DestMode::Physical, false)));
    assert!(flat.matches(&msg(0x06, DestMode::Logical, false)));
    assert!(!flat.matches(&msg(0x03, DestMode::Logical, false)));
    let mut cluster = enabled(4);
    let _ = w(&mut cluster, reg::DFR, 0x0fff_ffff);
    let _ = w(&mut cluster, reg::LDR, 0x2100_0000);
    assert!(cluster.matches(&msg(0x23, DestMode::Logical, false)));
    assert!(!cluster.matches(&msg(0x13, DestMode::Logical, false)));
    assert!(!cluster.matches(&msg(0x22, DestMode::Logical, false)));
    let x2 = x2apic(0x21);
    assert!(x2.matches(&msg(0x0002_0002, DestMode::Logical, true)));
    assert!(!x2.matches(&msg(0x0001_0002, DestMode::Logical, true)));
    assert!(x2.matches(&msg(0x21, DestMode::Physical, true)));
    assert!(x2.matches(&msg(u32::MAX, DestMode::Physical, true)));
    assert!(x2.matches(&msg(0xff, DestMode::Physical, false)), "8-bit broadcast from an IOAPIC");
}

/// Sleeps until `deadline`, then polls until the timer fires; returns when.
fn wait_fire(l: &mut Lapic, deadline: Instant) -> Instant {
    loop {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        if l.poll_timer(now) {
            return now;
        }
        assert!(now < deadline, "the timer did not fire at its deadline");
    }
}

#[test]
fn one_shot_timer_fires_at_its_deadline() {
    let mut l = enabled(0);
    let _ = w(&mut l, reg::TIMER_DIVIDE, 0xb);
    let _ = w(&mut l, reg::LVT_TIMER, 0x40);
    let start = Instant::now();
    let _ = w(&mut l, reg::TIMER_INITIAL, 125_000); // 5 ms at 25 MHz
    let deadline = l.next_timer_deadline().unwrap();
    assert!(deadline >= start + Duration::from_millis(5));
    assert!(!l.poll_timer(deadline - Duration::from_nanos(1)));
    let count = r(&mut l, reg::TIMER_CURRENT);
    assert!(count > 0 && count <= 125_000);
    let fired = wait_fire(&mut l, deadline);
    assert!(fired >= start + Duration::from_millis(5));
    assert_eq!(l.acknowledge(), Some(0x40));
    assert_eq!(r(&mut l, reg::TIMER_CURRENT), 0);
    assert_eq!(l.next_timer_deadline(), None);
}

#[test]
fn periodic_timer_fires_every_period() {
    let mut l = enabled(0);
    let _ = w(&mut l, reg::TIMER_DIVIDE, 0x0); // ÷2
    let _ = w(&mut l, reg::LVT_TIMER, 1 << 17 | 0x41);
    let start = Instant::now();
    let _ = w(&mut l, reg::TIMER_INITIAL, 25_000); // 2 ms
    for k in 1..=3u32 {
        let deadline = l.next_timer_deadline().unwrap();
        let fired = wait_fire(&mut l, deadline);
        assert!(fired >= start + Duration::from_millis(2) * k);
        assert_eq!(l.acknowledge(), Some(0x41));
        let _ = w(&mut l, reg::EOI, 0);
    }
    let count = r(&mut l, reg::TIMER_CURRENT);
    assert!((1..=25_000).contains(&count));
    // Masked, it keeps counting but neither fires nor asks to be polled.
    let _ = w(&mut l, reg::LVT_TIMER, 1 << 17 | LVT_MASKED | 0x41);
    assert_eq!(l.next_timer_deadline(), None);
    assert!(!l.poll_timer(Instant::now() + Duration::from_millis(10)));
}

#[test]
fn tsc_deadline_timer_fires_at_its_tsc() {
    let clock = Arc::new(GuestClock::new());
    let mut l = Lapic::new(0, clock.clone());
    let _ = w(&mut l, reg::SVR, 0x1ff);
    l.set_tsc_deadline(1);
    assert_eq!(l.tsc_deadline(), 0, "ignored outside TSC-deadline mode");
    let _ = w(&mut l, reg::LVT_TIMER, 2 << 17 | 0xec);
    let start = Instant::now();
    let deadline_tsc = clock.tsc_at(start) + 3 * TSC_HZ / 1000;
    l.set_tsc_deadline(deadline_tsc);
    assert_eq!(l.tsc_deadline(), deadline_tsc);
    let _ = w(&mut l, reg::TIMER_INITIAL, 1000);
    assert_eq!(r(&mut l, reg::TIMER_INITIAL), 0, "ignored in TSC-deadline mode");
    let deadline = l.next_timer_deadline().unwrap();
    assert_eq!(deadline, start + Duration::from_millis(3));
    let fired = wait_fire(&mut l, deadline);
    assert!(fired >= start + Duration::from_millis(3));
    assert!(clock.tsc_at(fired) >= deadline_tsc);
    assert_eq!(l.tsc_deadline(), 0, "disarmed after firing");
    assert_eq!(l.acknowledge(), Some(0xec));
    // A deadline in the past fires at the next poll.
    l.set_tsc_deadline(1);
    assert!(l.poll_timer(Instant::now()));
}

#[test]
fn timer_expiry_while_masked_is_not_delivered_on_unmask() {
    let mut l = enabled(0);
    let _ = w(&mut l, reg::TIMER_DIVIDE, 0xb);
    let _ = w(&mut l, reg::LVT_TIMER, LVT_MASKED | 0x40);
    let _ = w(&mut l, reg::TIMER_INITIAL, 25); // 1 µs
    std::thread::sleep(Duration::from_millis(1));
    let _ = w(&mut l, reg::LVT_TIMER, 0x40);
    assert!(!l.poll_timer(Instant::now()));
    assert_eq!(l.highest_pending(), None);
}

#[test]
fn guest_garbage_never_panics() {
    let mut l = enabled(0);
    let mut x = 0x1234_5678u32;
    for off in (0..0x1010u64).step_by(4) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let _ = l.mmio_write(off, &x.to_le_bytes());
        l.mmio_read(off, &mut [0u8; 8]);
        let _ = l.mmio_write(off, &[]);
    }
    let mut l = x2apic(0);
    for m in X2APIC_MSR_FIRST..=X2APIC_MSR_LAST + 1 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let _ = l.msr_write(m, u64::from(x) | u64::from(x) << 40);
        let _ = l.msr_write(m, u64::from(x & 0xff));
        let _ = l.msr_read(m);
    }
    let _ = l.set_apic_base(u64::MAX);
    let _ = l.poll_timer(Instant::now() + Duration::from_secs(1 << 30));
}
