//! `TcgVcpu`: the vCPU main loop (QEMU's `cpu_exec`): kicks and INIT/SIPI,
//! external interrupts, HLT parking, block lookup/translation, execution,
//! exception delivery.

use std::sync::Arc;
use std::time::Instant;

use vm_memory::GuestMemoryMmap;

use super::apic::CpuApic;
use super::bytecode;
use super::context::{CpuBus, CpuContext};
use super::exception::{vector, Exception};
use super::interp::TbExit;
use super::mmu::{CodePages, CpuMemory};
use super::profile::Profiler;
use super::signals::VcpuSignals;
use super::state::{hflags, rflags, seg, SegmentCache, X86State};
use super::stats::{self, Counter, TcgStats};
use super::tb_cache::{Found, JumpCache, TbCache, TranslationBlock};
use super::vm::IoDispatch;
use super::{interrupts, jit, translate, vcpu_state};
use crate::{CpuState, VcpuExit, VcpuKicker};

/// Blocks run between two looks at the clock for due timers: reading it
/// costs about as much as a short block, and a timer fires at most this
/// many blocks late (microseconds).
const TIMER_CHECK_BLOCKS: u32 = 32;

/// Whether the vCPU executes or waits for a startup IPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    Running,
    WaitForSipi,
}

pub struct TcgVcpu {
    id: u8,
    vcpus: u8,
    state: X86State,
    mem: CpuMemory,
    io: Arc<IoDispatch>,
    signals: Arc<VcpuSignals>,
    apic: Arc<CpuApic>,
    code_pages: Arc<CodePages>,
    tb_cache: Arc<TbCache>,
    jump_cache: JumpCache,
    temps: Vec<u64>,
    /// `CodePages` generation the TB cache was last synced at.
    seen_code_generation: u64,
    activity: Activity,
    /// An interrupt may be pending: ask the APIC bus once RFLAGS.IF allows.
    irq_hint: bool,
    /// An NMI is pending (taken whatever RFLAGS.IF says).
    nmi_hint: bool,
    /// When the timers this vCPU polls next need it (cached: reading it
    /// takes the timers' locks).
    timer_deadline: Option<Instant>,
    /// Blocks left before the next look at the clock.
    timer_countdown: u32,
    /// Guest-RIP sampling (`RXVMM_TCG_PROFILE`), off normally.
    profiler: Option<Box<Profiler>>,
    /// This vCPU's share of the statistics, added to the totals on drop.
    counts: TcgStats,
    /// The compiled block (address) and `GotoTb` slot that last left to the
    /// loop: the next block dispatched may be linked to it.
    unlinked_edge: Option<(usize, u8)>,
}

/// What one step of the main loop asks the caller to do.
enum Step {
    Continue,
    Exit(VcpuExit),
}

impl TcgVcpu {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        id: u8,
        vcpus: u8,
        memory: GuestMemoryMmap,
        io: Arc<IoDispatch>,
        signals: Arc<VcpuSignals>,
        apic: Arc<CpuApic>,
        code_pages: Arc<CodePages>,
        tb_cache: Arc<TbCache>,
    ) -> Self {
        let ops: Arc<dyn crate::VmOps> = io.clone();
        let mut state = X86State::reset();
        state.msr.tsc_offset = apic.clock_tsc_offset();
        state.msr.apic_base = apic.apic_base();
        TcgVcpu {
            id,
            vcpus,
            state,
            mem: CpuMemory::new(memory, ops, code_pages.clone()),
            io,
            signals,
            apic,
            code_pages,
            tb_cache,
            jump_cache: JumpCache::default(),
            temps: Vec::new(),
            seen_code_generation: 0,
            activity: if id == 0 { Activity::Running } else { Activity::WaitForSipi },
            irq_hint: true,
            nmi_hint: false,
            timer_deadline: None,
            timer_countdown: 0,
            profiler: Profiler::from_env(id),
            counts: TcgStats::default(),
            unlinked_edge: None,
        }
    }

    /// The object interrupt controllers raise interrupts and INIT/SIPI on.
    pub fn signals(&self) -> &Arc<VcpuSignals> {
        &self.signals
    }

    fn flush_translations(&mut self) {
        self.mem.flush_tlb(true);
        self.jump_cache.flush();
    }

    /// INIT: the reset state, then wait for SIPI (SDM 9.1.1). The TSC and
    /// IA32_APIC_BASE survive INIT; the LAPIC reset itself already.
    fn do_init(&mut self) {
        let (apic_base, tsc_offset) = (self.state.msr.apic_base, self.state.msr.tsc_offset);
        self.state = X86State::reset();
        self.state.msr.apic_base = apic_base;
        self.state.msr.tsc_offset = tsc_offset;
        self.activity = Activity::WaitForSipi;
        self.flush_translations();
    }

    /// SIPI: real mode at `vector << 12` (CS = vector << 8, IP = 0).
    fn do_sipi(&mut self, vector: u8) {
        let sel = u16::from(vector) << 8;
        self.state.segs[seg::CS] = SegmentCache { attr: 0x9b, ..SegmentCache::real_mode(sel) };
        self.state.rip = 0;
        self.state.halted = false;
        self.state.recompute_hflags();
        self.activity = Activity::Running;
        self.irq_hint = true;
        self.timer_deadline = self.apic.next_deadline();
        self.flush_translations();
    }

    fn interrupt_deliverable(&self) -> bool {
        self.state.rflags & rflags::IF != 0 && self.state.hflags & hflags::INHIBIT_IRQ == 0
    }

    /// Acts on what other threads signalled. Returns an exit for the VMM.
    #[cold]
    fn service_signals(&mut self) -> Option<VcpuExit> {
        if self.signals.take_kick() {
            return Some(VcpuExit::Kicked);
        }
        if self.signals.take_init() {
            self.do_init();
        }
        if self.activity == Activity::WaitForSipi {
            if let Some(v) = self.signals.take_sipi() {
                self.do_sipi(v);
            }
        }
        if self.signals.take_irq() {
            self.irq_hint = true;
            // NMIs are rare: look for one only when something was signalled.
            self.nmi_hint = self.apic.nmi_pending();
        }
        if self.signals.take_timers() {
            self.timer_deadline = self.apic.next_deadline();
            self.timer_countdown = 0;
        }
        None
    }

    /// Fires the timers that are due; their interrupts raise `irq_hint`.
    fn check_timers(&mut self) {
        if self.timer_deadline.is_none() && self.profiler.is_none() {
            return;
        }
        let now = Instant::now();
        if let Some(p) = self.profiler.as_mut() {
            p.sample(now, self.state.rip, self.state.halted);
        }
        let Some(deadline) = self.timer_deadline else { return };
        if now < deadline {
            return;
        }
        self.apic.poll_timers(now);
        self.timer_deadline = self.apic.next_deadline();
        self.irq_hint = true;
    }

    /// Delivers a pending NMI, or an external interrupt if one can be taken.
    fn take_interrupt(&mut self) -> Step {
        if self.nmi_hint {
            self.nmi_hint = false;
            if self.apic.take_nmi() {
                self.state.halted = false;
                return self.deliver_external(vector::NMI);
            }
        }
        if !self.irq_hint || !self.interrupt_deliverable() {
            return Step::Continue;
        }
        self.irq_hint = false;
        match self.apic.take_interrupt() {
            Some(v) => {
                // More may be pending behind it: look again once IF allows.
                self.irq_hint = true;
                self.deliver_external(v)
            }
            None => Step::Continue,
        }
    }

    fn deliver_external(&mut self, v: u8) -> Step {
        match interrupts::deliver_external(&mut self.state, &mut self.mem, v) {
            Ok(()) => Step::Continue,
            Err(e) => self.triple_fault(e),
        }
    }

    /// HLT: sleeps until an interrupt can wake the CPU, a signal, or the
    /// next timer deadline, without spinning.
    fn halt(&mut self) {
        // An interrupt that is already deliverable ends HLT at once.
        if self.apic.nmi_pending() {
            self.nmi_hint = true;
            return;
        }
        if self.state.rflags & rflags::IF != 0 && self.apic.has_interrupt() {
            self.irq_hint = true;
            return;
        }
        self.signals.park(self.timer_deadline);
    }

    fn triple_fault(&mut self, last: Exception) -> Step {
        log::debug!("vCPU {}: triple fault (last exception {last:?})", self.id);
        Step::Exit(VcpuExit::Shutdown)
    }
    /// Finds or translates the block at CS:RIP and returns its jump-cache
    /// slot. An instruction-fetch fault is returned for delivery.
    #[inline]
    fn block(&mut self) -> Result<usize, Exception> {
        self.tb_cache.sync_invalidations(&mut self.seen_code_generation);
        let code64 = self.state.hflags & hflags::CS64 != 0;
        let cs_base = if code64 { 0 } else { self.state.segs[seg::CS].base };
        let pc = self.state.rip;
        let key_flags = self.state.hflags & hflags::TB_KEY_MASK;
        let tlb_epoch = self.mem.tlb().epoch();
        match self.jump_cache.find(self.tb_cache.generation(), pc, cs_base, key_flags, tlb_epoch) {
            Found::Hit(i) => {
                self.counts.jump_cache_hits += 1;
                Ok(i)
            }
            Found::Recheck(i) => {
                self.counts.jump_cache_rechecks += 1;
                self.recheck(i, pc, cs_base, key_flags)
            }
            Found::Miss => self.block_slow(pc, cs_base, key_flags),
        }
    }

    /// The linear address of CS-relative `pc`.
    fn code_linear(&self, pc: u64, cs_base: u64) -> u64 {
        let linear = cs_base.wrapping_add(pc);
        if self.state.hflags & hflags::CS64 == 0 {
            linear & 0xffff_ffff
        } else {
            linear
        }
    }

    /// The TLB changed since the block in slot `i` was last run: it stands
    /// if its code still translates (with execute permission) to the same
    /// physical pages.
    #[cold]
    fn recheck(&mut self, i: usize, pc: u64, cs_base: u64, key_flags: u64) -> Result<usize, Exception> {
        let linear = self.code_linear(pc, cs_base);
        let phys = self.mem.translate_code(&mut self.state, linear)?;
        let (phys_pc, second) = match self.jump_cache.block(i) {
            Some(tb) => (tb.phys_pc, tb.pages.get(1).copied()),
            None => return self.block_slow(pc, cs_base, key_flags),
        };
        let mut same = phys == phys_pc;
        if let (true, Some(page2)) = (same, second) {
            let mut next = (linear & !0xfff).wrapping_add(0x1000);
            if self.state.hflags & hflags::CS64 == 0 {
                next &= 0xffff_ffff;
            }
            // A fault there is the retranslated block's to raise, at the
            // instruction that reaches the page.
            same = self.mem.translate_code(&mut self.state, next).ok().map(|p| p & !0xfff) == Some(page2);
        }
        if !same {
            return self.block_slow(pc, cs_base, key_flags);
        }
        self.jump_cache.confirm(i, self.mem.tlb().epoch());
        Ok(i)
    }

    /// The jump cache missed: the VM-wide cache, else the translator.
    #[cold]
    fn block_slow(&mut self, pc: u64, cs_base: u64, key_flags: u64) -> Result<usize, Exception> {
        let linear = self.code_linear(pc, cs_base);
        let phys = self.mem.translate_code(&mut self.state, linear)?;
        self.counts.cache_lookups += 1;
        let tb = match self.tb_cache.lookup(phys, pc, cs_base, key_flags) {
            Some(tb) => tb,
            None => {
                let start = Instant::now();
                let tb = translate::translate_block(&mut self.mem, &mut self.state, &self.code_pages, pc, phys)?;
                stats::add(Counter::BlocksTranslated, 1);
                stats::add(Counter::TranslateNs, start.elapsed().as_nanos() as u64);
                self.tb_cache.insert(tb)
            }
        };
        // Translating may have walked (filled) but never flushed the TLB.
        Ok(self.jump_cache.put(tb, self.mem.tlb().epoch()))
    }

    /// Runs one block (or delivers the fault that prevents it).
    #[inline]
    fn step(&mut self) -> Step {
        // The STI / MOV SS shadow covers the first instruction of this block.
        self.state.hflags &= !hflags::INHIBIT_IRQ;
        let generation = self.code_pages.generation();
        let edge = self.unlinked_edge.take();
        let slot = match self.block() {
            Ok(slot) => slot,
            Err(e) => return self.deliver(e, self.state.rip),
        };
        // Borrowed from the jump cache, which nothing below changes while
        // the block runs (flushes are requested and done afterwards).
        let Some(tb) = self.jump_cache.block(slot) else { return Step::Continue };
        let code = tb.code();
        if self.temps.len() < code.num_temps() {
            self.temps.resize(code.num_temps(), 0);
        }
        let mut ctx = CpuContext {
            state: &mut self.state,
            mem: &mut self.mem,
            io: &*self.io,
            requests: Default::default(),
            code_pages: &self.code_pages,
            cpu_id: self.id,
            vcpus: self.vcpus,
            apic: Some(&self.apic),
        };
        self.counts.guest_insns += code.insn_count() as u64;
        let compiled = self.tb_cache.compiler().and_then(|c| Some((c.jit(), c.code_for(tb)?)));
        let exit = match compiled {
            Some((jit, block)) => {
                if let Some((from, from_slot)) = edge {
                    // SAFETY: the address is of a block this VM translated;
                    // blocks stay allocated for the VM's lifetime (`chain`).
                    let from = unsafe { &*(from as *const TranslationBlock) };
                    self.tb_cache.chains().link(from, from_slot, tb, generation);
                }
                let dispatch = jit::Dispatch {
                    jump_cache: &self.jump_cache,
                    tb_cache: &self.tb_cache,
                    irq_pending: self.irq_hint || self.nmi_hint,
                };
                let r = jit::run(jit, &mut ctx, tb, block, self.signals.pending_word(), Some(&dispatch));
                self.counts.runs_compiled += 1 + r.chained;
                self.counts.guest_insns += r.chained_insns;
                if let TbExit::Goto { slot, .. } = r.exit {
                    self.unlinked_edge = Some((std::ptr::from_ref(r.last) as usize, slot));
                }
                r.exit
            }
            None => {
                self.counts.runs_interpreted += 1;
                bytecode::run(&mut ctx, code, &mut self.temps)
            }
        };
        let requests = ctx.requests;
        if requests.reset {
            return Step::Exit(VcpuExit::Reset);
        }
        match exit {
            TbExit::Lookup | TbExit::Goto { .. } => Step::Continue,
            TbExit::Halt => {
                self.state.halted = true;
                // HLT was the instruction an STI shadow covered, if any.
                self.state.hflags &= !hflags::INHIBIT_IRQ;
                Step::Continue
            }
            TbExit::Exception { exception, next_pc, .. } => self.deliver(exception, next_pc),
        }
    }

    fn deliver(&mut self, e: Exception, next_rip: u64) -> Step {
        match interrupts::deliver(&mut self.state, &mut self.mem, &e, next_rip) {
            Ok(()) => Step::Continue,
            Err(last) => self.triple_fault(last),
        }
    }

    fn run_loop(&mut self) -> VcpuExit {
        loop {
            if self.signals.any() {
                if let Some(exit) = self.service_signals() {
                    return exit;
                }
            }
            if self.activity == Activity::WaitForSipi {
                self.signals.park(None);
                continue;
            }
            if self.timer_countdown == 0 || self.state.halted {
                self.timer_countdown = TIMER_CHECK_BLOCKS;
                self.check_timers();
            }
            self.timer_countdown -= 1;
            if (self.irq_hint && self.interrupt_deliverable()) || self.nmi_hint {
                if let Step::Exit(e) = self.take_interrupt() {
                    return e;
                }
            }
            if self.state.halted {
                self.halt();
                continue;
            }
            if let Step::Exit(e) = self.step() {
                return e;
            }
        }
    }
}

impl Drop for TcgVcpu {
    fn drop(&mut self) {
        self.counts.add_to_totals();
    }
}

impl crate::Vcpu for TcgVcpu {
    fn id(&self) -> u8 {
        self.id
    }

    fn set_cpu_state(&mut self, state: &CpuState) -> crate::Result<()> {
        vcpu_state::load(&mut self.state, state);
        self.flush_translations();
        Ok(())
    }

    fn cpu_state(&self) -> crate::Result<CpuState> {
        Ok(vcpu_state::save(&self.state))
    }

    fn run(&mut self) -> crate::Result<VcpuExit> {
        if self.timer_deadline.is_none() {
            self.timer_deadline = self.apic.next_deadline();
        }
        Ok(self.run_loop())
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        self.signals.clone()
    }

    fn dump_state(&self) -> String {
        vcpu_state::dump(&self.state, self.mem.phys())
    }
}
