use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::FromRawFd;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::net::{Net, F_MAC, HDR_LEN};
use crate::virtio::{features, VirtioDevice};

const RX_RINGS: u64 = 0x80000;
const TX_RINGS: u64 = 0x90000;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

/// A SOCK_SEQPACKET pair: keeps frame boundaries like a tap.
pub fn frame_pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the two-element array.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(ret, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nothing else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

pub struct NetRig {
    pub env: Env,
    pub rx: DriverQueue,
    pub tx: DriverQueue,
    pub dev: Net,
    pub peer: File,
}

pub fn net_rig() -> NetRig {
    let env = Env::new();
    let rx = DriverQueue::new(&env.mem, RX_RINGS, 16);
    let tx = DriverQueue::new(&env.mem, TX_RINGS, 16);
    let (backend, peer) = frame_pipe();
    let mut dev = Net::new("test".into(), backend, MAC);
    dev.activate(env.activation(vec![rx.queue(), tx.queue()], dev.features())).unwrap();
    NetRig { env, rx, tx, dev, peer }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn recv(peer: &mut File) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70000];
    match peer.read(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        Err(e) => panic!("peer read: {e}"),
    }
}

#[test]
fn features_and_mac() {
    let r = net_rig();
    let f = r.dev.features();
    assert_ne!(f & features::VERSION_1, 0);
    assert_ne!(f & F_MAC, 0);
    // No offloads: only the generic bits and MAC.
    assert_eq!(f & 0xffff_ffff & !(F_MAC | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX), 0);
    let mut mac = [0u8; 6];
    r.dev.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    let generated = crate::virtio::net::random_mac().unwrap();
    assert_eq!(generated[0] & 3, 2, "locally administered unicast");
}

#[test]
fn transmit_sends_frames_with_a_clean_header() {
    let mut r = net_rig();
    let payload = frame(1514, 1);
    // A header with flags the driver may not use (no offloads negotiated).
    r.env.mem.write_slice(&[0xff; HDR_LEN], GuestAddress(0x1000)).unwrap();
    r.env.mem.write_slice(&payload, GuestAddress(0x2000)).unwrap();
    let head = r.tx.add(&[Buf(0x1000, HDR_LEN as u32, false), Buf(0x2000, 1514, false)]);
    r.dev.process_queue(1);
    let got = recv(&mut r.peer).expect("a frame");
    assert_eq!(&got[..HDR_LEN], &[0u8; HDR_LEN]);
    assert_eq!(&got[HDR_LEN..], &payload[..]);
    assert_eq!(r.tx.take_used(), vec![(u32::from(head), 0)]);
    assert!(r.env.irq.count() >= 1);
}

#[test]
fn bad_transmit_buffers_are_dropped() {
    let mut r = net_rig();
    r.tx.add(&[Buf(0x1000, 4, false)]); // shorter than the header
    r.tx.add(&[Buf(0x1000, 64, true)]); // device-writable
    r.tx.add(&[Buf(0x50_0000, 64, false)]); // outside RAM
    r.tx.add(&[Buf(0x1000, 0x20000, false)]); // bigger than any frame
    r.dev.process_queue(1);
    assert_eq!(r.tx.take_used().len(), 4);
    assert!(recv(&mut r.peer).is_none());
    assert!(!r.env.interrupt.needs_reset());
}

#[test]
fn receive_fills_buffers_and_sets_num_buffers() {
    let mut r = net_rig();
    let payload = frame(600, 7);
    let mut packet = vec![0x5a; HDR_LEN];
    packet[1] = 0; // gso_type none
    packet.extend_from_slice(&payload);
    r.peer.write_all(&packet).unwrap();

    let head = r.rx.add(&[Buf(0x4000, HDR_LEN as u32, true), Buf(0x5000, 1514, true)]);
    assert!(r.dev.backend_wanted());
    r.dev.process_backend();
    assert_eq!(r.rx.take_used(), vec![(u32::from(head), (HDR_LEN + 600) as u32)]);
    let mut hdr = [0u8; HDR_LEN];
    r.env.mem.read_slice(&mut hdr, GuestAddress(0x4000)).unwrap();
    assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    let mut got = vec![0u8; 600];
    r.env.mem.read_slice(&mut got, GuestAddress(0x5000)).unwrap();
    assert_eq!(got, payload);
    assert!(r.env.hook.covers(0x5000, 600));
    assert!(r.env.irq.count() >= 1);
}

#[test]
fn receive_waits_for_buffers_without_spinning() {
    let mut r = net_rig();
    let mut packet = vec![0u8; HDR_LEN];
    packet.extend_from_slice(&frame(100, 3));
    r.peer.write_all(&packet).unwrap();
    r.peer.write_all(&packet).unwrap();

    // No receive buffer: one frame waits, and the tap is no longer watched.
    r.dev.process_backend();
    assert!(!r.dev.backend_wanted());
    assert!(r.rx.take_used().is_empty());

    // The driver adds buffers and notifies: both frames land.
    r.rx.add(&[Buf(0x4000, 1526, true)]);
    r.rx.add(&[Buf(0x6000, 1526, true)]);
    r.dev.process_queue(0);
    assert_eq!(r.rx.take_used(), vec![(0, 112), (1, 112)]);
    assert!(r.dev.backend_wanted());
}

#[test]
fn oversized_frames_are_dropped_and_the_buffer_reused() {
    let mut r = net_rig();
    let mut big = vec![0u8; HDR_LEN];
    big.extend_from_slice(&frame(3000, 1));
    let mut small = vec![0u8; HDR_LEN];
    small.extend_from_slice(&frame(60, 2));
    r.peer.write_all(&big).unwrap();
    r.peer.write_all(&small).unwrap();
    r.rx.add(&[Buf(0x4000, 1526, true)]);
    r.dev.process_backend();
    assert_eq!(r.rx.take_used(), vec![(0, 72)]);
    let mut got = vec![0u8; 60];
    r.env.mem.read_slice(&mut got, GuestAddress(0x4000 + HDR_LEN as u64)).unwrap();
    assert_eq!(got, frame(60, 2));
}

#[test]
fn bad_receive_buffers_are_returned_empty() {
    let mut r = net_rig();
    let mut packet = vec![0u8; HDR_LEN];
    packet.extend_from_slice(&frame(60, 2));
    r.peer.write_all(&packet).unwrap();
    r.rx.add(&[Buf(0x4000, 1526, false)]); // device-readable
    r.rx.add(&[Buf(0xf_ff00, 1526, true)]); // runs into the hole
    r.rx.add(&[Buf(0x4000, 1526, true)]);
    r.dev.process_backend();
    assert_eq!(r.rx.take_used(), vec![(0, 0), (1, 0), (2, 72)]);
    r.env.assert_writes_in_ram();
}

#[test]
fn reset_drops_the_rings_and_a_closed_backend_is_unwatched() {
    let mut r = net_rig();
    r.dev.reset();
    assert!(!r.dev.backend_wanted());
    r.dev.process_queue(0);
    r.dev.process_queue(1);
    let env = &r.env;
    r.dev.activate(env.activation(vec![r.rx.queue(), r.tx.queue()], 0)).unwrap();
    assert!(r.dev.backend_wanted());
    drop(r.peer);
    r.dev.process_backend();
    assert!(!r.dev.backend_wanted());
}
