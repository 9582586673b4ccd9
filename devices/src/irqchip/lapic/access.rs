//! The LAPIC's register interface: xAPIC MMIO (SDM §11.4.1) and x2APIC
//! MSRs (§11.12.1), decoded into register reads and writes.

use std::time::Instant;

use super::timer::TimerMode;
use super::*;

/// A register access the guest did wrong.
enum Fault {
    ReadOnly,
    /// No such register (xAPIC: sets ESR "illegal register address").
    Reserved,
    ReservedBits,
}

impl Lapic {
    /// A register's value; None for write-only, absent and reserved ones.
    fn read_register(&self, off: u32) -> Option<u32> {
        let x2 = self.mode() == ApicMode::X2Apic;
        let index = (off >> 4) & 7;
        Some(match off {
            reg::ID if x2 => self.id,
            reg::ID => self.id << 24,
            reg::VERSION => APIC_VERSION,
            reg::TPR => self.tpr.into(),
            reg::APR if !x2 => self.apr().into(),
            reg::PPR => self.ppr().into(),
            reg::LDR if x2 => self.x2apic_ldr(),
            reg::LDR => self.ldr,
            reg::DFR if !x2 => self.dfr,
            reg::SVR => self.svr,
            0x100..=0x170 => self.isr.reg32(index),
            0x180..=0x1f0 => self.tmr.reg32(index),
            0x200..=0x270 => self.irr.reg32(index),
            reg::ESR => self.esr,
            reg::ICR_LOW => self.icr as u32,
            reg::ICR_HIGH if !x2 => (self.icr >> 32) as u32,
            reg::LVT_TIMER..=reg::LVT_ERROR => self.lvt[((off - reg::LVT_TIMER) >> 4) as usize],
            reg::TIMER_INITIAL => self.timer.initial(),
            reg::TIMER_CURRENT => {
                let tick = self.clock.ticks_at(Instant::now(), APIC_TIMER_HZ);
                self.timer.current(self.timer_mode(), tick)
            }
            reg::TIMER_DIVIDE => self.timer.divide_config(),
            _ => return None,
        })
    }

    /// A 32-bit register write (ICR low in xAPIC mode sends the IPI).
    fn write_register(&mut self, off: u32, value: u32) -> Result<LapicOutput, Fault> {
        let x2 = self.mode() == ApicMode::X2Apic;
        let mut out = LapicOutput::default();
        match off {
            // The APIC ID is the vCPU index the bus routes by: read-only
            // here (xAPIC allows writes on some models; nothing relies on it).
            reg::ID if x2 => return Err(Fault::ReadOnly),
            reg::ID => {}
            reg::TPR => self.tpr = value as u8,
            reg::EOI if x2 && value != 0 => return Err(Fault::ReservedBits),
            reg::EOI => out.eoi = self.eoi(),
            reg::LDR if !x2 => self.ldr = value & 0xff00_0000,
            reg::DFR if !x2 => self.dfr = value | 0x0fff_ffff,
            reg::SVR => {
                self.svr = value & SVR_WRITABLE;
                // §11.4.7.2: software disable masks every LVT entry.
                if !self.software_enabled() {
                    self.lvt.iter_mut().for_each(|l| *l |= LVT_MASKED);
                }
            }
            reg::ESR if x2 && value != 0 => return Err(Fault::ReservedBits),
            reg::ESR => self.esr = std::mem::take(&mut self.esr_pending),
            reg::ICR_LOW if !x2 => {
                self.icr = (self.icr & !0xffff_ffff) | u64::from(value & ICR_LOW_WRITABLE);
                out.ipi = self.icr_message();
            }
            reg::ICR_HIGH if !x2 => self.icr = (self.icr & 0xffff_ffff) | u64::from(value & 0xff00_0000) << 32,
            reg::LVT_TIMER..=reg::LVT_ERROR => self.write_lvt(((off - reg::LVT_TIMER) >> 4) as usize, value),
            reg::TIMER_INITIAL => {
                let now = self.clock.ticks_at_ceil(Instant::now(), APIC_TIMER_HZ);
                self.timer.write_initial(value, self.timer_mode(), now);
            }
            reg::TIMER_DIVIDE => {
                let now = self.clock.ticks_at(Instant::now(), APIC_TIMER_HZ);
                self.timer.write_divide(value, self.timer_mode(), now);
            }
            reg::SELF_IPI if x2 && value > 0xff => return Err(Fault::ReservedBits),
            reg::SELF_IPI if x2 => out.ipi = self.checked_ipi(InterruptMessage::self_ipi(value as u8)),
            reg::VERSION | reg::APR | reg::PPR | reg::TIMER_CURRENT | 0x100..=0x270 => return Err(Fault::ReadOnly),
            reg::LDR => return Err(Fault::ReadOnly),
            _ => return Err(Fault::Reserved),
        }
        Ok(out)
    }

    fn write_lvt(&mut self, index: usize, value: u32) {
        let mut value = value & LVT_WRITABLE[index];
        if !self.software_enabled() {
            value |= LVT_MASKED;
        }
        let old = std::mem::replace(&mut self.lvt[index], value);
        if index != LVT_TIMER {
            return;
        }
        let now = Instant::now();
        let (tick, tsc) = (self.clock.ticks_at(now, APIC_TIMER_HZ), self.clock.tsc_at(now));
        let (old_mode, new_mode) = (TimerMode::from_lvt(old), TimerMode::from_lvt(value));
        if old_mode != new_mode {
            self.timer.mode_changed(old_mode, new_mode, tick);
        }
        if old & LVT_MASKED != 0 && value & LVT_MASKED == 0 {
            self.timer.resync(new_mode, tick, tsc);
        }
    }

    /// The IPI the ICR describes (§11.6.1).
    fn icr_message(&mut self) -> Option<InterruptMessage> {
        let low = self.icr as u32;
        let x2 = self.mode() == ApicMode::X2Apic;
        let delivery = DeliveryMode::from_bits(low >> 8);
        self.checked_ipi(InterruptMessage {
            vector: low as u8,
            delivery,
            dest_mode: DestMode::from_bit(low & 1 << 11 != 0),
            // The trigger bit only matters for INIT level de-assert (§11.6.1).
            level_triggered: delivery == DeliveryMode::Init && low & 1 << 15 != 0,
            assert: low & 1 << 14 != 0,
            shorthand: Shorthand::from_bits(low >> 18),
            dest: if x2 { (self.icr >> 32) as u32 } else { (self.icr >> 56) as u32 },
            x2apic_dest: x2,
        })
    }

    /// Drops an IPI with an illegal vector (ESR "send illegal vector").
    fn checked_ipi(&mut self, msg: InterruptMessage) -> Option<InterruptMessage> {
        if matches!(msg.delivery, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && msg.vector < 16 {
            self.error(ESR_SEND_ILLEGAL_VECTOR);
            return None;
        }
        Some(msg)
    }

    /// An xAPIC MMIO read at `offset` into the page. Registers are 32 bits at
    /// 16-byte-aligned offsets (§11.4.1); narrower reads get their bytes,
    /// everything else reads 0. Reads 0 outside xAPIC mode.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if self.xapic_window().is_none() || offset >= XAPIC_MMIO_SIZE {
            return;
        }
        let Some(value) = self.read_register((offset & !0xf) as u32) else {
            self.error(ESR_ILLEGAL_REGISTER);
            return;
        };
        let bytes = value.to_le_bytes();
        let skip = (offset & 0xf) as usize;
        for (d, s) in data.iter_mut().zip(bytes.iter().skip(skip)) {
            *d = *s;
        }
    }

    /// An xAPIC MMIO write. Only aligned writes of at least 32 bits reach a
    /// register (the low 32 bits); others are ignored, as is everything
    /// outside xAPIC mode.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) -> LapicOutput {
        let value = match data.get(..4) {
            Some(b) if self.xapic_window().is_some() && offset & 0xf == 0 && offset < XAPIC_MMIO_SIZE => {
                u32::from_le_bytes([b[0], b[1], b[2], b[3]])
            }
            _ => {
                log::debug!("LAPIC {}: ignoring {}-byte MMIO write at {offset:#x}", self.id, data.len());
                return LapicOutput::default();
            }
        };
        match self.write_register(offset as u32, value) {
            Ok(out) => out,
            Err(Fault::Reserved) => {
                self.error(ESR_ILLEGAL_REGISTER);
                LapicOutput::default()
            }
            Err(_) => LapicOutput::default(),
        }
    }

    /// RDMSR of an x2APIC register (0x800..=0x8ff); None means #GP: not in
    /// x2APIC mode, write-only (EOI, SELF_IPI) or absent (§11.12.1.2).
    pub fn msr_read(&self, msr: u32) -> Option<u64> {
        if self.mode() != ApicMode::X2Apic || !(X2APIC_MSR_FIRST..=X2APIC_MSR_LAST).contains(&msr) {
            return None;
        }
        let off = (msr - X2APIC_MSR_FIRST) << 4;
        if off == reg::ICR_LOW {
            return Some(self.icr);
        }
        self.read_register(off).map(u64::from)
    }

    /// WRMSR of an x2APIC register. ICR is one 64-bit register whose write
    /// sends the IPI; other registers #GP on bits 63:32 set.
    pub fn msr_write(&mut self, msr: u32, value: u64) -> Result<LapicOutput, ApicError> {
        if self.mode() != ApicMode::X2Apic || !(X2APIC_MSR_FIRST..=X2APIC_MSR_LAST).contains(&msr) {
            return Err(ApicError::NotX2Apic(msr));
        }
        let off = (msr - X2APIC_MSR_FIRST) << 4;
        if off == reg::ICR_LOW {
            if value & X2APIC_ICR_RESERVED != 0 {
                return Err(ApicError::ReservedBits { msr, value });
            }
            self.icr = value & !ICR_DELIVERY_STATUS;
            let ipi = self.icr_message();
            return Ok(LapicOutput { ipi, eoi: None });
        }
        let low = u32::try_from(value).map_err(|_| ApicError::ReservedBits { msr, value })?;
        self.write_register(off, low).map_err(|fault| match fault {
            Fault::ReservedBits => ApicError::ReservedBits { msr, value },
            Fault::ReadOnly | Fault::Reserved => ApicError::NotWritable(msr),
        })
    }
}
