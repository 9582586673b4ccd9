//! The KVM engine against tiny 64-bit guests assembled with iced-x86.
//!
//! Each guest starts in long mode (flat GDT, 4 GiB identity map with 2 MiB
//! pages, no IDT: any exception triple-faults) and signals "done" by writing
//! to `DONE_PORT`, on which the recording `VmOps` kicks the vCPU out of
//! `run`. Every test prints `SKIP:` and passes when /dev/kvm can't be opened.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use accel::kvm::{Kvm, KvmError};
use accel::{
    Accelerator, CpuState, DescriptorTable, IoEventAddress, Segment, Vcpu, VcpuExit, VcpuKicker,
    Vm, VmConfig, VmOps,
};
use iced_x86::code_asm::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const GDT: u64 = 0x500;
const STACK_TOP: u64 = 0x8000;
const PML4: u64 = 0x9000;
const PDPT: u64 = 0xa000;
/// Four page directories at 0xb000..0xf000 map 0..4 GiB.
const PD: u64 = 0xb000;
const CODE: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const MEM_SIZE: usize = 16 << 20;

const SERIAL: u16 = 0x3f8;
/// Reads return 0x5a, 0x5b, … for the bytes of the access.
const PATTERN_PORT: u16 = 0x60;
/// Each read returns the next value of a counter (1, 2, 3…).
const COUNTER_PORT: u16 = 0x62;
const DONE_PORT: u16 = 0xf4;
/// A write here triggers the recorder's `irq` line.
const IRQ_PORT: u16 = 0xf5;
const MMIO: u64 = 0xd000_0000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    PioWrite(u16, Vec<u8>),
    PioRead(u16, usize),
    MmioWrite(u64, Vec<u8>),
    MmioRead(u64, usize),
}

/// Records every access; kicks the vCPU on a write to `DONE_PORT`.
#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<Access>>,
    counter: AtomicU8,
    kicker: OnceLock<Arc<dyn VcpuKicker>>,
    irq: OnceLock<Arc<dyn accel::IrqLine>>,
}

impl Recorder {
    fn push(&self, a: Access) {
        self.log.lock().unwrap().push(a);
    }
    fn log(&self) -> Vec<Access> {
        self.log.lock().unwrap().clone()
    }
    fn pio_writes(&self, port: u16) -> Vec<Vec<u8>> {
        self.log()
            .into_iter()
            .filter_map(|a| match a {
                Access::PioWrite(p, d) if p == port => Some(d),
                _ => None,
            })
            .collect()
    }
}

impl VmOps for Recorder {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.push(Access::PioRead(port, data.len()));
        for (i, b) in data.iter_mut().enumerate() {
            *b = match port {
                PATTERN_PORT => 0x5a + i as u8,
                COUNTER_PORT => self.counter.fetch_add(1, Ordering::SeqCst) + 1,
                _ => 0xff,
            };
        }
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        if port == DONE_PORT {
            if let Some(k) = self.kicker.get() {
                k.kick();
            }
            return;
        }
        if port == IRQ_PORT {
            if let Some(line) = self.irq.get() {
                line.trigger().unwrap();
            }
        }
        self.push(Access::PioWrite(port, data.to_vec()));
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.push(Access::MmioRead(addr, data.len()));
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0xa0 + i as u8;
        }
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.push(Access::MmioWrite(addr, data.to_vec()));
    }
}

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

struct Guest {
    memory: GuestMemoryMmap,
    vm: Arc<dyn Vm>,
    vcpu: Box<dyn Vcpu>,
    ops: Arc<Recorder>,
}

fn write_u64(mem: &GuestMemoryMmap, addr: u64, value: u64) {
    mem.write_obj(value, GuestAddress(addr)).unwrap();
}

fn guest_memory(code: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let gdt = [
        0,
        0x00af_9b00_0000_ffff, // 0x08: 64-bit code
        0x00cf_9300_0000_ffff, // 0x10: data
        0x0000_8b00_0000_0067, // 0x18: busy 64-bit TSS (low half)
        0,                     //       (high half)
    ];
    for (i, e) in gdt.iter().enumerate() {
        write_u64(&mem, GDT + 8 * i as u64, *e);
    }
    write_u64(&mem, PML4, PDPT | 3);
    for i in 0..4 {
        write_u64(&mem, PDPT + 8 * i, (PD + 0x1000 * i) | 3);
        for j in 0..512 {
            // Present, writable, 2 MiB page.
            write_u64(&mem, PD + 0x1000 * i + 8 * j, (i << 30) | (j << 21) | 0x83);
        }
    }
    mem.write_slice(code, GuestAddress(CODE)).unwrap();
    mem
}

fn long_mode_state() -> CpuState {
    let data = Segment::from_gdt_entry(0x10, 0x00cf_9300_0000_ffff);
    let mut gprs = [0; 16];
    gprs[accel::cpu_state::gpr::RSP] = STACK_TOP;
    CpuState {
        gprs,
        rip: CODE,
        rflags: 0x2,
        cs: Segment::from_gdt_entry(0x08, 0x00af_9b00_0000_ffff),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: Segment::from_gdt_entry(0x18, 0x0000_8b00_0000_0067),
        ldt: Segment::default(),
        gdt: DescriptorTable {
            base: GDT,
            limit: 5 * 8 - 1,
        },
        // No IDT: any exception escalates to a triple fault.
        idt: DescriptorTable { base: 0, limit: 0 },
        cr0: 0x8000_0031, // PG | NE | ET | PE
        cr3: PML4,
        cr4: 0x20,   // PAE
        efer: 0x500, // LMA | LME
    }
}

/// Assembles `body`, followed by "out DONE_PORT, al; jmp $".
fn assemble(body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    body(&mut a).unwrap();
    a.out(u32::from(DONE_PORT), al).unwrap();
    spin(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

fn spin(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut here = a.create_label();
    a.set_label(&mut here)?;
    a.jmp(here)
}

fn boot(kvm: &Kvm, vcpus: u8, code: &[u8]) -> Guest {
    let memory = guest_memory(code);
    let vm = kvm.create_vm(&memory, &VmConfig { vcpus }).unwrap();
    let ops = Arc::new(Recorder::default());
    let mut vcpu = vm.create_vcpu(0, ops.clone()).unwrap();
    vcpu.set_cpu_state(&long_mode_state()).unwrap();
    let _ = ops.kicker.set(vcpu.kicker());
    Guest {
        memory,
        vm,
        vcpu,
        ops,
    }
}

/// Runs until `run` returns, failing the test if that takes over 30 s.
fn run(vcpu: &mut dyn Vcpu) -> VcpuExit {
    let kicker = vcpu.kicker();
    let (done, wait) = mpsc::channel::<()>();
    let fired = Arc::new(AtomicBool::new(false));
    let fired2 = fired.clone();
    let dog = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(Duration::from_secs(30)) {
            fired2.store(true, Ordering::SeqCst);
            kicker.kick();
        }
    });
    let exit = vcpu.run().unwrap();
    drop(done);
    dog.join().unwrap();
    assert!(
        !fired.load(Ordering::SeqCst),
        "guest timed out:\n{}",
        vcpu.dump_state()
    );
    exit
}

/// Runs the guest to its "done" write.
fn run_to_done(g: &mut Guest) {
    let exit = run(g.vcpu.as_mut());
    assert_eq!(exit, VcpuExit::Kicked, "\n{}", g.vcpu.dump_state());
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
    assert_eq!(
        g.ops.pio_writes(SERIAL),
        vec![vec![0x5a], vec![0x5a, 0x5b, 0x5c, 0x5d]]
    );
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
    assert_eq!(
        g.ops.pio_writes(SERIAL),
        vec![vec![b'x'], vec![b'y'], vec![b'z']]
    );
    let reads = g
        .ops
        .log()
        .into_iter()
        .filter(|a| *a == Access::PioRead(COUNTER_PORT, 2))
        .count();
    assert_eq!(reads, 3, "one 2-byte read per element: {:?}", g.ops.log());
    let mut buf = [0u8; 6];
    g.memory
        .read_slice(&mut buf, GuestAddress(DATA + 16))
        .unwrap();
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
    assert_eq!(
        g.ops.pio_writes(SERIAL).len(),
        1,
        "the guest ran once up to its loop"
    );
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
    assert!(
        g.ops.log().is_empty(),
        "HLT with IF=0 must not fall through"
    );
}

#[test]
fn cpu_state_round_trips() {
    let Some(kvm) = kvm_or_skip() else { return };
    let g = boot(&kvm, 1, &[0xf4]);
    assert_eq!(g.vcpu.cpu_state().unwrap(), long_mode_state());
    let dump = g.vcpu.dump_state();
    assert!(
        dump.contains("RIP=0x0000000000100000") && dump.contains("EFER=0x500"),
        "{dump}"
    );
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
    let words: Vec<u32> = g
        .ops
        .pio_writes(SERIAL)
        .iter()
        .map(|d| u32::from_le_bytes(d[..4].try_into().unwrap()))
        .collect();
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
    g.vm.register_ioevent(&event, IoEventAddress::Pio(u64::from(NOTIFY_PORT)), Some(7))
        .unwrap();
    let mmio_event = EventFd::new(EFD_NONBLOCK).unwrap();
    g.vm.register_ioevent(&mmio_event, IoEventAddress::Mmio(MMIO + 0x50), None)
        .unwrap();
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
    assert!(
        vm.create_vcpu(2, ops.clone()).is_err(),
        "only 2 vCPUs configured"
    );
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
    assert_eq!(
        ap.cpu_state().unwrap().rip,
        before.rip,
        "a parked AP runs nothing"
    );
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
    let too_many = VmConfig {
        vcpus: kvm.max_vcpus().saturating_add(1),
    };
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
    g.memory
        .write_slice(&handler, GuestAddress(HANDLER))
        .unwrap();
    // 64-bit interrupt gate: selector 0x08, present, DPL 0, type 0xe.
    let gate_lo =
        (HANDLER & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | (((HANDLER >> 16) & 0xffff) << 48);
    write_u64(&g.memory, IDT + VECTOR * 16, gate_lo);
    write_u64(&g.memory, IDT + VECTOR * 16 + 8, HANDLER >> 32);
    let mut state = long_mode_state();
    state.idt = DescriptorTable {
        base: IDT,
        limit: (VECTOR * 16 + 15) as u16,
    };
    g.vcpu.set_cpu_state(&state).unwrap();
    let _ = g.ops.irq.set(g.vm.irq_line(GSI).unwrap());
    run_to_done(&mut g);
    assert_eq!(
        g.ops.pio_writes(SERIAL),
        vec![vec![b'I']],
        "{:?}",
        g.ops.log()
    );
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
