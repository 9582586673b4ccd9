//! Translation-block cost, measured in process: the TCG frontend
//! (`accel::tcg::translate::translate_block`, decode + lowering to IR) run
//! over a flat copy of some x86-64 code, one block after another.
//!
//! The engine keeps no counters of its own yet, so this is the only way to
//! see its translation time; it covers the frontend only (no TB-cache
//! insert, no page walk: the code sits at its own physical address).

use std::time::{Duration, Instant};

use accel::tcg::context::CpuBus;
use accel::tcg::exception::{pf, Exception, Result as ExcResult};
use accel::tcg::mmu::{Access, CodePages, LinearMemory, Privilege};
use accel::tcg::state::{hflags, X86State};
use accel::tcg::translate::translate_block;

/// Translations of each block; its time is the fastest (the first one
/// also pays for marking the page as code).
const REPEATS: usize = 5;

/// What translating a stretch of code cost.
#[derive(Debug, Clone, Default)]
pub struct TranslateStats {
    /// Per block, the fastest of [`REPEATS`] translations.
    pub block_ns: Vec<f64>,
    pub blocks: usize,
    /// Guest instructions in those blocks.
    pub insns: u64,
    /// IR ops they were lowered to.
    pub ops: u64,
    pub total: Duration,
}

impl TranslateStats {
    pub fn insns_per_block(&self) -> f64 {
        self.insns as f64 / self.blocks.max(1) as f64
    }
    pub fn ops_per_insn(&self) -> f64 {
        self.ops as f64 / self.insns.max(1) as f64
    }
    pub fn ns_per_insn(&self) -> f64 {
        self.block_ns.iter().sum::<f64>() / self.insns.max(1) as f64
    }
}

/// Code at a physical (= linear) address, nothing else: all the frontend
/// reads. Data accesses fault (translation makes none).
struct FlatCode<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl FlatCode<'_> {
    fn offset(&self, linear: u64) -> ExcResult<usize> {
        let off = linear.checked_sub(self.base).and_then(|o| usize::try_from(o).ok());
        off.filter(|&o| o < self.bytes.len()).ok_or(Exception::page_fault(linear, pf::FETCH))
    }
}

impl LinearMemory for FlatCode<'_> {
    fn read(&mut self, _: &mut X86State, _: u64, _: usize, _: Access, _: Privilege) -> ExcResult<u64> {
        Err(Exception::gp0())
    }
    fn write(&mut self, _: &mut X86State, _: u64, _: usize, _: u64, _: Privilege) -> ExcResult<()> {
        Err(Exception::gp0())
    }
}

impl CpuBus for FlatCode<'_> {
    fn translate_code(&mut self, _: &mut X86State, linear: u64) -> ExcResult<u64> {
        self.offset(linear).map(|_| linear)
    }
    fn fetch_code(&mut self, _: &mut X86State, linear: u64, buf: &mut [u8]) -> ExcResult<usize> {
        let off = self.offset(linear)?;
        let page_left = (0x1000 - (linear & 0xfff)) as usize;
        let n = buf.len().min(page_left).min(self.bytes.len() - off);
        buf[..n].copy_from_slice(&self.bytes[off..off + n]);
        Ok(n)
    }
    fn atomic_rmw(&mut self, _: &mut X86State, _: u64, _: usize, _: &mut dyn FnMut(u64) -> u64) -> ExcResult<u64> {
        Err(Exception::gp0())
    }
    fn cmpxchg(&mut self, _: &mut X86State, _: u64, _: usize, _: u64, _: u64) -> ExcResult<u64> {
        Err(Exception::gp0())
    }
    fn flush_tlb(&mut self, _: bool) {}
    fn flush_tlb_page(&mut self, _: u64) {}
}

/// Translates `code` (64-bit code at `base`) block after block from its
/// start: each block begins where the previous one ended, as a linear
/// sweep. Stops after `max_blocks`.
pub fn sweep(code: &[u8], base: u64, max_blocks: usize) -> TranslateStats {
    let mut mem = FlatCode { base, bytes: code };
    let pages = (base + code.len() as u64).div_ceil(0x1000) + 1;
    let code_pages = CodePages::with_pages(pages);
    let mut state = X86State::reset();
    // 64-bit kernel code: what the frontend keys its decoding on.
    state.hflags = hflags::PE | hflags::PG | hflags::LMA | hflags::CS64;
    let mut stats = TranslateStats::default();
    let start = Instant::now();
    let mut pc = base;
    let end = base + code.len() as u64;
    while pc < end && stats.blocks < max_blocks {
        let mut best = Duration::MAX;
        let mut block = None;
        for _ in 0..REPEATS {
            let t = Instant::now();
            let tb = translate_block(&mut mem, &mut state, &code_pages, pc, pc);
            best = best.min(t.elapsed());
            block = Some(tb);
        }
        let Some(Ok(tb)) = block else {
            // A fetch fault at the very end of the code.
            break;
        };
        stats.blocks += 1;
        stats.block_ns.push(best.as_nanos() as f64);
        stats.insns += tb.code().insn_count() as u64;
        stats.ops += tb.ir_len() as u64;
        // Undecodable bytes make a one-byte #UD block.
        pc += tb.guest_len.max(1);
    }
    stats.total = start.elapsed();
    stats
}

/// The executable segments of this process's own binary (x86-64 code a
/// compiler wrote, like the guest kernel's), as `(vaddr, bytes)`.
pub fn own_code() -> Option<(u64, Vec<u8>)> {
    let elf = std::fs::read("/proc/self/exe").ok()?;
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    const PT_LOAD: u32 = 1;
    const PF_X: u32 = 1;
    (0..phnum).find_map(|i| {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? != PT_LOAD || u32_at(ph + 4)? & PF_X == 0 {
            return None;
        }
        let (offset, vaddr, size) = (usize::try_from(u64_at(ph + 8)?).ok()?, u64_at(ph + 16)?, u64_at(ph + 32)?);
        let bytes = elf.get(offset..offset.checked_add(usize::try_from(size).ok()?)?)?.to_vec();
        Some((vaddr, bytes))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_covers_straight_code_and_stops_at_its_end() {
        // nop ×3, jmp $ (a block end), nop, ret.
        let code = [0x90, 0x90, 0x90, 0xeb, 0xfe, 0x90, 0xc3];
        let s = sweep(&code, 0x10_0000, 100);
        assert_eq!(s.blocks, 2);
        assert_eq!(s.insns, 6);
        assert_eq!(s.block_ns.len(), 2);
        assert!(s.ops >= s.insns);
    }

    #[test]
    fn own_code_is_found() {
        let (vaddr, bytes) = own_code().expect("an executable segment");
        assert!(!bytes.is_empty() && vaddr > 0);
    }
}
