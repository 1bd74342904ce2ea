//! The harness-owned part of `bench/README.md`: a summary of the latest record of
//! every scenario, between two HTML comment markers. Everything outside the markers
//! is hand-written and left alone; without markers the section is appended.
//!
//! Pure: records in, Markdown out ([`render`]), and old README + section in, new
//! README out ([`replace_section`]).

use std::fmt::Write as _;

use crate::record::{ConnectionsRecord, ThroughputRecord};
use crate::sweep::{Latency, StepRecord, TargetSweep};

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

fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The PUBACK-only step at `step`'s offered rate, if one ran.
fn puback_step<'a>(sweep: &'a TargetSweep, step: &StepRecord) -> Option<&'a StepRecord> {
    sweep
        .puback_steps
        .iter()
        .find(|p| p.offered_msgs_per_s == step.offered_msgs_per_s)
}

/// PUBACK latency at `step`'s rate: its own, or its PUBACK step's.
fn puback_at(sweep: &TargetSweep, step: &StepRecord) -> Option<Latency> {
    step.puback_ms
        .or_else(|| puback_step(sweep, step).and_then(|p| p.puback_ms))
}

/// `p50 / p99` of the PUBACK latency, or `–`.
fn fmt_puback(latency: Option<Latency>) -> String {
    latency.map_or_else(
        || "–".to_owned(),
        |p| format!("{:.1} / {:.1}", p.p50, p.p99),
    )
}

fn half_cell(sweep: &TargetSweep) -> String {
    sweep.half_step.as_ref().map_or_else(
        || "–".to_owned(),
        |half| {
            let puback = puback_at(sweep, half).map_or_else(String::new, |p| {
                format!(" (PUBACK {:.1} / {:.1})", p.p50, p.p99)
            });
            format!(
                "{}: {:.1} / {:.1}{puback}{}",
                fmt_rate(half.offered_msgs_per_s.unwrap_or(0.0)),
                half.ack_ms.p50,
                half.ack_ms.p99,
                if step_is_sustainable(half) {
                    ""
                } else {
                    " (not sustainable)"
                }
            )
        },
    )
}

fn best_row(scenario: &str, sweep: &TargetSweep, rpm: usize) -> String {
    let closed = &sweep.closed_loop;
    let closed_text = format!(
        "{} (p99 {:.0} ms)",
        fmt_rate(closed.achieved_msgs_per_s),
        closed.ack_ms.p99
    );
    let half = half_cell(sweep);
    match &sweep.best {
        Some(best) => {
            let service = best.service_ms.map_or_else(
                || "–".to_owned(),
                |s| format!("{:.0} / {:.0}", s.p99, s.p999),
            );
            format!(
                "| {scenario} | {} | {} | {} | {:.1} / {:.1} / {:.1} | {} | {half} | {service} | {closed_text} |",
                sweep.target,
                fmt_rate(best.offered_msgs_per_s.unwrap_or(0.0)),
                fmt_rate(best.offered_msgs_per_s.unwrap_or(0.0) * rpm as f64),
                best.ack_ms.p50,
                best.ack_ms.p99,
                best.ack_ms.max,
                fmt_puback(puback_at(sweep, best)),
            )
        }
        None => format!(
            "| {scenario} | {} | none sustainable | – | – | – | {half} | – | {closed_text} |",
            sweep.target
        ),
    }
}

/// The cost row: CPU at the best step, CPU-µs per message and reading at the best
/// and the half step, RSS.
fn cost_row(scenario: &str, sweep: &TargetSweep) -> String {
    let best = sweep.best.as_ref();
    let half = sweep.half_step.as_ref();
    let pair = |f: fn(&StepRecord) -> Option<f64>, decimals: usize| {
        format!(
            "{} / {}",
            fmt_opt(best.and_then(f), decimals),
            fmt_opt(half.and_then(f), decimals)
        )
    };
    let puback_only = |step: Option<&StepRecord>| {
        fmt_opt(
            step.and_then(|s| puback_step(sweep, s))
                .and_then(|p| p.cpu_us_per_msg),
            1,
        )
    };
    format!(
        "| {scenario} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
        sweep.target,
        best.map_or_else(
            || "–".to_owned(),
            |b| format!("{:.0} / {:.0}", b.cpu_pct, b.generator_cpu_pct)
        ),
        pair(|s| s.cpu_us_per_msg, 1),
        pair(|s| s.cpu_us_per_reading, 2),
        pair(|s| s.generator_cpu_us_per_msg, 1),
        puback_only(best),
        puback_only(half),
        best.and_then(|b| Some((b.service_cpu_s?, b.service_cpu_wait_s?)))
            .map_or_else(
                || "–".to_owned(),
                |(on, wait)| format!("{on:.1} / {wait:.1}")
            ),
        best.map_or_else(
            || format!("– / {:.0}", sweep.rss_hwm_mib),
            |b| format!("{:.0} / {:.0}", b.rss_peak_mib, sweep.rss_hwm_mib)
        ),
    )
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
         at the meters (simulator HDR histogram: p50 / p99 / max — it has no p999). \
         It is what the ack topic's `{{\"seq\":W}}` settled (the simulator ignores PUBACKs \
         there); \"PUBACK\" is publish→PUBACK in meterflow's PUBACK steps, at the same rates with \
         meters that do not subscribe to the ack topic, so its durable PUBACK alone settles \
         (simulators that have `--no-ack-topic`). \"½\" is one more step at half of meterflow's \
         sustainable rate, the same rate for every system. \
         \"service p99 / p999\" is meterflow's received→durable histogram (bucket-interpolated). \
         CPU % is of one core (200 % = the whole machine) over the step's send phase; CPU µs is \
         the service's CPU over the whole step (a peer's broker plus its acker) ÷ messages or \
         readings acked, at the best / the ½ step, beside the seconds its threads spent on a CPU \
         and runnable but waiting for one (schedstat run delay summed over its threads: other \
         engineers' work, the generator and its own other threads) over the best step; RSS is the peak during the best step / \
         during the whole run (unsustainable steps included). The peers are Mosquitto and \
         rumqttd (meterflow's former embedded broker), each with one counting subscriber that \
         acks every uplink and stores nothing, meant as an upper bound for \"broker only\" \
         (see the findings for where it is not one).\n"
    );
    if !throughput.is_empty() {
        let _ = writeln!(
            md,
            "| scenario | system | sustainable msgs/s (offered) | readings/s | ack ms p50 / p99 / max | PUBACK ms p50 / p99 | at ½: msgs/s: ack ms p50 / p99 | service ms p99 / p999 | closed loop msgs/s |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---|---|---|---|---|");
        for record in throughput {
            let rpm = record.settings.readings_per_message;
            let _ = writeln!(md, "{}", best_row(&record.scenario, &record.meterflow, rpm));
            for peer in record.all_peers() {
                let _ = writeln!(md, "{}", best_row(&record.scenario, peer, rpm));
            }
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "| scenario | system | CPU % service / generator | service CPU µs/msg best / ½ | service CPU µs/reading best / ½ | generator CPU µs/msg best / ½ | PUBACK only: service CPU µs/msg best / ½ | best step: service s on CPU / waiting for a CPU | RSS MiB best / peak |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        for record in throughput {
            let _ = writeln!(md, "{}", cost_row(&record.scenario, &record.meterflow));
            for peer in record.all_peers() {
                let _ = writeln!(md, "{}", cost_row(&record.scenario, peer));
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
            for peer in record.all_peers() {
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
            for r in record.all_ratios() {
                let _ = writeln!(
                    md,
                    "  meterflow ÷ {}: sustainable rate {}, closed-loop rate {}, at {} msgs/s ack p50 {} / p99 {}, CPU {}, CPU µs/msg {}; at ½ ack p99 {}, CPU µs/msg {}",
                    r.peer,
                    fmt_ratio(r.sustainable_msgs_per_s),
                    fmt_ratio(r.closed_loop_msgs_per_s),
                    r.common_rate.map_or_else(|| "–".to_owned(), fmt_rate),
                    fmt_ratio(r.ack_p50_at_common_rate),
                    fmt_ratio(r.ack_p99_at_common_rate),
                    fmt_ratio(r.cpu_at_common_rate),
                    fmt_ratio(r.cpu_us_per_msg_at_common_rate),
                    fmt_ratio(r.ack_p99_at_half_rate),
                    fmt_ratio(r.cpu_us_per_msg_at_half_rate),
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
            "| system | config | connected | idle RSS MiB | RSS at N MiB | KiB / connection | slope KiB / conn (R²) | CPU % holding | RSS after disconnect MiB | failed connection attempts |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---|---:|---:|---:|");
        for run in &record.runs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.0} | {:.1} | {} |",
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
                fmt_rate(run.connection_errors as f64),
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
            cpu_us_per_msg: Some(41.24),
            cpu_us_per_reading: Some(1.72),
            verdict: Some(Verdict {
                sustainable: true,
                reasons: vec![],
            }),
            ..StepRecord::default()
        };
        let half = StepRecord {
            offered_msgs_per_s: Some(7_500.0),
            ack_ms: Latency {
                p50: 2.0,
                p99: 9.0,
                max: 20.0,
            },
            cpu_us_per_msg: Some(50.0),
            ..best.clone()
        };
        let puback_half = StepRecord {
            puback_ms: Some(Latency {
                p50: 1.5,
                p99: 8.0,
                max: 19.0,
            }),
            cpu_us_per_msg: Some(30.0),
            ..half.clone()
        };
        let record = ThroughputRecord {
            scenario: "burst24".into(),
            meterflow: TargetSweep {
                target: "meterflow".into(),
                steps: vec![best.clone()],
                best: Some(best),
                half_step: Some(half),
                puback_steps: vec![puback_half],
                rss_hwm_mib: 200.0,
                ..TargetSweep::default()
            },
            peers: vec![
                TargetSweep {
                    target: "mosquitto".into(),
                    ..TargetSweep::default()
                },
                TargetSweep {
                    target: "rumqttd".into(),
                    ..TargetSweep::default()
                },
            ],
            peer_ratios: vec![Ratios {
                peer: "mosquitto".into(),
                sustainable_msgs_per_s: Some(0.5),
                ..Ratios::default()
            }],
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
            md.contains(
                "| burst24 | meterflow | 15,000 | 360,000 | 4.0 / 30.0 / 80.0 | – | 7,500: 2.0 / 9.0 (PUBACK 1.5 / 8.0) |"
            ),
            "{md}"
        );
        assert!(
            md.contains("meterflow 1 steps (1 sustainable), mosquitto 0 steps (0 sustainable), rumqttd 0 steps (0 sustainable)"),
            "{md}"
        );
        assert!(
            md.contains("| burst24 | mosquitto | none sustainable |"),
            "{md}"
        );
        assert!(
            md.contains("| burst24 | rumqttd | none sustainable |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| burst24 | meterflow | 120 / 0 | 41.2 / 50.0 | 1.72 / 1.72 | – / – | – / 30.0 | – |"
            ),
            "{md}"
        );
        assert!(md.contains("meterflow ÷ mosquitto: sustainable rate ×0.50"));
        assert!(md.contains("| meterflow | default | 19,500 |"));
        assert!(md.contains("| 48.2 |"));
        assert!(md.contains("  - machine shared"));
    }
}
