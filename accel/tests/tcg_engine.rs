//! The TCG engine against the tiny guests of `harness` (the same guests the
//! KVM engine runs in kvm_engine.rs), plus guests that exercise the
//! translator: integer work, self-modifying code, guest-handled page faults.

mod harness;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use accel::tcg::Tcg;
use accel::{Accelerator, DescriptorTable, IoEventAddress, VcpuExit, VmConfig};
use harness::*;
use iced_x86::code_asm::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[test]
fn out_reaches_pio_write_with_port_size_and_data() {
    let tcg = Tcg;
    let code = assemble(|a| {
        a.mov(dx, u32::from(SERIAL))?;
        a.mov(al, u32::from(b'A'))?;
        a.out(dx, al)?;
        a.mov(ax, 0x1234u32)?;
        a.out(dx, ax)?;
        a.mov(eax, 0xdead_beefu32)?;
        a.out(dx, eax)
    });
    let mut g = boot(&tcg, 1, &code);
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
    let tcg = Tcg;
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
    let mut g = boot(&tcg, 1, &code);
    run_to_done(&mut g);
    assert_eq!(g.ops.pio_writes(SERIAL), vec![vec![0x5a], vec![0x5a, 0x5b, 0x5c, 0x5d]]);
    assert!(g.ops.log().contains(&Access::PioRead(PATTERN_PORT, 4)));
}

#[test]
fn string_io_calls_the_ops_once_per_element() {
    let tcg = Tcg;
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
    let mut g = boot(&tcg, 1, &code);
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
    let tcg = Tcg;
    let code = assemble(|a| {
        a.mov(eax, MMIO as u32)?;
        a.mov(dword_ptr(rax), 0x1122_3344u32)?;
        a.mov(ebx, dword_ptr(rax + 4))?;
        a.mov(eax, ebx)?;
        a.mov(dx, u32::from(SERIAL))?;
        a.out(dx, eax)
    });
    let mut g = boot(&tcg, 1, &code);
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
    let tcg = Tcg;
    let mut a = CodeAssembler::new(64).unwrap();
    a.ud2().unwrap();
    let mut g = boot(&tcg, 1, &a.assemble(CODE).unwrap());
    assert_eq!(run(g.vcpu.as_mut()), VcpuExit::Shutdown);
}

#[test]
fn kick_from_another_thread_stops_a_spinning_guest() {
    let tcg = Tcg;
    let mut a = CodeAssembler::new(64).unwrap();
    a.mov(dx, u32::from(SERIAL)).unwrap();
    a.out(dx, al).unwrap();
    spin(&mut a).unwrap();
    let mut g = boot(&tcg, 1, &a.assemble(CODE).unwrap());

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
    let tcg = Tcg;
    let mut a = CodeAssembler::new(64).unwrap();
    a.cli().unwrap();
    a.hlt().unwrap();
    a.mov(dx, u32::from(SERIAL)).unwrap();
    a.out(dx, al).unwrap();
    spin(&mut a).unwrap();
    let mut g = boot(&tcg, 1, &a.assemble(CODE).unwrap());
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
    let tcg = Tcg;
    let g = boot(&tcg, 1, &[0xf4]);
    assert_eq!(g.vcpu.cpu_state().unwrap(), long_mode_state());
    let dump = g.vcpu.dump_state();
    assert!(dump.contains("RIP=0x0000000000100000") && dump.contains("EFER=0x500"), "{dump}");
}

#[test]
fn ioeventfd_and_irqfd_registration() {
    let tcg = Tcg;
    const NOTIFY_PORT: u16 = 0x510;
    let code = assemble(|a| {
        a.mov(dx, u32::from(NOTIFY_PORT))?;
        a.mov(eax, 7u32)?;
        a.out(dx, eax)?; // matches: signals the eventfd, no exit
        a.mov(eax, 8u32)?;
        a.out(dx, eax) // no match: reaches the ops
    });
    let mut g = boot(&tcg, 1, &code);
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
    let tcg = Tcg;
    let memory = guest_memory(&[0xf4]);
    let vm = tcg.create_vm(&memory, &VmConfig { vcpus: 2 }).unwrap();
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
fn kicks_are_never_lost() {
    let tcg = Tcg;
    let mut a = CodeAssembler::new(64).unwrap();
    spin(&mut a).unwrap();
    let mut g = boot(&tcg, 1, &a.assemble(CODE).unwrap());
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

/// The 32-bit words the guest wrote to the serial port with `out dx, eax`.
fn serial_words(g: &Guest) -> Vec<u32> {
    g.ops.pio_writes(SERIAL).iter().map(|d| u32::from_le_bytes(d[..4].try_into().unwrap())).collect()
}

/// `out dx, eax` of RAX's low then high half (clobbers RAX).
fn out64(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.out(dx, eax)?;
    a.shr(rax, 32)?;
    a.out(dx, eax)
}

#[test]
fn integer_loops_compute_known_values() {
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
    let mut g = boot(&Tcg, 1, &code);
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

#[test]
fn string_copy_and_compare_with_rep() {
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
    let mut g = boot(&Tcg, 1, &code);
    let pattern: Vec<u8> = (1..=64).collect();
    g.memory.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    run_to_done(&mut g);
    // REPE stops after the mismatch at index 40: 64 - 41 left.
    assert_eq!(serial_words(&g), vec![23, 6]);
    let mut copy = [0u8; 64];
    g.memory.read_slice(&mut copy, GuestAddress(DATA + 0x100)).unwrap();
    assert_eq!(&copy[..40], &pattern[..40]);
}

#[test]
fn self_modifying_code_is_retranslated() {
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
    let mut g = boot(&Tcg, 1, &code);
    run_to_done(&mut g);
    assert_eq!(serial_words(&g), vec![0x1111_1111, 0x1111_1112, 0x1111_1113]);
}

#[test]
fn page_fault_is_handled_by_the_guest_idt() {
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
    let mut g = boot(&Tcg, 1, &code);
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

#[test]
fn undecodable_and_unimplemented_instructions_raise_ud() {
    // With no IDT the #UD escalates to a triple fault: no panic anywhere.
    for bytes in [&[0x0f, 0x0b][..], &[0x0f, 0xff, 0xff][..], &[0x0f, 0x37][..]] {
        let mut g = boot(&Tcg, 1, bytes);
        assert_eq!(run(g.vcpu.as_mut()), VcpuExit::Shutdown, "{bytes:x?}");
        assert_eq!(g.vcpu.cpu_state().unwrap().rip, CODE);
    }
}

#[test]
fn sse2_dot_product_strlen_and_memcpy() {
    const A: u64 = DATA;
    const B: u64 = DATA + 0x40;
    const TEXT: u64 = DATA + 0x103; // unaligned on purpose
    const COPY: u64 = DATA + 0x200;
    let text = b"The quick brown fox jumps over the lazy dog, twice over: SSE2 strlen!";
    let code = assemble(|a| {
        // CR4.OSFXSR | OSXMMEXCPT: SSE enabled by the "OS".
        a.mov(rax, cr4)?;
        a.or(eax, 0x600)?;
        a.mov(cr4, rax)?;
        a.mov(edx, u32::from(SERIAL))?;
        // Dot product of two 16-float vectors, four lanes at a time.
        let mut dot = a.create_label();
        a.xorps(xmm0, xmm0)?;
        a.xor(ecx, ecx)?;
        a.set_label(&mut dot)?;
        a.movaps(xmm1, xmmword_ptr(rcx + A as i32))?;
        a.mulps(xmm1, xmmword_ptr(rcx + B as i32))?;
        a.addps(xmm0, xmm1)?;
        a.add(ecx, 16)?;
        a.cmp(ecx, 64)?;
        a.jne(dot)?;
        a.movhlps(xmm1, xmm0)?;
        a.addps(xmm0, xmm1)?;
        a.movaps(xmm1, xmm0)?;
        a.shufps(xmm1, xmm1, 0x55)?;
        a.addss(xmm0, xmm1)?;
        a.movd(eax, xmm0)?;
        a.out(dx, eax)?;
        // strlen with PCMPEQB + PMOVMSKB + BSF.
        let (mut scan, mut found) = (a.create_label(), a.create_label());
        a.mov(rdi, TEXT)?;
        a.pxor(xmm2, xmm2)?;
        a.set_label(&mut scan)?;
        a.movdqu(xmm3, xmmword_ptr(rdi))?;
        a.pcmpeqb(xmm3, xmm2)?;
        a.pmovmskb(eax, xmm3)?;
        a.test(eax, eax)?;
        a.jnz(found)?;
        a.add(rdi, 16)?;
        a.jmp(scan)?;
        a.set_label(&mut found)?;
        a.bsf(eax, eax)?;
        a.add(rax, rdi)?;
        a.mov(rsi, TEXT)?;
        a.sub(rax, rsi)?;
        a.out(dx, eax)?;
        // memcpy of the string (rounded up to 16-byte chunks).
        let mut copy = a.create_label();
        a.mov(rcx, rax)?;
        a.add(rcx, 15)?;
        a.shr(rcx, 4)?;
        a.mov(rdi, COPY)?;
        a.set_label(&mut copy)?;
        a.movdqu(xmm4, xmmword_ptr(rsi))?;
        a.movdqa(xmmword_ptr(rdi), xmm4)?;
        a.add(rsi, 16)?;
        a.add(rdi, 16)?;
        a.dec(rcx)?;
        a.jnz(copy)?;
        // Doubles and conversions: round(sqrt(2) * 1e6), and UCOMISD flags.
        a.mov(eax, 2u32)?;
        a.cvtsi2sd(xmm5, eax)?;
        a.sqrtsd(xmm5, xmm5)?;
        a.mov(eax, 1_000_000u32)?;
        a.cvtsi2sd(xmm6, eax)?;
        a.mulsd(xmm5, xmm6)?;
        a.cvtsd2si(eax, xmm5)?;
        a.out(dx, eax)?;
        a.ucomisd(xmm5, xmm6)?;
        a.seta(al)?;
        a.movzx(eax, al)?;
        a.out(dx, eax)
    });
    let mut g = boot(&Tcg, 1, &code);
    let a: Vec<f32> = (0..16).map(|i| i as f32 * 0.75 + 0.1).collect();
    let b: Vec<f32> = (0..16).map(|i| 1.0 / (i as f32 + 3.0)).collect();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    g.memory.write_slice(&bytes(&a), GuestAddress(A)).unwrap();
    g.memory.write_slice(&bytes(&b), GuestAddress(B)).unwrap();
    g.memory.write_slice(text, GuestAddress(TEXT)).unwrap();
    run_to_done(&mut g);
    // The same operation order in f32: per-lane sums, then the horizontal add.
    let mut acc = [0f32; 4];
    for i in 0..16 {
        acc[i % 4] += a[i] * b[i];
    }
    let dot = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    let root = (2f64.sqrt() * 1e6).round() as u32;
    assert_eq!(serial_words(&g), vec![dot.to_bits(), text.len() as u32, root, 1], "\n{}", g.vcpu.dump_state());
    let mut copy = vec![0u8; text.len() + 1];
    g.memory.read_slice(&mut copy, GuestAddress(COPY)).unwrap();
    assert_eq!(&copy[..text.len()], text);
    assert_eq!(copy[text.len()], 0);
}

#[test]
fn x87_arithmetic_lazy_fpu_trap_and_fxsave_in_a_guest() {
    const IDT: u64 = 0x3000;
    const HANDLER: u64 = 0x10_8000;
    let code = assemble(|a| {
        a.mov(edx, u32::from(SERIAL))?;
        // CR4.OSFXSR | OSXMMEXCPT, then CR0.TS: the first FPU instruction
        // traps (#NM) and the handler does CLTS, as lazy FPU switching does.
        a.mov(rax, cr4)?;
        a.or(eax, 0x600u32)?;
        a.mov(cr4, rax)?;
        a.mov(rax, cr0)?;
        a.or(eax, 8u32)?;
        a.mov(cr0, rax)?;
        a.fninit()?;
        // sqrt(3 * (pi + 1)), stored as a double and rounded to an integer.
        a.fld1()?;
        a.fldpi()?;
        a.faddp(st1, st0)?;
        a.fild(dword_ptr(DATA))?;
        a.fmulp(st1, st0)?;
        a.fsqrt()?;
        a.fst(qword_ptr(DATA + 8))?;
        a.fld1()?;
        a.fcomip(st0, st1)?; // 1 < x: CF set
        a.setb(al)?;
        a.movzx(eax, al)?;
        a.out(dx, eax)?;
        a.fistp(dword_ptr(DATA + 16))?;
        a.fnstsw(ax)?; // stack empty again
        a.movzx(eax, ax)?;
        a.out(dx, eax)?;
        a.fnstcw(word_ptr(DATA + 20))?;
        a.ldmxcsr(dword_ptr(DATA + 24))?;
        a.stmxcsr(dword_ptr(DATA + 28))?;
        a.fldln2()?;
        a.fxsave64(ptr(DATA + 0x100))?;
        a.mov(eax, 0x600du32)?;
        a.out(dx, eax)
    });
    let mut h = CodeAssembler::new(64).unwrap();
    h.mov(eax, 0x4e4du32).unwrap();
    h.out(dx, eax).unwrap();
    h.clts().unwrap();
    h.iretq().unwrap();
    let handler = h.assemble(HANDLER).unwrap();
    let mut g = boot(&Tcg, 1, &code);
    g.memory.write_slice(&handler, GuestAddress(HANDLER)).unwrap();
    let gate_lo = (HANDLER & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | (((HANDLER >> 16) & 0xffff) << 48);
    write_u64(&g.memory, IDT + 7 * 16, gate_lo);
    write_u64(&g.memory, IDT + 7 * 16 + 8, HANDLER >> 32);
    g.memory.write_slice(&3u32.to_le_bytes(), GuestAddress(DATA)).unwrap();
    g.memory.write_slice(&0x7f80u32.to_le_bytes(), GuestAddress(DATA + 24)).unwrap();
    let mut state = long_mode_state();
    state.idt = DescriptorTable { base: IDT, limit: 16 * 32 - 1 };
    g.vcpu.set_cpu_state(&state).unwrap();
    run_to_done(&mut g);
    // One #NM, CF from FCOMIP, FSW = PE and C1 (FISTP rounded 3.52 up)
    // with TOP 0, done.
    assert_eq!(serial_words(&g), vec![0x4e4d, 1, 0x220, 0x600d]);
    let mut buf = [0u8; 32];
    g.memory.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    let x = f64::from_le_bytes(buf[8..16].try_into().unwrap());
    let want = (3.0 * (std::f64::consts::PI + 1.0)).sqrt();
    assert!((x - want).abs() < 1e-15, "{x} vs {want}");
    assert_eq!(u32::from_le_bytes(buf[16..20].try_into().unwrap()), 4);
    assert_eq!(u16::from_le_bytes(buf[20..22].try_into().unwrap()), 0x037f);
    assert_eq!(u32::from_le_bytes(buf[28..32].try_into().unwrap()), 0x7f80);
    // The FXSAVE image: FCW, FSW (TOP 7 after FLDLN2), one valid tag, MXCSR,
    // MXCSR_MASK and ST0 = ln 2.
    let mut img = [0u8; 512];
    g.memory.read_slice(&mut img, GuestAddress(DATA + 0x100)).unwrap();
    assert_eq!(u16::from_le_bytes([img[0], img[1]]), 0x037f);
    assert_eq!(u16::from_le_bytes([img[2], img[3]]) & 0x3800, 7 << 11);
    assert_eq!(img[4], 0x80);
    assert_eq!(u32::from_le_bytes(img[24..28].try_into().unwrap()), 0x7f80);
    assert_eq!(u32::from_le_bytes(img[28..32].try_into().unwrap()), 0xffbf);
    assert_eq!(&img[32..42], &[0xac, 0x79, 0xcf, 0xd1, 0xf7, 0x17, 0x72, 0xb1, 0xfe, 0x3f]);
}

#[test]
fn fxsave_fxrstor_and_fstp_m80_faults_leave_no_trace() {
    const IDT: u64 = 0x3000;
    const PF_HANDLER: u64 = 0x10_8000;
    const GP_HANDLER: u64 = 0x10_8100;
    const HOLE: u64 = 0x60_0000; // its 2 MiB page is made not-present
    let code = assemble(|a| {
        a.mov(edx, u32::from(SERIAL))?;
        a.fninit()?;
        a.fldpi()?;
        // r15 = the length of the faulting instruction (the handlers skip it).
        a.mov(rbx, HOLE - 0x100)?;
        a.mov(r15d, 4u32)?;
        a.fxsave64(ptr(rbx))?; // second page faults
        a.mov(rbx, HOLE - 8)?;
        a.mov(r15d, 2u32)?;
        a.fstp(tword_ptr(rbx))?; // bytes 8 and 9 fault
        a.mov(rbx, HOLE - 0xf8)?;
        a.mov(r15d, 4u32)?;
        a.fxsave64(ptr(rbx))?; // misaligned: #GP(0)
        a.mov(rbx, DATA + 0x200)?;
        a.fxrstor64(ptr(rbx))?; // reserved MXCSR bit: #GP(0)
        a.fnstsw(ax)?; // still one register pushed: TOP = 7
        a.movzx(eax, ax)?;
        a.out(dx, eax)?;
        a.mov(eax, 0x600du32)?;
        a.out(dx, eax)
    });
    let mut h = CodeAssembler::new(64).unwrap();
    h.mov(rax, cr2).unwrap();
    h.out(dx, eax).unwrap();
    h.pop(rax).unwrap();
    h.out(dx, eax).unwrap();
    h.add(qword_ptr(rsp), r15).unwrap();
    h.iretq().unwrap();
    let pf = h.assemble(PF_HANDLER).unwrap();
    let mut h = CodeAssembler::new(64).unwrap();
    h.mov(eax, 0xdu32).unwrap();
    h.out(dx, eax).unwrap();
    h.pop(rax).unwrap();
    h.out(dx, eax).unwrap();
    h.add(qword_ptr(rsp), r15).unwrap();
    h.iretq().unwrap();
    let gp = h.assemble(GP_HANDLER).unwrap();
    let mut g = boot(&Tcg, 1, &code);
    g.memory.write_slice(&pf, GuestAddress(PF_HANDLER)).unwrap();
    g.memory.write_slice(&gp, GuestAddress(GP_HANDLER)).unwrap();
    for (vector, handler) in [(14u64, PF_HANDLER), (13, GP_HANDLER)] {
        let gate_lo = (handler & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | (((handler >> 16) & 0xffff) << 48);
        write_u64(&g.memory, IDT + vector * 16, gate_lo);
        write_u64(&g.memory, IDT + vector * 16 + 8, handler >> 32);
    }
    write_u64(&g.memory, PD + 8 * (HOLE >> 21), 0);
    g.memory.write_slice(&[0xaa; 0x100], GuestAddress(HOLE - 0x100)).unwrap();
    let mut image = [0u8; 512];
    image[24..28].copy_from_slice(&0x1_1f80u32.to_le_bytes());
    g.memory.write_slice(&image, GuestAddress(DATA + 0x200)).unwrap();
    let mut state = long_mode_state();
    state.idt = DescriptorTable { base: IDT, limit: 16 * 32 - 1 };
    g.vcpu.set_cpu_state(&state).unwrap();
    run_to_done(&mut g);
    // Two write #PFs at the hole (not present, write), two #GP(0), TOP 7.
    let hole = HOLE as u32;
    assert_eq!(serial_words(&g), vec![hole, 2, hole, 2, 0xd, 0, 0xd, 0, 0x3800, 0x600d]);
    let mut below = [0u8; 0x100];
    g.memory.read_slice(&mut below, GuestAddress(HOLE - 0x100)).unwrap();
    assert!(below.iter().all(|&b| b == 0xaa), "nothing stored below the hole");
}
