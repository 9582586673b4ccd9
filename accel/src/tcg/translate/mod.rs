//! The frontend: decodes guest code with iced-x86 and lowers it into IR,
//! one instruction family per file.
//!
//! A block ends at a control transfer, at an instruction that changes the
//! CPU mode or must be followed by an interrupt check (those lower to an
//! `ExitTb` themselves), at a page boundary, or after [`MAX_INSNS`].
//! Instructions the frontend does not implement (and undecodable bytes)
//! raise #UD at their RIP; each such mnemonic is logged once.

mod alu;
mod atomic;
mod bits;
pub mod builder;
pub mod cc;
mod cmpxchg_wide;
mod control;
mod misc;
mod mov;
mod muldiv;
mod shift;
mod sse;
mod stack;
mod string;
mod system;
pub(crate) mod x87;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use iced_x86::{Decoder, DecoderError, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, RflagsBits};

use self::builder::IrBuilder;
use super::context::CpuBus;
use super::exception::Exception;
use super::ir::ExitKind;
use super::mmu::CodePages;
use super::state::{hflags, seg, X86State};
use super::tb_cache::TranslationBlock;

/// Most guest instructions in one block.
pub const MAX_INSNS: usize = 64;
const PAGE_MASK: u64 = !0xfff;

/// What lowering an instruction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lowered {
    /// Falls through to the next instruction.
    Next,
    /// Emitted its own block exit.
    End,
    /// Not implemented: the caller raises #UD.
    Unsupported,
}

/// Every mnemonic that raised #UD because it is not implemented, with the
/// count of translations that met it (logged the first time).
pub fn unimplemented_counts() -> HashMap<String, u64> {
    unimplemented().lock().map(|m| m.clone()).unwrap_or_default()
}

fn unimplemented() -> &'static Mutex<HashMap<String, u64>> {
    static MAP: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    MAP.get_or_init(Mutex::default)
}

fn note_unimplemented(insn: &Instruction) {
    let name = format!("{:?}", insn.mnemonic());
    let Ok(mut map) = unimplemented().lock() else { return };
    let count = map.entry(name).or_insert(0);
    if *count == 0 {
        log::warn!(
            "TCG: {:?} ({:?}) is not implemented; the guest gets #UD at {:#x}",
            insn.mnemonic(),
            insn.code(),
            insn.ip()
        );
    }
    *count += 1;
}

/// The code bytes of one instruction, fetched through the MMU.
struct Window {
    bytes: [u8; 15],
    len: usize,
    /// The fault that stopped the fetch before 15 bytes, if any.
    fault: Option<Exception>,
}

fn fetch_window(
    mem: &mut dyn CpuBus,
    state: &mut X86State,
    code_pages: &CodePages,
    linear: u64,
    wrap32: bool,
) -> Window {
    let mut w = Window { bytes: [0; 15], len: 0, fault: None };
    let first = match mem.fetch_code(state, linear, &mut w.bytes) {
        Ok(n) => n,
        Err(e) => {
            w.fault = Some(e);
            return w;
        }
    };
    w.len = first;
    if first < w.bytes.len() {
        // The window runs into the next page: mark it as code before
        // reading it (self-modifying-code ordering), fault only if needed.
        let mut next = linear.wrapping_add(first as u64);
        if wrap32 {
            next &= 0xffff_ffff;
        }
        let more = mem.translate_code(state, next).and_then(|phys| {
            code_pages.mark(phys >> 12);
            mem.fetch_code(state, next, &mut w.bytes[first..])
        });
        match more {
            Ok(n) => w.len += n,
            Err(e) => w.fault = Some(e),
        }
    }
    w
}

const ARITH_FLAGS: u32 =
    RflagsBits::OF | RflagsBits::SF | RflagsBits::ZF | RflagsBits::AF | RflagsBits::CF | RflagsBits::PF;

/// Whether `insn` touches no memory and raises nothing: register-only
/// forms of instructions that can't fault (LEA computes an address only).
fn cannot_fault(insn: &Instruction) -> bool {
    use Mnemonic as M;
    let no_memory = insn.mnemonic() == M::Lea
        || (0..insn.op_count()).all(|i| insn.try_op_kind(i).is_ok_and(|k| k != OpKind::Memory));
    no_memory
        && insn.flow_control() == FlowControl::Next
        && matches!(
            insn.mnemonic(),
            M::Add
                | M::Adc
                | M::Sub
                | M::Sbb
                | M::And
                | M::Or
                | M::Xor
                | M::Cmp
                | M::Test
                | M::Inc
                | M::Dec
                | M::Neg
                | M::Not
                | M::Mov
                | M::Movzx
                | M::Movsx
                | M::Movsxd
                | M::Lea
                | M::Xchg
                | M::Imul
                | M::Bswap
                | M::Shl
                | M::Sal
                | M::Shr
                | M::Sar
                | M::Rol
                | M::Ror
                | M::Cbw
                | M::Cwde
                | M::Cdqe
                | M::Cwd
                | M::Cdq
                | M::Cqo
                | M::Nop
        )
}

/// Whether `insn` replaces all six arithmetic flags whatever its operands
/// (not shifts and rotates, whose count may be 0; not INC/DEC: CF stays).
fn writes_all_flags(insn: &Instruction) -> bool {
    use Mnemonic as M;
    matches!(
        insn.mnemonic(),
        M::Add | M::Adc | M::Sub | M::Sbb | M::And | M::Or | M::Xor | M::Cmp | M::Test | M::Neg | M::Imul
    ) && insn.rflags_modified() & ARITH_FLAGS == ARITH_FLAGS
}

/// Whether the flags `insns[i]` computes are dead: a later instruction of
/// the block overwrites all of them before any reads them, and nothing in
/// between (that one included) can fault, so no exception handler or block
/// exit can observe them. `insns[i]` itself must not store (a store may end
/// the block early: the self-modifying-code check); if it faults, its
/// flags are not committed anyway.
fn flags_dead_after(insns: &[Instruction], i: usize) -> bool {
    let Some(this) = insns.get(i) else { return false };
    let dest_in_memory = this.try_op_kind(0).is_ok_and(|k| k == OpKind::Memory);
    let stores = (dest_in_memory && !matches!(this.mnemonic(), Mnemonic::Cmp | Mnemonic::Test))
        || this.stack_pointer_increment() != 0;
    if stores || this.flow_control() != FlowControl::Next {
        return false;
    }
    for next in &insns[i + 1..] {
        if next.rflags_read() & ARITH_FLAGS != 0 || !cannot_fault(next) {
            return false;
        }
        if writes_all_flags(next) {
            return true;
        }
    }
    false
}

/// Whether lowering must stop the block after `insn` even if it falls through.
fn ends_block(insn: &Instruction) -> bool {
    insn.flow_control() != FlowControl::Next
}

/// Translates the block at `rip` (CS-relative; linear = CS base + rip,
/// physical `phys_pc`). An instruction-fetch fault on the first instruction
/// is returned as the error; later ones end the block before it.
pub fn translate_block(
    mem: &mut dyn CpuBus,
    state: &mut X86State,
    code_pages: &CodePages,
    rip: u64,
    phys_pc: u64,
) -> Result<TranslationBlock, Exception> {
    let flags = state.hflags;
    let (bitness, cs_base) = if flags & hflags::CS64 != 0 {
        (64, 0)
    } else if flags & hflags::CS32 != 0 {
        (32, state.segs[seg::CS].base)
    } else {
        (16, state.segs[seg::CS].base)
    };
    let wrap32 = bitness != 64;
    let start_linear = cs_base.wrapping_add(rip);
    let first_page = start_linear & PAGE_MASK;
    let mut pages = vec![phys_pc & PAGE_MASK];
    code_pages.mark(phys_pc >> 12);

    // Decode first (lookahead for flag liveness), then lower.
    let mut insns: Vec<Instruction> = Vec::new();
    let mut undecodable = None;
    let mut pc = rip;
    while insns.len() < MAX_INSNS {
        let linear = cs_base.wrapping_add(pc);
        let w = fetch_window(mem, state, code_pages, linear, wrap32);
        let mut decoder = Decoder::with_ip(bitness, &w.bytes[..w.len], pc, DecoderOptions::NONE);
        let insn = decoder.decode();
        if insn.is_invalid() {
            match (decoder.last_error(), w.fault) {
                (DecoderError::NoMoreBytes, Some(fault)) => {
                    if insns.is_empty() {
                        return Err(fault);
                    }
                }
                _ => undecodable = Some(pc),
            }
            break;
        }
        let last_byte = linear.wrapping_add(insn.len() as u64 - 1);
        let crosses = last_byte & PAGE_MASK != first_page;
        if crosses {
            let phys = mem.translate_code(state, last_byte & PAGE_MASK)?;
            if !pages.contains(&(phys & PAGE_MASK)) {
                pages.push(phys & PAGE_MASK);
            }
        }
        pc = insn.next_ip();
        if bitness == 16 {
            pc &= 0xffff;
        }
        let stop = ends_block(&insn) || crosses || (cs_base.wrapping_add(pc) & PAGE_MASK) != first_page;
        insns.push(insn);
        if stop {
            break;
        }
    }

    let mut b = IrBuilder::new(flags);
    let mut ended = false;
    let mut guest_len = 0u64;
    for (i, insn) in insns.iter().enumerate() {
        let mut next = insn.next_ip();
        if bitness == 16 {
            next &= 0xffff;
        }
        b.begin_insn(insn.ip(), next);
        guest_len += insn.len() as u64;
        b.flags_dead = flags_dead_after(&insns, i);
        let lowered = if cmpxchg_wide::claims(insn) {
            cmpxchg_wide::lower(&mut b, insn)
        } else if insn.has_lock_prefix() {
            atomic::lower(&mut b, insn)
        } else {
            lower(&mut b, insn)
        };
        match lowered {
            Lowered::Next if ends_block(insn) && i + 1 == insns.len() => {
                b.goto_tb(1, next);
                ended = true;
            }
            Lowered::Next => {}
            Lowered::End => {
                ended = true;
                break;
            }
            Lowered::Unsupported => {
                note_unimplemented(insn);
                b.exit(ExitKind::Raise(Exception::ud()));
                ended = true;
                break;
            }
        }
    }
    if !ended {
        if let Some(pc) = undecodable {
            b.begin_insn(pc, pc.wrapping_add(1));
            b.exit(ExitKind::Raise(Exception::ud()));
        } else {
            let next = insns.last().map_or(rip, |i| if bitness == 16 { i.next_ip() & 0xffff } else { i.next_ip() });
            b.goto_tb(1, next);
        }
    }
    let (ops, num_temps, label_pos) = b.finish();
    if dump_requested(rip) {
        let compiled = super::bytecode::compile(&ops, num_temps, &label_pos);
        let mut text = format!(
            "TCG: block at {rip:#x} ({} instructions, {} ops, {} compiled):\n",
            insns.len(),
            ops.len(),
            compiled.len()
        );
        for insn in &insns {
            text.push_str(&format!("  {:#x} {insn}\n", insn.ip()));
        }
        for op in &ops {
            text.push_str(&format!("    {op:?}\n"));
        }
        text.push_str("  compiled:\n");
        text.push_str(&compiled.dump());
        log::info!("{text}");
    }
    Ok(TranslationBlock::new(
        rip,
        cs_base,
        flags & hflags::TB_KEY_MASK,
        phys_pc,
        pages,
        guest_len,
        ops,
        num_temps,
        label_pos,
    ))
}

/// Whether `RXVMM_TCG_DUMP_IR` (comma-separated hex RIPs, bring-up aid)
/// asks for the IR of the block at `rip` to be logged.
fn dump_requested(rip: u64) -> bool {
    static RIPS: OnceLock<Vec<u64>> = OnceLock::new();
    let rips = RIPS.get_or_init(|| {
        std::env::var("RXVMM_TCG_DUMP_IR")
            .map(|v| {
                v.split(',').filter_map(|r| u64::from_str_radix(r.trim().trim_start_matches("0x"), 16).ok()).collect()
            })
            .unwrap_or_default()
    });
    !rips.is_empty() && rips.contains(&rip)
}

/// Lowers one instruction (no LOCK prefix) by family.
fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    use Mnemonic as M;
    match insn.mnemonic() {
        // SSE/SSE2 first: it takes the SSE2 codes of the MOVSD/CMPSD mnemonics.
        _ if sse::claims(insn) => sse::lower(b, insn),
        M::Add
        | M::Adc
        | M::Sub
        | M::Sbb
        | M::And
        | M::Or
        | M::Xor
        | M::Cmp
        | M::Test
        | M::Inc
        | M::Dec
        | M::Neg
        | M::Not
        | M::Adcx
        | M::Adox => alu::lower(b, insn),
        M::Mov
        | M::Movzx
        | M::Movsx
        | M::Movsxd
        | M::Lea
        | M::Xchg
        | M::Cmovo
        | M::Cmovno
        | M::Cmovb
        | M::Cmovae
        | M::Cmove
        | M::Cmovne
        | M::Cmovbe
        | M::Cmova
        | M::Cmovs
        | M::Cmovns
        | M::Cmovp
        | M::Cmovnp
        | M::Cmovl
        | M::Cmovge
        | M::Cmovle
        | M::Cmovg
        | M::Seto
        | M::Setno
        | M::Setb
        | M::Setae
        | M::Sete
        | M::Setne
        | M::Setbe
        | M::Seta
        | M::Sets
        | M::Setns
        | M::Setp
        | M::Setnp
        | M::Setl
        | M::Setge
        | M::Setle
        | M::Setg
        | M::Bswap
        | M::Cbw
        | M::Cwde
        | M::Cdqe
        | M::Cwd
        | M::Cdq
        | M::Cqo
        | M::Movbe => mov::lower(b, insn),
        M::Push
        | M::Pop
        | M::Pushf
        | M::Pushfd
        | M::Pushfq
        | M::Popf
        | M::Popfd
        | M::Popfq
        | M::Lahf
        | M::Sahf
        | M::Enter
        | M::Leave => stack::lower(b, insn),
        M::Shl | M::Sal | M::Shr | M::Sar | M::Rol | M::Ror | M::Rcl | M::Rcr | M::Shld | M::Shrd => {
            shift::lower(b, insn)
        }
        M::Mul | M::Imul | M::Div | M::Idiv => muldiv::lower(b, insn),
        M::Cmpxchg | M::Xadd => atomic::lower(b, insn),
        M::Bt | M::Bts | M::Btr | M::Btc | M::Bsf | M::Bsr | M::Tzcnt | M::Lzcnt | M::Popcnt => bits::lower(b, insn),
        M::Jmp
        | M::Call
        | M::Ret
        | M::Loop
        | M::Loope
        | M::Loopne
        | M::Jcxz
        | M::Jecxz
        | M::Jrcxz
        | M::Jo
        | M::Jno
        | M::Jb
        | M::Jae
        | M::Je
        | M::Jne
        | M::Jbe
        | M::Ja
        | M::Js
        | M::Jns
        | M::Jp
        | M::Jnp
        | M::Jl
        | M::Jge
        | M::Jle
        | M::Jg => control::lower(b, insn),
        M::Movsb
        | M::Movsw
        | M::Movsd
        | M::Movsq
        | M::Stosb
        | M::Stosw
        | M::Stosd
        | M::Stosq
        | M::Lodsb
        | M::Lodsw
        | M::Lodsd
        | M::Lodsq
        | M::Cmpsb
        | M::Cmpsw
        | M::Cmpsd
        | M::Cmpsq
        | M::Scasb
        | M::Scasw
        | M::Scasd
        | M::Scasq
        | M::Insb
        | M::Insw
        | M::Insd
        | M::Outsb
        | M::Outsw
        | M::Outsd => string::lower(b, insn),
        m if x87::handles(m) => x87::lower(b, insn),
        _ => match misc::lower(b, insn) {
            Lowered::Unsupported => system::lower(b, insn),
            done => done,
        },
    }
}
