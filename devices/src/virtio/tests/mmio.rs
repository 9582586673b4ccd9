use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::mmio::{reg, MmioTransport, MAGIC};
use crate::virtio::rng::Rng;
use crate::virtio::subscriber::VirtioSubscriber;
use crate::virtio::{device_type, features, status, ActivateError, VirtioDevice, INT_CONFIG_CHANGE, INT_USED_RING};
use crate::BusDevice;

const OFFERED: u64 = features::VERSION_1 | features::RING_EVENT_IDX | (1 << 5);

/// A queue as activated: size, desc, avail, used, event_idx.
type QueueSeen = (u16, u64, u64, u64, bool);

/// Records what the transport asks of it.
#[derive(Default)]
struct Mock {
    activations: Vec<(Vec<QueueSeen>, u64)>,
    resets: u32,
    interrupt: Option<Arc<VirtioInterrupt>>,
}

impl VirtioDevice for Mock {
    fn device_type(&self) -> u32 {
        device_type::NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[64, 32]
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&[1, 2, 3, 4, 5, 6], offset, data);
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let queues = a
            .queues
            .iter()
            .map(|q| (q.size(), q.desc_table(), q.avail_ring(), q.used_ring(), q.event_idx_enabled()))
            .collect();
        self.activations.push((queues, a.features));
        self.interrupt = Some(a.interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.interrupt = None;
    }
    fn process_queue(&mut self, _index: usize) {}
}

struct Rig {
    env: Env,
    mock: Arc<Mutex<Mock>>,
    t: MmioTransport,
}

fn rig() -> Rig {
    let env = Env::new();
    let mock = Arc::new(Mutex::new(Mock::default()));
    let t = MmioTransport::new(mock.clone(), env.ram(), env.irq.clone()).unwrap();
    Rig { env, mock, t }
}

fn rd(t: &MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Linux's virtio_mmio probe and virtio core handshake, up to DRIVER_OK.
fn linux_handshake(t: &MmioTransport, accept: u64, queues: &[(u32, u64, u64, u64)]) {
    assert_eq!(rd(t, reg::MAGIC), MAGIC);
    assert_eq!(rd(t, reg::VERSION), 2);
    assert_ne!(rd(t, reg::DEVICE_ID), 0);
    wr(t, reg::STATUS, 0);
    wr(t, reg::STATUS, status::ACKNOWLEDGE);
    wr(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(t, reg::DEVICE_FEATURES_SEL, 1);
    let high = u64::from(rd(t, reg::DEVICE_FEATURES));
    wr(t, reg::DEVICE_FEATURES_SEL, 0);
    let offered = (high << 32) | u64::from(rd(t, reg::DEVICE_FEATURES));
    let accept = accept & offered;
    wr(t, reg::DRIVER_FEATURES_SEL, 1);
    wr(t, reg::DRIVER_FEATURES, (accept >> 32) as u32);
    wr(t, reg::DRIVER_FEATURES_SEL, 0);
    wr(t, reg::DRIVER_FEATURES, accept as u32);
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    wr(t, reg::STATUS, s);
    assert_eq!(rd(t, reg::STATUS) & status::FEATURES_OK, status::FEATURES_OK, "device refused the features");
    for (i, &(num, desc, avail, used)) in queues.iter().enumerate() {
        wr(t, reg::QUEUE_SEL, i as u32);
        assert_eq!(rd(t, reg::QUEUE_READY), 0);
        assert!(rd(t, reg::QUEUE_NUM_MAX) >= num);
        wr(t, reg::QUEUE_NUM, num);
        wr(t, reg::QUEUE_DESC_LOW, desc as u32);
        wr(t, reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
        wr(t, reg::QUEUE_DRIVER_LOW, avail as u32);
        wr(t, reg::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        wr(t, reg::QUEUE_DEVICE_LOW, used as u32);
        wr(t, reg::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        wr(t, reg::QUEUE_READY, 1);
        assert_eq!(rd(t, reg::QUEUE_READY), 1);
    }
    wr(t, reg::STATUS, s | status::DRIVER_OK);
}

const QUEUES: [(u32, u64, u64, u64); 2] = [(64, 0x10000, 0x11000, 0x12000), (32, 0x20000, 0x21000, 0x22000)];

#[test]
fn linux_handshake_activates_the_device() {
    let r = rig();
    assert_eq!(rd(&r.t, reg::DEVICE_ID), device_type::NET);
    linux_handshake(&r.t, u64::MAX, &QUEUES);
    let mock = r.mock.lock().unwrap();
    assert_eq!(mock.activations.len(), 1);
    let (queues, feats) = &mock.activations[0];
    assert_eq!(*feats, OFFERED);
    assert_eq!(queues[0], (64, 0x10000, 0x11000, 0x12000, true));
    assert_eq!(queues[1], (32, 0x20000, 0x21000, 0x22000, true));
    drop(mock);
    assert_eq!(rd(&r.t, reg::STATUS) & status::DRIVER_OK, status::DRIVER_OK);
    // The device's config space starts at 0x100, any width.
    let mut b = [0u8; 2];
    r.t.read(reg::CONFIG + 4, &mut b);
    assert_eq!(b, [5, 6]);
    assert_eq!(rd(&r.t, reg::CONFIG_GENERATION), 0);
}

#[test]
fn queue_count_and_absent_queues() {
    let r = rig();
    wr(&r.t, reg::QUEUE_SEL, 2);
    assert_eq!(rd(&r.t, reg::QUEUE_NUM_MAX), 0);
    wr(&r.t, reg::QUEUE_SEL, 1);
    assert_eq!(rd(&r.t, reg::QUEUE_NUM_MAX), 32);
}

#[test]
fn features_are_negotiated_strictly() {
    let r = rig();
    // Accepting a feature that wasn't offered: FEATURES_OK stays clear.
    wr(&r.t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(&r.t, reg::DRIVER_FEATURES_SEL, 0);
    wr(&r.t, reg::DRIVER_FEATURES, 1 << 7);
    wr(&r.t, reg::DRIVER_FEATURES_SEL, 1);
    wr(&r.t, reg::DRIVER_FEATURES, 1);
    wr(&r.t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    assert_eq!(rd(&r.t, reg::STATUS) & status::FEATURES_OK, 0);

    // A legacy driver (no VERSION_1) is refused too.
    wr(&r.t, reg::STATUS, 0);
    wr(&r.t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(&r.t, reg::DRIVER_FEATURES_SEL, 0);
    wr(&r.t, reg::DRIVER_FEATURES, 1 << 5);
    wr(&r.t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    assert_eq!(rd(&r.t, reg::STATUS) & status::FEATURES_OK, 0);
    // DRIVER_OK without FEATURES_OK doesn't activate.
    wr(&r.t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);
    assert!(r.mock.lock().unwrap().activations.is_empty());
}

#[test]
fn queue_registers_are_frozen_outside_setup() {
    let r = rig();
    // Before FEATURES_OK.
    wr(&r.t, reg::QUEUE_NUM, 16);
    assert_eq!(rd(&r.t, reg::QUEUE_NUM), 64);
    linux_handshake(&r.t, u64::MAX, &QUEUES);
    // After DRIVER_OK.
    wr(&r.t, reg::QUEUE_SEL, 0);
    wr(&r.t, reg::QUEUE_DESC_LOW, 0x5000);
    assert_eq!(rd(&r.t, reg::QUEUE_DESC_LOW), 0x10000);
}

#[test]
fn bad_queue_setup_needs_reset() {
    let r = rig();
    // Size not a power of two.
    linux_handshake(&r.t, u64::MAX, &[(48, 0x10000, 0x11000, 0x12000), QUEUES[1]]);
    assert!(r.mock.lock().unwrap().activations.is_empty());
    assert_eq!(rd(&r.t, reg::STATUS) & status::DEVICE_NEEDS_RESET, status::DEVICE_NEEDS_RESET);
    assert_eq!(rd(&r.t, reg::INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    assert_eq!(r.env.irq.count(), 1);
    // Rings outside guest memory.
    let r = rig();
    linux_handshake(&r.t, u64::MAX, &[(64, 0x1_8000_0000, 0x11000, 0x12000), QUEUES[1]]);
    assert_eq!(rd(&r.t, reg::STATUS) & status::DEVICE_NEEDS_RESET, status::DEVICE_NEEDS_RESET);
    // A reset clears it.
    wr(&r.t, reg::STATUS, 0);
    assert_eq!(rd(&r.t, reg::STATUS), 0);
    assert_eq!(rd(&r.t, reg::INTERRUPT_STATUS), 0);
}

#[test]
fn interrupt_status_and_ack() {
    let r = rig();
    linux_handshake(&r.t, u64::MAX, &QUEUES);
    let interrupt = r.mock.lock().unwrap().interrupt.clone().unwrap();
    interrupt.signal_used_queue();
    assert_eq!(r.env.irq.count(), 1);
    assert_eq!(rd(&r.t, reg::INTERRUPT_STATUS), INT_USED_RING);
    interrupt.signal_config_change();
    assert_eq!(rd(&r.t, reg::INTERRUPT_STATUS), INT_USED_RING | INT_CONFIG_CHANGE);
    wr(&r.t, reg::INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(rd(&r.t, reg::INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    wr(&r.t, reg::INTERRUPT_ACK, INT_CONFIG_CHANGE);
    assert_eq!(rd(&r.t, reg::INTERRUPT_STATUS), 0);
    assert_eq!(r.env.irq.count(), 2);
}

#[test]
fn notify_signals_the_queue_eventfd() {
    let r = rig();
    linux_handshake(&r.t, u64::MAX, &QUEUES);
    wr(&r.t, reg::QUEUE_NOTIFY, 1);
    assert_eq!(r.t.queue_events()[1].read().unwrap(), 1);
    assert!(r.t.queue_events()[0].read().is_err(), "queue 0 not signalled");
    // A notify for a queue that doesn't exist is ignored.
    wr(&r.t, reg::QUEUE_NOTIFY, 7);
}

#[test]
fn reset_clears_registers_and_resets_the_device() {
    let r = rig();
    linux_handshake(&r.t, u64::MAX, &QUEUES);
    wr(&r.t, reg::STATUS, 0);
    assert_eq!(r.mock.lock().unwrap().resets, 2, "the handshake's reset and this one");
    assert_eq!(rd(&r.t, reg::STATUS), 0);
    wr(&r.t, reg::QUEUE_SEL, 0);
    assert_eq!(rd(&r.t, reg::QUEUE_READY), 0);
    assert_eq!(rd(&r.t, reg::QUEUE_NUM), 64);
    assert_eq!(rd(&r.t, reg::QUEUE_DESC_LOW), 0);
    // After the reset Linux clears QueueReady when deleting the queues.
    wr(&r.t, reg::QUEUE_READY, 0);
    // And the device can be brought up again.
    linux_handshake(&r.t, u64::MAX, &QUEUES);
    assert_eq!(r.mock.lock().unwrap().activations.len(), 2);
}

#[test]
fn clearing_status_bits_needs_a_reset() {
    let r = rig();
    wr(&r.t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    wr(&r.t, reg::STATUS, status::ACKNOWLEDGE);
    assert_eq!(rd(&r.t, reg::STATUS), status::ACKNOWLEDGE | status::DRIVER);
    wr(&r.t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FAILED);
    assert_eq!(rd(&r.t, reg::STATUS) & status::FAILED, status::FAILED);
}

#[test]
fn odd_register_accesses_are_ignored() {
    let r = rig();
    let mut b = [0xffu8; 2];
    r.t.read(reg::MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b = [0xffu8; 4];
    r.t.read(reg::MAGIC + 1, &mut b);
    assert_eq!(b, [0; 4]);
    r.t.write(reg::STATUS, &[1]);
    r.t.write(reg::STATUS + 2, &1u32.to_le_bytes());
    assert_eq!(rd(&r.t, reg::STATUS), 0);
    // Unknown and read-only registers.
    wr(&r.t, reg::MAGIC, 0);
    assert_eq!(rd(&r.t, 0x0f0), 0);
    assert_eq!(rd(&r.t, reg::SHM_LEN_LOW), u32::MAX);
}

/// The whole path: handshake over the bus, a buffer, a notify through the
/// transport, the event loop runs the device, the guest sees the data.
#[test]
fn rng_end_to_end_through_the_event_loop() {
    let env = Env::new();
    let rng: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(Rng::new()));
    let t = MmioTransport::new(rng.clone(), env.ram(), env.irq.clone()).unwrap();
    let mut dq = DriverQueue::new(&env.mem, 0x40000, 8);
    linux_handshake(&t, features::VERSION_1 | features::RING_EVENT_IDX, &[(8, dq.desc, dq.avail, dq.used)]);

    let events = t.queue_events().iter().map(|e| e.try_clone().unwrap()).collect();
    let sub: Arc<Mutex<dyn MutEventSubscriber + Send>> =
        Arc::new(Mutex::new(VirtioSubscriber::new("rng".into(), rng, events)));
    let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    manager.add_subscriber(sub);

    // With EVENT_IDX the driver sets used_event to get an interrupt per buffer.
    env.mem.write_obj(0u16, GuestAddress(dq.avail + 4 + 2 * 8)).unwrap();
    dq.add(&[Buf(0x1000, 32, true)]);
    wr(&t, reg::QUEUE_NOTIFY, 0);
    let n = manager.run_with_timeout(1000).unwrap();
    assert_eq!(n, 1);
    assert_eq!(dq.take_used(), vec![(0, 32)]);
    assert_eq!(rd(&t, reg::INTERRUPT_STATUS), INT_USED_RING);
    assert_eq!(env.irq.count(), 1);
    // Nothing else pending: the loop sleeps.
    assert_eq!(manager.run_with_timeout(10).unwrap(), 0);
}
