//! The random 4 KiB I/O tool of `bench blk`: a tiny static x86-64 Linux
//! program, assembled here, that opens `/dev/vda` with O_DIRECT and issues
//! a fixed number of 4 KiB `pread64`s or `pwrite64`s at pseudo-random
//! 4 KiB-aligned offsets over the whole disk, one at a time, then exits 0
//! (1 on any error). busybox has no tool that seeks within one process;
//! a `dd` per I/O would time process starts. The bench appends the two
//! programs to the guest's initramfs as one more (uncompressed newc)
//! archive, which Linux unpacks over the first.

use iced_x86::IcedError;

use crate::guests::elf64_image;

/// Where the program's only segment is loaded (the usual static-binary base).
const LOAD_ADDR: u64 = 0x40_0000;
/// The programs' paths in the guest.
pub const READ_TOOL: &str = "/bin/rxvmm-randread";
pub const WRITE_TOOL: &str = "/bin/rxvmm-randwrite";

const SYS_PREAD64: u32 = 17;
const SYS_PWRITE64: u32 = 18;
const SYS_OPEN: u32 = 2;
const SYS_LSEEK: u32 = 8;
const SYS_MMAP: u32 = 9;
const SYS_EXIT: u32 = 60;
const O_RDONLY: u32 = 0;
const O_RDWR: u32 = 2;
const O_DIRECT: u32 = 0o40000;
const SEEK_END: u32 = 2;
const BLOCK: u32 = 4096;

/// The ELF of a program doing `ios` random 4 KiB reads (or writes).
fn program(write: bool, ios: u32) -> Result<Vec<u8>, IcedError> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64)?;
    let (mut path, mut fail, mut again) = (a.create_label(), a.create_label(), a.create_label());
    // fd = open("/dev/vda", flags)
    a.mov(eax, SYS_OPEN)?;
    a.lea(rdi, ptr(path))?;
    a.mov(esi, if write { O_RDWR } else { O_RDONLY } | O_DIRECT)?;
    a.xor(edx, edx)?;
    a.syscall()?;
    a.test(rax, rax)?;
    a.js(fail)?;
    a.mov(r12, rax)?;
    // blocks = lseek(fd, 0, SEEK_END) / 4096
    a.mov(eax, SYS_LSEEK)?;
    a.mov(rdi, r12)?;
    a.xor(esi, esi)?;
    a.mov(edx, SEEK_END)?;
    a.syscall()?;
    a.test(rax, rax)?;
    a.js(fail)?;
    a.shr(rax, 12)?;
    a.jz(fail)?;
    a.mov(r13, rax)?;
    // buf = mmap(0, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0): page-aligned, as O_DIRECT needs
    a.mov(eax, SYS_MMAP)?;
    a.xor(edi, edi)?;
    a.mov(esi, BLOCK)?;
    a.mov(edx, 3u32)?;
    a.mov(r10d, 0x22u32)?;
    a.mov(r8, -1i64)?;
    a.xor(r9d, r9d)?;
    a.syscall()?;
    a.cmp(rax, -4096i32)?;
    a.ja(fail)?;
    a.mov(r14, rax)?;
    a.mov(r15d, ios)?;
    a.mov(rbx, 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(write))?;
    a.set_label(&mut again)?;
    // xorshift64, then offset = (x % blocks) * 4096
    for (shift_left, n) in [(true, 13u32), (false, 7), (true, 17)] {
        a.mov(rax, rbx)?;
        if shift_left {
            a.shl(rax, n)?;
        } else {
            a.shr(rax, n)?;
        }
        a.xor(rbx, rax)?;
    }
    a.mov(rax, rbx)?;
    a.xor(edx, edx)?;
    a.div(r13)?;
    a.shl(rdx, 12)?;
    a.mov(r10, rdx)?;
    a.mov(eax, if write { SYS_PWRITE64 } else { SYS_PREAD64 })?;
    a.mov(rdi, r12)?;
    a.mov(rsi, r14)?;
    a.mov(edx, BLOCK)?;
    a.syscall()?;
    a.cmp(rax, BLOCK as i32)?;
    a.jne(fail)?;
    a.dec(r15d)?;
    a.jnz(again)?;
    a.mov(eax, SYS_EXIT)?;
    a.xor(edi, edi)?;
    a.syscall()?;
    a.set_label(&mut fail)?;
    a.mov(eax, SYS_EXIT)?;
    a.mov(edi, 1u32)?;
    a.syscall()?;
    a.set_label(&mut path)?;
    a.db(b"/dev/vda\0")?;
    let code = a.assemble(LOAD_ADDR)?;
    Ok(elf64_image(LOAD_ADDR, &code, LOAD_ADDR, None))
}

/// A newc cpio archive (what the initramfs unpacker reads) of `files`:
/// (path without the leading `/`, executable contents).
fn newc(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = |name: &str, mode: u32, data: &[u8], ino: u32| {
        let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    };
    for (i, (name, data)) in files.iter().enumerate() {
        entry(name, 0o100_755, data, i as u32 + 1);
    }
    entry("TRAILER!!!", 0, &[], 0);
    out
}

/// `initrd` with both tools appended (each doing `ios` I/Os): the new
/// archive starts 4-byte aligned, as the unpacker requires.
pub fn initrd_with_tools(initrd: &[u8], ios: u32) -> Result<Vec<u8>, IcedError> {
    let read = program(false, ios)?;
    let write = program(true, ios)?;
    let mut out = initrd.to_vec();
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(&newc(&[(&READ_TOOL[1..], &read), (&WRITE_TOOL[1..], &write)]));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_aligned_newc_with_a_trailer() {
        let out = initrd_with_tools(b"gzip", 16).expect("assemble");
        assert_eq!(&out[..4], b"gzip");
        assert_eq!(&out[4..10], b"070701");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("bin/rxvmm-randread\0") && text.contains("bin/rxvmm-randwrite\0"));
        assert!(text.contains("TRAILER!!!\0"));
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn programs_are_elf_executables() {
        for write in [false, true] {
            let elf = program(write, 8).expect("assemble");
            assert!(elf.starts_with(b"\x7fELF\x02\x01"));
            assert!(elf.windows(9).any(|w| w == b"/dev/vda\0"));
        }
    }
}
