//! bzImage: setup header checks, then linux-loader copies the protected-mode
//! kernel to `HIMEM_START`.

use std::fs::File;
use std::mem::size_of;
use std::path::Path;

use linux_loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use log::debug;
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

use super::{LoadError, LoadedKernel};
use crate::layout;

/// The setup header starts at 0x1f1 in the file (and in `boot_params`).
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Bytes to read to see the whole setup header.
pub(super) const HEAD_LEN: usize = SETUP_HEADER_OFFSET + size_of::<setup_header>();
const MAGIC_OFFSET: usize = 0x202;
const MAGIC: &[u8; 4] = b"HdrS";
/// 2.06 is the first protocol with `cmdline_size`; the 64-bit entry point is
/// then announced by `xloadflags` (2.12 and later kernels), checked separately.
const MIN_VERSION: u16 = 0x206; // 2.06
/// `loadflags` bit 0: the protected-mode kernel is loaded at 1 MiB.
const LOADED_HIGH: u8 = 1 << 0;
/// `xloadflags` bit 0: the kernel has the 64-bit entry point at +0x200.
pub(super) const XLF_KERNEL_64: u16 = 1 << 0;
/// 64-bit entry point, relative to the protected-mode kernel's load address.
const ENTRY_64_OFFSET: u64 = 0x200;

/// End of the buffer the kernel decompresses itself into (protocol 2.10+:
/// `init_size` bytes from its runtime address), 0 when the header doesn't say.
///
/// The runtime address is what arch/x86/boot/compressed/head_64.S computes: a
/// relocatable kernel runs at its load address rounded up to
/// `kernel_alignment`, but never below `pref_address` (LOAD_PHYSICAL_ADDR);
/// any other kernel runs at `pref_address`.
fn decompression_end(hdr: &setup_header) -> Option<u64> {
    let (version, pref_address, init_size) = (hdr.version, hdr.pref_address, hdr.init_size);
    // 0x20a is protocol 2.10, the first with init_size and pref_address.
    if version < 0x20a || init_size == 0 {
        return Some(0);
    }
    let start = if hdr.relocatable_kernel != 0 {
        let align = u64::from(hdr.kernel_alignment).max(1);
        layout::HIMEM_START.div_ceil(align).checked_mul(align)?.max(pref_address)
    } else {
        pref_address
    };
    start.checked_add(u64::from(init_size))
}

pub(super) fn has_magic(head: &[u8]) -> bool {
    head.get(MAGIC_OFFSET..MAGIC_OFFSET + MAGIC.len()) == Some(MAGIC)
}

/// Checks the setup header read from `head` (the file's first bytes) and the
/// file's size, then loads the protected-mode kernel at `HIMEM_START`.
pub(super) fn load(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &mut File,
    head: &[u8],
    file_len: u64,
    low_ram_end: u64,
) -> Result<LoadedKernel, LoadError> {
    let truncated = |what: String| LoadError::Truncated { path: path.to_owned(), what };
    let unsupported = |reason: String| LoadError::UnsupportedBzImage { path: path.to_owned(), reason };

    let mut hdr = setup_header::default();
    let raw = head
        .get(SETUP_HEADER_OFFSET..HEAD_LEN)
        .ok_or_else(|| truncated(format!("the setup header ends at {HEAD_LEN:#x}, the file at {file_len:#x}")))?;
    hdr.as_mut_slice().copy_from_slice(raw);
    // Copies: the header is packed, its fields can't be borrowed.
    let (version, xloadflags, loadflags) = (hdr.version, hdr.xloadflags, hdr.loadflags);
    if version < MIN_VERSION {
        return Err(unsupported(format!(
            "boot protocol {}.{:02} is too old: 2.06 or later is needed",
            version >> 8,
            version & 0xff
        )));
    }
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(unsupported(format!(
            "no 64-bit entry point (xloadflags {xloadflags:#x} lacks XLF_KERNEL_64; boot protocol {}.{:02})",
            version >> 8,
            version & 0xff
        )));
    }
    if loadflags & LOADED_HIGH == 0 {
        return Err(unsupported("loadflags lacks LOADED_HIGH: not a bzImage (a zImage?)".into()));
    }

    // setup_sects == 0 means 4, for compatibility with ancient kernels.
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_len = (setup_sects + 1) * 512;
    if file_len <= setup_len {
        return Err(truncated(format!(
            "the real-mode setup takes {setup_len:#x} bytes but the file ends at {file_len:#x}: no protected-mode kernel follows"
        )));
    }
    let payload_len = file_len - setup_len;
    // syssize counts the protected-mode kernel in 16-byte paragraphs.
    let declared = u64::from(hdr.syssize) * 16;
    if declared > payload_len {
        return Err(truncated(format!(
            "the header declares a {declared:#x}-byte protected-mode kernel, the file holds {payload_len:#x}"
        )));
    }
    let image_end = layout::HIMEM_START + payload_len;
    // Unrepresentable footprints (absurd header values) can't fit either.
    let needed = image_end.max(decompression_end(&hdr).unwrap_or(u64::MAX));
    if needed > low_ram_end {
        return Err(LoadError::KernelTooLarge { path: path.to_owned(), needed, available: low_ram_end });
    }

    // No high-memory check: the load address is ours, not `code32_start`.
    let result = BzImage::load(mem, Some(GuestAddress(layout::HIMEM_START)), file, None)
        .map_err(|source| LoadError::Loader { path: path.to_owned(), source })?;
    debug!(
        "bzImage {}: protocol {version:#x}, setup {setup_len:#x} bytes, kernel {payload_len:#x} bytes, needs RAM up to {needed:#x}",
        path.display()
    );
    Ok(LoadedKernel {
        entry: layout::HIMEM_START + ENTRY_64_OFFSET,
        pvh_entry: None,
        // The initrd goes above the decompression buffer too, or the kernel
        // would overwrite it while unpacking itself.
        end: result.kernel_end.max(needed),
        // linux-loader's copy has code32_start set to the load address.
        setup_header: Some(result.setup_header.unwrap_or(hdr)),
    })
}
