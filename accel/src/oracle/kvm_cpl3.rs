//! The VM oracle: cases run at CPL3 in the [`scaffold`]
//! guest through any [`Accelerator`]. Under KVM on PVM, guest user code
//! runs natively on the host CPU, so this is a second oracle that also
//! checks the exception path (vector, error code, CR2) through a guest IDT;
//! under TCG it is the engine under test.
//!
//! One VM and one vCPU serve many cases: the scaffold loops, and each case
//! costs one `run()` (the `out` to [`DONE_PORT`] kicks the vCPU back).
//! A watchdog thread kicks a case that runs for over a second.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::scaffold::{self, Scaffold, DONE_PORT};
use super::{OracleError, Outcome, TestCase};
use crate::kvm::{Kvm, KvmError};
use crate::{Accelerator, Vcpu, VcpuExit, VcpuKicker, Vm, VmConfig, VmOps};

const CASE_TIMEOUT: Duration = Duration::from_secs(1);

/// Kicks the vCPU on the scaffold's "done" write; counts anything else.
#[derive(Default)]
struct ScaffoldOps {
    kicker: OnceLock<Arc<dyn VcpuKicker>>,
    stray: AtomicU64,
}

impl VmOps for ScaffoldOps {
    fn pio_read(&self, _port: u16, data: &mut [u8]) {
        self.stray.fetch_add(1, Ordering::Relaxed);
        data.fill(0xff);
    }
    fn pio_write(&self, port: u16, _data: &[u8]) {
        if port == DONE_PORT {
            if let Some(k) = self.kicker.get() {
                k.kick();
            }
        } else if port != 0x21 && port != 0xa1 {
            self.stray.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        self.stray.fetch_add(1, Ordering::Relaxed);
        data.fill(0xff);
    }
    fn mmio_write(&self, _addr: u64, _data: &[u8]) {
        self.stray.fetch_add(1, Ordering::Relaxed);
    }
}

struct WatchState {
    armed_at: Mutex<Option<Instant>>,
    fired: AtomicBool,
    stop: AtomicBool,
}

/// Kicks the vCPU when a case has been running for [`CASE_TIMEOUT`].
struct Watchdog {
    state: Arc<WatchState>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    fn start(kicker: Arc<dyn VcpuKicker>) -> Watchdog {
        let state = Arc::new(WatchState {
            armed_at: Mutex::new(None),
            fired: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = state.clone();
        let thread = thread::Builder::new()
            .name("oracle-watchdog".into())
            .spawn(move || {
                while !s.stop.load(Ordering::Relaxed) {
                    thread::park_timeout(Duration::from_millis(50));
                    let mut armed = s.armed_at.lock().unwrap_or_else(|e| e.into_inner());
                    if armed.is_some_and(|t| t.elapsed() > CASE_TIMEOUT) {
                        *armed = None;
                        s.fired.store(true, Ordering::SeqCst);
                        kicker.kick();
                    }
                }
            })
            .ok();
        Watchdog { state, thread }
    }

    fn arm(&self, on: bool) {
        if on {
            self.state.fired.store(false, Ordering::SeqCst);
        }
        *self.state.armed_at.lock().unwrap_or_else(|e| e.into_inner()) = on.then(Instant::now);
    }

    fn fired(&self) -> bool {
        self.state.fired.load(Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// One scaffold VM, reused for any number of cases.
pub struct VmRunner {
    // Dropped in this order: the watchdog thread, the vCPU, its VM, memory.
    watchdog: Watchdog,
    vcpu: Box<dyn Vcpu>,
    _vm: Arc<dyn Vm>,
    ops: Arc<ScaffoldOps>,
    scaffold: Scaffold,
}

impl VmRunner {
    /// Builds the scaffold guest on `accel`.
    pub fn new(accel: &dyn Accelerator) -> Result<VmRunner, OracleError> {
        let scaffold = scaffold::build()?;
        let vm = accel.create_vm(&scaffold.memory, &VmConfig { vcpus: 1 })?;
        let ops = Arc::new(ScaffoldOps::default());
        let mut vcpu = vm.create_vcpu(0, ops.clone())?;
        vcpu.set_cpu_state(&scaffold.state)?;
        let _ = ops.kicker.set(vcpu.kicker());
        let watchdog = Watchdog::start(vcpu.kicker());
        Ok(VmRunner { scaffold, vcpu, _vm: vm, ops, watchdog })
    }

    /// Port or MMIO accesses other than the scaffold's own (should be 0).
    pub fn stray_accesses(&self) -> u64 {
        self.ops.stray.load(Ordering::Relaxed)
    }

    /// Runs one case.
    pub fn run(&mut self, case: &TestCase) -> Result<Outcome, OracleError> {
        self.scaffold.load_case(case)?;
        self.watchdog.arm(true);
        let result = self.run_armed(case);
        self.watchdog.arm(false);
        if result.is_err() {
            // Start over from the top of the scaffold for the next case.
            self.vcpu.set_cpu_state(&self.scaffold.state)?;
        }
        result
    }

    fn run_armed(&mut self, case: &TestCase) -> Result<Outcome, OracleError> {
        loop {
            match self.vcpu.run()? {
                VcpuExit::Kicked => {
                    if let Some(o) = self.scaffold.read_result(case)? {
                        return Ok(o);
                    }
                    if self.watchdog.fired() {
                        return Err(OracleError::Timeout { seed: case.seed });
                    }
                    // A late watchdog kick from the previous case: go on.
                }
                other => {
                    return Err(OracleError::Scaffold(format!(
                        "seed {:#x}: vCPU exit {other:?}\n{}",
                        case.seed,
                        self.vcpu.dump_state()
                    )))
                }
            }
        }
    }
}

/// Runs `cases` in one scaffold VM on `accel`.
pub fn run_vm(accel: &dyn Accelerator, cases: &[TestCase]) -> Result<Vec<Outcome>, OracleError> {
    let mut runner = VmRunner::new(accel)?;
    cases.iter().map(|c| runner.run(c)).collect()
}

/// Opens `/dev/kvm`; [`OracleError::Unavailable`] if it can't be opened.
pub fn open_kvm() -> Result<Kvm, OracleError> {
    Kvm::new().map_err(|e| match e {
        KvmError::Open(source) => OracleError::Unavailable(format!("cannot open /dev/kvm: {source}")),
        other => OracleError::Engine(other.into()),
    })
}

/// Runs `cases` at CPL3 under KVM ([`OracleError::Unavailable`] if
/// `/dev/kvm` can't be opened).
pub fn run_kvm(cases: &[TestCase]) -> Result<Vec<Outcome>, OracleError> {
    run_vm(&open_kvm()?, cases)
}
