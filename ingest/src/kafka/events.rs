//! The events topic (`kafka.events_topic`), from processors back to endpoints: what a
//! processor learns once the store has a group — each meter's durable seq watermark,
//! for its ack topic, and the alert notifications the notifier lets through, for MQTT
//! subscribers — goes to the endpoints, since a processor holds no connection and an
//! endpoint decodes no payload. Records are [`LogEvent`]s, keyed and placed like the
//! meter's uplinks.
//!
//! - [`EventProducer`] (processor): the sink and the notifier append through it as an
//!   [`EventLog`]. librdkafka's idempotent producer, polled by its own thread; it never
//!   waits: an event its local queue cannot take is dropped — counted
//!   (`meterflow_log_events_dropped_total`) and logged at the 1st, 2nd, 4th, 8th….
//!   It never times an event out either (an idempotent producer's timeouts livelock
//!   it after an outage, see [`producer`](super::producer)): the queue holds what the
//!   log has not taken yet, up to its bound.
//! - [`EventFeed`] (endpoint): a thread reading every partition from where it ended at
//!   start (assigned, not a group member; nothing committed), which delivers a
//!   watermark to the meter's live session here (sent when it subscribed to its ack
//!   topic) and an alert to this endpoint's alert subscribers, as the notifier does in
//!   embedded mode.
//!
//! Best effort: events are notifications, the durable truth is the store. A meter that
//! misses a watermark (its endpoint restarting, the log away) is settled by a later one,
//! or resends and its resend is acked as a duplicate; an alert missed here is still in
//! the store, the hot cache's stream and the webhooks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meterflow_model::MeterKey;
use metrics::Counter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::config::KafkaConfig;
use super::consumer::header;
use super::failures::Failures;
use super::producer::owned_headers;
use super::record::{self, Event, LogEvent};
use super::{EventLog, partition_of, topic};
use crate::endpoint::registry::Registry;
use crate::notifier::{NotifierMetrics, publish_alert};

/// Events a processor's producer holds before it drops new ones.
const QUEUE_MESSAGES: u32 = 100_000;
/// How long one poll of the endpoint's feed waits for a record.
const POLL: Duration = Duration::from_millis(100);
/// How long start-up waits for each partition's end offset.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause before asking for an end offset again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A processor's appender to the events topic.
pub struct EventProducer {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
    partitions: u32,
}

/// Counts what became of appended events (librdkafka's delivery reports).
struct Deliveries {
    appended: Counter,
    dropped: Failures,
}

impl Deliveries {
    /// An event that will not reach the endpoints.
    fn dropped(&self, error: &KafkaError) {
        if let Some(failures) = self.dropped.record() {
            warn!(%error, failures, "events not appended to the log: endpoints miss these notifications (the store has the data)");
        }
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.appended.increment(1),
            Err((error, _)) => self.dropped(error),
        }
    }
}

impl EventProducer {
    /// Checks (or creates) the events topic and connects.
    pub async fn connect(config: &KafkaConfig) -> anyhow::Result<EventProducer> {
        let name = config.events_topic();
        topic::ensure(config, &name).await?;
        let producer = topic::client_config(config)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.messages", QUEUE_MESSAGES.to_string())
            .set("linger.ms", "5")
            .create_with_context(Deliveries {
                appended: metrics::counter!("meterflow_log_events_appended_total"),
                dropped: Failures::new(metrics::counter!("meterflow_log_events_dropped_total")),
            })?;
        Ok(EventProducer {
            producer,
            topic: name,
            partitions: config.partitions,
        })
    }

    /// Hands an event to librdkafka, or drops it when its queue is full.
    fn append(&self, event: LogEvent) {
        let key = record::key(&event.meter);
        let value = event.value();
        let headers = owned_headers(&event.headers());
        let next = BaseRecord::to(&self.topic)
            .key(&key)
            .payload(&value[..])
            .partition(partition_of(&event.meter, self.partitions))
            .headers(headers);
        if let Err((error, _)) = self.producer.send(next) {
            self.producer.context().dropped(&error);
        }
    }

    /// Waits (at most `timeout`) until the log has answered every event handed over.
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            warn!(%error, "events still unanswered by the log at shutdown; they are dropped");
        }
    }
}

impl EventLog for EventProducer {
    fn watermark(&self, meter: &MeterKey, seq: u64) {
        self.append(LogEvent {
            meter: meter.clone(),
            event: Event::Watermark(seq),
        });
    }

    fn alert(&self, meter: &MeterKey, payload: &[u8]) {
        self.append(LogEvent {
            meter: meter.clone(),
            event: Event::Alert(Bytes::copy_from_slice(payload)),
        });
    }
}

/// An endpoint's reader of the events topic.
pub struct EventFeed {
    thread: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

/// Where the feed delivers, and what it counts.
struct Deliver {
    registry: Arc<Registry>,
    /// Watermarks sent to meters (`meterflow_acks_published_total`).
    acks: Counter,
    notifications: NotifierMetrics,
    consumed: Counter,
    unreadable: Counter,
}

impl EventFeed {
    /// Checks (or creates) the events topic and starts reading it from its end as of
    /// now, delivering to the sessions and subscribers of `registry`.
    pub async fn start(
        config: &KafkaConfig,
        registry: Arc<Registry>,
        acks: Counter,
        notifications: NotifierMetrics,
    ) -> anyhow::Result<EventFeed> {
        let name = config.events_topic();
        topic::ensure(config, &name).await?;
        // A group id of its own: every endpoint reads every event; nothing is
        // committed (a restarted endpoint has no sessions waiting for old events).
        let consumer: BaseConsumer = topic::client_config(config)
            .set(
                "group.id",
                format!(
                    "{}-endpoint-{}",
                    config.group_id,
                    hex::encode(rand::random::<[u8; 8]>())
                ),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()?;
        let (topic, partitions) = (name.clone(), config.partitions);
        // From each partition's end as it is now, fetched before start returns, so no
        // event appended after this endpoint is up is missed.
        let consumer = tokio::task::spawn_blocking(move || {
            let mut list = TopicPartitionList::new();
            for partition in 0..i32::try_from(partitions).unwrap_or(i32::MAX) {
                let end = end_offset(&consumer, &topic, partition)?;
                list.add_partition_offset(&topic, partition, Offset::Offset(end))?;
            }
            consumer.assign(&list)?;
            anyhow::Ok(consumer)
        })
        .await??;
        let deliver = Deliver {
            registry,
            acks,
            notifications,
            consumed: metrics::counter!("meterflow_log_events_consumed_total"),
            unreadable: metrics::counter!("meterflow_log_unreadable_total"),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::Builder::new()
            .name("log-events".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    match consumer.poll(POLL) {
                        Some(Ok(message)) => deliver.record(&message),
                        Some(Err(error)) => warn!(%error, "reading the events log"),
                        None => {}
                    }
                }
            })?;
        info!(topic = name, "reading the events log");
        Ok(EventFeed { thread, stop })
    }

    /// Stops reading.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// The end offset of one partition, asked again while the brokers cannot answer yet
/// (a topic just created has no leader for a moment), for at most
/// [`WATERMARK_TIMEOUT`].
fn end_offset(consumer: &BaseConsumer, topic: &str, partition: i32) -> anyhow::Result<i64> {
    let deadline = Instant::now() + WATERMARK_TIMEOUT;
    loop {
        match consumer.fetch_watermarks(topic, partition, WATERMARK_TIMEOUT) {
            Ok((_, end)) => return Ok(end),
            Err(_) if Instant::now() < deadline => thread::sleep(RETRY_PAUSE),
            Err(error) => {
                return Err(anyhow::anyhow!(
                    "kafka topic {topic} partition {partition}: no end offset: {error}"
                ));
            }
        }
    }
}

impl Deliver {
    fn record(&self, message: &rdkafka::message::BorrowedMessage<'_>) {
        let event = match LogEvent::decode(message.key(), message.payload(), |name| {
            header(message, name)
        }) {
            Ok(event) => event,
            Err(reason) => {
                warn!(
                    partition = message.partition(),
                    offset = message.offset(),
                    %reason,
                    "events log record is no event of this build; skipped"
                );
                self.unreadable.increment(1);
                return;
            }
        };
        self.consumed.increment(1);
        match event.event {
            Event::Watermark(seq) => {
                if let Some(outbox) = self.registry.meter_session(&event.meter)
                    && outbox.deliver_watermark(seq)
                {
                    self.acks.increment(1);
                }
            }
            Event::Alert(payload) => {
                publish_alert(&self.registry, &event.meter, payload, &self.notifications)
            }
        }
    }
}
