//! The endpoint's hand-off in distributed mode: each uplink is appended to its meter's
//! partition by librdkafka's idempotent producer (`acks=all`), and the meter's
//! [`Completion`] — its PUBACK — fires only when the log has acknowledged it.
//!
//! An uplink the log has not taken within `kafka.delivery_timeout_ms` loses its PUBACK:
//! its connection closes and the meter resends it (to this endpoint or another). The
//! record itself stays queued in librdkafka, which never times a message out
//! (`message.timeout.ms = 0`): each timeout makes an idempotent producer drain every
//! partition and bump its epoch, and under the steady stream of resends that follows
//! an outage those bumps came back faster than anything could be sent — the producer
//! livelocked and appended nothing after the log returned. A record appended after its
//! meter gave up on it is a duplicate the processors drop by its seq.
//!
//! Backpressure: at most `kafka.max_in_flight` uplinks wait for the log's answer (a
//! slot is held until librdkafka answers, after the PUBACK was given up too); past
//! that, connections wait to hand over (and stop reading their sockets), so a slow or
//! absent log slows PUBACKs instead of growing memory.
//!
//! **Producer watchdog** ([`super::stall`]): the producer is healthy at a statistics
//! report when it holds no record or appended one since the last report. When it has
//! not been for `kafka.stall_patience_s` — after a broker outage librdkafka's producer
//! was seen here appending nothing more, under CPU load, while its meters resent for
//! minutes — it is replaced by a fresh producer (new connections, a new idempotent
//! producer id). The old one is dropped on a thread of its own: its records are
//! purged, their PUBACKs given up, and their meters resend through the new one (a
//! record the old one did append is a duplicate the processors drop by its seq).
//! Counted in `meterflow_log_producer_replacements_total`. During a long outage the
//! producer is replaced once per patience; that costs a reconnect, nothing else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use meterflow_model::MeterKey;
use metrics::{Counter, Gauge};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use tokio::sync::Semaphore;
use tracing::warn;

use super::config::KafkaConfig;
use super::failures::Failures;
use super::stall::{STATS_INTERVAL_MS, SharedWatch};
use super::{partition_of, record, topic};
use crate::endpoint::handoff::{Inbound, PipelineClosed};

/// Pause before offering a record again when librdkafka's local queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);
/// How often the watchdog looks at what the statistics said.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// One producer's statistics callback: whether it held records and appended none.
struct Appender {
    watch: SharedWatch,
    /// Uplinks the log acknowledged, ever (every producer of this process).
    appended: Arc<AtomicU64>,
    /// `appended` at this producer's previous statistics report.
    appended_at_last_report: AtomicU64,
}

impl Appender {
    /// The callback of a new producer, reporting to `watch`.
    fn new(watch: &SharedWatch, appended: &Arc<AtomicU64>) -> Self {
        Self {
            watch: watch.clone(),
            appended: appended.clone(),
            appended_at_last_report: AtomicU64::new(appended.load(Ordering::Relaxed)),
        }
    }
}

impl ClientContext for Appender {
    fn stats(&self, statistics: Statistics) {
        let appended = self.appended.load(Ordering::Relaxed);
        let before = self
            .appended_at_last_report
            .swap(appended, Ordering::Relaxed);
        let healthy = statistics.msg_cnt == 0 || appended != before;
        self.watch.lock().observed(Instant::now(), healthy);
    }
}

/// Appends uplinks to the log.
pub struct LogProducer {
    /// The producer in use; the watchdog replaces it when it stalls.
    producer: RwLock<FutureProducer<Appender>>,
    /// How to make a producer.
    client: ClientConfig,
    /// What the producers' statistics say, for the watchdog.
    watch: SharedWatch,
    /// Uplinks the log acknowledged, ever.
    appended: Arc<AtomicU64>,
    topic: Arc<str>,
    partitions: u32,
    in_flight: Arc<Semaphore>,
    /// How long a meter's PUBACK waits for the log.
    delivery_timeout: Duration,
    metrics: Arc<ProducerMetrics>,
}

struct ProducerMetrics {
    appended: Counter,
    failed: Failures,
    in_flight: Gauge,
    replacements: Counter,
}

impl LogProducer {
    /// Connects, and checks (or creates) the topic; fails when the brokers do not
    /// answer. Starts the producer watchdog (module docs), which ends with the
    /// producer.
    pub async fn connect(config: &KafkaConfig) -> anyhow::Result<Arc<LogProducer>> {
        topic::ensure(config, &config.topic).await?;
        let mut client = topic::client_config(config);
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Never: the PUBACK's timeout is meterflow's (see the module docs).
            .set("message.timeout.ms", "0")
            .set("linger.ms", "2")
            .set("statistics.interval.ms", STATS_INTERVAL_MS);
        let (watch, appended) = (SharedWatch::new(), Arc::default());
        let producer = client.create_with_context(Appender::new(&watch, &appended))?;
        let producer = Arc::new(LogProducer {
            producer: RwLock::new(producer),
            client,
            watch,
            appended,
            topic: Arc::from(config.topic.as_str()),
            partitions: config.partitions,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            delivery_timeout: Duration::from_millis(config.delivery_timeout_ms),
            metrics: Arc::new(ProducerMetrics {
                appended: metrics::counter!("meterflow_log_appended_total"),
                failed: Failures::new(metrics::counter!("meterflow_log_append_failures_total")),
                in_flight: metrics::gauge!("meterflow_log_append_in_flight"),
                replacements: metrics::counter!("meterflow_log_producer_replacements_total"),
            }),
        });
        let patience = Duration::from_secs(config.stall_patience_s);
        tokio::spawn(watchdog(Arc::downgrade(&producer), patience));
        Ok(producer)
    }

    /// The producer in use.
    fn producer(&self) -> FutureProducer<Appender> {
        self.producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the producer when it has stalled for `patience` (module docs).
    fn replace_if_stalled(&self, patience: Duration) {
        let stalled = self.watch.lock().stalled_for(Instant::now(), patience);
        let Some(stalled) = stalled else {
            return;
        };
        warn!(
            stalled_s = stalled.as_secs(),
            "log producer appended nothing it holds; replacing it with a new one"
        );
        self.metrics.replacements.increment(1);
        self.watch.restart();
        match (self.client).create_with_context(Appender::new(&self.watch, &self.appended)) {
            Ok(fresh) => {
                let old = std::mem::replace(
                    &mut *self
                        .producer
                        .write()
                        .unwrap_or_else(PoisonError::into_inner),
                    fresh,
                );
                // Purging and closing wait on librdkafka: not on the runtime.
                let _ = std::thread::Builder::new()
                    .name("log-producer-close".into())
                    .spawn(move || drop(old));
            }
            Err(error) => warn!(%error, "could not make a new log producer; trying again later"),
        }
    }

    /// Appends an uplink; its completion fires once the log has it.
    pub async fn send(&self, inbound: Inbound) -> Result<(), PipelineClosed> {
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PipelineClosed)?;
        let Inbound {
            identity,
            topic,
            payload,
            refused,
            received_at,
            completion,
            order,
            ..
        } = inbound;
        let key = record::key(&identity);
        let (headers, payload) = match order {
            Some(order) => (
                record::order_headers(received_at),
                serde_json::to_vec(&order)
                    .expect("an order serialises")
                    .into(),
            ),
            None => (record::headers(&topic, received_at, refused), payload),
        };
        let headers = owned_headers(&headers);
        let mut next = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&payload[..])
            .partition(partition_of(&identity, self.partitions))
            .headers(headers);
        let producer = self.producer();
        let mut delivery = loop {
            match producer.send_result(next) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    next = back;
                    tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                }
                Err((error, _)) => {
                    self.metrics.failed_to_append(&identity, &error);
                    // Dropping the completion closes the connection: the meter resends.
                    return Ok(());
                }
            }
        };
        drop(producer);
        self.metrics.in_flight.increment(1.0);
        let metrics = self.metrics.clone();
        let appended = self.appended.clone();
        let timeout = self.delivery_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, &mut delivery).await.ok() {
                Some(Ok(Ok(_))) => {
                    metrics.appended.increment(1);
                    appended.fetch_add(1, Ordering::Relaxed);
                    completion.complete();
                }
                Some(Ok(Err((error, _)))) => metrics.failed_to_append(&identity, &error),
                // The producer is gone (shutdown): the meter resends.
                Some(Err(_)) => {}
                None => {
                    metrics
                        .failed_to_append(&identity, &"no answer within kafka.delivery_timeout_ms");
                    // The connection closes now; the slot stays taken until the log
                    // answers for the record.
                    drop(completion);
                    let _ = delivery.await;
                }
            }
            metrics.in_flight.decrement(1.0);
            drop(permit);
        });
        Ok(())
    }

    /// Waits (at most `timeout`) until the log has answered every uplink handed over.
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        if let Err(error) = self.producer().flush(timeout) {
            warn!(%error, "uplinks still unanswered by the log at shutdown; their meters resend");
        }
    }
}

/// The producer watchdog: runs until the producer is gone.
async fn watchdog(producer: Weak<LogProducer>, patience: Duration) {
    let mut every = tokio::time::interval(WATCH_EVERY);
    loop {
        every.tick().await;
        let Some(producer) = producer.upgrade() else {
            return;
        };
        producer.replace_if_stalled(patience);
    }
}

impl ProducerMetrics {
    /// An uplink whose PUBACK is given up: counted, and logged sparsely.
    fn failed_to_append(&self, meter: &MeterKey, error: &dyn std::fmt::Display) {
        if let Some(failures) = self.failed.record() {
            warn!(%meter, %error, failures, "uplinks not appended to the log in time; their meters will resend");
        }
    }
}

/// A record's headers as librdkafka takes them.
pub(super) fn owned_headers(headers: &[(&str, Vec<u8>)]) -> OwnedHeaders {
    headers
        .iter()
        .fold(OwnedHeaders::new(), |headers, (name, value)| {
            headers.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            })
        })
}
