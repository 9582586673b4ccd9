//! One local APIC (SDM Vol. 3 ch. 11), reachable as xAPIC MMIO registers or
//! x2APIC MSRs.
//!
//! A `Lapic` is plain state behind its vCPU's mutex in
//! [`crate::irqchip::ApicBus`]. It never calls out: an access that sends an
//! IPI or ends a level-triggered interrupt returns a [`LapicOutput`] that the
//! bus dispatches after releasing the lock (so an IPI to self can't
//! deadlock).

mod access;
mod timer;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use super::clock::{GuestClock, APIC_TIMER_HZ};
use super::message::{DeliveryMode, DestMode, InterruptMessage, Shorthand};
use timer::Timer;
pub use timer::TimerMode;
pub use timer::MIN_PERIOD_TICKS;

/// Version register: version 0x14 (integrated xAPIC), 6 LVT entries (max LVT
/// index 5: no CMCI), no EOI-broadcast suppression (bit 24 clear).
pub const APIC_VERSION: u32 = 0x0005_0014;
/// IA32_APIC_BASE's power-up base address.
pub const DEFAULT_APIC_BASE: u64 = 0xfee0_0000;
/// The xAPIC register page.
pub const XAPIC_MMIO_SIZE: u64 = 0x1000;
pub const MSR_IA32_APIC_BASE: u32 = 0x1b;
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// x2APIC registers are MSRs 0x800 + (xAPIC offset >> 4) (SDM §11.12.1.2).
pub const X2APIC_MSR_FIRST: u32 = 0x800;
pub const X2APIC_MSR_LAST: u32 = 0x8ff;
pub const APIC_BASE_BSP: u64 = 1 << 8;
pub const APIC_BASE_EXTD: u64 = 1 << 10;
pub const APIC_BASE_ENABLE: u64 = 1 << 11;
/// Bits 7:0, 9 and 63:52 (the vCPU checks the bits above its MAXPHYADDR).
const APIC_BASE_RESERVED: u64 = 0xfff0_0000_0000_02ff;

/// Register offsets in the xAPIC page (SDM Table 11-1).
pub mod reg {
    pub const ID: u32 = 0x20;
    pub const VERSION: u32 = 0x30;
    pub const TPR: u32 = 0x80;
    pub const APR: u32 = 0x90;
    pub const PPR: u32 = 0xa0;
    pub const EOI: u32 = 0xb0;
    pub const LDR: u32 = 0xd0;
    pub const DFR: u32 = 0xe0;
    pub const SVR: u32 = 0xf0;
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
    /// x2APIC only.
    pub const SELF_IPI: u32 = 0x3f0;
}

// ESR bits (SDM Figure 11-9).
const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

// LVT entries in register order: timer, thermal, perf, LINT0, LINT1, error.
const LVT_COUNT: usize = 6;
const LVT_TIMER: usize = 0;
const LVT_LINT0: usize = 3;
const LVT_ERROR: usize = 5;
pub const LVT_MASKED: u32 = 1 << 16;
/// Writable bits of each LVT (SDM Figure 11-8); delivery status and remote
/// IRR are read-only and always read 0 here.
const LVT_WRITABLE: [u32; LVT_COUNT] = [0x0007_00ff, 0x0001_07ff, 0x0001_07ff, 0x0001_a7ff, 0x0001_a7ff, 0x0001_00ff];
const LVT_EXTINT: u32 = 0x700;

const SVR_ENABLE: u32 = 1 << 8;
/// Vector, enable, focus checking; EOI-broadcast suppression isn't offered.
const SVR_WRITABLE: u32 = 0x3ff;
/// Vector, delivery mode, destination mode, level, trigger, shorthand.
const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;
const ICR_DELIVERY_STATUS: u64 = 1 << 12;
/// x2APIC ICR bits whose setting makes WRMSR #GP (as KVM).
const X2APIC_ICR_RESERVED: u64 = 1 << 13 | 3 << 16 | 0xfff0_0000;

/// The IA32_APIC_BASE state (SDM §11.12.5, Figure 11-27).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicMode {
    Disabled,
    XApic,
    X2Apic,
}

/// What a successful IA32_APIC_BASE write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicBaseChange {
    pub old: ApicMode,
    pub new: ApicMode,
}

/// Accesses the guest must get #GP for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApicError {
    /// An x2APIC MSR accessed while the APIC isn't in x2APIC mode.
    #[error("x2APIC MSR {0:#x} accessed outside x2APIC mode")]
    NotX2Apic(u32),
    /// A write to a read-only, write-only-when-zero or nonexistent register.
    #[error("MSR {0:#x} is not a writable x2APIC register")]
    NotWritable(u32),
    #[error("writing {value:#x} to x2APIC MSR {msr:#x} sets reserved bits")]
    ReservedBits { msr: u32, value: u64 },
    #[error("IA32_APIC_BASE value {0:#x} sets reserved bits or EXTD without EN")]
    InvalidApicBase(u64),
    #[error("IA32_APIC_BASE cannot go from {from:?} to {to:?} directly")]
    InvalidTransition { from: ApicMode, to: ApicMode },
    #[error("no local APIC for vCPU {0}")]
    NoSuchCpu(u8),
}

/// Side effects of a register write, for the bus to carry out.
#[must_use]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LapicOutput {
    /// An IPI to send (ICR or SELF_IPI write).
    pub ipi: Option<InterruptMessage>,
    /// The vector of a level-triggered interrupt just ended by EOI: the
    /// IOAPIC clears its remote IRR.
    pub eoi: Option<u8>,
}

/// A set of the 256 vectors: ISR, TMR or IRR.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VectorSet([u64; 4]);

impl VectorSet {
    pub fn set(&mut self, v: u8) {
        self.0[usize::from(v >> 6)] |= 1 << (v & 63);
    }

    pub fn clear(&mut self, v: u8) {
        self.0[usize::from(v >> 6)] &= !(1 << (v & 63));
    }

    pub fn test(&self, v: u8) -> bool {
        self.0[usize::from(v >> 6)] & (1 << (v & 63)) != 0
    }

    /// The highest vector in the set (the highest priority).
    pub fn highest(&self) -> Option<u8> {
        let (i, w) = self.0.iter().enumerate().rev().find(|(_, w)| **w != 0)?;
        u8::try_from(i * 64 + 63 - w.leading_zeros() as usize).ok()
    }

    /// The 32-bit register `i` (0..8) of the set: vectors 32i..32i+31.
    fn reg32(&self, i: u32) -> u32 {
        let word = self.0[(i as usize / 2) & 3];
        (word >> (32 * (i & 1))) as u32
    }
}

/// One vCPU's local APIC.
pub struct Lapic {
    id: u32,
    clock: Arc<GuestClock>,
    apic_base: u64,
    tpr: u8,
    ldr: u32,
    dfr: u32,
    svr: u32,
    irr: VectorSet,
    isr: VectorSet,
    tmr: VectorSet,
    esr: u32,
    /// Errors since the last ESR write; a write makes them visible (§11.5.3).
    esr_pending: u32,
    icr: u64,
    lvt: [u32; LVT_COUNT],
    timer: Timer,
}

impl Lapic {
    /// The APIC of vCPU `id`, in its power-up state (xAPIC mode, software
    /// disabled). vCPU 0 is the bootstrap processor.
    pub fn new(id: u32, clock: Arc<GuestClock>) -> Self {
        let bsp = if id == 0 { APIC_BASE_BSP } else { 0 };
        let mut lapic = Lapic {
            id,
            clock,
            apic_base: DEFAULT_APIC_BASE | APIC_BASE_ENABLE | bsp,
            tpr: 0,
            ldr: 0,
            dfr: u32::MAX,
            svr: 0xff,
            irr: VectorSet::default(),
            isr: VectorSet::default(),
            tmr: VectorSet::default(),
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt: [LVT_MASKED; LVT_COUNT],
            timer: Timer::default(),
        };
        lapic.reset_registers();
        lapic
    }

    /// Power-up and INIT state of everything but the ID and APIC base
    /// (SDM §11.4.7.1, §11.4.7.3).
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.svr = 0xff;
        self.irr = VectorSet::default();
        self.isr = VectorSet::default();
        self.tmr = VectorSet::default();
        self.esr = 0;
        self.esr_pending = 0;
        self.icr = 0;
        self.lvt = [LVT_MASKED; LVT_COUNT];
        self.timer = Timer::default();
        // Firmware leaves the BSP's LINT0 in ExtINT mode (virtual wire) so
        // 8259 interrupts reach it; KVM and QEMU do the same at reset.
        if self.apic_base & APIC_BASE_BSP != 0 {
            self.lvt[LVT_LINT0] = LVT_EXTINT;
        }
    }

    /// The INIT IPI's reset (the vCPU resets itself separately).
    pub fn init_reset(&mut self) {
        self.reset_registers();
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn mode(&self) -> ApicMode {
        match (self.apic_base & APIC_BASE_ENABLE != 0, self.apic_base & APIC_BASE_EXTD != 0) {
            (false, _) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        }
    }

    fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    pub fn apic_base(&self) -> u64 {
        self.apic_base
    }

    /// A WRMSR to IA32_APIC_BASE. The BSP flag is read-only. Disabling the
    /// APIC resets it (§11.4.3); x2APIC → xAPIC and disabled → x2APIC are
    /// not allowed (§11.12.5).
    pub fn set_apic_base(&mut self, value: u64) -> Result<ApicBaseChange, ApicError> {
        if value & APIC_BASE_RESERVED != 0 || value & (APIC_BASE_ENABLE | APIC_BASE_EXTD) == APIC_BASE_EXTD {
            return Err(ApicError::InvalidApicBase(value));
        }
        let old = self.mode();
        let new = match value & APIC_BASE_EXTD {
            0 if value & APIC_BASE_ENABLE == 0 => ApicMode::Disabled,
            0 => ApicMode::XApic,
            _ => ApicMode::X2Apic,
        };
        if matches!((old, new), (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic)) {
            return Err(ApicError::InvalidTransition { from: old, to: new });
        }
        self.apic_base = (value & !APIC_BASE_BSP) | (self.apic_base & APIC_BASE_BSP);
        if new == ApicMode::Disabled && old != ApicMode::Disabled {
            self.reset_registers();
        }
        Ok(ApicBaseChange { old, new })
    }

    /// The guest-physical base of the register page while in xAPIC mode.
    pub fn xapic_window(&self) -> Option<u64> {
        (self.mode() == ApicMode::XApic).then_some(self.apic_base & 0x000f_ffff_ffff_f000)
    }

    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// TPR write (also MOV to CR8, which writes `TPR[7:4]`).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }

    /// PPR (§11.8.3.1): the TPR, or the class of the highest in-service
    /// vector if that is higher.
    pub fn ppr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0);
        if self.tpr & 0xf0 >= isrv & 0xf0 {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// APR (§11.6.2.4), kept for completeness: P4 and later don't use it.
    fn apr(&self) -> u8 {
        let irrv = self.irr.highest().unwrap_or(0);
        let isrv = self.isr.highest().unwrap_or(0);
        if self.tpr >> 4 >= irrv >> 4 && self.tpr >> 4 > isrv >> 4 {
            self.tpr
        } else {
            (self.tpr & 0xf0).max(isrv & 0xf0).max(irrv & 0xf0)
        }
    }

    /// The x2APIC logical ID, derived from the APIC ID (§11.12.10.2).
    fn x2apic_ldr(&self) -> u32 {
        ((self.id >> 4) << 16) | (1 << (self.id & 0xf))
    }

    /// Records an APIC error and raises the error LVT if unmasked.
    fn error(&mut self, bit: u32) {
        self.esr_pending |= bit;
        let lvt = self.lvt[LVT_ERROR];
        let vector = lvt as u8;
        if lvt & LVT_MASKED == 0 && self.software_enabled() && vector >= 16 {
            self.irr.set(vector);
            self.tmr.clear(vector);
        }
    }

    /// Accepts a fixed or lowest-priority interrupt into the IRR. Returns
    /// false when it is dropped: APIC disabled (hardware or software, as
    /// KVM) or an illegal vector 0-15 (ESR bit 6).
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> bool {
        if self.mode() == ApicMode::Disabled || !self.software_enabled() {
            return false;
        }
        if vector < 16 {
            self.error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        self.irr.set(vector);
        if level_triggered {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
        true
    }

    /// The IRR vector the CPU would take now: the highest one whose
    /// priority class is above the PPR's (§11.8.3).
    pub fn highest_pending(&self) -> Option<u8> {
        if self.mode() == ApicMode::Disabled {
            return None;
        }
        let v = self.irr.highest()?;
        (v & 0xf0 > self.ppr() & 0xf0).then_some(v)
    }

    /// The CPU takes the interrupt: IRR → ISR. Call when delivering it.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let v = self.highest_pending()?;
        self.irr.clear(v);
        self.isr.set(v);
        Some(v)
    }

    /// EOI: ends the highest in-service interrupt; returns its vector if it
    /// was level-triggered, for the IOAPIC.
    pub fn eoi(&mut self) -> Option<u8> {
        let v = self.isr.highest()?;
        self.isr.clear(v);
        self.tmr.test(v).then_some(v)
    }

    /// Whether 8259 interrupts reach the CPU: LINT0 unmasked in ExtINT mode,
    /// or the APIC hardware-disabled (then LINT0 is the CPU's INTR pin).
    pub fn accepts_pic_interrupts(&self) -> bool {
        let lint0 = self.lvt[LVT_LINT0];
        self.mode() == ApicMode::Disabled
            || (lint0 & LVT_MASKED == 0 && DeliveryMode::from_bits(lint0 >> 8) == DeliveryMode::ExtInt)
    }

    /// Whether this APIC is a target of `msg`'s destination field (its
    /// shorthand is the bus's business). §11.6.2.
    pub fn matches(&self, msg: &InterruptMessage) -> bool {
        if self.mode() == ApicMode::Disabled {
            return false;
        }
        if msg.is_broadcast() {
            return true;
        }
        match msg.dest_mode {
            DestMode::Physical => msg.dest == self.id,
            DestMode::Logical if self.mode() == ApicMode::X2Apic => {
                let ldr = self.x2apic_ldr();
                msg.dest >> 16 == ldr >> 16 && msg.dest & ldr & 0xffff != 0
            }
            DestMode::Logical => {
                let (logical, dest) = ((self.ldr >> 24) as u8, msg.dest as u8);
                if self.dfr >> 28 == 0xf {
                    logical & dest != 0
                } else {
                    logical >> 4 == dest >> 4 && logical & dest & 0xf != 0
                }
            }
        }
    }

    fn timer_mode(&self) -> TimerMode {
        TimerMode::from_lvt(self.lvt[LVT_TIMER])
    }

    /// IA32_TSC_DEADLINE write, on the [`GuestClock`] TSC time base.
    pub fn set_tsc_deadline(&mut self, tsc: u64) {
        self.timer.set_tsc_deadline(tsc, self.timer_mode());
    }

    /// IA32_TSC_DEADLINE read (0 outside TSC-deadline mode or once fired).
    pub fn tsc_deadline(&self) -> u64 {
        self.timer.tsc_deadline(self.timer_mode())
    }

    /// When the timer next needs [`Self::poll_timer`]; None while it is
    /// disarmed or masked.
    pub fn next_timer_deadline(&self) -> Option<Instant> {
        if self.lvt[LVT_TIMER] & LVT_MASKED != 0 {
            return None;
        }
        self.timer.next_deadline(self.timer_mode(), &self.clock)
    }

    /// Brings the timer up to `now`; returns whether it raised its vector.
    pub fn poll_timer(&mut self, now: Instant) -> bool {
        let lvt = self.lvt[LVT_TIMER];
        let tick = self.clock.ticks_at(now, APIC_TIMER_HZ);
        if !self.timer.poll(self.timer_mode(), tick, self.clock.tsc_at(now)) || lvt & LVT_MASKED != 0 {
            return false;
        }
        self.accept(lvt as u8, false)
    }
}
