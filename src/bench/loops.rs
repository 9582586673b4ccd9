//! The CPU-bound guest of `bench tcg`: integer arithmetic, a memory copy
//! and branchy code, each timed between two serial lines, run at CPL0 or
//! CPL3, with its executed instruction count worked out from the assembled
//! code.
//!
//! ```text
//! offset   (image loaded at LOAD_ADDR = 2 MiB)
//! 0x0000   64-bit code, then its strings
//! 0x3000   GDT (kernel and user code/data, TSS), GDTR 0x3040, IDTR 0x3050,
//!          TSS 0x3080, IDT 0x3100 (vectors 0 to 6)
//! 0x4000   PML4, PDPT (0x5000), PD (0x6000): identity map of 1 GiB in
//!          2 MiB pages with the User bit
//! 0x7000   #UD handler's stack (top 0x7800), loops' stack (top 0x8000)
//! ```
//!
//! The entry (Linux 64-bit boot protocol) loads its own GDT and page tables
//! and `iretq`s to the loops at the chosen CPL. CPL3 code prints and powers
//! off through `ud2` and a CPL0 #UD handler (on PVM, IOPL 3 is cleared and
//! SYSCALL stays in user mode; exceptions do reach the guest's IDT): under
//! PVM KVM only the entry and those calls go through KVM's instruction
//! emulator; the CPL3 loops run natively.

use std::collections::HashMap;

use iced_x86::code_asm::{CodeAssembler, CodeAssemblerResult, CodeLabel};
use iced_x86::{BlockEncoderOptions, Decoder, DecoderOptions, FlowControl, IcedError, Instruction};

use crate::guests::{elf64_image, ACPI_S5_VALUE, LOAD_ADDR};
use crate::layout::pio;

/// Lines are `<prefix><loop> start` and `<prefix><loop> done`.
pub const LOOP_PREFIX: &str = "rxvmm-loop: ";

const CODE_MAX: usize = 0x3000;
const GDT_OFF: usize = 0x3000;
const GDTR_OFF: usize = 0x3040;
const IDTR_OFF: usize = 0x3050;
const TSS_OFF: usize = 0x3080;
const TSS_LEN: usize = 104;
const IDT_OFF: usize = 0x3100;
const PML4_OFF: usize = 0x4000;
const PDPT_OFF: usize = 0x5000;
const PD_OFF: usize = 0x6000;
/// The #UD handler's stack (TSS.RSP0), then the loops' own.
const KSTACK_TOP_OFF: usize = 0x7800;
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
const TSS_SEL: u32 = 0x28;
/// Null, kernel code and data, user data and code; the 16-byte TSS
/// descriptor follows.
const GDT: [u64; 5] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x00cf_f300_0000_ffff, 0x00af_fb00_0000_ffff];
const GDT_BYTES: usize = GDT.len() * 8 + 16;
/// Reserved bit 1 only: interrupts off, IOPL 0.
const RFLAGS: u64 = 0x2;
const UD_VECTOR: usize = 6;
const UD2_LEN: i32 = 2;
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

/// Errors building the loop guest (all of them bench bugs).
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("assembling the loop guest")]
    Assemble(#[from] IcedError),
    #[error("the loop guest's code is {0:#x} bytes, its slot holds {CODE_MAX:#x}")]
    TooLarge(usize),
    #[error("counting the loop guest's instructions: {0}")]
    Count(&'static str),
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
    /// The code (without its strings), at [`LOAD_ADDR`].
    pub code: Vec<u8>,
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
pub fn build(cpl3: bool, insns_per_loop: u64) -> Result<LoopGuest, LoopError> {
    // Pass one sizes the passes from the code itself; pass two is the guest.
    let probe = assemble(cpl3, &[1; KINDS.len()])?;
    let passes: Vec<u64> = probe.counts.iter().map(|c| (insns_per_loop / c.total.max(1)).max(1)).collect();
    let Assembled { result, counts, code_end, ud_handler } = assemble(cpl3, &passes)?;
    let code = &result.inner.code_buffer;
    if code.len() > CODE_MAX {
        return Err(LoopError::TooLarge(code.len()));
    }
    let mut image = vec![0u8; IMAGE_SIZE];
    image[..code.len()].copy_from_slice(code);
    system_tables(&mut image, ud_handler);
    let code = code[..(code_end - LOAD_ADDR) as usize].to_vec();
    Ok(LoopGuest { elf: elf64_image(LOAD_ADDR, &image, LOAD_ADDR, None), counts, code })
}

/// GDT with the TSS, the TSS, the IDT's #UD gate, and the page tables.
fn system_tables(image: &mut [u8], ud_handler: u64) {
    for (i, desc) in GDT.iter().enumerate() {
        put(image, GDT_OFF + i * 8, &desc.to_le_bytes());
    }
    // Available 64-bit TSS (type 9, present).
    let tss = addr(TSS_OFF);
    let tss_low = (TSS_LEN as u64 - 1) | ((tss & 0xff_ffff) << 16) | (0x89 << 40) | (((tss >> 24) & 0xff) << 56);
    put(image, GDT_OFF + TSS_SEL as usize, &tss_low.to_le_bytes());
    put(image, GDT_OFF + TSS_SEL as usize + 8, &(tss >> 32).to_le_bytes());
    put(image, GDTR_OFF, &((GDT_BYTES - 1) as u16).to_le_bytes());
    put(image, GDTR_OFF + 2, &addr(GDT_OFF).to_le_bytes());
    // TSS: RSP0, and the I/O bitmap offset past the end (no bitmap).
    put(image, TSS_OFF + 4, &addr(KSTACK_TOP_OFF).to_le_bytes());
    put(image, TSS_OFF + 102, &(TSS_LEN as u16).to_le_bytes());
    // IDT up to #UD: a 64-bit interrupt gate to the handler.
    put(image, IDTR_OFF, &(((UD_VECTOR + 1) * 16 - 1) as u16).to_le_bytes());
    put(image, IDTR_OFF + 2, &addr(IDT_OFF).to_le_bytes());
    let h = ud_handler;
    let mut gate = [0u8; 16];
    gate[0..2].copy_from_slice(&(h as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&(KCODE64 as u16).to_le_bytes());
    gate[5] = 0x8e;
    gate[6..8].copy_from_slice(&((h >> 16) as u16).to_le_bytes());
    gate[8..12].copy_from_slice(&((h >> 32) as u32).to_le_bytes());
    put(image, IDT_OFF + UD_VECTOR * 16, &gate);
    put(image, PML4_OFF, &(addr(PDPT_OFF) | PTE_PWU).to_le_bytes());
    put(image, PDPT_OFF, &(addr(PD_OFF) | PTE_PWU).to_le_bytes());
    for i in 0..512u64 {
        put(image, PD_OFF + i as usize * 8, &((i << 21) | PTE_PS | PTE_PWU).to_le_bytes());
    }
}

fn put(image: &mut [u8], off: usize, data: &[u8]) {
    image[off..off + data.len()].copy_from_slice(data);
}

/// The assembled code and what [`build`] needs to know about it.
struct Assembled {
    result: CodeAssemblerResult,
    counts: Vec<LoopCount>,
    /// End of the code proper (the strings follow).
    code_end: u64,
    ud_handler: u64,
}

/// Assembles the guest with `passes[i]` outer iterations of loop `i`.
fn assemble(cpl3: bool, passes: &[u64]) -> Result<Assembled, LoopError> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64)?;
    let (mut loops, mut print, mut code_end) = (a.create_label(), a.create_label(), a.create_label());
    let (mut ud_handler, mut poweroff) = (a.create_label(), a.create_label());
    let mut strings: Vec<(CodeLabel, String)> = Vec::new();

    // Entry: own GDT and page tables (and for CPL3 a TSS and an IDT with
    // the #UD handler), then iretq to the loops at the CPL.
    a.cli()?;
    a.mov(rsp, addr(STACK_TOP_OFF))?;
    a.lgdt(ptr(addr(GDTR_OFF)))?;
    a.mov(rax, addr(PML4_OFF))?;
    a.mov(cr3, rax)?;
    if cpl3 {
        a.mov(eax, TSS_SEL)?;
        a.ltr(ax)?;
        a.lidt(ptr(addr(IDTR_OFF)))?;
    }
    let (ss_sel, cs_sel) = if cpl3 { (UDATA | 3, UCODE64 | 3) } else { (KDATA, KCODE64) };
    a.push(ss_sel as i32)?;
    a.push(addr(STACK_TOP_OFF) as i32)?;
    a.push(RFLAGS as i32)?;
    a.push(cs_sel as i32)?;
    a.lea(rax, ptr(loops))?;
    a.push(rax)?;
    a.iretq()?;

    // CPL3 code prints and powers off through `ud2` (RSI = string, or 0 to
    // power off): #UD reaches the CPL0 handler through the IDT on PVM too,
    // where neither IOPL 3 nor SYSCALL leave user mode. CPL0 code calls.
    let output = |a: &mut CodeAssembler, text: Option<CodeLabel>| -> Result<(), IcedError> {
        match text {
            Some(label) => a.lea(rsi, ptr(label))?,
            None => a.xor(esi, esi)?,
        }
        match (cpl3, text) {
            (true, _) => a.ud2(),
            (false, Some(_)) => a.call(print),
            (false, None) => a.jmp(poweroff),
        }
    };
    a.set_label(&mut loops)?;
    let mut nests = Vec::new();
    for (&kind, &outer_iterations) in KINDS.iter().zip(passes) {
        let (start, done) = (a.create_label(), a.create_label());
        strings.push((start, format!("{}\n", kind.start_line())));
        strings.push((done, format!("{}\n", kind.done_line())));
        output(&mut a, Some(start))?;
        nests.push(emit_nest(&mut a, kind, outer_iterations)?);
        output(&mut a, Some(done))?;
    }
    output(&mut a, None)?;

    // #UD handler: the frame's RIP is the ud2's; resume after it.
    let mut spin = a.create_label();
    a.set_label(&mut ud_handler)?;
    a.test(rsi, rsi)?;
    a.jz(poweroff)?;
    a.call(print)?;
    a.add(qword_ptr(rsp), UD2_LEN)?;
    a.iretq()?;
    a.set_label(&mut poweroff)?;
    a.mov(edx, pio::ACPI_POWER as u32)?;
    a.mov(al, u32::from(ACPI_S5_VALUE))?;
    a.out(dx, al)?;
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

    // A never-run instruction to carry the end-of-code label (a label
    // needs one of its own; the strings have theirs).
    a.set_label(&mut code_end)?;
    a.ud2()?;
    for (mut label, text) in strings {
        a.set_label(&mut label)?;
        a.db(format!("{text}\0").as_bytes())?;
    }
    let result = a.assemble_options(LOAD_ADDR, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let end_ip = result.label_ip(&code_end)?;
    let code = Code::decode(&result.inner.code_buffer[..(end_ip - LOAD_ADDR) as usize]);
    let counts = nests.iter().map(|n| code.count(&result, n)).collect::<Result<_, _>>()?;
    let ud_handler = result.label_ip(&ud_handler)?;
    Ok(Assembled { result, counts, code_end: end_ip, ud_handler })
}

/// Emits one loop nest: `passes` outer iterations of the kind's inner loop.
/// R8 counts passes, R15 inner iterations.
fn emit_nest(a: &mut CodeAssembler, kind: Kind, passes: u64) -> Result<Nest, LoopError> {
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
                a.mov(r, qword_ptr(rsi + 8 * i as i32))?;
            }
            for (i, r) in [rax, rdx, r9, r10].into_iter().enumerate() {
                a.mov(qword_ptr(rdi + 8 * i as i32), r)?;
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
                a.test(edx, 1u32 << bit)?;
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
        let insns: Vec<Instruction> =
            Decoder::with_ip(64, bytes, LOAD_ADDR, DecoderOptions::NONE).into_iter().collect();
        let at = insns.iter().enumerate().map(|(i, insn)| (insn.ip(), i)).collect();
        Code { insns, at }
    }

    /// Instructions executed from `from` through `last`, following jumps
    /// and taking every conditional branch (`taken`) or none. `last` is the
    /// loop's back edge, which is not followed.
    fn path(&self, from: u64, last: u64, taken: bool) -> Result<u64, LoopError> {
        let broken = || LoopError::Count("a path leaves the loop");
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
    fn path_either(&self, from: u64, last: u64) -> Result<u64, LoopError> {
        let (all, none) = (self.path(from, last, true)?, self.path(from, last, false)?);
        if all != none {
            return Err(LoopError::Count("if/else arms of unequal length"));
        }
        Ok(all)
    }

    /// `setup + passes × (pre + inner × body + post)`.
    fn count(&self, r: &CodeAssemblerResult, n: &Nest) -> Result<LoopCount, LoopError> {
        let ip = |l: &CodeLabel| r.label_ip(l);
        // Straight-line pieces end just before the next label.
        let before = |l: &CodeLabel| -> Result<u64, LoopError> {
            let i = self.at.get(&ip(l)?).copied().filter(|&i| i > 0);
            let i = i.ok_or(LoopError::Count("a label is not on an instruction"))?;
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
