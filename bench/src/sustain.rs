//! When an offered open-loop rate counts as *sustainable* — the rule the rate sweep
//! stops on. Pure: the step's measurements in, a verdict with every failed reason
//! out.
//!
//! A step is sustainable when all of these hold:
//! 1. every message was acked before the step's deadline (`unacked == 0`);
//! 2. the achieved rate is at least [`Criteria::min_achieved_ratio`] of the offered
//!    one (see [`achieved_rate`]);
//! 3. ack p99 is at most [`Criteria::max_p99_ms`];
//! 4. no backlog grew during the send phase (shard queues in messages, the sink queue
//!    in batches; see [`backlog_growth`]);
//! 5. nothing was shed or skipped: meterflow's `meterflow_messages_total{outcome="shed"}`
//!    unchanged (its endpoint blocks a connection at a full shard queue instead of
//!    skipping, so nothing else can be lost), the peer acker saw no seq gaps.
//!
//! The latency of criterion 3 is the one that settles a message: the ack topic's, or
//! the larger of it and the PUBACK's where PUBACKs settle some messages (see
//! [`crate::sweep::StepRecord::settle_ms`]).

use serde::{Deserialize, Serialize};

/// Thresholds of the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Criteria {
    /// Achieved ÷ offered must reach this: 0.95 tolerates scheduling noise of a
    /// shared machine, not a service that falls behind.
    pub(crate) min_achieved_ratio: f64,
    /// 1 s: far above a healthy commit (tens of ms) and far below the meters' resend
    /// timeout (5 s), so a step failing here is queueing, not noise.
    pub(crate) max_p99_ms: f64,
    /// Growth of the summed shard queues over the send phase that counts as a
    /// climbing backlog: 2,000 uplinks is half a sealed batch of 4,096 readings
    /// at 1 reading/message — more than one batch in flight can explain.
    pub(crate) max_queue_growth: f64,
    /// Growth of the sink queue (sealed batches) that counts as climbing: half of
    /// meterflow's default `pipeline.sink_queue` (16).
    pub(crate) max_sink_growth: f64,
}

impl Default for Criteria {
    fn default() -> Self {
        Self {
            min_achieved_ratio: 0.95,
            max_p99_ms: 1000.0,
            max_queue_growth: 2000.0,
            max_sink_growth: 8.0,
        }
    }
}

/// What one open-loop step measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct StepFacts {
    pub(crate) offered_msgs_per_s: f64,
    pub(crate) achieved_msgs_per_s: f64,
    pub(crate) unacked: u64,
    pub(crate) ack_p99_ms: f64,
    /// Trend growth of the shard queues over the send phase (`None`: not observable,
    /// as for the peer).
    pub(crate) queue_growth: Option<f64>,
    pub(crate) sink_growth: Option<f64>,
    /// Messages shed by the pipeline or (peer) lost on the way to the acker, during
    /// the step.
    pub(crate) skipped: u64,
}

/// The decision and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Verdict {
    pub(crate) sustainable: bool,
    /// Every criterion that failed, in words.
    pub(crate) reasons: Vec<String>,
}

pub(crate) fn judge(facts: &StepFacts, criteria: &Criteria) -> Verdict {
    let mut reasons = Vec::new();
    if facts.unacked > 0 {
        reasons.push(format!(
            "{} messages not acked by the deadline",
            facts.unacked
        ));
    }
    let ratio = if facts.offered_msgs_per_s > 0.0 {
        facts.achieved_msgs_per_s / facts.offered_msgs_per_s
    } else {
        0.0
    };
    if ratio < criteria.min_achieved_ratio {
        reasons.push(format!(
            "achieved {:.0}% of offered (< {:.0}%)",
            ratio * 100.0,
            criteria.min_achieved_ratio * 100.0
        ));
    }
    if facts.ack_p99_ms > criteria.max_p99_ms {
        reasons.push(format!(
            "ack p99 {:.0} ms > {:.0} ms",
            facts.ack_p99_ms, criteria.max_p99_ms
        ));
    }
    if let Some(growth) = facts.queue_growth
        && growth > criteria.max_queue_growth
    {
        reasons.push(format!("shard queues grew by {growth:.0} uplinks"));
    }
    if let Some(growth) = facts.sink_growth
        && growth > criteria.max_sink_growth
    {
        reasons.push(format!("sink queue grew by {growth:.1} batches"));
    }
    if facts.skipped > 0 {
        reasons.push(format!("{} messages shed or skipped", facts.skipped));
    }
    Verdict {
        sustainable: reasons.is_empty(),
        reasons,
    }
}

/// The rate a step achieved. The simulator's `msgs_per_s` divides by the time from
/// the first send to the *last ack*, which in an open-loop step is the paced send
/// phase plus the last message's latency; that tail would fail a healthy short step.
/// Taking one median latency off the elapsed time removes it: a service that keeps
/// up gives ≈ the offered rate, one that processes at `C < R` gives about
/// `2RC / (R + C)` (its acks trail further and further).
pub(crate) fn achieved_rate(acked: u64, elapsed_s: f64, p50_ms: f64) -> f64 {
    let send_phase = (elapsed_s - p50_ms / 1000.0).max(elapsed_s / 2.0);
    if send_phase <= 0.0 {
        return 0.0;
    }
    acked as f64 / send_phase
}

/// How much a backlog grew over a window, by its least-squares trend: slope ×
/// window length. A trend (not last − first) so a single sealed batch in flight at
/// the end does not count as growth. `None` with fewer than 3 samples in the window.
pub(crate) fn backlog_growth(samples: &[(f64, f64)], from_s: f64, to_s: f64) -> Option<f64> {
    let window: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= from_s && *t <= to_s)
        .collect();
    if window.len() < 3 {
        return None;
    }
    let n = window.len() as f64;
    let mean_t = window.iter().map(|(t, _)| t).sum::<f64>() / n;
    let mean_v = window.iter().map(|(_, v)| v).sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for (t, v) in &window {
        cov += (t - mean_t) * (v - mean_v);
        var += (t - mean_t) * (t - mean_t);
    }
    if var <= 0.0 {
        return Some(0.0);
    }
    let span = window.last().map_or(0.0, |l| l.0) - window[0].0;
    Some(cov / var * span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> StepFacts {
        StepFacts {
            offered_msgs_per_s: 10_000.0,
            achieved_msgs_per_s: 9_900.0,
            unacked: 0,
            ack_p99_ms: 40.0,
            queue_growth: Some(10.0),
            sink_growth: Some(0.0),
            skipped: 0,
        }
    }

    #[test]
    fn a_healthy_step_is_sustainable() {
        let verdict = judge(&healthy(), &Criteria::default());
        assert!(verdict.sustainable, "{verdict:?}");
        assert!(verdict.reasons.is_empty());
    }

    #[test]
    fn every_failed_criterion_is_named() {
        let facts = StepFacts {
            achieved_msgs_per_s: 8_000.0,
            unacked: 12,
            ack_p99_ms: 2_500.0,
            queue_growth: Some(50_000.0),
            sink_growth: Some(12.0),
            skipped: 3,
            ..healthy()
        };
        let verdict = judge(&facts, &Criteria::default());
        assert!(!verdict.sustainable);
        assert_eq!(verdict.reasons.len(), 6, "{:?}", verdict.reasons);
    }

    #[test]
    fn single_criteria_fail_alone() {
        let criteria = Criteria::default();
        for facts in [
            StepFacts {
                ack_p99_ms: 1000.5,
                ..healthy()
            },
            StepFacts {
                achieved_msgs_per_s: 9_400.0,
                ..healthy()
            },
            StepFacts {
                skipped: 1,
                ..healthy()
            },
            StepFacts {
                unacked: 1,
                ..healthy()
            },
        ] {
            assert_eq!(judge(&facts, &criteria).reasons.len(), 1, "{facts:?}");
        }
        // Unobservable backlogs (the peer) do not fail a step.
        let peer = StepFacts {
            queue_growth: None,
            sink_growth: None,
            ..healthy()
        };
        assert!(judge(&peer, &criteria).sustainable);
        // Exactly at the thresholds still passes.
        let edge = StepFacts {
            achieved_msgs_per_s: 9_500.0,
            ack_p99_ms: 1000.0,
            queue_growth: Some(2000.0),
            ..healthy()
        };
        assert!(judge(&edge, &criteria).sustainable);
    }

    #[test]
    fn achieved_rate_discounts_the_ack_tail() {
        // 60,000 messages paced over 6 s, last ack 20 ms after the last send.
        let rate = achieved_rate(60_000, 6.02, 20.0);
        assert!((rate - 10_000.0).abs() < 1.0, "{rate}");
        // A service at 8,000/s behind a 10,000/s schedule: last ack at 7.5 s,
        // median latency ~0.75 s → ~8,900/s, below 95 %.
        let behind = achieved_rate(60_000, 7.5, 750.0);
        assert!(behind < 9_500.0 && behind > 8_000.0, "{behind}");
        assert_eq!(achieved_rate(10, 0.0, 0.0), 0.0);
        // A huge median cannot make the send phase shorter than half the run.
        assert!((achieved_rate(100, 2.0, 5_000.0) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn backlog_growth_follows_the_trend() {
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 100.0)).collect();
        assert_eq!(backlog_growth(&flat, 0.0, 9.0), Some(0.0));
        let climbing: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 1000.0 * i as f64)).collect();
        let growth = backlog_growth(&climbing, 0.0, 9.0).unwrap();
        assert!((growth - 9000.0).abs() < 1e-6, "{growth}");
        // A spike at the end moves the trend far less than last − first would.
        let mut spike = flat.clone();
        spike[9].1 = 4_000.0;
        let growth = backlog_growth(&spike, 0.0, 9.0).unwrap();
        assert!(growth < 3_900.0, "{growth}");
        // Samples outside the window are ignored.
        assert_eq!(backlog_growth(&climbing, 0.0, 1.5), None);
        assert_eq!(backlog_growth(&[], 0.0, 1.0), None);
    }
}
