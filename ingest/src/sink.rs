//! The sink stage: makes sealed batches durable, then acks and caches them.
//!
//! One thread takes sealed batches from every shard, in arrival order (each shard's
//! batches arrive in sealing order), and writes them in groups: the district rollup
//! runs over the group, then one durable store commit — one journal sync in the
//! embedded store — carries every batch waiting, up to [`MAX_GROUP_READINGS`], with
//! the bills, alert episodes and hourly district rows derived from them. Only after the write returns does it answer every message
//! of the group — PUBACK for QoS 1 (so a PUBACK means durable), and each meter's
//! watermark on its ack topic where the meter subscribed (one per connection per
//! group) — and update the hot cache once for the group (through [`CacheWriter`],
//! which never holds storage up).
//!
//! Failure policy (DESIGN §6.6): a failed store write is retried with exponential
//! backoff and jitter, forever — nothing is acked meanwhile, the sink queue fills, the
//! shard workers block and the meters see slower acks and resend. A failed cache update
//! is counted and logged; storing and acking go on (the cache holds absolute values,
//! so what failed is applied again once the cache answers).
//!
//! The sink runs on a plain OS thread, not tokio: the embedded store's writes block
//! on fsync and the thread does nothing else.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use meterflow_model::alert::AlertEvent;
use meterflow_model::{MeterKey, Outputs, Quality, SealedBatch};
use meterflow_processors::analytics::DistrictRollup;
use meterflow_storage::{ReadingStore, StoreError};
use tracing::{error, info};

use crate::cache_writer::CacheWriter;
use crate::endpoint::outbox::{Completion, Outbox};
use crate::metrics::{PipelineMetrics, TenantStored};
use crate::shard::SinkItem;

/// Readings per group write. Large groups amortise the fsync; this bound keeps one
/// write (and the acks waiting on it) to a few tens of milliseconds.
const MAX_GROUP_READINGS: usize = 64 * 1024;
/// First retry delay after a failed store write; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between store write attempts: an outage is probed every few seconds.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often cache updates held back by a cache outage are retried when no new
/// batch arrives: the cache is current again within about this long of returning.
const CACHE_RETRY_EVERY: Duration = Duration::from_secs(1);

pub struct Sink {
    pub inbox: Receiver<SinkItem>,
    pub store: Arc<dyn ReadingStore>,
    pub cache: CacheWriter,
    /// Merges the shards' analytics partials into district and tenant totals.
    pub rollup: DistrictRollup,
    /// Alert events on their way to the notifier (never waited on).
    pub alerts: Sender<AlertEvent>,
    pub metrics: PipelineMetrics,
    /// Stored messages and readings per tenant.
    pub tenant_stored: TenantStored,
    /// False while store writes are failing (for `/readyz`).
    pub store_healthy: Arc<AtomicBool>,
}

impl Sink {
    pub fn spawn(self) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("sink".into())
            .spawn(move || self.run())
    }

    /// Runs until every shard has stopped and the queue is drained.
    fn run(mut self) {
        loop {
            let first = match self.inbox.recv_timeout(CACHE_RETRY_EVERY) {
                Ok(item) => item,
                Err(RecvTimeoutError::Timeout) => {
                    self.cache.retry_pending();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            let mut readings = group[0].batch.reading_count();
            while readings < MAX_GROUP_READINGS {
                match self.inbox.try_recv() {
                    Ok(item) => {
                        readings += item.batch.reading_count();
                        group.push(item);
                    }
                    Err(_) => break,
                }
            }
            self.metrics.sink_queue_depth.set(self.inbox.len() as f64);
            self.commit(group);
        }
        info!("sink drained");
    }

    /// Makes a group durable in one store commit — readings, states, dead letters
    /// and the durable outputs derived from them — then answers its messages, counts,
    /// notifies and updates the cache once for the whole group.
    fn commit(&mut self, group: Vec<SinkItem>) {
        let mut batches = Vec::with_capacity(group.len());
        let mut outputs = Outputs::default();
        let mut received = Vec::with_capacity(group.len());
        let mut completions = Vec::new();
        for mut item in group {
            completions.append(&mut item.completions);
            self.rollup
                .absorb(item.batch.shard, item.batch.now_ms, &mut item.outputs);
            outputs.append(&mut item.outputs);
            received.extend(item.oldest);
            batches.push(item.batch);
        }
        self.write_durably(|store| store.commit(&batches, &outputs));
        let durable_at = Instant::now();
        for oldest in received {
            self.metrics
                .received_to_durable_seconds
                .record(durable_at.duration_since(oldest).as_secs_f64());
        }
        self.count_stored(&batches);
        self.answer(&batches, completions);
        self.notify(&outputs);
        self.cache.apply(outputs);
    }

    /// Runs a store write until the store accepts it, backing off between attempts.
    fn write_durably(&self, write: impl Fn(&dyn ReadingStore) -> Result<(), StoreError>) {
        let mut delay = RETRY_FIRST;
        let mut attempt = 0u32;
        loop {
            let started = Instant::now();
            match write(self.store.as_ref()) {
                Ok(()) => {
                    self.metrics
                        .store_write_seconds
                        .record(started.elapsed().as_secs_f64());
                    if attempt > 0 {
                        info!(
                            attempts = attempt + 1,
                            "store writes succeed again; draining"
                        );
                    }
                    self.store_healthy.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    self.metrics.store_errors.increment(1);
                    self.store_healthy.store(false, Ordering::Relaxed);
                    self.record_breaker();
                    if attempt == 0 || attempt.is_power_of_two() {
                        error!(error = %e, attempt, retryable = e.is_retryable(), "store write failed; holding acks and retrying");
                    }
                    attempt += 1;
                    thread::sleep(jittered(delay));
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    fn record_breaker(&self) {
        if let Some(state) = self.store.breaker_state() {
            let value = f64::from(state.as_gauge());
            self.metrics.store_breaker_state.set(value);
            self.metrics.store_breaker_open.set(value);
        }
    }

    /// Counts what meters sent and is now stored; estimated rows VEE added are not
    /// readings anyone sent.
    fn count_stored(&mut self, batches: &[SealedBatch]) {
        let (mut messages, mut readings) = (0, 0);
        for meter in batches.iter().flat_map(|b| &b.meters) {
            let sent = meter
                .readings
                .iter()
                .filter(|r| r.quality != Quality::Estimated)
                .count() as u64;
            let sent_messages = u64::from(meter.messages);
            self.tenant_stored
                .add(&meter.key.tenant, sent_messages, sent);
            messages += sent_messages;
            readings += sent;
        }
        self.metrics.stored.add(messages, readings);
    }

    /// Hands durable alert events to the notifier without waiting.
    fn notify(&self, outputs: &Outputs) {
        for event in &outputs.alerts {
            self.metrics.alert(event.kind, event.state).increment(1);
            if self.alerts.try_send(event.clone()).is_err() {
                self.metrics.notifications_dropped.increment(1);
            }
        }
    }

    /// Answers every message of a durable group: the meter's watermark first (once
    /// per connection, where it subscribed to its ack topic; the latest batch's state
    /// wins), then the PUBACK.
    fn answer(&mut self, batches: &[SealedBatch], completions: Vec<Completion>) {
        let mut watermarks: HashMap<&MeterKey, u64> = HashMap::new();
        for meter in batches.iter().flat_map(|b| &b.meters) {
            if let Some(w) = meter.state.seq.watermark() {
                watermarks.insert(&meter.key, w);
            }
        }
        let mut told: HashSet<*const Outbox> = HashSet::new();
        for completion in completions {
            let outbox = completion.outbox();
            if let Some(w) = outbox.meter().and_then(|m| watermarks.get(m))
                && told.insert(Arc::as_ptr(outbox))
                && outbox.deliver_watermark(*w)
            {
                self.metrics.acks.increment(1);
            }
            completion.complete();
        }
    }
}

/// `delay` scaled by a factor in [0.5, 1.5), so meters' retries do not synchronise.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.5..1.5))
}
