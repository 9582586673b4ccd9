//! Comparing two outcomes of one case, and finding the first instruction
//! whose result differs by running growing prefixes of the sequence.

use std::fmt;

use iced_x86::{Formatter, IntelFormatter, Mnemonic};

use super::{undefined_flags_mask, Fault, OracleError, Outcome, TestCase, GPR_NAMES, USER_FLAGS};

/// A batch runner: one of the oracles, or the engine under test.
pub type Runner<'a> = dyn FnMut(&[TestCase]) -> Result<Vec<Outcome>, OracleError> + 'a;

/// Two runs of a case that disagree.
#[derive(Debug, Clone)]
pub struct Divergence {
    pub case: Box<TestCase>,
    /// One line per difference: fault, register, flags, memory.
    pub differences: Vec<String>,
    /// Index of the first instruction whose prefix diverges, when known.
    pub culprit: Option<usize>,
}

fn fault_text(f: &Option<Fault>) -> String {
    f.map_or_else(|| "none (reached the terminator)".to_string(), |f| f.to_string())
}

fn flag_names(bits: u64) -> String {
    const NAMES: [(u64, &str); 7] =
        [(1, "CF"), (1 << 2, "PF"), (1 << 4, "AF"), (1 << 6, "ZF"), (1 << 7, "SF"), (1 << 10, "DF"), (1 << 11, "OF")];
    let names: Vec<&str> = NAMES.iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| *n).collect();
    names.join(" ")
}

fn page_diffs(out: &mut Vec<String>, what: &str, expected: &[u8], actual: &[u8]) {
    if expected.len() != actual.len() {
        out.push(format!("{what}: {} bytes expected, {} returned", expected.len(), actual.len()));
        return;
    }
    let diffs: Vec<usize> = (0..expected.len()).filter(|&i| expected[i] != actual[i]).collect();
    for &i in diffs.iter().take(8) {
        out.push(format!("{what}+{i:#05x}: expected {:#04x}, actual {:#04x}", expected[i], actual[i]));
    }
    if diffs.len() > 8 {
        out.push(format!("{what}: {} more bytes differ", diffs.len() - 8));
    }
}

/// Compares `actual` with `expected` for `case`: the fault (vector, error
/// code, CR2, RIP), all GPRs, the arithmetic flags and DF that are defined
/// where the run stopped, and the data and stack pages.
pub fn compare(case: &TestCase, expected: &Outcome, actual: &Outcome) -> Result<(), Divergence> {
    let mut d = Vec::new();
    if expected.fault != actual.fault {
        d.push(format!("fault: expected {}, actual {}", fault_text(&expected.fault), fault_text(&actual.fault)));
    }
    for (i, name) in GPR_NAMES.iter().enumerate() {
        let (e, a) = (expected.regs.gprs[i], actual.regs.gprs[i]);
        if e != a {
            d.push(format!("{name}: expected {e:#018x}, actual {a:#018x}"));
        }
    }
    let undefined = undefined_flags_mask(&case.code, expected.end_offset(case));
    let mask = USER_FLAGS & !undefined;
    let (e, a) = (expected.regs.rflags, actual.regs.rflags);
    if (e ^ a) & mask != 0 {
        d.push(format!(
            "rflags: expected {e:#x}, actual {a:#x}: {} differ (undefined here: {})",
            flag_names((e ^ a) & mask),
            if undefined == 0 { "none".to_string() } else { flag_names(undefined) }
        ));
    }
    page_diffs(&mut d, "data", &expected.data, &actual.data);
    page_diffs(&mut d, "stack", &expected.stack, &actual.stack);
    if d.is_empty() {
        Ok(())
    } else {
        Err(Divergence { case: Box::new(case.clone()), differences: d, culprit: None })
    }
}

/// Finds the first instruction whose prefix makes `run_a` and `run_b`
/// disagree: runs the prefixes of 0, 1, … instructions (each ending in
/// `ud2`) in one batch per runner. `None` if no prefix diverges (a flaky
/// difference) or the empty one already does (the runners disagree about
/// the initial state).
pub fn localise(case: &TestCase, run_a: &mut Runner<'_>, run_b: &mut Runner<'_>) -> Result<Option<usize>, OracleError> {
    let prefixes: Vec<TestCase> = (0..=case.len()).filter_map(|n| case.prefix(n)).collect();
    let a = run_a(&prefixes)?;
    let b = run_b(&prefixes)?;
    // A prefix that stops right after a PUSHF keeps the bits its AND would
    // have masked (IF differs between the host and the guest): skipped.
    let instrs = case.instructions();
    let cut_pushf = |n: usize| {
        n.checked_sub(1)
            .and_then(|k| instrs.get(k))
            .is_some_and(|i| matches!(i.mnemonic(), Mnemonic::Pushf | Mnemonic::Pushfq))
    };
    let first = prefixes
        .iter()
        .zip(a.iter().zip(&b))
        .enumerate()
        .position(|(n, (p, (a, b)))| !cut_pushf(n) && compare(p, a, b).is_err());
    Ok(first.and_then(|n| n.checked_sub(1)))
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "divergence for seed {:#x}:", self.case.seed)?;
        for line in &self.differences {
            writeln!(f, "  {line}")?;
        }
        writeln!(f, "initial state:")?;
        for (i, chunk) in GPR_NAMES.chunks(4).enumerate() {
            write!(f, " ")?;
            for (j, name) in chunk.iter().enumerate() {
                write!(f, " {name:>3}={:#018x}", self.case.init.gprs[i * 4 + j])?;
            }
            writeln!(f)?;
        }
        writeln!(f, "  rflags={:#x}", self.case.init.rflags)?;
        match self.culprit {
            Some(n) => writeln!(f, "sequence (>> first diverging instruction, #{n}):")?,
            None => writeln!(f, "sequence:")?,
        }
        let mut formatter = IntelFormatter::new();
        let mut text = String::new();
        for (n, i) in self.case.instructions().iter().enumerate() {
            text.clear();
            formatter.format(i, &mut text);
            let off = i.ip().wrapping_sub(super::CODE) as usize;
            let bytes: String =
                self.case.code.get(off..off + i.len()).unwrap_or_default().iter().map(|b| format!("{b:02x}")).collect();
            let mark = if self.culprit == Some(n) { ">>" } else { "  " };
            writeln!(f, "{mark} {off:04x}  {bytes:<30} {text}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Divergence {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{generate, Trap, UserRegs};

    fn outcome(case: &TestCase, rax: u64, rflags: u64) -> Outcome {
        let mut regs = UserRegs { rflags, ..case.init };
        regs.gprs[0] = rax;
        let trap = Trap { vector: 6, rip: super::super::CODE + case.terminator_offset(), ..Trap::default() };
        Outcome::from_trap(case, trap, regs, case.data.clone(), case.stack.clone())
    }

    #[test]
    fn reports_registers_flags_and_localises_with_fake_runners() {
        let case = (0..100).map(generate).find(|c| c.len() >= 4).unwrap();
        let a = outcome(&case, 1, 0x2);
        assert!(compare(&case, &a, &a).is_ok());
        let b = outcome(&case, 2, 0x2 | 0x40);
        let d = compare(&case, &a, &b).unwrap_err();
        let text = d.to_string();
        assert!(text.contains("rax: expected 0x0000000000000001"), "{text}");
        assert!(text.contains("ud2"), "{text}");
        // A runner that differs once the prefix has 3 instructions.
        let mut good = |cases: &[TestCase]| -> Result<Vec<Outcome>, OracleError> {
            Ok(cases.iter().map(|c| outcome(c, 0, 2)).collect())
        };
        let mut bad = |cases: &[TestCase]| -> Result<Vec<Outcome>, OracleError> {
            Ok(cases.iter().map(|c| outcome(c, u64::from(c.len() >= 3), 2)).collect())
        };
        let mut also_good = good;
        assert_eq!(localise(&case, &mut good, &mut bad).unwrap(), Some(2));
        assert_eq!(localise(&case, &mut good, &mut also_good).unwrap(), None);
    }
}
