//! The broker link loop: moves `(topic, payload, received_at)` from the router into the
//! shard queues and does nothing else — no parsing beyond finding the meter in the
//! topic, never blocking the router (the router only ever writes into our link's
//! buffer; when that is full it unschedules us, and we answer `Unschedule` with
//! `ready()` once we have drained it).
//!
//! Shard = hash(tenant, meter) % shards, so one meter always lands on one shard and
//! its messages keep their order.
//!
//! Full-buffer policy (CONVENTIONS §7): a full shard queue is waited on for
//! `shed_after`, then the uplink is shed and counted — the meter gets no ack for it
//! and resends it. Waiting first turns short bursts into backpressure; shedding last
//! keeps one stuck shard from stalling every other shard behind the link.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{SendTimeoutError, Sender};
use meterflow_model::topic::split_uplink;
use rumqttd::Notification;
use rumqttd::local::LinkRx;
use tracing::{debug, error};

use crate::clock::now_ms;
use crate::metrics::PipelineMetrics;

/// One uplink as the broker handed it over.
pub struct Inbound {
    pub topic: Bytes,
    pub payload: Bytes,
    /// Epoch ms at which the link took it from the router.
    pub received_at: i64,
    /// The same moment on the monotonic clock, for latency.
    pub received: Instant,
}

/// The shard an uplink topic belongs to. Topics that do not parse go to shard 0,
/// which dead-letters them.
pub fn shard_of(topic: &[u8], shards: usize) -> usize {
    match split_uplink(topic) {
        Ok(parts) => {
            // A fixed-key hasher: the mapping must not change between runs, or a
            // restarted service would split a meter's state across shards.
            let hasher = BuildHasherDefault::<DefaultHasher>::default();
            (hasher.hash_one((parts.tenant, parts.meter)) % shards as u64) as usize
        }
        Err(_) => 0,
    }
}

pub struct BrokerLink {
    pub rx: LinkRx,
    pub shards: Vec<Sender<Inbound>>,
    pub shed_after: Duration,
    pub metrics: PipelineMetrics,
}

impl BrokerLink {
    /// Runs until the router goes away.
    pub fn run(mut self) {
        loop {
            match self.rx.recv() {
                Ok(Some(Notification::Forward(forward))) => {
                    self.route(forward.publish.topic, forward.publish.payload);
                }
                Ok(Some(Notification::Unschedule)) => {
                    if let Err(e) = self.rx.ready() {
                        error!(error = %e, "broker link: cannot reschedule; stopping");
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    error!(error = %e, "broker link closed");
                    return;
                }
            }
        }
    }

    fn route(&self, topic: Bytes, payload: Bytes) {
        self.metrics.received.increment(1);
        let shard = shard_of(&topic, self.shards.len());
        let inbound = Inbound {
            topic,
            payload,
            received_at: now_ms(),
            received: Instant::now(),
        };
        match self.shards[shard].send_timeout(inbound, self.shed_after) {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(inbound)) => {
                self.metrics.shed.add(1, 0);
                debug!(shard, topic = %String::from_utf8_lossy(&inbound.topic), "shard queue full: uplink shed, the meter will resend");
            }
            Err(SendTimeoutError::Disconnected(_)) => {
                self.metrics.shed.add(1, 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_meter_always_maps_to_one_shard() {
        let a = shard_of(b"meters/demo/m1/up", 8);
        assert_eq!(a, shard_of(b"meters/demo/m1/up", 8));
        assert_eq!(shard_of(b"garbage", 8), 0);
        let spread: std::collections::HashSet<_> = (0..100)
            .map(|i| shard_of(format!("meters/demo/m{i}/up").as_bytes(), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
