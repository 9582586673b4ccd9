//! What only the KVM engine does, against the tiny guests of `harness`
//! (CPUID normalisation, IA32_ARCH_CAPABILITIES, IRQs through the in-kernel
//! IOAPIC, the host probe). The cases both engines share are in engines.rs.
//! Every test prints `SKIP:` and passes when /dev/kvm can't be opened.

mod harness;

use accel::{Accelerator, DescriptorTable, VmConfig};
use harness::*;
use iced_x86::code_asm::*;
use vm_memory::{Bytes, GuestAddress};

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
    let words = serial_words(&g);
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
