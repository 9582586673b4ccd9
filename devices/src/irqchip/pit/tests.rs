use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::irqchip::clock::TSC_HZ;

#[derive(Default)]
struct Counter(AtomicUsize);

impl IrqLine for Counter {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Io {
    pit: Arc<Pit>,
    port_b: Arc<dyn BusDevice>,
    irq: Arc<Counter>,
    clock: Arc<GuestClock>,
}

impl Io {
    fn new() -> Self {
        let clock = Arc::new(GuestClock::new());
        let irq = Arc::new(Counter::default());
        let pit = Arc::new(Pit::new(clock.clone(), irq.clone()));
        Io { port_b: pit.port_b(), pit, irq, clock }
    }

    fn outb(&self, port: u16, value: u8) {
        match port {
            0x61 => self.port_b.write(0, &[value]),
            _ => self.pit.write(u64::from(port) - PIT_BASE_PORT, &[value]),
        }
    }

    fn inb(&self, port: u16) -> u8 {
        let mut b = [0u8];
        match port {
            0x61 => self.port_b.read(0, &mut b),
            _ => self.pit.read(u64::from(port) - PIT_BASE_PORT, &mut b),
        }
        b[0]
    }

    /// Latches channel 2 and reads it (LSB/MSB access).
    fn latched2(&self) -> u16 {
        self.outb(0x43, 0x80);
        u16::from_le_bytes([self.inb(0x42), self.inb(0x42)])
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_nanos() * u128::from(PIT_HZ) / 1_000_000_000) as u64
}

fn duration_of(ticks: u64) -> Duration {
    Duration::from_nanos(ticks * 1_000_000_000 / PIT_HZ)
}

#[test]
fn channel2_counts_only_while_gated_on() {
    let io = Io::new();
    assert_eq!(io.inb(0x61) & PORT_B_GATE2, 0, "gate 2 starts off");
    io.outb(0x43, 0xb0); // channel 2, LSB/MSB, mode 0, binary
    io.outb(0x42, 0xff);
    io.outb(0x42, 0xff);
    let a = io.latched2();
    std::thread::sleep(Duration::from_millis(2));
    assert_eq!((a, io.latched2()), (0xffff, 0xffff), "gate off: no counting");
    let t0 = Instant::now();
    io.outb(0x61, 0x01);
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_millis(10));
    let t2 = Instant::now();
    let counted = u64::from(0xffff - io.latched2());
    let t3 = Instant::now();
    // The count wraps after 55 ms; only check the rate when it can't have.
    if t3 - t0 < Duration::from_millis(50) {
        assert!(counted + 2 >= ticks(t2 - t1), "counted {counted} in {:?}", t2 - t1);
        assert!(counted <= ticks(t3 - t0) + 2, "counted {counted} in {:?}", t3 - t0);
    }
    // Gate off again: the count holds.
    io.outb(0x61, 0x00);
    let held = io.latched2();
    std::thread::sleep(Duration::from_millis(1));
    assert_eq!(io.latched2(), held);
}

/// Linux's `pit_calibrate_tsc`: gate on, mode 0 for 10 ms, spin until OUT2.
#[test]
fn linux_pit_calibrate_tsc() {
    let io = Io::new();
    io.outb(0x61, (io.inb(0x61) & !0x02) | 0x01);
    let latch = PIT_HZ / 100;
    io.outb(0x43, 0xb0);
    io.outb(0x42, latch as u8);
    let before = Instant::now();
    io.outb(0x42, (latch >> 8) as u8);
    let tsc_start = io.clock.tsc();
    assert_eq!(io.inb(0x61) & PORT_B_OUT2, 0, "OUT2 is low while counting");
    let mut spins = 0u64;
    while io.inb(0x61) & PORT_B_OUT2 == 0 {
        spins += 1;
        assert!(before.elapsed() < Duration::from_secs(10), "OUT2 never rose");
    }
    let tsc_end = io.clock.tsc();
    assert!(before.elapsed() >= duration_of(latch));
    assert!(spins > 0);
    // The TSC rate measured against the PIT is at least the real one minus
    // the time OUT2 took to be seen (no upper bound: hosts stall).
    assert!((tsc_end - tsc_start) * 100 >= TSC_HZ * 99 / 100);
}

/// Linux's `quick_pit_calibrate`: mode 0 from 0xffff, watch the MSB fall.
#[test]
fn linux_quick_pit_calibrate_sees_the_msb_fall() {
    let io = Io::new();
    io.outb(0x61, (io.inb(0x61) & !0x02) | 0x01);
    io.outb(0x43, 0xb0);
    io.outb(0x42, 0xff);
    io.outb(0x42, 0xff);
    let start = Instant::now();
    let mut last = 0xffu8;
    let mut falls = 0;
    while falls < 5 && start.elapsed() < Duration::from_secs(10) {
        io.inb(0x42); // LSB
        let msb = io.inb(0x42);
        if start.elapsed() < Duration::from_millis(50) {
            assert!(msb <= last, "the count went up: {last:#x} → {msb:#x}");
        }
        if msb < last {
            falls += 1;
            last = msb;
        }
    }
    assert_eq!(falls, 5);
    // One MSB step is 256 ticks (~215 µs).
    assert!(start.elapsed() >= duration_of(256 * 4));
}

#[test]
fn latch_and_read_back_commands() {
    let io = Io::new();
    io.outb(0x43, 0xb4); // channel 2, LSB/MSB, mode 2
    io.outb(0x42, 0xe8);
    io.outb(0x42, 0x03); // 1000
                         // Read-back: status of channel 2 (gate off holds OUT high).
    io.outb(0x43, 0xe8);
    assert_eq!(io.inb(0x42), 0x80 | 0x30 | 2 << 1);
    // Status and count latched together: status first.
    io.outb(0x43, 0xc8);
    assert_eq!(io.inb(0x42), 0xb4);
    assert_eq!(u16::from_le_bytes([io.inb(0x42), io.inb(0x42)]), 1000);
    // A second latch before the first is read keeps the first value.
    io.outb(0x43, 0xb0);
    io.outb(0x42, 0xff);
    io.outb(0x42, 0xff);
    io.outb(0x61, 0x01);
    let start = Instant::now();
    io.outb(0x43, 0x80);
    std::thread::sleep(Duration::from_millis(2));
    io.outb(0x43, 0x80);
    let first = u16::from_le_bytes([io.inb(0x42), io.inb(0x42)]);
    let second = io.latched2();
    if start.elapsed() < Duration::from_millis(50) {
        assert!(u64::from(first - second) + 2 >= ticks(Duration::from_millis(2)), "{first} then {second}");
    }
    // A control word before a count: null count set.
    io.outb(0x43, 0xb0);
    io.outb(0x43, 0xe8);
    assert_eq!(io.inb(0x42) & 0x40, 0x40);
}

#[test]
fn access_modes_and_bcd() {
    let io = Io::new();
    io.outb(0x43, 0x90); // LSB only, mode 0
    io.outb(0x42, 0x20);
    assert_eq!(io.inb(0x42), 0x20);
    io.outb(0x43, 0xa0); // MSB only
    io.outb(0x42, 0x12);
    assert_eq!(io.inb(0x42), 0x12);
    io.outb(0x43, 0xb1); // LSB/MSB, BCD
    io.outb(0x42, 0x34);
    io.outb(0x42, 0x12);
    assert_eq!(io.latched2(), 0x1234);
    io.outb(0x43, 0xb1);
    io.outb(0x42, 0x00);
    io.outb(0x42, 0x00);
    assert_eq!(io.latched2(), 0x0000, "BCD 0 is 10000, which reads as 0000");
}

#[test]
fn channel0_rate_generator_raises_irq0() {
    let io = Io::new();
    assert_eq!(io.pit.next_deadline(), None, "unprogrammed: no interrupts");
    let count = 2386u64; // ~2 ms
    io.outb(0x43, 0x34); // channel 0, LSB/MSB, mode 2
    io.outb(0x40, count as u8);
    let start = Instant::now();
    io.outb(0x40, (count >> 8) as u8);
    for k in 1..=3u32 {
        let deadline = io.pit.next_deadline().unwrap();
        assert!(!io.pit.poll(deadline - Duration::from_nanos(1)));
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        assert!(io.pit.poll(now));
        assert!(now >= start + duration_of(count) * k);
    }
    assert_eq!(io.irq.0.load(Ordering::SeqCst), 3);
    // Reprogramming stops it until a new count arrives.
    io.outb(0x43, 0x34);
    assert_eq!(io.pit.next_deadline(), None);
}

#[test]
fn square_wave_toggles_out2() {
    let io = Io::new();
    io.outb(0x61, 0x03);
    io.outb(0x43, 0xb6); // channel 2, LSB/MSB, mode 3
    io.outb(0x42, 0xa9);
    io.outb(0x42, 0x04); // 1193: 1 kHz
    let start = Instant::now();
    let (mut high, mut low) = (false, false);
    while !(high && low) && start.elapsed() < Duration::from_secs(10) {
        let out = io.inb(0x61) & PORT_B_OUT2 != 0;
        high |= out;
        low |= !out;
    }
    assert!(high && low);
    // Gate off holds OUT2 high in mode 3.
    io.outb(0x61, 0x02);
    assert_ne!(io.inb(0x61) & PORT_B_OUT2, 0);
    assert_eq!(io.inb(0x61) & 0x03, 0x02);
}

#[test]
fn mode1_waits_for_a_gate_trigger() {
    let io = Io::new();
    io.outb(0x43, 0xb2); // channel 2, LSB/MSB, mode 1
    io.outb(0x42, 0x10);
    io.outb(0x42, 0x00);
    assert_ne!(io.inb(0x61) & PORT_B_OUT2, 0, "OUT high until triggered");
    io.outb(0x61, 0x01);
    let start = Instant::now();
    while io.inb(0x61) & PORT_B_OUT2 == 0 {
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    assert!(start.elapsed() >= duration_of(0x0f));
}

#[test]
fn guest_garbage_never_panics() {
    let io = Io::new();
    let mut x = 99u32;
    for _ in 0..20_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let port = [0x40u16, 0x41, 0x42, 0x43, 0x61][(x >> 8) as usize % 5];
        if x & 1 == 0 {
            io.outb(port, (x >> 16) as u8);
        } else {
            io.inb(port);
        }
        if x & 0x3f == 0 {
            let _ = io.pit.next_deadline();
            io.pit.poll(Instant::now() + Duration::from_millis(u64::from(x >> 26)));
        }
    }
    io.pit.write(4, &[1]);
    io.pit.read(4, &mut [0; 2]);
    io.pit.write(0, &[]);
    io.pit.read(0, &mut []);
    io.port_b.read(1, &mut [0]);
}
