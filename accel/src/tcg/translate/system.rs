//! System instructions, lowered to calls into the `system`, `segmentation`
//! and `interrupts` helpers: MOV to/from CRn/DRn/Sreg, POP Sreg, LDS/LES/
//! LFS/LGS/LSS, far JMP/CALL/RET, IRET, LGDT/LIDT/SGDT/SIDT, LLDT/LTR/
//! SLDT/STR, CPUID, RDMSR/WRMSR, RDTSC/RDTSCP, SYSCALL/SYSRET/SWAPGS,
//! INVLPG, CLTS, LMSW/SMSW, WBINVD/INVD.
//!
//! Anything that can change the mode ends the block (RIP stored, lookup).

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::builder::{seg_selector_offset, IrBuilder};
use super::Lowered;
use crate::tcg::apic::CpuApic;
use crate::tcg::context::CpuContext;
use crate::tcg::exception::Exception;
use crate::tcg::flags::OpSize;
use crate::tcg::ir::{BinOp, ExitKind, Helper, MemSize, StateParts, Temp};
use crate::tcg::state::{hflags, reg, seg};
use crate::tcg::{interrupts, segmentation, system};

fn arg(args: &[u64], i: usize) -> u64 {
    args.get(i).copied().unwrap_or(0)
}

/// Ends the block after the current instruction.
fn end(b: &mut IrBuilder) -> Lowered {
    b.set_rip(b.insn.next_pc);
    b.exit(ExitKind::Lookup);
    Lowered::End
}

/// Ends the block with RIP as the helper left it (far transfers, IRET).
fn end_at_stored_rip(b: &mut IrBuilder) -> Lowered {
    b.exit(ExitKind::Lookup);
    Lowered::End
}

fn seg_index(r: Register) -> usize {
    (r as usize).wrapping_sub(Register::ES as usize).min(seg::GS)
}

fn apply(ctx: &mut CpuContext<'_>, effect: system::SystemEffect) {
    if effect.flush_tlb() {
        ctx.mem.flush_tlb(effect.flush_global());
    }
}

/// MOV with a segment, control or debug register operand.
pub(super) fn lower_mov_special(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let (Ok(r0), r1) = (insn.try_op_register(0), insn.try_op_register(1)) else { return Lowered::Unsupported };
    let cpl0 = b.hflags & hflags::CPL_MASK == 0;
    if insn.try_op_kind(0).is_ok_and(|k| k == OpKind::Register) && r0.is_segment_register() {
        let sel = if insn.try_op_kind(1).is_ok_and(|k| k == OpKind::Memory) {
            let addr = b.ea(insn);
            b.load(addr, OpSize::B2)
        } else {
            let Ok(r) = r1 else { return Lowered::Unsupported };
            b.read_reg(r)
        };
        let i = b.movi(seg_index(r0) as u64);
        b.call(&LOAD_SEG, &[i, sel]);
        return end(b);
    }
    let Ok(r1) = r1 else {
        // MOV m16, Sreg.
        let Ok(r) = insn.try_op_register(1) else { return Lowered::Unsupported };
        let v = b.ld_env(seg_selector_offset(seg_index(r)), MemSize::B2);
        let addr = b.ea(insn);
        b.store(v, addr, OpSize::B2);
        return Lowered::Next;
    };
    if r1.is_segment_register() {
        let v = b.ld_env(seg_selector_offset(seg_index(r1)), MemSize::B2);
        b.write_reg(r0, v);
        return Lowered::Next;
    }
    if !cpl0 {
        b.exit(ExitKind::Raise(Exception::gp0()));
        return Lowered::End;
    }
    if r0.is_cr() {
        let n = b.movi((r0 as u64) - (Register::CR0 as u64));
        let v = b.read_reg(r1);
        b.call(&WRITE_CR, &[n, v]);
        return end(b);
    }
    if r1.is_cr() {
        let n = b.movi((r1 as u64) - (Register::CR0 as u64));
        let v = b.call(&READ_CR, &[n]);
        b.write_reg(r0, v);
        return Lowered::Next;
    }
    // Debug registers: stored, not acted on (no hardware breakpoints).
    if r0.is_dr() {
        let n = b.movi((r0 as u64) - (Register::DR0 as u64));
        let v = b.read_reg(r1);
        b.call(&WRITE_DR, &[n, v]);
        return end(b);
    }
    let n = b.movi((r1 as u64) - (Register::DR0 as u64));
    let v = b.call(&READ_DR, &[n]);
    b.write_reg(r0, v);
    Lowered::Next
}

/// POP into a segment register.
pub(super) fn lower_pop_sreg(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let Ok(r) = insn.try_op_register(0) else { return Lowered::Unsupported };
    let size = OpSize::from_bytes(insn.stack_pointer_increment().unsigned_abs() as usize).unwrap_or(OpSize::B8);
    let sp = b.read_sp();
    let (v, new_sp) = b.pop_value(sp, size);
    let i = b.movi(seg_index(r) as u64);
    b.call(&LOAD_SEG, &[i, v]);
    b.commit_sp(new_sp);
    end(b)
}

/// The far pointer of a memory operand: (offset, selector, operand size).
fn far_pointer(b: &mut IrBuilder, insn: &Instruction) -> Option<(Temp, Temp, u64)> {
    let total = insn.memory_size().size();
    let size = OpSize::from_bytes(total.checked_sub(2)?)?;
    let addr = b.ea(insn);
    let off = b.load(addr, size);
    let sel_addr = b.bini(BinOp::Add, addr, size as u64);
    let sel = b.load(sel_addr, OpSize::B2);
    Some((off, sel, size as u64))
}

/// Far JMP/CALL (direct ptr16:xx or memory m16:xx).
pub(super) fn lower_far(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    let (off, sel, size) = match insn.try_op_kind(0) {
        Ok(OpKind::FarBranch16) => {
            (b.movi(u64::from(insn.far_branch16())), b.movi(u64::from(insn.far_branch_selector())), 2)
        }
        Ok(OpKind::FarBranch32) => {
            (b.movi(u64::from(insn.far_branch32())), b.movi(u64::from(insn.far_branch_selector())), 4)
        }
        Ok(OpKind::Memory) => {
            let Some(p) = far_pointer(b, insn) else { return Lowered::Unsupported };
            p
        }
        _ => return Lowered::Unsupported,
    };
    let size = b.movi(size);
    if insn.mnemonic() == Mnemonic::Jmp {
        b.call(&FAR_JUMP, &[sel, off, size]);
    } else {
        let ret = b.movi(b.insn.next_pc);
        b.call(&FAR_CALL, &[sel, off, size, ret]);
    }
    end_at_stored_rip(b)
}

pub(super) fn lower(b: &mut IrBuilder, insn: &Instruction) -> Lowered {
    use Mnemonic as M;
    let m = insn.mnemonic();
    let cpl0 = b.hflags & hflags::CPL_MASK == 0;
    let privileged =
        matches!(m, M::Lgdt | M::Lidt | M::Lldt | M::Ltr | M::Invlpg | M::Wbinvd | M::Invd | M::Clts | M::Lmsw);
    if privileged && !cpl0 {
        b.exit(ExitKind::Raise(Exception::gp0()));
        return Lowered::End;
    }
    match m {
        M::Iret | M::Iretd | M::Iretq => {
            let size = match m {
                M::Iret => 2,
                M::Iretd => 4,
                _ => 8,
            };
            let size = b.movi(size);
            b.call(&IRET, &[size]);
            end_at_stored_rip(b)
        }
        M::Retf => {
            let size = match insn.code() {
                Code::Retfw | Code::Retfw_imm16 => 2,
                Code::Retfd | Code::Retfd_imm16 => 4,
                _ => 8,
            };
            let size = b.movi(size);
            let pop = b.movi(insn.try_immediate(0).unwrap_or(0) & 0xffff);
            b.call(&FAR_RET, &[size, pop]);
            end_at_stored_rip(b)
        }
        M::Lds | M::Les | M::Lfs | M::Lgs | M::Lss => {
            let Some((off, sel, _)) = far_pointer(b, insn) else { return Lowered::Unsupported };
            let s = match m {
                M::Lds => seg::DS,
                M::Les => seg::ES,
                M::Lfs => seg::FS,
                M::Lgs => seg::GS,
                _ => seg::SS,
            };
            let i = b.movi(s as u64);
            b.call(&LOAD_SEG, &[i, sel]);
            let Ok(r) = insn.try_op_register(0) else { return Lowered::Unsupported };
            b.write_reg(r, off);
            end(b)
        }
        M::Lgdt | M::Lidt | M::Sgdt | M::Sidt => {
            let addr = b.ea(insn);
            let size = if b.code64() {
                8
            } else if matches!(insn.code(), Code::Lgdt_m1632_16 | Code::Lidt_m1632_16) {
                2
            } else {
                4
            };
            let which = match m {
                M::Lgdt => 0,
                M::Lidt => 1,
                M::Sgdt => 2,
                _ => 3,
            };
            let mode = b.movi(which | size << 8);
            b.call(&DESCRIPTOR_TABLE, &[addr, mode]);
            if matches!(m, M::Lgdt | M::Lidt) {
                end(b)
            } else {
                Lowered::Next
            }
        }
        M::Lldt | M::Ltr => {
            let Some(sel) = b.read_operand(insn, 0, OpSize::B2) else { return Lowered::Unsupported };
            let which = b.movi(u64::from(m == M::Ltr));
            b.call(&LOAD_SYSTEM_SEG, &[sel, which]);
            end(b)
        }
        M::Sldt | M::Str | M::Smsw => {
            let which = b.movi(match m {
                M::Sldt => 0,
                M::Str => 1,
                _ => 2,
            });
            let v = b.call(&STORE_SYSTEM_REG, &[which]);
            let Some(loc) = b.loc(insn, 0) else { return Lowered::Unsupported };
            let size = super::builder::operand_size(insn, 0).unwrap_or(OpSize::B2);
            b.write_loc(loc, size, v);
            Lowered::Next
        }
        M::Lmsw => {
            let Some(v) = b.read_operand(insn, 0, OpSize::B2) else { return Lowered::Unsupported };
            b.call(&LMSW, &[v]);
            end(b)
        }
        M::Clts => {
            b.call(&CLTS, &[]);
            end(b)
        }
        M::Cpuid => {
            b.call(&CPUID, &[]);
            Lowered::Next
        }
        M::Rdmsr => {
            b.call(&RDMSR, &[]);
            Lowered::Next
        }
        M::Wrmsr => {
            b.call(&WRMSR, &[]);
            end(b)
        }
        M::Rdtsc | M::Rdtscp => {
            let aux = b.movi(u64::from(m == M::Rdtscp));
            b.call(&RDTSC, &[aux]);
            Lowered::Next
        }
        M::Syscall => {
            let next = b.movi(b.insn.next_pc);
            b.call(&SYSCALL, &[next]);
            end_at_stored_rip(b)
        }
        M::Sysret | M::Sysretq => {
            let size = b.movi(if insn.code() == Code::Sysretq { 8 } else { 4 });
            b.call(&SYSRET, &[size]);
            end_at_stored_rip(b)
        }
        M::Swapgs => {
            b.call(&SWAPGS, &[]);
            Lowered::Next
        }
        M::Invlpg => {
            let addr = b.ea(insn);
            b.call(&INVLPG, &[addr]);
            end(b)
        }
        M::Wbinvd | M::Invd => Lowered::Next,
        _ => Lowered::Unsupported,
    }
}

fn helper_load_seg(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let i = (arg(args, 0) as usize).min(seg::GS);
    segmentation::load_segment(ctx.state, &mut *ctx.mem, i, arg(args, 1) as u16)?;
    if i == seg::SS {
        ctx.state.hflags |= hflags::INHIBIT_IRQ;
    }
    Ok(0)
}

fn helper_far_jump(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    segmentation::far_jump(ctx.state, &mut *ctx.mem, arg(args, 0) as u16, arg(args, 1), arg(args, 2) as u8)?;
    Ok(0)
}

fn helper_far_call(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let (sel, off, size, ret) = (arg(args, 0) as u16, arg(args, 1), arg(args, 2) as u8, arg(args, 3));
    segmentation::far_call(ctx.state, &mut *ctx.mem, sel, off, size, ret)?;
    Ok(0)
}

fn helper_far_ret(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    segmentation::far_return(ctx.state, &mut *ctx.mem, arg(args, 0) as u8, arg(args, 1) as u16)?;
    Ok(0)
}

fn helper_iret(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    interrupts::iret(ctx.state, &mut *ctx.mem, arg(args, 0) as u8)?;
    Ok(0)
}

fn helper_write_cr(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let (n, value) = (arg(args, 0) as u8, arg(args, 1));
    let effect = system::write_cr(ctx.state, n, value)?;
    // CR8 is the LAPIC's TPR (SDM 11.8.6.1).
    if let (8, Some(apic)) = (n, ctx.apic) {
        apic.set_cr8(value);
    }
    apply(ctx, effect);
    Ok(0)
}

fn helper_read_cr(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let n = arg(args, 0) as u8;
    let v = system::read_cr(ctx.state, n)?;
    Ok(match (n, ctx.apic) {
        (8, Some(apic)) => apic.cr8(),
        _ => v,
    })
}

/// `args`: linear address, which (LGDT, LIDT, SGDT, SIDT) | operand size << 8.
fn helper_descriptor_table(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let (addr, mode) = (arg(args, 0), arg(args, 1));
    let size = (mode >> 8) as u8;
    let mem = &mut *ctx.mem;
    match mode & 0xff {
        0 => system::lgdt(ctx.state, mem, addr, size)?,
        1 => system::lidt(ctx.state, mem, addr, size)?,
        2 => system::sgdt(ctx.state, mem, addr)?,
        _ => system::sidt(ctx.state, mem, addr)?,
    }
    Ok(0)
}

/// SLDT (0), STR (1), SMSW (2).
fn helper_store_system_reg(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    Ok(match arg(args, 0) {
        0 => u64::from(system::sldt(ctx.state)?),
        1 => u64::from(system::str(ctx.state)?),
        _ => system::smsw(ctx.state),
    })
}

fn helper_read_dr(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    system::read_dr(ctx.state, arg(args, 0) as u8)
}

fn helper_write_dr(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let effect = system::write_dr(ctx.state, arg(args, 0) as u8, arg(args, 1))?;
    apply(ctx, effect);
    Ok(0)
}

fn helper_load_system_seg(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let sel = arg(args, 0) as u16;
    if arg(args, 1) == 0 {
        system::lldt(ctx.state, &mut *ctx.mem, sel)?;
    } else {
        system::ltr(ctx.state, &mut *ctx.mem, sel)?;
    }
    Ok(0)
}

fn helper_lmsw(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    let effect = system::lmsw(ctx.state, arg(args, 0) as u16)?;
    apply(ctx, effect);
    Ok(0)
}

fn helper_clts(ctx: &mut CpuContext<'_>, _: &[u64]) -> Result<u64, Exception> {
    let effect = system::clts(ctx.state)?;
    apply(ctx, effect);
    Ok(0)
}

fn helper_cpuid(ctx: &mut CpuContext<'_>, _: &[u64]) -> Result<u64, Exception> {
    let g = &ctx.state.gpr;
    let r =
        system::cpuid(ctx.state, u32::from(ctx.cpu_id), u32::from(ctx.vcpus), g[reg::RAX] as u32, g[reg::RCX] as u32);
    for (i, v) in [reg::RAX, reg::RBX, reg::RCX, reg::RDX].into_iter().zip(r) {
        ctx.state.gpr[i] = u64::from(v);
    }
    Ok(0)
}

/// The LAPIC's MSRs (IA32_APIC_BASE, IA32_TSC_DEADLINE, x2APIC registers)
/// go to the vCPU's LAPIC when the VM has one; everything else to `system`.
fn lapic_msr<'a>(ctx: &CpuContext<'a>, msr: u32) -> Result<Option<&'a CpuApic>, Exception> {
    match ctx.apic {
        Some(apic) if CpuApic::handles_msr(msr) => {
            if ctx.state.cpl() != 0 {
                return Err(Exception::gp0());
            }
            Ok(Some(apic))
        }
        _ => Ok(None),
    }
}

/// IA32_TSC_ADJUST: how far this vCPU's TSC was moved from the VM's clock
/// (by IA32_TSC or IA32_TSC_ADJUST writes), i.e. its `tsc_offset` relative
/// to the power-up one. Advertised so that Linux trusts the TSC without
/// its clocksource watchdog, which an emulator's late timer ticks upset.
const MSR_IA32_TSC_ADJUST: u32 = 0x3b;

fn tsc_base(ctx: &CpuContext<'_>) -> i64 {
    ctx.apic.map_or(0, CpuApic::clock_tsc_offset)
}

fn helper_rdmsr(ctx: &mut CpuContext<'_>, _: &[u64]) -> Result<u64, Exception> {
    let msr = ctx.state.gpr[reg::RCX] as u32;
    let v = match lapic_msr(ctx, msr)? {
        Some(apic) => apic.rdmsr(msr, ctx.state.msr.tsc_offset)?,
        None if msr == MSR_IA32_TSC_ADJUST && ctx.state.cpl() == 0 => {
            ctx.state.msr.tsc_offset.wrapping_sub(tsc_base(ctx)) as u64
        }
        None => system::rdmsr(ctx.state, msr)?,
    };
    ctx.state.gpr[reg::RAX] = v & 0xffff_ffff;
    ctx.state.gpr[reg::RDX] = v >> 32;
    Ok(0)
}

fn helper_wrmsr(ctx: &mut CpuContext<'_>, _: &[u64]) -> Result<u64, Exception> {
    let g = &ctx.state.gpr;
    let (msr, v) = (g[reg::RCX] as u32, (g[reg::RDX] << 32) | (g[reg::RAX] & 0xffff_ffff));
    if let Some(apic) = lapic_msr(ctx, msr)? {
        apic.wrmsr(msr, v, ctx.state.msr.tsc_offset)?;
        ctx.state.msr.apic_base = apic.apic_base();
        return Ok(0);
    }
    if msr == MSR_IA32_TSC_ADJUST && ctx.state.cpl() == 0 {
        ctx.state.msr.tsc_offset = tsc_base(ctx).wrapping_add(v as i64);
        if let Some(apic) = ctx.apic {
            // TSC-deadline values are on the vCPU's TSC: re-arm on the new one.
            apic.timers_changed();
        }
        return Ok(0);
    }
    let effect = system::wrmsr(ctx.state, msr, v)?;
    apply(ctx, effect);
    Ok(0)
}

fn helper_rdtsc(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    system::check_rdtsc(ctx.state)?;
    let (t, aux) = system::rdtscp(ctx.state);
    ctx.state.gpr[reg::RAX] = t & 0xffff_ffff;
    ctx.state.gpr[reg::RDX] = t >> 32;
    if arg(args, 0) != 0 {
        ctx.state.gpr[reg::RCX] = u64::from(aux);
    }
    Ok(0)
}

fn helper_syscall(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    system::syscall(ctx.state, arg(args, 0))?;
    Ok(0)
}

fn helper_sysret(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    system::sysret(ctx.state, arg(args, 0) as u8)?;
    Ok(0)
}

fn helper_swapgs(ctx: &mut CpuContext<'_>, _: &[u64]) -> Result<u64, Exception> {
    system::swapgs(ctx.state)?;
    Ok(0)
}

fn helper_invlpg(ctx: &mut CpuContext<'_>, args: &[u64]) -> Result<u64, Exception> {
    ctx.mem.flush_tlb_page(arg(args, 0));
    Ok(0)
}

macro_rules! helper {
    ($name:ident, $f:ident, $fault:expr, $reads:expr, $writes:expr) => {
        static $name: Helper =
            Helper { name: stringify!($f), func: $f, may_fault: $fault, reads: $reads, writes: $writes };
    };
}

const ALL: StateParts = StateParts::ALL;
const GPRS: StateParts = StateParts::GPRS;
const SYS: StateParts = StateParts::SYSTEM;
helper!(LOAD_SEG, helper_load_seg, true, ALL, StateParts::SEGS.union(SYS));
helper!(FAR_JUMP, helper_far_jump, true, ALL, ALL);
helper!(FAR_CALL, helper_far_call, true, ALL, ALL);
helper!(FAR_RET, helper_far_ret, true, ALL, ALL);
helper!(IRET, helper_iret, true, ALL, ALL);
helper!(WRITE_CR, helper_write_cr, true, SYS, SYS);
helper!(READ_CR, helper_read_cr, true, SYS, StateParts::NONE);
helper!(DESCRIPTOR_TABLE, helper_descriptor_table, true, SYS, SYS);
helper!(STORE_SYSTEM_REG, helper_store_system_reg, true, SYS, StateParts::NONE);
helper!(READ_DR, helper_read_dr, true, SYS, StateParts::NONE);
helper!(WRITE_DR, helper_write_dr, true, SYS, SYS);
helper!(LOAD_SYSTEM_SEG, helper_load_system_seg, true, ALL, SYS);
helper!(LMSW, helper_lmsw, true, SYS, SYS);
helper!(CLTS, helper_clts, true, SYS, SYS);
helper!(CPUID, helper_cpuid, false, GPRS.union(SYS), GPRS);
helper!(RDMSR, helper_rdmsr, true, ALL, GPRS);
helper!(WRMSR, helper_wrmsr, true, ALL, SYS.union(StateParts::SEGS));
helper!(RDTSC, helper_rdtsc, true, SYS, GPRS);
helper!(SYSCALL, helper_syscall, true, ALL, ALL);
helper!(SYSRET, helper_sysret, true, ALL, ALL);
helper!(SWAPGS, helper_swapgs, true, SYS, StateParts::SEGS.union(SYS));
helper!(INVLPG, helper_invlpg, false, SYS, StateParts::NONE);
