//! Every metric meterflow exports, in one place, with its meaning (CONVENTIONS §9).
//! Handles are registered once at start and cloned into the threads that use them;
//! nothing builds a label set on the hot path.
//!
//! Accounting identity (DESIGN §6.4), per message once the pipeline is idle:
//! `meterflow_messages_received_total` = sum over outcomes of
//! `meterflow_messages_total{outcome="stored"|"dead_letter"|"dead_letter_dropped"|"duplicate"|"shed"}`.
//! `dead_letter_dropped` is a rejected uplink whose sender was over its dead-letter
//! rate: answered like a dead letter, not stored.
//! `stored` and `dead_letter` are counted when their write is durable; `duplicate`
//! when the shard recognises it; `shed` when the endpoint took an uplink but could not
//! hand it to a stopping pipeline (its meter got no PUBACK and resends). Readings are counted where their number is known (a shed or
//! undecodable message has none).

use std::collections::HashMap;

use meterflow_model::alert::{AlertKind, EpisodeState};
use meterflow_model::{Reject, TenantId};
use meterflow_storage::embedded::retention::EXPIRING_TABLES;

use crate::endpoint::session::{ConnectOutcome, ProtocolViolation};
use crate::notifier::NotifierMetrics;
use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub mod process;

pub const MESSAGES_RECEIVED: &str = "meterflow_messages_received_total";
pub const MESSAGES: &str = "meterflow_messages_total";
pub const READINGS: &str = "meterflow_readings_total";
pub const DEAD_LETTERS: &str = "meterflow_dead_letters_total";
pub const DEAD_LETTERS_DROPPED: &str = "meterflow_dead_letters_dropped_total";
pub const STORE_EXPIRED: &str = "meterflow_store_expired_rows_total";
pub const QUEUE_DEPTH: &str = "meterflow_shard_queue_depth";
pub const SINK_QUEUE_DEPTH: &str = "meterflow_sink_queue_depth";
pub const BATCH_READINGS: &str = "meterflow_batch_readings";
pub const STORE_WRITE_SECONDS: &str = "meterflow_store_write_seconds";
pub const STORE_ERRORS: &str = "meterflow_store_errors_total";
pub const CACHE_ERRORS: &str = "meterflow_cache_errors_total";
pub const CACHE_WRITE_SECONDS: &str = "meterflow_cache_write_seconds";
pub const CACHE_DROPPED: &str = "meterflow_cache_dropped_total";
/// Deprecated (kept one release): the same values as [`STORE_BREAKER_STATE`].
pub const STORE_BREAKER: &str = "meterflow_store_breaker_open";
/// Deprecated (kept one release): the same values as [`CACHE_BREAKER_STATE`].
pub const CACHE_BREAKER: &str = "meterflow_cache_breaker_open";
pub const STORE_BREAKER_STATE: &str = "meterflow_store_breaker_state";
pub const CACHE_BREAKER_STATE: &str = "meterflow_cache_breaker_state";
pub const BUILD_INFO: &str = "meterflow_build_info";
pub const RECEIVED_TO_DURABLE_SECONDS: &str = "meterflow_publish_to_durable_seconds";
pub const ACKS: &str = "meterflow_acks_published_total";
pub const PUBACKS: &str = "meterflow_pubacks_total";
pub const MQTT_CONNECTIONS: &str = "meterflow_mqtt_connections";
pub const MQTT_CONNECTS: &str = "meterflow_mqtt_connects_total";
pub const MQTT_REFUSED: &str = "meterflow_mqtt_refused_total";
pub const MQTT_VIOLATIONS: &str = "meterflow_mqtt_protocol_violations_total";
pub const MQTT_TAKEOVERS: &str = "meterflow_mqtt_takeovers_total";
pub const MQTT_ACCEPT_ERRORS: &str = "meterflow_mqtt_accept_errors_total";
pub const HTTP_REFUSED: &str = "meterflow_http_connections_refused_total";
pub const SEQ_GAPS: &str = "meterflow_seq_gaps_total";
pub const DORMANT_HYDRATED: &str = "meterflow_dormant_meters_hydrated_total";
pub const SHARD_METERS: &str = "meterflow_shard_meters";
pub const METERS_RESTED: &str = "meterflow_meters_rested_total";
pub const ALERTS: &str = "meterflow_alerts_total";
pub const NOTIFICATIONS: &str = "meterflow_notifications_total";
pub const TENANT_MESSAGES: &str = "meterflow_tenant_messages_stored_total";
pub const TENANT_READINGS: &str = "meterflow_tenant_readings_stored_total";

/// Latency buckets (seconds) from 1 ms to 10 s: acks are expected in tens of ms, and
/// a store outage shows in the top buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Batch size buckets (readings), up to beyond the default seal size.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 4096.0, 8192.0, 16384.0,
];

/// Installs the Prometheus recorder (once per process) and describes every metric.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_READINGS.into()), BATCH_BUCKETS)
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once");
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        MESSAGES_RECEIVED,
        "Uplink messages taken from meters by the endpoint."
    );
    describe_counter!(
        MESSAGES,
        "Uplink messages by outcome: stored, dead_letter, duplicate, shed."
    );
    describe_counter!(
        READINGS,
        "Readings by outcome, where their number is known."
    );
    describe_counter!(DEAD_LETTERS, "Dead-lettered uplinks by reason code.");
    describe_counter!(
        DEAD_LETTERS_DROPPED,
        "Dead letters not stored because their sender was over its dead-letter rate, by reason code (still answered)."
    );
    describe_counter!(
        STORE_EXPIRED,
        "Rows the embedded store's retention sweep deleted, by table."
    );
    describe_gauge!(QUEUE_DEPTH, "Uplinks waiting in each shard's queue.");
    describe_gauge!(SINK_QUEUE_DEPTH, "Sealed batches waiting for the store.");
    describe_histogram!(BATCH_READINGS, "Readings per sealed batch.");
    describe_histogram!(
        STORE_WRITE_SECONDS,
        "Duration of one durable store write (a group of batches)."
    );
    describe_counter!(
        STORE_ERRORS,
        "Failed store write attempts (transient ones are retried by the sink)."
    );
    describe_counter!(
        CACHE_ERRORS,
        "Failed hot-cache updates (kept and applied when the cache is back)."
    );
    describe_histogram!(CACHE_WRITE_SECONDS, "Duration of one hot-cache update.");
    describe_counter!(
        CACHE_DROPPED,
        "Cache updates dropped because the cache was down too long (repaired by the next report)."
    );
    describe_gauge!(
        STORE_BREAKER_STATE,
        "Store circuit breaker: 0 closed, 1 open, 2 half-open (backends with a breaker)."
    );
    describe_gauge!(
        CACHE_BREAKER_STATE,
        "Cache circuit breaker: 0 closed, 1 open, 2 half-open (backends with a breaker)."
    );
    describe_gauge!(
        STORE_BREAKER,
        "Deprecated, removed in the next release: use meterflow_store_breaker_state (same values: 0 closed, 1 open, 2 half-open)."
    );
    describe_gauge!(
        CACHE_BREAKER,
        "Deprecated, removed in the next release: use meterflow_cache_breaker_state (same values: 0 closed, 1 open, 2 half-open)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the running meterflow's version in the `version` label."
    );
    describe_histogram!(
        RECEIVED_TO_DURABLE_SECONDS,
        "From an uplink reaching meterflow to its readings being durable."
    );
    describe_counter!(ACKS, "Ack watermarks published to meters.");
    describe_counter!(
        PUBACKS,
        "PUBACKs sent: QoS 1 uplinks answered once durable (stored, dead-lettered or a duplicate of a durable one)."
    );
    describe_gauge!(
        MQTT_CONNECTIONS,
        "MQTT connections open now (meters, integrations)."
    );
    describe_counter!(
        MQTT_CONNECTS,
        "CONNECT outcomes: accepted, or refused by reason (client_id, credentials, will, capacity, rate, timeout, protocol_version, tls)."
    );
    describe_counter!(
        MQTT_REFUSED,
        "Refused by the ACL: publishes to a topic not the meter's own or retained (what=publish, also dead-lettered) and subscriptions (what=subscribe)."
    );
    describe_counter!(
        MQTT_VIOLATIONS,
        "Connections closed for what they sent, by kind (qos2, publish_not_allowed, malformed, too_large, keep_alive)."
    );
    describe_counter!(
        MQTT_TAKEOVERS,
        "Sessions closed because a new connection authenticated as the same client."
    );
    describe_counter!(
        HTTP_REFUSED,
        "HTTP connections refused at http.max_connections (answered 503 and closed)."
    );
    describe_counter!(
        MQTT_ACCEPT_ERRORS,
        "Errors accepting connections (e.g. out of descriptors); the endpoint backs off."
    );
    describe_counter!(SEQ_GAPS, "Seq gaps given up on after the resend window.");
    describe_counter!(
        DORMANT_HYDRATED,
        "Stored meters hydrated after start without an uplink from them, so that the timer rules cover them."
    );
    describe_gauge!(
        SHARD_METERS,
        "Meters a shard holds in memory (state=held) and lets rest in the store past pipeline.held_meters (state=resting)."
    );
    describe_counter!(
        METERS_RESTED,
        "Meters let rest in the store because their shard held more than pipeline.held_meters; each is read back on its next uplink or when a timer rule is due on it."
    );
    describe_counter!(
        ALERTS,
        "Alert episode events by kind and state (opened, updated, cleared)."
    );
    describe_counter!(
        TENANT_MESSAGES,
        "Uplink messages stored, by tenant (counted once durable)."
    );
    describe_counter!(
        TENANT_READINGS,
        "Readings meters sent that are stored, by tenant (counted once durable)."
    );
    describe_counter!(
        NOTIFICATIONS,
        "Alert notifications by outcome: published (MQTT), dropped (queue full), webhook_failed."
    );
}

/// Stored messages and readings per tenant, registered on a tenant's first stored
/// batch. Only configured tenants reach the store, so the label set is bounded.
#[derive(Default)]
pub struct TenantStored {
    by_tenant: HashMap<TenantId, (Counter, Counter)>,
}

impl TenantStored {
    /// Counts `messages` and `readings` stored for `tenant`.
    pub fn add(&mut self, tenant: &TenantId, messages: u64, readings: u64) {
        if !self.by_tenant.contains_key(tenant) {
            let label = tenant.as_str().to_owned();
            let counters = (
                counter!(TENANT_MESSAGES, "tenant" => label.clone()),
                counter!(TENANT_READINGS, "tenant" => label),
            );
            self.by_tenant.insert(tenant.clone(), counters);
        }
        let (m, r) = &self.by_tenant[tenant];
        m.increment(messages);
        r.increment(readings);
    }
}

/// Counters for one outcome, messages and readings together.
#[derive(Clone)]
pub struct OutcomeCounters {
    pub messages: Counter,
    pub readings: Counter,
}

impl OutcomeCounters {
    fn new(outcome: &'static str) -> Self {
        Self {
            messages: counter!(MESSAGES, "outcome" => outcome),
            readings: counter!(READINGS, "outcome" => outcome),
        }
    }

    pub fn add(&self, messages: u64, readings: u64) {
        self.messages.increment(messages);
        self.readings.increment(readings);
    }
}

/// The handles the pipeline uses.
#[derive(Clone)]
pub struct PipelineMetrics {
    pub received: Counter,
    pub stored: OutcomeCounters,
    pub dead_letter: OutcomeCounters,
    pub dead_letter_dropped: OutcomeCounters,
    pub duplicate: OutcomeCounters,
    pub shed: OutcomeCounters,
    dead_letter_reasons: Vec<Counter>,
    dead_letter_dropped_reasons: Vec<Counter>,
    pub sink_queue_depth: Gauge,
    pub batch_readings: Histogram,
    pub store_write_seconds: Histogram,
    pub store_errors: Counter,
    pub cache_errors: Counter,
    pub cache_write_seconds: Histogram,
    pub cache_dropped: Counter,
    pub store_breaker_open: Gauge,
    pub cache_breaker_open: Gauge,
    pub store_breaker_state: Gauge,
    pub cache_breaker_state: Gauge,
    pub received_to_durable_seconds: Histogram,
    pub acks: Counter,
    pub seq_gaps: Counter,
    pub dormant_hydrated: Counter,
    pub meters_rested: Counter,
    alerts: Vec<Counter>,
    pub notifications_dropped: Counter,
}

impl PipelineMetrics {
    pub fn register() -> Self {
        Self {
            received: counter!(MESSAGES_RECEIVED),
            stored: OutcomeCounters::new("stored"),
            dead_letter: OutcomeCounters::new("dead_letter"),
            dead_letter_dropped: OutcomeCounters::new("dead_letter_dropped"),
            duplicate: OutcomeCounters::new("duplicate"),
            shed: OutcomeCounters::new("shed"),
            dead_letter_reasons: Reject::ALL
                .iter()
                .map(|r| counter!(DEAD_LETTERS, "reason" => r.code()))
                .collect(),
            dead_letter_dropped_reasons: Reject::ALL
                .iter()
                .map(|r| counter!(DEAD_LETTERS_DROPPED, "reason" => r.code()))
                .collect(),
            sink_queue_depth: gauge!(SINK_QUEUE_DEPTH),
            batch_readings: histogram!(BATCH_READINGS),
            store_write_seconds: histogram!(STORE_WRITE_SECONDS),
            store_errors: counter!(STORE_ERRORS),
            cache_errors: counter!(CACHE_ERRORS),
            cache_write_seconds: histogram!(CACHE_WRITE_SECONDS),
            cache_dropped: counter!(CACHE_DROPPED),
            store_breaker_open: gauge!(STORE_BREAKER),
            cache_breaker_open: gauge!(CACHE_BREAKER),
            store_breaker_state: gauge!(STORE_BREAKER_STATE),
            cache_breaker_state: gauge!(CACHE_BREAKER_STATE),
            received_to_durable_seconds: histogram!(RECEIVED_TO_DURABLE_SECONDS),
            acks: counter!(ACKS),
            seq_gaps: counter!(SEQ_GAPS),
            dormant_hydrated: counter!(DORMANT_HYDRATED),
            meters_rested: counter!(METERS_RESTED),
            alerts: AlertKind::ALL
                .iter()
                .flat_map(|k| {
                    EpisodeState::ALL
                        .iter()
                        .map(|s| counter!(ALERTS, "kind" => k.name(), "state" => s.name()))
                })
                .collect(),
            notifications_dropped: counter!(NOTIFICATIONS, "outcome" => "dropped"),
        }
    }

    /// The per-reason dead-letter counter.
    pub fn dead_letter_reason(&self, reason: Reject) -> &Counter {
        &self.dead_letter_reasons[reason_index(reason)]
    }

    /// The per-reason counter of dead letters dropped by the rate limit.
    pub fn dead_letter_dropped_reason(&self, reason: Reject) -> &Counter {
        &self.dead_letter_dropped_reasons[reason_index(reason)]
    }

    /// The expired-row counter of each table the embedded store's retention sweep
    /// expires, by table name.
    pub fn store_expired() -> Vec<(&'static str, Counter)> {
        EXPIRING_TABLES
            .iter()
            .map(|table| (*table, counter!(STORE_EXPIRED, "table" => *table)))
            .collect()
    }

    /// The alert counter of one kind and episode state.
    pub fn alert(&self, kind: AlertKind, state: EpisodeState) -> &Counter {
        let kind = AlertKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("ALL lists every kind");
        let state = EpisodeState::ALL
            .iter()
            .position(|s| *s == state)
            .expect("ALL lists every state");
        &self.alerts[kind * EpisodeState::ALL.len() + state]
    }

    /// Counters of the notifier's outcomes.
    pub fn notifier(&self) -> NotifierMetrics {
        NotifierMetrics {
            published: counter!(NOTIFICATIONS, "outcome" => "published"),
            dropped: self.notifications_dropped.clone(),
            webhook_failed: counter!(NOTIFICATIONS, "outcome" => "webhook_failed"),
        }
    }

    /// The queue-depth gauge of one shard.
    pub fn shard_queue_depth(shard: usize) -> Gauge {
        gauge!(QUEUE_DEPTH, "shard" => shard.to_string())
    }

    /// The gauges of one shard's meters: held in memory, resting in the store.
    pub fn shard_meters(shard: usize) -> (Gauge, Gauge) {
        let of = |state: &'static str| gauge!(SHARD_METERS, "shard" => shard.to_string(), "state" => state);
        (of("held"), of("resting"))
    }
}

/// Where `reason` is in [`Reject::ALL`], which orders the per-reason counters.
fn reason_index(reason: Reject) -> usize {
    Reject::ALL
        .iter()
        .position(|r| *r == reason)
        .expect("ALL lists every reason")
}

/// The handles the meter endpoint uses.
#[derive(Clone)]
pub struct EndpointMetrics {
    pub received: Counter,
    pub shed: OutcomeCounters,
    pub connections: Gauge,
    /// By [`ConnectOutcome::index`].
    connects: Vec<Counter>,
    pub refused_publish: Counter,
    pub refused_subscribe: Counter,
    /// In [`ProtocolViolation::ALL`] order.
    violations: Vec<Counter>,
    pub takeovers: Counter,
    pub accept_errors: Counter,
    pub pubacks: Counter,
}

impl EndpointMetrics {
    pub fn register(pipeline: &PipelineMetrics) -> Self {
        Self {
            received: pipeline.received.clone(),
            shed: pipeline.shed.clone(),
            connections: gauge!(MQTT_CONNECTIONS),
            connects: ConnectOutcome::ALL
                .iter()
                .map(|o| counter!(MQTT_CONNECTS, "outcome" => o.code()))
                .collect(),
            refused_publish: counter!(MQTT_REFUSED, "what" => "publish"),
            refused_subscribe: counter!(MQTT_REFUSED, "what" => "subscribe"),
            violations: ProtocolViolation::ALL
                .iter()
                .map(|k| counter!(MQTT_VIOLATIONS, "kind" => k.code()))
                .collect(),
            takeovers: counter!(MQTT_TAKEOVERS),
            accept_errors: counter!(MQTT_ACCEPT_ERRORS),
            pubacks: counter!(PUBACKS),
        }
    }

    /// Counts one CONNECT outcome.
    pub fn connect(&self, outcome: ConnectOutcome) {
        self.connects[outcome.index()].increment(1);
    }

    /// Counts one connection closed for what it sent.
    pub fn violation(&self, kind: ProtocolViolation) {
        let index = ProtocolViolation::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("ALL lists every kind");
        self.violations[index].increment(1);
    }
}

#[cfg(test)]
mod tests {
    /// Every metric name this module and `process` define, read from their source so
    /// a new metric cannot be missed.
    fn defined_names() -> Vec<String> {
        [
            include_str!("metrics.rs"),
            include_str!("metrics/process.rs"),
        ]
        .iter()
        .flat_map(|source| source.lines())
        .filter(|line| line.trim_start().starts_with("pub const") && line.contains("&str"))
        .filter_map(|line| line.split('"').nth(1))
        .map(str::to_owned)
        .collect()
    }

    #[test]
    fn every_metric_is_in_the_operations_guide() {
        let guide = include_str!("../../docs/operations.md");
        let names = defined_names();
        assert!(names.len() > 30, "found only {names:?}");
        let missing: Vec<&String> = names
            .iter()
            .filter(|name| !guide.contains(&format!("`{name}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "metrics missing from docs/operations.md: {missing:?}"
        );
    }
}
