//! A bring-up guest that walks the whole x86 boot ladder on its own: it starts
//! in real mode at 0x7c00 and prints one serial line per stage —
//!
//! 1. `real`: real mode; installs IVT entry 0x40 and takes `int 0x40`, whose
//!    handler prints `ivt` and `iret`s;
//! 2. `prot32`: after `lgdt`, CR0.PE and a far jump to a 32-bit code segment;
//!    there it builds identity page tables (4 KiB pages over the first 2 MiB,
//!    with the page at `HOLE` left not present);
//! 3. `long64`: after CR4.PAE, CR3, EFER.LME (`wrmsr`), CR0.PG and a far jump
//!    to a 64-bit code segment; it fills a 64-bit IDT (#PF and `int 0x80`);
//! 4. `int80`: from the `int 0x80` gate's handler, which `iretq`s;
//! 5. `pf`: a store to `HOLE` faults; the handler records CR2 and the error
//!    code at `PF_SLOT`, maps the page, `iretq`s and the store is retried;
//! 6. `done`, then a write to `DONE_PORT` ends the run.
//!
//! KVM on this host's /dev/kvm is PVM, which runs guest CPL0 code by
//! emulation. Measured here: PVM does run stages 1–3 (real mode, the IVT
//! `int 0x40`/`iret`, `lgdt` + PE + far jump, the 32-bit table building,
//! PAE/LME/PG and the far jump to 64-bit code: serial `real`, `ivt`,
//! `prot32`, `long64`), then stops at the 64-bit `int 0x80` with
//! `KVM_EXIT_INTERNAL_ERROR` (instruction emulation failed). So the KVM arm
//! asserts the full output only if KVM gets through, and otherwise just
//! prints how far it got; it prints `SKIP: …` when /dev/kvm can't be opened.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use accel::{Accelerator, CpuState, DescriptorTable, Segment, VcpuExit, VmConfig};
use harness::{Recorder, DONE_PORT, SERIAL};
use iced_x86::code_asm::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 2 << 20;
const IVT_0X40: u64 = 0x40 * 4;
const GDT: u64 = 0x1000;
const GDTR: u64 = 0x1100;
const IDT: u64 = 0x3000;
const IDTR: u64 = 0x2ff0;
const PF_SLOT: u64 = 0x4000;
const STACK: u64 = 0x7000;
const REAL: u64 = 0x7c00;
const IVT_HANDLER: u64 = 0x7e00;
const PROT32: u64 = 0x9000;
const LONG64: u64 = 0xa000;
const INT80_HANDLER: u64 = 0xb000;
const PF_HANDLER: u64 = 0xb100;
/// PML4, PDPT, PD and PT, one page each.
const PML4: u64 = 0x10000;
const PT: u64 = PML4 + 0x3000;
/// The page left not present in the guest's page tables.
const HOLE: u64 = 0x1f_0000;
const HOLE_VALUE: u32 = 0x1234_5678;

const CODE32: u64 = 0x00cf_9b00_0000_ffff;
const DATA32: u64 = 0x00cf_9300_0000_ffff;
const CODE64: u64 = 0x00af_9b00_0000_ffff;

/// `mov al, b; out dx, al` for each byte of `line` and a newline.
fn print(a: &mut CodeAssembler, line: &str) -> Result<(), IcedError> {
    a.mov(dx, SERIAL as u32)?;
    for b in line.bytes().chain(*b"\n") {
        a.mov(al, u32::from(b))?;
        a.out(dx, al)?;
    }
    Ok(())
}

fn asm(bitness: u32, at: u64, body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> (u64, Vec<u8>) {
    let mut a = CodeAssembler::new(bitness).unwrap();
    body(&mut a).unwrap();
    (at, a.assemble(at).unwrap())
}

fn far_jmp(a: &mut CodeAssembler, selector: u16, offset: u32, wide: bool) -> Result<(), IcedError> {
    let mut bytes = vec![0xea];
    if wide {
        bytes.extend_from_slice(&offset.to_le_bytes());
    } else {
        bytes.extend_from_slice(&(offset as u16).to_le_bytes());
    }
    bytes.extend_from_slice(&selector.to_le_bytes());
    a.db(&bytes)
}

/// 64-bit interrupt gate for `vector` to `handler` (at a fixed address < 4 GiB).
fn set_gate(a: &mut CodeAssembler, vector: u64, handler: u64) -> Result<(), IcedError> {
    let entry = IDT + 16 * vector;
    a.mov(edi, entry as u32)?;
    a.mov(dword_ptr(rdi), (0x18 << 16) | (handler as u32 & 0xffff))?;
    a.mov(dword_ptr(rdi + 4), (handler as u32 & 0xffff_0000) | 0x8e00)?;
    a.mov(dword_ptr(rdi + 8), 0)?;
    a.mov(dword_ptr(rdi + 12), 0)
}

fn blobs() -> Vec<(u64, Vec<u8>)> {
    let real = asm(16, REAL, |a| {
        a.cli()?;
        print(a, "real")?;
        // IVT[0x40] = 0000:IVT_HANDLER.
        a.xor(bx, bx)?;
        a.mov(word_ptr(bx + IVT_0X40 as i32), IVT_HANDLER as u32)?;
        a.mov(word_ptr(bx + IVT_0X40 as i32 + 2), 0)?;
        a.int(0x40)?;
        // GDT: null, 0x08 32-bit code, 0x10 data, 0x18 64-bit code.
        for (i, e) in [0, CODE32, DATA32, CODE64].into_iter().enumerate() {
            let at = GDT as i32 + 8 * i as i32;
            a.mov(dword_ptr(bx + at), e as u32)?;
            a.mov(dword_ptr(bx + at + 4), (e >> 32) as u32)?;
        }
        a.mov(word_ptr(bx + GDTR as i32), 4 * 8 - 1)?;
        a.mov(dword_ptr(bx + GDTR as i32 + 2), GDT as u32)?;
        a.lgdt(ptr(bx + GDTR as i32))?;
        a.mov(eax, cr0)?;
        a.or(eax, 1)?;
        a.mov(cr0, eax)?;
        far_jmp(a, 0x08, PROT32 as u32, false)
    });
    let ivt = asm(16, IVT_HANDLER, |a| {
        print(a, "ivt")?;
        a.iret()
    });
    let prot32 = asm(32, PROT32, |a| {
        a.mov(ax, 0x10)?;
        for s in [ds, es, ss, fs, gs] {
            a.mov(s, ax)?;
        }
        a.mov(esp, STACK as u32)?;
        print(a, "prot32")?;
        // Clear the four table pages, then link PML4 -> PDPT -> PD -> PT.
        a.cld()?;
        a.mov(edi, PML4 as u32)?;
        a.mov(ecx, 4 * 1024)?;
        a.xor(eax, eax)?;
        a.rep().stosd()?;
        for level in 0..3 {
            let table = PML4 as u32 + 0x1000 * level;
            a.mov(dword_ptr(table), (table + 0x1000) | 3)?;
        }
        // PT[i] = i << 12 | present | writable, for the first 2 MiB.
        let mut fill = a.create_label();
        a.xor(ecx, ecx)?;
        a.set_label(&mut fill)?;
        a.mov(eax, ecx)?;
        a.shl(eax, 12)?;
        a.or(eax, 3)?;
        a.mov(dword_ptr(ecx * 8 + PT as i32), eax)?;
        a.inc(ecx)?;
        a.cmp(ecx, 512)?;
        a.jne(fill)?;
        a.mov(dword_ptr(PT as u32 + 8 * (HOLE as u32 >> 12)), 0)?;
        // PAE, CR3, EFER.LME, PG.
        a.mov(eax, cr4)?;
        a.or(eax, 0x20)?;
        a.mov(cr4, eax)?;
        a.mov(eax, PML4 as u32)?;
        a.mov(cr3, eax)?;
        a.mov(ecx, 0xc000_0080u32)?;
        a.rdmsr()?;
        a.or(eax, 0x100)?;
        a.wrmsr()?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32)?;
        a.mov(cr0, eax)?;
        far_jmp(a, 0x18, LONG64 as u32, true)
    });
    let long64 = asm(64, LONG64, |a| {
        print(a, "long64")?;
        set_gate(a, 14, PF_HANDLER)?;
        set_gate(a, 0x80, INT80_HANDLER)?;
        a.mov(edi, IDTR as u32)?;
        a.mov(word_ptr(rdi), 256 * 16 - 1)?;
        a.mov(qword_ptr(rdi + 2), IDT as i32)?;
        a.lidt(ptr(rdi))?;
        a.int(0x80)?;
        a.mov(edi, HOLE as u32)?;
        a.mov(dword_ptr(rdi), HOLE_VALUE)?;
        print(a, "done")?;
        a.out(u32::from(DONE_PORT), al)?;
        harness::spin(a)
    });
    let int80 = asm(64, INT80_HANDLER, |a| {
        print(a, "int80")?;
        a.iretq()
    });
    let pf = asm(64, PF_HANDLER, |a| {
        a.push(rax)?;
        a.push(rdi)?;
        a.mov(edi, PF_SLOT as u32)?;
        a.mov(rax, cr2)?;
        a.mov(qword_ptr(rdi), rax)?;
        a.mov(rax, qword_ptr(rsp + 16))?; // the error code
        a.mov(qword_ptr(rdi + 8), rax)?;
        print(a, "pf")?;
        // Map the page and retry the faulting store.
        a.mov(edi, PT as u32 + 8 * (HOLE as u32 >> 12))?;
        a.mov(dword_ptr(rdi), HOLE as u32 | 3)?;
        a.mov(edi, HOLE as u32)?;
        a.invlpg(ptr(rdi))?;
        a.pop(rdi)?;
        a.pop(rax)?;
        a.add(rsp, 8)?;
        a.iretq()
    });
    vec![real, ivt, prot32, long64, int80, pf]
}

fn real_mode_state() -> CpuState {
    let seg = |type_| Segment { limit: 0xffff, type_, present: true, s: true, ..Segment::default() };
    let mut gprs = [0; 16];
    gprs[accel::cpu_state::gpr::RSP] = STACK;
    CpuState {
        gprs,
        rip: REAL,
        rflags: 0x2,
        cs: seg(0xb),
        ds: seg(0x3),
        es: seg(0x3),
        fs: seg(0x3),
        gs: seg(0x3),
        ss: seg(0x3),
        tr: Segment { limit: 0xffff, type_: 0xb, present: true, ..Segment::default() },
        ldt: Segment { limit: 0xffff, type_: 0x2, present: true, ..Segment::default() },
        gdt: DescriptorTable { base: 0, limit: 0xffff },
        idt: DescriptorTable { base: 0, limit: 0x3ff },
        cr0: 0x10,
        cr3: 0,
        cr4: 0,
        efer: 0,
    }
}

#[derive(Debug)]
struct Outcome {
    serial: String,
    cr2: u64,
    error_code: u64,
    hole: u32,
    exit: VcpuExit,
}

/// Runs the guest; `Err` when the engine refuses the state or errors out.
fn bring_up(accel: &dyn Accelerator) -> Result<Outcome, String> {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    for (at, code) in blobs() {
        memory.write_slice(&code, GuestAddress(at)).unwrap();
    }
    let vm = accel.create_vm(&memory, &VmConfig { vcpus: 1 }).map_err(|e| format!("create_vm: {e}"))?;
    let ops = Arc::new(Recorder::default());
    let mut vcpu = vm.create_vcpu(0, ops.clone()).map_err(|e| format!("create_vcpu: {e}"))?;
    vcpu.set_cpu_state(&real_mode_state()).map_err(|e| format!("set_cpu_state: {e}"))?;
    let _ = ops.kicker.set(vcpu.kicker());
    let (exit, fired) = harness::run_with_watchdog(vcpu.as_mut(), Duration::from_secs(20));
    let serial: String = ops.pio_writes(SERIAL).iter().flat_map(|d| d.iter().map(|&b| b as char)).collect();
    let exit = exit.map_err(|e| format!("run: {e} (serial so far {serial:?})"))?;
    if fired {
        return Err(format!("timed out (serial so far {serial:?}):\n{}", vcpu.dump_state()));
    }
    if exit != VcpuExit::Kicked {
        return Err(format!("{exit:?} (serial so far {serial:?}):\n{}", vcpu.dump_state()));
    }
    let read = |at| memory.read_obj::<u64>(GuestAddress(at)).unwrap();
    Ok(Outcome {
        serial,
        cr2: read(PF_SLOT),
        error_code: read(PF_SLOT + 8),
        hole: memory.read_obj(GuestAddress(HOLE)).unwrap(),
        exit,
    })
}

const EXPECTED: &str = "real\nivt\nprot32\nlong64\nint80\npf\ndone\n";

fn assert_outcome(o: &Outcome) {
    assert_eq!(o.serial, EXPECTED);
    assert_eq!(o.cr2, HOLE);
    // Not present, write, supervisor.
    assert_eq!(o.error_code, 0x2);
    assert_eq!(o.hole, HOLE_VALUE, "the retried store landed");
    assert_eq!(o.exit, VcpuExit::Kicked);
}

#[test]
fn bring_up_tcg() {
    match bring_up(&accel::tcg::Tcg::default()) {
        Ok(o) => assert_outcome(&o),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn bring_up_kvm() {
    let Some(kvm) = harness::kvm_or_skip() else { return };
    match bring_up(&kvm) {
        Ok(o) => assert_outcome(&o),
        Err(e) => println!("KVM can't run the bring-up guest (expected on PVM): {e}"),
    }
}
