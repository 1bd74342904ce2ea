//! How a process takes part (`mode`) and the `[kafka]` section of distributed mode.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What this process runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Everything in one process: endpoint → shards → store (the default).
    #[default]
    Embedded,
    /// A stateless meter endpoint: uplinks go to the Kafka topic, PUBACK once the log
    /// has them.
    Endpoint,
    /// A processor replica: consumes the partitions the consumer group assigns it and
    /// runs the shard/sink pipeline on them.
    Processor,
    /// Both in one process, for small clusters: an endpoint that appends to the log
    /// and a processor in the group, meeting only through Kafka (a meter on this
    /// process's endpoint may well be owned by another's processor).
    Combined,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::Endpoint => "endpoint",
            Mode::Processor => "processor",
            Mode::Combined => "combined",
        }
    }

    /// Whether this mode runs the meter endpoint.
    pub fn runs_endpoint(self) -> bool {
        self != Mode::Processor
    }

    /// Whether this mode runs the shard/sink pipeline.
    pub fn runs_pipeline(self) -> bool {
        self != Mode::Endpoint
    }

    /// Whether the endpoint hands uplinks to the log (not to this process's shards).
    pub fn appends_to_log(self) -> bool {
        matches!(self, Mode::Endpoint | Mode::Combined)
    }

    /// Whether the shards are fed from the log (as a member of the consumer group).
    pub fn consumes_log(self) -> bool {
        matches!(self, Mode::Processor | Mode::Combined)
    }
}

/// librdkafka settings meterflow sets itself, because its guarantees rest on them;
/// `kafka.properties` may not change them.
pub const RESERVED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
    "partition.assignment.strategy",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "statistics.interval.ms",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The uplink topic. Created at start when missing (with `partitions` and
    /// `replication_factor`); an existing one must have exactly `partitions`.
    pub topic: String,
    /// The events topic, from processors back to endpoints: each meter's durable seq
    /// watermark (for its ack topic) and alert events (for MQTT subscribers).
    /// Best-effort notifications — the store is the durable truth. Created at start
    /// like `topic`, with `partitions` partitions. Default: `{topic}.events`, so that
    /// deployments sharing a Kafka (each with its own `topic`) never read each
    /// other's events — an endpoint would hand a meter of the same id a foreign
    /// watermark.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_topic: Option<String>,
    /// Partitions of the topic: the unit of ownership, and the most processor replicas
    /// that can share the work. Endpoints place a meter by it, so every endpoint and
    /// processor must agree; changing it moves meters between owners.
    pub partitions: u32,
    /// Replicas of each partition when meterflow creates the topic (3 in production,
    /// with the broker's `min.insync.replicas` = 2: PUBACK then means "on two brokers").
    pub replication_factor: u16,
    /// The processors' consumer group.
    pub group_id: String,
    /// Uplinks an endpoint has handed to the log and not yet seen acknowledged; when
    /// full, connections wait (backpressure to the meters instead of memory).
    pub max_in_flight: usize,
    /// How long an endpoint keeps trying to append an uplink before it gives up and
    /// closes the meter's connection (the meter resends).
    pub delivery_timeout_ms: u64,
    /// How often a processor commits the offsets its store writes cover.
    pub commit_interval_ms: u64,
    /// When a processor gives up partitions (rebalance), how long it waits for their
    /// uplinks in flight to become durable before it commits and lets them go.
    pub rebalance_drain_s: u64,
    /// How long a log client may stay stalled before it is replaced by a fresh one:
    /// an endpoint's producer holding uplinks and appending none, a processor's
    /// consumer out of its group with nothing assigned (for the consumer, at least
    /// three `rebalance_drain_s`). After a broker outage librdkafka can leave a client
    /// waiting for good on a connection that never comes up again.
    pub stall_patience_s: u64,
    /// Further librdkafka settings, passed through as they are — TLS and SASL for
    /// example (`security.protocol`, `ssl.ca.location`, `sasl.mechanism`,
    /// `sasl.username`, `sasl.password`). Values are never logged.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "meterflow.uplinks".into(),
            events_topic: None,
            partitions: 12,
            replication_factor: 1,
            group_id: "meterflow-processors".into(),
            max_in_flight: 20_000,
            delivery_timeout_ms: 30_000,
            commit_interval_ms: 1_000,
            rebalance_drain_s: 30,
            stall_patience_s: 60,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The events topic in force: `events_topic`, or `{topic}.events`.
    pub fn events_topic(&self) -> String {
        self.events_topic
            .clone()
            .unwrap_or_else(|| format!("{}.events", self.topic))
    }

    /// Every problem of the section, for [`crate::Config::validate`].
    pub fn problems(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.brokers.trim().is_empty() {
            errors.push("kafka.brokers: give at least one host:port".to_string());
        }
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let events_topic = self.events_topic();
        let mut names = vec![("topic", &self.topic)];
        // A default events topic is only checked once the topic it derives from is.
        let topic_ok = self.topic.len() <= 249 && self.topic.chars().all(legal);
        if self.events_topic.is_some() || topic_ok {
            names.push(("events_topic", &events_topic));
        }
        for (key, name) in names {
            if name.is_empty() || name.len() > 249 || !name.chars().all(legal) {
                errors.push(format!(
                    "kafka.{key} {name:?}: 1-249 of A-Z a-z 0-9 . _ - (Kafka's topic names)"
                ));
            }
        }
        if events_topic == self.topic {
            errors.push(format!(
                "kafka.events_topic {events_topic:?}: must differ from kafka.topic (processors read every uplink of it)"
            ));
        }
        if self.partitions == 0 {
            errors.push("kafka.partitions: at least 1".to_string());
        }
        if self.replication_factor == 0 {
            errors.push("kafka.replication_factor: at least 1".to_string());
        }
        if self.group_id.trim().is_empty() {
            errors.push("kafka.group_id: must not be empty".to_string());
        }
        if self.stall_patience_s == 0 {
            errors.push("kafka.stall_patience_s: at least 1".to_string());
        }
        if self.max_in_flight == 0 {
            errors.push("kafka.max_in_flight: at least 1".to_string());
        }
        for key in self.properties.keys() {
            if RESERVED_PROPERTIES.contains(&key.as_str()) {
                errors.push(format!(
                    "kafka.properties.{key}: set by meterflow (its delivery guarantees rest on it); \
                     use the kafka.* setting for it if there is one"
                ));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_runs_its_parts_and_only_embedded_bypasses_the_log() {
        let roles = |m: Mode| {
            (
                m.runs_endpoint(),
                m.runs_pipeline(),
                m.appends_to_log(),
                m.consumes_log(),
            )
        };
        assert_eq!(roles(Mode::Embedded), (true, true, false, false));
        assert_eq!(roles(Mode::Endpoint), (true, false, true, false));
        assert_eq!(roles(Mode::Processor), (false, true, false, true));
        assert_eq!(roles(Mode::Combined), (true, true, true, true));
    }

    #[test]
    fn the_default_is_valid_and_reserved_properties_are_refused() {
        assert_eq!(KafkaConfig::default().problems(), Vec::<String>::new());
        let mut config = KafkaConfig {
            topic: "bad topic".into(),
            partitions: 0,
            ..KafkaConfig::default()
        };
        config
            .properties
            .insert("enable.idempotence".into(), "false".into());
        config
            .properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        let problems = config.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[2].contains("enable.idempotence"));
        assert_eq!(
            KafkaConfig::default().events_topic(),
            "meterflow.uplinks.events"
        );
        let same = KafkaConfig {
            events_topic: Some("meterflow.uplinks".into()),
            ..KafkaConfig::default()
        };
        assert_eq!(same.problems().len(), 1, "{:?}", same.problems());
        let bad = KafkaConfig {
            events_topic: Some(String::new()),
            ..KafkaConfig::default()
        };
        assert!(bad.problems()[0].starts_with("kafka.events_topic"));
    }
}
