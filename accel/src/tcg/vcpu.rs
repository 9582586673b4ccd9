//! `TcgVcpu`: the vCPU main loop (QEMU's `cpu_exec`): kicks and INIT/SIPI,
//! external interrupts, HLT parking, block lookup/translation, execution,
//! exception delivery.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::context::{CpuBus, CpuContext};
use super::exception::Exception;
use super::interp::{self, TbExit};
use super::mmu::{CodePages, CpuMemory};
use super::signals::VcpuSignals;
use super::state::{hflags, rflags, seg, SegmentCache, X86State};
use super::tb_cache::{JumpCache, TbCache, TranslationBlock};
use super::vm::IoDispatch;
use super::{interrupts, translate, vcpu_state};
use crate::{CpuState, VcpuExit, VcpuKicker};

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
    code_pages: Arc<CodePages>,
    tb_cache: Arc<TbCache>,
    jump_cache: JumpCache,
    temps: Vec<u64>,
    /// `CodePages` generation the TB cache was last synced at.
    seen_code_generation: u64,
    activity: Activity,
}

/// What one step of the main loop asks the caller to do.
enum Step {
    Continue,
    Exit(VcpuExit),
}

impl TcgVcpu {
    pub(super) fn new(
        id: u8,
        vcpus: u8,
        memory: GuestMemoryMmap,
        io: Arc<IoDispatch>,
        signals: Arc<VcpuSignals>,
        code_pages: Arc<CodePages>,
        tb_cache: Arc<TbCache>,
    ) -> Self {
        let ops: Arc<dyn crate::VmOps> = io.clone();
        TcgVcpu {
            id,
            vcpus,
            state: X86State::reset(),
            mem: CpuMemory::new(memory, ops, code_pages.clone()),
            io,
            signals,
            code_pages,
            tb_cache,
            jump_cache: JumpCache::default(),
            temps: Vec::new(),
            seen_code_generation: 0,
            activity: if id == 0 { Activity::Running } else { Activity::WaitForSipi },
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

    /// INIT: the reset state, then wait for SIPI (SDM 9.1.1).
    fn do_init(&mut self) {
        let apic_base = self.state.msr.apic_base;
        self.state = X86State::reset();
        self.state.msr.apic_base = apic_base;
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
        self.flush_translations();
    }

    fn interrupt_deliverable(&self) -> bool {
        self.state.rflags & rflags::IF != 0 && self.state.hflags & hflags::INHIBIT_IRQ == 0
    }

    /// Delivers a pending external interrupt if one can be taken now.
    fn take_interrupt(&mut self) -> Step {
        if !self.interrupt_deliverable() {
            return Step::Continue;
        }
        let Some(vector) = self.signals.interrupts.take_highest() else { return Step::Continue };
        self.state.halted = false;
        match interrupts::deliver_external(&mut self.state, &mut self.mem, vector) {
            Ok(()) => Step::Continue,
            Err(e) => self.triple_fault(e),
        }
    }

    fn triple_fault(&mut self, last: Exception) -> Step {
        log::debug!("vCPU {}: triple fault (last exception {last:?})", self.id);
        Step::Exit(VcpuExit::Shutdown)
    }

    /// Finds or translates the block at CS:RIP. An instruction-fetch fault is
    /// returned for delivery.
    fn block(&mut self) -> Result<Arc<TranslationBlock>, Exception> {
        self.tb_cache.sync_invalidations(&mut self.seen_code_generation);
        let code64 = self.state.hflags & hflags::CS64 != 0;
        let cs_base = if code64 { 0 } else { self.state.segs[seg::CS].base };
        let pc = self.state.rip;
        let key_flags = self.state.hflags & hflags::TB_KEY_MASK;
        if let Some(tb) = self.jump_cache.get(self.tb_cache.generation(), pc, cs_base, key_flags) {
            return Ok(tb.clone());
        }
        let mut linear = cs_base.wrapping_add(pc);
        if !code64 {
            linear &= 0xffff_ffff;
        }
        let phys = self.mem.translate_code(&mut self.state, linear)?;
        let tb = match self.tb_cache.lookup(phys, pc, cs_base, key_flags) {
            Some(tb) => tb,
            None => {
                let tb = translate::translate_block(&mut self.mem, &mut self.state, &self.code_pages, pc, phys)?;
                self.tb_cache.insert(tb)
            }
        };
        self.jump_cache.put(tb.clone());
        Ok(tb)
    }

    /// Runs one block (or delivers the fault that prevents it).
    fn step(&mut self) -> Step {
        // The STI / MOV SS shadow covers the first instruction of this block.
        self.state.hflags &= !hflags::INHIBIT_IRQ;
        let tb = match self.block() {
            Ok(tb) => tb,
            Err(e) => return self.deliver(e, self.state.rip),
        };
        if self.temps.len() < tb.num_temps() {
            self.temps.resize(tb.num_temps(), 0);
        }
        let mut ctx = CpuContext {
            state: &mut self.state,
            mem: &mut self.mem,
            io: &*self.io,
            requests: Default::default(),
            code_pages: &self.code_pages,
            cpu_id: self.id,
            vcpus: self.vcpus,
        };
        let exit = interp::execute(&mut ctx, tb.ops(), tb.label_pos(), &mut self.temps);
        let requests = ctx.requests;
        if requests.tlb_flushed {
            self.jump_cache.flush();
        }
        if requests.reset {
            return Step::Exit(VcpuExit::Reset);
        }
        match exit {
            TbExit::Lookup | TbExit::Goto { .. } => Step::Continue,
            TbExit::Halt => {
                self.state.halted = true;
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
            if self.signals.take_kick() {
                return VcpuExit::Kicked;
            }
            if self.signals.take_init() {
                self.do_init();
            }
            if self.activity == Activity::WaitForSipi {
                if let Some(v) = self.signals.take_sipi() {
                    self.do_sipi(v);
                } else {
                    self.signals.park_until(|_| false);
                }
                continue;
            }
            if let Step::Exit(e) = self.take_interrupt() {
                return e;
            }
            if self.state.halted {
                let can_wake = self.state.rflags & rflags::IF != 0;
                self.signals.park_until(|s| can_wake && s.interrupts.any());
                continue;
            }
            if let Step::Exit(e) = self.step() {
                return e;
            }
        }
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
        Ok(self.run_loop())
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        self.signals.clone()
    }

    fn dump_state(&self) -> String {
        vcpu_state::dump(&self.state, self.mem.phys())
    }
}
