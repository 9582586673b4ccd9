//! Engine-neutral guest harness: tiny 64-bit guests assembled with iced-x86.
//!
//! Each guest starts in long mode (flat GDT, 4 GiB identity map with 2 MiB
//! pages, no IDT: any exception triple-faults) and signals "done" by writing
//! to `DONE_PORT`, on which the recording `VmOps` kicks the vCPU out of
//! `run`. The guests are engine-neutral; `kvm_or_skip` opens KVM for the
//! tests that need it.
#![allow(dead_code)] // each test crate uses a different subset

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use accel::{Accelerator, CpuState, DescriptorTable, Segment, Vcpu, VcpuExit, VcpuKicker, Vm, VmConfig, VmOps};
use iced_x86::code_asm::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const GDT: u64 = 0x500;
pub const STACK_TOP: u64 = 0x8000;
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
/// Four page directories at 0xb000..0xf000 map 0..4 GiB.
pub const PD: u64 = 0xb000;
pub const CODE: u64 = 0x10_0000;
pub const DATA: u64 = 0x20_0000;
pub const MEM_SIZE: usize = 16 << 20;

pub const SERIAL: u16 = 0x3f8;
/// Reads return 0x5a, 0x5b, … for the bytes of the access.
pub const PATTERN_PORT: u16 = 0x60;
/// Each read returns the next value of a counter (1, 2, 3…).
pub const COUNTER_PORT: u16 = 0x62;
pub const DONE_PORT: u16 = 0xf4;
/// A write here triggers the recorder's `irq` line.
pub const IRQ_PORT: u16 = 0xf5;
pub const MMIO: u64 = 0xd000_0000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    PioWrite(u16, Vec<u8>),
    PioRead(u16, usize),
    MmioWrite(u64, Vec<u8>),
    MmioRead(u64, usize),
}

/// Records every access; kicks the vCPU on a write to `DONE_PORT`.
#[derive(Default)]
pub struct Recorder {
    log: Mutex<Vec<Access>>,
    counter: AtomicU8,
    pub kicker: OnceLock<Arc<dyn VcpuKicker>>,
    pub irq: OnceLock<Arc<dyn accel::IrqLine>>,
}

impl Recorder {
    pub fn push(&self, a: Access) {
        self.log.lock().unwrap().push(a);
    }
    pub fn log(&self) -> Vec<Access> {
        self.log.lock().unwrap().clone()
    }
    pub fn pio_writes(&self, port: u16) -> Vec<Vec<u8>> {
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

pub struct Guest {
    pub memory: GuestMemoryMmap,
    pub vm: Arc<dyn Vm>,
    pub vcpu: Box<dyn Vcpu>,
    pub ops: Arc<Recorder>,
}

pub fn write_u64(mem: &GuestMemoryMmap, addr: u64, value: u64) {
    mem.write_obj(value, GuestAddress(addr)).unwrap();
}

pub fn guest_memory(code: &[u8]) -> GuestMemoryMmap {
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

pub fn long_mode_state() -> CpuState {
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
        gdt: DescriptorTable { base: GDT, limit: 5 * 8 - 1 },
        // No IDT: any exception escalates to a triple fault.
        idt: DescriptorTable { base: 0, limit: 0 },
        cr0: 0x8000_0031, // PG | NE | ET | PE
        cr3: PML4,
        cr4: 0x20,   // PAE
        efer: 0x500, // LMA | LME
    }
}

/// Assembles `body`, followed by "out DONE_PORT, al; jmp $".
pub fn assemble(body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    body(&mut a).unwrap();
    a.out(u32::from(DONE_PORT), al).unwrap();
    spin(&mut a).unwrap();
    a.assemble(CODE).unwrap()
}

pub fn spin(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut here = a.create_label();
    a.set_label(&mut here)?;
    a.jmp(here)
}

pub fn boot(accel: &dyn Accelerator, vcpus: u8, code: &[u8]) -> Guest {
    let memory = guest_memory(code);
    let vm = accel.create_vm(&memory, &VmConfig { vcpus }).unwrap();
    let ops = Arc::new(Recorder::default());
    let mut vcpu = vm.create_vcpu(0, ops.clone()).unwrap();
    vcpu.set_cpu_state(&long_mode_state()).unwrap();
    let _ = ops.kicker.set(vcpu.kicker());
    Guest { memory, vm, vcpu, ops }
}

/// Runs until `run` returns, failing the test if that takes over 30 s.
pub fn run(vcpu: &mut dyn Vcpu) -> VcpuExit {
    let (exit, fired) = run_with_watchdog(vcpu, Duration::from_secs(30));
    let exit = exit.unwrap();
    assert!(!fired, "guest timed out:\n{}", vcpu.dump_state());
    exit
}

/// Runs until `run` returns; a watchdog kicks the vCPU out after `limit`.
/// Returns the exit and whether the watchdog fired.
pub fn run_with_watchdog(vcpu: &mut dyn Vcpu, limit: Duration) -> (accel::Result<VcpuExit>, bool) {
    let kicker = vcpu.kicker();
    let (done, wait) = mpsc::channel::<()>();
    let fired = Arc::new(AtomicBool::new(false));
    let fired2 = fired.clone();
    let dog = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
            fired2.store(true, Ordering::SeqCst);
            kicker.kick();
        }
    });
    let exit = vcpu.run();
    drop(done);
    dog.join().unwrap();
    (exit, fired.load(Ordering::SeqCst))
}

/// Runs the guest to its "done" write.
pub fn run_to_done(g: &mut Guest) {
    let exit = run(g.vcpu.as_mut());
    assert_eq!(exit, VcpuExit::Kicked, "\n{}", g.vcpu.dump_state());
}

/// Opens KVM, or says why the test is skipped (`None`).
pub fn kvm_or_skip() -> Option<accel::kvm::Kvm> {
    match accel::kvm::Kvm::new() {
        Ok(kvm) => Some(kvm),
        Err(accel::kvm::KvmError::Open(e)) => {
            println!("SKIP: /dev/kvm not available ({e})");
            None
        }
        Err(e) => panic!("/dev/kvm opens but is unusable: {e}"),
    }
}

/// The 32-bit words the guest wrote to the serial port with `out dx, eax`.
pub fn serial_words(g: &Guest) -> Vec<u32> {
    g.ops.pio_writes(SERIAL).iter().map(|d| u32::from_le_bytes(d[..4].try_into().unwrap())).collect()
}

/// `out dx, eax` of RAX's low then high half (clobbers RAX).
pub fn out64(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.out(dx, eax)?;
    a.shr(rax, 32)?;
    a.out(dx, eax)
}
