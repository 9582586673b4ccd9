use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

#[derive(Default)]
struct Int(AtomicUsize);

impl PicOutput for Int {
    fn intr_raised(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Ports {
    pic: Arc<Pic>,
    int: Arc<Int>,
    devs: [(u64, Arc<dyn BusDevice>); 3],
}

impl Ports {
    fn new() -> Self {
        let pic = Arc::new(Pic::new());
        let int = Arc::new(Int::default());
        pic.connect(Arc::downgrade(&int) as Weak<dyn PicOutput>);
        let devs = pic.ports();
        Ports { pic, int, devs }
    }

    fn dev(&self, port: u16) -> (&Arc<dyn BusDevice>, u64) {
        let (base, dev) = self.devs.iter().find(|(b, _)| (*b..*b + PIC_PORT_LEN).contains(&u64::from(port))).unwrap();
        (dev, u64::from(port) - base)
    }

    fn outb(&self, port: u16, value: u8) {
        let (dev, off) = self.dev(port);
        dev.write(off, &[value]);
    }

    fn inb(&self, port: u16) -> u8 {
        let (dev, off) = self.dev(port);
        let mut b = [0u8];
        dev.read(off, &mut b);
        b[0]
    }

    /// Linux's `init_8259A` (auto_eoi = false): vectors 0x30 and 0x38.
    fn init(&self, icw4: u8) {
        self.outb(0x21, 0xff);
        self.outb(0xa1, 0xff);
        self.outb(0x20, 0x11);
        self.outb(0x21, 0x30);
        self.outb(0x21, 0x04);
        self.outb(0x21, icw4);
        self.outb(0xa0, 0x11);
        self.outb(0xa1, 0x38);
        self.outb(0xa1, 0x02);
        self.outb(0xa1, 0x01);
        self.outb(0x21, 0x00);
        self.outb(0xa1, 0x00);
    }

    fn isr(&self, port: u16) -> u8 {
        self.outb(port, 0x0b);
        let isr = self.inb(port);
        self.outb(port, 0x0a);
        isr
    }
}

#[test]
fn linux_probe_mask_round_trip() {
    let p = Ports::new();
    // probe_8259A: mask the slave, write a probe value to the master.
    p.outb(0xa1, 0xff);
    p.outb(0x21, 0xfb);
    assert_eq!(p.inb(0x21), 0xfb);
    assert_eq!(p.inb(0xa1), 0xff);
}

#[test]
fn uninitialised_pic_is_silent() {
    let p = Ports::new();
    p.pic.pulse(4);
    assert!(!p.pic.has_interrupt());
    assert_eq!(p.int.0.load(Ordering::SeqCst), 0);
}

#[test]
fn master_irq_intack_and_eoi() {
    let p = Ports::new();
    p.init(0x01);
    p.pic.pulse(4);
    assert!(p.pic.has_interrupt());
    assert!(p.int.0.load(Ordering::SeqCst) > 0);
    assert_eq!(p.inb(0x20), 0x10, "IRR");
    assert_eq!(p.pic.intack(), 0x34);
    assert_eq!(p.isr(0x20), 0x10);
    assert!(!p.pic.has_interrupt());
    p.outb(0x20, 0x20); // non-specific EOI
    assert_eq!(p.isr(0x20), 0);
}

#[test]
fn priorities_and_nesting() {
    let p = Ports::new();
    p.init(0x01);
    p.pic.pulse(3);
    p.pic.pulse(1);
    assert_eq!(p.pic.intack(), 0x31);
    // IRQ 3 waits for IRQ 1's EOI; IRQ 0 preempts.
    assert!(!p.pic.has_interrupt());
    p.pic.pulse(0);
    assert_eq!(p.pic.intack(), 0x30);
    p.outb(0x20, 0x20);
    p.outb(0x20, 0x20);
    assert_eq!(p.pic.intack(), 0x33);
    p.outb(0x20, 0x63); // specific EOI for IRQ 3
    assert_eq!(p.isr(0x20), 0);
    // Masked requests stay pending until unmasked.
    p.outb(0x21, 0x20);
    p.pic.pulse(5);
    assert!(!p.pic.has_interrupt());
    p.outb(0x21, 0x00);
    assert_eq!(p.pic.intack(), 0x35);
}

#[test]
fn slave_irq_through_the_cascade() {
    let p = Ports::new();
    p.init(0x01);
    p.pic.pulse(12);
    assert!(p.pic.has_interrupt());
    assert_eq!(p.pic.intack(), 0x3c);
    assert_eq!((p.isr(0x20), p.isr(0xa0)), (0x04, 0x10));
    p.outb(0xa0, 0x20);
    p.outb(0x20, 0x20);
    assert_eq!((p.isr(0x20), p.isr(0xa0)), (0, 0));
    // A second slave IRQ after the EOIs raises the cascade again.
    p.pic.pulse(9);
    assert_eq!(p.pic.intack(), 0x39);
}

#[test]
fn auto_eoi_spurious_and_poll() {
    let p = Ports::new();
    p.init(0x03);
    p.pic.pulse(6);
    assert_eq!(p.pic.intack(), 0x36);
    assert_eq!(p.isr(0x20), 0, "auto-EOI leaves nothing in service");
    // Nothing pending: the master's IRQ 7 vector.
    assert_eq!(p.pic.intack(), 0x37);
    // OCW3 poll.
    p.pic.pulse(2 + 3);
    p.outb(0x20, 0x0c);
    assert_eq!(p.inb(0x20), 0x85);
    p.outb(0x20, 0x0c);
    assert_eq!(p.inb(0x20), 0);
}

#[test]
fn elcr_level_requests_follow_the_line() {
    let p = Ports::new();
    p.init(0x01);
    p.outb(0x4d0, 0xff);
    p.outb(0x4d1, 0xff);
    assert_eq!((p.inb(0x4d0), p.inb(0x4d1)), (0xf8, 0xde));
    p.pic.set_irq(10, true);
    assert_eq!(p.pic.intack(), 0x3a);
    p.outb(0xa0, 0x20);
    p.outb(0x20, 0x20);
    // Still asserted: requested again.
    assert_eq!(p.pic.intack(), 0x3a);
    p.outb(0xa0, 0x20);
    p.outb(0x20, 0x20);
    p.pic.set_irq(10, false);
    assert!(!p.pic.has_interrupt());
}

#[test]
fn guest_garbage_never_panics() {
    let p = Ports::new();
    let mut x = 7u32;
    for _ in 0..20_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let port = [0x20u16, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1][(x >> 8) as usize % 6];
        if x & 1 == 0 {
            p.outb(port, (x >> 16) as u8);
        } else {
            p.inb(port);
        }
        p.pic.set_irq((x >> 24) % 20, x & 2 != 0);
        if p.pic.has_interrupt() {
            p.pic.intack();
        }
    }
    for (_, dev) in &p.devs {
        dev.write(7, &[1]);
        dev.read(7, &mut [0; 2]);
        dev.write(0, &[]);
        dev.read(0, &mut []);
    }
}
