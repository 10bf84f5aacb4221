//! A dependency-free SVG chart of a run: one bar per target check, its length how far the
//! measured figure is from its limit (1.0 = exactly at the target, longer = better).

use crate::report::{Check, Op, Report};
use std::fmt::Write as _;

/// Bars longer than this many times the target are drawn cut off (the label gives the figure).
const CAP: f64 = 4.0;
const ROW: usize = 22;
const LABEL: usize = 330;
const PLOT: usize = 420;

/// How many times better than its limit a check's figure is (below 1: missed).
pub fn headroom(check: &Check) -> f64 {
    let score = match check.op {
        Op::AtMost => check.limit / check.value,
        Op::AtLeast => check.value / check.limit,
    };
    match (score.is_finite(), check.ok()) {
        (true, _) => score.max(0.0),
        // A limit of zero met exactly (say, no failed calls) is as good as it gets.
        (false, true) => CAP,
        (false, false) => 0.0,
    }
}

/// The chart of every check of `report`, as an SVG document.
pub fn svg(report: &Report) -> String {
    let rows: Vec<(String, f64)> = report
        .outcomes
        .iter()
        .flat_map(|o| {
            o.checks
                .iter()
                .map(move |c| (format!("{} {}", o.id, c.figure), headroom(c)))
        })
        .collect();
    let width = LABEL + PLOT + 70;
    let height = ROW * rows.len() + 60;
    let x = |score: f64| LABEL as f64 + score.min(CAP) / CAP * PLOT as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<text x="10" y="18" font-weight="bold">plugvisor-bench ({} mode): measured figure relative to its target (1.0 = at target, longer is better)</text>"#,
        if report.quick { "quick" } else { "full" }
    );
    for (i, (label, score)) in rows.iter().enumerate() {
        let y = 34 + i * ROW;
        let colour = if *score >= 1.0 { "#3a9d5d" } else { "#d0473c" };
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LABEL - 8,
            y + 14,
            escape(label)
        );
        let _ = writeln!(
            out,
            r#"<rect x="{LABEL}" y="{}" width="{:.1}" height="{}" fill="{colour}"/>"#,
            y + 3,
            x(*score) - LABEL as f64,
            ROW - 6
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}">{score:.2}</text>"#,
            x(*score) + 4.0,
            y + 14
        );
    }
    let one = x(1.0);
    let _ = writeln!(
        out,
        r##"<line x1="{one:.1}" y1="28" x2="{one:.1}" y2="{}" stroke="#333" stroke-dasharray="4 3"/>"##,
        height - 22
    );
    let _ = writeln!(
        out,
        r#"<text x="{one:.1}" y="{}" text-anchor="middle">target</text>"#,
        height - 8
    );
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_is_one_at_the_limit_and_larger_when_better() {
        assert_eq!(headroom(&Check::at_most("x", 2.0, 2.0)), 1.0);
        assert_eq!(headroom(&Check::at_most("x", 1.0, 2.0)), 2.0);
        assert_eq!(headroom(&Check::at_least("x", 3.0, 1.5)), 2.0);
        assert!(headroom(&Check::at_least("x", 0.5, 1.0)) < 1.0);
        assert_eq!(headroom(&Check::at_most("x", 0.0, 0.0)), CAP);
        assert_eq!(headroom(&Check::at_most("x", f64::NAN, 1.0)), 0.0);
    }
}
