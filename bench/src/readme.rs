//! The harness-owned part of `bench/README.md`: a summary of the latest record of
//! every scenario, between two HTML comment markers. Everything outside the markers
//! is hand-written and left alone; without markers the section is appended.
//!
//! Pure: records in, Markdown out ([`render`]), and old README + section in, new
//! README out ([`replace_section`]).

use std::fmt::Write as _;

use crate::record::{ConnectionsRecord, ThroughputRecord};
use crate::sweep::{StepRecord, TargetSweep};

pub(crate) const BEGIN: &str =
    "<!-- BEGIN meterflow-bench results (written by the harness; edits are overwritten) -->";
pub(crate) const END: &str = "<!-- END meterflow-bench results -->";

/// `readme` with the text between the markers replaced by `section`.
pub(crate) fn replace_section(readme: &str, section: &str) -> String {
    let block = format!("{BEGIN}\n{}\n{END}", section.trim_end());
    match (readme.find(BEGIN), readme.find(END)) {
        (Some(begin), Some(end)) if end > begin => {
            format!("{}{block}{}", &readme[..begin], &readme[end + END.len()..])
        }
        _ => {
            let mut out = readme.trim_end().to_owned();
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(&block);
            out.push('\n');
            out
        }
    }
}

fn fmt_ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("×{v:.2}"))
}

fn fmt_rate(value: f64) -> String {
    // Thousands separators keep 229,000 readable next to 9,540.
    let whole = value.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn best_row(scenario: &str, sweep: &TargetSweep, rpm: usize) -> String {
    let closed = &sweep.closed_loop;
    let closed_text = format!(
        "{} (p99 {:.0} ms)",
        fmt_rate(closed.achieved_msgs_per_s),
        closed.ack_ms.p99
    );
    match &sweep.best {
        Some(best) => {
            let service = best.service_ms.map_or_else(
                || "–".to_owned(),
                |s| format!("{:.0} / {:.0}", s.p99, s.p999),
            );
            format!(
                "| {scenario} | {} | {} | {} | {:.1} / {:.1} / {:.1} | {service} | {:.0} | {:.0} / {:.0} | {closed_text} |",
                sweep.target,
                fmt_rate(best.offered_msgs_per_s.unwrap_or(0.0)),
                fmt_rate(best.offered_msgs_per_s.unwrap_or(0.0) * rpm as f64),
                best.ack_ms.p50,
                best.ack_ms.p99,
                best.ack_ms.max,
                best.cpu_pct,
                best.rss_peak_mib,
                sweep.rss_hwm_mib,
            )
        }
        None => format!(
            "| {scenario} | {} | none sustainable | – | – | – | – | – / {:.0} | {closed_text} |",
            sweep.target, sweep.rss_hwm_mib
        ),
    }
}

fn step_is_sustainable(step: &StepRecord) -> bool {
    step.verdict.as_ref().is_some_and(|v| v.sustainable)
}

/// The Markdown summary of the latest records.
pub(crate) fn render(
    throughput: &[ThroughputRecord],
    connections: Option<&ConnectionsRecord>,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "### Latest end-to-end results\n");
    let _ = writeln!(
        md,
        "Sustainable = every message acked by the step's deadline, achieved ≥ 95 % of offered, \
         ack p99 ≤ 1 s, no growing queue, nothing skipped or shed. Ack latency is publish→ack \
         at the meters (simulator HDR histogram: p50 / p99 / max — it has no p999); \
         \"service p99 / p999\" is meterflow's received→durable histogram (bucket-interpolated). \
         CPU is % of one core (200 % = the whole machine) over the step's send phase; RSS is \
         the peak during the best step / during the whole run (unsustainable steps included). \
         The peer is Mosquitto with one counting subscriber that acks every uplink and stores \
         nothing, meant as an upper bound for \"broker only\" (see the findings for where it \
         is not one).\n"
    );
    if !throughput.is_empty() {
        let _ = writeln!(
            md,
            "| scenario | system | sustainable msgs/s (offered) | readings/s | ack ms p50 / p99 / max | service ms p99 / p999 | CPU % | RSS MiB best / peak | closed loop msgs/s |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---|---|---:|---|---|");
        for record in throughput {
            let rpm = record.settings.readings_per_message;
            let _ = writeln!(md, "{}", best_row(&record.scenario, &record.meterflow, rpm));
            if let Some(peer) = &record.peer {
                let _ = writeln!(md, "{}", best_row(&record.scenario, peer, rpm));
            }
        }
        let _ = writeln!(md);
        for record in throughput {
            let steps = |sweep: &TargetSweep| {
                format!(
                    "{} {} steps ({} sustainable)",
                    sweep.target,
                    sweep.steps.len(),
                    sweep
                        .steps
                        .iter()
                        .filter(|s| step_is_sustainable(s))
                        .count()
                )
            };
            let mut step_counts = steps(&record.meterflow);
            if let Some(peer) = &record.peer {
                step_counts.push_str(", ");
                step_counts.push_str(&steps(peer));
            }
            let built = record
                .binary
                .as_ref()
                .map_or_else(String::new, |b| format!(", meterflow built {}", b.modified));
            let _ = write!(
                md,
                "- **{}** ({}, commit `{}`{}{built}, {} meters, {} reading(s)/msg; {step_counts}; load avg {} → {}",
                record.scenario,
                record.timestamp,
                record.revision.commit,
                if record.revision.dirty {
                    " + uncommitted changes"
                } else {
                    ""
                },
                record.settings.meters,
                record.settings.readings_per_message,
                record.machine.loadavg_start,
                record.machine.loadavg_end,
            );
            if let Some(plot) = &record.plot {
                let _ = write!(md, "; plot [{plot}]({plot})");
            }
            let _ = writeln!(md, ")");
            if let Some(r) = &record.ratios {
                let _ = writeln!(
                    md,
                    "  meterflow ÷ mosquitto: sustainable rate {}, closed-loop rate {}, at {} msgs/s ack p50 {} / p99 {}, CPU {}",
                    fmt_ratio(r.sustainable_msgs_per_s),
                    fmt_ratio(r.closed_loop_msgs_per_s),
                    r.common_rate.map_or_else(|| "–".to_owned(), fmt_rate),
                    fmt_ratio(r.ack_p50_at_common_rate),
                    fmt_ratio(r.ack_p99_at_common_rate),
                    fmt_ratio(r.cpu_at_common_rate),
                );
            }
            for note in &record.notes {
                let _ = writeln!(md, "  - {note}");
            }
        }
        let _ = writeln!(md);
    }
    if let Some(record) = connections {
        let _ = writeln!(
            md,
            "#### connections ({}, commit `{}`{}{}; load avg {} → {})\n",
            record.timestamp,
            record.revision.commit,
            if record.revision.dirty {
                " + uncommitted changes"
            } else {
                ""
            },
            record
                .binary
                .as_ref()
                .map_or_else(String::new, |b| format!(", meterflow built {}", b.modified)),
            record.machine.loadavg_start,
            record.machine.loadavg_end,
        );
        let _ = writeln!(
            md,
            "| system | config | connected | idle RSS MiB | RSS at N MiB | KiB / connection | slope KiB / conn (R²) | CPU % holding | RSS after disconnect MiB |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---|---:|---:|");
        for run in &record.runs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.0} | {:.1} |",
                run.target,
                run.label,
                fmt_rate(run.connected as f64),
                run.idle_rss_mib,
                run.rss_mib,
                run.rss_per_connection_kib,
                run.slope_kib_per_connection.map_or_else(
                    || "–".to_owned(),
                    |s| format!("{s:.1} ({:.3})", run.slope_r2.unwrap_or(0.0))
                ),
                run.hold_cpu_pct,
                run.rss_after_disconnect_mib,
            );
        }
        for note in &record.notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::ConnectionsRun;
    use crate::sustain::Verdict;
    use crate::sweep::{Latency, Ratios};

    #[test]
    fn section_is_replaced_between_markers_only() {
        let readme = format!("# bench\n\nintro\n\n{BEGIN}\nold table\n{END}\n\n## micro\nkept\n");
        let out = replace_section(&readme, "new table\n");
        assert!(out.contains("new table"));
        assert!(!out.contains("old table"));
        assert!(out.starts_with("# bench\n\nintro\n\n"));
        assert!(out.ends_with("## micro\nkept\n"));
        // Idempotent.
        assert_eq!(replace_section(&out, "new table\n"), out);
    }

    #[test]
    fn section_is_appended_without_markers() {
        let out = replace_section("# bench\n", "table");
        assert_eq!(out, format!("# bench\n\n{BEGIN}\ntable\n{END}\n"));
        assert_eq!(replace_section("", "t"), format!("{BEGIN}\nt\n{END}\n"));
    }

    #[test]
    fn rates_get_thousands_separators() {
        assert_eq!(fmt_rate(229_000.4), "229,000");
        assert_eq!(fmt_rate(950.0), "950");
        assert_eq!(fmt_rate(1_000_000.0), "1,000,000");
        assert_eq!(fmt_ratio(Some(0.456)), "×0.46");
        assert_eq!(fmt_ratio(None), "–");
    }

    #[test]
    fn render_summarises_both_kinds() {
        let best = StepRecord {
            offered_msgs_per_s: Some(15_000.0),
            achieved_msgs_per_s: 14_990.0,
            ack_ms: Latency {
                p50: 4.0,
                p99: 30.0,
                max: 80.0,
            },
            cpu_pct: 120.0,
            verdict: Some(Verdict {
                sustainable: true,
                reasons: vec![],
            }),
            ..StepRecord::default()
        };
        let record = ThroughputRecord {
            scenario: "burst24".into(),
            meterflow: TargetSweep {
                target: "meterflow".into(),
                steps: vec![best.clone()],
                best: Some(best),
                rss_hwm_mib: 200.0,
                ..TargetSweep::default()
            },
            peer: Some(TargetSweep {
                target: "mosquitto".into(),
                ..TargetSweep::default()
            }),
            ratios: Some(Ratios {
                sustainable_msgs_per_s: Some(0.5),
                ..Ratios::default()
            }),
            settings: crate::sweep::SweepSettings {
                readings_per_message: 24,
                ..Default::default()
            },
            notes: vec!["machine shared".into()],
            ..ThroughputRecord::default()
        };
        let connections = ConnectionsRecord {
            runs: vec![ConnectionsRun {
                target: "meterflow".into(),
                label: "default".into(),
                connected: 19_500,
                rss_per_connection_kib: 48.2,
                ..ConnectionsRun::default()
            }],
            ..ConnectionsRecord::default()
        };
        let md = render(&[record], Some(&connections));
        assert!(
            md.contains("| burst24 | meterflow | 15,000 | 360,000 | 4.0 / 30.0 / 80.0 |"),
            "{md}"
        );
        assert!(
            md.contains("meterflow 1 steps (1 sustainable), mosquitto 0 steps (0 sustainable)"),
            "{md}"
        );
        assert!(
            md.contains("| burst24 | mosquitto | none sustainable |"),
            "{md}"
        );
        assert!(md.contains("sustainable rate ×0.50"));
        assert!(md.contains("| meterflow | default | 19,500 |"));
        assert!(md.contains("| 48.2 |"));
        assert!(md.contains("  - machine shared"));
    }
}
