use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::rng::Rng;
use crate::virtio::VirtioDevice;

#[test]
fn fills_writable_buffers() {
    let env = Env::new();
    let mut dq = DriverQueue::new(&env.mem, 0x80000, 8);
    let mut dev = Rng::new();
    dev.activate(env.activation(vec![dq.queue()], dev.features())).unwrap();

    dq.add(&[Buf(0x1000, 64, true), Buf(0x2000, 4000, true)]);
    dq.add(&[Buf(0x3000, 16, true)]);
    dev.process_queue(0);
    assert_eq!(dq.take_used(), vec![(0, 4064), (2, 16)]);
    let mut a = vec![0u8; 4000];
    env.mem.read_slice(&mut a, GuestAddress(0x2000)).unwrap();
    // 4000 zero bytes from getrandom won't happen.
    assert!(a.iter().filter(|&&b| b == 0).count() < 100);
    assert!(env.hook.covers(0x2000, 4000));
    assert!(env.irq.count() >= 1);
}

#[test]
fn bad_requests_come_back_empty() {
    let env = Env::new();
    let mut dq = DriverQueue::new(&env.mem, 0x80000, 8);
    let mut dev = Rng::new();
    dev.activate(env.activation(vec![dq.queue()], 0)).unwrap();
    // Device-readable buffer, buffer outside RAM, buffer crossing the hole.
    dq.add(&[Buf(0x1000, 64, false)]);
    dq.add(&[Buf(0x50_0000, 64, true)]);
    dq.add(&[Buf(0xf_fff0, 64, true)]);
    dev.process_queue(0);
    assert_eq!(dq.take_used(), vec![(0, 0), (1, 0), (2, 0)]);
    assert!(!env.interrupt.needs_reset());
    env.assert_writes_in_ram();
}

#[test]
fn huge_buffers_are_filled_partly() {
    let env = Env::new();
    let mut dq = DriverQueue::new(&env.mem, 0x80000, 8);
    let mut dev = Rng::new();
    dev.activate(env.activation(vec![dq.queue()], 0)).unwrap();
    dq.add(&[Buf(0x2_0000, 0x4_0000, true)]);
    dev.process_queue(0);
    assert_eq!(dq.take_used(), vec![(0, 64 << 10)]);
}

#[test]
fn inactive_device_ignores_notifications() {
    let mut dev = Rng::new();
    dev.process_queue(0);
    dev.reset();
    dev.process_queue(0);
}
