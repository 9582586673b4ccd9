//! A virtio device's place in the main thread's `event-manager` loop: its
//! queue eventfds and backend fd wake it, nothing polls.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, PoisonError};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::VirtioDevice;

/// Event data of the backend fd; queue eventfds use their queue index.
const BACKEND: u32 = u32::MAX;

/// Dispatches a device's events to it.
pub struct VirtioSubscriber {
    name: String,
    device: Arc<Mutex<dyn VirtioDevice>>,
    queue_events: Vec<EventFd>,
    /// The backend fd currently registered with epoll, if any.
    watched_backend: Option<RawFd>,
}

impl VirtioSubscriber {
    /// `queue_events` are (clones of) the transport's queue eventfds.
    pub fn new(name: String, device: Arc<Mutex<dyn VirtioDevice>>, queue_events: Vec<EventFd>) -> Self {
        Self { name, device, queue_events, watched_backend: None }
    }

    /// Watches the backend fd exactly while the device wants its input:
    /// a readable tap with no guest buffer to take the frame would otherwise
    /// wake the (level-triggered) loop forever.
    fn sync_backend(&mut self, ops: &mut EventOps) {
        let (fd, wanted) = {
            let dev = self.device.lock().unwrap_or_else(PoisonError::into_inner);
            (dev.backend_fd(), dev.backend_wanted())
        };
        let want = fd.filter(|_| wanted);
        if want == self.watched_backend {
            return;
        }
        if let Some(old) = self.watched_backend.take() {
            if let Err(e) = ops.remove(Events::with_data_raw(old, BACKEND, EventSet::IN)) {
                log::warn!("{}: unwatching the backend: {e:?}", self.name);
            }
        }
        if let Some(fd) = want {
            match ops.add(Events::with_data_raw(fd, BACKEND, EventSet::IN)) {
                Ok(()) => self.watched_backend = Some(fd),
                Err(e) => log::warn!("{}: watching the backend: {e:?}", self.name),
            }
        }
    }
}

impl MutEventSubscriber for VirtioSubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        if data == BACKEND {
            self.device.lock().unwrap_or_else(PoisonError::into_inner).process_backend();
        } else if let Some(event) = self.queue_events.get(data as usize) {
            // Drain the counter first: a notify arriving while we process
            // sets it again and wakes us once more.
            let _ = event.read();
            self.device.lock().unwrap_or_else(PoisonError::into_inner).process_queue(data as usize);
        } else {
            log::warn!("{}: event for unknown source {data}", self.name);
        }
        self.sync_backend(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (index, event) in self.queue_events.iter().enumerate() {
            // Queue counts are tiny; `index` fits.
            if let Err(e) = ops.add(Events::with_data(event, index as u32, EventSet::IN)) {
                log::error!("{}: cannot watch queue {index}: {e:?}", self.name);
            }
        }
        self.sync_backend(ops);
    }
}
