//! What a run measured: live fleet counters ([`FleetCounters`], atomics that a binary
//! can print while the run goes on) and the final [`Report`].
//!
//! Meter tasks add to the counters with relaxed atomics, at most once per wake-up,
//! never per reading; latency goes to one histogram per meter task, merged once at
//! the end ([`LatencySummary::from_histogram`]), so the hot path takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Live totals of a running fleet. Every field only grows, except `connected`.
#[derive(Debug, Default)]
pub struct FleetCounters {
    /// Distinct messages published at least once.
    pub sent: AtomicU64,
    /// Messages cleared by an ack.
    pub acked: AtomicU64,
    /// Readings in acked messages.
    pub acked_readings: AtomicU64,
    /// Publications of a message after its first.
    pub resent: AtomicU64,
    /// Successful connections after a meter's first.
    pub reconnects: AtomicU64,
    /// Failed connection attempts and dropped connections.
    pub connection_errors: AtomicU64,
    /// Messages on an ack topic that were not `{"seq":N}`.
    pub bad_acks: AtomicU64,
    /// Meters connected right now.
    pub connected: AtomicU64,
    /// Messages published again after their ack (injected duplicates).
    pub duplicates: AtomicU64,
    /// Messages held back and sent after their successor.
    pub out_of_order: AtomicU64,
    /// Malformed payloads published.
    pub malformed: AtomicU64,
    /// Connections dropped by reconnect storms.
    pub storm_disconnects: AtomicU64,
    /// Publishes rumqttc reported sending that no queued message could be paired
    /// with, so their PUBACKs settled nothing. Always 0 unless the simulator's
    /// packet-id bookkeeping has a bug (the tests check it).
    pub pubacks_unpaired: AtomicU64,
}

/// A consistent-enough copy of [`FleetCounters`] for printing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersSnapshot {
    pub sent: u64,
    pub acked: u64,
    pub acked_readings: u64,
    pub resent: u64,
    pub reconnects: u64,
    pub connection_errors: u64,
    pub bad_acks: u64,
    pub connected: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub malformed: u64,
    pub storm_disconnects: u64,
    pub pubacks_unpaired: u64,
}

impl FleetCounters {
    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            sent: get(&self.sent),
            acked: get(&self.acked),
            acked_readings: get(&self.acked_readings),
            resent: get(&self.resent),
            reconnects: get(&self.reconnects),
            connection_errors: get(&self.connection_errors),
            bad_acks: get(&self.bad_acks),
            connected: get(&self.connected),
            duplicates: get(&self.duplicates),
            out_of_order: get(&self.out_of_order),
            malformed: get(&self.malformed),
            storm_disconnects: get(&self.storm_disconnects),
            pubacks_unpaired: get(&self.pubacks_unpaired),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Publish→ack latency, from a message's first send to the acknowledgement that
/// settled it, in milliseconds (recorded in microseconds, 2 significant digits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl LatencySummary {
    pub(crate) fn from_histogram(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.5)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// The outcome of a run. `unacked == 0` means every planned message was acked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub meters: usize,
    /// Messages the fleet had to send (meters × messages_per_meter, less what
    /// comms-loss meters never send).
    pub messages: u64,
    /// Distinct messages published at least once.
    pub sent: u64,
    pub acked: u64,
    /// Planned messages without an ack at the end (never sent ones included).
    pub unacked: u64,
    /// Publications of a message after its first (timeouts and reconnects).
    pub resent: u64,
    /// Acked messages per second of the send phase.
    pub msgs_per_s: f64,
    /// Acked readings per second of the send phase.
    pub readings_per_s: f64,
    /// The send phase: from the first meter allowed to send to the last ack (or the
    /// end of the run).
    pub elapsed_s: f64,
    /// The connect phase before it (0 without `connect_first`).
    pub connect_s: f64,
    /// Messages settled by the ack topic's watermark: publish → the ack covering it.
    pub ack_latency_ms: LatencySummary,
    /// Messages settled by a durable PUBACK (`SimConfig::puback_durable`): publish →
    /// the first PUBACK of any of its publications. A message is settled once, by
    /// whichever of the two comes first, and counted in that one only.
    #[serde(default)]
    pub puback_latency_ms: LatencySummary,
    pub reconnects: u64,
    pub connection_errors: u64,
    pub bad_acks: u64,
    /// Injected faults, as sent: duplicates after an ack, out-of-order messages,
    /// malformed payloads, connections dropped by reconnect storms.
    pub duplicates: u64,
    pub out_of_order: u64,
    pub malformed: u64,
    pub storms: u64,
    pub storm_disconnects: u64,
    /// The resolved start of the readings: with the rest of the config, what
    /// [`crate::meter_messages`] needs to regenerate the ground truth.
    pub start_ts_ms: i64,
    /// The run ended at its deadline or was stopped before everything was acked.
    pub stopped_early: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_reported_in_milliseconds() {
        let mut histogram = Histogram::<u64>::new(2).unwrap();
        for us in [1_000, 2_000, 3_000, 100_000] {
            histogram.record(us).unwrap();
        }
        let summary = LatencySummary::from_histogram(&histogram);
        assert!((summary.p50 - 2.0).abs() < 0.05, "{summary:?}");
        assert!((summary.max - 100.0).abs() < 1.0, "{summary:?}");
        assert_eq!(
            LatencySummary::from_histogram(&Histogram::new(2).unwrap()),
            LatencySummary::default()
        );
    }

    #[test]
    fn report_round_trips_as_json() {
        let report = Report {
            meters: 2,
            messages: 4,
            sent: 4,
            acked: 4,
            ..Report::default()
        };
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains(r#""puback_latency_ms":{"p50":0.0"#), "{json}");
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
        // A report written before PUBACK latency existed still reads.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old.as_object_mut().unwrap().remove("puback_latency_ms");
        assert_eq!(serde_json::from_value::<Report>(old).unwrap(), report);
    }
}
