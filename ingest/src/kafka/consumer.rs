//! A processor's feed in distributed mode: one consumer-group member on its own
//! thread reads the partitions it is assigned and hands each uplink to the shards
//! through the same [`ShardRouter`] the endpoint uses in embedded mode, with a
//! completion that marks its offset in the [`OffsetBook`].
//!
//! - **Commits**: every `kafka.commit_interval_ms`, the offsets below the first uplink
//!   not yet durable (so a crash replays from there; the seq window persisted with the
//!   data absorbs what was already stored), and synchronously when partitions are
//!   given up and at shutdown.
//! - **Rebalance** (cooperative-sticky): before partitions are given up, the thread
//!   waits (at most `kafka.rebalance_drain_s`) until their uplinks in flight are
//!   durable, commits them, and has every shard forget the cached state of their
//!   meters ([`ShardRouter::forget`]); their next owner hydrates them from the store.
//!   Partitions assigned are marked owned ([`OwnedPartitions`]) and their stored
//!   meters listed for the shards to hydrate in idle time ([`DormantMeters`]), so the
//!   timer rules cover the silent ones too; partitions being given up are unmarked
//!   before the drain.
//! - **Backpressure**: a full shard queue blocks the hand-over, so the thread stops
//!   polling; memory stays bounded by the shard queues, and lag grows in the log.
//! - **Lag**: librdkafka's statistics give each owned partition's consumer lag;
//!   their sum is `meterflow_consumer_lag`, the autoscaling signal.
//! - **Membership watchdog** ([`super::stall`]): after the brokers come back from an
//!   outage, a member can stay out of its group for good (its session timed out
//!   while the coordinator was away, and the rejoin request waits on a coordinator
//!   connection that never comes up again: seen here with librdkafka 2.12 under
//!   load, every partition given up and none assigned again). The statistics say
//!   whether the member's join state is `steady`; when it has not been for
//!   [`membership_patience`], the thread replaces the consumer with a new one that
//!   joins the group afresh (the old one is closed on a thread of its own, since
//!   closing talks to the coordinator too). Counted in
//!   `meterflow_log_consumer_rejoins_total`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use meterflow_model::MeterKey;
use metrics::{Counter, Gauge};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tracing::{error, info, warn};

use super::config::KafkaConfig;
use super::offsets::{LogPosition, OffsetBook, Partition, Position};
use super::stall::{STATS_INTERVAL_MS, SharedWatch};
use super::{partition_of, record, topic};
use crate::clock::now_ms;
use crate::dormant::DormantMeters;
use crate::endpoint::handoff::{Inbound, ShardRouter};
use crate::endpoint::outbox::Completion;

/// How long one poll waits for a record.
const POLL: Duration = Duration::from_millis(100);
/// How long the membership watchdog waits for a steady membership:
/// `kafka.stall_patience_s`, or three rebalance drains when those are longer (a join,
/// a sync and a drain of given-up partitions must fit).
fn membership_patience(stall_patience: Duration, drain: Duration) -> Duration {
    stall_patience.max(drain * 3)
}

/// The running feed.
pub struct LogConsumer {
    thread: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    finish: Sender<()>,
}

/// What the consumer's callbacks (rebalance, statistics) and the feed loop share. A
/// replacement consumer (membership watchdog) gets a clone: the same book, shards
/// and metrics.
#[derive(Clone)]
struct Feed {
    /// What the statistics last said of the member's group membership.
    membership: SharedWatch,
    book: Arc<OffsetBook>,
    router: ShardRouter,
    /// Lists the stored meters of assigned partitions for the shards to watch.
    dormant: Arc<DormantMeters>,
    /// The partitions owned now, for the shards' hydration of listed meters.
    owned_now: Arc<OwnedPartitions>,
    topic: String,
    partitions: u32,
    drain: Duration,
    /// How long the member may stay out of its group ([`membership_patience`]).
    patience: Duration,
    consumed: Counter,
    unreadable: Counter,
    lag: Gauge,
    owned: Gauge,
}

impl LogConsumer {
    /// Checks the topic, joins the group and starts feeding the shards.
    /// At each assignment it has `dormant` list the stored meters of the partitions
    /// assigned, and keeps `partitions` current for the shards that hydrate them.
    pub async fn start(
        config: &KafkaConfig,
        router: ShardRouter,
        dormant: Arc<DormantMeters>,
        partitions: Arc<OwnedPartitions>,
    ) -> anyhow::Result<LogConsumer> {
        topic::ensure(config, &config.topic).await?;
        let feed = Feed {
            membership: SharedWatch::new(),
            book: Arc::new(OffsetBook::default()),
            router,
            dormant,
            owned_now: partitions,
            topic: config.topic.clone(),
            partitions: config.partitions,
            drain: Duration::from_secs(config.rebalance_drain_s),
            patience: membership_patience(
                Duration::from_secs(config.stall_patience_s),
                Duration::from_secs(config.rebalance_drain_s),
            ),
            consumed: metrics::counter!("meterflow_log_consumed_total"),
            unreadable: metrics::counter!("meterflow_log_unreadable_total"),
            lag: metrics::gauge!("meterflow_consumer_lag"),
            owned: metrics::gauge!("meterflow_log_partitions_owned"),
        };
        let mut client = topic::client_config(config);
        client
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("statistics.interval.ms", STATS_INTERVAL_MS);
        let member = Member {
            client,
            topic: config.topic.clone(),
            feed,
            rejoins: metrics::counter!("meterflow_log_consumer_rejoins_total"),
        };
        let consumer = member.join()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (finish, finished) = bounded(1);
        let commit_every = Duration::from_millis(config.commit_interval_ms);
        let runtime = Handle::current();
        let stopping = stop.clone();
        let thread = thread::Builder::new()
            .name("log-consumer".into())
            .spawn(move || run(member, consumer, runtime, stopping, finished, commit_every))?;
        Ok(LogConsumer {
            thread,
            stop,
            finish,
        })
    }

    /// Stops taking uplinks from the log (the shards then drain what they hold).
    pub fn stop_feeding(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Once the pipeline has drained: commits what is durable and leaves the group.
    pub fn finish(self) {
        self.stop_feeding();
        let _ = self.finish.send(());
        let _ = self.thread.join();
    }
}

/// How to make (and remake) this processor's group member.
struct Member {
    client: ClientConfig,
    topic: String,
    feed: Feed,
    rejoins: Counter,
}

impl Member {
    /// A new consumer subscribed to the uplink topic, sharing the feed's book and
    /// shards.
    fn join(&self) -> anyhow::Result<BaseConsumer<Feed>> {
        let feed = self.feed.clone();
        feed.membership.restart();
        let consumer: BaseConsumer<Feed> = self.client.create_with_context(feed)?;
        consumer.subscribe(&[&self.topic])?;
        Ok(consumer)
    }

    /// Replaces `consumer` when its membership has not been steady for the
    /// watchdog's patience (see the module doc).
    fn watch(&self, consumer: &mut BaseConsumer<Feed>) {
        let now = Instant::now();
        let watch = *self.feed.membership.lock();
        let Some(out_for) = watch.stalled_for(now, self.feed.patience) else {
            return;
        };
        warn!(
            out_for_s = out_for.as_secs(),
            "log consumer out of its group with nothing assigned; joining again with a new consumer"
        );
        self.rejoins.increment(1);
        match self.join() {
            Ok(fresh) => {
                let old = std::mem::replace(consumer, fresh);
                // Closing asks the coordinator too; it must not hold up the feed.
                let _ = thread::Builder::new()
                    .name("log-consumer-close".into())
                    .spawn(move || drop(old));
            }
            Err(error) => {
                warn!(%error, "could not make a new log consumer; trying again later");
                self.feed.membership.restart();
            }
        }
    }
}

fn run(
    member: Member,
    mut consumer: BaseConsumer<Feed>,
    runtime: Handle,
    stop: Arc<AtomicBool>,
    finish: Receiver<()>,
    commit_every: Duration,
) {
    let feed = member.feed.clone();
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        member.watch(&mut consumer);
        let fed = match consumer.poll(POLL) {
            Some(Ok(message)) => feed.dispatch(&message, &runtime),
            Some(Err(error)) => {
                warn!(%error, "reading the uplink log");
                true
            }
            None => true,
        };
        if !fed {
            break;
        }
        if last_commit.elapsed() >= commit_every {
            let points = feed.book.lock().take_commits();
            commit(&consumer, &feed.topic, &points, CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    let _ = finish.recv();
    let points = feed.book.lock().release_all();
    commit(&consumer, &feed.topic, &points, CommitMode::Sync);
    info!(
        partitions = points.len(),
        "log consumer stopped: durable offsets committed"
    );
}

impl Feed {
    /// Hands one record to its meter's shard; false once the pipeline is closed.
    fn dispatch(&self, message: &BorrowedMessage<'_>, runtime: &Handle) -> bool {
        let (partition, offset) = (message.partition(), message.offset());
        let Some(epoch) = self.book.lock().dispatched(partition, offset) else {
            return true;
        };
        let at = Position {
            partition,
            offset,
            epoch,
        };
        let uplink = match record::decode(message.key(), message.payload(), |name| {
            header(message, name)
        }) {
            Ok(uplink) => uplink,
            Err(reason) => {
                error!(partition, offset, %reason, "log record is no uplink of this build; skipped");
                self.unreadable.increment(1);
                self.book.completed(at);
                return true;
            }
        };
        self.consumed.increment(1);
        // Latency is measured from the endpoint's receipt (its wall clock, in the
        // record): `received` is back-dated by the time the uplink spent in the log.
        let in_log =
            Duration::from_millis(u64::try_from(now_ms() - uplink.received_at).unwrap_or(0));
        let inbound = Inbound {
            identity: uplink.identity,
            topic: uplink.topic,
            payload: uplink.payload,
            refused: uplink.refused,
            received_at: uplink.received_at,
            received: Instant::now()
                .checked_sub(in_log)
                .unwrap_or_else(Instant::now),
            completion: Completion::for_log(LogPosition {
                book: self.book.clone(),
                at,
            }),
            order: uplink.order,
        };
        runtime.block_on(self.router.send(inbound)).is_ok()
    }

    /// Partitions are being taken away: drain, commit, forget their meters.
    fn give_up(&self, consumer: &BaseConsumer<Feed>, revoked: &TopicPartitionList) {
        let partitions: Vec<Partition> = revoked
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        if partitions.is_empty() {
            return;
        }
        self.owned_now.set(&partitions, false);
        let left = self.book.wait_drained(&partitions, self.drain);
        if left > 0 {
            warn!(
                ?partitions,
                in_flight = left,
                "partitions given up before all their uplinks were durable; the next owner replays them"
            );
        }
        let points = self.book.lock().release(&partitions);
        commit(consumer, &self.topic, &points, CommitMode::Sync);
        let count = self.partitions;
        let gone: HashSet<Partition> = partitions.iter().copied().collect();
        self.router.forget(Arc::new(move |meter| {
            gone.contains(&partition_of(meter, count))
        }));
        self.owned.decrement(partitions.len() as f64);
        info!(
            ?partitions,
            "partitions given up: committed, their meters forgotten"
        );
    }
}

impl ClientContext for Feed {
    fn stats(&self, statistics: Statistics) {
        // A member that holds partitions, or is steady in its group, is fine.
        let steady = statistics
            .cgrp
            .as_ref()
            .is_some_and(|group| group.join_state == "steady" || group.assignment_size > 0);
        self.membership.lock().observed(Instant::now(), steady);
        let lag: i64 = statistics
            .topics
            .get(&self.topic)
            .map(|topic| {
                topic
                    .partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                    .map(|p| p.consumer_lag)
                    .sum()
            })
            .unwrap_or(0);
        self.lag.set(lag as f64);
    }
}

impl ConsumerContext for Feed {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Feed>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(revoked) => self.give_up(consumer, revoked),
            Rebalance::Assign(_) => {}
            Rebalance::Error(error) => warn!(%error, "consumer group rebalance failed"),
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Feed>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            let partitions: Vec<Partition> = assigned
                .elements_for_topic(&self.topic)
                .iter()
                .map(|e| e.partition())
                .collect();
            self.owned.increment(partitions.len() as f64);
            info!(?partitions, "partitions assigned");
            self.owned_now.set(&partitions, true);
            let (assigned, count): (HashSet<Partition>, u32) =
                (partitions.into_iter().collect(), self.partitions);
            self.dormant.list(
                "the meters of the partitions assigned",
                Arc::new(move |meter| assigned.contains(&partition_of(meter, count))),
            );
        }
    }
}

/// The partitions a processor owns now: set as they are assigned, cleared as soon as
/// they are being given up. A shard hydrates a listed meter ([`crate::dormant`]) only
/// while its partition is owned, so a listing that outlives an assignment hydrates
/// nothing for the partition's new owner to share.
pub struct OwnedPartitions {
    owned: Box<[AtomicBool]>,
}

impl OwnedPartitions {
    /// None of `count` partitions.
    pub fn new(count: u32) -> OwnedPartitions {
        OwnedPartitions {
            owned: (0..count).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Whether `meter`'s partition is owned.
    pub fn owns(&self, meter: &MeterKey) -> bool {
        let partition = partition_of(meter, self.owned.len() as u32);
        self.owned
            .get(partition as usize)
            .is_some_and(|owned| owned.load(Ordering::Acquire))
    }

    fn set(&self, partitions: &[Partition], owned: bool) {
        for partition in partitions {
            if let Some(flag) = usize::try_from(*partition)
                .ok()
                .and_then(|p| self.owned.get(p))
            {
                flag.store(owned, Ordering::Release);
            }
        }
    }
}

/// The value of a record's header `name`.
pub(super) fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == name))
        .and_then(|h| h.value)
}

/// Commits `points` (partition → next offset to read); a failure is logged: a later
/// commit covers it, and at worst the next owner replays what the store has.
fn commit(
    consumer: &BaseConsumer<Feed>,
    topic: &str,
    points: &[(Partition, i64)],
    mode: CommitMode,
) {
    if points.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (partition, offset) in points {
        if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            warn!(%error, partition, "offset not committed");
        }
    }
    if let Err(error) = consumer.commit(&list, mode) {
        warn!(%error, "committing offsets failed; a later commit covers them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_membership_patience_fits_three_drains() {
        let minute = Duration::from_secs(60);
        assert_eq!(membership_patience(minute, Duration::from_secs(20)), minute);
        assert_eq!(
            membership_patience(minute, Duration::from_secs(30)),
            Duration::from_secs(90)
        );
    }
}
