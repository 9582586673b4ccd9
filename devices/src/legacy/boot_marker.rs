//! Boot phase markers, timed from VMM start.
//!
//! One device serves both the POST/debug port 0x80 (Cloud Hypervisor's boot
//! phases) and the MMIO boot timer (Firecracker's: the guest's init writes 123
//! to 0xC000_0000). Each write records its first byte as a phase code.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::BusDevice;

/// The code Firecracker-style guests write when their init starts.
pub const INIT_STARTED: u8 = 123;
/// Markers kept; beyond this, writes are counted but not stored or logged.
/// (Linux without paravirt uses port 0x80 as an I/O delay, so a guest can
/// write it thousands of times; boot with `io_delay=none` to avoid that.)
pub const MAX_MARKERS: usize = 1024;

struct State {
    markers: Vec<(u8, Duration)>,
    dropped: u64,
}

/// Records `(code, time since start)` for every write.
pub struct BootMarker {
    start: Instant,
    state: Mutex<State>,
}

impl BootMarker {
    /// Markers are timed relative to `start` (the VMM's start).
    pub fn new(start: Instant) -> Self {
        Self { start, state: Mutex::new(State { markers: Vec::new(), dropped: 0 }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every marker recorded so far, oldest first.
    pub fn markers(&self) -> Vec<(u8, Duration)> {
        self.lock().markers.clone()
    }

    /// When `code` was first written, if it was.
    pub fn first_marker(&self, code: u8) -> Option<Duration> {
        self.lock().markers.iter().find(|(c, _)| *c == code).map(|(_, t)| *t)
    }

    /// Writes seen after [`MAX_MARKERS`] were stored.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

impl BusDevice for BootMarker {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, _offset: u64, data: &[u8]) {
        let Some(&code) = data.first() else { return };
        let elapsed = self.start.elapsed();
        let mut state = self.lock();
        if state.markers.len() >= MAX_MARKERS {
            if state.dropped == 0 {
                log::warn!("boot marker: more than {MAX_MARKERS} markers; ignoring the rest");
            }
            state.dropped += 1;
            return;
        }
        state.markers.push((code, elapsed));
        drop(state);
        log::info!("guest boot marker {code} after {} ms", elapsed.as_millis());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_markers_in_order() {
        let m = BootMarker::new(Instant::now());
        m.write(0, &[1]);
        std::thread::sleep(Duration::from_millis(2));
        m.write(0, &[INIT_STARTED, 0, 0, 0]);
        m.write(0, &[1]);
        let all = m.markers();
        assert_eq!(all.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [1, INIT_STARTED, 1]);
        assert!(all[0].1 < all[1].1);
        assert_eq!(m.first_marker(1), Some(all[0].1));
        assert!(m.first_marker(INIT_STARTED).unwrap() >= Duration::from_millis(2));
        assert_eq!(m.first_marker(7), None);
    }

    #[test]
    fn reads_zero_and_ignores_empty_writes() {
        let m = BootMarker::new(Instant::now());
        let mut buf = [0xffu8; 4];
        m.read(0, &mut buf);
        assert_eq!(buf, [0; 4]);
        m.write(0, &[]);
        assert!(m.markers().is_empty());
    }

    #[test]
    fn storage_is_bounded() {
        let m = BootMarker::new(Instant::now());
        for i in 0..MAX_MARKERS + 10 {
            m.write(0, &[i as u8]);
        }
        assert_eq!(m.markers().len(), MAX_MARKERS);
        assert_eq!(m.dropped(), 10);
    }
}
