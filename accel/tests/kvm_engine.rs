//! The KVM engine against the tiny guests of `harness`. Every test prints
//! `SKIP:` and passes when /dev/kvm can't be opened.

mod harness;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use accel::kvm::{Kvm, KvmError};
use accel::{Accelerator, DescriptorTable, IoEventAddress, VcpuExit, VmConfig};
use harness::*;
use iced_x86::code_asm::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Opens KVM, or says why the test is skipped.
fn kvm_or_skip() -> Option<Kvm> {
    match Kvm::new() {
        Ok(kvm) => Some(kvm),
        Err(KvmError::Open(e)) => {
            println!("SKIP: /dev/kvm not available ({e})");
            None
        }
        Err(e) => panic!("/dev/kvm opens but is unusable: {e}"),
    }
}

#[test]
fn out_reaches_pio_write_with_port_size_and_data() {
    let Some(kvm) = kvm_or_skip() else { return };
    let code = assemble(|a| {
        a.mov(dx, u32::from(SERIAL))?;
        a.mov(al, u32::from(b'A'))?;
        a.out(dx, al)?;
        a.mov(ax, 0x1234u32)?;
        a.out(dx, ax)?;
        a.mov(eax, 0xdead_beefu32)?;
        a.out(dx, eax)
    });
    let mut g = boot(&kvm, 1, &code);
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

#[test]
fn in_returns_the_value_vmops_gives() {
    let Some(kvm) = kvm_or_skip() else { return };
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
    let mut g = boot(&kvm, 1, &code);
    run_to_done(&mut g);
    assert_eq!(g.ops.pio_writes(SERIAL), vec![vec![0x5a], vec![0x5a, 0x5b, 0x5c, 0x5d]]);
    assert!(g.ops.log().contains(&Access::PioRead(PATTERN_PORT, 4)));
}

#[test]
fn string_io_calls_the_ops_once_per_element() {
    let Some(kvm) = kvm_or_skip() else { return };
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
    let mut g = boot(&kvm, 1, &code);
    g.memory.write_slice(b"xyz", GuestAddress(DATA)).unwrap();
    run_to_done(&mut g);
    assert_eq!(g.ops.pio_writes(SERIAL), vec![vec![b'x'], vec![b'y'], vec![b'z']]);
    let reads = g.ops.log().into_iter().filter(|a| *a == Access::PioRead(COUNTER_PORT, 2)).count();
    assert_eq!(reads, 3, "one 2-byte read per element: {:?}", g.ops.log());
    let mut buf = [0u8; 6];
    g.memory.read_slice(&mut buf, GuestAddress(DATA + 16)).unwrap();
    assert_eq!(buf, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn mmio_outside_ram_reaches_the_ops() {
    let Some(kvm) = kvm_or_skip() else { return };
    let code = assemble(|a| {
        a.mov(eax, MMIO as u32)?;
        a.mov(dword_ptr(rax), 0x1122_3344u32)?;
        a.mov(ebx, dword_ptr(rax + 4))?;
        a.mov(eax, ebx)?;
        a.mov(dx, u32::from(SERIAL))?;
        a.out(dx, eax)
    });
    let mut g = boot(&kvm, 1, &code);
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

#[test]
fn triple_fault_is_reported() {
    let Some(kvm) = kvm_or_skip() else { return };
    let mut a = CodeAssembler::new(64).unwrap();
    a.ud2().unwrap();
    let mut g = boot(&kvm, 1, &a.assemble(CODE).unwrap());
    let exit = run(g.vcpu.as_mut());
    println!("ud2 with an empty IDT gave {exit:?}");
    match exit {
        VcpuExit::Shutdown => {}
        // PVM may not model the triple fault; it must at least say so.
        VcpuExit::Crash(what) => assert!(what.contains("KVM_EXIT"), "{what}"),
        other => panic!("expected a shutdown, got {other:?}"),
    }
}

#[test]
fn kick_from_another_thread_stops_a_spinning_guest() {
    let Some(kvm) = kvm_or_skip() else { return };
    let mut a = CodeAssembler::new(64).unwrap();
    a.mov(dx, u32::from(SERIAL)).unwrap();
    a.out(dx, al).unwrap();
    spin(&mut a).unwrap();
    let mut g = boot(&kvm, 1, &a.assemble(CODE).unwrap());

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

#[test]
fn halted_vcpu_waits_in_the_kernel_until_kicked() {
    let Some(kvm) = kvm_or_skip() else { return };
    let mut a = CodeAssembler::new(64).unwrap();
    a.cli().unwrap();
    a.hlt().unwrap();
    a.mov(dx, u32::from(SERIAL)).unwrap();
    a.out(dx, al).unwrap();
    spin(&mut a).unwrap();
    let mut g = boot(&kvm, 1, &a.assemble(CODE).unwrap());
    let kicker = g.vcpu.kicker();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        kicker.kick();
    });
    assert_eq!(run(g.vcpu.as_mut()), VcpuExit::Kicked);
    t.join().unwrap();
    assert!(g.ops.log().is_empty(), "HLT with IF=0 must not fall through");
}

#[test]
fn cpu_state_round_trips() {
    let Some(kvm) = kvm_or_skip() else { return };
    let g = boot(&kvm, 1, &[0xf4]);
    assert_eq!(g.vcpu.cpu_state().unwrap(), long_mode_state());
    let dump = g.vcpu.dump_state();
    assert!(dump.contains("RIP=0x0000000000100000") && dump.contains("EFER=0x500"), "{dump}");
}

#[test]
fn guest_sees_normalised_cpuid_and_usable_arch_capabilities() {
    let Some(kvm) = kvm_or_skip() else { return };
    let code = assemble(|a| {
        // CPUID overwrites EDX, so the port is loaded after it.
        a.mov(eax, 1u32)?;
        a.cpuid()?;
        a.mov(dx, u32::from(SERIAL))?;
        a.mov(eax, ebx)?;
        a.out(dx, eax)?;
        a.mov(eax, ecx)?;
        a.out(dx, eax)?;
        a.mov(eax, 7u32)?;
        a.xor(ecx, ecx)?;
        a.cpuid()?;
        a.mov(eax, edx)?;
        a.mov(dx, u32::from(SERIAL))?;
        a.out(dx, eax)?;
        // Read IA32_ARCH_CAPABILITIES only if CPUID advertises it.
        let mut skip = a.create_label();
        a.bt(eax, 29)?;
        a.jae(skip)?;
        a.mov(ecx, 0x10au32)?;
        a.rdmsr()?;
        a.mov(dx, u32::from(SERIAL))?;
        a.out(dx, eax)?;
        a.set_label(&mut skip)?;
        a.nop()
    });
    let mut g = boot(&kvm, 1, &code);
    run_to_done(&mut g);
    let words: Vec<u32> =
        g.ops.pio_writes(SERIAL).iter().map(|d| u32::from_le_bytes(d[..4].try_into().unwrap())).collect();
    println!(
        "guest CPUID.1 EBX={:#x} ECX={:#x}, CPUID.7 EDX={:#x}, rest {:x?}",
        words[0],
        words[1],
        words[2],
        &words[3..]
    );
    assert_eq!(words[0] >> 24, 0, "BSP initial APIC ID");
    assert_eq!((words[0] >> 8) & 0xff, 8, "CLFLUSH size");
    assert_ne!(words[1] & (1 << 31), 0, "hypervisor bit");
    let advertised = words[2] & (1 << 29) != 0;
    // Reaching "done" means RDMSR didn't fault (no IDT: it would triple-fault).
    assert_eq!(words.len(), if advertised { 4 } else { 3 });
}

#[test]
fn ioeventfd_and_irqfd_registration() {
    let Some(kvm) = kvm_or_skip() else { return };
    const NOTIFY_PORT: u16 = 0x510;
    let code = assemble(|a| {
        a.mov(dx, u32::from(NOTIFY_PORT))?;
        a.mov(eax, 7u32)?;
        a.out(dx, eax)?; // matches: signals the eventfd, no exit
        a.mov(eax, 8u32)?;
        a.out(dx, eax) // no match: reaches the ops
    });
    let mut g = boot(&kvm, 1, &code);
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

#[test]
fn two_vcpus_and_the_ap_waits_for_sipi() {
    let Some(kvm) = kvm_or_skip() else { return };
    let memory = guest_memory(&[0xf4]);
    let vm = kvm.create_vm(&memory, &VmConfig { vcpus: 2 }).unwrap();
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

#[test]
fn probe_agrees_with_kvm_new() {
    let host = accel::kvm::probe();
    println!("probe: {}", host.describe());
    let Some(kvm) = kvm_or_skip() else {
        assert!(matches!(host, accel::kvm::KvmHost::Unavailable(_)));
        return;
    };
    assert!(!matches!(host, accel::kvm::KvmHost::Unavailable(_)));
    assert!(kvm.max_vcpus() >= 1);
    let memory = guest_memory(&[0xf4]);
    let too_many = VmConfig { vcpus: kvm.max_vcpus().saturating_add(1) };
    if kvm.max_vcpus() < u8::MAX {
        assert!(kvm.create_vm(&memory, &too_many).is_err());
    }
    assert!(kvm.create_vm(&memory, &VmConfig { vcpus: 0 }).is_err());
}

#[test]
fn irq_line_interrupts_the_guest_through_the_ioapic() {
    let Some(kvm) = kvm_or_skip() else { return };
    const GSI: u32 = 4;
    const VECTOR: u64 = 0x30;
    const IDT: u64 = 0x3000;
    const HANDLER: u64 = 0x10_8000;
    const IOAPIC: u32 = 0xfec0_0000;
    const LAPIC: u32 = 0xfee0_0000;
    let code = assemble(|a| {
        // Mask the 8259s so only the IOAPIC delivers GSI 4.
        a.mov(al, 0xffu32)?;
        a.out(0x21u32, al)?;
        a.out(0xa1u32, al)?;
        // Software-enable the LAPIC (spurious vector 0xff).
        a.mov(eax, LAPIC + 0xf0)?;
        a.mov(dword_ptr(rax), 0x1ffu32)?;
        // IOAPIC pin 4 -> vector 0x30 on APIC 0, edge, unmasked.
        a.mov(eax, IOAPIC)?;
        a.mov(dword_ptr(rax), 0x10 + 2 * GSI + 1)?;
        a.mov(dword_ptr(rax + 0x10), 0u32)?;
        a.mov(dword_ptr(rax), 0x10 + 2 * GSI)?;
        a.mov(dword_ptr(rax + 0x10), VECTOR as u32)?;
        a.mov(dx, u32::from(IRQ_PORT))?;
        a.out(dx, al)?;
        a.sti()?;
        a.hlt()?;
        // Only reached if the interrupt never came.
        a.mov(dx, u32::from(SERIAL))?;
        a.mov(al, u32::from(b'X'))?;
        a.out(dx, al)
    });
    let mut handler = CodeAssembler::new(64).unwrap();
    handler.mov(dx, u32::from(SERIAL)).unwrap();
    handler.mov(al, u32::from(b'I')).unwrap();
    handler.out(dx, al).unwrap();
    handler.mov(eax, LAPIC + 0xb0).unwrap();
    handler.mov(dword_ptr(rax), 0u32).unwrap();
    handler.out(u32::from(DONE_PORT), al).unwrap();
    spin(&mut handler).unwrap();
    let handler = handler.assemble(HANDLER).unwrap();

    let mut g = boot(&kvm, 1, &code);
    g.memory.write_slice(&handler, GuestAddress(HANDLER)).unwrap();
    // 64-bit interrupt gate: selector 0x08, present, DPL 0, type 0xe.
    let gate_lo = (HANDLER & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | (((HANDLER >> 16) & 0xffff) << 48);
    write_u64(&g.memory, IDT + VECTOR * 16, gate_lo);
    write_u64(&g.memory, IDT + VECTOR * 16 + 8, HANDLER >> 32);
    let mut state = long_mode_state();
    state.idt = DescriptorTable { base: IDT, limit: (VECTOR * 16 + 15) as u16 };
    g.vcpu.set_cpu_state(&state).unwrap();
    let _ = g.ops.irq.set(g.vm.irq_line(GSI).unwrap());
    run_to_done(&mut g);
    assert_eq!(g.ops.pio_writes(SERIAL), vec![vec![b'I']], "{:?}", g.ops.log());
}

#[test]
fn kicks_are_never_lost() {
    let Some(kvm) = kvm_or_skip() else { return };
    let mut a = CodeAssembler::new(64).unwrap();
    spin(&mut a).unwrap();
    let mut g = boot(&kvm, 1, &a.assemble(CODE).unwrap());
    // Kicks at varied delays land before, around and during KVM_RUN; each
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
