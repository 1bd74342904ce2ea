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

use std::sync::Arc;
use std::time::Duration;

use meterflow_model::MeterKey;
use metrics::{Counter, Gauge};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::Semaphore;
use tracing::warn;

use super::config::KafkaConfig;
use super::failures::Failures;
use super::{partition_of, record, topic};
use crate::endpoint::handoff::{Inbound, PipelineClosed};

/// Pause before offering a record again when librdkafka's local queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

/// Appends uplinks to the log.
pub struct LogProducer {
    producer: FutureProducer,
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
}

impl LogProducer {
    /// Connects, and checks (or creates) the topic; fails when the brokers do not
    /// answer.
    pub async fn connect(config: &KafkaConfig) -> anyhow::Result<LogProducer> {
        topic::ensure(config, &config.topic).await?;
        let producer: FutureProducer = topic::client_config(config)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Never: the PUBACK's timeout is meterflow's (see the module docs).
            .set("message.timeout.ms", "0")
            .set("linger.ms", "2")
            .create()?;
        Ok(LogProducer {
            producer,
            topic: Arc::from(config.topic.as_str()),
            partitions: config.partitions,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            delivery_timeout: Duration::from_millis(config.delivery_timeout_ms),
            metrics: Arc::new(ProducerMetrics {
                appended: metrics::counter!("meterflow_log_appended_total"),
                failed: Failures::new(metrics::counter!("meterflow_log_append_failures_total")),
                in_flight: metrics::gauge!("meterflow_log_append_in_flight"),
            }),
        })
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
        let mut delivery = loop {
            match self.producer.send_result(next) {
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
        self.metrics.in_flight.increment(1.0);
        let metrics = self.metrics.clone();
        let timeout = self.delivery_timeout;
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, &mut delivery).await.ok() {
                Some(Ok(Ok(_))) => {
                    metrics.appended.increment(1);
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
        if let Err(error) = self.producer.flush(timeout) {
            warn!(%error, "uplinks still unanswered by the log at shutdown; their meters resend");
        }
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
