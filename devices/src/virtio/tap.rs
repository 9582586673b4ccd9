//! A host tap interface as virtio-net's backend.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::net::HDR_LEN;

const TUN_PATH: &str = "/dev/net/tun";
/// IFNAMSIZ less the terminating NUL.
const MAX_NAME: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?} must be 1 to {MAX_NAME} bytes without '/' or NUL")]
    Name(String),
    #[error("cannot open {TUN_PATH}")]
    OpenTun(#[source] std::io::Error),
    #[error("cannot attach to tap {name}{hint}")]
    Attach { name: String, hint: &'static str, source: std::io::Error },
    #[error("tap {name}: {what} failed")]
    Setup { name: String, what: &'static str, source: std::io::Error },
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens (creating it if allowed) tap `name`, non-blocking, with a 12-byte
/// virtio-net header on every frame and no offloads: frames pass between
/// the guest's rings and the tap with the header the driver uses.
pub fn open_tap(name: &str) -> Result<File, TapError> {
    if name.is_empty() || name.len() > MAX_NAME || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(TapError::Name(name.into()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)
        .map_err(TapError::OpenTun)?;

    let mut req = IfReq { name: [0; 16], flags: 0, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // The flag values fit a short (they are < 0x8000).
    req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and updates an ifreq; `req` is one, laid out
    // as the kernel's (name[16], then the flags union) and padded to its size.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if ret < 0 {
        let source = std::io::Error::last_os_error();
        let hint = match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => " (needs CAP_NET_ADMIN, or a tap created for this user)",
            Some(libc::EINVAL) => " (an interface of that name exists and is not a tap)",
            Some(libc::EBUSY) => " (already in use)",
            _ => "",
        };
        return Err(TapError::Attach { name: name.into(), hint, source });
    }
    let setup = |what, source| TapError::Setup { name: name.into(), what, source };

    let hdr_len = HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len as *const libc::c_int) };
    if ret < 0 {
        return Err(setup("TUNSETVNETHDRSZ", std::io::Error::last_os_error()));
    }
    // No offloads: the host stack hands us complete, checksummed frames.
    // SAFETY: TUNSETOFFLOAD takes its flags by value.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
    if ret < 0 {
        return Err(setup("TUNSETOFFLOAD", std::io::Error::last_os_error()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names_before_touching_the_host() {
        for name in ["", "a-name-longer-than-15", "a/b", "nul\0"] {
            assert!(matches!(open_tap(name), Err(TapError::Name(_))), "{name:?}");
        }
    }
}
