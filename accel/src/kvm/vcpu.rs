//! A KVM vCPU: boot-time setup (Firecracker's) and the `KVM_RUN` loop.

use std::ptr;
use std::sync::Arc;

use kvm_bindings::{
    kvm_mp_state, kvm_msr_entry, kvm_run, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_bindings::{CpuId, Msrs};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};
use vm_memory::GuestMemoryMmap;

use super::kick::{self, KickState};
use super::KvmVm;
use super::{cpuid, regs, KvmError};
use crate::{CpuState, VcpuExit, VcpuKicker, VmOps};

/// One vCPU of a [`KvmVm`](super::KvmVm).
pub(crate) struct KvmVcpu {
    id: u8,
    fd: VcpuFd,
    ops: Arc<dyn VmOps>,
    kick: Arc<KickState>,
    /// The guest RAM KVM's slots point at: a vCPU thread may outlive the
    /// VM object, and the mappings must outlive the vCPU fd.
    _memory: GuestMemoryMmap,
}

/// What a `KVM_RUN` exit needs once the exit's borrow of the vCPU is over.
enum Followup {
    /// Nothing: run the guest again.
    Resume,
    Return(VcpuExit),
    /// The guest can't go on; the text is completed with RIP.
    Crash(String),
    InternalError,
    Unknown,
}

const HALTED_FOREVER: &str = "KVM_EXIT_HLT: vCPU halted with no in-kernel LAPIC to wake it";

fn malformed_io(direction: &str, len: usize) -> Followup {
    Followup::Crash(format!("KVM_EXIT_IO ({direction}) with a malformed {len}-byte buffer"))
}

/// KVM_EXIT_SYSTEM_EVENT: PSCI-style power requests, or a crash report.
fn system_event(kind: u32, data: &[u64]) -> Followup {
    match kind {
        KVM_SYSTEM_EVENT_SHUTDOWN => Followup::Return(VcpuExit::Poweroff),
        KVM_SYSTEM_EVENT_RESET => Followup::Return(VcpuExit::Reset),
        KVM_SYSTEM_EVENT_CRASH => {
            Followup::Crash(format!("guest reported a crash (KVM_SYSTEM_EVENT_CRASH, data {data:x?})"))
        }
        other => Followup::Crash(format!("unexpected KVM_EXIT_SYSTEM_EVENT type {other} (data {data:x?})")),
    }
}

impl KvmVcpu {
    pub(crate) fn new(vm: &KvmVm, id: u8, ops: Arc<dyn VmOps>) -> Result<Self, KvmError> {
        kick::install_handler()?;
        let fd = vm.fd.create_vcpu(u64::from(id)).map_err(|source| KvmError::VcpuIoctl {
            id,
            op: "KVM_CREATE_VCPU",
            source,
        })?;
        let vcpu = KvmVcpu { id, fd, ops, kick: Arc::default(), _memory: vm.memory.clone() };
        vcpu.set_cpuid(&vm.kvm, &vm.supported_cpuid, vm.vcpus)?;
        vcpu.set_msrs(&regs::boot_msrs())?;
        vcpu.fd.set_fpu(&regs::boot_fpu()).map_err(vcpu.err("KVM_SET_FPU"))?;
        let mut lapic = vcpu.fd.get_lapic().map_err(vcpu.err("KVM_GET_LAPIC"))?;
        regs::set_lint_pins(&mut lapic);
        vcpu.fd.set_lapic(&lapic).map_err(vcpu.err("KVM_SET_LAPIC"))?;
        vcpu.check_mp_state()?;
        Ok(vcpu)
    }

    fn err(&self, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
        let id = self.id;
        move |source| KvmError::VcpuIoctl { id, op, source }
    }

    fn set_cpuid(&self, kvm: &kvm_ioctls::Kvm, supported: &CpuId, vcpus: u8) -> Result<(), KvmError> {
        let mut entries = supported.as_slice().to_vec();
        cpuid::normalize(&mut entries, self.id, vcpus, cpuid::host_cpuid);
        self.fd.set_cpuid2(&self.to_cpuid(&entries)?).map_err(self.err("KVM_SET_CPUID2"))?;
        // KVM lists IA32_ARCH_CAPABILITIES as supported, but some hosts (PVM)
        // can't hold it for a vCPU; a guest that reads it would fault. The
        // MSR is only accepted once CPUID advertises it, hence the order.
        if cpuid::has_arch_capabilities(&entries) && !self.accepts_arch_capabilities(kvm) {
            log::info!("vCPU {}: host KVM can't set IA32_ARCH_CAPABILITIES; hiding it from CPUID", self.id);
            cpuid::clear_arch_capabilities(&mut entries);
            self.fd.set_cpuid2(&self.to_cpuid(&entries)?).map_err(self.err("KVM_SET_CPUID2"))?;
        }
        if self.id == 0 && log::log_enabled!(log::Level::Debug) {
            self.log_cpuid_changes(&entries);
        }
        Ok(())
    }

    /// Some hosts rewrite the CPUID they are given (PVM merges in what the
    /// CPU shows unprivileged code); say so, since the guest sees that.
    fn log_cpuid_changes(&self, set: &[kvm_bindings::kvm_cpuid_entry2]) {
        let Ok(got) = self.fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES) else {
            return;
        };
        for g in got.as_slice() {
            let Some(s) = set.iter().find(|s| (s.function, s.index) == (g.function, g.index)) else {
                continue;
            };
            let (want, have) = ([s.eax, s.ebx, s.ecx, s.edx], [g.eax, g.ebx, g.ecx, g.edx]);
            if want != have {
                log::debug!(
                    "host KVM changed CPUID {:#x}.{}: set {want:08x?}, guest sees {have:08x?}",
                    g.function,
                    g.index
                );
            }
        }
    }

    fn to_cpuid(&self, entries: &[kvm_bindings::kvm_cpuid_entry2]) -> Result<CpuId, KvmError> {
        CpuId::from_entries(entries).map_err(|_| KvmError::TooManyEntries {
            what: "CPUID",
            id: self.id,
            entries: entries.len(),
        })
    }

    /// Loads KVM's own value of IA32_ARCH_CAPABILITIES (the feature MSR on
    /// `/dev/kvm`) into the vCPU, as QEMU does; false if KVM refuses.
    fn accepts_arch_capabilities(&self, kvm: &kvm_ioctls::Kvm) -> bool {
        let entry = |data| kvm_msr_entry { index: regs::MSR_IA32_ARCH_CAPABILITIES, data, ..Default::default() };
        let Ok(mut msrs) = Msrs::from_entries(&[entry(0)]) else {
            return false;
        };
        let value = match kvm.get_msrs(&mut msrs) {
            Ok(1) => msrs.as_slice()[0].data,
            _ => return false,
        };
        Msrs::from_entries(&[entry(value)]).is_ok_and(|msrs| matches!(self.fd.set_msrs(&msrs), Ok(1)))
    }

    fn set_msrs(&self, entries: &[kvm_msr_entry]) -> Result<(), KvmError> {
        let msrs = Msrs::from_entries(entries).map_err(|_| KvmError::TooManyEntries {
            what: "MSR",
            id: self.id,
            entries: entries.len(),
        })?;
        let written = self.fd.set_msrs(&msrs).map_err(self.err("KVM_SET_MSRS"))?;
        if written != entries.len() {
            return Err(KvmError::MsrRejected {
                id: self.id,
                msr: entries.get(written).map_or(0, |e| e.index),
                written,
                total: entries.len(),
            });
        }
        Ok(())
    }

    /// With the in-kernel irqchip KVM makes vCPU 0 runnable and parks the
    /// others until the guest sends INIT/SIPI; make sure that holds.
    fn check_mp_state(&self) -> Result<(), KvmError> {
        let state = self.fd.get_mp_state().map_err(self.err("KVM_GET_MP_STATE"))?.mp_state;
        let want = if self.id == 0 {
            (state != KVM_MP_STATE_RUNNABLE).then_some(KVM_MP_STATE_RUNNABLE)
        } else {
            let waiting = state == KVM_MP_STATE_UNINITIALIZED || state == KVM_MP_STATE_INIT_RECEIVED;
            (!waiting).then_some(KVM_MP_STATE_UNINITIALIZED)
        };
        if let Some(mp_state) = want {
            log::debug!("vCPU {}: mp_state {state} -> {mp_state}", self.id);
            self.fd.set_mp_state(kvm_mp_state { mp_state }).map_err(self.err("KVM_SET_MP_STATE"))?;
        }
        Ok(())
    }

    fn rip(&self) -> String {
        self.fd.get_regs().map_or_else(|e| format!("unknown ({e})"), |r| format!("{:#x}", r.rip))
    }

    /// One `KVM_RUN`, with port and MMIO accesses completed through the
    /// VMM's ops. `None`: go round again.
    fn run_once(&mut self, run: *mut kvm_run) -> Result<Option<VcpuExit>, KvmError> {
        let id = self.id;
        let ops = &self.ops;
        let followup = match self.fd.run() {
            Ok(KvmExit::IoOut(port, data)) => match io_size(run, data.len()) {
                Some(size) => {
                    // String I/O (`rep outs`) hands over `count` elements at once.
                    data.chunks_exact(size).for_each(|d| ops.pio_write(port, d));
                    Followup::Resume
                }
                None => malformed_io("out", data.len()),
            },
            Ok(KvmExit::IoIn(port, data)) => match io_size(run, data.len()) {
                Some(size) => {
                    data.chunks_exact_mut(size).for_each(|d| ops.pio_read(port, d));
                    Followup::Resume
                }
                None => malformed_io("in", data.len()),
            },
            Ok(KvmExit::MmioRead(addr, data)) => {
                ops.mmio_read(addr, data);
                Followup::Resume
            }
            Ok(KvmExit::MmioWrite(addr, data)) => {
                ops.mmio_write(addr, data);
                Followup::Resume
            }
            Ok(KvmExit::Shutdown) => Followup::Return(VcpuExit::Shutdown),
            Ok(KvmExit::SystemEvent(kind, data)) => system_event(kind, data),
            // Only seen without an in-kernel LAPIC: nothing could ever wake
            // the vCPU, and resuming would run past the HLT.
            Ok(KvmExit::Hlt) => Followup::Crash(HALTED_FOREVER.into()),
            Ok(KvmExit::InternalError) => Followup::InternalError,
            Ok(KvmExit::Unknown) => Followup::Unknown,
            Ok(KvmExit::FailEntry(reason, cpu)) => {
                Followup::Crash(format!("KVM_EXIT_FAIL_ENTRY: VM entry failed (reason {reason:#x}, host CPU {cpu})"))
            }
            Ok(KvmExit::MemoryFault { flags, gpa, size }) => Followup::Crash(format!(
                "KVM_EXIT_MEMORY_FAULT at guest physical {gpa:#x} (+{size:#x}, flags {flags:#x})"
            )),
            // Signal-induced and interrupt-window exits: nothing to do here;
            // the loop checks for a kick before running again.
            Ok(KvmExit::Intr) | Ok(KvmExit::IrqWindowOpen) => Followup::Resume,
            // Guest debugging is never enabled; stray debug exits are harmless.
            Ok(KvmExit::Debug(_)) => {
                warn_limited!("vCPU {id}: ignoring unexpected KVM_EXIT_DEBUG");
                Followup::Resume
            }
            Ok(other) => Followup::Crash(format!("unexpected KVM exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // A signal (maybe a kick) or immediate_exit: re-arm and let
                // the loop check the kick flag.
                self.fd.set_kvm_immediate_exit(0);
                Followup::Resume
            }
            Err(source) => return Err(KvmError::VcpuIoctl { id, op: "KVM_RUN", source }),
        };
        Ok(match followup {
            Followup::Resume => None,
            Followup::Return(exit) => Some(exit),
            Followup::Crash(what) => Some(VcpuExit::Crash(format!("{what} at RIP {}", self.rip()))),
            Followup::InternalError => Some(VcpuExit::Crash(self.internal_error())),
            Followup::Unknown => {
                // SAFETY: for KVM_EXIT_UNKNOWN the kernel fills `hw` (one u64).
                let reason = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.hw.hardware_exit_reason };
                Some(VcpuExit::Crash(format!(
                    "KVM_EXIT_UNKNOWN (hardware exit reason {reason:#x}) at RIP {}",
                    self.rip()
                )))
            }
        })
    }

    /// Names a KVM_EXIT_INTERNAL_ERROR: suberror, RIP, and the instruction
    /// bytes when KVM's emulator gave up on one.
    fn internal_error(&mut self) -> String {
        let rip = self.rip();
        let run = self.fd.get_kvm_run();
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, for which the
        // kernel fills the `internal` member of the union (plain integers).
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let what = match internal.suberror {
            KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
            KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
            KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
            KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected VM exit reason",
            _ => "unknown suberror",
        };
        let data = &internal.data[..(internal.ndata as usize).min(internal.data.len())];
        let mut msg = format!("KVM_EXIT_INTERNAL_ERROR suberror {} ({what}) at RIP {rip}", internal.suberror);
        // Emulation failures: data[0] flags, then insn_size and the bytes.
        if internal.suberror == KVM_INTERNAL_ERROR_EMULATION
            && data.len() >= 3
            && data[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0
        {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&data[1].to_le_bytes());
            bytes[8..].copy_from_slice(&data[2].to_le_bytes());
            let len = usize::from(bytes[0]).min(15);
            let insn: Vec<String> = bytes[1..=len].iter().map(|b| format!("{b:02x}")).collect();
            msg += &format!(", instruction bytes [{}]", insn.join(" "));
        }
        if !data.is_empty() {
            msg += &format!(", data {data:x?}");
        }
        msg
    }
}

/// The element size of the current KVM_EXIT_IO, if it divides the buffer.
fn io_size(run: *mut kvm_run, len: usize) -> Option<usize> {
    // SAFETY: `run` is this vCPU's kvm_run mapping (alive: `run` holds
    // `&mut self`), and the exit is KVM_EXIT_IO, so `io` is the union
    // member the kernel filled. The read touches only the header, not the
    // data area the exit's slice covers.
    let size = usize::from(unsafe { ptr::addr_of!((*run).__bindgen_anon_1.io.size).read_volatile() });
    (size != 0 && len.is_multiple_of(size)).then_some(size)
}

impl crate::Vcpu for KvmVcpu {
    fn id(&self) -> u8 {
        self.id
    }

    fn set_cpu_state(&mut self, state: &CpuState) -> crate::Result<()> {
        let mut sregs = self.fd.get_sregs().map_err(self.err("KVM_GET_SREGS"))?;
        regs::apply_sregs(state, &mut sregs);
        self.fd.set_sregs(&sregs).map_err(self.err("KVM_SET_SREGS"))?;
        self.fd.set_regs(&regs::to_kvm_regs(state)).map_err(self.err("KVM_SET_REGS"))?;
        Ok(())
    }

    fn cpu_state(&self) -> crate::Result<CpuState> {
        let r = self.fd.get_regs().map_err(self.err("KVM_GET_REGS"))?;
        let s = self.fd.get_sregs().map_err(self.err("KVM_GET_SREGS"))?;
        Ok(regs::to_cpu_state(&r, &s))
    }

    fn run(&mut self) -> crate::Result<VcpuExit> {
        let kick = self.kick.clone();
        let run: *mut kvm_run = self.fd.get_kvm_run();
        let _registered = kick.enter(run);
        // A stale immediate_exit from an earlier kick would only cost a
        // spurious EINTR; the kick flag below is what counts.
        self.fd.set_kvm_immediate_exit(0);
        loop {
            if kick.take() {
                return Ok(VcpuExit::Kicked);
            }
            if let Some(exit) = self.run_once(run)? {
                return Ok(exit);
            }
        }
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        self.kick.clone()
    }

    fn dump_state(&self) -> String {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => regs::format_dump(&r, &s),
            (Err(e), _) | (_, Err(e)) => format!("vCPU {}: registers unavailable: {e}", self.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoOps;
    impl VmOps for NoOps {
        fn pio_read(&self, _: u16, _: &mut [u8]) {}
        fn pio_write(&self, _: u16, _: &[u8]) {}
        fn mmio_read(&self, _: u64, _: &mut [u8]) {}
        fn mmio_write(&self, _: u64, _: &[u8]) {}
    }

    #[test]
    fn bsp_is_runnable_and_aps_wait_for_sipi() {
        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(kvm) => Arc::new(kvm),
            Err(e) => {
                println!("SKIP: /dev/kvm not available ({e})");
                return;
            }
        };
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let vm = KvmVm::new(kvm, &mem, &crate::VmConfig { vcpus: 2 }).unwrap();
        let ops: Arc<dyn VmOps> = Arc::new(NoOps);
        let bsp = KvmVcpu::new(&vm, 0, ops.clone()).unwrap();
        let ap = KvmVcpu::new(&vm, 1, ops).unwrap();
        assert_eq!(bsp.fd.get_mp_state().unwrap().mp_state, KVM_MP_STATE_RUNNABLE);
        assert_eq!(ap.fd.get_mp_state().unwrap().mp_state, KVM_MP_STATE_UNINITIALIZED);
        // Per-vCPU CPUID: each sees its own APIC ID.
        let leaf1 = |v: &KvmVcpu| {
            let c = v.fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES).unwrap();
            c.as_slice().iter().find(|e| e.function == 1).unwrap().ebx >> 24
        };
        assert_eq!((leaf1(&bsp), leaf1(&ap)), (0, 1));
        // The boot MSRs and LINT pins were applied.
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry { index: 0x2ff, ..Default::default() }]).unwrap();
        assert_eq!(ap.fd.get_msrs(&mut msrs).unwrap(), 1);
        assert_eq!(msrs.as_slice()[0].data, 0x806);
        let lapic = bsp.fd.get_lapic().unwrap();
        assert_eq!((lapic.regs[0x351] as u8) & 7, 7, "LINT0 ExtINT");
        assert_eq!((lapic.regs[0x361] as u8) & 7, 4, "LINT1 NMI");
    }
}
