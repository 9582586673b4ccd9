//! VM assembly and lifetime: memory, devices, ACPI, kernel, vCPU threads and
//! the event loop, the same for every engine.

mod bus_ops;
mod devices_setup;
mod vcpu_thread;
pub mod virtio;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use accel::{Accelerator, VmConfig};
use devices::{ExitReason, VmExitSignal};

use crate::acpi::{create_acpi_tables, AcpiConfig};
use crate::console::Console;
use crate::event_loop::EventLoop;
use crate::loader::{load_kernel, KernelConfig};
use crate::memory::create_guest_memory;
pub use bus_ops::BusOps;
pub use devices_setup::PlatformDevices;
use vcpu_thread::VcpuThread;
pub use virtio::VirtioSpec;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    #[error(transparent)]
    Load(#[from] crate::loader::LoadError),
    #[error(transparent)]
    Acpi(#[from] crate::acpi::AcpiError),
    #[error(transparent)]
    Accel(#[from] accel::Error),
    #[error("setting up devices: {0}")]
    Devices(#[from] devices_setup::DeviceSetupError),
    #[error("--cpus {0}: must be between 1 and {1}")]
    VcpuCount(u8, u8),
    #[error("event loop: {0}")]
    EventLoop(#[from] crate::event_loop::EventLoopError),
    #[error(transparent)]
    Virtio(#[from] virtio::VirtioError),
    #[error("starting vCPU thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What a VM is built from.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub kernel: KernelConfig,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub virtio: VirtioSpec,
}

/// Upper bound on vCPUs: APIC IDs are 8-bit and the IOAPIC takes the next ID.
pub const MAX_VCPUS: u8 = 254;

/// Builds the VM described by `spec` on `accel` and runs it to the end.
/// Returns why the VM ended; `Err` only for failures before the guest ran.
pub fn run_vm(spec: &VmSpec, accel: &dyn Accelerator, mut console: Console) -> Result<ExitReason, VmmError> {
    let start = Instant::now();
    if spec.vcpus == 0 || spec.vcpus > MAX_VCPUS {
        return Err(VmmError::VcpuCount(spec.vcpus, MAX_VCPUS));
    }
    let memory = create_guest_memory(spec.mem_mib)?;
    // Disk images and taps open before anything else: bad paths fail fast.
    let virtio_devices = virtio::open_devices(&spec.virtio)?;
    let virtio_devices_acpi = virtio::acpi_entries(&virtio_devices);
    let rsdp = create_acpi_tables(&memory, &AcpiConfig { vcpus: spec.vcpus, virtio_devices: virtio_devices_acpi })?;
    let boot = load_kernel(&memory, &spec.kernel, Some(rsdp))?;

    let vm = accel.create_vm(&memory, &VmConfig { vcpus: spec.vcpus })?;
    let exit = Arc::new(VmExitSignal::new().map_err(devices_setup::DeviceSetupError::EventFd)?);
    let virtio = virtio::attach(virtio_devices, &vm, &memory)?;
    let platform = PlatformDevices::new(vm.as_ref(), &exit, console.output(), start, virtio.mmio.clone())?;
    let ops = Arc::new(BusOps::new(platform.pio.clone(), platform.mmio.clone()));

    let mut vcpus = Vec::with_capacity(usize::from(spec.vcpus));
    for id in 0..spec.vcpus {
        let mut vcpu = vm.create_vcpu(id, ops.clone())?;
        if id == 0 {
            vcpu.set_cpu_state(&boot.cpu_state)?;
        }
        vcpus.push(vcpu);
    }
    log::info!("VM built in {:?} with {} ({} vCPUs, {} MiB)", start.elapsed(), accel.kind(), spec.vcpus, spec.mem_mib);

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(vcpus.len());
    let mut spawn_error = None;
    for vcpu in vcpus {
        match VcpuThread::spawn(vcpu, exit.clone(), stop.clone()) {
            Ok(t) => threads.push(t),
            Err(e) => {
                spawn_error = Some(e);
                break;
            }
        }
    }

    let loop_result = match spawn_error {
        Some(e) => Err(VmmError::Thread(e)),
        None => EventLoop::new(exit.clone(), console, platform.serial.clone(), virtio.subscribers.clone())
            .and_then(|mut l| l.run())
            .map_err(VmmError::from),
    };

    // Bring every vCPU back before tearing the VM down.
    stop.store(true, Ordering::Release);
    for t in &threads {
        t.kick();
    }
    for t in threads {
        t.join();
    }
    virtio.shutdown();
    loop_result?;
    Ok(exit.reason().unwrap_or_else(|| ExitReason::VmmError("VM ended without a reason".into())))
}
