//! The CPU-bound guest of `bench tcg`: integer arithmetic, a memory copy
//! and branchy code, each timed between two serial lines, run at CPL0 or
//! CPL3, with its executed instruction count worked out from the assembled
//! code.
//!
//! ```text
//! offset   (image loaded at LOAD_ADDR = 2 MiB)
//! 0x0000   64-bit code, then its strings
//! 0x3000   GDT (kernel and user code/data), GDTR at 0x3040
//! 0x4000   PML4, PDPT (0x5000), PD (0x6000): identity map of 1 GiB in
//!          2 MiB pages with the User bit
//! 0x7000   stack (top 0x8000), used at CPL0 and CPL3 alike
//! ```
//!
//! The entry (Linux 64-bit boot protocol) loads its own GDT and page tables
//! and `iretq`s to the loops at the chosen CPL with IOPL 3, so CPL3 code
//! reaches the serial and power ports itself: nothing returns to CPL0, and
//! under PVM KVM only the entry's few instructions and the port writes go
//! through KVM's instruction emulator; CPL3 loops run natively.

use std::collections::HashMap;

use iced_x86::code_asm::{CodeAssembler, CodeAssemblerResult, CodeLabel};
use iced_x86::{BlockEncoderOptions, Decoder, DecoderOptions, FlowControl, Instruction};

use crate::guests::{elf64_image, GuestError, ACPI_S5_VALUE, LOAD_ADDR};
use crate::layout::pio;

/// Lines are `<prefix><loop> start` and `<prefix><loop> done`.
pub const LOOP_PREFIX: &str = "rxvmm-loop: ";

const CODE_MAX: usize = 0x3000;
const GDT_OFF: usize = 0x3000;
const GDTR_OFF: usize = 0x3040;
const PML4_OFF: usize = 0x4000;
const PDPT_OFF: usize = 0x5000;
const PD_OFF: usize = 0x6000;
const STACK_TOP_OFF: usize = 0x8000;
const IMAGE_SIZE: usize = STACK_TOP_OFF;
/// Copy source and destination: guest RAM past the image (the guest is
/// run with at least 16 MiB), identity-mapped.
const COPY_SRC: u64 = 0x40_0000;
const COPY_DST: u64 = 0x48_0000;
/// Bytes per pass of the copy loop: fits in any L2 cache.
const COPY_BYTES: u32 = 64 * 1024;
/// Bytes one copy-loop iteration moves (four qword loads and stores).
const COPY_STEP: u32 = 32;
/// Inner iterations of the arithmetic and branchy loops.
const INNER: u32 = 1000;

const KCODE64: u64 = 0x08;
const KDATA: u64 = 0x10;
const UDATA: u64 = 0x18;
const UCODE64: u64 = 0x20;
const GDT: [u64; 5] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x00cf_f300_0000_ffff, 0x00af_fb00_0000_ffff];
/// Reserved bit 1, IOPL 3, interrupts off.
const RFLAGS_IOPL3: u64 = 0x3002;
const PTE_PWU: u64 = 0x7;
const PTE_PS: u64 = 0x80;

const fn addr(off: usize) -> u64 {
    LOAD_ADDR + off as u64
}

/// The loops, in the order the guest runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Dependent register arithmetic: add, xor, imul, lea, rol, shr, adc…
    Int,
    /// 64 KiB copied with qword loads and stores, over and over.
    Copy,
    /// An LCG whose bits steer four unpredictable if/else diamonds: short
    /// blocks, the interpreter's dispatch cost.
    Branchy,
}

pub const KINDS: [Kind; 3] = [Kind::Int, Kind::Copy, Kind::Branchy];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Int => "int",
            Kind::Copy => "copy",
            Kind::Branchy => "branchy",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::Int => "integer arithmetic",
            Kind::Copy => "memory copy (64 KiB, qword moves)",
            Kind::Branchy => "branchy code (4 random if/else per iteration)",
        }
    }

    pub fn start_line(self) -> String {
        format!("{LOOP_PREFIX}{} start", self.name())
    }

    pub fn done_line(self) -> String {
        format!("{LOOP_PREFIX}{} done", self.name())
    }

    fn inner_iterations(self) -> u32 {
        match self {
            Kind::Copy => COPY_BYTES / COPY_STEP,
            Kind::Int | Kind::Branchy => INNER,
        }
    }
}

/// One loop's executed instructions between its start and done lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopCount {
    pub kind: Kind,
    /// Instructions of one inner iteration.
    pub per_iteration: u64,
    /// Everything from the first set-up instruction to the last back edge.
    pub total: u64,
}

/// A built guest and what its loops execute.
pub struct LoopGuest {
    pub elf: Vec<u8>,
    pub counts: Vec<LoopCount>,
}

/// Label positions of one emitted loop nest:
/// `setup; outer: pre; inner: body… back: jnz inner; post… outer_back: jnz outer`.
struct Nest {
    kind: Kind,
    outer_iterations: u64,
    setup: CodeLabel,
    outer: CodeLabel,
    inner: CodeLabel,
    back: CodeLabel,
    post: CodeLabel,
    outer_back: CodeLabel,
}

/// Builds the guest. `cpl3`: run the loops in user mode. Each loop runs
/// whole passes of its inner loop until about `insns_per_loop`
/// instructions have executed (at least one pass).
pub fn build(cpl3: bool, insns_per_loop: u64) -> Result<LoopGuest, GuestError> {
    // Pass one sizes the passes from the code itself; pass two is the guest.
    let probe = assemble(cpl3, &[1; KINDS.len()])?;
    let passes: Vec<u64> = probe.1.iter().map(|c| (insns_per_loop / c.total.max(1)).max(1)).collect();
    let (result, counts, code_end) = assemble(cpl3, &passes)?;
    let code = &result.inner.code_buffer;
    if code.len() > CODE_MAX {
        return Err(GuestError::TooLarge { what: "loop guest code", size: code.len(), max: CODE_MAX });
    }
    let _ = code_end;
    let mut image = vec![0u8; IMAGE_SIZE];
    image[..code.len()].copy_from_slice(code);
    for (i, desc) in GDT.iter().enumerate() {
        put(&mut image, GDT_OFF + i * 8, &desc.to_le_bytes());
    }
    put(&mut image, GDTR_OFF, &((GDT.len() * 8 - 1) as u16).to_le_bytes());
    put(&mut image, GDTR_OFF + 2, &addr(GDT_OFF).to_le_bytes());
    put(&mut image, PML4_OFF, &(addr(PDPT_OFF) | PTE_PWU).to_le_bytes());
    put(&mut image, PDPT_OFF, &(addr(PD_OFF) | PTE_PWU).to_le_bytes());
    for i in 0..512u64 {
        put(&mut image, PD_OFF + i as usize * 8, &((i << 21) | PTE_PS | PTE_PWU).to_le_bytes());
    }
    Ok(LoopGuest { elf: elf64_image(LOAD_ADDR, &image, LOAD_ADDR, None), counts })
}

fn put(image: &mut [u8], off: usize, data: &[u8]) {
    image[off..off + data.len()].copy_from_slice(data);
}

/// Assembles the guest with `passes[i]` outer iterations of loop `i`;
/// returns the code, each loop's count and the end of the code.
fn assemble(cpl3: bool, passes: &[u64]) -> Result<(CodeAssemblerResult, Vec<LoopCount>, u64), GuestError> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64)?;
    let (mut loops, mut print, mut code_end) = (a.create_label(), a.create_label(), a.create_label());
    let mut strings: Vec<(CodeLabel, String)> = Vec::new();

    // Entry: own GDT and page tables, then iretq to the loops at the CPL.
    a.cli()?;
    a.mov(rsp, addr(STACK_TOP_OFF))?;
    a.lgdt(ptr(addr(GDTR_OFF)))?;
    a.mov(rax, addr(PML4_OFF))?;
    a.mov(cr3, rax)?;
    let (ss, cs) = if cpl3 { (UDATA | 3, UCODE64 | 3) } else { (KDATA, KCODE64) };
    a.push(ss as i32)?;
    a.push(addr(STACK_TOP_OFF) as i32)?;
    a.push(RFLAGS_IOPL3 as i32)?;
    a.push(cs as i32)?;
    a.lea(rax, ptr(loops))?;
    a.push(rax)?;
    a.iretq()?;

    a.set_label(&mut loops)?;
    let mut nests = Vec::new();
    for (&kind, &outer_iterations) in KINDS.iter().zip(passes) {
        let (start, done) = (a.create_label(), a.create_label());
        strings.push((start, format!("{}\n", kind.start_line())));
        strings.push((done, format!("{}\n", kind.done_line())));
        a.lea(rsi, ptr(start))?;
        a.call(print)?;
        nests.push(emit_nest(&mut a, kind, outer_iterations)?);
        a.lea(rsi, ptr(done))?;
        a.call(print)?;
    }
    a.mov(edx, pio::ACPI_POWER as u32)?;
    a.mov(al, u32::from(ACPI_S5_VALUE))?;
    a.out(dx, al)?;
    let mut spin = a.create_label();
    a.set_label(&mut spin)?;
    a.jmp(spin)?;

    // print: RSI = NUL-terminated string; keeps RAX and RDX.
    let (mut next, mut end) = (a.create_label(), a.create_label());
    a.set_label(&mut print)?;
    a.push(rax)?;
    a.push(rdx)?;
    a.mov(edx, pio::SERIAL_COM1 as u32)?;
    a.set_label(&mut next)?;
    a.mov(al, byte_ptr(rsi))?;
    a.test(al, al)?;
    a.jz(end)?;
    a.out(dx, al)?;
    a.inc(rsi)?;
    a.jmp(next)?;
    a.set_label(&mut end)?;
    a.pop(rdx)?;
    a.pop(rax)?;
    a.ret()?;

    a.set_label(&mut code_end)?;
    for (mut label, text) in strings {
        a.set_label(&mut label)?;
        a.db(format!("{text}\0").as_bytes())?;
    }
    let result = a.assemble_options(LOAD_ADDR, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let end_ip = result.label_ip(&code_end)?;
    let code = Code::decode(&result.inner.code_buffer[..(end_ip - LOAD_ADDR) as usize]);
    let counts = nests.iter().map(|n| code.count(&result, n)).collect::<Result<_, _>>()?;
    Ok((result, counts, end_ip))
}

/// Emits one loop nest: `passes` outer iterations of the kind's inner loop.
/// R8 counts passes, R15 inner iterations.
fn emit_nest(a: &mut CodeAssembler, kind: Kind, passes: u64) -> Result<Nest, GuestError> {
    use iced_x86::code_asm::*;
    let mut n = Nest {
        kind,
        outer_iterations: passes,
        setup: a.create_label(),
        outer: a.create_label(),
        inner: a.create_label(),
        back: a.create_label(),
        post: a.create_label(),
        outer_back: a.create_label(),
    };
    a.set_label(&mut n.setup)?;
    a.mov(r8, passes)?;
    match kind {
        Kind::Int => {
            for (i, r) in [rax, rbx, rcx, rdx, rsi, rdi, r9, r10, r11].into_iter().enumerate() {
                a.mov(r, 0x9e37_79b9_7f4a_7c15u64.rotate_left(7 * i as u32))?;
            }
        }
        Kind::Copy => {}
        Kind::Branchy => {
            a.mov(rax, 0x2545_f491_4f6c_dd1du64)?;
            a.mov(rbx, 6_364_136_223_846_793_005u64)?; // Knuth's MMIX LCG
            a.mov(rcx, 1_442_695_040_888_963_407u64)?;
            a.xor(r9d, r9d)?;
            a.xor(r10d, r10d)?;
        }
    }
    a.set_label(&mut n.outer)?;
    if kind == Kind::Copy {
        a.mov(rsi, COPY_SRC)?;
        a.mov(rdi, COPY_DST)?;
    }
    a.mov(r15d, kind.inner_iterations())?;
    a.set_label(&mut n.inner)?;
    match kind {
        Kind::Int => {
            a.add(rax, rbx)?;
            a.xor(rbx, rcx)?;
            a.imul_2(rcx, rdx)?;
            a.lea(rdx, ptr(rax + rbx * 2 + 7))?;
            a.rol(rsi, 7)?;
            a.sub(rdi, rsi)?;
            a.shr(r9, 3)?;
            a.or(r9, rax)?;
            a.and(r10, rdi)?;
            a.adc(r11, r10)?;
            a.neg(r10)?;
            a.inc(rsi)?;
        }
        Kind::Copy => {
            for (i, r) in [rax, rdx, r9, r10].into_iter().enumerate() {
                a.mov(r, qword_ptr(rsi + 8 * i))?;
            }
            for (i, r) in [rax, rdx, r9, r10].into_iter().enumerate() {
                a.mov(qword_ptr(rdi + 8 * i), r)?;
            }
            a.add(rsi, COPY_STEP as i32)?;
            a.add(rdi, COPY_STEP as i32)?;
        }
        Kind::Branchy => {
            a.imul_2(rax, rbx)?;
            a.add(rax, rcx)?;
            a.mov(rdx, rax)?;
            a.shr(rdx, 40)?;
            // Both arms run three instructions after the test, so the count
            // doesn't depend on the path (`Code::count` checks it).
            for bit in 0..4 {
                let (mut taken, mut join) = (a.create_label(), a.create_label());
                a.test(edx, 1 << bit)?;
                a.jz(taken)?;
                a.add(r9, rdx)?;
                a.jmp(join)?;
                a.set_label(&mut taken)?;
                a.sub(r10, rdx)?;
                a.xor(r9, r10)?;
                a.set_label(&mut join)?;
            }
        }
    }
    a.dec(r15d)?;
    a.set_label(&mut n.back)?;
    a.jnz(n.inner)?;
    a.set_label(&mut n.post)?;
    a.dec(r8)?;
    a.set_label(&mut n.outer_back)?;
    a.jnz(n.outer)?;
    Ok(n)
}

/// The decoded code, for counting what a loop executes.
struct Code {
    insns: Vec<Instruction>,
    at: HashMap<u64, usize>,
}

impl Code {
    fn decode(bytes: &[u8]) -> Code {
        let insns: Vec<Instruction> = Decoder::with_ip(64, bytes, LOAD_ADDR, DecoderOptions::NONE).into_iter().collect();
        let at = insns.iter().enumerate().map(|(i, insn)| (insn.ip(), i)).collect();
        Code { insns, at }
    }

    /// Instructions executed from `from` through `last`, following jumps
    /// and taking every conditional branch (`taken`) or none. `last` is the
    /// loop's back edge, which is not followed.
    fn path(&self, from: u64, last: u64, taken: bool) -> Result<u64, GuestError> {
        let broken = || GuestError::TooLarge { what: "loop path (a bench guest bug)", size: 0, max: 0 };
        let mut ip = from;
        for steps in 1..=10_000u64 {
            let insn = self.insns.get(*self.at.get(&ip).ok_or_else(broken)?).ok_or_else(broken)?;
            if ip == last {
                return Ok(steps);
            }
            ip = match insn.flow_control() {
                FlowControl::Next => insn.next_ip(),
                FlowControl::UnconditionalBranch => insn.near_branch_target(),
                FlowControl::ConditionalBranch if taken => insn.near_branch_target(),
                FlowControl::ConditionalBranch => insn.next_ip(),
                _ => return Err(broken()),
            };
        }
        Err(broken())
    }

    /// The same count whichever way the branches go, or an error.
    fn path_either(&self, from: u64, last: u64) -> Result<u64, GuestError> {
        let (all, none) = (self.path(from, last, true)?, self.path(from, last, false)?);
        if all != none {
            return Err(GuestError::TooLarge { what: "loop arms of unequal length (a bench guest bug)", size: 0, max: 0 });
        }
        Ok(all)
    }

    /// `setup + passes × (pre + inner × body + post)`.
    fn count(&self, r: &CodeAssemblerResult, n: &Nest) -> Result<LoopCount, GuestError> {
        let ip = |l: &CodeLabel| r.label_ip(l);
        // Straight-line pieces end just before the next label.
        let before = |l: &CodeLabel| -> Result<u64, GuestError> {
            let next = ip(l)?;
            let i = self.at.get(&next).copied().filter(|&i| i > 0).ok_or(GuestError::TooLarge {
                what: "loop label (a bench guest bug)",
                size: 0,
                max: 0,
            })?;
            Ok(self.insns[i - 1].ip())
        };
        let setup = self.path_either(ip(&n.setup)?, before(&n.outer)?)?;
        let pre = self.path_either(ip(&n.outer)?, before(&n.inner)?)?;
        let body = self.path_either(ip(&n.inner)?, ip(&n.back)?)?;
        let post = self.path_either(ip(&n.post)?, ip(&n.outer_back)?)?;
        let pass = pre + u64::from(n.kind.inner_iterations()) * body + post;
        Ok(LoopCount { kind: n.kind, per_iteration: body, total: setup + n.outer_iterations * pass })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_code() {
        let g = build(true, 1).expect("build");
        let per: Vec<u64> = g.counts.iter().map(|c| c.per_iteration).collect();
        // int: 12 ALU + dec + jnz; copy: 8 moves, 2 adds, dec, jnz;
        // branchy: 4 + 4 × (test, jz, 2 of an arm) + dec + jnz.
        assert_eq!(per, [14, 12, 22]);
        // One pass each: setup + pre + inner × body + post.
        let int = 1 + 9 + 1 + 1000 * 14 + 2;
        let copy = 1 + 3 + 2048 * 12 + 2;
        let branchy = 1 + 5 + 1 + 1000 * 22 + 2;
        let totals: Vec<u64> = g.counts.iter().map(|c| c.total).collect();
        assert_eq!(totals, [int, copy, branchy]);
    }

    #[test]
    fn passes_scale_to_the_target() {
        let g = build(false, 10_000_000).expect("build");
        for c in &g.counts {
            assert!(c.total >= 9_000_000 && c.total <= 10_000_000, "{c:?}");
        }
    }
}
