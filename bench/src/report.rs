//! Results: one [`Outcome`] per scenario, the JSON document and the printed table.

use crate::machine::Machine;
use serde_json::{json, Map, Value};
use std::fmt::Write as _;

/// The scenario ids, in order; the JSON document has one key for each.
pub const SCENARIOS: [&str; 25] = [
    "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10", "P11", "P12", "P13", "P14", "P15",
    "P16", "P17", "P18", "P19", "P20", "P21", "P22", "P23", "P24", "P25",
];

/// How a measured figure is compared with its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The figure must be at most the limit.
    AtMost,
    /// The figure must be at least the limit.
    AtLeast,
}

/// One pass/fail comparison of a measured figure against its limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What is compared, e.g. `"p50 / bare-hyper p50"`.
    pub figure: String,
    /// The measured value (a ratio or an absolute figure).
    pub value: f64,
    /// The comparison.
    pub op: Op,
    /// The limit.
    pub limit: f64,
}

impl Check {
    /// `figure` must be at most `limit`.
    pub fn at_most(figure: &str, value: f64, limit: f64) -> Self {
        Self {
            figure: figure.to_owned(),
            value,
            op: Op::AtMost,
            limit,
        }
    }

    /// `figure` must be at least `limit`.
    pub fn at_least(figure: &str, value: f64, limit: f64) -> Self {
        Self {
            figure: figure.to_owned(),
            value,
            op: Op::AtLeast,
            limit,
        }
    }

    /// True when the measured value is within the limit (NaN never is).
    pub fn ok(&self) -> bool {
        match self.op {
            Op::AtMost => self.value <= self.limit,
            Op::AtLeast => self.value >= self.limit,
        }
    }

    fn to_json(&self) -> Value {
        let op = match self.op {
            Op::AtMost => "<=",
            Op::AtLeast => ">=",
        };
        json!({
            "figure": self.figure,
            "value": crate::stats::round(self.value, 3),
            "op": op,
            "limit": self.limit,
            "ok": self.ok(),
        })
    }
}

/// What one scenario measured, what it was compared with, and whether it met its target.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// `"P1"` … `"P11"`.
    pub id: &'static str,
    /// One line saying what was measured.
    pub title: &'static str,
    /// Measured figures (medians over trials; units in the key names).
    pub measured: Map<String, Value>,
    /// Baseline figures measured in the same run.
    pub baseline: Map<String, Value>,
    /// The target, in words.
    pub target: &'static str,
    /// The comparisons that decide `met`; none means "report only".
    pub checks: Vec<Check>,
    /// Short text of the main measured figure, for the table.
    pub measured_text: String,
    /// Short text of the main baseline figure, for the table.
    pub baseline_text: String,
    /// Published figures of other systems, not measured here.
    pub reference: &'static str,
    /// Remarks (method, extrapolations).
    pub notes: Vec<String>,
    /// Set when the scenario could not run.
    pub error: Option<String>,
}

impl Outcome {
    /// An empty outcome for scenario `id`.
    pub fn new(id: &'static str, title: &'static str, target: &'static str) -> Self {
        Self {
            id,
            title,
            target,
            ..Self::default()
        }
    }

    /// True when it ran and every check holds.
    pub fn met(&self) -> bool {
        self.error.is_none() && self.checks.iter().all(Check::ok)
    }

    /// Records a measured figure.
    pub fn measure(&mut self, key: &str, value: impl Into<Value>) {
        self.measured.insert(key.to_owned(), rounded(value.into()));
    }

    /// Records a baseline figure.
    pub fn base(&mut self, key: &str, value: impl Into<Value>) {
        self.baseline.insert(key.to_owned(), rounded(value.into()));
    }

    /// The JSON object of this scenario.
    pub fn to_json(&self) -> Value {
        let mut obj = json!({
            "title": self.title,
            "measured": self.measured,
            "baseline": self.baseline,
            "target": self.target,
            "checks": self.checks.iter().map(Check::to_json).collect::<Vec<_>>(),
            "met": self.met(),
            "reference_not_measured_here": self.reference,
            "notes": self.notes,
        });
        if let (Some(error), Some(map)) = (&self.error, obj.as_object_mut()) {
            map.insert("error".into(), Value::from(error.as_str()));
        }
        obj
    }
}

/// Floats keep three decimals; NaN becomes `null`.
fn rounded(value: Value) -> Value {
    match value.as_f64() {
        Some(f) if value.is_f64() => Value::from(crate::stats::round(f, 3)),
        _ => value,
    }
}

/// The whole run: the machine, the mode, and every scenario.
#[derive(Debug, Clone)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// `--quick` shrinks sizes and durations.
    pub quick: bool,
    /// The sizes and durations used.
    pub plan: Value,
    /// Wall time of the whole run.
    pub duration_s: f64,
    /// One outcome per scenario that was run.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// The JSON document: one key per scenario (`"P1"` … `"P11"`), `"machine"`, and the run's
    /// settings. A scenario that was not run (`--only`) is `{"met": false, "skipped": true}`.
    pub fn to_json(&self) -> Value {
        let mut doc = Map::new();
        doc.insert("machine".into(), self.machine.to_json());
        doc.insert("mode".into(), Value::from(self.mode()));
        doc.insert("quick".into(), Value::from(self.quick));
        doc.insert("plan".into(), self.plan.clone());
        doc.insert(
            "duration_s".into(),
            Value::from(crate::stats::round(self.duration_s, 1)),
        );
        for id in SCENARIOS {
            let value = match self.outcomes.iter().find(|o| o.id == id) {
                Some(outcome) => outcome.to_json(),
                None => json!({"met": false, "skipped": true}),
            };
            doc.insert(id.into(), value);
        }
        let met = self.outcomes.iter().filter(|o| o.met()).count();
        doc.insert(
            "summary".into(),
            json!({"scenarios_run": self.outcomes.len(), "met": met}),
        );
        Value::Object(doc)
    }

    fn mode(&self) -> &'static str {
        if self.quick {
            "quick"
        } else {
            "full"
        }
    }

    /// A plain-text table of every scenario run.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 5]> = self
            .outcomes
            .iter()
            .map(|o| {
                let met = match (&o.error, o.met()) {
                    (Some(_), _) => "ERROR".to_owned(),
                    (None, true) => "yes".to_owned(),
                    (None, false) => "NO".to_owned(),
                };
                [
                    o.id.to_owned(),
                    o.measured_text.clone(),
                    o.baseline_text.clone(),
                    o.target.to_owned(),
                    met,
                ]
            })
            .collect();
        let header = ["#", "plugvisor", "baseline (same run)", "target", "met"];
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: [&str; 5]| {
            for (cell, w) in cells.iter().zip(widths) {
                let _ = write!(out, "{cell:<w$}  ");
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        };
        line(&mut out, header);
        let rule = widths.map(|w| "-".repeat(w));
        line(&mut out, rule.each_ref().map(String::as_str));
        for row in &rows {
            line(&mut out, row.each_ref().map(String::as_str));
        }
        let _ = writeln!(out, "\nreference (not measured here):");
        for o in self.outcomes.iter().filter(|o| !o.reference.is_empty()) {
            let _ = writeln!(out, "  {:<4} {}", o.id, o.reference);
        }
        for o in self
            .outcomes
            .iter()
            .filter(|o| ["P23", "P24"].contains(&o.id))
        {
            let _ = writeln!(out, "\nside by side ({}):", o.id);
            for note in &o.notes {
                let _ = writeln!(out, "  {note}");
            }
        }
        for o in &self.outcomes {
            if let Some(e) = &o.error {
                let _ = writeln!(out, "  {} failed: {e}", o.id);
            }
        }
        let _ = writeln!(
            out,
            "\n{} mode, {} cores, kernel {}, {}; {:.0} s",
            self.mode(),
            self.machine.cores,
            self.machine.kernel,
            self.machine.rustc,
            self.duration_s
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcomes: Vec<Outcome>) -> Report {
        Report {
            machine: Machine {
                cores: 2,
                kernel: "6.0".into(),
                rustc: "rustc 1.0".into(),
            },
            quick: true,
            plan: json!({"p2_seconds": 1}),
            duration_s: 1.0,
            outcomes,
        }
    }

    #[test]
    fn the_document_has_every_documented_key() {
        let mut p1 = Outcome::new("P1", "calls", "p50 <= 2 x bare-hyper");
        p1.measure("p50_us", 20.123_456);
        p1.base("bare_hyper_p50_us", 10.0);
        p1.checks.push(Check::at_most("p50 ratio", 2.01, 2.0));
        let doc = report(vec![p1]).to_json();
        for id in SCENARIOS {
            assert!(doc[id]["met"].is_boolean(), "{id} has no met");
        }
        for key in ["cores", "kernel", "rustc"] {
            assert!(!doc["machine"][key].is_null(), "machine.{key}");
        }
        let p1 = &doc["P1"];
        for key in ["measured", "baseline", "target", "met", "checks"] {
            assert!(!p1[key].is_null(), "P1.{key}");
        }
        assert_eq!(p1["measured"]["p50_us"], 20.123);
        assert_eq!(p1["met"], false, "2.01 is over 2.0");
        assert_eq!(doc["P2"]["skipped"], true);
        assert_eq!(doc["quick"], true);
    }

    #[test]
    fn met_needs_every_check_and_no_error() {
        let mut o = Outcome::new("P3", "stream", "x");
        assert!(o.met(), "report-only outcomes are met");
        o.checks.push(Check::at_least("chunks/s", 1.5e6, 1e6));
        assert!(o.met());
        o.checks.push(Check::at_most("nan", f64::NAN, 1.0));
        assert!(!o.met(), "NaN never passes");
        o.checks.pop();
        o.error = Some("boom".into());
        assert!(!o.met());
        assert_eq!(o.to_json()["error"], "boom");
    }

    #[test]
    fn the_table_lists_every_outcome() {
        let mut o = Outcome::new("P7", "spawn", "p50 <= 1.5 x bare-spawn");
        o.measured_text = "3.1 ms".into();
        o.reference = "Python isolation library 370 ms";
        let table = report(vec![o]).table();
        assert!(table.contains("P7"), "{table}");
        assert!(table.contains("3.1 ms"), "{table}");
        assert!(table.contains("Python isolation"), "{table}");
    }
}
