//! A benchmark's results and their two renderings: a Markdown table for
//! people, JSON for machines (written by hand; it is small and flat).

use std::fmt::Write as _;

use super::stats::Summary;

/// What a row's numbers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Ms,
    /// Seconds, for boots under an emulator.
    S,
    Kib,
    NsPerExit,
    /// Microseconds (per translated block).
    Us,
    /// Millions of guest instructions per second.
    Mips,
    Ratio,
    /// A plain quantity (instructions per block, blocks).
    Count,
    /// Megabytes (10^6 bytes) per second.
    MBps,
    /// I/O operations per second.
    Iops,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::S => "s",
            Unit::Kib => "KiB",
            Unit::NsPerExit => "ns/exit",
            Unit::Us => "us",
            Unit::Mips => "MIPS",
            Unit::Ratio => "ratio",
            Unit::Count => "count",
            Unit::MBps => "MB/s",
            Unit::Iops => "IOPS",
        }
    }

    /// Digits after the point: µs for times, whole KiB and ns.
    fn decimals(self) -> usize {
        match self {
            Unit::Ms | Unit::S | Unit::Us | Unit::Ratio => 3,
            Unit::Kib | Unit::NsPerExit => 0,
            Unit::Mips | Unit::Count | Unit::MBps => 1,
            Unit::Iops => 0,
        }
    }

    fn show(self, v: f64) -> String {
        match self {
            Unit::Ms => format!("{v:.2} ms"),
            Unit::S => format!("{v:.2} s"),
            Unit::Kib => format!("{v:.0} KiB"),
            Unit::NsPerExit => format!("{v:.0} ns"),
            Unit::Us => format!("{v:.2} µs"),
            // Three significant figures from 1 to 99,999 MIPS.
            Unit::Mips if v < 10.0 => format!("{v:.2} MIPS"),
            Unit::Mips if v < 100.0 => format!("{v:.1} MIPS"),
            Unit::Mips => format!("{v:.0} MIPS"),
            Unit::Ratio if v != 0.0 && v.abs() < 0.01 => format!("{v:.4}×"),
            Unit::Ratio => format!("{v:.2}×"),
            Unit::Count => format!("{v:.1}"),
            Unit::MBps => format!("{v:.1} MB/s"),
            Unit::Iops => format!("{v:.0} IOPS"),
        }
    }
}

/// A row's result.
#[derive(Debug, Clone)]
pub enum Outcome {
    Measured {
        summary: Summary,
        samples: Vec<f64>,
    },
    /// One derived number (a ratio of medians).
    Value(f64),
    /// Not run here; the text says why.
    Skipped(String),
    /// Run, but it did not produce the measurement; the text says why.
    Failed(String),
}

impl Outcome {
    /// A summary of `samples`, or `Failed` when there are none.
    pub fn from_samples(samples: Vec<f64>) -> Outcome {
        match Summary::of(&samples) {
            Some(summary) => Outcome::Measured { summary, samples },
            None => Outcome::Failed("no samples".into()),
        }
    }

    /// The median, when there is a number.
    pub fn median(&self) -> Option<f64> {
        match self {
            Outcome::Measured { summary, .. } => Some(summary.median),
            Outcome::Value(v) => Some(*v),
            Outcome::Skipped(_) | Outcome::Failed(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    /// Stable machine name, e.g. `rxvmm.hello.marker`.
    pub id: String,
    pub label: String,
    pub unit: Unit,
    pub outcome: Outcome,
}

/// One host or setup fact shown above the table.
#[derive(Debug, Clone)]
pub struct Fact {
    pub key: &'static str,
    pub label: &'static str,
    pub value: String,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub bench: &'static str,
    pub facts: Vec<Fact>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn fact(&mut self, key: &'static str, label: &'static str, value: impl Into<String>) {
        self.facts.push(Fact { key, label, value: value.into() });
    }

    pub fn row(&mut self, id: impl Into<String>, label: impl Into<String>, unit: Unit, outcome: Outcome) {
        self.rows.push(Row { id: id.into(), label: label.into(), unit, outcome });
    }

    pub fn median(&self, id: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.id == id).and_then(|r| r.outcome.median())
    }

    /// Whether every rxvmm measurement (rows `rxvmm.*`) produced its figure.
    pub fn rxvmm_ok(&self) -> bool {
        !self.rows.iter().any(|r| r.id.starts_with("rxvmm.") && matches!(r.outcome, Outcome::Failed(_)))
    }

    pub fn to_markdown(&self) -> String {
        let mut s = format!("## rxvmm bench {}\n\n", self.bench);
        for f in &self.facts {
            let _ = writeln!(s, "- **{}**: {}", f.label, f.value);
        }
        s.push_str("\n| Measurement | Median | Min | Max | Runs |\n|---|--:|--:|--:|--:|\n");
        for r in &self.rows {
            let cells = match &r.outcome {
                Outcome::Measured { summary: m, .. } => {
                    [r.unit.show(m.median), r.unit.show(m.min), r.unit.show(m.max), m.runs.to_string()]
                }
                Outcome::Value(v) => [r.unit.show(*v), String::new(), String::new(), String::new()],
                Outcome::Skipped(why) => [format!("skipped: {why}"), "".into(), "".into(), "".into()],
                Outcome::Failed(why) => [format!("failed: {why}"), "".into(), "".into(), "".into()],
            };
            let _ = writeln!(s, "| {} | {} |", cell(&r.label), cells.map(|c| cell(&c)).join(" | "));
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    pub fn to_json(&self) -> String {
        let mut s = format!("{{\n  \"bench\": {},\n  \"host\": {{", json_str(self.bench));
        for (i, f) in self.facts.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}\n    {}: {}", json_str(f.key), json_str(&f.value));
        }
        s.push_str("\n  },\n  \"rows\": [");
        for (i, r) in self.rows.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let d = r.unit.decimals();
            let _ = write!(
                s,
                "{sep}\n    {{\"id\": {}, \"label\": {}, \"unit\": {}, ",
                json_str(&r.id),
                json_str(&r.label),
                json_str(r.unit.name())
            );
            match &r.outcome {
                Outcome::Measured { summary: m, samples } => {
                    let list: Vec<String> = samples.iter().map(|&v| json_num(v, d)).collect();
                    let _ = write!(
                        s,
                        "\"status\": \"ok\", \"median\": {}, \"min\": {}, \"max\": {}, \"runs\": {}, \"samples\": [{}]}}",
                        json_num(m.median, d),
                        json_num(m.min, d),
                        json_num(m.max, d),
                        m.runs,
                        list.join(", ")
                    );
                }
                Outcome::Value(v) => {
                    let _ = write!(s, "\"status\": \"ok\", \"value\": {}}}", json_num(*v, d));
                }
                Outcome::Skipped(why) => {
                    let _ = write!(s, "\"status\": \"skipped\", \"reason\": {}}}", json_str(why));
                }
                Outcome::Failed(why) => {
                    let _ = write!(s, "\"status\": \"failed\", \"reason\": {}}}", json_str(why));
                }
            }
        }
        s.push_str("\n  ],\n  \"notes\": [");
        let notes: Vec<String> = self.notes.iter().map(|n| format!("\n    {}", json_str(n))).collect();
        s.push_str(&notes.join(","));
        s.push_str("\n  ]\n}\n");
        s
    }
}

/// A Markdown table cell: pipes escaped, newlines folded.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn json_str(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", u32::from(c));
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// JSON has no NaN or infinity.
fn json_num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "null".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report { bench: "kvm", ..Report::default() };
        r.fact("cpu", "CPU", "Xeon \"test\"");
        r.row("a.marker", "boot | marker", Unit::Ms, Outcome::from_samples(vec![2.0, 1.0, 4.0]));
        r.row("q.marker", "QEMU", Unit::Ms, Outcome::Failed("no KVM\nat all".into()));
        r.row("ratio", "ratio", Unit::Ratio, Outcome::Value(f64::NAN));
        r
    }

    #[test]
    fn markdown_rows_escape_pipes_and_show_failures() {
        let md = sample().to_markdown();
        assert!(md.contains("| boot \\| marker | 2.00 ms | 1.00 ms | 4.00 ms | 3 |"), "{md}");
        assert!(md.contains("| QEMU | failed: no KVM at all |"), "{md}");
    }

    #[test]
    fn json_escapes_strings_and_has_no_nan() {
        let js = sample().to_json();
        assert!(js.contains(r#""cpu": "Xeon \"test\"""#), "{js}");
        assert!(js.contains(r#""reason": "no KVM\nat all""#), "{js}");
        assert!(js.contains(r#""value": null"#), "{js}");
        assert!(js.contains(r#""samples": [2.000, 1.000, 4.000]"#), "{js}");
    }
}
