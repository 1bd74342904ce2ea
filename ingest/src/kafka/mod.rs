//! Distributed mode (DESIGN §9): stateless endpoints append uplinks to a partitioned
//! Kafka log; processor replicas in one consumer group run the shard/sink pipeline on
//! the partitions they own.
//!
//! - [`config`]: `mode` and the `[kafka]` section;
//! - [`offsets`]: which offsets a processor may commit (only below the first uplink not
//!   yet durable) — plain bookkeeping, also behind [`Completion`]s;
//! - [`lease`]: whether a processor may still write as its partitions' owner (no
//!   freeze longer than its group session);
//! - [`EventLog`]: how the sink and the notifier of a processor tell the endpoints what
//!   became durable, without depending on Kafka types;
//! - with the `kafka` cargo feature (librdkafka through `rdkafka`): [`record`] (an
//!   uplink, or an event, as a log record), [`topic`] (the topics checked or created at
//!   start), [`producer`] (the endpoint's hand-off: PUBACK once the log has the uplink),
//!   [`consumer`] (the processor's feed into the shards, rebalances, commits, lag),
//!   [`stall`] (when a producer or consumer is replaced by a fresh one) and
//!   [`events`] (the events topic: watermarks and alert events from processors to
//!   endpoints).
//!
//! Ownership: a meter's partition is [`partition_of`] its authenticated identity,
//! chosen by the endpoint (not librdkafka's partitioner), so a processor can tell which
//! cached meters belong to partitions it gave up and forget them.
//!
//! [`Completion`]: crate::endpoint::outbox::Completion

use meterflow_model::MeterKey;

pub mod config;
#[cfg(feature = "kafka")]
pub mod consumer;
#[cfg(feature = "kafka")]
pub mod events;
#[cfg(feature = "kafka")]
mod failures;
pub mod lease;
pub mod offsets;
#[cfg(feature = "kafka")]
pub mod producer;
#[cfg(feature = "kafka")]
pub mod record;
#[cfg(feature = "kafka")]
mod stall;
#[cfg(feature = "kafka")]
pub mod topic;

#[cfg(feature = "kafka")]
pub use partitioning::partition_of;

/// Where a processor tells the endpoints what the store now has: the events topic
/// ([`events`]). The sink and the notifier hold one as an `Option` — none in embedded
/// mode, where they reach the meters' connections themselves. Best effort, and never
/// blocks the caller: an event the log cannot take now is dropped (and counted).
pub trait EventLog: Send + Sync {
    /// `meter`'s durable seq watermark, for its ack topic.
    fn watermark(&self, meter: &MeterKey, seq: u64);
    /// An alert event's JSON, for the subscribers of `meter`'s alert topic.
    fn alert(&self, meter: &MeterKey, payload: &[u8]);
}

#[cfg(feature = "kafka")]
mod partitioning {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

    use meterflow_model::MeterKey;

    use super::offsets::Partition;

    /// The log partition of a meter: a fixed-key hash of its identity, so it never
    /// changes between runs or replicas (salted apart from the shard hash, so a
    /// partition's meters still spread over a processor's shards).
    pub fn partition_of(meter: &MeterKey, partitions: u32) -> Partition {
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        let hash = hasher.hash_one((
            b"log-partition",
            meter.tenant.as_str().as_bytes(),
            meter.meter.as_str().as_bytes(),
        ));
        (hash % u64::from(partitions.max(1))) as Partition
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::endpoint::handoff::shard_of;
        use meterflow_model::topic::parse_client_id;

        #[test]
        fn meters_spread_over_partitions_and_a_partition_over_shards() {
            let meters: Vec<_> = (0..400)
                .map(|i| parse_client_id(&format!("acme.m{i:05}")).unwrap())
                .collect();
            let partitions: std::collections::HashSet<_> =
                meters.iter().map(|m| partition_of(m, 8)).collect();
            assert_eq!(partitions.len(), 8);
            let shards_of_partition_0: std::collections::HashSet<_> = meters
                .iter()
                .filter(|m| partition_of(m, 8) == 0)
                .map(|m| shard_of(m, 4))
                .collect();
            assert_eq!(shards_of_partition_0.len(), 4);
            assert_eq!(
                partition_of(&meters[7], 8),
                partition_of(&meters[7].clone(), 8)
            );
        }
    }
}
