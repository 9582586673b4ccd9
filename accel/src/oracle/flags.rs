//! Which arithmetic flags are architecturally undefined where a run ends.
//!
//! A forward data-flow over the sequence's control-flow graph: the state at
//! each instruction is the set of flags that *may* hold an undefined value
//! there (on some path from the entry). An instruction that leaves a flag
//! undefined (per iced-x86's `rflags_undefined()`, refined below) adds it;
//! one that certainly writes a defined value removes it. Where paths join,
//! the sets are OR-ed. The mask at the instruction where the run stopped
//! (the terminator, or the faulting instruction: faults are precise, so the
//! flags are those from before it) is what a comparison must ignore.
//!
//! Refinements over iced's static tables, from the SDM:
//! - shifts and rotates (SHLD/SHRD too) by CL may not write any flag (a
//!   zero count leaves all unchanged), so they never *remove* a flag from
//!   the set; by an immediate that masks to zero they change nothing;
//! - SHL/SHR of 8- and 16-bit operands by a count ≥ the operand size leave
//!   CF undefined (with CL, the count is unknown: CF may be undefined);
//! - REP CMPS/SCAS with a zero count write no flags.
//!
//! What the mask hides between TCG and this host (Intel, Sapphire
//! Rapids-class), per a 200,000-case campaign: only OF after SHL/SAL, SHR,
//! SHLD and SHRD by a count > 1, where the SDM leaves it undefined and TCG
//! keeps QEMU's formula (the table in `crate::tcg::flags` says why). Every
//! other undefined flag TCG produces equals the host's, ROL/ROR's
//! encoding-dependent OF included.
//!
//! The generator uses the same transfer function so that it never emits an
//! instruction that *reads* a possibly undefined flag (ADC, Jcc, SETcc,
//! LAHF…): an undefined value would otherwise leak into registers or
//! control flow, where no mask can hide it.

use iced_x86::RflagsBits;
use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind};

use super::CODE;

/// The arithmetic flags plus DF, in iced-x86's `RflagsBits` encoding.
pub(crate) const TRACKED: u32 = RflagsBits::OF
    | RflagsBits::SF
    | RflagsBits::ZF
    | RflagsBits::AF
    | RflagsBits::CF
    | RflagsBits::PF
    | RflagsBits::DF;

/// What one instruction does to the tracked flags (iced-x86 bit encoding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FlagEffect {
    /// Flags whose value the instruction consumes.
    pub read: u32,
    /// Flags it certainly overwrites with a defined value.
    pub defines: u32,
    /// Flags it may leave undefined.
    pub undefines: u32,
}

impl FlagEffect {
    /// The maybe-undefined set after the instruction, given the set before.
    pub(crate) fn apply(self, before: u32) -> u32 {
        (before & !self.defines) | self.undefines
    }
}

fn operand_bits(i: &Instruction) -> u32 {
    let bytes = match i.op0_kind() {
        OpKind::Register => i.op0_register().size(),
        _ => i.memory_size().size(),
    };
    (bytes * 8) as u32
}

/// The refined flag effect of `i` (see the module comment).
pub(crate) fn effect(i: &Instruction) -> FlagEffect {
    let read = i.rflags_read() & TRACKED;
    let mut undefines = i.rflags_undefined() & TRACKED;
    let mut defines = i.rflags_modified() & TRACKED & !undefines;
    let m = i.mnemonic();
    if matches!(
        m,
        Mnemonic::Shl
            | Mnemonic::Shr
            | Mnemonic::Sal
            | Mnemonic::Sar
            | Mnemonic::Rol
            | Mnemonic::Ror
            | Mnemonic::Rcl
            | Mnemonic::Rcr
            | Mnemonic::Shld
            | Mnemonic::Shrd
    ) {
        let bits = operand_bits(i);
        let shl_shr = matches!(m, Mnemonic::Shl | Mnemonic::Shr | Mnemonic::Sal);
        let count_op = if matches!(m, Mnemonic::Shld | Mnemonic::Shrd) { 2 } else { 1 };
        if i.op_kind(count_op) == OpKind::Register {
            // Count in CL: it may be zero (no flag changes) or anything.
            defines = 0;
            if shl_shr && bits < 32 {
                undefines |= RflagsBits::CF;
            }
        } else {
            let mask = if bits == 64 { 0x3f } else { 0x1f };
            let count = (i.immediate(count_op) as u32) & mask;
            if count == 0 {
                // A zero count changes no flag.
                defines = 0;
                undefines = 0;
            } else if shl_shr && count >= bits {
                undefines |= RflagsBits::CF;
                defines &= !RflagsBits::CF;
            }
        }
    }
    let rep_compare = (i.has_repe_prefix() || i.has_repne_prefix())
        && matches!(
            m,
            Mnemonic::Cmpsb
                | Mnemonic::Cmpsw
                | Mnemonic::Cmpsd
                | Mnemonic::Cmpsq
                | Mnemonic::Scasb
                | Mnemonic::Scasw
                | Mnemonic::Scasd
                | Mnemonic::Scasq
        );
    if rep_compare {
        defines = 0;
    }
    FlagEffect { read, defines, undefines }
}

/// Converts iced-x86 `RflagsBits` to architectural RFLAGS bits.
pub fn to_rflags(bits: u32) -> u64 {
    [
        (RflagsBits::CF, 0),
        (RflagsBits::PF, 2),
        (RflagsBits::AF, 4),
        (RflagsBits::ZF, 6),
        (RflagsBits::SF, 7),
        (RflagsBits::DF, 10),
        (RflagsBits::OF, 11),
    ]
    .iter()
    .filter(|(iced, _)| bits & iced != 0)
    .fold(0, |acc, (_, bit)| acc | (1 << bit))
}

/// Decodes `code` as loaded at [`CODE`].
pub(crate) fn decode(code: &[u8]) -> Vec<Instruction> {
    Decoder::with_ip(64, code, CODE, DecoderOptions::NONE).into_iter().collect()
}

/// The RFLAGS bits (architectural encoding) that may be undefined when a
/// run of `code` (loaded at [`CODE`]) stops at `end_offset`. All tracked
/// flags if `end_offset` is not the start of a reachable instruction.
pub fn undefined_flags_mask(code: &[u8], end_offset: u64) -> u64 {
    let end = CODE.wrapping_add(end_offset);
    flag_states(code)
        .into_iter()
        .find(|(i, _)| i.ip() == end)
        .and_then(|(_, state)| state)
        .map_or(to_rflags(TRACKED), to_rflags)
}

/// Each instruction of `code` with the maybe-undefined flags (iced-x86
/// encoding) before it; `None` where it can't be reached.
pub(crate) fn flag_states(code: &[u8]) -> Vec<(Instruction, Option<u32>)> {
    let instrs = decode(code);
    let index_of = |ip: u64| instrs.iter().position(|i| i.ip() == ip);
    let mut state: Vec<Option<u32>> = vec![None; instrs.len()];
    if let Some(first) = state.first_mut() {
        *first = Some(0);
    }
    // Forward jumps need one pass; a backward jump needs more. The sets only
    // grow, so this converges within (flags × instructions) passes.
    for _ in 0..=instrs.len() * 8 {
        let mut changed = false;
        for (idx, instr) in instrs.iter().enumerate() {
            let Some(before) = state[idx] else { continue };
            let after = effect(instr).apply(before);
            let mut flow_to = |target: usize| {
                let merged = state[target].unwrap_or(0) | after;
                if state[target] != Some(merged) {
                    state[target] = Some(merged);
                    changed = true;
                }
            };
            let flow = instr.flow_control();
            // A CALL here never returns: a jump that pushes.
            if matches!(flow, FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call)
                && instr.op0_kind() == OpKind::NearBranch64
            {
                if let Some(t) = index_of(instr.near_branch64()) {
                    flow_to(t);
                }
            }
            let falls_through = !matches!(
                flow,
                FlowControl::UnconditionalBranch
                    | FlowControl::IndirectBranch
                    | FlowControl::Return
                    | FlowControl::Exception
                    | FlowControl::Call
                    | FlowControl::IndirectCall
            ) && instr.code() != Code::Ud2;
            if falls_through && idx + 1 < instrs.len() {
                flow_to(idx + 1);
            }
        }
        if !changed {
            break;
        }
    }
    instrs.into_iter().zip(state).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::code_asm::*;

    fn assemble(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
        let mut a = CodeAssembler::new(64).unwrap();
        f(&mut a).unwrap();
        a.ud2().unwrap();
        a.assemble(CODE).unwrap()
    }

    const CF: u64 = 1;
    const PF: u64 = 4;
    const AF: u64 = 0x10;
    const ZF: u64 = 0x40;
    const SF: u64 = 0x80;
    const OF: u64 = 0x800;

    #[test]
    fn last_writer_decides() {
        let code = assemble(|a| {
            a.mul(rcx)?;
            a.add(rax, rdx)
        });
        assert_eq!(undefined_flags_mask(&code, code.len() as u64 - 2), 0);
        let code = assemble(|a| {
            a.add(rax, rdx)?;
            a.mul(rcx)
        });
        assert_eq!(undefined_flags_mask(&code, code.len() as u64 - 2), SF | ZF | AF | PF);
        // Stopping at the MUL (a fault there) means the ADD's flags: none.
        assert_eq!(undefined_flags_mask(&code, 3), 0);
    }

    #[test]
    fn cl_shifts_keep_earlier_undefined_flags() {
        let code = assemble(|a| {
            a.div(rcx)?;
            a.shl(eax, cl)
        });
        assert_eq!(undefined_flags_mask(&code, code.len() as u64 - 2), CF | PF | AF | ZF | SF | OF);
        let code = assemble(|a| a.shr(ax, 17));
        assert_ne!(undefined_flags_mask(&code, code.len() as u64 - 2) & CF, 0);
    }

    #[test]
    fn paths_join_with_or() {
        let code = assemble(|a| {
            let mut skip = a.create_label();
            a.add(rax, rax)?;
            a.jz(skip)?;
            a.bsf(rax, rcx)?;
            a.set_label(&mut skip)?;
            a.nop()
        });
        let end = code.len() as u64 - 2;
        let mask = undefined_flags_mask(&code, end);
        assert_eq!(mask, CF | PF | AF | SF | OF, "BSF's undefined flags may reach the end");
        assert_eq!(undefined_flags_mask(&code, 1), to_rflags(TRACKED), "not an instruction start");
    }
}
