//! A sampling profiler of guest code, for bring-up and performance work:
//! with `RXVMM_TCG_PROFILE=<file prefix>` in the environment, each vCPU
//! samples its RIP about every millisecond of host time (at block
//! boundaries) and writes `<prefix>.<vcpu>` when it stops: one line per
//! sampled RIP, `count rip halted`, most frequent first. Map the addresses
//! with the guest's System.map (boot it with `nokaslr`).

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_millis(1);

pub struct Profiler {
    path: String,
    next: Instant,
    samples: HashMap<(u64, bool), u64>,
}

impl Profiler {
    /// A profiler for vCPU `id` if the environment asks for one.
    pub fn from_env(id: u8) -> Option<Box<Self>> {
        let prefix = std::env::var("RXVMM_TCG_PROFILE").ok()?;
        Some(Box::new(Profiler { path: format!("{prefix}.{id}"), next: Instant::now(), samples: HashMap::new() }))
    }

    /// Records `rip` if a period has passed since the last sample.
    pub fn sample(&mut self, now: Instant, rip: u64, halted: bool) {
        if now < self.next {
            return;
        }
        self.next = now + PERIOD;
        *self.samples.entry((rip, halted)).or_default() += 1;
    }

    fn write(&self) -> std::io::Result<()> {
        let mut v: Vec<_> = self.samples.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&self.path)?);
        for ((rip, halted), n) in v {
            writeln!(f, "{n} {rip:#018x} {}", u8::from(*halted))?;
        }
        f.flush()
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if let Err(e) = self.write() {
            log::warn!("TCG profile {}: {e}", self.path);
        }
    }
}
