//! Synthetic kernels for the loader tests: a minimal bzImage and ELF64 files,
//! and temporary files that clean up after themselves.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A file under the temp dir, removed on drop.
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn new(name: &str, contents: &[u8]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rxvmm-loader-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A payload whose bytes say where they were: easy to find in guest memory.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

/// Setup-header fields of a fake bzImage.
pub struct BzImage {
    pub setup_sects: u8,
    pub version: u16,
    pub xloadflags: u16,
    pub initrd_addr_max: u32,
    pub cmdline_size: u32,
    pub kernel_alignment: u32,
    pub pref_address: u64,
    pub init_size: u32,
    pub payload: Vec<u8>,
}

impl Default for BzImage {
    fn default() -> Self {
        BzImage {
            setup_sects: 4,
            version: 0x20f,
            xloadflags: 1, // XLF_KERNEL_64
            initrd_addr_max: 0x7fff_ffff,
            cmdline_size: 2047,
            kernel_alignment: 0x20_0000,
            pref_address: 0x100_0000,
            // Unknown; real kernels need tens of MiB (see the test that sets it).
            init_size: 0,
            payload: pattern(0x3000, 0x5a),
        }
    }
}

impl BzImage {
    pub fn setup_len(&self) -> usize {
        (usize::from(self.setup_sects) + 1) * 512
    }

    pub fn build(&self) -> Vec<u8> {
        let setup_len = self.setup_len();
        let mut buf = vec![0u8; setup_len + self.payload.len()];
        put(&mut buf, 0x1f1, &[self.setup_sects]);
        let syssize = self.payload.len().div_ceil(16) as u32;
        put(&mut buf, 0x1f4, &syssize.to_le_bytes());
        put(&mut buf, 0x1fe, &0xaa55u16.to_le_bytes());
        put(&mut buf, 0x200, &[0xeb, 0x66]); // jmp over the header
        put(&mut buf, 0x202, b"HdrS");
        put(&mut buf, 0x206, &self.version.to_le_bytes());
        put(&mut buf, 0x211, &[1]); // loadflags: LOADED_HIGH
        put(&mut buf, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
        put(&mut buf, 0x22c, &self.initrd_addr_max.to_le_bytes());
        put(&mut buf, 0x230, &self.kernel_alignment.to_le_bytes());
        put(&mut buf, 0x234, &[1]); // relocatable_kernel
        put(&mut buf, 0x236, &self.xloadflags.to_le_bytes());
        put(&mut buf, 0x238, &self.cmdline_size.to_le_bytes());
        put(&mut buf, 0x258, &self.pref_address.to_le_bytes());
        put(&mut buf, 0x260, &self.init_size.to_le_bytes());
        put(&mut buf, setup_len, &self.payload);
        buf
    }
}

/// Shape of a fake ELF64 vmlinux: one PT_LOAD, optionally a PT_NOTE.
pub struct Elf {
    pub class: u8,
    pub machine: u16,
    pub entry: u64,
    pub load_addr: u64,
    pub payload: Vec<u8>,
    /// p_memsz beyond p_filesz (BSS).
    pub bss: u64,
    /// XEN_ELFNOTE_PHYS32_ENTRY value, after an unrelated GNU note.
    pub pvh_entry: Option<u32>,
}

pub const ELF_PAYLOAD_OFFSET: usize = 0x1000;

impl Default for Elf {
    fn default() -> Self {
        Elf {
            class: 2,
            machine: 62,
            entry: 0x100_0000,
            load_addr: 0x100_0000,
            payload: pattern(0x2000, 0x33),
            bss: 0x1000,
            pvh_entry: None,
        }
    }
}

/// One ELF note: header, 4-aligned name, 4-aligned descriptor.
fn note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&n_type.to_le_bytes());
    for field in [name, desc] {
        out.extend_from_slice(field);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn phdr(p_type: u32, flags: u32, offset: u64, addr: u64, filesz: u64, memsz: u64, align: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(56);
    out.extend_from_slice(&p_type.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&addr.to_le_bytes()); // p_vaddr
    out.extend_from_slice(&addr.to_le_bytes()); // p_paddr
    out.extend_from_slice(&filesz.to_le_bytes());
    out.extend_from_slice(&memsz.to_le_bytes());
    out.extend_from_slice(&align.to_le_bytes());
    out
}

impl Elf {
    pub fn build(&self) -> Vec<u8> {
        let mut notes = Vec::new();
        if let Some(entry) = self.pvh_entry {
            notes.extend(note(b"GNU\0", 3, &[1, 2, 3, 4])); // NT_GNU_BUILD_ID
            notes.extend(note(b"Xen\0", 18, &entry.to_le_bytes()));
        }
        let note_offset = 0x100usize;
        let mut phdrs = phdr(
            1, // PT_LOAD
            5, // R+X
            ELF_PAYLOAD_OFFSET as u64,
            self.load_addr,
            self.payload.len() as u64,
            self.payload.len() as u64 + self.bss,
            0x20_0000,
        );
        if !notes.is_empty() {
            phdrs.extend(phdr(4, 4, note_offset as u64, 0, notes.len() as u64, notes.len() as u64, 4));
        }
        let phnum = (phdrs.len() / 56) as u16;

        let mut buf = vec![0u8; ELF_PAYLOAD_OFFSET + self.payload.len()];
        put(&mut buf, 0, b"\x7fELF");
        put(&mut buf, 4, &[self.class, 1, 1]); // class, little-endian, EV_CURRENT
        put(&mut buf, 16, &2u16.to_le_bytes()); // ET_EXEC
        put(&mut buf, 18, &self.machine.to_le_bytes());
        put(&mut buf, 20, &1u32.to_le_bytes()); // e_version
        put(&mut buf, 24, &self.entry.to_le_bytes());
        put(&mut buf, 32, &64u64.to_le_bytes()); // e_phoff
        put(&mut buf, 52, &64u16.to_le_bytes()); // e_ehsize
        put(&mut buf, 54, &56u16.to_le_bytes()); // e_phentsize
        put(&mut buf, 56, &phnum.to_le_bytes());
        put(&mut buf, 64, &phdrs);
        put(&mut buf, note_offset, &notes);
        put(&mut buf, ELF_PAYLOAD_OFFSET, &self.payload);
        buf
    }
}
