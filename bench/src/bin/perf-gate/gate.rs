//! The gate's verdict, as a pure function: the committed baseline and this run's
//! instruction counts per stage, with a tolerance, give one row per stage and a pass
//! or fail. No I/O here; `main.rs` reads the files and prints [`Report::render`].
//!
//! Rules:
//! - a stage **regresses** when `now > baseline × (1 + tolerance)`: the gate fails;
//! - a stage **improves** when `now < baseline × (1 − tolerance)`: the gate passes and
//!   says so, so that the baseline is updated and the gain cannot be lost silently;
//! - a stage measured but not in the baseline (**new**), or in the baseline but not
//!   measured (**missing**), fails the gate: the baseline and the benchmark must
//!   name the same stages, and updating the baseline is how they are made to.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Instruction counts by stage name (the benchmark's function name).
pub(crate) type Counts = BTreeMap<String, u64>;

/// What the gate says about one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the tolerance of the baseline.
    Ok,
    /// More instructions than the baseline allows: fails the gate.
    Regressed,
    /// Fewer instructions than the tolerance: passes, and the baseline should follow.
    Improved,
    /// Measured, with no baseline: fails until the baseline is updated.
    New,
    /// In the baseline, not measured: fails until the baseline is updated.
    Missing,
}

impl Verdict {
    fn fails(self) -> bool {
        matches!(self, Verdict::Regressed | Verdict::New | Verdict::Missing)
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Regressed => "REGRESSED",
            Verdict::Improved => "improved",
            Verdict::New => "NEW (no baseline)",
            Verdict::Missing => "MISSING (not measured)",
        }
    }
}

/// One stage's line of the table.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    pub(crate) stage: String,
    pub(crate) baseline: Option<u64>,
    pub(crate) now: Option<u64>,
    pub(crate) verdict: Verdict,
}

impl Row {
    /// `now` relative to the baseline, in percent, when both exist.
    pub(crate) fn change_pct(&self) -> Option<f64> {
        match (self.baseline, self.now) {
            (Some(baseline), Some(now)) => Some(change_pct(baseline, now)),
            _ => None,
        }
    }
}

/// Every stage's row, in stage-name order, and the tolerance they were judged by.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) tolerance_pct: f64,
}

impl Report {
    /// Whether the gate passes: no stage regressed, new or missing.
    pub(crate) fn passed(&self) -> bool {
        !self.rows.iter().any(|row| row.verdict.fails())
    }

    /// Whether some stage got faster than the tolerance (the baseline should follow).
    pub(crate) fn improved(&self) -> bool {
        self.rows.iter().any(|row| row.verdict == Verdict::Improved)
    }

    /// The table: stage, baseline, now, change and verdict, one line per stage.
    pub(crate) fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|row| row.stage.len())
            .chain(["stage".len()])
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<width$}  {:>13}  {:>13}  {:>9}  verdict (tolerance +{}%)",
            "stage", "baseline Ir", "now Ir", "change", self.tolerance_pct
        );
        for row in &self.rows {
            let count = |value: Option<u64>| value.map_or_else(|| "-".to_string(), thousands);
            let change = row
                .change_pct()
                .map_or_else(|| "-".to_string(), |pct| format!("{pct:+.2}%"));
            let _ = writeln!(
                out,
                "{:<width$}  {:>13}  {:>13}  {:>9}  {}",
                row.stage,
                count(row.baseline),
                count(row.now),
                change,
                row.verdict.label()
            );
        }
        out
    }
}

/// Judges every stage of `measured` and `baseline` with `tolerance_pct` (a
/// percentage, e.g. 5.0).
pub(crate) fn compare(baseline: &Counts, measured: &Counts, tolerance_pct: f64) -> Report {
    let mut stages: Vec<&String> = baseline.keys().chain(measured.keys()).collect();
    stages.sort();
    stages.dedup();
    let rows = stages
        .into_iter()
        .map(|stage| {
            let (base, now) = (baseline.get(stage).copied(), measured.get(stage).copied());
            let verdict = match (base, now) {
                (Some(base), Some(now)) => judge(base, now, tolerance_pct),
                (None, _) => Verdict::New,
                (_, None) => Verdict::Missing,
            };
            Row {
                stage: stage.clone(),
                baseline: base,
                now,
                verdict,
            }
        })
        .collect();
    Report {
        rows,
        tolerance_pct,
    }
}

fn judge(baseline: u64, now: u64, tolerance_pct: f64) -> Verdict {
    let limit = tolerance_pct / 100.0;
    let (baseline, now) = (baseline as f64, now as f64);
    if now > baseline * (1.0 + limit) {
        Verdict::Regressed
    } else if now < baseline * (1.0 - limit) {
        Verdict::Improved
    } else {
        Verdict::Ok
    }
}

/// `now` relative to `baseline`, in percent (infinite for a zero baseline and a
/// non-zero count).
fn change_pct(baseline: u64, now: u64) -> f64 {
    if baseline == now {
        return 0.0;
    }
    (now as f64 - baseline as f64) / baseline as f64 * 100.0
}

/// `1234567` as `1,234,567`.
fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: f64 = 5.0;

    fn counts(pairs: &[(&str, u64)]) -> Counts {
        pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
    }

    fn verdicts(report: &Report) -> Vec<(&str, Verdict)> {
        report
            .rows
            .iter()
            .map(|row| (row.stage.as_str(), row.verdict))
            .collect()
    }

    #[test]
    fn the_same_counts_pass() {
        let base = counts(&[("decode_json", 825_447), ("store_commit", 8_900_000)]);
        let report = compare(&base, &base, TOLERANCE);
        assert!(report.passed());
        assert!(!report.improved());
        assert!(report.rows.iter().all(|r| r.change_pct() == Some(0.0)));
    }

    #[test]
    fn a_baseline_edited_down_by_a_fifth_fails_the_gate() {
        // What the gate sees when a stage costs 25 % more than when the baseline was
        // recorded: the manual check of bench/README.md, automated.
        let measured = counts(&[
            ("decode_binary", 109_551),
            ("decode_json", 825_447),
            ("processors_chain", 986_000),
        ]);
        let mut baseline = measured.clone();
        *baseline.get_mut("processors_chain").unwrap() = 986_000 * 8 / 10;
        let report = compare(&baseline, &measured, TOLERANCE);
        assert!(!report.passed());
        assert_eq!(
            verdicts(&report),
            [
                ("decode_binary", Verdict::Ok),
                ("decode_json", Verdict::Ok),
                ("processors_chain", Verdict::Regressed),
            ]
        );
        assert_eq!(report.rows[2].change_pct(), Some(25.0));
    }

    #[test]
    fn the_tolerance_is_the_boundary_both_ways() {
        // For many baselines and changes around ±tolerance, a stage fails exactly
        // when it is more than the tolerance above its baseline.
        for base in [1_000u64, 109_551, 825_447, 8_877_041, 1 << 40] {
            for per_mille in (900..=1_100).step_by(5) {
                let now = base * per_mille / 1_000;
                let report = compare(
                    &counts(&[("stage", base)]),
                    &counts(&[("stage", now)]),
                    TOLERANCE,
                );
                // The oracle in exact integers: now / base against 1.05 and 0.95.
                let expected = if now * 100 > base * 105 {
                    Verdict::Regressed
                } else if now * 100 < base * 95 {
                    Verdict::Improved
                } else {
                    Verdict::Ok
                };
                assert_eq!(report.rows[0].verdict, expected, "{base} → {now}");
                assert_eq!(report.passed(), expected != Verdict::Regressed);
            }
        }
    }

    #[test]
    fn an_improvement_passes_and_asks_for_a_new_baseline() {
        let report = compare(
            &counts(&[("store_commit", 10_000_000)]),
            &counts(&[("store_commit", 7_000_000)]),
            TOLERANCE,
        );
        assert!(report.passed());
        assert!(report.improved());
        assert_eq!(report.rows[0].change_pct(), Some(-30.0));
    }

    #[test]
    fn new_and_missing_stages_fail_until_the_baseline_follows() {
        let report = compare(
            &counts(&[("decode_json", 100), ("gone", 100)]),
            &counts(&[("decode_json", 100), ("added", 100)]),
            TOLERANCE,
        );
        assert!(!report.passed());
        assert_eq!(
            verdicts(&report),
            [
                ("added", Verdict::New),
                ("decode_json", Verdict::Ok),
                ("gone", Verdict::Missing),
            ]
        );
        assert_eq!(report.rows[0].change_pct(), None);
    }

    #[test]
    fn a_zero_tolerance_fails_on_one_instruction() {
        let report = compare(&counts(&[("s", 1_000)]), &counts(&[("s", 1_001)]), 0.0);
        assert!(!report.passed());
    }

    #[test]
    fn the_table_shows_counts_changes_and_verdicts() {
        let report = compare(
            &counts(&[("decode_json", 800_000), ("store_commit", 8_877_041)]),
            &counts(&[("decode_json", 1_000_000), ("store_commit", 8_877_041)]),
            TOLERANCE,
        );
        let table = report.render();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].contains("tolerance +5%"), "{table}");
        assert!(lines[1].starts_with("decode_json "), "{table}");
        for cell in ["800,000", "1,000,000", "+25.00%", "REGRESSED"] {
            assert!(lines[1].contains(cell), "{cell} in {table}");
        }
        for cell in ["8,877,041", "+0.00%", "ok"] {
            assert!(lines[2].contains(cell), "{cell} in {table}");
        }
    }

    #[test]
    fn thousands_are_grouped() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (825_447, "825,447"),
            (12_345_678, "12,345,678"),
        ];
        for (value, text) in cases {
            assert_eq!(thousands(value), text);
        }
    }
}
