//! The APIC bus: every local APIC of the VM, and the delivery of interrupt
//! messages (IPIs, IOAPIC redirections, MSIs) between them.
//!
//! LAPIC `i` belongs to vCPU `i` and has APIC ID `i` (as the MADT says).
//! Each sits behind its own mutex. Locks are never nested the wrong way: a
//! LAPIC lock is released before an IPI it produced is delivered, before an
//! EOI reaches the IOAPIC (IOAPIC → LAPIC is the only order) and before a
//! vCPU is woken (the vCPU may hold its own wake-up lock while it asks
//! [`ApicBus::has_interrupt`]).
//!
//! Lowest-priority delivery goes to the lowest-numbered target that accepts
//! it: the SDM leaves the arbitration model-specific (§11.6.2.4), and
//! focusing interrupts on one CPU is what many real chipsets do too.

#[cfg(test)]
pub(crate) mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Instant;

use super::clock::GuestClock;
use super::lapic::{
    ApicBaseChange, ApicError, Lapic, LapicOutput, MSR_IA32_APIC_BASE, MSR_IA32_TSC_DEADLINE, X2APIC_MSR_FIRST,
    X2APIC_MSR_LAST,
};
use super::message::{DeliveryMode, DestMode, InterruptMessage, Shorthand};
use super::pic::PicOutput;

/// How the interrupt controllers reach a vCPU thread. Implemented by the
/// engine's vCPU; called from any thread, never with a LAPIC lock held.
pub trait CpuWakeup: Send + Sync {
    /// An interrupt or NMI may have become deliverable: leave HLT and check
    /// ([`ApicBus::take_nmi`], [`ApicBus::take_interrupt`]) at the next
    /// instruction boundary the vCPU can take it at.
    fn interrupt_pending(&self);
    /// INIT: reset the CPU and wait for a SIPI. The LAPIC is already reset.
    fn init(&self);
    /// Startup IPI: a vCPU waiting for SIPI starts in real mode at
    /// CS = vector << 8, IP = 0; a running vCPU ignores it.
    fn startup(&self, vector: u8);
}

/// Receives the EOI broadcast of level-triggered interrupts (the IOAPIC).
pub trait EoiListener: Send + Sync {
    fn end_of_interrupt(&self, vector: u8);
}

/// The 8259 behind LINT0 in ExtINT mode.
pub trait ExtIntSource: Send + Sync {
    /// Whether its INT output is asserted.
    fn has_interrupt(&self) -> bool;
    /// The INTA cycle: the vector to take (a spurious IRQ 7 if the request
    /// went away).
    fn intack(&self) -> u8;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApicBusError {
    /// APIC IDs are vCPU indexes and 0xFF is the xAPIC broadcast ID.
    #[error("the APIC bus serves 1 to 254 vCPUs, not {0}")]
    VcpuCount(u8),
}

/// All local APICs of a VM and their vCPUs' wake-up handles.
pub struct ApicBus {
    clock: Arc<GuestClock>,
    lapics: Vec<Mutex<Lapic>>,
    wakeups: Vec<OnceLock<Arc<dyn CpuWakeup>>>,
    nmi: Vec<AtomicBool>,
    eoi_listener: OnceLock<Weak<dyn EoiListener>>,
    extint: OnceLock<Weak<dyn ExtIntSource>>,
}

fn lock(lapic: &Mutex<Lapic>) -> MutexGuard<'_, Lapic> {
    lapic.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ApicBus {
    pub fn new(clock: Arc<GuestClock>, vcpus: u8) -> Result<Self, ApicBusError> {
        if vcpus == 0 || vcpus == u8::MAX {
            return Err(ApicBusError::VcpuCount(vcpus));
        }
        Ok(ApicBus {
            lapics: (0..vcpus).map(|id| Mutex::new(Lapic::new(id.into(), clock.clone()))).collect(),
            wakeups: (0..vcpus).map(|_| OnceLock::new()).collect(),
            nmi: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
            clock,
            eoi_listener: OnceLock::new(),
            extint: OnceLock::new(),
        })
    }

    pub fn clock(&self) -> &Arc<GuestClock> {
        &self.clock
    }

    pub fn vcpus(&self) -> u8 {
        // new() caps the count at 254.
        self.lapics.len() as u8
    }

    /// Connects vCPU `cpu`'s wake-up handle; false if it has one already or
    /// there is no such vCPU.
    pub fn set_wakeup(&self, cpu: u8, wakeup: Arc<dyn CpuWakeup>) -> bool {
        self.wakeups.get(usize::from(cpu)).is_some_and(|w| w.set(wakeup).is_ok())
    }

    /// Connects the IOAPIC's EOI input (once).
    pub fn set_eoi_listener(&self, listener: Weak<dyn EoiListener>) {
        if self.eoi_listener.set(listener).is_err() {
            log::warn!("APIC bus: EOI listener already connected");
        }
    }

    /// Connects the 8259 behind LINT0 (once).
    pub fn set_extint_source(&self, source: Weak<dyn ExtIntSource>) {
        if self.extint.set(source).is_err() {
            log::warn!("APIC bus: ExtINT source already connected");
        }
    }

    /// Direct access to vCPU `cpu`'s LAPIC (state inspection, snapshots).
    /// Changes made through it wake nobody and send nothing.
    pub fn lapic(&self, cpu: u8) -> Option<MutexGuard<'_, Lapic>> {
        self.lapics.get(usize::from(cpu)).map(lock)
    }

    fn wake(&self, cpu: u8) {
        if let Some(w) = self.wakeups.get(usize::from(cpu)).and_then(OnceLock::get) {
            w.interrupt_pending();
        }
    }

    fn wakeup(&self, cpu: u8) -> Option<&Arc<dyn CpuWakeup>> {
        self.wakeups.get(usize::from(cpu)).and_then(OnceLock::get)
    }

    /// Runs `f` on the LAPIC, then wakes its vCPU if that left an interrupt
    /// deliverable (an EOI, TPR or LINT0 write can unblock one already
    /// pending).
    fn with_lapic<R>(&self, cpu: u8, f: impl FnOnce(&mut Lapic) -> R) -> Option<R> {
        let lapic = self.lapics.get(usize::from(cpu))?;
        let (result, pending, extint) = {
            let mut l = lock(lapic);
            let result = f(&mut l);
            (result, l.highest_pending().is_some(), l.accepts_pic_interrupts())
        };
        // Asked after the LAPIC lock is released: LAPIC and 8259 locks
        // never nest.
        if pending || (extint && self.extint_source().is_some_and(|pic| pic.has_interrupt())) {
            self.wake(cpu);
        }
        Some(result)
    }

    /// Carries out what a register write asked for.
    fn dispatch(&self, cpu: u8, out: LapicOutput) {
        if let Some(msg) = out.ipi {
            self.send(&msg, Some(cpu));
        }
        if let Some(vector) = out.eoi {
            if let Some(listener) = self.eoi_listener.get().and_then(Weak::upgrade) {
                listener.end_of_interrupt(vector);
            }
        }
    }

    /// The guest-physical page vCPU `cpu` sees its xAPIC registers at (None
    /// when disabled or in x2APIC mode: then that page is ordinary MMIO).
    pub fn xapic_window(&self, cpu: u8) -> Option<u64> {
        self.lapic(cpu)?.xapic_window()
    }

    /// vCPU `cpu` reads its xAPIC page at `offset`.
    pub fn mmio_read(&self, cpu: u8, offset: u64, data: &mut [u8]) {
        match self.lapic(cpu) {
            Some(mut l) => l.mmio_read(offset, data),
            None => data.fill(0),
        }
    }

    /// vCPU `cpu` writes its xAPIC page at `offset`.
    pub fn mmio_write(&self, cpu: u8, offset: u64, data: &[u8]) {
        if let Some(out) = self.with_lapic(cpu, |l| l.mmio_write(offset, data)) {
            self.dispatch(cpu, out);
        }
    }

    /// Whether `msr` is one [`Self::msr_read`]/[`Self::msr_write`] handle.
    pub fn is_apic_msr(msr: u32) -> bool {
        matches!(msr, MSR_IA32_APIC_BASE | MSR_IA32_TSC_DEADLINE | X2APIC_MSR_FIRST..=X2APIC_MSR_LAST)
    }

    /// RDMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register by
    /// vCPU `cpu`; None means #GP.
    pub fn msr_read(&self, cpu: u8, msr: u32) -> Option<u64> {
        let l = self.lapic(cpu)?;
        match msr {
            MSR_IA32_APIC_BASE => Some(l.apic_base()),
            MSR_IA32_TSC_DEADLINE => Some(l.tsc_deadline()),
            _ => l.msr_read(msr),
        }
    }

    /// WRMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register by
    /// vCPU `cpu`; an error means #GP.
    pub fn msr_write(&self, cpu: u8, msr: u32, value: u64) -> Result<(), ApicError> {
        match msr {
            MSR_IA32_APIC_BASE => self.set_apic_base(cpu, value).map(|_| ()),
            MSR_IA32_TSC_DEADLINE => self.set_tsc_deadline(cpu, value),
            _ => {
                let out = self.with_lapic(cpu, |l| l.msr_write(msr, value)).ok_or(ApicError::NoSuchCpu(cpu))??;
                self.dispatch(cpu, out);
                Ok(())
            }
        }
    }

    /// IA32_APIC_BASE write; the result says which mode change it made (the
    /// vCPU mirrors EN in `CPUID.1:EDX[9]` and EXTD in its MSR routing).
    pub fn set_apic_base(&self, cpu: u8, value: u64) -> Result<ApicBaseChange, ApicError> {
        self.with_lapic(cpu, |l| l.set_apic_base(value)).ok_or(ApicError::NoSuchCpu(cpu))?
    }

    /// IA32_TSC_DEADLINE write, in [`GuestClock::tsc`] units: a vCPU whose
    /// RDTSC adds an offset (guest IA32_TSC writes) subtracts it first,
    /// keeping 0 as 0 (disarm).
    pub fn set_tsc_deadline(&self, cpu: u8, tsc: u64) -> Result<(), ApicError> {
        self.with_lapic(cpu, |l| l.set_tsc_deadline(tsc)).ok_or(ApicError::NoSuchCpu(cpu))
    }

    /// CR8 reads: `TPR[7:4]` (SDM §11.8.6.1).
    pub fn cr8(&self, cpu: u8) -> u64 {
        self.lapic(cpu).map_or(0, |l| u64::from(l.tpr() >> 4))
    }

    /// MOV to CR8: TPR = `CR8[3:0]` << 4 (the vCPU #GPs on bits 63:4 first).
    pub fn set_cr8(&self, cpu: u8, value: u64) {
        self.with_lapic(cpu, |l| l.set_tpr(((value & 0xf) << 4) as u8));
    }

    /// When vCPU `cpu`'s LAPIC timer next needs [`Self::poll_timer`].
    pub fn next_timer_deadline(&self, cpu: u8) -> Option<Instant> {
        self.lapic(cpu)?.next_timer_deadline()
    }

    /// Brings vCPU `cpu`'s LAPIC timer up to `now`; true if it raised its
    /// interrupt (the vCPU is then woken like for any interrupt).
    pub fn poll_timer(&self, cpu: u8, now: Instant) -> bool {
        self.with_lapic(cpu, |l| l.poll_timer(now)).unwrap_or(false)
    }

    fn extint_source(&self) -> Option<Arc<dyn ExtIntSource>> {
        self.extint.get().and_then(Weak::upgrade)
    }

    /// Whether vCPU `cpu` has a maskable interrupt to take (for HLT: wait
    /// while false). NMIs are separate: [`Self::nmi_pending`].
    pub fn has_interrupt(&self, cpu: u8) -> bool {
        let Some((pending, extint)) =
            self.lapic(cpu).map(|l| (l.highest_pending().is_some(), l.accepts_pic_interrupts()))
        else {
            return false;
        };
        pending || (extint && self.extint_source().is_some_and(|pic| pic.has_interrupt()))
    }

    /// The vCPU takes a maskable interrupt (call only when RFLAGS.IF = 1 and
    /// no STI/MOV SS shadow): the LAPIC's highest deliverable vector moves
    /// IRR → ISR, or else the 8259 runs an INTA cycle if it is wired to
    /// LINT0. Returns the vector to deliver through the IDT.
    pub fn take_interrupt(&self, cpu: u8) -> Option<u8> {
        let extint = {
            let mut l = self.lapic(cpu)?;
            if let Some(v) = l.acknowledge() {
                return Some(v);
            }
            l.accepts_pic_interrupts()
        };
        let pic = self.extint_source().filter(|_| extint)?;
        pic.has_interrupt().then(|| pic.intack())
    }

    pub fn nmi_pending(&self, cpu: u8) -> bool {
        self.nmi.get(usize::from(cpu)).is_some_and(|n| n.load(Ordering::Acquire))
    }

    /// Takes vCPU `cpu`'s pending NMI (call when NMIs aren't blocked).
    pub fn take_nmi(&self, cpu: u8) -> bool {
        self.nmi.get(usize::from(cpu)).is_some_and(|n| n.swap(false, Ordering::AcqRel))
    }

    /// Delivers `msg` from vCPU `source` (None: from a device); returns
    /// whether any LAPIC took it.
    pub fn send(&self, msg: &InterruptMessage, source: Option<u8>) -> bool {
        let mut delivered = false;
        for cpu in 0..self.vcpus() {
            let by_shorthand = match msg.shorthand {
                Shorthand::None => None,
                Shorthand::SelfOnly => Some(source == Some(cpu)),
                Shorthand::AllIncludingSelf => Some(true),
                Shorthand::AllExcludingSelf => Some(source != Some(cpu)),
            };
            if by_shorthand == Some(false) {
                continue;
            }
            if self.deliver_to(cpu, msg, by_shorthand.is_none()) {
                delivered = true;
                if msg.delivery == DeliveryMode::LowestPriority {
                    break;
                }
            }
        }
        delivered
    }

    fn deliver_to(&self, cpu: u8, msg: &InterruptMessage, check_dest: bool) -> bool {
        let Some(lapic) = self.lapics.get(usize::from(cpu)) else { return false };
        let mut l = lock(lapic);
        if check_dest && !l.matches(msg) {
            return false;
        }
        match msg.delivery {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                let accepted = l.accept(msg.vector, msg.level_triggered);
                drop(l);
                if accepted {
                    self.wake(cpu);
                }
                accepted
            }
            DeliveryMode::Nmi => {
                drop(l);
                self.nmi[usize::from(cpu)].store(true, Ordering::Release);
                self.wake(cpu);
                true
            }
            // INIT level de-assert only resynchronised arbitration IDs; P4
            // and later ignore it (§11.6.1).
            DeliveryMode::Init if !msg.assert && msg.level_triggered => false,
            DeliveryMode::Init => {
                l.init_reset();
                drop(l);
                self.nmi[usize::from(cpu)].store(false, Ordering::Release);
                if let Some(w) = self.wakeup(cpu) {
                    w.init();
                }
                true
            }
            DeliveryMode::StartUp => {
                drop(l);
                if let Some(w) = self.wakeup(cpu) {
                    w.startup(msg.vector);
                }
                true
            }
            DeliveryMode::Smi | DeliveryMode::ExtInt | DeliveryMode::Reserved => {
                log::debug!("APIC bus: dropping {:?} message to CPU {cpu}", msg.delivery);
                false
            }
        }
    }

    /// An MSI write of `data` to `address` (SDM §11.11): address bits 19:12
    /// destination ID, bit 2 logical destination; data bits 7:0 vector,
    /// 10:8 delivery mode, 14 level, 15 trigger mode.
    pub fn deliver_msi(&self, address: u64, data: u32) -> bool {
        if address >> 20 != 0xfee {
            log::debug!("APIC bus: MSI to {address:#x} outside the interrupt window");
            return false;
        }
        let level_triggered = data & 1 << 15 != 0;
        let assert = data & 1 << 14 != 0;
        if level_triggered && !assert {
            return false;
        }
        let msg = InterruptMessage {
            vector: data as u8,
            delivery: DeliveryMode::from_bits(data >> 8),
            dest_mode: DestMode::from_bit(address & 1 << 2 != 0),
            level_triggered,
            assert: true,
            shorthand: Shorthand::None,
            dest: ((address >> 12) & 0xff) as u32,
            x2apic_dest: false,
        };
        self.send(&msg, None)
    }

    /// An IOAPIC redirection entry fires. `level` is its trigger mode.
    pub fn deliver_ioapic(
        &self,
        dest: u8,
        dest_mode: DestMode,
        vector: u8,
        delivery_mode: DeliveryMode,
        level: bool,
    ) -> bool {
        let msg = InterruptMessage {
            vector,
            delivery: delivery_mode,
            dest_mode,
            level_triggered: level,
            assert: true,
            shorthand: Shorthand::None,
            dest: dest.into(),
            x2apic_dest: false,
        };
        self.send(&msg, None)
    }

    /// The 8259's INT output rose: wake the vCPUs that take it on LINT0.
    pub fn extint_raised(&self) {
        for cpu in 0..self.vcpus() {
            if self.lapic(cpu).is_some_and(|l| l.accepts_pic_interrupts()) {
                self.wake(cpu);
            }
        }
    }
}

impl PicOutput for ApicBus {
    fn intr_raised(&self) {
        self.extint_raised();
    }
}
