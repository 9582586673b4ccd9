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

/// What a well-behaved driver would queue, before mutation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Block,
    Rx,
    Tx,
    Rng,
}

/// A data buffer address: mostly well inside one of the RAM regions.
fn data_addr(rng: &mut XorShift) -> u64 {
    if rng.chance(70) {
        0x10000 + 16 * rng.below(0x6000)
    } else {
        0x20_0000 + 16 * rng.below(0xf000)
    }
}

/// One chain as a driver of that device would build it.
fn plausible(rng: &mut XorShift, shape: Shape) -> Vec<Buf> {
    match shape {
        Shape::Block => {
            let mut bufs = vec![Buf(HEADERS[rng.below(3) as usize], 16, false)];
            let writable = rng.chance(50);
            for _ in 0..rng.below(4) {
                bufs.push(Buf(data_addr(rng), 512 * (1 + rng.below(4) as u32), writable));
            }
            bufs.push(Buf(data_addr(rng), 1, true));
            bufs
        }
        Shape::Rx if rng.chance(50) => vec![Buf(data_addr(rng), 12, true), Buf(data_addr(rng), 1514, true)],
        Shape::Rx => vec![Buf(data_addr(rng), 1526, true)],
        Shape::Tx => vec![Buf(data_addr(rng), 12, false), Buf(data_addr(rng), rng.below(1600) as u32, false)],
        Shape::Rng => (0..1 + rng.below(2)).map(|_| Buf(data_addr(rng), rng.below(5000) as u32, true)).collect(),
    }
}

/// Queues a few plausible chains (some through indirect tables), then
/// corrupts descriptors, tables, headers and ring indices at random.
fn scramble(env: &Env, rng: &mut XorShift, base: u64, shape: Shape) -> DriverQueue {
    let mut dq = DriverQueue::new(&env.mem, base, QSIZE);
    for &h in &HEADERS {
        let kind = [T_IN, T_OUT, T_FLUSH, T_GET_ID, rng.next() as u32][rng.below(5) as usize];
        let sector = if rng.chance(90) { rng.below(40) } else { rng.next() };
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&kind.to_le_bytes());
        raw[8..16].copy_from_slice(&sector.to_le_bytes());
        env.mem.write_slice(&raw, GuestAddress(h)).unwrap();
    }
    for _ in 0..1 + rng.below(3) {
        let bufs = plausible(rng, shape);
        if rng.chance(15) {
            // The same chain in an indirect table, behind one descriptor.
            for (i, b) in bufs.iter().enumerate() {
                let last = i + 1 == bufs.len();
                let flags = if last { 0 } else { F_NEXT } | if b.2 { F_WRITE } else { 0 };
                let mut raw = [0u8; 16];
                raw[0..8].copy_from_slice(&b.0.to_le_bytes());
                raw[8..12].copy_from_slice(&b.1.to_le_bytes());
                raw[12..14].copy_from_slice(&flags.to_le_bytes());
                raw[14..16].copy_from_slice(&(i as u16 + 1).to_le_bytes());
                env.mem.write_slice(&raw, GuestAddress(TABLES + 16 * i as u64)).unwrap();
            }
            let head = dq.add(&[Buf(TABLES, 16 * bufs.len() as u32, false)]);
            dq.write_desc(head, TABLES, 16 * bufs.len() as u32, F_INDIRECT, 0);
        } else {
            dq.add(&bufs);
        }
    }
    // Mutations: whole descriptors, indirect entries, stray heads.
    while rng.chance(40) {
        let next = rng.below(u64::from(QSIZE) + 4) as u16;
        dq.write_desc(rng.below(u64::from(QSIZE)) as u16, addr(rng), len(rng), flags(rng), next);
    }
    while rng.chance(10) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr(rng).to_le_bytes());
        raw[8..12].copy_from_slice(&len(rng).to_le_bytes());
        raw[12..14].copy_from_slice(&flags(rng).to_le_bytes());
        raw[14..16].copy_from_slice(&(rng.below(20) as u16).to_le_bytes());
        env.mem.write_slice(&raw, GuestAddress(TABLES + 16 * rng.below(6))).unwrap();
    }
    while rng.chance(10) {
        dq.publish(rng.below(u64::from(QSIZE) + 4) as u16);
    }
    if rng.chance(3) {
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
    // `ok`: reads and GET_IDs that returned data.
    let (mut used, mut ok, mut broken) = (0, 0, 0);
    for _ in 0..3000 {
        let mut dq = scramble(&env, &mut rng, RINGS, Shape::Block);
        let features = if rng.chance(50) { crate::virtio::features::RING_EVENT_IDX } else { 0 };
        let mut q = dq.queue();
        virtio_queue::QueueT::set_event_idx(&mut q, features != 0);
        rearm(&env, &mut dev, vec![q], features);
        dev.process_queue(0);
        env.assert_writes_in_ram();
        let done = dq.take_used();
        used += done.len();
        ok += done.iter().filter(|&&(_, len)| len > 1).count();
        broken += usize::from(env.interrupt.needs_reset());
    }
    // The inputs reach every outcome: served, refused, device broken.
    eprintln!("block fuzz: {used} used, {ok} with data, {broken} broken");
    assert!(used > 3000 && ok > 300 && broken > 100, "{used} {ok} {broken}");
    // Random writes may land anywhere in the image, never past it.
    assert_eq!(img.read().len(), 32 * 512);
}

#[test]
fn rng_survives_random_descriptor_tables() {
    let env = Env::new();
    let mut dev = Rng::new();
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    let mut filled = 0;
    for _ in 0..1500 {
        let mut dq = scramble(&env, &mut rng, RINGS, Shape::Rng);
        rearm(&env, &mut dev, vec![dq.queue()], 0);
        dev.process_queue(0);
        env.assert_writes_in_ram();
        filled += dq.take_used().iter().filter(|&&(_, len)| len > 0).count();
    }
    assert!(filled > 1000, "{filled}");
}

#[test]
fn net_survives_random_descriptor_tables_and_frames() {
    let env = Env::new();
    let (backend, mut peer) = frame_pipe();
    let mut dev = Net::new("fuzz".into(), backend, [2, 0, 0, 0, 0, 1]);
    let mut rng = XorShift(0x0bad_cafe_f00d_d00d);
    let mut sink = vec![0u8; 70000];
    let (mut received, mut sent) = (0, 0);
    for _ in 0..3000 {
        let mut rx = scramble(&env, &mut rng, RINGS, Shape::Rx);
        let tx = scramble(&env, &mut rng, RINGS + 0x1000, Shape::Tx);
        rearm(&env, &mut dev, vec![rx.queue(), tx.queue()], 0);
        for _ in 0..rng.below(4) {
            // Not empty: a zero-length read is how a closed socket shows.
            let mut frame = vec![0u8; 1 + rng.below(2000) as usize];
            frame.iter_mut().for_each(|b| *b = rng.next() as u8);
            if frame.len() > 1 && rng.chance(90) {
                frame[1] = 0;
            }
            // A full socket just drops it, like a busy tap.
            let _ = peer.write(&frame);
        }
        dev.process_backend();
        dev.process_queue(0);
        dev.process_queue(1);
        while peer.read(&mut sink).is_ok_and(|n| n > 0) {
            sent += 1;
        }
        received += rx.take_used().iter().filter(|&&(_, len)| len > 0).count();
        env.assert_writes_in_ram();
    }
    // Frames flowed both ways despite the garbage.
    eprintln!("net fuzz: {received} frames received, {sent} sent");
    assert!(received > 1000 && sent > 1000, "{received} {sent}");
}
