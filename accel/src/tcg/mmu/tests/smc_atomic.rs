//! LOCKed atomics across vCPU threads, and self-modifying-code invalidation.

use std::thread;

use super::*;
use crate::tcg::exception::Exception;
use crate::tcg::mmu::{Access, LinearMemory, Privilege};

const ROUNDS: u64 = 100_000;

/// Runs `f` on two threads, each with its own `CpuMemory` over the same
/// guest, `ROUNDS` times.
fn on_two_vcpus(vm: &Vm, s: &X86State, f: fn(&mut CpuMemory, &X86State)) {
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let mut cpu = vm.cpu();
            let s = s.clone();
            thread::spawn(move || {
                for _ in 0..ROUNDS {
                    f(&mut cpu, &s);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn atomic_rmw_from_two_threads_loses_no_update() {
    let mut vm = Vm::new();
    let root = vm.alloc();
    vm.map_long(root, 0x1000, 0x30_0000, URW, KB4);
    vm.map_long(root, 0x2000, 0x50_0000, URW, KB4);
    let s = long_state(root);
    // Aligned: one host atomic.
    on_two_vcpus(&vm, &s, |cpu, s| {
        cpu.atomic_rmw(s, 0x1008, 8, |v| v + 1).unwrap();
    });
    assert_eq!(vm.r64(0x30_0008), 2 * ROUNDS);
    // Unaligned inside an 8-byte window: a wider host atomic.
    on_two_vcpus(&vm, &s, |cpu, s| {
        cpu.atomic_rmw(s, 0x1023, 4, |v| v + 1).unwrap();
    });
    assert_eq!(vm.r64(0x30_0020), (2 * ROUNDS) << 24);
    // Straddling 16 bytes: inside a 16-byte window (CMPXCHG16B).
    on_two_vcpus(&vm, &s, |cpu, s| {
        cpu.atomic_rmw(s, 0x1046, 4, |v| v + 1).unwrap();
    });
    assert_eq!(vm.r32(0x30_0046), 2 * ROUNDS as u32);
    // Across a page boundary: the global lock.
    on_two_vcpus(&vm, &s, |cpu, s| {
        cpu.atomic_rmw(s, 0x1ffe, 4, |v| v + 1).unwrap();
    });
    assert_eq!(
        u64::from(vm.r8(0x30_0ffe)) | u64::from(vm.r8(0x30_0fff)) << 8 | u64::from(vm.r8(0x50_0000)) << 16,
        2 * ROUNDS
    );
}

#[test]
fn cmpxchg_variants() {
    let vm = Vm::new();
    let s = X86State::reset();
    let mut cpu = vm.cpu();
    vm.w64(0x8000, 0x1122_3344_5566_7788);
    assert_eq!(cpu.cmpxchg(&s, 0x8000, 4, 0x1234, 0), Ok((false, 0x5566_7788)));
    // `expected` is compared at the operand size.
    assert_eq!(cpu.cmpxchg(&s, 0x8000, 4, 0xffff_ffff_5566_7788, 0xaabb_ccdd), Ok((true, 0x5566_7788)));
    assert_eq!(vm.r64(0x8000), 0x1122_3344_aabb_ccdd);
    assert_eq!(cpu.cmpxchg(&s, 0x8005, 2, 0x2233, 0xeeff), Ok((true, 0x2233)));
    assert_eq!(vm.r64(0x8000), 0x11ee_ff44_aabb_ccdd);

    let old = u128::from(vm.r64(0x8000));
    assert_eq!(cpu.cmpxchg16(&s, 0x8000, 5, 6), Ok((false, old)));
    assert_eq!(cpu.cmpxchg16(&s, 0x8000, old, u128::MAX - 1), Ok((true, old)));
    assert_eq!(vm.r64(0x8000), u64::MAX - 1);
    assert_eq!(vm.r64(0x8008), u64::MAX);
    assert_eq!(cpu.cmpxchg16(&s, 0x8008, 0, 0), Err(Exception::gp0()));
    assert_eq!(cpu.atomic_rmw_as(&s, 0x8000, 1, Privilege::Supervisor, |v| v | 1), Ok(0xfe));
    assert_eq!(vm.r8(0x8000), 0xff);
}

#[test]
fn mmio_atomics_read_then_write_the_device() {
    let vm = Vm::new();
    let s = X86State::reset();
    let mut cpu = vm.cpu();
    assert_eq!(cpu.atomic_rmw(&s, MMIO + 4, 4, |v| v + 1), Ok(0xabab_abab));
    assert_eq!(vm.rec.take(), vec![MmioOp::Read(MMIO + 4, 4), MmioOp::Write(MMIO + 4, vec![0xac, 0xab, 0xab, 0xab])]);
}

#[test]
fn writes_invalidate_code_pages() {
    let mut vm = Vm::new();
    let code = vm.code.clone();
    let mut s = X86State::reset();
    let mut cpu = vm.cpu();
    let page = 0x30;
    let gen = code.generation();
    assert!(code.mark(page));
    assert!(code.is_code(page));
    // Other pages, reads and fetches don't invalidate.
    cpu.write(&mut s, 0x31_000, 8, 1, Privilege::Current).unwrap();
    cpu.read(&mut s, 0x30_010, 8, Access::Read, Privilege::Current).unwrap();
    assert!(code.take_invalidated().is_empty());
    cpu.write(&mut s, 0x30_010, 1, 0x90, Privilege::Current).unwrap();
    assert_eq!(code.take_invalidated(), vec![page]);
    assert_eq!(code.generation(), gen + 1);
    assert!(!code.is_code(page));
    // Cleared: the next write is a plain store.
    cpu.write(&mut s, 0x30_010, 1, 0x90, Privilege::Current).unwrap();
    assert!(code.take_invalidated().is_empty());

    let mut hits = |write: &mut dyn FnMut(&mut CpuMemory)| {
        code.mark(page);
        write(&mut cpu);
        code.take_invalidated() == vec![page]
    };
    assert!(hits(&mut |cpu| cpu.atomic_rmw(&X86State::reset(), 0x30_ff8, 8, |v| v + 1).map(drop).unwrap()));
    assert!(hits(&mut |cpu| cpu.cmpxchg16(&X86State::reset(), 0x30_ff0, 0, 1).map(drop).unwrap()));
    assert!(hits(&mut |cpu| cpu.write_bytes(&X86State::reset(), 0x2f_ffe, &[1; 4], Privilege::Current).unwrap()));
    assert!(hits(&mut |cpu| cpu.phys().write(0x30_800, &[0; 2])));

    // DMA over several pages.
    for p in [0x40, 0x41, 0x43] {
        code.mark(p);
    }
    code.notify_write(0x40_ff0, 0x1020);
    assert_eq!(code.take_invalidated(), vec![0x40, 0x41]);
    assert!(code.is_code(0x43));

    // An accessed-bit update in a page table that shares a page with code.
    let root = vm.alloc();
    vm.map_long(root, 0x1000, 0x30_0000, URW, KB4);
    let mut s = long_state(root);
    code.mark(root >> 12);
    cpu.read(&mut s, 0x1000, 1, Access::Read, Privilege::Current).unwrap();
    assert_eq!(code.take_invalidated(), vec![root >> 12]);
}

#[test]
fn code_page_map_bounds() {
    let code = CodePages::with_pages(100);
    assert!(!code.mark(128));
    assert!(!code.is_code(u64::MAX));
    assert!(code.mark(99));
    assert!(code.mark(0));
    code.notify_write(u64::MAX - 5, 100);
    code.notify_write(200 << 12, 4096);
    code.notify_write(0x1000, 0);
    assert!(code.take_invalidated().is_empty());
    code.notify_write(0, u64::MAX);
    let mut pages = code.take_invalidated();
    pages.sort_unstable();
    assert_eq!(pages, vec![0, 99]);
}

#[test]
fn host_page_windows() {
    use crate::tcg::mmu::host::HostPage;
    let vm = Vm::new();
    let ptr = std::ptr::NonNull::new(vm.phys().ram_page(0x30_0000).unwrap()).unwrap();
    // SAFETY: the frame is in `vm.mem`, which outlives `page`.
    let page = unsafe { HostPage::new(ptr) };
    let mut inc = |v: u128| v + 1;
    // Inside a naturally aligned 1/2/4/8/16-byte window: lock-free.
    for (off, size) in [(0, 1), (2, 2), (5, 2), (0x13, 4), (0x21, 8), (0xff8, 8), (0x30, 16)] {
        assert_eq!(page.rmw(off, size, &mut inc), Some(0), "off {off:#x} size {size}");
    }
    assert_eq!(vm.r64(0x30_0020), 0x100);
    // Straddling 16 bytes, or leaving the page: the caller's lock.
    assert_eq!(page.rmw(0x1e, 4, &mut inc), None);
    assert_eq!(page.rmw(0xffe, 4, &mut inc), None);
    assert_eq!(page.load(0xffd, 4), None);
    assert!(!page.store(0x1000, 1, 0));
    // Unaligned plain accesses.
    assert!(page.store(0x101, 8, 0x0102_0304_0506_0708));
    assert_eq!(page.load(0x101, 8), Some(0x0102_0304_0506_0708));
    assert_eq!(page.load(0x102, 2), Some(0x0607));
}
