//! The main thread's `event-manager` loop: console input, VM-exit events and
//! the virtio devices' queues and backends.
//!
//! Nothing here polls: the thread sleeps in epoll until stdin has bytes or a
//! device / vCPU signals the exit eventfd.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use devices::legacy::Serial;
use devices::{ExitReason, VmExitSignal};
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};

use crate::console::{Console, EscapeParser};

#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("creating the event manager: {0:?}")]
    Create(event_manager::Error),
    #[error("waiting for events: {0:?}")]
    Run(event_manager::Error),
}

/// A handler on the loop (console input, VM exit, a virtio device).
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

pub struct EventLoop {
    manager: EventManager<Subscriber>,
    exit: Arc<VmExitSignal>,
    // Keeps the terminal in raw mode for as long as the loop runs.
    _console: Console,
}

impl EventLoop {
    /// `devices` are further subscribers: the virtio devices' queues and backends.
    pub fn new(
        exit: Arc<VmExitSignal>,
        console: Console,
        serial: Arc<Serial>,
        devices: Vec<Subscriber>,
    ) -> Result<Self, EventLoopError> {
        let mut manager = EventManager::<Subscriber>::new().map_err(EventLoopError::Create)?;
        manager.add_subscriber(Arc::new(Mutex::new(ExitWatcher { exit: exit.clone() })));
        if let Some(fd) = console.input_fd() {
            let input = ConsoleInput {
                fd,
                serial,
                exit: exit.clone(),
                escapes: console.is_interactive().then(EscapeParser::default),
            };
            manager.add_subscriber(Arc::new(Mutex::new(input)));
        }
        for device in devices {
            manager.add_subscriber(device);
        }
        Ok(Self { manager, exit, _console: console })
    }

    /// Dispatches events until the VM is asked to end.
    pub fn run(&mut self) -> Result<(), EventLoopError> {
        while self.exit.reason().is_none() {
            self.manager.run().map_err(EventLoopError::Run)?;
        }
        Ok(())
    }
}

/// Wakes the loop when a device or vCPU requests the VM's end.
struct ExitWatcher {
    exit: Arc<VmExitSignal>,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Drain the counter; `EventLoop::run` checks the recorded reason.
        let _ = self.exit.event().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.exit.event(), EventSet::IN)) {
            log::error!("cannot watch the VM exit event: {e:?}");
        }
    }
}

/// Host stdin → the guest's serial port.
struct ConsoleInput {
    fd: RawFd,
    serial: Arc<Serial>,
    exit: Arc<VmExitSignal>,
    escapes: Option<EscapeParser>,
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        // SAFETY: reads into a stack buffer of the given length from an open fd.
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                return;
            }
            // EOF or a broken stdin: stop listening, the guest runs on.
            let _ = ops.remove(Events::empty_raw(self.fd));
            log::debug!("console input closed ({:?})", events.event_set());
            return;
        }
        let bytes = &buf[..n as usize];
        match self.escapes.as_mut() {
            Some(parser) => {
                let parsed = parser.feed(bytes);
                self.serial.enqueue_input(&parsed.to_guest);
                if parsed.quit {
                    eprintln!("\r\nrxvmm: terminated by Ctrl-A x\r");
                    self.exit.request(ExitReason::UserQuit);
                }
            }
            None => self.serial.enqueue_input(bytes),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // epoll refuses regular files and /dev/null: then there is simply no input.
        if let Err(e) = ops.add(Events::new_raw(self.fd, EventSet::IN)) {
            log::debug!("console input not watched: {e:?}");
        }
    }
}
