//! The bench's results: one row per measure, printed as a markdown table
//! (for the README's "Performance" section) and written as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::stats::Summary;

/// Everything one bench run measured, and where.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// UTC, RFC 3339.
    pub date: String,
    pub command: String,
    pub profile: String,
    pub machine: Machine,
    pub rows: Vec<Row>,
    /// Measures not taken, and why (e.g. attached to a running stack).
    pub skipped: Vec<String>,
    /// Lost, doubled or refused events: any entry fails the run.
    pub problems: Vec<String>,
    /// What happened that is not a failure but matters for reading the
    /// numbers (e.g. sockets the server closed and the clients reopened).
    pub notes: Vec<String>,
    /// The capacity phase: paced streams held, ours and the peer's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<super::run::Capacity>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn probe() -> Self {
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: (memory_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

/// One measure.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// What was measured, under which load.
    pub name: String,
    /// The numbers, by name (`chunks_per_sec`, `p50_ms`, …).
    pub values: Vec<(String, f64)>,
    /// How the numbers read in the table.
    pub display: String,
    /// The goal, reported (never asserted).
    pub target: Option<String>,
    pub met: Option<bool>,
}

impl Row {
    pub fn rate(name: impl Into<String>, key: &str, per_sec: f64, unit: &str) -> Self {
        Self {
            name: name.into(),
            values: vec![(key.to_string(), per_sec)],
            display: format!("{} {unit}", thousands(per_sec)),
            target: None,
            met: None,
        }
    }

    pub fn latency(name: impl Into<String>, summary: &Summary) -> Self {
        Self {
            name: name.into(),
            values: vec![
                ("p50_ms".into(), summary.p50_ms),
                ("p99_ms".into(), summary.p99_ms),
                ("max_ms".into(), summary.max_ms),
                ("samples".into(), summary.count as f64),
            ],
            display: format!(
                "p50 {} ms · p99 {} ms · max {} ms (n={})",
                millis(summary.p50_ms),
                millis(summary.p99_ms),
                millis(summary.max_ms),
                thousands(summary.count as f64)
            ),
            target: None,
            met: None,
        }
    }

    pub fn text(name: impl Into<String>, values: Vec<(String, f64)>, display: String) -> Self {
        Self {
            name: name.into(),
            values,
            display,
            target: None,
            met: None,
        }
    }

    /// Adds a goal and whether it was met.
    pub fn target(mut self, text: impl Into<String>, met: bool) -> Self {
        self.target = Some(text.into());
        self.met = Some(met);
        self
    }

    pub fn value(&self, key: &str) -> Option<f64> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl Report {
    pub fn push(&mut self, row: Row) {
        println!("  {}: {}", row.name, row.display);
        self.rows.push(row);
    }

    pub fn skip(&mut self, what: impl Into<String>) {
        let what = what.into();
        println!("  skipped: {what}");
        self.skipped.push(what);
    }

    pub fn note(&mut self, what: impl Into<String>) {
        let what = what.into();
        println!("  note: {what}");
        self.notes.push(what);
    }

    pub fn problem(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("  PROBLEM: {what}");
        self.problems.push(what);
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| measure | result | target |");
        let _ = writeln!(out, "| --- | --- | --- |");
        for row in &self.rows {
            let target = match (&row.target, row.met) {
                (Some(t), Some(true)) => format!("{t} ✅"),
                (Some(t), Some(false)) => format!("{t} ❌"),
                (Some(t), None) => t.clone(),
                (None, _) => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                cell(&row.name),
                cell(&row.display),
                cell(&target)
            );
        }
        let _ = writeln!(
            out,
            "\n{} CPUs, {} GiB RAM, Linux {}; {}; profile `{}`; `{}`",
            self.machine.cpus,
            self.machine.memory_gib,
            self.machine.kernel,
            self.date,
            self.profile,
            self.command
        );
        for s in &self.skipped {
            let _ = writeln!(out, "\n- skipped: {s}");
        }
        for n in &self.notes {
            let _ = writeln!(out, "\n- {n}");
        }
        if self.problems.is_empty() {
            let _ = writeln!(out, "\nNo event lost, doubled or out of order.");
        } else {
            let _ = writeln!(out, "\n**{} problems:**", self.problems.len());
            for p in self.problems.iter().take(50) {
                let _ = writeln!(out, "- {p}");
            }
        }
        out
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// `1234567.8` → `1,234,568`; small values keep a decimal.
pub(crate) fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.abs() < 100.0 && v.fract() != 0.0 {
        return format!("{v:.1}");
    }
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// Milliseconds with the precision that matters at their size.
pub(crate) fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(12.34), "12.3");
        assert_eq!(thousands(-1000.0), "-1,000");
        assert_eq!(millis(0.123), "0.12");
        assert_eq!(millis(42.56), "42.6");
        assert_eq!(millis(420.4), "420");
    }

    #[test]
    fn markdown_has_a_row_per_measure_with_its_target() {
        let mut r = Report {
            profile: "short".into(),
            ..Default::default()
        };
        r.push(Row::rate("e2e", "chunks_per_sec", 61_000.0, "chunks/s").target("≥ 50,000", true));
        r.push(Row::latency(
            "ttft",
            &Summary {
                count: 10,
                p50_ms: 1.5,
                p99_ms: 4.0,
                max_ms: 9.0,
            },
        ));
        let md = r.markdown();
        assert!(
            md.contains("| e2e | 61,000 chunks/s | ≥ 50,000 ✅ |"),
            "{md}"
        );
        assert!(md.contains("p50 1.50 ms · p99 4.00 ms"), "{md}");
        assert!(md.contains("No event lost"), "{md}");
        r.problem("session x: chunk 3 twice");
        assert!(r.markdown().contains("1 problems"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["rows"][0]["values"][0][1], 61_000.0);
    }
}
