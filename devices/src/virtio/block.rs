//! virtio-blk over a raw image file (virtio 1.2 §5.2).
//!
//! Requests are served synchronously on the event loop with positional
//! reads and writes (no shared file offset), through a bounded bounce
//! buffer: one system call per megabyte of a request, whatever the number
//! of guest buffers. Every guest buffer is checked before use; a request the device
//! can't serve gets an error status, and a chain with nowhere to put a
//! status marks the device as needing a reset.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::queue::{parse_chain, Segments, VirtQueue};
use super::{
    device_type, features, read_config_bytes, ActivateError, Activation, GuestRam, LogLimit, VirtioDevice,
    VirtioInterrupt,
};

/// Feature bits (virtio 1.2 §5.2.3).
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;

/// Request types.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;

/// Status values.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID serial string.
pub const ID_LEN: usize = 20;
const QUEUE_SIZE: u16 = 256;
/// Data segments per request: the queue less the header and status.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Request header: type, reserved (ioprio), sector.
const HEADER_LEN: u64 = 16;
/// Bounce buffer size: large requests go through it in pieces.
const CHUNK: usize = 1 << 20;
/// capacity, size_max, seg_max, geometry, blk_size.
const CONFIG_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("disk image {} is not a regular file or block device", path.display())]
    NotAFile { path: PathBuf },
    #[error("cannot read the size of disk image {}", path.display())]
    Size { path: PathBuf, source: std::io::Error },
    #[error("disk image {} is in use by another process", path.display())]
    Locked { path: PathBuf, source: std::io::Error },
}

/// The device end of a queue, once the driver has set DRIVER_OK.
struct Active {
    ram: GuestRam,
    queue: VirtQueue,
    interrupt: Arc<VirtioInterrupt>,
}

pub struct Block {
    path: PathBuf,
    file: File,
    readonly: bool,
    /// Image size in bytes, rounded down to whole sectors.
    capacity: u64,
    id: [u8; ID_LEN],
    config: [u8; CONFIG_LEN],
    /// Writes reached the file since the last fsync.
    dirty: bool,
    bounce: Vec<u8>,
    active: Option<Active>,
    guest_errors: LogLimit,
}

impl Block {
    /// Opens `path` (read-only when `readonly`, so the guest can't change it
    /// whatever it sends) and locks it against a second writer.
    pub fn open(path: &Path, readonly: bool) -> Result<Self, BlockError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(|source| BlockError::Open { path: path.into(), source })?;
        let meta = file.metadata().map_err(|source| BlockError::Size { path: path.into(), source })?;
        if !meta.file_type().is_file() && !meta.file_type().is_block_device() {
            return Err(BlockError::NotAFile { path: path.into() });
        }
        lock_image(&file, readonly).map_err(|source| BlockError::Locked { path: path.into(), source })?;
        // Seeking works for block devices too, whose metadata length is 0.
        let size = file.seek(SeekFrom::End(0)).map_err(|source| BlockError::Size { path: path.into(), source })?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            log::warn!("disk image {}: the last {} bytes are not a whole sector", path.display(), size % SECTOR_SIZE);
        }
        let capacity = size - size % SECTOR_SIZE;

        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&(capacity / SECTOR_SIZE).to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());

        Ok(Self {
            path: path.into(),
            file,
            readonly,
            capacity,
            id: image_id(&meta),
            config,
            dirty: false,
            bounce: Vec::new(),
            active: None,
            guest_errors: LogLimit::default(),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.capacity / SECTOR_SIZE
    }

    /// Makes every completed write durable (FLUSH, and the VM's end).
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.file.sync_all()?;
            self.dirty = false;
        }
        Ok(())
    }

    fn process(&mut self) {
        let Some(mut active) = self.active.take() else { return };
        if !active.interrupt.needs_reset() {
            let Active { ram, queue, interrupt } = &mut active;
            if let Err(e) = queue.drain(ram, interrupt, |ram, chain| self.serve(ram, chain)) {
                interrupt.mark_needs_reset(&format_args!("virtio-blk {}: {e}", self.path.display()));
            }
        }
        self.active = Some(active);
    }

    /// Serves one request; returns the bytes written into its buffers, or
    /// an error when there is nowhere to put a status.
    fn serve(&mut self, ram: &GuestRam, chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> Result<u32, String> {
        let chain = match parse_chain(ram.memory(), chain) {
            Ok(chain) => chain,
            Err(bad) => {
                self.guest_errors.warn("virtio-blk", &bad.error);
                let status = bad.last_writable_byte.ok_or_else(|| format!("{} and no status byte", bad.error))?;
                return put_status(ram, status, S_IOERR, 0);
            }
        };
        // The status is the last writable byte (any layout is allowed).
        let Some((data_out, status)) = chain.writable.len().checked_sub(1).and_then(|n| chain.writable.split_at(n))
        else {
            return Err("no device-writable status byte".into());
        };
        let status = status.iter().next().map(|s| s.addr).ok_or("no device-writable status byte")?;
        let (status_value, written) = match self.request(ram, &chain.readable, &data_out) {
            Ok(written) => (S_OK, written),
            Err(failure) => {
                if let Some(msg) = &failure.guest_error {
                    self.guest_errors.warn("virtio-blk", msg);
                }
                (failure.status, failure.written)
            }
        };
        put_status(ram, status, status_value, written)
    }

    /// Executes a request; returns the data bytes written to the guest.
    fn request(&mut self, ram: &GuestRam, readable: &Segments, writable: &Segments) -> Result<u64, Failure> {
        let (header, data_in) = readable.split_at(HEADER_LEN).ok_or_else(|| Failure::guest("header too short"))?;
        let mut raw = [0u8; HEADER_LEN as usize];
        header.read_exact(ram, &mut raw).map_err(Failure::guest)?;
        let kind = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let sector = u64::from_le_bytes([raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15]]);
        match kind {
            T_IN => {
                if !data_in.is_empty() {
                    return Err(Failure::guest("read request with device-readable data"));
                }
                let offset = self.check_range(sector, writable.len())?;
                self.read_into(ram, offset, writable)
            }
            T_OUT => {
                if self.readonly {
                    return Err(Failure { status: S_IOERR, written: 0, guest_error: None });
                }
                if !writable.is_empty() {
                    return Err(Failure::guest("write request with device-writable data"));
                }
                let offset = self.check_range(sector, data_in.len())?;
                self.write_from(ram, offset, &data_in).map(|()| 0)
            }
            T_FLUSH => self.flush().map(|()| 0).map_err(|e| Failure::host("flush", &e)),
            T_GET_ID => {
                let n = writable.len().min(ID_LEN as u64) as usize;
                if n == 0 {
                    return Err(Failure::guest("GET_ID without a buffer"));
                }
                writable.write_all(ram, &self.id[..n]).map_err(Failure::guest)?;
                Ok(n as u64)
            }
            _ => Err(Failure { status: S_UNSUPP, written: 0, guest_error: None }),
        }
    }

    /// The byte offset of `sector`, checked that `len` bytes from it fit.
    fn check_range(&self, sector: u64, len: u64) -> Result<u64, Failure> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Failure::guest(format_args!("data length {len} is not whole sectors")));
        }
        sector
            .checked_mul(SECTOR_SIZE)
            .filter(|off| off.checked_add(len).is_some_and(|end| end <= self.capacity))
            .ok_or_else(|| Failure::guest(format_args!("sector {sector} + {len} bytes is past the disk's end")))
    }

    /// Reads the image at `offset` into the guest buffers `dst`: one
    /// `pread` per bounce-buffer load (up to [`CHUNK`] bytes, many guest
    /// pages), not one per buffer.
    fn read_into(&mut self, ram: &GuestRam, offset: u64, dst: &Segments) -> Result<u64, Failure> {
        let mut written = 0u64;
        for group in chunks(dst) {
            let len = group.iter().map(|&(_, n)| n).sum::<usize>();
            self.bounce.resize(len, 0);
            let fail = |written, e: &dyn std::fmt::Display| Failure { written, ..Failure::host("read", e) };
            self.file.read_exact_at(&mut self.bounce[..len], offset + written).map_err(|e| fail(written, &e))?;
            let mut at = 0;
            for (addr, n) in group {
                ram.write(&self.bounce[at..at + n], addr).map_err(|e| fail(written, &e))?;
                at += n;
                written += n as u64;
            }
        }
        Ok(written)
    }

    /// Writes the guest buffers `src` to the image at `offset`, gathered as
    /// [`Self::read_into`] scatters.
    fn write_from(&mut self, ram: &GuestRam, offset: u64, src: &Segments) -> Result<(), Failure> {
        let mut done = 0u64;
        for group in chunks(src) {
            let len = group.iter().map(|&(_, n)| n).sum::<usize>();
            self.bounce.resize(len, 0);
            let mut at = 0;
            for (addr, n) in group {
                ram.read(&mut self.bounce[at..at + n], addr).map_err(|e| Failure::host("write", &e))?;
                at += n;
            }
            self.dirty = true;
            self.file.write_all_at(&self.bounce[..len], offset + done).map_err(|e| Failure::host("write", &e))?;
            done += len as u64;
        }
        Ok(())
    }
}

/// `segs` cut into groups of at most [`CHUNK`] bytes: (guest address,
/// length) pieces in request order.
fn chunks(segs: &Segments) -> Vec<Vec<(GuestAddress, usize)>> {
    let mut groups = vec![Vec::new()];
    let mut room = CHUNK;
    for seg in segs.iter() {
        let mut done = 0usize;
        let len = seg.len as usize;
        while done < len {
            if room == 0 {
                groups.push(Vec::new());
                room = CHUNK;
            }
            let n = (len - done).min(room);
            if let Some(g) = groups.last_mut() {
                g.push((GuestAddress(seg.addr.0.wrapping_add(done as u64)), n));
            }
            done += n;
            room -= n;
        }
    }
    groups
}

/// A request that ends with a non-OK status.
struct Failure {
    status: u8,
    /// Data bytes already written to the guest.
    written: u64,
    /// Worth a (rate-limited) log line.
    guest_error: Option<String>,
}

impl Failure {
    fn guest(msg: impl std::fmt::Display) -> Self {
        Self { status: S_IOERR, written: 0, guest_error: Some(msg.to_string()) }
    }

    fn host(what: &str, e: &dyn std::fmt::Display) -> Self {
        Self { status: S_IOERR, written: 0, guest_error: Some(format!("{what} failed: {e}")) }
    }
}

/// Writes the status byte; the used length counts it and the data before it.
fn put_status(ram: &GuestRam, addr: GuestAddress, status: u8, written: u64) -> Result<u32, String> {
    ram.write(&[status], addr).map_err(|e| format!("writing the status byte: {e}"))?;
    // A chain carries at most 4 GiB (virtio-queue stops the walk past that).
    Ok(u32::try_from(written + 1).unwrap_or(u32::MAX))
}

/// A shared lock for read-only use, an exclusive one for writing: two VMs
/// writing one image would corrupt it.
fn lock_image(file: &File, readonly: bool) -> std::io::Result<()> {
    let op = if readonly { libc::LOCK_SH } else { libc::LOCK_EX };
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let ret = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A stable serial from the image's identity (as Firecracker derives it).
fn image_id(meta: &std::fs::Metadata) -> [u8; ID_LEN] {
    let text = format!("{}{}{}", meta.dev(), meta.rdev(), meta.ino());
    let mut id = [0u8; ID_LEN];
    let n = text.len().min(ID_LEN);
    id[..n].copy_from_slice(&text.as_bytes()[..n]);
    id
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.readonly { F_RO } else { 0 };
        features::VERSION_1
            | features::RING_INDIRECT_DESC
            | features::RING_EVENT_IDX
            | F_SEG_MAX
            | F_BLK_SIZE
            | F_FLUSH
            | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
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
        self.process();
    }

    fn shutdown(&mut self) {
        // Requests are served synchronously, so none is in flight: only
        // durability is left.
        if let Err(e) = self.flush() {
            log::error!("virtio-blk {}: fsync at shutdown failed: {e}", self.path.display());
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.shutdown();
    }
}
