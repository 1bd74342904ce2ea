//! A shard worker: one OS thread that owns every meter hashed to its shard — their
//! state, their dedupe window, their open batch — so nothing here takes a lock
//! (DESIGN §2).
//!
//! Per uplink: the endpoint's verdict on its topic → tenant rules → size → decode →
//! MAC → contract checks → hydrate the meter's state on first sight → dedupe by seq →
//! append to the open batch. The meter is the one its connection authenticated as
//! ([`Inbound::identity`]); a topic is never trusted to say who sent a message.
//! A batch seals when it holds `batch_readings` readings, when the shard's queue is
//! empty (nothing else is coming, so waiting would only delay the PUBACKs), or at the
//! latest after `linger`; the sealed batch runs through the processors and goes to the
//! sink with every touched meter's state and the [`Completion`] of every message it
//! took, which the sink answers once the batch is durable. Rejected uplinks become dead
//! letters in the same batch, so they are durable before they count — as many as the
//! sender's dead-letter rate allows ([`DeadLetterLimit`], per authenticated identity);
//! the rest are counted by reason and answered like the others, but not stored.
//!
//! Invariant: a meter's state in a sealed batch reflects exactly the messages in that
//! batch and earlier ones of this shard; the sink makes batches of one shard durable in
//! order, so the watermark it acks is never ahead of the store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use meterflow_model::batch::DEAD_LETTER_PAYLOAD_CAP;
use meterflow_model::check::{check_payload_size, check_uplink};
use meterflow_model::seq_window::SkippedGap;
use meterflow_model::status::DeviceStatus;
use meterflow_model::{
    Admission, DeadLetter, Limits, MeterBatch, MeterKey, MeterState, Outputs, Reject, SealedBatch,
    StoredReading, Uplink, codec,
};
use meterflow_processors::ProcessorChain;
use meterflow_storage::ReadingStore;
use metrics::Gauge;
use tracing::{debug, error, info, warn};

use crate::clock::now_ms;
use crate::dead_letter_limit::{Admit, DeadLetterLimit, DeadLetterRate};
use crate::endpoint::handoff::{Inbound, ShardInbox};
use crate::endpoint::outbox::Completion;
use crate::metrics::PipelineMetrics;
use crate::tenants::Tenants;

/// How often open seq gaps are checked against the resend window.
const GAP_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Back-off between attempts to read a meter's state while the store is failing.
const HYDRATE_RETRY: Duration = Duration::from_millis(500);

/// A sealed batch with what the processors made of it, on its way to the sink.
pub struct SinkItem {
    pub batch: SealedBatch,
    pub outputs: Outputs,
    /// When the oldest message of the batch was received (monotonic).
    pub oldest: Option<Instant>,
    /// One per message the batch took (stored, dead-lettered or duplicate): answered
    /// by the sink once the batch is durable.
    pub completions: Vec<Completion>,
}

/// Settings a shard worker needs.
#[derive(Clone)]
pub struct ShardSettings {
    pub limits: Limits,
    pub batch_readings: usize,
    pub linger: Duration,
    pub resend_window_ms: i64,
    /// How often the processors' timer sweep runs.
    pub sweep_interval: Duration,
    /// How many dead letters one sender may have stored.
    pub dead_letter_rate: DeadLetterRate,
}

pub struct ShardWorker {
    shard: usize,
    settings: ShardSettings,
    inbox: ShardInbox,
    sink: Sender<SinkItem>,
    store: Arc<dyn ReadingStore>,
    tenants: Arc<Tenants>,
    processors: ProcessorChain,
    metrics: PipelineMetrics,
    queue_depth: Gauge,
    /// State of every meter seen since start (hydrated from the store on first sight).
    meters: HashMap<MeterKey, MeterState>,
    /// Meters whose seq window has an open gap, checked by the sweep.
    gapped: HashSet<MeterKey>,
    open: OpenBatch,
    /// What the processors' timer sweep produced, sent with the next sealed batch.
    swept: Outputs,
    sealed_count: u64,
    dead_letter_ids: u64,
    /// At most one dead-letter WARN a second; the rest go to DEBUG (all are counted).
    dead_letter_warn: WarnLimit,
    /// Which dead letters are stored: per sender, at most its rate.
    dead_letter_limit: DeadLetterLimit,
    /// Set at shutdown: the worker seals what it holds and stops, even though the
    /// broker link still holds a sender to its inbox.
    stop: Arc<AtomicBool>,
}

/// The batch being filled.
#[derive(Default)]
struct OpenBatch {
    meters: Vec<MeterBatch>,
    index: HashMap<MeterKey, usize>,
    dead_letters: Vec<DeadLetter>,
    completions: Vec<Completion>,
    readings: usize,
    /// When the shard opened this batch: the linger is timed from here, not from
    /// when its messages were received, or a lagging queue would seal one batch per
    /// message.
    opened: Option<Instant>,
    /// When its oldest message was received (for publish→durable latency).
    oldest: Option<Instant>,
}

impl OpenBatch {
    fn is_empty(&self) -> bool {
        self.meters.is_empty() && self.dead_letters.is_empty()
    }

    /// The open batch's entry for `key`, created on first use.
    /// Looks up before inserting: the key is cloned (two allocations) only the
    /// first time a meter joins the batch, not for every message.
    fn meter(&mut self, key: &MeterKey) -> &mut MeterBatch {
        let index = match self.index.get(key) {
            Some(&index) => index,
            None => {
                self.meters.push(MeterBatch {
                    key: key.clone(),
                    readings: Vec::new(),
                    state: MeterState::default(),
                    messages: 0,
                    duplicates: 0,
                    first_received_at: None,
                    statuses: Vec::new(),
                });
                self.index.insert(key.clone(), self.meters.len() - 1);
                self.meters.len() - 1
            }
        };
        &mut self.meters[index]
    }
}

/// Why an uplink was not taken, with what could be read of it.
struct Rejection {
    reason: Reject,
    /// The uplink's seq, when it decoded.
    seq: Option<u64>,
    /// Readings it carried, when it decoded.
    readings: usize,
    /// Whether the meter's window already knew its seq: a resend of an uplink that
    /// was dead-lettered before, already counted as a duplicate and not stored again.
    duplicate: bool,
}

impl From<Reject> for Rejection {
    fn from(reason: Reject) -> Self {
        Rejection {
            reason,
            seq: None,
            readings: 0,
            duplicate: false,
        }
    }
}

impl ShardWorker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shard: usize,
        settings: ShardSettings,
        inbox: ShardInbox,
        sink: Sender<SinkItem>,
        store: Arc<dyn ReadingStore>,
        tenants: Arc<Tenants>,
        processors: ProcessorChain,
        metrics: PipelineMetrics,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let dead_letter_limit = DeadLetterLimit::new(settings.dead_letter_rate);
        Self {
            shard,
            settings,
            inbox,
            sink,
            store,
            tenants,
            processors,
            queue_depth: PipelineMetrics::shard_queue_depth(shard),
            metrics,
            meters: HashMap::new(),
            gapped: HashSet::new(),
            open: OpenBatch::default(),
            swept: Outputs::default(),
            sealed_count: 0,
            dead_letter_ids: 0,
            dead_letter_warn: WarnLimit::new(DEAD_LETTER_WARN_EVERY),
            dead_letter_limit,
            stop,
        }
    }

    /// Starts the worker on its own thread. It runs until its inbox closes, then
    /// seals what it holds and stops.
    pub fn spawn(self) -> std::io::Result<thread::JoinHandle<()>> {
        thread::Builder::new()
            .name(format!("shard-{}", self.shard))
            .spawn(move || self.run())
    }

    fn run(mut self) {
        let mut next_sweep = Instant::now() + GAP_SWEEP_EVERY;
        let mut next_timer_sweep = Instant::now() + self.settings.sweep_interval;
        loop {
            let deadline = match self.open.opened {
                Some(opened) => (opened + self.settings.linger).min(next_sweep),
                None => next_sweep,
            };
            match self.inbox.recv_deadline(deadline) {
                Ok(inbound) => {
                    self.handle(inbound);
                    if self.open.readings >= self.settings.batch_readings || self.inbox.is_empty() {
                        self.seal();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.seal();
                    return;
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                self.seal();
                return;
            }
            let now = Instant::now();
            if now >= next_sweep {
                self.sweep_gaps();
                next_sweep = now + GAP_SWEEP_EVERY;
                self.queue_depth.set(self.inbox.len() as f64);
            }
            if now >= next_timer_sweep {
                self.sweep_timers();
                next_timer_sweep = now + self.settings.sweep_interval;
            }
            if self
                .open
                .opened
                .is_some_and(|opened| now >= opened + self.settings.linger)
            {
                self.seal();
            }
        }
    }

    fn handle(&mut self, inbound: Inbound) {
        self.open.opened.get_or_insert_with(Instant::now);
        self.open.oldest.get_or_insert(inbound.received);
        if let Err(rejection) = self.accept(&inbound) {
            self.dead_letter(&inbound, rejection);
        }
        self.open.completions.push(inbound.completion);
    }

    /// Takes an uplink into the open batch, or says why not.
    ///
    /// An uplink that decodes and carries a valid MAC (where one is needed) but breaks
    /// a contract rule still moves the meter's seq window: it is stored as a dead
    /// letter, and resending it cannot change the verdict, so the meter is acked past
    /// it instead of resending it until the resend window runs out. Uplinks that fail
    /// earlier (bad topic, undecodable, bad MAC) say nothing trustworthy about the
    /// meter's seqs and leave its window alone — otherwise a forger could advance a
    /// victim meter's watermark over a real message.
    fn accept(&mut self, inbound: &Inbound) -> Result<(), Rejection> {
        if let Some(reason) = inbound.refused {
            return Err(reason.into());
        }
        let meter = &inbound.identity;
        let tenant = self
            .tenants
            .get(meter.tenant.as_str().as_bytes())
            .ok_or(Reject::UnknownTenant)?;
        tenant.admits(&meter.meter)?;
        check_payload_size(inbound.payload.len(), &self.settings.limits)?;
        let uplink = codec::decode(&inbound.payload)?;
        let seq = uplink.seq;
        tenant
            .check_mac(&meter.meter, &uplink)
            .map_err(|reason| Rejection {
                reason,
                seq: Some(seq),
                readings: uplink.readings.len(),
                duplicate: false,
            })?;
        let key = meter.clone();
        if let Err(reason) = check_uplink(&uplink, &self.settings.limits, inbound.received_at) {
            let duplicate = self.admit(key, &uplink, inbound, false) == Admission::Duplicate;
            return Err(Rejection {
                reason,
                seq: Some(seq),
                readings: uplink.readings.len(),
                duplicate,
            });
        }
        self.admit(key, &uplink, inbound, true);
        Ok(())
    }

    /// Runs the uplink's seq through the meter's window and, when `store` and new,
    /// appends its readings to the open batch. Either way the meter joins the batch,
    /// so its watermark is acked once the batch is durable.
    fn admit(
        &mut self,
        key: MeterKey,
        uplink: &Uplink,
        inbound: &Inbound,
        store: bool,
    ) -> Admission {
        let state = self.state_of(&key);
        let mut skipped = Vec::new();
        let admission = state
            .seq
            .admit(uplink.seq, inbound.received_at, &mut skipped);
        let gap_open = state.seq.has_gap();
        self.record_gaps(&key, &skipped);
        if gap_open {
            self.gapped.insert(key.clone());
        } else {
            self.gapped.remove(&key);
        }
        let entry = self.open.meter(&key);
        match admission {
            Admission::Duplicate => {
                entry.duplicates += 1;
                self.metrics.duplicate.add(1, uplink.readings.len() as u64);
            }
            Admission::New if store => {
                entry.messages += 1;
                entry.first_received_at.get_or_insert(inbound.received_at);
                entry.readings.extend(uplink.readings.iter().map(|reading| {
                    StoredReading::actual(*reading, uplink.seq, inbound.received_at)
                }));
                if let Some(newest) = uplink.readings.last() {
                    entry.statuses.push(DeviceStatus {
                        ts: newest.ts,
                        received_at: inbound.received_at,
                        flags: uplink.flags,
                        battery: uplink.battery,
                        rssi: uplink.rssi,
                    });
                }
                self.open.readings += uplink.readings.len();
            }
            Admission::New => {}
        }
        admission
    }

    /// The meter's state, hydrated from the store the first time it is seen.
    fn state_of(&mut self, key: &MeterKey) -> &mut MeterState {
        if !self.meters.contains_key(key) {
            let state = self.hydrate(key);
            self.meters.insert(key.clone(), state);
        }
        self.meters.get_mut(key).expect("inserted above")
    }

    /// Reads a meter's persisted state. Without it a resend would count as new usage,
    /// so while the store cannot answer the shard waits (and backpressure builds).
    fn hydrate(&self, key: &MeterKey) -> MeterState {
        let mut logged = false;
        loop {
            match self.store.meter_state(key) {
                Ok(state) => return state.unwrap_or_default(),
                Err(e) => {
                    if !logged {
                        error!(shard = self.shard, meter = %key, error = %e, "cannot read meter state; waiting for the store");
                        logged = true;
                    }
                    thread::sleep(HYDRATE_RETRY);
                }
            }
        }
    }

    fn record_gaps(&self, key: &MeterKey, skipped: &[SkippedGap]) {
        for gap in skipped {
            self.metrics.seq_gaps.increment(1);
            warn!(meter = %key, first = gap.first, last = gap.last, "seq gap skipped: these messages never arrived");
        }
    }

    /// Skips gaps older than the resend window; the meter's new watermark is acked
    /// with the next batch.
    fn sweep_gaps(&mut self) {
        if self.gapped.is_empty() {
            return;
        }
        let now = now_ms();
        let window = self.settings.resend_window_ms;
        let mut closed = Vec::new();
        for key in &self.gapped {
            let Some(state) = self.meters.get_mut(key) else {
                continue;
            };
            if let Some(gap) = state.seq.expire_gap(now, window) {
                self.metrics.seq_gaps.increment(1);
                warn!(meter = %key, first = gap.first, last = gap.last, "seq gap skipped after the resend window");
                closed.push((key.clone(), state.seq.has_gap()));
            }
        }
        for (key, still_gapped) in closed {
            self.open.meter(&key);
            self.open.opened.get_or_insert_with(Instant::now);
            if !still_gapped {
                self.gapped.remove(&key);
            }
        }
    }

    /// Runs the processors' timer rules over every meter of the shard (alerts that
    /// fire on silence, bills that close, analytics windows that end). Meters whose
    /// state changed join the open batch so the change is persisted.
    fn sweep_timers(&mut self) {
        let changed = self
            .processors
            .sweep(now_ms(), self.meters.iter_mut(), &mut self.swept);
        for key in &changed {
            self.open.meter(key);
        }
        if !changed.is_empty() || !self.swept.is_empty() {
            self.open.opened.get_or_insert_with(Instant::now);
        }
    }

    fn dead_letter(&mut self, inbound: &Inbound, rejection: Rejection) {
        let Rejection {
            reason,
            seq,
            readings,
            duplicate,
        } = rejection;
        if duplicate {
            return;
        }
        let meter = &inbound.identity;
        // Formatted only where it is logged or stored: a junk flood is mostly neither.
        let correlation_id = CorrelationId { meter, seq };
        let now = Instant::now();
        let admit = self.dead_letter_limit.admit(meter, now);
        // False when the sender is over its dead-letter rate: counted, not stored.
        let stored = admit == Admit::Store;
        match self.dead_letter_warn.admit(now) {
            Some(suppressed) => warn!(
                correlation_id = %correlation_id,
                reason = reason.code(),
                stored,
                // Dead letters of this shard logged only at DEBUG since its last WARN.
                suppressed,
                "dead letter: {reason}"
            ),
            None => debug!(
                correlation_id = %correlation_id,
                reason = reason.code(),
                stored,
                "dead letter: {reason}"
            ),
        }
        if !stored {
            self.metrics.dead_letter_dropped.add(1, readings as u64);
            self.metrics.dead_letter_dropped_reason(reason).increment(1);
            return;
        }
        self.metrics.dead_letter.add(1, readings as u64);
        self.metrics.dead_letter_reason(reason).increment(1);
        self.dead_letter_ids += 1;
        let payload_len = inbound.payload.len().min(DEAD_LETTER_PAYLOAD_CAP);
        self.open.dead_letters.push(DeadLetter {
            tenant: meter.tenant.to_string(),
            received_at: inbound.received_at,
            id: ((self.shard as u64) << 48) | (self.dead_letter_ids & 0xFFFF_FFFF_FFFF),
            topic: String::from_utf8_lossy(&inbound.topic).into_owned(),
            payload: inbound.payload[..payload_len].to_vec(),
            reason,
            correlation_id: correlation_id.to_string(),
        });
    }

    /// Seals the open batch, runs the processors and hands it to the sink. Blocks
    /// while the sink queue is full: that is the pipeline's backpressure.
    fn seal(&mut self) {
        if self.open.is_empty() && self.swept.is_empty() && self.open.completions.is_empty() {
            self.open.opened = None;
            self.open.oldest = None;
            return;
        }
        let open = std::mem::take(&mut self.open);
        let mut meters = open.meters;
        for meter in &mut meters {
            meter.state = self.meters.get(&meter.key).cloned().unwrap_or_default();
        }
        self.sealed_count += 1;
        let mut batch = SealedBatch {
            now_ms: now_ms(),
            shard: self.shard,
            number: self.sealed_count,
            meters,
            dead_letters: open.dead_letters,
        };
        let mut outputs = std::mem::take(&mut self.swept);
        self.processors.process(&mut batch, &mut outputs);
        // Processors own every part of a meter's state but its seq window, which
        // they leave as it was at sealing — so the whole state is taken back.
        for meter in &batch.meters {
            if let Some(state) = self.meters.get_mut(&meter.key) {
                *state = meter.state.clone();
            }
        }
        self.metrics
            .batch_readings
            .record(batch.reading_count() as f64);
        if self
            .sink
            .send(SinkItem {
                batch,
                outputs,
                oldest: open.oldest,
                completions: open.completions,
            })
            .is_err()
        {
            info!(shard = self.shard, "sink gone; shard stopping");
        }
    }
}

/// How often a shard may log a dead letter at WARN.
const DEAD_LETTER_WARN_EVERY: Duration = Duration::from_secs(1);

/// Rate limit for a repeating WARN: at most one per `every`, counting those held back.
struct WarnLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(how many were held back since the last WARN)` if one may be logged at
    /// `now`; `None` (and counted) if not.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// A dead letter's correlation id, `{tenant}/{meter}/{seq or -}`, formatted on demand.
struct CorrelationId<'a> {
    meter: &'a MeterKey,
    seq: Option<u64>,
}

impl std::fmt::Display for CorrelationId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/", self.meter.tenant, self.meter.meter)?;
        match self.seq {
            Some(seq) => write!(f, "{seq}"),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod warn_limit_tests {
    use super::*;

    #[test]
    fn one_warn_per_window_with_the_count_held_back() {
        let start = Instant::now();
        let mut limit = WarnLimit::new(Duration::from_secs(1));
        assert_eq!(limit.admit(start), Some(0));
        for ms in [1, 10, 500, 999] {
            assert_eq!(limit.admit(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(limit.admit(start + Duration::from_millis(1_000)), Some(4));
        assert_eq!(limit.admit(start + Duration::from_millis(1_001)), None);
        assert_eq!(limit.admit(start + Duration::from_secs(5)), Some(1));
        assert_eq!(limit.admit(start + Duration::from_secs(7)), Some(0));
    }
}
