//! The kit's verdicts: one [`Check`] per rule, each passed, failed (with why) or skipped (with
//! why), printed as a table or as JSON.

use serde_json::{json, Value};
use std::fmt::Write as _;

/// How one check came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The worker followed the rule.
    Pass,
    /// It did not: what it did instead.
    Fail(String),
    /// The rule could not be exercised on this worker: why (never counted as passed).
    Skip(String),
}

/// One rule of `docs/PROTOCOL.md`, checked.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// The section it comes from, e.g. `§4 authentication`.
    pub(crate) section: &'static str,
    /// What was checked.
    pub(crate) name: String,
    /// How it came out.
    pub(crate) outcome: Outcome,
}

/// Every check of one run, in order.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) checks: Vec<Check>,
    /// Process ids of the workers the kit started (all killed and reaped by the end).
    pub(crate) pids: Vec<u32>,
}

impl Report {
    /// Records the result of one check: `Ok` passes, `Err` fails with the message.
    pub(crate) fn record(&mut self, section: &'static str, name: &str, result: Result<(), String>) {
        let outcome = match result {
            Ok(()) => Outcome::Pass,
            Err(why) => Outcome::Fail(why),
        };
        self.push(section, name, outcome);
    }

    /// Records a check that could not run here, and why.
    pub(crate) fn skip(&mut self, section: &'static str, name: &str, why: &str) {
        self.push(section, name, Outcome::Skip(why.to_owned()));
    }

    fn push(&mut self, section: &'static str, name: &str, outcome: Outcome) {
        self.checks.push(Check {
            section,
            name: name.to_owned(),
            outcome,
        });
    }

    /// Whether any check failed.
    pub(crate) fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Fail(_)))
    }

    fn count(&self, which: impl Fn(&Outcome) -> bool) -> usize {
        self.checks.iter().filter(|c| which(&c.outcome)).count()
    }

    /// The table: one line per check, then the totals.
    pub(crate) fn table(&self) -> String {
        let width = self
            .checks
            .iter()
            .map(|c| c.section.chars().count() + 2 + c.name.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let label = format!("{}: {}", c.section, c.name);
            let (verdict, why) = match &c.outcome {
                Outcome::Pass => ("pass", String::new()),
                Outcome::Fail(why) => ("FAIL", format!("  {why}")),
                Outcome::Skip(why) => ("skip", format!("  ({why})")),
            };
            let line = format!("{verdict}  {label:<width$}{why}");
            let _ = writeln!(out, "{}", line.trim_end());
        }
        let _ = writeln!(
            out,
            "{} passed, {} failed, {} skipped",
            self.count(|o| *o == Outcome::Pass),
            self.failed(),
            self.count(|o| matches!(o, Outcome::Skip(_)))
        );
        out
    }

    /// The report as JSON: `{"passed", "failed", "skipped", "pids", "checks": [...]}`.
    pub(crate) fn to_json(&self) -> Value {
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| {
                let (result, why) = match &c.outcome {
                    Outcome::Pass => ("pass", None),
                    Outcome::Fail(why) => ("fail", Some(why)),
                    Outcome::Skip(why) => ("skip", Some(why)),
                };
                json!({"section": c.section, "check": c.name, "result": result, "why": why})
            })
            .collect();
        json!({
            "passed": self.count(|o| *o == Outcome::Pass),
            "failed": self.failed(),
            "skipped": self.count(|o| matches!(o, Outcome::Skip(_))),
            "pids": self.pids,
            "checks": checks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_counted_and_shown_with_its_reason() {
        let mut r = Report::default();
        r.record("§4 authentication", "wrong token", Err("got 200".into()));
        r.record("§7 routes", "GET /v1/health", Ok(()));
        r.skip("§9 cancellation", "drop a stream", "no slow input");
        assert_eq!(r.failed(), 1);
        let table = r.table();
        assert!(
            table.contains("FAIL  §4 authentication: wrong token"),
            "{table}"
        );
        assert!(table.contains("1 passed, 1 failed, 1 skipped"), "{table}");
        assert_eq!(r.to_json()["checks"][2]["result"], "skip");
    }
}
