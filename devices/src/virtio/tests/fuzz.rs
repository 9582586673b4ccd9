//! Random descriptor tables and rings (fixed seeds, so failures reproduce)
//! fed to each device: no panic, no hang, and every write the device
//! reports lies in guest RAM.

use std::io::{Read, Write};

use vm_memory::{Bytes, GuestAddress};

use super::net::frame_pipe;
use super::*;
use crate::virtio::block::{Block, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use crate::virtio::net::Net;
use crate::virtio::rng::Rng;
use crate::virtio::VirtioDevice;

const RINGS: u64 = 0x80000;
const QSIZE: u16 = 16;
/// Where plausible request headers and indirect tables live.
const HEADERS: [u64; 3] = [0x1000, 0x1100, 0x1200];
const TABLES: u64 = 0x4000;

fn addr(rng: &mut XorShift) -> u64 {
    match rng.below(8) {
        0 => HEADERS[rng.below(3) as usize],
        1 => TABLES + 16 * rng.below(16),
        // Around the ends of both RAM regions and the hole.
        2 => [0x10_0000u64, 0x20_0000, 0x30_0000][rng.below(3) as usize].wrapping_sub(rng.below(64)),
        3 => u64::MAX - rng.below(4096),
        4 => rng.next(),
        _ => rng.below(0x40_0000),
    }
}

fn len(rng: &mut XorShift) -> u32 {
    match rng.below(10) {
        0 => u32::MAX - rng.below(16) as u32,
        1 => rng.below(0x20_0000) as u32,
        2 => 16 * rng.below(20) as u32,
        _ => rng.below(2048) as u32,
    }
}

fn flags(rng: &mut XorShift) -> u16 {
    let mut f = 0;
    if rng.chance(60) {
        f |= F_NEXT;
    }
    if rng.chance(50) {
        f |= F_WRITE;
    }
    if rng.chance(8) {
        f |= F_INDIRECT;
    }
    if rng.chance(2) {
        f |= rng.next() as u16;
    }
    f
}

/// Fills the descriptor table, some indirect tables, headers and the
/// available ring with random (but often plausible) contents.
fn scramble(env: &Env, rng: &mut XorShift) -> DriverQueue {
    let mut dq = DriverQueue::new(&env.mem, RINGS, QSIZE);
    for i in 0..QSIZE {
        dq.write_desc(i, addr(rng), len(rng), flags(rng), rng.below(u64::from(QSIZE) + 4) as u16);
    }
    for i in 0..16u64 {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr(rng).to_le_bytes());
        raw[8..12].copy_from_slice(&len(rng).to_le_bytes());
        raw[12..14].copy_from_slice(&flags(rng).to_le_bytes());
        raw[14..16].copy_from_slice(&(rng.below(20) as u16).to_le_bytes());
        env.mem.write_slice(&raw, GuestAddress(TABLES + 16 * i)).unwrap();
    }
    for &h in &HEADERS {
        let kind = [T_IN, T_OUT, T_FLUSH, T_GET_ID, rng.next() as u32][rng.below(5) as usize];
        let sector = if rng.chance(80) { rng.below(40) } else { rng.next() };
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&kind.to_le_bytes());
        raw[8..16].copy_from_slice(&sector.to_le_bytes());
        env.mem.write_slice(&raw, GuestAddress(h)).unwrap();
    }
    for _ in 0..rng.below(20) {
        dq.publish(rng.below(u64::from(QSIZE) + 4) as u16);
    }
    if rng.chance(5) {
        // An available index far ahead of what was published.
        env.mem.write_obj(rng.next() as u16, GuestAddress(dq.avail + 2)).unwrap();
    }
    if rng.chance(10) {
        // Random used_event.
        env.mem.write_obj(rng.next() as u16, GuestAddress(dq.avail + 4 + 2 * u64::from(QSIZE))).unwrap();
    }
    dq
}

fn rearm(env: &Env, dev: &mut dyn VirtioDevice, queues: Vec<virtio_queue::Queue>, features: u64) {
    dev.reset();
    env.interrupt.reset();
    env.hook.0.lock().unwrap().clear();
    dev.activate(env.activation(queues, features)).unwrap();
}

#[test]
fn block_survives_random_descriptor_tables() {
    let img = TempFile::with_contents(&[0x11; 32 * 512]);
    let env = Env::new();
    let mut dev = Block::open(img.path(), false).unwrap();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let dq = scramble(&env, &mut rng);
        let features = if rng.chance(50) { crate::virtio::features::RING_EVENT_IDX } else { 0 };
        let mut q = dq.queue();
        virtio_queue::QueueT::set_event_idx(&mut q, features != 0);
        rearm(&env, &mut dev, vec![q], features);
        dev.process_queue(0);
        env.assert_writes_in_ram();
    }
    // Random writes may land anywhere in the image, never past it.
    assert_eq!(img.read().len(), 32 * 512);
}

#[test]
fn rng_survives_random_descriptor_tables() {
    let env = Env::new();
    let mut dev = Rng::new();
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    for _ in 0..1500 {
        let dq = scramble(&env, &mut rng);
        rearm(&env, &mut dev, vec![dq.queue()], 0);
        dev.process_queue(0);
        env.assert_writes_in_ram();
    }
}

#[test]
fn net_survives_random_descriptor_tables_and_frames() {
    let env = Env::new();
    let (backend, mut peer) = frame_pipe();
    let mut dev = Net::new("fuzz".into(), backend, [2, 0, 0, 0, 0, 1]);
    let mut rng = XorShift(0x0bad_cafe_f00d_d00d);
    let mut sink = vec![0u8; 70000];
    for _ in 0..3000 {
        let rx = scramble(&env, &mut rng);
        // The transmit rings sit after the receive rings, scrambled alike.
        let tx = DriverQueue::new(&env.mem, RINGS + 0x1000, QSIZE);
        for i in 0..QSIZE {
            tx.write_desc(i, addr(&mut rng), len(&mut rng), flags(&mut rng), rng.below(20) as u16);
        }
        let mut tx = tx;
        for _ in 0..rng.below(20) {
            tx.publish(rng.below(20) as u16);
        }
        rearm(&env, &mut dev, vec![rx.queue(), tx.queue()], 0);
        for _ in 0..rng.below(3) {
            let mut frame = vec![0u8; rng.below(2000) as usize];
            frame.iter_mut().for_each(|b| *b = rng.next() as u8);
            if frame.len() > 1 && rng.chance(80) {
                frame[1] = 0;
            }
            // A full socket just drops it, like a busy tap.
            let _ = peer.write(&frame);
        }
        dev.process_backend();
        dev.process_queue(0);
        dev.process_queue(1);
        while peer.read(&mut sink).is_ok_and(|n| n > 0) {}
        env.assert_writes_in_ram();
    }
}
