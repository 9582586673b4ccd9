//! One vCPU's connection to the VM's emulated interrupt controllers and
//! timers (`devices::irqchip`): its local APIC's register page and MSRs,
//! CR8, the timers it polls, and the interrupts it takes.
//!
//! Guest TSC values: the vCPU's RDTSC reads `host_tsc() + tsc_offset`, and
//! the VM's [`GuestClock`] (which the LAPIC's TSC-deadline timer counts on)
//! is the same clock with offset [`CpuApic::clock_tsc_offset`]. A guest
//! IA32_TSC write moves the vCPU's offset away from it; deadlines are
//! translated by the difference.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use devices::irqchip::lapic::{MSR_IA32_APIC_BASE, MSR_IA32_TSC_DEADLINE};
use devices::irqchip::{ApicBus, IrqChip, XAPIC_MMIO_SIZE};

use super::exception::{Exception, Result};
use super::signals::VcpuSignals;
use super::system;

/// No xAPIC page: the APIC is disabled or in x2APIC mode.
const NO_WINDOW: u64 = u64::MAX;

pub struct CpuApic {
    chip: Arc<IrqChip>,
    cpu: u8,
    signals: Arc<VcpuSignals>,
    /// This vCPU's xAPIC page, cached from its LAPIC (only this vCPU's
    /// IA32_APIC_BASE writes change it) so MMIO routing takes no lock.
    window: AtomicU64,
    /// The `tsc_offset` at which RDTSC reads the VM clock's TSC.
    clock_tsc_offset: i64,
}

impl CpuApic {
    pub fn new(chip: Arc<IrqChip>, cpu: u8, signals: Arc<VcpuSignals>) -> Self {
        let clock_tsc_offset = system::tsc_offset_at(chip.clock.start());
        let apic = CpuApic { chip, cpu, signals, window: AtomicU64::new(NO_WINDOW), clock_tsc_offset };
        apic.refresh_window();
        apic
    }

    pub fn bus(&self) -> &ApicBus {
        &self.chip.apic_bus
    }

    pub fn cpu(&self) -> u8 {
        self.cpu
    }

    /// The vCPU's `tsc_offset` at power-up: RDTSC counts the VM's clock.
    pub fn clock_tsc_offset(&self) -> i64 {
        self.clock_tsc_offset
    }

    /// IA32_APIC_BASE as the LAPIC has it (0 if there is none).
    pub fn apic_base(&self) -> u64 {
        self.bus().msr_read(self.cpu, MSR_IA32_APIC_BASE).unwrap_or(0)
    }

    fn refresh_window(&self) {
        let w = self.bus().xapic_window(self.cpu).unwrap_or(NO_WINDOW);
        self.window.store(w, Ordering::Relaxed);
    }

    /// The offset of `[addr, addr + len)` in this vCPU's xAPIC page.
    #[inline]
    pub fn lapic_offset(&self, addr: u64, len: usize) -> Option<u64> {
        let off = addr.wrapping_sub(self.window.load(Ordering::Relaxed));
        (off < XAPIC_MMIO_SIZE && off + len as u64 <= XAPIC_MMIO_SIZE).then_some(off)
    }

    pub fn mmio_read(&self, off: u64, data: &mut [u8]) {
        self.bus().mmio_read(self.cpu, off, data);
    }

    pub fn mmio_write(&self, off: u64, data: &[u8]) {
        self.bus().mmio_write(self.cpu, off, data);
        self.timers_changed();
    }

    /// A timer may have been reprogrammed: the vCPU re-reads its deadline
    /// at the next block boundary.
    pub fn timers_changed(&self) {
        self.signals.timers_changed();
    }

    /// Whether RDMSR/WRMSR of `msr` belong to the LAPIC.
    pub fn handles_msr(msr: u32) -> bool {
        ApicBus::is_apic_msr(msr)
    }

    /// RDMSR of an APIC MSR; `tsc_offset` is the vCPU's. #GP as the LAPIC says.
    pub fn rdmsr(&self, msr: u32, tsc_offset: i64) -> Result<u64> {
        let v = self.bus().msr_read(self.cpu, msr).ok_or(Exception::gp0())?;
        Ok(if msr == MSR_IA32_TSC_DEADLINE && v != 0 { v.wrapping_add(self.tsc_adjust(tsc_offset)) } else { v })
    }

    /// WRMSR of an APIC MSR.
    pub fn wrmsr(&self, msr: u32, value: u64, tsc_offset: i64) -> Result<()> {
        let value = if msr == MSR_IA32_TSC_DEADLINE && value != 0 {
            // In clock units; a deadline before the clock's 0 is already due.
            value.wrapping_sub(self.tsc_adjust(tsc_offset)).max(1)
        } else {
            value
        };
        let r = self.bus().msr_write(self.cpu, msr, value);
        if msr == MSR_IA32_APIC_BASE {
            self.refresh_window();
        }
        self.timers_changed();
        r.map_err(|e| {
            log::debug!("TCG vCPU {}: WRMSR {msr:#x} = {value:#x}: {e}: #GP", self.cpu);
            Exception::gp0()
        })
    }

    /// How far the guest moved its TSC from the VM clock (IA32_TSC writes).
    fn tsc_adjust(&self, tsc_offset: i64) -> u64 {
        tsc_offset.wrapping_sub(self.clock_tsc_offset) as u64
    }

    /// MOV from CR8: TPR[7:4].
    pub fn cr8(&self) -> u64 {
        self.bus().cr8(self.cpu)
    }

    /// MOV to CR8 (bits 63:4 already checked).
    pub fn set_cr8(&self, value: u64) {
        self.bus().set_cr8(self.cpu, value);
    }

    /// When this vCPU must next poll its timers (its LAPIC timer, and the
    /// PIT on the BSP).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.chip.next_deadline(self.cpu)
    }

    /// Fires the timers due at `now` (their interrupts wake whoever takes them).
    pub fn poll_timers(&self, now: Instant) {
        self.chip.poll(self.cpu, now);
    }

    /// Whether a maskable interrupt waits for this vCPU.
    pub fn has_interrupt(&self) -> bool {
        self.bus().has_interrupt(self.cpu)
    }

    /// Acknowledges the highest deliverable interrupt (LAPIC IRR → ISR, or
    /// an 8259 INTA cycle); call only when the vCPU can take it.
    pub fn take_interrupt(&self) -> Option<u8> {
        self.bus().take_interrupt(self.cpu)
    }

    pub fn nmi_pending(&self) -> bool {
        self.bus().nmi_pending(self.cpu)
    }

    pub fn take_nmi(&self) -> bool {
        self.bus().take_nmi(self.cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcg::state::X86State;

    fn apics(n: u8) -> (Arc<IrqChip>, Vec<CpuApic>) {
        let chip = Arc::new(IrqChip::new(n).unwrap());
        let apics = (0..n).map(|id| CpuApic::new(chip.clone(), id, Arc::new(VcpuSignals::new(id != 0)))).collect();
        (chip, apics)
    }

    fn read_reg(apic: &CpuApic, reg: u64) -> u32 {
        let off = apic.lapic_offset(0xfee0_0000 + reg, 4).expect("xAPIC page mapped");
        let mut b = [0u8; 4];
        apic.mmio_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn each_vcpu_sees_its_own_lapic_at_the_same_address() {
        let (_, apics) = apics(2);
        assert_eq!(read_reg(&apics[0], 0x20), 0, "APIC ID 0");
        assert_eq!(read_reg(&apics[1], 0x20), 1 << 24, "APIC ID 1");
        assert_eq!(apics[0].apic_base(), 0xfee0_0900, "BSP, enabled");
        assert_eq!(apics[1].apic_base(), 0xfee0_0800);
        assert_eq!(apics[0].lapic_offset(0xfedf_fffc, 4), None);
        assert_eq!(apics[0].lapic_offset(0xfee0_0ffe, 4), None, "runs off the page");
    }

    #[test]
    fn rdtsc_counts_the_vm_clock() {
        let (chip, apics) = apics(1);
        let mut state = X86State::reset();
        state.msr.tsc_offset = apics[0].clock_tsc_offset();
        let guest = system::rdtsc(&state);
        let clock = chip.clock.tsc();
        // Read one after the other: the guest TSC can't be ahead, nor behind
        // by more than a (generous, for loaded hosts) scheduling delay.
        assert!(guest <= clock && clock - guest < 1000 * TSC_MS, "guest {guest} clock {clock}");
    }

    /// TSC ticks in a millisecond.
    const TSC_MS: u64 = devices::irqchip::TSC_HZ / 1000;

    #[test]
    fn tsc_deadline_follows_the_vcpus_own_tsc() {
        let (chip, apics) = apics(1);
        let apic = &apics[0];
        // LVT timer: TSC-deadline mode, unmasked, vector 0xec; software enable.
        let lvt = 2 << 17 | 0xec;
        apic.mmio_write(0xf0, &0x1ffu32.to_le_bytes());
        apic.mmio_write(0x320, &(lvt as u32).to_le_bytes());
        // The guest moved its TSC 1 s ahead of the clock.
        let offset = apic.clock_tsc_offset() + devices::irqchip::TSC_HZ as i64;
        let deadline = chip.clock.tsc() + devices::irqchip::TSC_HZ + 5 * TSC_MS;
        apic.wrmsr(MSR_IA32_TSC_DEADLINE, deadline, offset).unwrap();
        assert_eq!(apic.rdmsr(MSR_IA32_TSC_DEADLINE, offset), Ok(deadline));
        // On the clock that is 5 ms from now, not 1 s + 5 ms.
        let due = apic.next_deadline().expect("armed");
        assert!(due < std::time::Instant::now() + std::time::Duration::from_millis(100));
    }

    #[test]
    fn x2apic_mode_moves_the_registers_to_msrs() {
        let (_, apics) = apics(2);
        let apic = &apics[1];
        assert_eq!(apic.rdmsr(0x802, 0), Err(Exception::gp0()), "xAPIC mode: no x2APIC MSRs");
        apic.wrmsr(MSR_IA32_APIC_BASE, 0xfee0_0c00, 0).unwrap();
        assert_eq!(apic.lapic_offset(0xfee0_0020, 4), None, "no MMIO page in x2APIC mode");
        assert_eq!(apic.rdmsr(0x802, 0), Ok(1), "x2APIC ID");
        assert_eq!(apic.wrmsr(MSR_IA32_APIC_BASE, 0xfee0_0800, 0), Err(Exception::gp0()), "x2APIC → xAPIC");
    }
}
