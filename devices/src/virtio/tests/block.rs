use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::block::*;
use crate::virtio::{features, VirtioDevice};

const HDR: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;
const RINGS: u64 = 0x80000;

struct Rig {
    env: Env,
    dq: DriverQueue,
    dev: Block,
}

fn rig(image: &TempFile, readonly: bool) -> Rig {
    let env = Env::new();
    let dq = DriverQueue::new(&env.mem, RINGS, 16);
    let mut dev = Block::open(image.path(), readonly).unwrap();
    dev.activate(env.activation(vec![dq.queue()], dev.features())).unwrap();
    Rig { env, dq, dev }
}

impl Rig {
    fn header(&self, at: u64, kind: u32, sector: u64) {
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&kind.to_le_bytes());
        raw[8..16].copy_from_slice(&sector.to_le_bytes());
        self.env.mem.write_slice(&raw, GuestAddress(at)).unwrap();
    }

    /// Submits `bufs`, runs the device, returns (used len, status byte at STATUS).
    fn run(&mut self, bufs: &[Buf]) -> (u32, u8) {
        self.env.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let head = self.dq.add(bufs);
        self.dev.process_queue(0);
        let used = self.dq.take_used();
        assert_eq!(used.len(), 1, "one request, one used element");
        assert_eq!(used[0].0, u32::from(head));
        (used[0].1, self.env.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn request(&mut self, kind: u32, sector: u64, data: Option<(u32, bool)>) -> (u32, u8) {
        self.header(HDR, kind, sector);
        let mut bufs = vec![Buf(HDR, 16, false)];
        if let Some((len, writable)) = data {
            bufs.push(Buf(DATA, len, writable));
        }
        bufs.push(Buf(STATUS, 1, true));
        self.run(&bufs)
    }
}

fn image(sectors: usize) -> TempFile {
    TempFile::with_contents(&(0..sectors * 512).map(|i| (i / 512) as u8 ^ (i as u8)).collect::<Vec<_>>())
}

#[test]
fn features_and_config() {
    let img = image(8);
    let dev = Block::open(img.path(), false).unwrap();
    let f = dev.features();
    assert_ne!(f & features::VERSION_1, 0);
    assert_ne!(f & F_FLUSH, 0);
    assert_ne!(f & F_SEG_MAX, 0);
    assert_ne!(f & F_BLK_SIZE, 0);
    assert_eq!(f & F_RO, 0);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    let mut blk_size = [0u8; 4];
    dev.read_config(20, &mut blk_size);
    assert_eq!(u32::from_le_bytes(blk_size), 512);
    drop(dev);
    let ro = Block::open(img.path(), true).unwrap();
    assert_ne!(ro.features() & F_RO, 0);
}

#[test]
fn write_read_flush_get_id_round_trip() {
    let img = image(16);
    let mut r = rig(&img, false);
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    r.env.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();

    assert_eq!(r.request(T_OUT, 3, Some((1024, false))), (1, S_OK));
    assert_eq!(&img.read()[3 * 512..5 * 512], &pattern[..]);

    r.env.mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
    r.env.hook.0.lock().unwrap().clear();
    assert_eq!(r.request(T_IN, 3, Some((1024, true))), (1025, S_OK));
    let mut back = vec![0u8; 1024];
    r.env.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, pattern);
    // The engine heard about the DMA (data and status).
    assert!(r.env.hook.covers(DATA, 1024));
    assert!(r.env.hook.covers(STATUS, 1));

    assert_eq!(r.request(T_FLUSH, 0, None), (1, S_OK));

    let (len, status) = r.request(T_GET_ID, 0, Some((ID_LEN as u32, true)));
    assert_eq!((len, status), (ID_LEN as u32 + 1, S_OK));
    let mut id = [0u8; ID_LEN];
    r.env.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert!(id.iter().any(|&b| b != 0), "serial is not empty");

    // Every completion raised an interrupt.
    assert_eq!(r.env.irq.count(), 4);
    assert_eq!(r.env.interrupt.status() & crate::virtio::INT_USED_RING, crate::virtio::INT_USED_RING);
    r.env.assert_writes_in_ram();
}

#[test]
fn any_layout_and_scattered_buffers() {
    let img = image(8);
    let mut r = rig(&img, false);
    // Header and data in one readable descriptor, then the status.
    r.header(DATA, T_OUT, 1);
    r.env.mem.write_slice(&[0xab; 512], GuestAddress(DATA + 16)).unwrap();
    assert_eq!(r.run(&[Buf(DATA, 16 + 512, false), Buf(STATUS, 1, true)]), (1, S_OK));
    assert!(img.read()[512..1024].iter().all(|&b| b == 0xab));

    // A read scattered over three buffers, the last holding the status too.
    r.header(HDR, T_IN, 1);
    let bufs = [Buf(HDR, 16, false), Buf(DATA, 100, true), Buf(DATA + 0x1000, 300, true), Buf(STATUS - 112, 113, true)];
    assert_eq!(r.run(&bufs), (513, S_OK));
    let mut tail = [0u8; 112];
    r.env.mem.read_slice(&mut tail, GuestAddress(STATUS - 112)).unwrap();
    assert!(tail.iter().all(|&b| b == 0xab));
}

#[test]
fn readonly_write_fails_and_leaves_the_file_alone() {
    let img = image(8);
    let before = img.read();
    let mut r = rig(&img, true);
    r.env.mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(r.request(T_OUT, 0, Some((512, false))), (1, S_IOERR));
    assert_eq!(r.request(T_FLUSH, 0, None), (1, S_OK));
    assert_eq!(r.request(T_IN, 0, Some((512, true))), (513, S_OK));
    drop(r);
    assert_eq!(img.read(), before);
}

#[test]
fn requests_past_the_end_fail() {
    let img = image(8);
    let mut r = rig(&img, false);
    assert_eq!(r.request(T_IN, 8, Some((512, true))), (1, S_IOERR));
    assert_eq!(r.request(T_IN, 7, Some((1024, true))), (1, S_IOERR));
    assert_eq!(r.request(T_OUT, 7, Some((1024, false))), (1, S_IOERR));
    // Offsets that overflow u64.
    assert_eq!(r.request(T_IN, u64::MAX / 256, Some((512, true))), (1, S_IOERR));
    assert_eq!(r.request(T_IN, u64::MAX, Some((512, true))), (1, S_IOERR));
    // Not whole sectors.
    assert_eq!(r.request(T_IN, 0, Some((100, true))), (1, S_IOERR));
    // The last sector is fine.
    assert_eq!(r.request(T_IN, 7, Some((512, true))), (513, S_OK));
    assert_eq!(img.read().len(), 8 * 512);
}

#[test]
fn unknown_requests_are_unsupported() {
    let img = image(8);
    let mut r = rig(&img, false);
    assert_eq!(r.request(0x1234, 0, None), (1, S_UNSUPP));
    // DISCARD is not offered.
    assert_eq!(r.request(11, 0, Some((16, false))), (1, S_UNSUPP));
}

#[test]
fn malformed_chains_get_an_error_status() {
    let img = image(8);
    let before = img.read();
    let mut r = rig(&img, false);
    // Header too short.
    assert_eq!(r.run(&[Buf(HDR, 8, false), Buf(STATUS, 1, true)]), (1, S_IOERR));
    // Read whose data buffer is device-readable (wrong direction).
    assert_eq!(r.request(T_IN, 0, Some((512, false))), (1, S_IOERR));
    // Write whose data buffer is device-writable.
    assert_eq!(r.request(T_OUT, 0, Some((512, true))), (1, S_IOERR));
    // Data buffer in the hole between the RAM regions, and past its end.
    r.header(HDR, T_IN, 0);
    assert_eq!(r.run(&[Buf(HDR, 16, false), Buf(0x10_0000 - 256, 512, true), Buf(STATUS, 1, true)]), (1, S_IOERR));
    r.header(HDR, T_OUT, 0);
    assert_eq!(r.run(&[Buf(HDR, 16, false), Buf(u64::MAX - 100, 512, false), Buf(STATUS, 1, true)]), (1, S_IOERR));
    // Header outside RAM.
    assert_eq!(r.run(&[Buf(0x18_0000, 16, false), Buf(STATUS, 1, true)]), (1, S_IOERR));
    // Readable after writable.
    r.header(HDR, T_OUT, 0);
    assert_eq!(
        r.run(&[Buf(HDR, 16, false), Buf(DATA, 512, true), Buf(DATA, 512, false), Buf(STATUS, 1, true)]),
        (1, S_IOERR)
    );
    assert!(!r.env.interrupt.needs_reset());
    assert_eq!(img.read(), before);
    r.env.assert_writes_in_ram();
}

#[test]
fn chain_without_a_status_byte_breaks_the_device() {
    let img = image(8);
    let mut r = rig(&img, false);
    r.header(HDR, T_IN, 0);
    // The "status" descriptor is device-readable.
    r.dq.add(&[Buf(HDR, 16, false), Buf(STATUS, 1, false)]);
    r.dev.process_queue(0);
    assert!(r.env.interrupt.needs_reset());
    assert_eq!(r.env.interrupt.status() & crate::virtio::INT_CONFIG_CHANGE, crate::virtio::INT_CONFIG_CHANGE);
    // Once broken, further requests are left alone until reset.
    r.request_without_wait(T_IN, 0);
    r.dev.process_queue(0);
    assert!(r.dq.take_used().is_empty());
    // A reset and re-activation brings it back.
    r.dev.reset();
    r.env.interrupt.reset();
    let dq = DriverQueue::new(&r.env.mem, RINGS, 16);
    r.dev.activate(r.env.activation(vec![dq.queue()], 0)).unwrap();
    r.dq = dq;
    assert_eq!(r.request(T_IN, 0, Some((512, true))), (513, S_OK));
}

#[test]
fn descriptor_loops_and_bad_heads_do_not_hang() {
    let img = image(8);
    let mut r = rig(&img, false);
    r.header(HDR, T_IN, 0);
    // A descriptor whose next is itself.
    r.dq.write_desc(0, HDR, 16, F_NEXT, 0);
    r.dq.publish(0);
    r.dev.process_queue(0);
    assert!(r.env.interrupt.needs_reset());
    drop(r);

    let mut r = rig(&img, false);
    // A head index past the table.
    r.dq.publish(200);
    r.dev.process_queue(0);
    assert!(r.env.interrupt.needs_reset());
    r.env.assert_writes_in_ram();
}

#[test]
fn indirect_tables_work() {
    let img = image(8);
    let mut r = rig(&img, false);
    r.header(HDR, T_IN, 2);
    // A three-entry indirect table at 0x40000.
    let table = 0x40000u64;
    let entries: [(u64, u32, u16, u16); 3] =
        [(HDR, 16, F_NEXT, 1), (DATA, 512, F_NEXT | F_WRITE, 2), (STATUS, 1, F_WRITE, 0)];
    for (i, (addr, len, flags, next)) in entries.iter().enumerate() {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        r.env.mem.write_slice(&raw, GuestAddress(table + 16 * i as u64)).unwrap();
    }
    r.dq.write_desc(5, table, 48, F_INDIRECT, 0);
    r.dq.publish(5);
    r.dev.process_queue(0);
    assert_eq!(r.dq.take_used(), vec![(5, 513)]);
    let mut data = [0u8; 512];
    r.env.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert_eq!(&data[..], &img.read()[1024..1536]);
}

#[test]
fn writes_are_fsynced_at_shutdown() {
    let img = image(8);
    let mut r = rig(&img, false);
    r.env.mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(r.request(T_OUT, 0, Some((512, false))), (1, S_OK));
    r.dev.shutdown();
    assert!(img.read()[..512].iter().all(|&b| b == 0x77));
}

#[test]
fn open_errors_name_the_file() {
    let e = Block::open(Path::new("/nonexistent/disk.img"), false).err().unwrap();
    assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
    let e = Block::open(Path::new("/"), true).err().unwrap();
    assert!(matches!(e, BlockError::NotAFile { .. }), "{e}");
}

#[test]
fn a_second_writer_is_refused() {
    let img = image(8);
    let _first = Block::open(img.path(), false).unwrap();
    let e = Block::open(img.path(), false).err().unwrap();
    assert!(matches!(e, BlockError::Locked { .. }), "{e}");
}

impl Rig {
    fn request_without_wait(&mut self, kind: u32, sector: u64) {
        self.header(HDR, kind, sector);
        self.dq.add(&[Buf(HDR, 16, false), Buf(DATA, 512, true), Buf(STATUS, 1, true)]);
    }
}
