//! The guests' runtime: serial printing, power off, reset and crash
//! subroutines, plus the strings they print.
//!
//! Every guest links exactly one copy of these into its 64-bit code (see
//! [`Rt::emit`]). They use only plain integer instructions, moves, `in`/`out`
//! and `call`/`ret`, so KVM's instruction emulator (which runs CPL0 code on a
//! PVM host) and the TCG engine can both execute them.

use iced_x86::code_asm::{CodeAssembler, CodeLabel};
use iced_x86::IcedError;

use crate::layout::pio;

/// Value written to the ACPI power port for sleep state S5: SLP_TYP=5 at bit 2, SLP_EN at bit 5.
pub const ACPI_S5_VALUE: u8 = (5 << 2) | (1 << 5);
/// i8042 command that pulses the CPU reset line.
const I8042_RESET: u8 = 0xfe;
const I8042_COMMAND_PORT: u64 = pio::I8042 + 4;

/// Labels of the runtime subroutines, and the strings queued for emission.
///
/// Calling conventions (all preserve every general register but flags):
/// - `print_str`: RSI = address of a NUL-terminated string.
/// - `print_char`: AL = character.
/// - `print_hex`: RAX = value, ECX = number of low nibbles to print (1..=16).
/// - `print_hex64`: RAX = value, 16 digits.
/// - `print_dec`: RAX = value, in decimal.
/// - `poweroff`, `reset`, `crash`, `halt`: jump targets; never return.
pub(super) struct Rt {
    pub print_str: CodeLabel,
    pub print_char: CodeLabel,
    pub print_hex: CodeLabel,
    pub print_hex64: CodeLabel,
    pub print_dec: CodeLabel,
    pub poweroff: CodeLabel,
    pub reset: CodeLabel,
    pub crash: CodeLabel,
    pub halt: CodeLabel,
    zero_idtr: CodeLabel,
    /// First byte after the code: the hex digit table.
    data_start: CodeLabel,
    strings: Vec<(CodeLabel, String)>,
}

impl Rt {
    pub fn new(a: &mut CodeAssembler) -> Self {
        Rt {
            print_str: a.create_label(),
            print_char: a.create_label(),
            print_hex: a.create_label(),
            print_hex64: a.create_label(),
            print_dec: a.create_label(),
            poweroff: a.create_label(),
            reset: a.create_label(),
            crash: a.create_label(),
            halt: a.create_label(),
            zero_idtr: a.create_label(),
            data_start: a.create_label(),
            strings: Vec::new(),
        }
    }

    /// A label for `text`, stored NUL-terminated after the code.
    pub fn string(&mut self, a: &mut CodeAssembler, text: &str) -> CodeLabel {
        if let Some((label, _)) = self.strings.iter().find(|(_, s)| s == text) {
            return *label;
        }
        let label = a.create_label();
        self.strings.push((label, text.to_owned()));
        label
    }

    /// Emits code that prints `text`.
    pub fn print(&mut self, a: &mut CodeAssembler, text: &str) -> Result<(), IcedError> {
        use iced_x86::code_asm::*;
        let label = self.string(a, text);
        a.push(rsi)?;
        a.lea(rsi, ptr(label))?;
        a.call(self.print_str)?;
        a.pop(rsi)
    }

    /// Emits code that prints `prefix`, RAX as 16 hex digits, and a newline.
    pub fn print_hex_line(&mut self, a: &mut CodeAssembler, prefix: &str) -> Result<(), IcedError> {
        self.print(a, prefix)?;
        a.call(self.print_hex64)?;
        self.print(a, "\n")
    }

    /// Emits code that prints `prefix`, RAX in decimal, and a newline.
    pub fn print_dec_line(&mut self, a: &mut CodeAssembler, prefix: &str) -> Result<(), IcedError> {
        self.print(a, prefix)?;
        a.call(self.print_dec)?;
        self.print(a, "\n")
    }

    /// Emits the subroutines, then the tables and strings. Call once, after
    /// the guest's own code. Returns the label of the first data byte.
    pub fn emit(mut self, a: &mut CodeAssembler) -> Result<CodeLabel, IcedError> {
        use iced_x86::code_asm::*;
        let serial = pio::SERIAL_COM1 as u32;

        a.set_label(&mut self.print_str)?;
        let mut next = a.create_label();
        let mut done = a.create_label();
        a.push(rax)?;
        a.push(rdx)?;
        a.push(rsi)?;
        a.mov(edx, serial)?;
        a.set_label(&mut next)?;
        a.mov(al, byte_ptr(rsi))?;
        a.test(al, al)?;
        a.jz(done)?;
        a.out(dx, al)?;
        a.inc(rsi)?;
        a.jmp(next)?;
        a.set_label(&mut done)?;
        a.pop(rsi)?;
        a.pop(rdx)?;
        a.pop(rax)?;
        a.ret()?;

        a.set_label(&mut self.print_char)?;
        a.push(rdx)?;
        a.mov(edx, serial)?;
        a.out(dx, al)?;
        a.pop(rdx)?;
        a.ret()?;

        a.set_label(&mut self.print_hex64)?;
        a.push(rcx)?;
        a.mov(ecx, 16)?;
        a.call(self.print_hex)?;
        a.pop(rcx)?;
        a.ret()?;

        // Most significant nibble first: shift right by 4*(digits-1), ..., 0.
        a.set_label(&mut self.print_hex)?;
        let mut digit = a.create_label();
        a.push(rax)?;
        a.push(rbx)?;
        a.push(rcx)?;
        a.push(rdx)?;
        a.push(rsi)?;
        a.mov(rbx, rax)?;
        a.and(ecx, 0x1f)?;
        a.shl(ecx, 2)?;
        a.lea(rsi, ptr(self.data_start))?;
        a.mov(edx, serial)?;
        a.set_label(&mut digit)?;
        a.sub(ecx, 4)?;
        a.mov(rax, rbx)?;
        a.shr(rax, cl)?;
        a.and(eax, 0xf)?;
        a.mov(al, byte_ptr(rsi + rax))?;
        a.out(dx, al)?;
        a.test(ecx, ecx)?;
        a.jnz(digit)?;
        a.pop(rsi)?;
        a.pop(rdx)?;
        a.pop(rcx)?;
        a.pop(rbx)?;
        a.pop(rax)?;
        a.ret()?;

        // Digits are pushed least significant first, then popped and printed.
        a.set_label(&mut self.print_dec)?;
        let mut divide = a.create_label();
        let mut emit_digit = a.create_label();
        a.push(rax)?;
        a.push(rbx)?;
        a.push(rcx)?;
        a.push(rdx)?;
        a.xor(ecx, ecx)?;
        a.mov(ebx, 10)?;
        a.set_label(&mut divide)?;
        a.xor(edx, edx)?;
        a.div(rbx)?;
        a.push(rdx)?;
        a.inc(ecx)?;
        a.test(rax, rax)?;
        a.jnz(divide)?;
        a.mov(edx, serial)?;
        a.set_label(&mut emit_digit)?;
        a.pop(rax)?;
        a.add(al, b'0' as i32)?;
        a.out(dx, al)?;
        a.dec(ecx)?;
        a.jnz(emit_digit)?;
        a.pop(rdx)?;
        a.pop(rcx)?;
        a.pop(rbx)?;
        a.pop(rax)?;
        a.ret()?;

        a.set_label(&mut self.poweroff)?;
        a.mov(edx, pio::ACPI_POWER as u32)?;
        a.mov(al, ACPI_S5_VALUE as u32)?;
        a.out(dx, al)?;
        a.jmp(self.halt)?;

        a.set_label(&mut self.reset)?;
        a.mov(al, I8042_RESET as u32)?;
        a.out(I8042_COMMAND_PORT as u32, al)?;
        a.jmp(self.halt)?;

        // An empty IDT turns the #UD into #GP, #DF and then a triple fault.
        a.set_label(&mut self.crash)?;
        a.lidt(ptr(self.zero_idtr))?;
        a.ud2()?;

        // Fallback if a power-off or reset request is ignored.
        a.set_label(&mut self.halt)?;
        a.cli()?;
        a.hlt()?;
        a.jmp(self.halt)?;

        a.set_label(&mut self.data_start)?;
        a.db(b"0123456789abcdef")?;
        a.set_label(&mut self.zero_idtr)?;
        a.db(&[0; 10])?;
        for (mut label, text) in std::mem::take(&mut self.strings) {
            a.set_label(&mut label)?;
            let mut bytes = text.into_bytes();
            bytes.push(0);
            a.db(&bytes)?;
        }
        Ok(self.data_start)
    }
}
