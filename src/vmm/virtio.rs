//! Virtio devices from the command line: `--disk`, `--rng` and `--net`
//! parsed, their backends opened (before the VM exists, so bad input fails
//! early), then each put on the MMIO bus with its own window, GSI,
//! ioeventfds and event-loop subscriber, and listed for the DSDT.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use accel::{BusSlot, IoEventAddress, Vm};
use devices::virtio::block::{Block, BlockError};
use devices::virtio::mmio::{reg, MmioTransport};
use devices::virtio::net::{random_mac, MacAddr, Net};
use devices::virtio::rng::Rng;
use devices::virtio::subscriber::VirtioSubscriber;
use devices::virtio::tap::{open_tap, TapError};
use devices::virtio::{GuestRam, GuestWriteHook, VirtioDevice};
use vm_memory::GuestMemoryMmap;

use crate::acpi::VirtioMmioAcpi;
use crate::event_loop::Subscriber;
use crate::layout;

/// GSIs 5..=23 of the 24-pin IOAPIC.
pub const MAX_DEVICES: usize = 24 - layout::irq::VIRTIO_FIRST as usize;

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("--{option} {value}: {reason}")]
    Option { option: &'static str, value: String, reason: String },
    #[error("{0} virtio devices: at most {MAX_DEVICES} fit the interrupt controller")]
    TooMany(usize),
    #[error("--disk")]
    Disk(#[source] BlockError),
    #[error("--net")]
    Tap(#[source] TapError),
    #[error("--net tap={0}: generating a MAC address")]
    Mac(String, #[source] std::io::Error),
    #[error("virtio device {0}: interrupt line")]
    Irq(String, #[source] accel::Error),
    #[error("virtio device {0}: queue eventfds")]
    EventFd(String, #[source] std::io::Error),
    #[error("virtio device {0}: registering its queue notifications")]
    IoEvent(String, #[source] accel::Error),
}

/// `--disk path=FILE[,readonly=on|off]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub readonly: bool,
}

/// `--net tap=NAME[,mac=XX:XX:XX:XX:XX:XX]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub tap: String,
    pub mac: Option<MacAddr>,
}

/// The virtio devices a VM gets, in the order they are placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtioSpec {
    pub disks: Vec<DiskSpec>,
    pub rng: bool,
    pub nets: Vec<NetSpec>,
}

impl VirtioSpec {
    /// Parses the raw option values; errors are one line naming the option.
    pub fn parse(disks: &[String], rng: bool, nets: &[String]) -> Result<Self, VirtioError> {
        let spec = Self {
            disks: disks.iter().map(|d| parse_disk(d)).collect::<Result<_, _>>()?,
            rng,
            nets: nets.iter().map(|n| parse_net(n)).collect::<Result<_, _>>()?,
        };
        let count = spec.disks.len() + usize::from(spec.rng) + spec.nets.len();
        if count > MAX_DEVICES {
            return Err(VirtioError::TooMany(count));
        }
        Ok(spec)
    }
}

/// Splits `a=1,b=2` into pairs, refusing keys outside `keys` and repeats.
fn key_values<'a>(option: &'static str, value: &'a str, keys: &[&str]) -> Result<Vec<(&'a str, &'a str)>, VirtioError> {
    let err = |reason: String| VirtioError::Option { option, value: value.into(), reason };
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for item in value.split(',') {
        let Some((k, v)) = item.split_once('=') else {
            return Err(err(format!("expected key=value, got {item:?} (keys: {})", keys.join(", "))));
        };
        if !keys.contains(&k) {
            return Err(err(format!("unknown key {k:?} (keys: {})", keys.join(", "))));
        }
        if pairs.iter().any(|(seen, _)| *seen == k) {
            return Err(err(format!("{k} given twice")));
        }
        if v.is_empty() {
            return Err(err(format!("{k}= needs a value")));
        }
        pairs.push((k, v));
    }
    Ok(pairs)
}

fn parse_switch(option: &'static str, value: &str, key: &str, v: &str) -> Result<bool, VirtioError> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(VirtioError::Option { option, value: value.into(), reason: format!("{key}={v}: expected on or off") }),
    }
}

fn parse_disk(value: &str) -> Result<DiskSpec, VirtioError> {
    let mut path = None;
    let mut readonly = false;
    for (k, v) in key_values("disk", value, &["path", "readonly"])? {
        match k {
            "path" => path = Some(PathBuf::from(v)),
            _ => readonly = parse_switch("disk", value, k, v)?,
        }
    }
    let path = path.ok_or_else(|| VirtioError::Option {
        option: "disk",
        value: value.into(),
        reason: "missing path=FILE".into(),
    })?;
    Ok(DiskSpec { path, readonly })
}

fn parse_net(value: &str) -> Result<NetSpec, VirtioError> {
    let mut tap = None;
    let mut mac = None;
    for (k, v) in key_values("net", value, &["tap", "mac"])? {
        match k {
            "tap" => tap = Some(v.to_string()),
            _ => {
                mac = Some(parse_mac(v).ok_or_else(|| VirtioError::Option {
                    option: "net",
                    value: value.into(),
                    reason: format!("mac={v}: expected a unicast address like 52:54:00:12:34:56"),
                })?)
            }
        }
    }
    let tap = tap.ok_or_else(|| VirtioError::Option {
        option: "net",
        value: value.into(),
        reason: "missing tap=NAME".into(),
    })?;
    Ok(NetSpec { tap, mac })
}

/// Six hex pairs separated by ':'; multicast addresses can't be a NIC's.
fn parse_mac(s: &str) -> Option<MacAddr> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    (parts.next().is_none() && mac[0] & 1 == 0).then_some(mac)
}

/// A device with its backend open, not yet attached to a VM.
pub struct OpenDevice {
    name: String,
    device: Arc<Mutex<dyn VirtioDevice>>,
}

/// Opens every backend `spec` names: disk images, taps.
pub fn open_devices(spec: &VirtioSpec) -> Result<Vec<OpenDevice>, VirtioError> {
    let mut out = Vec::new();
    for (i, disk) in spec.disks.iter().enumerate() {
        let block = Block::open(&disk.path, disk.readonly).map_err(VirtioError::Disk)?;
        log::info!("virtio-blk {i}: {} ({} sectors{})", disk.path.display(), block.sectors(), ro(disk.readonly));
        out.push(OpenDevice { name: format!("virtio-blk{i}"), device: Arc::new(Mutex::new(block)) });
    }
    if spec.rng {
        out.push(OpenDevice { name: "virtio-rng".into(), device: Arc::new(Mutex::new(Rng::new())) });
    }
    for net in &spec.nets {
        let tap = open_tap(&net.tap).map_err(VirtioError::Tap)?;
        let mac = match net.mac {
            Some(mac) => mac,
            None => random_mac().map_err(|e| VirtioError::Mac(net.tap.clone(), e))?,
        };
        let name = format!("virtio-net {}", net.tap);
        out.push(OpenDevice { device: Arc::new(Mutex::new(Net::new(net.tap.clone(), tap, mac))), name });
    }
    Ok(out)
}

fn ro(readonly: bool) -> &'static str {
    if readonly {
        ", read-only"
    } else {
        ""
    }
}

/// Device `index`'s register window and interrupt line.
fn placement(index: usize) -> VirtioMmioAcpi {
    VirtioMmioAcpi {
        base: layout::VIRTIO_MMIO_START + index as u64 * layout::VIRTIO_MMIO_SIZE,
        size: layout::VIRTIO_MMIO_SIZE,
        gsi: layout::irq::VIRTIO_FIRST + index as u32,
    }
}

/// What the DSDT declares for `devices`.
pub fn acpi_entries(devices: &[OpenDevice]) -> Vec<VirtioMmioAcpi> {
    (0..devices.len()).map(placement).collect()
}

/// Device writes into guest memory, reported to the engine (TCG drops
/// translated code on those pages).
struct VmWriteHook(Arc<dyn Vm>);

impl GuestWriteHook for VmWriteHook {
    fn guest_written(&self, gpa: u64, len: u64) {
        self.0.notify_guest_write(gpa, len);
    }
}

/// Devices attached to a VM.
pub struct AttachedDevices {
    /// Transports for the MMIO bus.
    pub mmio: Vec<BusSlot>,
    /// Queue and backend handlers for the event loop.
    pub subscribers: Vec<Subscriber>,
    devices: Vec<(String, Arc<Mutex<dyn VirtioDevice>>)>,
}

/// Gives each device its transport, interrupt line and ioeventfds.
pub fn attach(
    devices: Vec<OpenDevice>,
    vm: &Arc<dyn Vm>,
    memory: &GuestMemoryMmap,
) -> Result<AttachedDevices, VirtioError> {
    let ram = GuestRam::new(memory.clone(), Arc::new(VmWriteHook(vm.clone())));
    let mut attached = AttachedDevices { mmio: Vec::new(), subscribers: Vec::new(), devices: Vec::new() };
    for (index, OpenDevice { name, device }) in devices.into_iter().enumerate() {
        let place = placement(index);
        let irq = vm.irq_line(place.gsi).map_err(|e| VirtioError::Irq(name.clone(), e))?;
        let transport =
            MmioTransport::new(device.clone(), ram.clone(), irq).map_err(|e| VirtioError::EventFd(name.clone(), e))?;
        // The guest's QueueNotify write (the queue index) signals the
        // queue's eventfd in the engine, without a trip through the bus.
        let notify = IoEventAddress::Mmio(place.base + reg::QUEUE_NOTIFY);
        for (queue, event) in transport.queue_events().iter().enumerate() {
            vm.register_ioevent(event, notify, Some(queue as u32))
                .map_err(|e| VirtioError::IoEvent(name.clone(), e))?;
        }
        let events = transport
            .queue_events()
            .iter()
            .map(|e| e.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VirtioError::EventFd(name.clone(), e))?;
        log::debug!("{name} at {:#x}, GSI {}", place.base, place.gsi);
        attached.subscribers.push(Arc::new(Mutex::new(VirtioSubscriber::new(name.clone(), device.clone(), events))));
        attached.mmio.push(BusSlot { base: place.base, len: place.size, device: Arc::new(transport) });
        attached.devices.push((name, device));
    }
    Ok(attached)
}

impl AttachedDevices {
    /// The VM has stopped: each device finishes or fails what's in flight
    /// and makes its data durable (disk images are fsync'd).
    pub fn shutdown(&self) {
        for (name, device) in &self.devices {
            log::debug!("shutting down {name}");
            device.lock().unwrap_or_else(PoisonError::into_inner).shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn err(disks: &[&str], nets: &[&str]) -> String {
        VirtioSpec::parse(&s(disks), false, &s(nets)).unwrap_err().to_string()
    }

    #[test]
    fn parses_disks_and_nets() {
        let spec = VirtioSpec::parse(
            &s(&["path=/a.img", "readonly=on,path=/b.img"]),
            true,
            &s(&["tap=tap0", "tap=tap1,mac=52:54:00:ab:CD:01"]),
        )
        .unwrap();
        assert_eq!(spec.disks[0], DiskSpec { path: "/a.img".into(), readonly: false });
        assert_eq!(spec.disks[1], DiskSpec { path: "/b.img".into(), readonly: true });
        assert!(spec.rng);
        assert_eq!(spec.nets[0], NetSpec { tap: "tap0".into(), mac: None });
        assert_eq!(spec.nets[1].mac, Some([0x52, 0x54, 0, 0xab, 0xcd, 1]));
    }

    #[test]
    fn bad_options_are_one_line_errors() {
        assert!(err(&["readonly=on"], &[]).contains("missing path=FILE"));
        assert!(err(&["/a.img"], &[]).contains("expected key=value"));
        assert!(err(&["path=/a,cache=none"], &[]).contains("unknown key \"cache\""));
        assert!(err(&["path=/a,readonly=maybe"], &[]).contains("expected on or off"));
        assert!(err(&["path=/a,path=/b"], &[]).contains("given twice"));
        assert!(err(&["path="], &[]).contains("needs a value"));
        assert!(err(&[], &["mac=52:54:00:00:00:01"]).contains("missing tap=NAME"));
        assert!(err(&[], &["tap=t,mac=01:00:00:00:00:01"]).contains("unicast"));
        assert!(err(&[], &["tap=t,mac=52:54:00:00:00"]).contains("mac="));
        assert!(err(&[], &["tap=t,mac=52:54:00:00:00:01:02"]).contains("mac="));
        let many: Vec<String> = (0..20).map(|i| format!("path=/d{i}")).collect();
        assert!(VirtioSpec::parse(&many, false, &[]).unwrap_err().to_string().contains("at most 19"));
        for e in [err(&["readonly=on"], &[]), err(&[], &["x=1"])] {
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn placement_follows_the_layout() {
        assert_eq!(placement(0), VirtioMmioAcpi { base: 0xd000_0000, size: 0x1000, gsi: 5 });
        assert_eq!(placement(2).base, 0xd000_2000);
        assert_eq!(placement(MAX_DEVICES - 1).gsi, 23);
    }
}
