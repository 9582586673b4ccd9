//! The PC platform devices every VM gets, wired onto the PIO and MMIO buses.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use accel::{BusSlot, Vm};
use devices::acpi::AcpiPower;
use devices::legacy::{i8042, BootMarker, Cmos, Serial, I8042};
use devices::pvpanic::PvPanic;
use devices::{BusDevice, BusError, IoBus, VmExitSignal};

use crate::layout::{self, pio};

#[derive(Debug, thiserror::Error)]
pub enum DeviceSetupError {
    #[error("placing a device on the bus: {0}")]
    Bus(#[from] BusError),
    #[error("interrupt line for {0}: {1}")]
    Irq(&'static str, #[source] accel::Error),
    #[error("creating an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// The buses and the devices the VMM talks to after boot.
pub struct PlatformDevices {
    pub pio: Arc<IoBus>,
    pub mmio: Arc<IoBus>,
    pub serial: Arc<Serial>,
    pub boot_marker: Arc<BootMarker>,
}

impl PlatformDevices {
    pub fn new(
        vm: &dyn Vm,
        exit: &Arc<VmExitSignal>,
        console_out: Box<dyn Write + Send>,
        start: Instant,
        virtio_mmio: Vec<BusSlot>,
    ) -> Result<Self, DeviceSetupError> {
        let serial_irq = vm.irq_line(layout::irq::SERIAL_COM1).map_err(|e| DeviceSetupError::Irq("serial", e))?;
        let serial = Arc::new(Serial::new(serial_irq, console_out));
        let boot_marker = Arc::new(BootMarker::new(start));

        let mut pio_bus = IoBus::new();
        pio_bus.insert(pio::SERIAL_COM1, pio::SERIAL_LEN, serial.clone())?;
        // Only the data and command ports: 0x61 in between is the PIT's.
        let i8042 = Arc::new(I8042::new(exit.clone()));
        pio_bus.insert(pio::I8042, 1, i8042.clone())?;
        pio_bus.insert(pio::I8042_COMMAND, 1, Arc::new(Shifted { device: i8042, offset: i8042::COMMAND_OFFSET }))?;
        pio_bus.insert(pio::RTC, pio::RTC_LEN, Arc::new(Cmos::new()))?;
        pio_bus.insert(pio::DEBUG_PORT, 1, boot_marker.clone())?;
        pio_bus.insert(pio::ACPI_POWER, pio::ACPI_POWER_LEN, Arc::new(AcpiPower::new(exit.clone())))?;
        pio_bus.insert(pio::PVPANIC, 1, Arc::new(PvPanic::new(exit.clone())))?;

        let mut mmio_bus = IoBus::new();
        mmio_bus.insert(layout::BOOT_TIMER_ADDR, 1, boot_marker.clone())?;

        // The engine's own interrupt controllers and timers, if it has them.
        let engine = vm.engine_devices();
        let insert_all = |bus: &mut IoBus, slots: Vec<BusSlot>| {
            slots.into_iter().try_for_each(|s| bus.insert(s.base, s.len, s.device))
        };
        insert_all(&mut pio_bus, engine.pio)?;
        insert_all(&mut mmio_bus, engine.mmio)?;
        insert_all(&mut mmio_bus, virtio_mmio)?;

        Ok(Self { pio: Arc::new(pio_bus), mmio: Arc::new(mmio_bus), serial, boot_marker })
    }
}

/// A device reached at `offset` into its own register range from a bus
/// range of its own (one port of a device whose ports aren't contiguous).
struct Shifted {
    device: Arc<dyn BusDevice>,
    offset: u64,
}

impl BusDevice for Shifted {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.device.read(self.offset + offset, data);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        self.device.write(self.offset + offset, data);
    }
}
