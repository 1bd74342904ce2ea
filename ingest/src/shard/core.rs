//! The shard's logic as a state machine without I/O: [`ShardCore`] takes an
//! [`Arrival`] or a tick, with the time passed in as a value ([`Now`]), and says what
//! the runner must do next — read a meter's state from the store
//! ([`Step::NeedsState`]), seal ([`ShardCore::is_full`], [`ShardCore::linger_elapsed`])
//! — and sealing hands back the processed batch ([`Sealed`]). It never reads a clock,
//! the store or a queue, so unit tests drive it deterministically.
//!
//! Per arrival: the endpoint's verdict on its topic → tenant rules → size → decode →
//! MAC → the meter's state (hydrated by the runner on first sight, then the arrival is
//! offered again) → contract checks → dedupe by seq → append to the open batch.
//!
//! Hydration is two reads, both the runner's: the meter's `meter_state`, and — since
//! that record leaves out what the stored readings already hold (VEE's window of raw
//! reads, billing's open reads) — the meter's stored rows after VEE's settled point,
//! gathered page by page into [`WindowRows`], which keeps only what the rebuild needs
//! and bounds it. [`ShardCore::hydrated`] then has the processor chain rebuild the
//! meter's window from those rows (`ProcessorChain::rehydrate`), emitting nothing. The
//! meter is the one its connection authenticated as ([`Arrival::identity`]); a topic
//! is never trusted to say who sent a message. Rejected arrivals become dead letters
//! in the same batch, so they are durable before they count — as many as the sender's
//! dead-letter rate allows ([`DeadLetterLimit`], per authenticated identity); the rest
//! are counted by reason and answered like the others, but not stored.
//!
//! A batch should seal when it holds `batch_readings` readings, when the shard's queue
//! is empty (nothing else is coming, so waiting would only delay the PUBACKs), or at
//! the latest `linger` after it opened; the runner decides from the first two and asks
//! the core for the third. Sealing runs the processors, with everything their timer
//! sweep produced since the last seal.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meterflow_model::batch::DEAD_LETTER_PAYLOAD_CAP;
use meterflow_model::check::{check_payload_size, check_uplink};
use meterflow_model::seq_window::SkippedGap;
use meterflow_model::status::DeviceStatus;
use meterflow_model::vee::MAX_WINDOW_READS;
use meterflow_model::{
    Admission, DeadLetter, MeterBatch, MeterKey, MeterState, Outputs, RegisterOrder, Reject,
    SealedBatch, StoredReading, Uplink, codec,
};
use meterflow_processors::ProcessorChain;
use meterflow_processors::vee::order_problem;
use tracing::{debug, warn};

use super::ShardSettings;
use super::held::HeldMeters;
use super::warn_limit::WarnLimit;
use crate::dead_letter_limit::{Admit, DeadLetterLimit};
use crate::endpoint::handoff::Inbound;
use crate::metrics::PipelineMetrics;
use crate::tenants::Tenants;

/// How often open seq gaps are checked against the resend window.
const GAP_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often a shard may log a dead letter at WARN.
const DEAD_LETTER_WARN_EVERY: Duration = Duration::from_secs(1);

/// One uplink as the shard sees it: what the endpoint handed over, without the
/// answer to the meter (which the runner keeps).
pub struct Arrival<'a> {
    /// Who sent it: the meter its connection authenticated as.
    pub identity: &'a MeterKey,
    /// The topic as published (kept with a dead letter).
    pub topic: &'a [u8],
    pub payload: &'a [u8],
    /// The session refused the publish: dead-lettered with this reason.
    pub refused: Option<Reject>,
    /// Epoch ms at which the endpoint read it.
    pub received_at: i64,
    /// The same moment on the monotonic clock.
    pub received: Instant,
    /// An operator's order instead of an uplink (see [`Inbound::order`]).
    pub order: Option<&'a RegisterOrder>,
}

impl Inbound {
    /// The uplink as the shard core takes it.
    pub fn arrival(&self) -> Arrival<'_> {
        Arrival {
            identity: &self.identity,
            topic: &self.topic,
            payload: &self.payload,
            refused: self.refused,
            received_at: self.received_at,
            received: self.received,
            order: self.order.as_deref(),
        }
    }
}

/// The time, passed in: the monotonic instant (linger, sweeps, rate limits) and the
/// wall clock in epoch ms (resend window, processors' timers, a batch's `now_ms`).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub instant: Instant,
    pub wall_ms: i64,
}

/// What the runner must do after offering an arrival.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Taken into the open batch (stored, counted as a duplicate, or dead-lettered).
    Taken,
    /// The meter's persisted state is needed first: read it, hand it over with
    /// [`ShardCore::hydrated`], and offer the same arrival again. Nothing changed.
    NeedsState(MeterKey),
    /// An operator's order that cannot apply, and why (nothing changed).
    Refused(String),
}

/// Rows asked of the store per read while gathering a hydrating meter's rows
/// ([`WindowRows`]): more than the window's reads ([`MAX_WINDOW_READS`]), so a meter
/// with a full window and a few of VEE's estimates among its reads takes one read.
pub const WINDOW_ROWS_PAGE: usize = 1_024;

/// A hydrating meter's stored rows after VEE's settled point, from which the chain
/// rebuilds what `meter_state` does not persist. The runner reads them page by page
/// (`store.readings(key, from_ms, i64::MAX, WINDOW_ROWS_PAGE)`, ascending `ts`, the
/// oldest first when a page is full: both stores order and limit that way) until
/// [`WindowRows::next_page`] says every row is in. Kept, at most
/// [`MAX_WINDOW_READS`] (what a persisted window holds), the newest:
/// - rows of reads, not VEE's estimates (the rebuild makes those again), which are
///   most of a gap's rows and unbounded in number;
/// - rows whose seq the state's dedupe window has accepted: the ScyllaDB store writes
///   a meter's readings before its state, so a crash in between leaves rows the state
///   does not reflect. Their messages were never acked and are resent; left out
///   here, they are processed as new, as before the window was rebuilt.
#[derive(Debug, Default)]
pub struct WindowRows {
    /// `from_ms` of the next page to read; `None` once every row is in.
    next_from: Option<i64>,
    /// Highest seq the meter's state accepted; rows above it are left out.
    highest_seq: Option<u64>,
    /// The kept rows, ascending `ts`.
    reads: Vec<StoredReading>,
}

impl WindowRows {
    /// The rows to gather for a state read from the store. (A meter the store has no
    /// state of has no rows to gather: [`WindowRows::default`].)
    pub fn after_settled(state: &MeterState) -> Self {
        let from = state
            .vee
            .settled_ts()
            .map_or(i64::MIN, |ts| ts.saturating_add(1));
        Self {
            next_from: state.seq.highest().map(|_| from),
            highest_seq: state.seq.highest(),
            reads: Vec::new(),
        }
    }

    /// `from_ms` of the next page to read, or `None` when every row is in.
    pub fn next_page(&self) -> Option<i64> {
        self.next_from
    }

    /// Takes the page the store returned for [`WindowRows::next_page`].
    pub fn take_page(&mut self, page: Vec<StoredReading>) {
        let Some(from) = self.next_from else {
            return;
        };
        let full = page.len() >= WINDOW_ROWS_PAGE;
        let next = page
            .last()
            .and_then(|row| row.reading.ts.checked_add(1))
            .filter(|next| *next > from);
        let highest_seq = self.highest_seq;
        self.reads.extend(page.into_iter().filter(|row| {
            row.quality.is_from_meter() && highest_seq.is_some_and(|h| row.seq <= h)
        }));
        let excess = self.reads.len().saturating_sub(MAX_WINDOW_READS);
        self.reads.drain(..excess);
        self.next_from = next.filter(|_| full);
    }
}

/// A sealed, processed batch and what it is made of, for the sink.
pub struct Sealed {
    pub batch: SealedBatch,
    pub outputs: Outputs,
    /// When its oldest message was received (monotonic), for publish→durable latency.
    pub oldest: Option<Instant>,
}

/// The shard's state: its meters, their open batch, the processors.
pub struct ShardCore {
    shard: usize,
    settings: ShardSettings,
    tenants: Arc<Tenants>,
    processors: ProcessorChain,
    metrics: PipelineMetrics,
    /// The meters' states (hydrated from the store on first sight), at most
    /// `held_meters` of them; the rest wait in the store ([`super::held`]).
    meters: HeldMeters,
    /// Resting meters whose sweep is due, for the runner to hydrate
    /// ([`Self::woken`]).
    waking: Vec<MeterKey>,
    /// Meters whose seq window has an open gap, checked by the gap sweep.
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
    next_gap_sweep: Instant,
    next_timer_sweep: Instant,
}

/// The batch being filled.
#[derive(Default)]
struct OpenBatch {
    meters: Vec<MeterBatch>,
    index: HashMap<MeterKey, usize>,
    dead_letters: Vec<DeadLetter>,
    /// Arrivals taken (each is answered once the batch is durable).
    arrivals: usize,
    readings: usize,
    /// When the shard opened this batch: the linger is timed from here, not from
    /// when its messages were received, or a lagging queue would seal one batch per
    /// message.
    opened: Option<Instant>,
    /// When its oldest message was received (for publish→durable latency).
    oldest: Option<Instant>,
}

impl OpenBatch {
    /// An empty batch with room for `meters` meters: sized like the one before it, so
    /// filling it does not grow (and move) its entries again and again.
    fn with_room_for(meters: usize) -> Self {
        Self {
            meters: Vec::with_capacity(meters),
            index: HashMap::with_capacity(meters),
            ..Self::default()
        }
    }

    fn holds_nothing(&self) -> bool {
        self.meters.is_empty() && self.dead_letters.is_empty() && self.arrivals == 0
    }

    /// The open batch's entry for `key`, created on first use.
    /// Looks up before inserting: the key is cloned (two allocations) only the
    /// first time a meter joins the batch, not for every message.
    fn meter(&mut self, key: &MeterKey) -> &mut MeterBatch {
        let index = match self.index.get(key) {
            Some(&index) => index,
            None => {
                self.meters.push(MeterBatch::empty(key.clone()));
                self.index.insert(key.clone(), self.meters.len() - 1);
                self.meters.len() - 1
            }
        };
        &mut self.meters[index]
    }
}

/// How far [`ShardCore::accept`] got with an arrival it did not reject.
enum Accepted {
    Taken,
    NeedsState,
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

impl ShardCore {
    /// A shard with no meters yet; its sweeps are first due a period after `start`.
    pub fn new(
        shard: usize,
        settings: ShardSettings,
        tenants: Arc<Tenants>,
        processors: ProcessorChain,
        metrics: PipelineMetrics,
        start: Instant,
    ) -> Self {
        let held_meters = settings.held_meters;
        Self {
            shard,
            dead_letter_limit: DeadLetterLimit::new(settings.dead_letter_rate),
            next_gap_sweep: start + GAP_SWEEP_EVERY,
            next_timer_sweep: start + settings.sweep_interval,
            settings,
            tenants,
            processors,
            metrics,
            meters: HeldMeters::new(held_meters),
            waking: Vec::new(),
            gapped: HashSet::new(),
            open: OpenBatch::default(),
            swept: Outputs::default(),
            sealed_count: 0,
            dead_letter_ids: 0,
            dead_letter_warn: WarnLimit::new(DEAD_LETTER_WARN_EVERY),
        }
    }

    /// Offers an arrival received by the runner at `at`.
    pub fn admit(&mut self, arrival: &Arrival, at: Instant) -> Step {
        if let Some(order) = arrival.order {
            return self.admit_order(arrival.identity, order, arrival.received_at, at);
        }
        match self.accept(arrival) {
            Ok(Accepted::NeedsState) => return Step::NeedsState(arrival.identity.clone()),
            Ok(Accepted::Taken) => {}
            Err(rejection) => self.dead_letter(arrival, rejection, at),
        }
        self.open.opened.get_or_insert(at);
        self.open.oldest.get_or_insert(arrival.received);
        self.open.arrivals += 1;
        Step::Taken
    }

    /// Takes an operator's order about `key`'s register into the open batch, when the
    /// meter's VEE state can still follow it ([`order_problem`]); VEE applies it when
    /// the batch seals, and it is answered once the batch is durable.
    fn admit_order(
        &mut self,
        key: &MeterKey,
        order: &RegisterOrder,
        received_at: i64,
        at: Instant,
    ) -> Step {
        if self.tenants.get(key.tenant.as_str().as_bytes()).is_none() {
            return Step::Refused(format!("tenant {} is not configured", key.tenant));
        }
        let Some(state) = self.meters.get_mut(key) else {
            return Step::NeedsState(key.clone());
        };
        if let Some(problem) = order_problem(&state.vee, order) {
            return Step::Refused(problem);
        }
        state.advance_version(received_at);
        self.open.meter(key).orders.push(order.clone());
        self.open.opened.get_or_insert(at);
        self.open.arrivals += 1;
        Step::Taken
    }

    /// The persisted state of a meter [`Step::NeedsState`] asked for (the default
    /// state for a meter the store has never seen) and its stored rows after VEE's
    /// settled point ([`WindowRows`]), from which the processors rebuild what the
    /// state does not persist. A state the shard already holds is kept: it is newer
    /// than the store's.
    pub fn hydrated(&mut self, key: MeterKey, state: MeterState, rows: WindowRows) {
        let processors = &mut self.processors;
        self.meters.hydrated(key, state, |key, state| {
            processors.rehydrate(key, state, rows.reads)
        });
    }

    /// Whether to hydrate `key`, a meter the store holds a state of, though it has not
    /// been heard from since start ([`crate::dormant`]): when the shard does not hold
    /// it yet and its tenant still serves it. Once hydrated, the timer rules cover it.
    pub fn wants_dormant(&self, key: &MeterKey) -> bool {
        !self.meters.watches(key) && self.tenants.admit(key).is_ok()
    }

    /// A resting meter whose sweep is due ([`super::held`]), for the runner to
    /// read back and hand to [`Self::woken`].
    pub fn next_waking(&mut self) -> Option<MeterKey> {
        self.waking.pop()
    }

    /// Holds a woken meter read back from the store ([`Self::hydrated`]) and runs
    /// its sweep at once, as the timer sweep that woke it would have had it been
    /// held; a meter the sweep changed joins the open batch, and rests again once
    /// that batch is durable.
    pub fn woken(&mut self, key: MeterKey, state: MeterState, rows: WindowRows, now: Now) {
        self.hydrated(key.clone(), state, rows);
        let Some(state) = self.meters.get_mut(&key) else {
            return;
        };
        if self
            .processors
            .sweep_meter(now.wall_ms, &key, state, &mut self.swept)
        {
            self.join_batch(&key, now);
        }
        self.hold_swept(now);
    }

    pub fn has_waking(&self) -> bool {
        !self.waking.is_empty()
    }

    /// Lets meters over the shard's `held_meters` rest in the store, of those whose
    /// last batch is at or below `durable` (the sink's watermark for this shard), not
    /// in the open batch, without an open seq gap, and with no sweep due at `now`.
    pub fn rest(&mut self, durable: u64, now: Now) {
        let open = &self.open.index;
        let gapped = &self.gapped;
        let rested = self.meters.rest(
            durable,
            |key| open.contains_key(key) || gapped.contains(key),
            now.wall_ms,
            &mut self.processors,
        );
        self.metrics.meters_rested.increment(rested.rested as u64);
        if rested.kept > 0 {
            debug!(
                shard = self.shard,
                kept = rested.kept,
                "meters over held_meters kept: not durable yet, in the open batch, an open seq gap, or a timer rule due"
            );
        }
    }

    /// Whether the shard holds well over its `held_meters` (hydrations since the last
    /// [`Self::rest`]): the runner lets meters rest at once.
    pub fn well_over_limit(&self) -> bool {
        self.meters.well_over_limit()
    }

    /// How many meters the shard holds and how many rest.
    pub fn meter_counts(&self) -> (usize, usize) {
        (self.meters.held(), self.meters.resting())
    }

    /// Drops the cached state of the meters `which` names (distributed mode: their
    /// partition moved to another processor), so the next uplink of one is hydrated
    /// from the store. The runner orders it only for meters with nothing in flight
    /// here (their partition was drained first), so none is in the open batch.
    pub fn forget(&mut self, which: &dyn Fn(&MeterKey) -> bool) {
        self.meters.forget(which);
        self.gapped.retain(|key| !which(key));
        self.waking.retain(|key| !which(key));
    }

    /// Whether the open batch holds its `batch_readings` readings.
    pub fn is_full(&self) -> bool {
        self.open.readings >= self.settings.batch_readings
    }

    /// Whether the open batch has waited out its linger at `at`.
    pub fn linger_elapsed(&self, at: Instant) -> bool {
        self.open
            .opened
            .is_some_and(|opened| at >= opened + self.settings.linger)
    }

    /// When the core next needs a [`tick`](Self::tick) or a seal if nothing arrives.
    pub fn deadline(&self) -> Instant {
        let sweeps = self.next_gap_sweep.min(self.next_timer_sweep);
        match self.open.opened {
            Some(opened) => (opened + self.settings.linger).min(sweeps),
            None => sweeps,
        }
    }

    /// Runs the sweeps that are due at `now`. True when the once-a-second gap sweep
    /// ran (the runner samples its queue depth then); the processors' own tick
    /// (analytics' flush on a quiet shard) runs with it.
    pub fn tick(&mut self, now: Now) -> bool {
        let gap_sweep = now.instant >= self.next_gap_sweep;
        if gap_sweep {
            self.sweep_gaps(now);
            self.processors.tick(now.wall_ms, &mut self.swept);
            self.hold_swept(now);
            self.next_gap_sweep = now.instant + GAP_SWEEP_EVERY;
        }
        if now.instant >= self.next_timer_sweep {
            self.sweep_timers(now);
            self.next_timer_sweep = now.instant + self.settings.sweep_interval;
        }
        gap_sweep
    }

    /// The shard stops: seals the open batch, then has the processors emit what they
    /// hold for later ([`ProcessorChain::finish`]: analytics' windows not flushed
    /// yet) in one more batch of outputs only. What to send the sink, in order.
    pub fn finish(&mut self, now: Now) -> Vec<Sealed> {
        let last = self.seal(now);
        self.processors.finish(now.wall_ms, &mut self.swept);
        last.into_iter().chain(self.seal(now)).collect()
    }

    /// Seals the open batch and runs the processors on it; `None` when there is
    /// nothing to seal (no arrival, no meter to persist, nothing swept).
    pub fn seal(&mut self, now: Now) -> Option<Sealed> {
        let room = OpenBatch::with_room_for(self.open.meters.len());
        let open = std::mem::replace(&mut self.open, room);
        if open.holds_nothing() && self.swept.is_empty() {
            return None;
        }
        let mut meters = open.meters;
        // Moved into the batch and back after the processors ran ([`Self::process`]):
        // the batch carries the persisted part to the store, the shard keeps the whole.
        self.sealed_count += 1;
        for meter in &mut meters {
            meter.state = self.meters.take_for_batch(&meter.key, self.sealed_count);
        }
        let mut batch = SealedBatch {
            now_ms: now.wall_ms,
            shard: self.shard,
            number: self.sealed_count,
            meters,
            dead_letters: open.dead_letters,
        };
        let mut outputs = std::mem::take(&mut self.swept);
        self.process(&mut batch, &mut outputs);
        self.metrics
            .batch_readings
            .record(batch.reading_count() as f64);
        Some(Sealed {
            batch,
            outputs,
            oldest: open.oldest,
        })
    }

    /// Runs the processors on a sealed batch and keeps the meters' states they leave.
    /// Processors own every part of a meter's state but its seq window, which they
    /// leave as it was at sealing — so the whole state is taken back, and the batch
    /// keeps the part the store persists ([`MeterState::persisted`]).
    pub fn process(&mut self, batch: &mut SealedBatch, outputs: &mut Outputs) {
        self.processors.process(batch, outputs);
        for meter in &mut batch.meters {
            if let Some(state) = self.meters.get_mut(&meter.key) {
                let persisted = meter.state.persisted();
                *state = std::mem::replace(&mut meter.state, persisted);
            }
        }
    }

    /// The whole state the shard keeps of a meter (windows included).
    #[cfg(test)]
    pub(crate) fn meter_state(&self, key: &MeterKey) -> Option<&MeterState> {
        self.meters.get(key)
    }

    /// Takes an arrival into the open batch, or says why not.
    ///
    /// An uplink that decodes and carries a valid MAC (where one is needed) but breaks
    /// a contract rule still moves the meter's seq window: it is stored as a dead
    /// letter, and resending it cannot change the verdict, so the meter is acked past
    /// it instead of resending it until the resend window runs out. Uplinks that fail
    /// earlier (bad topic, undecodable, bad MAC) say nothing trustworthy about the
    /// meter's seqs and leave its window alone — otherwise a forger could advance a
    /// victim meter's watermark over a real message. For the same reason a meter's
    /// state is asked for only once its uplink got that far: junk costs no store read.
    fn accept(&mut self, arrival: &Arrival) -> Result<Accepted, Rejection> {
        if let Some(reason) = arrival.refused {
            return Err(reason.into());
        }
        let meter = arrival.identity;
        let tenant = self.tenants.admit(meter)?;
        check_payload_size(arrival.payload.len(), &self.settings.limits)?;
        let uplink = codec::decode(arrival.payload)?;
        let rejection = |reason, duplicate| Rejection {
            reason,
            seq: Some(uplink.seq),
            readings: uplink.readings.len(),
            duplicate,
        };
        tenant
            .check_mac(&meter.meter, &uplink)
            .map_err(|reason| rejection(reason, false))?;
        let verdict = check_uplink(&uplink, &self.settings.limits, arrival.received_at);
        let Some(admission) = self.take(meter, &uplink, arrival.received_at, verdict.is_ok())
        else {
            return Ok(Accepted::NeedsState);
        };
        match verdict {
            Ok(()) => Ok(Accepted::Taken),
            Err(reason) => Err(rejection(reason, admission == Admission::Duplicate)),
        }
    }

    /// Runs the uplink's seq through the meter's window and, when `store` and new,
    /// appends its readings to the open batch. Either way the meter joins the batch,
    /// so its watermark is acked once the batch is durable. `None`, with nothing
    /// changed, when the meter's state has not been hydrated yet.
    fn take(
        &mut self,
        key: &MeterKey,
        uplink: &Uplink,
        received_at: i64,
        store: bool,
    ) -> Option<Admission> {
        let state = self.meters.get_mut(key)?;
        let mut skipped = Vec::new();
        let admission = state.seq.admit(uplink.seq, received_at, &mut skipped);
        if admission == Admission::New {
            state.advance_version(received_at);
        }
        let gap_open = state.seq.has_gap();
        self.record_gaps(key, &skipped);
        if gap_open {
            if !self.gapped.contains(key) {
                self.gapped.insert(key.clone());
            }
        } else {
            self.gapped.remove(key);
        }
        let entry = self.open.meter(key);
        match admission {
            Admission::Duplicate => {
                entry.duplicates += 1;
                self.metrics.duplicate.add(1, uplink.readings.len() as u64);
            }
            Admission::New if store => {
                entry.messages += 1;
                entry.sent_readings += uplink.readings.len() as u32;
                entry.first_received_at.get_or_insert(received_at);
                entry.readings.extend(
                    uplink
                        .readings
                        .iter()
                        .map(|reading| StoredReading::actual(*reading, uplink.seq, received_at)),
                );
                if let Some(newest) = uplink.readings.last() {
                    entry.statuses.push(DeviceStatus {
                        ts: newest.ts,
                        seq: uplink.seq,
                        received_at,
                        flags: uplink.flags,
                        battery: uplink.battery,
                        rssi: uplink.rssi,
                    });
                }
                self.open.readings += uplink.readings.len();
            }
            Admission::New => {}
        }
        Some(admission)
    }

    fn record_gaps(&self, key: &MeterKey, skipped: &[SkippedGap]) {
        for gap in skipped {
            self.metrics.seq_gaps.increment(1);
            warn!(meter = %key, first = gap.first, last = gap.last, "seq gap skipped: these messages never arrived");
        }
    }

    /// Skips gaps older than the resend window; the meter's new watermark is acked
    /// with the next batch.
    fn sweep_gaps(&mut self, now: Now) {
        let window = self.settings.resend_window_ms;
        let mut closed = Vec::new();
        for key in &self.gapped {
            let Some(state) = self.meters.get_mut(key) else {
                continue;
            };
            if let Some(gap) = state.seq.expire_gap(now.wall_ms, window) {
                self.metrics.seq_gaps.increment(1);
                warn!(meter = %key, first = gap.first, last = gap.last, "seq gap skipped after the resend window");
                closed.push((key.clone(), state.seq.has_gap()));
            }
        }
        for (key, still_gapped) in closed {
            self.join_batch(&key, now);
            if !still_gapped {
                self.gapped.remove(&key);
            }
        }
    }

    /// Runs the processors' timer rules over every meter of the shard (alerts that
    /// fire on silence, bills that close, analytics windows that end). Meters whose
    /// state changed join the open batch so the change is persisted.
    fn sweep_timers(&mut self, now: Now) {
        self.waking.extend(self.meters.wake_due(now.wall_ms));
        let changed = self
            .processors
            .sweep(now.wall_ms, self.meters.iter_mut(), &mut self.swept);
        for key in &changed {
            self.join_batch(key, now);
        }
        self.hold_swept(now);
    }

    /// A meter whose state a sweep changed (its timer rules, an expired seq gap) joins
    /// the open batch, so the change is persisted and acked.
    fn join_batch(&mut self, key: &MeterKey, now: Now) {
        self.open.meter(key);
        self.open.opened.get_or_insert(now.instant);
    }

    /// Opens the batch for outputs the sweeps made, so that it is sealed within the
    /// linger.
    fn hold_swept(&mut self, now: Now) {
        if !self.swept.is_empty() {
            self.open.opened.get_or_insert(now.instant);
        }
    }

    fn dead_letter(&mut self, arrival: &Arrival, rejection: Rejection, at: Instant) {
        let Rejection {
            reason,
            seq,
            readings,
            duplicate,
        } = rejection;
        if duplicate {
            return;
        }
        let meter = arrival.identity;
        // Formatted only where it is logged or stored: a junk flood is mostly neither.
        let correlation_id = CorrelationId { meter, seq };
        // False when the sender is over its dead-letter rate: counted, not stored.
        let stored = self.dead_letter_limit.admit(meter, at) == Admit::Store;
        match self.dead_letter_warn.admit(at) {
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
        let payload_len = arrival.payload.len().min(DEAD_LETTER_PAYLOAD_CAP);
        self.open.dead_letters.push(DeadLetter {
            tenant: meter.tenant.to_string(),
            received_at: arrival.received_at,
            id: ((self.shard as u64) << 48) | (self.dead_letter_ids & 0xFFFF_FFFF_FFFF),
            topic: String::from_utf8_lossy(arrival.topic).into_owned(),
            payload: arrival.payload[..payload_len].to_vec(),
            reason,
            correlation_id: correlation_id.to_string(),
        });
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
