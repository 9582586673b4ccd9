//! Test doubles shared by the engine's unit tests: flat identity-mapped
//! guest memory and a VM without devices.

use crate::tcg::context::{CpuBus, CpuContext};
use crate::tcg::exception::{Exception, Result as ExcResult};
use crate::tcg::mmu::{Access, CodePages, LinearMemory, Privilege};
use crate::tcg::state::X86State;
use crate::VmOps;

/// Flat identity-mapped memory; accesses beyond it raise #PF.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Flat(pub Vec<u8>);

impl Flat {
    fn range(&self, a: u64, size: usize) -> Option<std::ops::Range<usize>> {
        let a = usize::try_from(a).ok()?;
        let end = a.checked_add(size)?;
        (end <= self.0.len()).then_some(a..end)
    }
}

impl LinearMemory for Flat {
    fn read(&mut self, _: &mut X86State, a: u64, size: usize, _: Access, _: Privilege) -> ExcResult<u64> {
        let bytes = self.range(a, size).map(|r| &self.0[r]).ok_or(Exception::page_fault(a, 0))?;
        let mut v = [0u8; 8];
        v[..size].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(v))
    }
    fn write(&mut self, _: &mut X86State, a: u64, size: usize, value: u64, _: Privilege) -> ExcResult<()> {
        let r = self.range(a, size).ok_or(Exception::page_fault(a, 2))?;
        let bytes = &mut self.0[r];
        bytes.copy_from_slice(&value.to_le_bytes()[..size]);
        Ok(())
    }
}

impl CpuBus for Flat {
    fn translate_code(&mut self, _: &mut X86State, linear: u64) -> ExcResult<u64> {
        Ok(linear)
    }
    fn fetch_code(&mut self, _: &mut X86State, linear: u64, buf: &mut [u8]) -> ExcResult<usize> {
        let start = usize::try_from(linear).unwrap_or(usize::MAX);
        let n = buf.len().min(0x1000 - (start & 0xfff)).min(self.0.len().saturating_sub(start));
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
    fn atomic_rmw(&mut self, s: &mut X86State, a: u64, n: usize, op: &mut dyn FnMut(u64) -> u64) -> ExcResult<u64> {
        let old = self.read(s, a, n, Access::Write, Privilege::Current)?;
        self.write(s, a, n, op(old), Privilege::Current)?;
        Ok(old)
    }
    fn cmpxchg(&mut self, s: &mut X86State, a: u64, n: usize, expected: u64, new: u64) -> ExcResult<u64> {
        self.atomic_rmw(s, a, n, &mut |old| if old == expected { new } else { old })
    }
    fn flush_tlb(&mut self, _: bool) {}
    fn flush_tlb_page(&mut self, _: u64) {}
}

/// A VM without devices.
pub struct NoIo;

impl VmOps for NoIo {
    fn pio_read(&self, _: u16, _: &mut [u8]) {}
    fn pio_write(&self, _: u16, _: &[u8]) {}
    fn mmio_read(&self, _: u64, _: &mut [u8]) {}
    fn mmio_write(&self, _: u64, _: &[u8]) {}
}

/// A uniprocessor context without devices or APIC over `state` and `mem`.
pub fn context<'a>(state: &'a mut X86State, mem: &'a mut dyn CpuBus, code_pages: &'a CodePages) -> CpuContext<'a> {
    CpuContext { state, mem, io: &NoIo, requests: Default::default(), code_pages, cpu_id: 0, vcpus: 1, apic: None }
}
