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
//! which never holds storage up). A processor (distributed mode) has no connections:
//! it appends each meter's watermark to the events topic instead ([`EventLog`], never
//! waited on), and the endpoint holding the meter's session delivers it there.
//!
//! Failure policy (DESIGN §6.6): the sink is the one layer that retries a store write —
//! the whole group commit, with backon's exponential backoff and jitter paced by the
//! store's `retry` config; the store sends each statement once and its driver does not
//! retry (`meterflow_storage::resilience` has the table of who retries what).
//! - A *transient* error (unreachable, overloaded, timed out, breaker open) is retried
//!   forever: nothing is acked meanwhile, the sink queue fills, the shard workers block
//!   and the meters see slower acks and resend. After `retry.max_attempts` failed tries
//!   the store is reported failing (`/readyz` 503); failures are logged at 1, 2, 4, 8…
//! - Any other error (a rejected statement, unreadable data) cannot heal by retrying,
//!   and the group cannot be acked: the sink stops, leaving the group unacked, and
//!   tells the service, which exits so that its supervisor restarts it (a misconfigured
//!   store then fails at start with what to change). Meters resend what was not acked;
//!   state is hydrated from the store again, so nothing is lost or counted twice.
//!
//! A processor's sink writes only while the processor's ownership lease holds
//! ([`crate::kafka::lease`]): it asks right before every store write and when idle,
//! and a process found frozen past its group session restarts in place, writing
//! nothing more ([`crate::restart`]).
//!
//! A failed cache update is counted and logged; storing and acking go on (the cache
//! holds absolute values, so what failed is applied again once the cache answers).
//!
//! The sink runs on a plain OS thread, not tokio: the embedded store's writes block
//! on fsync and the thread does nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use backon::BlockingRetryable;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use meterflow_model::alert::AlertEvent;
use meterflow_model::{MeterKey, Outputs, SealedBatch};
use meterflow_processors::TenantDirectory;
use meterflow_processors::analytics::DistrictRollup;
use meterflow_storage::resilience::RetryConfig;
use meterflow_storage::{ReadingStore, StoreError};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::cache_writer::CacheWriter;
use crate::endpoint::outbox::{Completion, Outbox};
use crate::kafka::EventLog;
use crate::kafka::lease::OwnershipLease;
use crate::metrics::{PipelineMetrics, TenantStored};
use crate::rollup_seed::Published;
use crate::shard::{DurableBatches, SinkItem};

/// Readings per group write. Large groups amortise the fsync; this bound keeps one
/// write (and the acks waiting on it) to a few tens of milliseconds.
const MAX_GROUP_READINGS: usize = 64 * 1024;
/// How often cache updates held back by a cache outage are retried when no new
/// batch arrives: the cache is current again within about this long of returning.
const CACHE_RETRY_EVERY: Duration = Duration::from_secs(1);

pub struct Sink {
    pub inbox: Receiver<SinkItem>,
    pub store: Arc<dyn ReadingStore>,
    pub cache: CacheWriter,
    /// Merges the shards' analytics partials into district and tenant totals.
    pub rollup: DistrictRollup,
    /// The tenants' settings (local days, for what an earlier run published).
    pub tenants: Arc<TenantDirectory>,
    /// Whether windows start from what an earlier run published
    /// ([`crate::rollup_seed`]): when this process owns every meter (embedded mode).
    /// A processor owns some partitions only, and the store holds other processors'
    /// shares too (docs/distributed.md, "Known limits").
    pub seed_from_published: bool,
    /// Alert events on their way to the notifier (never waited on).
    pub alerts: Sender<AlertEvent>,
    /// In a processor: where the meters' watermarks go, for the endpoints.
    pub events: Option<Arc<dyn EventLog>>,
    pub metrics: PipelineMetrics,
    /// Stored messages and readings per tenant.
    pub tenant_stored: TenantStored,
    /// False while store writes are failing (for `/readyz`).
    pub store_healthy: Arc<AtomicBool>,
    /// The store's retry settings: the delays between tries of a group commit, and
    /// after how many failed tries the store is reported failing.
    pub retry: RetryConfig,
    /// Receives the error of a group commit the store refused for good, when the sink
    /// stops on it.
    pub refused: oneshot::Sender<StoreError>,
    /// Which batches of each shard are durable, for the shards (a meter rests only
    /// once its last batch is).
    pub durable: DurableBatches,
    /// In a processor: whether it may still write as its partitions' owner. Checked
    /// right before every store write and when idle (so a lapse is acted on within
    /// about [`CACHE_RETRY_EVERY`], between groups): once lapsed, the process restarts
    /// in place without writing (docs/distributed.md, "A late former owner starts no
    /// late write").
    pub ownership: Option<Arc<OwnershipLease>>,
}

impl Sink {
    pub fn spawn(self) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name("sink".into())
            .spawn(move || self.run())
    }

    /// Runs until every shard has stopped and the queue is drained, or until the store
    /// refuses a group for good.
    fn run(mut self) {
        loop {
            let first = match self.inbox.recv_timeout(CACHE_RETRY_EVERY) {
                Ok(item) => item,
                Err(RecvTimeoutError::Timeout) => {
                    self.hold_ownership();
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
            if let Err(refusal) = self.commit(group) {
                error!(error = %refusal, "the store refused a group commit, and retrying cannot help; the sink stops without acking the group, and meterflow exits so that it is restarted (meters resend what was not acked)");
                let _ = self.refused.send(refusal);
                return;
            }
        }
        info!("sink drained");
    }

    /// Makes a group durable in one store commit — readings, states, dead letters
    /// and the durable outputs derived from them — then answers its messages, counts,
    /// notifies and updates the cache once for the whole group. Returns the store's
    /// error, with nothing answered, when it is not transient.
    fn commit(&mut self, group: Vec<SinkItem>) -> Result<(), StoreError> {
        let mut batches = Vec::with_capacity(group.len());
        let mut outputs = Outputs::default();
        let mut received = Vec::with_capacity(group.len());
        let mut completions = Vec::new();
        for mut item in group {
            completions.append(&mut item.completions);
            if self.seed_from_published {
                self.seed_unseen(&item.outputs);
            }
            self.rollup
                .absorb(item.batch.shard, item.batch.now_ms, &mut item.outputs);
            outputs.append(&mut item.outputs);
            received.extend(item.oldest);
            batches.push(item.batch);
        }
        self.commit_durably(&batches, &outputs)?;
        for batch in &batches {
            self.durable.advance(batch.shard, batch.number);
        }
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
        Ok(())
    }

    /// Seeds the rollup with what an earlier run published of the windows in
    /// `outputs` it holds nothing of yet.
    fn seed_unseen(&mut self, outputs: &Outputs) {
        let (rows, tops) = self.rollup.unseen(outputs);
        if rows.is_empty() && tops.is_empty() {
            return;
        }
        let published = Published {
            store: &*self.store,
            cache: self.cache.cache(),
            tenants: &self.tenants,
        };
        let (rows, tops) = published.read(rows, tops);
        self.rollup.seed(rows, tops);
    }

    /// Commits the group, retrying it while the store's error is transient (without
    /// limit: an outage holds the group, never drops it). Returns the first error that
    /// is not transient.
    fn commit_durably(&self, batches: &[SealedBatch], outputs: &Outputs) -> Result<(), StoreError> {
        let mut failures = 0u32;
        let attempt = || {
            self.hold_ownership();
            let started = Instant::now();
            let result = self.store.commit(batches, outputs);
            if result.is_ok() {
                self.metrics
                    .store_write_seconds
                    .record(started.elapsed().as_secs_f64());
            }
            result
        };
        let result = attempt
            .retry(self.retry.backoff().without_max_times())
            .sleep(thread::sleep)
            .when(StoreError::is_transient)
            .notify(|error, delay| {
                failures += 1;
                self.failed(error, failures, delay);
            })
            .call();
        match &result {
            Ok(()) => {
                if failures > 0 {
                    info!(
                        attempts = failures + 1,
                        "store writes succeed again; draining"
                    );
                }
                self.store_healthy.store(true, Ordering::Relaxed);
            }
            Err(_) => {
                self.metrics.store_errors.increment(1);
                self.store_healthy.store(false, Ordering::Relaxed);
                self.record_breaker();
            }
        }
        result
    }

    /// In a processor whose ownership lease has lapsed: restarts the process in place,
    /// writing nothing more. Its partitions' new owners replay what it held, and its
    /// aggregates, which count that, go with it.
    fn hold_ownership(&self) {
        if let Some(Err(lapsed)) = self.ownership.as_deref().map(OwnershipLease::holds) {
            crate::restart::in_place(&lapsed.to_string());
        }
    }

    /// Counts a transient failure of a group commit (the `failures`th in a row), and
    /// logs it at 1, 2, 4, 8… After `retry.max_attempts` of them the store is reported
    /// failing.
    fn failed(&self, error: &StoreError, failures: u32, retry_in: Duration) {
        self.metrics.store_errors.increment(1);
        self.record_breaker();
        let failing = failures >= self.retry.max_attempts;
        if failing {
            self.store_healthy.store(false, Ordering::Relaxed);
        }
        if failures.is_power_of_two() {
            let retry_in_ms = retry_in.as_millis() as u64;
            if failing {
                error!(%error, failures, retry_in_ms, "store writes keep failing; holding acks and retrying");
            } else {
                warn!(%error, failures, retry_in_ms, "store write failed; holding acks and retrying");
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

    /// Counts what meters sent and is now stored; estimated rows VEE added and an
    /// exchange's recorded final read are not readings a meter sent.
    fn count_stored(&mut self, batches: &[SealedBatch]) {
        let (mut messages, mut readings) = (0, 0);
        for meter in batches.iter().flat_map(|b| &b.meters) {
            let sent = u64::from(meter.sent_readings);
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
    /// wins — in a processor, once per meter to the events topic), then the PUBACK.
    fn answer(&mut self, batches: &[SealedBatch], completions: Vec<Completion>) {
        let meters = batches.iter().map(|b| b.meters.len()).sum();
        let mut watermarks: HashMap<&MeterKey, u64> = HashMap::with_capacity(meters);
        for meter in batches.iter().flat_map(|b| &b.meters) {
            if let Some(w) = meter.state.seq.watermark() {
                watermarks.insert(&meter.key, w);
            }
        }
        if let Some(events) = &self.events {
            for (meter, w) in &watermarks {
                events.watermark(meter, *w);
            }
        }
        let mut told: HashSet<*const Outbox> = HashSet::with_capacity(completions.len());
        for completion in completions {
            if let Some(outbox) = completion.outbox()
                && let Some(w) = outbox.meter().and_then(|m| watermarks.get(m))
                && told.insert(Arc::as_ptr(outbox))
                && outbox.deliver_watermark(*w)
            {
                self.metrics.acks.increment(1);
            }
            completion.complete();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use crossbeam_channel::bounded;
    use meterflow_model::alert::AlertEvent;
    use meterflow_model::analytics::DistrictUsage;
    use meterflow_model::billing::BillLine;
    use meterflow_model::processing::AnalyticsSettings;
    use meterflow_model::{DeadLetter, MeterState, StoredReading};
    use meterflow_storage::memory_cache::MemoryCache;

    use super::*;

    /// A store whose group commits answer from a script (then succeed), counting them.
    struct ScriptedStore {
        answers: Mutex<VecDeque<Result<(), StoreError>>>,
        commits: Mutex<u32>,
    }

    impl ReadingStore for ScriptedStore {
        fn write(&self, _: &[SealedBatch]) -> Result<(), StoreError> {
            unreachable!("the sink commits groups")
        }
        fn commit(&self, _: &[SealedBatch], _: &Outputs) -> Result<(), StoreError> {
            *self.commits.lock().unwrap() += 1;
            self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()))
        }
        fn meter_state(&self, _: &MeterKey) -> Result<Option<MeterState>, StoreError> {
            Ok(None)
        }
        fn stored_meters(
            &self,
            _: &mut dyn FnMut(MeterKey) -> std::ops::ControlFlow<()>,
        ) -> Result<(), StoreError> {
            Ok(())
        }
        fn readings(
            &self,
            _: &MeterKey,
            _: i64,
            _: i64,
            _: usize,
        ) -> Result<Vec<StoredReading>, StoreError> {
            Ok(Vec::new())
        }
        fn dead_letters(&self, _: &str, _: usize) -> Result<Vec<DeadLetter>, StoreError> {
            Ok(Vec::new())
        }
        fn write_outputs(&self, _: &Outputs) -> Result<(), StoreError> {
            unreachable!("the sink commits groups")
        }
        fn bill(&self, _: &str, _: &str, _: &str) -> Result<Option<BillLine>, StoreError> {
            Ok(None)
        }
        fn alerts(&self, _: &str, _: bool, _: usize) -> Result<Vec<AlertEvent>, StoreError> {
            Ok(Vec::new())
        }
        fn district_hourly(
            &self,
            _: &str,
            _: &str,
            _: i64,
            _: i64,
        ) -> Result<Vec<DistrictUsage>, StoreError> {
            Ok(Vec::new())
        }
        fn exceptions(
            &self,
            _: &str,
            _: Option<meterflow_model::ExceptionState>,
            _: usize,
        ) -> Result<Vec<meterflow_model::ReadException>, StoreError> {
            Ok(Vec::new())
        }
        fn exception(
            &self,
            _: &str,
            _: &str,
            _: i64,
        ) -> Result<Option<meterflow_model::ReadException>, StoreError> {
            Ok(None)
        }
        fn is_ready(&self) -> bool {
            true
        }
    }

    /// Runs a sink over one group on a store answering `answers`; returns how many
    /// commits it tried, whether the store ended healthy, and what the sink refused.
    fn sink_over(answers: Vec<Result<(), StoreError>>) -> (u32, bool, Option<StoreError>) {
        sink_with(answers, vec![SealedBatch::default()], None)
    }

    /// [`sink_over`] with the group's batches and an events log.
    fn sink_with(
        answers: Vec<Result<(), StoreError>>,
        batches: Vec<SealedBatch>,
        events: Option<Arc<dyn EventLog>>,
    ) -> (u32, bool, Option<StoreError>) {
        let store = Arc::new(ScriptedStore {
            answers: Mutex::new(answers.into()),
            commits: Mutex::new(0),
        });
        let (inbox_tx, inbox) = bounded(batches.len());
        // Queued before the sink starts: one group.
        for batch in batches {
            inbox_tx
                .send(SinkItem {
                    batch,
                    outputs: Outputs::default(),
                    oldest: None,
                    completions: Vec::new(),
                })
                .unwrap();
        }
        drop(inbox_tx);
        let (alerts, _alerts_rx) = bounded(1);
        let (refused, mut refusal) = oneshot::channel();
        let metrics = PipelineMetrics::register();
        let store_healthy = Arc::new(AtomicBool::new(true));
        let sink = Sink {
            inbox,
            store: store.clone(),
            cache: CacheWriter::new(Arc::new(MemoryCache::default()), metrics.clone()),
            rollup: DistrictRollup::with_settings(1, &AnalyticsSettings::default()),
            tenants: TenantDirectory::resolve(&Default::default()).unwrap(),
            seed_from_published: true,
            alerts,
            events,
            metrics,
            tenant_stored: TenantStored::default(),
            store_healthy: store_healthy.clone(),
            // Millisecond delays: the test sleeps for nothing.
            retry: RetryConfig {
                max_attempts: 2,
                initial_backoff_ms: 1,
                max_backoff_ms: 2,
            },
            refused,
            durable: DurableBatches::new(1),
            ownership: None,
        }
        .spawn()
        .unwrap();
        sink.join().unwrap();
        let commits = *store.commits.lock().unwrap();
        (
            commits,
            store_healthy.load(Ordering::Relaxed),
            refusal.try_recv().ok(),
        )
    }

    #[test]
    fn a_transient_failure_is_retried_until_the_commit_succeeds() {
        let down = || Err(StoreError::Unavailable("down".into()));
        let (commits, healthy, refused) = sink_over(vec![down(), down(), down(), down()]);
        assert_eq!(commits, 5, "past max_attempts: the sink never gives up");
        assert!(healthy, "healthy again once the commit succeeded");
        assert!(refused.is_none());
    }

    #[test]
    fn a_refusal_is_not_retried_and_stops_the_sink() {
        let (commits, healthy, refused) = sink_over(vec![
            Err(StoreError::Unavailable("blip".into())),
            Err(StoreError::Config("rejected".into())),
        ]);
        assert_eq!(commits, 2, "the refusal is not retried");
        assert!(!healthy);
        assert!(matches!(refused, Some(StoreError::Config(_))));
    }

    /// What a processor's sink appended to the events topic.
    #[derive(Default)]
    struct Appended(Mutex<Vec<(String, u64)>>);

    impl EventLog for Appended {
        fn watermark(&self, meter: &MeterKey, seq: u64) {
            self.0.lock().unwrap().push((meter.to_string(), seq));
        }
        fn alert(&self, _: &MeterKey, _: &[u8]) {
            unreachable!("alerts go through the notifier")
        }
    }

    /// A batch of one meter whose state has admitted `seqs`.
    fn batch_of(meter: &str, seqs: &[u64]) -> SealedBatch {
        let mut state = MeterState::default();
        for &seq in seqs {
            state.seq.admit(seq, 0, &mut Vec::new());
        }
        SealedBatch {
            meters: vec![meterflow_model::batch::MeterBatch {
                replaced: Vec::new(),
                key: meterflow_model::topic::parse_client_id(meter).unwrap(),
                readings: Vec::new(),
                state,
                messages: seqs.len() as u32,
                sent_readings: 0,
                duplicates: 0,
                first_received_at: None,
                statuses: Vec::new(),
                orders: Vec::new(),
            }],
            ..SealedBatch::default()
        }
    }

    #[test]
    fn a_processor_appends_each_meters_latest_watermark_once_per_durable_group() {
        let appended = Arc::new(Appended::default());
        let group = vec![
            batch_of("demo.m1", &[1, 2]),
            batch_of("demo.m2", &[]),
            batch_of("demo.m1", &[1, 2, 3]),
        ];
        sink_with(vec![], group, Some(appended.clone()));
        assert_eq!(
            *appended.0.lock().unwrap(),
            vec![("demo/m1".to_string(), 3)],
            "m2 has no watermark yet"
        );
        let nothing = Arc::new(Appended::default());
        let (_, _, refused) = sink_with(
            vec![Err(StoreError::Config("rejected".into()))],
            vec![batch_of("demo.m1", &[1])],
            Some(nothing.clone()),
        );
        assert!(refused.is_some());
        assert!(
            nothing.0.lock().unwrap().is_empty(),
            "nothing before durability"
        );
    }
}
