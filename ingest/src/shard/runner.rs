//! The thread around a [`ShardCore`]: it owns the shard's queue, the clock, the store
//! reads that hydrate a meter on first sight (its `meter_state`, then its stored rows
//! after VEE's settled point, page by page into [`WindowRows`], from which the core
//! rebuilds the window the state does not persist), the [`Completion`]s of the
//! messages the open batch took, and the hand-off of sealed batches to the sink
//! (blocking while the sink queue is full: that is the pipeline's backpressure).
//! It reads back the resting meters whose timer rules are due ([`super::held`]) — a
//! few at a time when its queue is empty, one between two uplinks when it is not —
//! and, when its queue is empty, the stored meters it does not hold yet
//! ([`crate::dormant`]), so the timer rules cover meters silent since before a
//! restart. Once a second — and at once after a seal or an idle hydration that left
//! it well over the limit — it lets meters over `held_meters` rest, those whose last
//! batch the sink has made durable ([`DurableBatches`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use meterflow_model::{MeterKey, MeterState};
use meterflow_processors::ProcessorChain;
use meterflow_storage::{ReadingStore, StoreError};
use metrics::{Counter, Gauge};
use tracing::{error, info, warn};

use super::core::{Now, Sealed, ShardCore, Step, WINDOW_ROWS_PAGE, WindowRows};
use super::{DurableBatches, ShardSettings, SinkItem};
use crate::clock::now_ms;
use crate::dormant::DormantQueue;
use crate::endpoint::handoff::{Inbound, ShardInbox};
use crate::endpoint::outbox::Completion;
use crate::metrics::PipelineMetrics;
use crate::tenants::Tenants;

/// Back-off between attempts to read a meter's state while the store is failing.
const HYDRATE_RETRY: Duration = Duration::from_millis(500);

/// Meters hydrated per turn of an idle shard ([`ShardWorker::hydrate_idle`]),
/// between which the shard ticks and seals as usual.
const DORMANT_PER_TURN: usize = 16;

/// A shard worker: one OS thread running a [`ShardCore`].
pub struct ShardWorker {
    shard: usize,
    core: ShardCore,
    inbox: ShardInbox,
    sink: Sender<SinkItem>,
    store: Arc<dyn ReadingStore>,
    queue_depth: Gauge,
    /// Stored meters to hydrate when idle ([`crate::dormant`]).
    dormant: DormantQueue,
    dormant_hydrated: Counter,
    /// The sink's watermark per shard: which of this shard's batches are durable.
    durable: DurableBatches,
    /// Meters held and resting ([`PipelineMetrics::shard_meters`]).
    meter_gauges: (Gauge, Gauge),
    /// One per arrival the open batch took, answered by the sink once it is durable.
    completions: Vec<Completion>,
    /// Set at shutdown: the worker seals what it holds and stops, even though the
    /// broker link still holds a sender to its inbox.
    stop: Arc<AtomicBool>,
}

impl ShardWorker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shard: usize,
        settings: ShardSettings,
        inbox: ShardInbox,
        dormant: DormantQueue,
        sink: Sender<SinkItem>,
        durable: DurableBatches,
        store: Arc<dyn ReadingStore>,
        tenants: Arc<Tenants>,
        processors: ProcessorChain,
        metrics: PipelineMetrics,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let dormant_hydrated = metrics.dormant_hydrated.clone();
        Self {
            shard,
            core: ShardCore::new(
                shard,
                settings,
                tenants,
                processors,
                metrics,
                Instant::now(),
            ),
            inbox,
            dormant,
            dormant_hydrated,
            durable,
            meter_gauges: PipelineMetrics::shard_meters(shard),
            sink,
            store,
            queue_depth: PipelineMetrics::shard_queue_depth(shard),
            completions: Vec::new(),
            stop,
        }
    }

    /// Starts the worker on its own thread. It runs until its inbox closes (or the
    /// stop flag is set), then seals what it holds — and what its processors hold for
    /// later, analytics' unflushed windows — and stops.
    pub fn spawn(self) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name(format!("shard-{}", self.shard))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        loop {
            match self.inbox.recv_deadline(self.wake_at()) {
                Ok(inbound) => {
                    self.take(inbound);
                    if self.core.is_full() || self.inbox.is_empty() {
                        self.seal();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.finish();
                    return;
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                self.finish();
                return;
            }
            // Before any sweep: an idle shard must not sweep meters it gave up.
            self.apply_orders();
            let now = now();
            if self.core.tick(now) {
                self.queue_depth.set(self.inbox.len() as f64);
                self.rest(now);
            }
            if self.core.linger_elapsed(now.instant) {
                self.seal();
            }
            self.hydrate_idle();
        }
    }

    /// When to stop waiting for an uplink: now while meters wait to be hydrated,
    /// else when the core next needs a tick or a seal.
    fn wake_at(&self) -> Instant {
        if self.dormant.is_empty() && !self.core.has_waking() {
            self.core.deadline()
        } else {
            Instant::now()
        }
    }

    /// Lets meters rest when the shard holds well over its limit: between the
    /// once-a-second passes, a burst of meters read back (a start's listing, a fleet
    /// larger than the limit) would otherwise hold a second's worth more.
    fn rest_if_well_over(&mut self) {
        if self.core.well_over_limit() {
            self.rest(now());
        }
    }

    /// Lets meters over the shard's limit rest, and shows how many are held and
    /// resting.
    fn rest(&mut self, now: Now) {
        self.core.rest(self.durable.of(self.shard), now);
        let (held, resting) = self.core.meter_counts();
        self.meter_gauges.0.set(held as f64);
        self.meter_gauges.1.set(resting as f64);
    }

    /// Hydrates up to [`DORMANT_PER_TURN`] meters, stopping as soon as an uplink
    /// waits (it waits for one hydration at most): first the resting meters whose
    /// timer rules are due ([`ShardCore::next_waking`], swept at once), then the
    /// stored meters a listing handed over that the process still owns, those the
    /// core wants ([`ShardCore::wants_dormant`]); the next timer sweep covers them.
    /// A woken meter is read back even when an uplink waits, one a turn, so its rule
    /// is not put off while the shard is busy. Orders are applied first: a meter
    /// given up is not hydrated again here.
    fn hydrate_idle(&mut self) {
        for turn in 0..DORMANT_PER_TURN {
            if turn > 0 && !self.inbox.is_empty() {
                return;
            }
            if let Some(key) = self.core.next_waking() {
                let (state, rows) = self.hydrate(&key);
                self.core.woken(key, state, rows, now());
                continue;
            }
            if !self.inbox.is_empty() {
                return;
            }
            self.rest_if_well_over();
            let Some(key) = self.dormant.next() else {
                return;
            };
            if self.core.wants_dormant(&key) {
                let (state, rows) = self.hydrate(&key);
                self.core.hydrated(key, state, rows);
                self.dormant_hydrated.increment(1);
            }
        }
    }

    /// Drops the meters the processor gave up ([`crate::endpoint::handoff::ForgetOrder`]):
    /// before the next uplink is taken, and before every tick, so that a shard with
    /// nothing to take does not sweep them — raise their no-communication alerts,
    /// close their bills — after their new owner took over.
    fn apply_orders(&mut self) {
        for order in self.inbox.orders() {
            self.core.forget(&*order);
        }
    }

    /// Offers an arrival to the core, reading the meter's state first when it asks.
    fn take(&mut self, inbound: Inbound) {
        self.apply_orders();
        let at = Instant::now();
        let arrival = inbound.arrival();
        loop {
            match self.core.admit(&arrival, at) {
                Step::Taken => break,
                Step::NeedsState(key) => {
                    let (state, rows) = self.hydrate(&key);
                    self.core.hydrated(key, state, rows);
                }
                Step::Refused(why) => {
                    warn!(meter = %inbound.identity, %why, "operator order refused");
                    inbound.completion.refuse(why);
                    return;
                }
            }
        }
        self.completions.push(inbound.completion);
    }

    /// Reads a meter's persisted state and the stored rows its window is rebuilt
    /// from. Without them a resend would count as new usage (and VEE would decide
    /// late reads without their neighbours), so while the store cannot answer the
    /// shard waits (and backpressure builds).
    fn hydrate(&self, key: &MeterKey) -> (MeterState, WindowRows) {
        let Some(state) = self.wait_for_store(key, "meter state", || self.store.meter_state(key))
        else {
            return (MeterState::default(), WindowRows::default());
        };
        let mut rows = WindowRows::after_settled(&state);
        while let Some(from_ms) = rows.next_page() {
            let page = self.wait_for_store(key, "stored readings", || {
                self.store
                    .readings(key, from_ms, i64::MAX, WINDOW_ROWS_PAGE)
            });
            rows.take_page(page);
        }
        (state, rows)
    }

    /// Runs `read` until the store answers, logging the first failure.
    fn wait_for_store<T>(
        &self,
        key: &MeterKey,
        what: &'static str,
        read: impl Fn() -> Result<T, StoreError>,
    ) -> T {
        let mut logged = false;
        loop {
            match read() {
                Ok(value) => return value,
                Err(e) => {
                    if !logged {
                        error!(shard = self.shard, meter = %key, error = %e, what, "cannot hydrate meter; waiting for the store");
                        logged = true;
                    }
                    thread::sleep(HYDRATE_RETRY);
                }
            }
        }
    }

    /// Seals the open batch and hands it to the sink with its completions.
    fn seal(&mut self) {
        if let Some(sealed) = self.core.seal(now()) {
            self.send(sealed);
        }
        self.rest_if_well_over();
    }

    /// Seals what the shard holds and what its processors still hold, as it stops.
    fn finish(&mut self) {
        for sealed in self.core.finish(now()) {
            self.send(sealed);
        }
    }

    fn send(&mut self, sealed: Sealed) {
        let item = SinkItem {
            batch: sealed.batch,
            outputs: sealed.outputs,
            oldest: sealed.oldest,
            completions: std::mem::take(&mut self.completions),
        };
        if self.sink.send(item).is_err() {
            info!(shard = self.shard, "sink gone; shard stopping");
        }
    }
}

/// The clock, read here and passed to the core.
fn now() -> Now {
    Now {
        instant: Instant::now(),
        wall_ms: now_ms(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use crossbeam_channel::bounded;
    use meterflow_model::alert::AlertKind;
    use meterflow_model::topic::parse_client_id;
    use meterflow_model::{Reading, Uplink, codec};
    use meterflow_storage::embedded::EmbeddedStore;

    use super::*;
    use crate::config::Config;
    use crate::dead_letter_limit::DeadLetterRate;
    use crate::dormant::DormantMeters;
    use crate::endpoint::handoff::ShardRouter;
    use crate::endpoint::outbox::Outbox;

    /// Meters fall silent after 1.5 s (room for a slow machine between an uplink and
    /// the order that gives its meter up), and the timer sweep runs every 20 ms.
    const CONFIG: &str = "[[tenants]]\nid = \"plain\"\n\n[processors.defaults.alert_rules]\nno_communication_ms = 1500\n";

    fn uplink(meter: &MeterKey) -> Inbound {
        let now_ms = now_ms();
        let payload =
            codec::encode_json(&Uplink::new(1, vec![Reading::register(now_ms - 1_000, 10)]));
        let (outbox, _answers) = Outbox::new(Some(meter.clone()));
        Inbound {
            identity: meter.clone(),
            topic: Bytes::from(format!("meters/plain/{}/up", meter.meter)),
            payload: payload.into(),
            refused: None,
            received_at: now_ms,
            received: Instant::now(),
            completion: Completion::new(outbox, None, false),
            order: None,
        }
    }

    /// A processor gave `gone`'s partition up while the shard had nothing to take:
    /// the shard drops it before its next sweep, so only the meter it kept is alerted
    /// on when both fall silent.
    #[test]
    fn an_idle_shard_does_not_sweep_the_meters_it_gave_up() {
        let config = Config::from_toml(CONFIG).expect("test config");
        let settings = ShardSettings {
            limits: config.limits.clone(),
            batch_readings: 1_000,
            linger: Duration::from_millis(1),
            resend_window_ms: 60_000,
            sweep_interval: Duration::from_millis(20),
            dead_letter_rate: DeadLetterRate {
                burst: 3,
                refill_per_s: 1,
                capacity: 16,
            },
            held_meters: 1_000,
        };
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ReadingStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let (router, mut inboxes) = ShardRouter::new(1, 16);
        let (sink, sealed) = bounded(64);
        let stop = Arc::new(AtomicBool::new(false));
        let (_nothing_listed, mut dormant) =
            DormantMeters::new(store.clone(), 1, Arc::new(|_| true), stop.clone());
        let worker = ShardWorker::new(
            0,
            settings,
            inboxes.remove(0),
            dormant.remove(0),
            sink,
            DurableBatches::new(1),
            store,
            Arc::new(Tenants::from_config(&config)),
            ProcessorChain::for_tenants(config.processors.clone()).unwrap(),
            PipelineMetrics::register(),
            stop.clone(),
        )
        .spawn()
        .unwrap();

        let (kept, gone) = (
            parse_client_id("plain.m1").unwrap(),
            parse_client_id("plain.m2").unwrap(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for meter in [&kept, &gone] {
            runtime.block_on(router.send(uplink(meter))).unwrap();
        }
        let mut taken = 0;
        while taken < 2 {
            let item = sealed
                .recv_timeout(Duration::from_secs(5))
                .expect("the uplinks sealed");
            taken += item.batch.meters.iter().filter(|m| m.messages > 0).count();
        }
        let forgotten = gone.clone();
        router.forget(Arc::new(move |meter| meter == &forgotten));

        let mut silent = Vec::new();
        let until = Instant::now() + Duration::from_secs(4);
        while let Ok(item) = sealed.recv_deadline(until) {
            silent.extend(
                item.outputs
                    .alerts
                    .iter()
                    .filter(|a| a.kind == AlertKind::NoCommunication)
                    .map(|a| a.meter.clone()),
            );
        }
        stop.store(true, Ordering::Relaxed);
        drop(router);
        worker.join().unwrap();
        assert_eq!(silent, vec!["m1".to_owned()]);
    }
}
