//! The hand-off seam between the meter endpoint and the shard workers: an [`Inbound`]
//! uplink carries the identity its session authenticated (never a topic's word), the
//! bytes as received, and the [`Completion`] that answers the meter once the uplink is
//! durable.
//!
//! Shard = hash(tenant, meter) % shards of the authenticated identity, so one meter
//! always lands on one shard and its messages keep their order. The mapping uses a
//! fixed-key hasher: it must not change between runs, or a restarted service would
//! split a meter's state across shards.
//!
//! Full-queue policy (CONVENTIONS §7): **block**. Each shard queue is a bounded
//! crossbeam channel paired with a semaphore holding one permit per free slot; a
//! connection task waits (asynchronously) for a permit before it enqueues, and the shard
//! returns the permit when it takes the uplink. A slow shard therefore stops the
//! connections that feed it from reading their sockets, and TCP carries the
//! backpressure to the meters — nothing is shed while the pipeline runs.
//!
//! In distributed mode (DESIGN §9) the endpoint hands uplinks to the log instead
//! ([`Handoff::Log`]), and a processor's consumer feeds the shards through the same
//! [`ShardRouter`]. Beside the uplinks, each shard queue carries [`ForgetOrder`]s: when
//! a processor gives up partitions, every shard drops the cached state of their meters
//! before it takes another uplink, so a meter that comes back later is hydrated from
//! the store, never processed with what this replica knew before someone else owned it.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, bounded, unbounded};
use meterflow_model::{MeterKey, RegisterOrder, Reject};
use tokio::sync::Semaphore;

use super::outbox::Completion;

/// One uplink as a meter's session handed it over.
pub struct Inbound {
    /// Who sent it: the meter its connection authenticated as.
    pub identity: MeterKey,
    /// The topic as published (kept with a dead letter).
    pub topic: Bytes,
    pub payload: Bytes,
    /// Set when the session refused the publish (wrong topic, retain): the shard
    /// dead-letters it with this reason and it moves no window.
    pub refused: Option<Reject>,
    /// Epoch ms at which the endpoint read it.
    pub received_at: i64,
    /// The same moment on the monotonic clock, for latency.
    pub received: Instant,
    /// Answers the meter (PUBACK, ack topic) once the uplink is durable.
    pub completion: Completion,
    /// An operator's order about the meter's register (the HTTP API, embedded mode)
    /// instead of an uplink: `topic` and `payload` are empty. It goes through the
    /// meter's shard so that it lands in order with the meter's data.
    pub order: Option<Box<RegisterOrder>>,
}

/// The shard a meter belongs to.
pub fn shard_of(meter: &MeterKey, shards: usize) -> usize {
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    let hash = hasher.hash_one((
        meter.tenant.as_str().as_bytes(),
        meter.meter.as_str().as_bytes(),
    ));
    (hash % shards as u64) as usize
}

/// Which meters a shard must forget: those of partitions this processor gave up.
pub type ForgetOrder = Arc<dyn Fn(&MeterKey) -> bool + Send + Sync>;

/// Where the endpoint hands uplinks: the shards of this process (embedded mode), or
/// the partitioned log (distributed mode's endpoint).
pub enum Handoff {
    Shards(ShardRouter),
    #[cfg(feature = "kafka")]
    Log(Arc<crate::kafka::producer::LogProducer>),
}

impl Handoff {
    /// Hands an uplink over, waiting while the shard queue (or the log's in-flight
    /// window) is full.
    pub async fn send(&self, inbound: Inbound) -> Result<(), PipelineClosed> {
        match self {
            Handoff::Shards(router) => router.send(inbound).await,
            #[cfg(feature = "kafka")]
            Handoff::Log(producer) => producer.send(inbound).await,
        }
    }
}

/// The sending side of every shard queue, shared by all connection tasks.
#[derive(Clone)]
pub struct ShardRouter {
    queues: Arc<[ShardQueue]>,
}

struct ShardQueue {
    uplinks: Sender<Inbound>,
    space: Arc<Semaphore>,
    orders: Sender<ForgetOrder>,
}

/// Why an uplink could not be handed over: the pipeline is stopping.
#[derive(Debug)]
pub struct PipelineClosed;

impl ShardRouter {
    /// Bounded queues of `capacity` uplinks, one per shard, and their receiving ends.
    pub fn new(shards: usize, capacity: usize) -> (ShardRouter, Vec<ShardInbox>) {
        let mut queues = Vec::with_capacity(shards);
        let mut inboxes = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (uplinks, rx) = bounded(capacity);
            let space = Arc::new(Semaphore::new(capacity));
            let (orders, order_rx) = unbounded();
            queues.push(ShardQueue {
                uplinks,
                space: space.clone(),
                orders,
            });
            inboxes.push(ShardInbox {
                rx,
                space,
                orders: order_rx,
            });
        }
        (
            ShardRouter {
                queues: queues.into(),
            },
            inboxes,
        )
    }

    /// Hands an uplink to its meter's shard, waiting while the shard's queue is full.
    pub async fn send(&self, inbound: Inbound) -> Result<(), PipelineClosed> {
        let queue = &self.queues[shard_of(&inbound.identity, self.queues.len())];
        let permit = queue.space.acquire().await.map_err(|_| PipelineClosed)?;
        // A permit is a free slot, so the queue has room; it is returned by the shard
        // when it takes the uplink.
        permit.forget();
        queue.uplinks.try_send(inbound).map_err(|_| PipelineClosed)
    }

    /// Has every shard forget the meters `order` names before it takes the next
    /// uplink (an uplink sent after this call is taken after the order).
    pub fn forget(&self, order: ForgetOrder) {
        for queue in self.queues.iter() {
            // A shard that has stopped forgets everything anyway.
            let _ = queue.orders.send(order.clone());
        }
    }

    /// Stops accepting: connection tasks waiting for room get [`PipelineClosed`].
    pub fn close(&self) {
        for queue in self.queues.iter() {
            queue.space.close();
        }
    }
}

/// The receiving side of one shard's queue.
pub struct ShardInbox {
    rx: Receiver<Inbound>,
    space: Arc<Semaphore>,
    orders: Receiver<ForgetOrder>,
}

impl ShardInbox {
    /// The next uplink, waiting until `deadline` at most; frees its slot.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Inbound, RecvTimeoutError> {
        let inbound = self.rx.recv_deadline(deadline)?;
        self.space.add_permits(1);
        Ok(inbound)
    }

    /// The next uplink if one is waiting; frees its slot.
    pub fn try_recv(&self) -> Result<Inbound, TryRecvError> {
        let inbound = self.rx.try_recv()?;
        self.space.add_permits(1);
        Ok(inbound)
    }

    /// Forget orders sent since the last call.
    pub fn orders(&self) -> impl Iterator<Item = ForgetOrder> + '_ {
        self.orders.try_iter()
    }

    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_model::topic::parse_client_id;

    #[test]
    fn one_meter_always_maps_to_one_shard() {
        let key = parse_client_id("demo.m1").unwrap();
        assert_eq!(shard_of(&key, 8), shard_of(&key.clone(), 8));
        let spread: std::collections::HashSet<_> = (0..100)
            .map(|i| shard_of(&parse_client_id(&format!("demo.m{i}")).unwrap(), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }

    #[test]
    fn the_mapping_is_the_one_earlier_releases_used() {
        // Earlier releases hashed the topic's raw (tenant, meter) bytes; a meter must
        // stay on the shard whose state it was persisted from.
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        let key = parse_client_id("acme.m000042").unwrap();
        let before = (hasher.hash_one((&b"acme"[..], &b"m000042"[..])) % 7) as usize;
        assert_eq!(shard_of(&key, 7), before);
    }
}
