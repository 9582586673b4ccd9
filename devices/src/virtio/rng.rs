//! virtio-rng (virtio 1.2 §5.4): fills the driver's buffers from the host's
//! `getrandom(2)`.

use std::sync::Arc;

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryMmap;

use super::queue::{parse_chain, VirtQueue};
use super::{device_type, features, ActivateError, Activation, GuestRam, LogLimit, VirtioDevice, VirtioInterrupt};

const QUEUE_SIZE: u16 = 256;
/// At most this much entropy per request: a huge buffer shouldn't keep the
/// event loop busy. The driver asks again for more.
const MAX_PER_REQUEST: usize = 64 << 10;

struct Active {
    ram: GuestRam,
    queue: VirtQueue,
    interrupt: Arc<VirtioInterrupt>,
}

#[derive(Default)]
pub struct Rng {
    active: Option<Active>,
    buf: Vec<u8>,
    guest_errors: LogLimit,
}

impl Rng {
    pub fn new() -> Self {
        Self::default()
    }

    fn serve(&mut self, ram: &GuestRam, chain: DescriptorChain<&GuestMemoryMmap>) -> Result<u32, String> {
        let chain = match parse_chain(ram.memory(), chain) {
            Ok(chain) if chain.readable.is_empty() => chain,
            Ok(_) => {
                // Nothing to write into: hand the buffer back empty.
                self.guest_errors.warn("virtio-rng", &"request with device-readable buffers");
                return Ok(0);
            }
            Err(bad) => {
                self.guest_errors.warn("virtio-rng", &bad.error);
                return Ok(0);
            }
        };
        let len = usize::try_from(chain.writable.len()).unwrap_or(usize::MAX).min(MAX_PER_REQUEST);
        self.buf.resize(len, 0);
        fill_random(&mut self.buf).map_err(|e| format!("getrandom: {e}"))?;
        chain.writable.write_all(ram, &self.buf).map_err(|e| e.to_string())?;
        // `len` is at most MAX_PER_REQUEST.
        Ok(len as u32)
    }
}

/// Fills `buf` from the kernel's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::VERSION_1 | features::RING_INDIRECT_DESC | features::RING_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation { ram, queues, interrupt, .. } = activation;
        let got = queues.len();
        let queue = queues.into_iter().next().filter(|_| got == 1);
        let queue = queue.ok_or(ActivateError::QueueCount { expected: 1, got })?;
        self.active = Some(Active { ram, queue: VirtQueue::new(queue, 0), interrupt });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, _index: usize) {
        let Some(mut active) = self.active.take() else { return };
        if !active.interrupt.needs_reset() {
            let Active { ram, queue, interrupt } = &mut active;
            if let Err(e) = queue.drain(ram, interrupt, |ram, chain| self.serve(ram, chain)) {
                interrupt.mark_needs_reset(&format_args!("virtio-rng: {e}"));
            }
        }
        self.active = Some(active);
    }
}
