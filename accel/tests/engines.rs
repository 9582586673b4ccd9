//! The behaviour both engines must share, written once and run under each
//! (as crosvm's hypervisor/tests do): `engine_tests!` instantiates every case
//! in `mod kvm` (under `accel::kvm::Kvm`; prints `SKIP:` and passes when
//! /dev/kvm can't be opened) and `mod tcg` (under `accel::tcg::Tcg`).
//! Engine-specific cases live in kvm_engine.rs and tcg_engine.rs.

mod harness;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use accel::{AccelKind, Accelerator, DescriptorTable, IoEventAddress, VcpuExit, VmConfig};
use harness::*;
use iced_x86::code_asm::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// One `#[test]` per case, calling the shared body with the engine `$open`
/// yields (`None`: the engine is unavailable and the case is skipped).
macro_rules! cases {
    ($open:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                let Some(accel) = $open else { return };
                super::$case(&accel);
            }
        )+
    };
}

/// Instantiates every shared case for one engine, in `mod $engine`.
macro_rules! engine_tests {
    ($engine:ident, $open:expr) => {
        mod $engine {
            #[allow(unused_imports)]
            use super::*;

            cases!(
                $open;
                out_reaches_pio_write_with_port_size_and_data,
                in_returns_the_value_vmops_gives,
                string_io_calls_the_ops_once_per_element,
                mmio_outside_ram_reaches_the_ops,
                triple_fault_is_reported,
                kick_from_another_thread_stops_a_spinning_guest,
                halted_vcpu_waits_in_the_kernel_until_kicked,
                cpu_state_round_trips,
                ioeventfd_and_irqfd_registration,
                two_vcpus_and_the_ap_waits_for_sipi,
                kicks_are_never_lost,
                integer_loops_compute_known_values,
                string_copy_and_compare_with_rep,
                self_modifying_code_is_retranslated,
                page_fault_is_handled_by_the_guest_idt,
            );
        }
    };
}

engine_tests!(kvm, kvm_or_skip());
engine_tests!(tcg, Some(accel::tcg::Tcg::default()));

fn out_reaches_pio_write_with_port_size_and_data(accel: &dyn Accelerator) {
    let code = assemble(|a| {
        a.mov(dx, u32::from(SERIAL))?;
        a.mov(al, u32::from(b'A'))?;
        a.out(dx, al)?;
        a.mov(ax, 0x1234u32)?;
        a.out(dx, ax)?;
        a.mov(eax, 0xdead_beefu32)?;
        a.out(dx, eax)
    });
    let mut g = boot(accel, 1, &code);
    run_to_done(&mut g);
    assert_eq!(
        g.ops.log(),
        vec![
            Access::PioWrite(SERIAL, vec![b'A']),
            Access::PioWrite(SERIAL, vec![0x34, 0x12]),
            Access::PioWrite(SERIAL, vec![0xef, 0xbe, 0xad, 0xde]),
        ]
    );
}

fn in_returns_the_value_vmops_gives(accel: &dyn Accelerator) {
    let code = assemble(|a| {
        a.mov(dx, u32::from(PATTERN_PORT))?;
        a.in_(al, dx)?;
        a.mov(dx, u32::from(SERIAL))?;
        a.out(dx, al)?;
        a.mov(dx, u32::from(PATTERN_PORT))?;
        a.in_(eax, dx)?;
        a.mov(dx, u32::from(SERIAL))?;
        a.out(dx, eax)
    });
    let mut g = boot(accel, 1, &code);
    run_to_done(&mut g);
    assert_eq!(g.ops.pio_writes(SERIAL), vec![vec![0x5a], vec![0x5a, 0x5b, 0x5c, 0x5d]]);
    assert!(g.ops.log().contains(&Access::PioRead(PATTERN_PORT, 4)));
}

fn string_io_calls_the_ops_once_per_element(accel: &dyn Accelerator) {
    let code = assemble(|a| {
        // rep outsb of "xyz" from DATA, then rep insw of 3 words to DATA+16.
        a.mov(rsi, DATA)?;
        a.mov(ecx, 3u32)?;
        a.mov(dx, u32::from(SERIAL))?;
        a.rep().outsb()?;
        a.mov(rdi, DATA + 16)?;
        a.mov(ecx, 3u32)?;
        a.mov(dx, u32::from(COUNTER_PORT))?;
        a.rep().insw()
    });
    let mut g = boot(accel, 1, &code);
    g.memory.write_slice(b"xyz", GuestAddress(DATA)).unwrap();
    run_to_done(&mut g);
    assert_eq!(g.ops.pio_writes(SERIAL), vec![vec![b'x'], vec![b'y'], vec![b'z']]);
    let reads = g.ops.log().into_iter().filter(|a| *a == Access::PioRead(COUNTER_PORT, 2)).count();
    assert_eq!(reads, 3, "one 2-byte read per element: {:?}", g.ops.log());
    let mut buf = [0u8; 6];
    g.memory.read_slice(&mut buf, GuestAddress(DATA + 16)).unwrap();
    assert_eq!(buf, [1, 2, 3, 4, 5, 6]);
}

fn mmio_outside_ram_reaches_the_ops(accel: &dyn Accelerator) {
    let code = assemble(|a| {
        a.mov(eax, MMIO as u32)?;
        a.mov(dword_ptr(rax), 0x1122_3344u32)?;
        a.mov(ebx, dword_ptr(rax + 4))?;
        a.mov(eax, ebx)?;
        a.mov(dx, u32::from(SERIAL))?;
        a.out(dx, eax)
    });
    let mut g = boot(accel, 1, &code);
    run_to_done(&mut g);
    assert_eq!(
        g.ops.log(),
        vec![
            Access::MmioWrite(MMIO, vec![0x44, 0x33, 0x22, 0x11]),
            Access::MmioRead(MMIO + 4, 4),
            Access::PioWrite(SERIAL, vec![0xa0, 0xa1, 0xa2, 0xa3]),
        ]
    );
}

fn triple_fault_is_reported(accel: &dyn Accelerator) {
    let mut a = CodeAssembler::new(64).unwrap();
    a.ud2().unwrap();
    let mut g = boot(accel, 1, &a.assemble(CODE).unwrap());
    let exit = run(g.vcpu.as_mut());
    println!("ud2 with an empty IDT gave {exit:?}");
    match exit {
        VcpuExit::Shutdown => {}
        // PVM may not model the triple fault; it must at least say so.
        VcpuExit::Crash(what) if accel.kind() == AccelKind::Kvm => assert!(what.contains("KVM_EXIT"), "{what}"),
        other => panic!("expected a shutdown, got {other:?}"),
    }
}

fn kick_from_another_thread_stops_a_spinning_guest(accel: &dyn Accelerator) {
    let mut a = CodeAssembler::new(64).unwrap();
    a.mov(dx, u32::from(SERIAL)).unwrap();
    a.out(dx, al).unwrap();
    spin(&mut a).unwrap();
    let mut g = boot(accel, 1, &a.assemble(CODE).unwrap());

    // A kick before `run` makes it return at once.
    g.vcpu.kicker().kick();
    assert_eq!(run(g.vcpu.as_mut()), VcpuExit::Kicked);
    assert!(g.ops.log().is_empty(), "the guest must not have run");

    // Kicks while the guest spins, twice: the flag resets after each.
    for round in 0..2 {
        let kicker = g.vcpu.kicker();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            kicker.kick();
        });
        assert_eq!(run(g.vcpu.as_mut()), VcpuExit::Kicked, "round {round}");
        t.join().unwrap();
    }
    assert_eq!(g.ops.pio_writes(SERIAL).len(), 1, "the guest ran once up to its loop");
    let rip = g.vcpu.cpu_state().unwrap().rip;
    assert!((CODE..CODE + 16).contains(&rip), "spinning at {rip:#x}");
}

fn halted_vcpu_waits_in_the_kernel_until_kicked(accel: &dyn Accelerator) {
    let mut a = CodeAssembler::new(64).unwrap();
    a.cli().unwrap();
    a.hlt().unwrap();
    a.mov(dx, u32::from(SERIAL)).unwrap();
    a.out(dx, al).unwrap();
    spin(&mut a).unwrap();
    let mut g = boot(accel, 1, &a.assemble(CODE).unwrap());
    let kicker = g.vcpu.kicker();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        kicker.kick();
    });
    assert_eq!(run(g.vcpu.as_mut()), VcpuExit::Kicked);
    t.join().unwrap();
    assert!(g.ops.log().is_empty(), "HLT with IF=0 must not fall through");
}

fn cpu_state_round_trips(accel: &dyn Accelerator) {
    let g = boot(accel, 1, &[0xf4]);
    assert_eq!(g.vcpu.cpu_state().unwrap(), long_mode_state());
    let dump = g.vcpu.dump_state();
    assert!(dump.contains("RIP=0x0000000000100000") && dump.contains("EFER=0x500"), "{dump}");
}

fn ioeventfd_and_irqfd_registration(accel: &dyn Accelerator) {
    const NOTIFY_PORT: u16 = 0x510;
    let code = assemble(|a| {
        a.mov(dx, u32::from(NOTIFY_PORT))?;
        a.mov(eax, 7u32)?;
        a.out(dx, eax)?; // matches: signals the eventfd, no exit
        a.mov(eax, 8u32)?;
        a.out(dx, eax) // no match: reaches the ops
    });
    let mut g = boot(accel, 1, &code);
    let event = EventFd::new(EFD_NONBLOCK).unwrap();
    g.vm.register_ioevent(&event, IoEventAddress::Pio(u64::from(NOTIFY_PORT)), Some(7)).unwrap();
    let mmio_event = EventFd::new(EFD_NONBLOCK).unwrap();
    g.vm.register_ioevent(&mmio_event, IoEventAddress::Mmio(MMIO + 0x50), None).unwrap();
    run_to_done(&mut g);
    assert_eq!(event.read().unwrap(), 1);
    assert_eq!(g.ops.pio_writes(NOTIFY_PORT), vec![vec![8, 0, 0, 0]]);

    let line = g.vm.irq_line(4).unwrap();
    line.trigger().unwrap();
    assert!(g.vm.irq_line(24).is_err(), "the IOAPIC has 24 pins");
}

fn two_vcpus_and_the_ap_waits_for_sipi(accel: &dyn Accelerator) {
    let memory = guest_memory(&[0xf4]);
    let vm = accel.create_vm(&memory, &VmConfig { vcpus: 2 }).unwrap();
    let ops = Arc::new(Recorder::default());
    let _bsp = vm.create_vcpu(0, ops.clone()).unwrap();
    let mut ap = vm.create_vcpu(1, ops.clone()).unwrap();
    assert!(vm.create_vcpu(2, ops.clone()).is_err(), "only 2 vCPUs configured");
    assert_eq!(ap.id(), 1);
    // Give the AP runnable-looking state: were it not parked, it would
    // execute the HLT at CODE (and then stay halted) or fault.
    ap.set_cpu_state(&long_mode_state()).unwrap();
    let before = ap.cpu_state().unwrap();
    let kicker = ap.kicker();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        kicker.kick();
    });
    assert_eq!(run(ap.as_mut()), VcpuExit::Kicked);
    t.join().unwrap();
    assert_eq!(ap.cpu_state().unwrap().rip, before.rip, "a parked AP runs nothing");
}

fn kicks_are_never_lost(accel: &dyn Accelerator) {
    let mut a = CodeAssembler::new(64).unwrap();
    spin(&mut a).unwrap();
    let mut g = boot(accel, 1, &a.assemble(CODE).unwrap());
    // Kicks at varied delays land before, around and during the engine's
    // run (KVM_RUN, the TCG loop); each
    // must bring `run` back (the watchdog in `run` catches a lost one).
    for i in 0..300u64 {
        let kicker = g.vcpu.kicker();
        let delay = Duration::from_micros((i * 37) % 700);
        let t = thread::spawn(move || {
            thread::sleep(delay);
            kicker.kick();
        });
        assert_eq!(run(g.vcpu.as_mut()), VcpuExit::Kicked, "iteration {i}");
        t.join().unwrap();
    }
}

fn integer_loops_compute_known_values(accel: &dyn Accelerator) {
    let code = assemble(|a| {
        a.mov(edx, u32::from(SERIAL))?;
        // Sum 1..=100 with a count-down loop.
        let mut sum = a.create_label();
        a.mov(ecx, 100u32)?;
        a.xor(eax, eax)?;
        a.set_label(&mut sum)?;
        a.add(eax, ecx)?;
        a.dec(ecx)?;
        a.jnz(sum)?;
        a.out(dx, eax)?;
        // fib(50) in 64 bits with LOOP and LEA.
        let mut fib = a.create_label();
        a.xor(eax, eax)?;
        a.mov(ebx, 1u32)?;
        a.mov(ecx, 50u32)?;
        a.set_label(&mut fib)?;
        a.lea(rsi, qword_ptr(rax + rbx))?;
        a.mov(rax, rbx)?;
        a.mov(rbx, rsi)?;
        a.loop_(fib)?;
        out64(a)?;
        // 64-bit MUL and DIV: (0x1_2345_6789 * 1000) / 7.
        a.mov(rax, 0x1_2345_6789u64)?;
        a.mov(ebx, 1000u32)?;
        a.mul(rbx)?;
        a.mov(ebx, 7u32)?;
        a.div(rbx)?;
        a.mov(rdi, rdx)?;
        a.push(rdx)?;
        a.mov(edx, u32::from(SERIAL))?;
        out64(a)?;
        a.pop(rax)?;
        a.out(dx, eax)?;
        // Signed: IMUL with an immediate, IDIV, SAR, CQO.
        a.mov(rax, -1234567i64)?;
        a.imul_3(rax, rax, 3)?;
        a.cqo()?;
        a.mov(ecx, 10u32)?;
        a.idiv(rcx)?;
        a.sar(rax, 2)?;
        a.mov(edx, u32::from(SERIAL))?;
        out64(a)?;
        // Flags consumers: CMP/SETcc/CMOVcc, ADC chains, BSF/BSR/BSWAP, ROL.
        a.mov(eax, 5u32)?;
        a.cmp(eax, 7u32)?;
        a.setl(bl)?;
        a.setb(bh)?;
        a.seta(cl)?;
        a.movzx(eax, bx)?;
        a.mov(esi, 0x55u32)?;
        a.cmovg(eax, esi)?;
        a.out(dx, eax)?;
        a.mov(eax, 0xffff_ffffu32)?;
        a.add(eax, 1u32)?;
        a.mov(eax, 0u32)?;
        a.adc(eax, 0x40u32)?;
        a.out(dx, eax)?;
        a.mov(eax, 0x0001_0080u32)?;
        a.bsf(ecx, eax)?;
        a.bsr(ebx, eax)?;
        a.shl(ebx, 8)?;
        a.or(ecx, ebx)?;
        a.mov(eax, ecx)?;
        a.out(dx, eax)?;
        a.mov(eax, 0x1122_3344u32)?;
        a.bswap(eax)?;
        a.rol(eax, 8)?;
        a.out(dx, eax)?;
        // CALL/RET with a stack argument; MOVSX of a negative byte.
        let mut double = a.create_label();
        let mut after = a.create_label();
        a.push(21i32)?;
        a.call(double)?;
        a.add(rsp, 8)?;
        a.out(dx, eax)?;
        a.mov(bl, 0x80u32)?;
        a.movsx(eax, bl)?;
        a.out(dx, eax)?;
        a.jmp(after)?;
        a.set_label(&mut double)?;
        a.mov(rax, qword_ptr(rsp + 8))?;
        a.add(rax, rax)?;
        a.ret()?;
        a.set_label(&mut after)?;
        a.nop()
    });
    let mut g = boot(accel, 1, &code);
    run_to_done(&mut g);
    let fib50: u64 = 12_586_269_025;
    let product = 0x1_2345_6789u128 * 1000;
    let (q, r) = ((product / 7) as u64, (product % 7) as u64);
    let signed = ((-1234567i64 * 3) / 10) >> 2;
    let expected = vec![
        5050,
        fib50 as u32,
        (fib50 >> 32) as u32,
        q as u32,
        (q >> 32) as u32,
        r as u32,
        signed as u32,
        (signed as u64 >> 32) as u32,
        // setl=1 (BL), setb=1 (BH); cmovg not taken.
        0x0101,
        0x41,
        (16 << 8) | 7,
        0x4433_2211u32.rotate_left(8),
        42,
        0xffff_ff80,
    ];
    assert_eq!(serial_words(&g), expected, "\n{}", g.vcpu.dump_state());
}

fn string_copy_and_compare_with_rep(accel: &dyn Accelerator) {
    let code = assemble(|a| {
        a.mov(rsi, DATA)?;
        a.mov(rdi, DATA + 0x100)?;
        a.mov(ecx, 64u32)?;
        a.cld()?;
        a.rep().movsb()?;
        // Compare: the copies match up to a planted difference at byte 40.
        a.mov(byte_ptr(DATA + 0x100 + 40), 0u32)?;
        a.mov(rsi, DATA)?;
        a.mov(rdi, DATA + 0x100)?;
        a.mov(ecx, 64u32)?;
        a.repe().cmpsb()?;
        a.mov(eax, ecx)?;
        a.mov(edx, u32::from(SERIAL))?;
        a.out(dx, eax)?;
        // Fill with STOSD and scan for the value with REPNE SCASD.
        a.mov(rdi, DATA + 0x200)?;
        a.mov(eax, 0xabcd_0123u32)?;
        a.mov(ecx, 16u32)?;
        a.rep().stosd()?;
        a.mov(dword_ptr(DATA + 0x200 + 4 * 9), 0x77u32)?;
        a.mov(rdi, DATA + 0x200)?;
        a.mov(eax, 0x77u32)?;
        a.mov(ecx, 16u32)?;
        a.repne().scasd()?;
        a.mov(eax, ecx)?;
        a.mov(edx, u32::from(SERIAL))?;
        a.out(dx, eax)
    });
    let mut g = boot(accel, 1, &code);
    let pattern: Vec<u8> = (1..=64).collect();
    g.memory.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    run_to_done(&mut g);
    // REPE stops after the mismatch at index 40: 64 - 41 left.
    assert_eq!(serial_words(&g), vec![23, 6]);
    let mut copy = [0u8; 64];
    g.memory.read_slice(&mut copy, GuestAddress(DATA + 0x100)).unwrap();
    assert_eq!(&copy[..40], &pattern[..40]);
}

fn self_modifying_code_is_retranslated(accel: &dyn Accelerator) {
    let code = assemble(|a| {
        let mut patch = a.create_label();
        a.mov(edx, u32::from(SERIAL))?;
        a.mov(ecx, 3u32)?;
        a.set_label(&mut patch)?;
        a.mov(eax, 0x1111_1111u32)?;
        a.out(dx, eax)?;
        // Bump the immediate of the MOV above (in the block now running).
        a.lea(rbx, ptr(patch))?;
        a.add(dword_ptr(rbx + 1), 1)?;
        a.dec(ecx)?;
        a.jnz(patch)?;
        a.nop()
    });
    let mut g = boot(accel, 1, &code);
    run_to_done(&mut g);
    assert_eq!(serial_words(&g), vec![0x1111_1111, 0x1111_1112, 0x1111_1113]);
}

fn page_fault_is_handled_by_the_guest_idt(accel: &dyn Accelerator) {
    const IDT: u64 = 0x3000;
    const HANDLER: u64 = 0x10_8000;
    const UNMAPPED: u64 = 0x1_0000_0000; // above the harness's 4 GiB map
    let code = assemble(|a| {
        a.mov(rax, UNMAPPED + 0x18)?;
        a.mov(ebx, dword_ptr(rax))?; // 2 bytes: 8b 18
        a.mov(edx, u32::from(SERIAL))?;
        a.mov(eax, 0x600du32)?;
        a.out(dx, eax)
    });
    // #PF handler: report CR2 and the error code, skip the 2-byte load.
    let mut h = CodeAssembler::new(64).unwrap();
    h.mov(edx, u32::from(SERIAL)).unwrap();
    h.mov(rax, cr2).unwrap();
    h.out(dx, eax).unwrap();
    h.shr(rax, 32).unwrap();
    h.out(dx, eax).unwrap();
    h.pop(rax).unwrap();
    h.out(dx, eax).unwrap();
    h.add(qword_ptr(rsp), 2).unwrap();
    h.iretq().unwrap();
    let handler = h.assemble(HANDLER).unwrap();
    let mut g = boot(accel, 1, &code);
    g.memory.write_slice(&handler, GuestAddress(HANDLER)).unwrap();
    let gate_lo = (HANDLER & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | (((HANDLER >> 16) & 0xffff) << 48);
    write_u64(&g.memory, IDT + 14 * 16, gate_lo);
    write_u64(&g.memory, IDT + 14 * 16 + 8, HANDLER >> 32);
    let mut state = long_mode_state();
    state.idt = DescriptorTable { base: IDT, limit: 16 * 32 - 1 };
    g.vcpu.set_cpu_state(&state).unwrap();
    run_to_done(&mut g);
    // CR2 = the address, error code 0 (not present, read, supervisor).
    assert_eq!(serial_words(&g), vec![(UNMAPPED + 0x18) as u32, 1, 0, 0x600d]);
}
