//! Checks the default test guest built by `resources/build-guest.sh`: a
//! bzImage kernel and a gzip'd newc initramfs with busybox, our /init, the run
//! scripts and the virtio modules (with their dependencies, in load order).
//!
//! Needs a Debian host (the script downloads the kernel and busybox with apt
//! the first time; later runs reuse `resources/cache/`).

use std::collections::{HashMap, HashSet};
use std::process::Command;

mod common;

use common::default_guest as guest_image;

// ---------------------------------------------------------------------------
// newc cpio reader.

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug)]
struct CpioEntry {
    mode: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

impl CpioEntry {
    fn kind(&self) -> u32 {
        self.mode & S_IFMT
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parses a newc ("070701") archive, or several concatenated ones as the kernel
/// accepts them (zero padding in between). Names lose any leading "./".
fn parse_newc(buf: &[u8]) -> Result<HashMap<String, CpioEntry>, String> {
    let mut entries = HashMap::new();
    let mut pos = 0;
    loop {
        while pos < buf.len() && buf[pos] == 0 {
            pos += 1;
        }
        if pos == buf.len() {
            return Ok(entries);
        }
        let header = buf.get(pos..pos + 110).ok_or(format!("truncated header at {pos}"))?;
        if &header[..6] != b"070701" {
            return Err(format!("bad magic at {pos}"));
        }
        let mut fields = [0u32; 13];
        for (i, f) in fields.iter_mut().enumerate() {
            let hex = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).map_err(|e| e.to_string())?;
            *f = u32::from_str_radix(hex, 16).map_err(|e| format!("field {i} at {pos}: {e}"))?;
        }
        let (mode, filesize, namesize) = (fields[1], fields[6] as usize, fields[11] as usize);
        let name = buf.get(pos + 110..pos + 110 + namesize).ok_or("truncated name")?;
        let name =
            std::str::from_utf8(name.strip_suffix(&[0]).ok_or("name without NUL")?).map_err(|e| e.to_string())?;
        pos = align4(pos + 110 + namesize);
        let data = buf.get(pos..pos + filesize).ok_or(format!("truncated data of {name}"))?;
        pos = align4(pos + filesize);
        if name == "TRAILER!!!" {
            continue;
        }
        let name = name.trim_start_matches("./").to_string();
        let entry = CpioEntry { mode, rdev: (fields[9], fields[10]), data: data.to_vec() };
        entries.insert(name, entry);
    }
}

fn initramfs() -> HashMap<String, CpioEntry> {
    let image = guest_image();
    let out = Command::new("gzip").arg("-dc").arg(&image.initrd).output().expect("cannot run gzip");
    assert!(out.status.success(), "gzip -dc {} failed: {}", image.initrd.display(), out.status);
    parse_newc(&out.stdout).unwrap_or_else(|e| panic!("{}: bad cpio: {e}", image.initrd.display()))
}

// ---------------------------------------------------------------------------
// ELF helpers (x86-64 little endian only).

fn le(data: &[u8], off: usize, len: usize) -> usize {
    data[off..off + len].iter().rev().fold(0, |acc, &b| (acc << 8) | b as usize)
}

fn is_elf64(data: &[u8]) -> bool {
    data.len() > 64 && data.starts_with(b"\x7fELF") && data[4] == 2 && data[5] == 1
}

/// Whether the ELF has a PT_INTERP program header (i.e. is dynamically linked).
fn has_interp(data: &[u8]) -> bool {
    let (phoff, phentsize, phnum) = (le(data, 0x20, 8), le(data, 0x36, 2), le(data, 0x38, 2));
    (0..phnum).any(|i| le(data, phoff + i * phentsize, 4) == 3)
}

/// The NUL-separated "key=value" strings of a module's .modinfo section.
fn modinfo(data: &[u8]) -> Vec<String> {
    let (shoff, shentsize, shnum, shstrndx) =
        (le(data, 0x28, 8), le(data, 0x3a, 2), le(data, 0x3c, 2), le(data, 0x3e, 2));
    let section = |i: usize| {
        let sh = shoff + i * shentsize;
        (le(data, sh, 4), le(data, sh + 0x18, 8), le(data, sh + 0x20, 8))
    };
    let (_, strtab, _) = section(shstrndx);
    for i in 0..shnum {
        let (name, off, size) = section(i);
        let name = &data[strtab + name..];
        if name.starts_with(b".modinfo\0") {
            return data[off..off + size]
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
        }
    }
    panic!("module without .modinfo section");
}

/// Module name as the kernel spells it: no directory, no .ko*, '_' for '-'.
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap();
    base.split(".ko").next().unwrap().replace('-', "_")
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn kernel_is_a_bzimage() {
    let image = guest_image();
    let kernel = std::fs::read(&image.kernel).expect("cannot read bzImage");
    assert!(kernel.len() > 1 << 20, "bzImage is suspiciously small: {} bytes", kernel.len());
    assert_eq!(&kernel[0x202..0x206], b"HdrS", "no Linux boot protocol header magic at 0x202");
    let release = std::fs::read_to_string(image.dir.join("kernel.release")).unwrap();
    assert!(!release.trim().is_empty(), "empty kernel.release");
}

#[test]
fn initramfs_has_init_busybox_and_run_scripts() {
    let files = initramfs();
    let get = |name: &str| files.get(name).unwrap_or_else(|| panic!("initramfs has no /{name}"));

    let init = get("init");
    assert_eq!(init.kind(), S_IFREG, "/init is not a regular file");
    assert_ne!(init.mode & 0o111, 0, "/init is not executable");
    let text = String::from_utf8_lossy(&init.data);
    assert!(text.starts_with("#!/bin/sh"), "/init is not a shell script");
    assert!(text.contains("rxvmm: userspace up"), "/init lacks the userspace marker");
    assert!(text.contains("rxvmm.run"), "/init does not handle rxvmm.run");

    let busybox = get("bin/busybox");
    assert_eq!(busybox.kind(), S_IFREG);
    assert_ne!(busybox.mode & 0o111, 0, "/bin/busybox is not executable");
    assert!(is_elf64(&busybox.data), "/bin/busybox is not a 64-bit ELF");
    assert!(!has_interp(&busybox.data), "/bin/busybox is not statically linked");

    // Applets /init and the run scripts rely on.
    for applet in ["sh", "mount", "insmod", "setsid", "cttyhack", "poweroff", "reboot", "cat", "grep", "awk"] {
        let found = ["bin", "sbin", "usr/bin", "usr/sbin"]
            .iter()
            .filter_map(|dir| files.get(&format!("{dir}/{applet}")))
            .any(|e| e.kind() == S_IFLNK && e.data == b"/bin/busybox");
        assert!(found, "no busybox symlink for applet {applet}");
    }

    for dir in ["proc", "sys", "dev", "tmp", "etc", "root", "mnt"] {
        assert_eq!(get(dir).kind(), S_IFDIR, "/{dir} is not a directory");
    }
    let console = get("dev/console");
    assert_eq!((console.kind(), console.rdev), (S_IFCHR, (5, 1)), "bad /dev/console");

    for script in ["info", "shell", "echo", "poweroff", "reboot", "panic", "blk"] {
        let entry = get(&format!("etc/rxvmm/run/{script}"));
        assert_eq!(entry.kind(), S_IFREG, "run script {script} is not a file");
        assert!(entry.data.starts_with(b"#!/bin/sh"), "run script {script} is not a shell script");
    }
    let info = String::from_utf8_lossy(&get("etc/rxvmm/run/info").data).into_owned();
    for key in ["rxvmm-info: cpus=", "rxvmm-info: memtotal_kb=", "rxvmm-info: kernel="] {
        assert!(info.contains(key), "info script does not print {key:?}");
    }
}

#[test]
fn initramfs_has_virtio_modules_in_dependency_order() {
    let image = guest_image();
    let files = initramfs();
    let release = std::fs::read_to_string(image.dir.join("kernel.release")).unwrap();
    let moddir = format!("lib/modules/{}", release.trim());
    let builtin: HashSet<String> = std::fs::read_to_string(image.dir.join("modules.builtin"))
        .expect("no modules.builtin next to the kernel")
        .lines()
        .map(module_name)
        .collect();

    let order = files.get(&format!("{moddir}/load-order")).unwrap_or_else(|| panic!("no /{moddir}/load-order"));
    let order: Vec<&str> = std::str::from_utf8(&order.data).unwrap().lines().collect();

    // Every listed module is a plain (uncompressed) .ko whose dependencies, as
    // recorded in its own .modinfo, are listed before it.
    let mut loaded = HashSet::new();
    for ko in &order {
        let entry = files.get(&format!("{moddir}/{ko}")).unwrap_or_else(|| panic!("{ko} listed but missing"));
        assert!(ko.ends_with(".ko") && is_elf64(&entry.data), "{ko} is not a plain ELF .ko");
        let info = modinfo(&entry.data);
        let name = info.iter().find_map(|s| s.strip_prefix("name=")).unwrap_or_else(|| panic!("{ko}: no name="));
        assert_eq!(name.replace('-', "_"), module_name(ko));
        let deps = info.iter().find_map(|s| s.strip_prefix("depends=")).unwrap_or("");
        for dep in deps.split(',').filter(|d| !d.is_empty()) {
            let dep = dep.replace('-', "_");
            assert!(loaded.contains(&dep), "{ko} depends on {dep}, which is not loaded before it: {order:?}");
        }
        assert!(loaded.insert(module_name(ko)), "{ko} listed twice");
    }

    // The drivers the VMM's devices need: modules or built in.
    for module in [
        "virtio",
        "virtio_ring",
        "virtio_mmio",
        "virtio_pci",
        "virtio_blk",
        "virtio_net",
        "virtio_console",
        "virtio_rng",
        "vmw_vsock_virtio_transport",
    ] {
        assert!(
            loaded.contains(module) || builtin.contains(module),
            "{module} is neither in the initramfs nor built into the kernel"
        );
    }
    let pos = |m: &str| order.iter().position(|ko| module_name(ko) == m);
    if let (Some(ring), Some(mmio)) = (pos("virtio_ring"), pos("virtio_mmio")) {
        assert!(ring < mmio, "virtio_ring must load before virtio_mmio: {order:?}");
    }
}

#[test]
fn newc_parser_reads_concatenated_archives() {
    // Self-check of the reader with a hand-made archive: a file, then a second
    // archive holding a character device.
    fn entry(name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Vec<u8> {
        let mut v = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            1,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        )
        .into_bytes();
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        v.resize(align4(v.len()), 0);
        v.extend_from_slice(data);
        v.resize(align4(v.len()), 0);
        v
    }
    let mut buf = entry("./init", S_IFREG | 0o755, (0, 0), b"#!/bin/sh\n");
    buf.extend(entry("TRAILER!!!", 0, (0, 0), b""));
    buf.resize(512, 0);
    buf.extend(entry("dev/console", S_IFCHR | 0o600, (5, 1), b""));
    buf.extend(entry("TRAILER!!!", 0, (0, 0), b""));
    let files = parse_newc(&buf).unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files["init"].data, b"#!/bin/sh\n");
    assert_eq!(files["init"].mode, S_IFREG | 0o755);
    assert_eq!((files["dev/console"].kind(), files["dev/console"].rdev), (S_IFCHR, (5, 1)));
}
