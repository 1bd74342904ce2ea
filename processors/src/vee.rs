//! VEE — validation, estimation and editing, the first processor of the chain
//! (DESIGN §4). It decides each reading's [`Quality`] and its `interval_l` (litres
//! since the previous stored row), adds estimated rows for gaps, and keeps the
//! meter's *continuous register* (see [`meterflow_model::vee`]) that billing
//! subtracts.
//!
//! **Time order, whatever the arrival order.** The rules below are one pass over a
//! meter's reads sorted by `ts`. VEE keeps the raw reads of the late window (the
//! reads after the *settled* point, [`VeeState::window`]) and the pass state at that
//! point; a read older than the newest one re-runs the pass from the settled point
//! over the window with the read in place, and every row from it on is re-emitted
//! (storage upserts by (meter, ts), so a re-emitted row replaces the old one). So
//! every decision, and every stored row, is the one the reads in time order give.
//! - **window**: a read settles once it is more than the late window
//!   (`processors.bill_close_after_ms`) older than the meter's newest read, no open
//!   exception comes before it, *and* an actual read at or after it settled too (so the window always starts right after
//!   an actual read, and estimates never cover a forgotten read); at most
//!   [`MAX_WINDOW_READS`] are kept (beyond that the oldest settle anyway).
//! - **too late**: a read at or before the settled point is stored without an
//!   interval, `Actual` unless ahead of the settled continuous register (then
//!   `Suspect`), and changes nothing else (DESIGN §4: "older ones are stored").
//! - **duplicates**: a read whose `ts` is already in the window is dropped (already
//!   stored).
//!
//! The pass, per read (compared with the newest read accepted as actual, the
//! *base*):
//! - **growth**: `reg ≥ base.reg` and the delta is plausible → `Actual`, interval =
//!   delta. *Plausible* means at most the meter size's overload flow Q4 over the
//!   elapsed time, plus `jump_slack_l` ([`MeterSize::max_flow_lph`]). The size is
//!   the one in place at the read's time: the configured one, or the one a recorded
//!   exchange gave ([`VeeState::sizes`]), which also sets the register's capacity.
//! - **rollover**: `reg < base.reg`, and wrapping at the register's capacity
//!   (`10^register_digits` litres) gives a plausible delta → `Actual`, interval =
//!   `capacity - base.reg + reg`; a new register epoch begins.
//! - **anything else** (a regression that is not a rollover, an implausible jump) →
//!   `Suspect`, and the read is an *exchange candidate*, the possible initial read of
//!   a new register.
//! - **meter exchange** (no explicit marker exists, so a heuristic): the candidate is
//!   confirmed when the next reads grow plausibly from it and not from the old base —
//!   one read when the candidate is below `exchange_threshold_l` (a new meter reads
//!   a few litres of test water), two otherwise (a refurbished register can start
//!   anywhere, above or below the old one). A new epoch begins; the new register
//!   bills from its initial read, whatever its value: the candidate is re-emitted as
//!   `Actual` with interval 0 and the continuous register of the old meter's last
//!   read (usage between that read and the removal is unknowable and not billed),
//!   the reads after it as `Actual` with their deltas. A read that does not continue
//!   the candidate ends it: the candidate stays `Suspect` (a one-off glitch), and
//!   the read is judged against the base.
//! - **gap**: an actual read more than 1.5 expected intervals after the base gets
//!   `Estimated` rows on the expected grid from the base, linear on the continuous
//!   register (at most `max_estimated_reads`; longer gaps are not filled, the next
//!   actual carries the whole delta), except at the `ts` of a read in the window (a
//!   suspect read keeps its row). A late read inside the gap re-runs the pass: it
//!   replaces its estimate and the estimates around it are re-spread. An estimate
//!   no later pass makes — the read after a gap turned suspect by reads arriving
//!   late, or late reads off the expected grid moving the grid — is withdrawn
//!   ([`MeterBatch::withdrawn`]: replaced and not re-emitted), and the store
//!   deletes it with the batch.
//!
//! **Rebuilt, not persisted.** `meter_state` keeps only the settled pass: the window's
//! reads are the meter's stored non-estimated rows after the settled point (each was
//! stored, atomically with the state that holds it, as the row of its read: raw
//! reading, seq, received_at). When a shard hydrates a meter it reads those rows and
//! [`rebuild_window`] puts them back into the window and re-runs the pass over them
//! from the settled point, exactly as [`validate_meter`] runs an in-order batch; the
//! rows it makes are handed to billing (which rebuilds its open reads from them) and
//! to nobody else, and nothing is stored or emitted.
//!
//! **Exceptions and orders.** Each suspect row is a validation exception
//! ([`ReadException`], with its [`ExceptionReason`]); a row a later pass makes
//! actual resolves it. Operators' orders ([`RegisterOrder`]: accept, reject, confirm
//! an exchange at a read, or a recorded exchange at a time) are kept in
//! [`VeeState::orders`] and followed by the pass; a batch with a new order re-runs the
//! pass from it, as for a late read. The window does not settle past an open
//! exception (up to [`MAX_WINDOW_READS`]), so its read stays decidable;
//! [`order_problem`] says which orders the pass cannot follow.
//!
//! Suspect reads are stored but excluded from billing, usage and analytics.
//! Billing follows the re-emitted rows ([`crate::billing`]); so do analytics and
//! usage, from the earlier versions of those rows that a re-running batch hands along
//! ([`MeterBatch::replaced`]: the same re-run over the window as it was before the
//! batch). Alerting keeps the window's rows too and re-folds them in reading time
//! when a re-emitted row replaces one it had ([`crate::alerting`]).
//!
//! [`MeterSize::max_flow_lph`]: meterflow_model::vee::MeterSize::max_flow_lph

use std::collections::VecDeque;
use std::sync::Arc;

use meterflow_model::exception::MAX_METER_ORDERS;
use meterflow_model::processing::TenantProcessing;
use meterflow_model::vee::{
    EpochCause, ExchangeCandidate, MAX_REGISTER_EPOCHS, MAX_WINDOW_READS, MeterSize, RawRead,
    RegisterEpoch, SizeChange, ValidatedRead, VeeFold, VeeRules, VeeState, in_effect_at,
};
use meterflow_model::{
    ExceptionReason, ExceptionState, MeterBatch, MeterId, MeterKey, MeterState, OrderAction,
    Outputs, Quality, ReadException, Reading, RegisterOrder, SealedBatch, StoredReading,
};

use crate::Processor;
use crate::by_time::{ByTime, insert_at};
use crate::calendar::HOUR_MS;
use crate::tenants::TenantDirectory;

/// What VEE needs to know about one meter.
#[derive(Clone, Debug)]
pub struct MeterRules {
    /// What the meter's size allows before its first recorded size change (and with
    /// none): the tenant's configured size.
    configured: SizeRules,
    /// From each `ts` on, what a size recorded with an exchange allows; ascending.
    resized: Vec<(i64, SizeRules)>,
    pub jump_slack_l: u64,
    pub expected_interval_ms: i64,
    pub max_estimated_reads: u32,
    pub exchange_threshold_l: u64,
    /// Reads this much older than the meter's newest read settle: a later read can
    /// no longer re-decide them.
    pub late_window_ms: i64,
}

/// What a meter of one size can register.
#[derive(Clone, Copy, Debug)]
struct SizeRules {
    /// Raw register value at which the register wraps to zero.
    capacity: u64,
    /// Overload flow of the size, L/h.
    max_flow_lph: u64,
}

impl SizeRules {
    fn of(vee: &VeeRules, size: MeterSize) -> Self {
        Self {
            capacity: vee.register_capacity(size),
            max_flow_lph: size.max_flow_lph(),
        }
    }
}

impl MeterRules {
    /// The rules of `meter`, whose recorded size changes are `sizes`
    /// ([`VeeState::sizes`]).
    pub fn new(
        settings: &TenantProcessing,
        meter: &MeterId,
        sizes: &[SizeChange],
        late_window_ms: i64,
    ) -> Self {
        let vee = &settings.vee;
        Self {
            configured: SizeRules::of(vee, settings.meter_size(meter)),
            resized: sizes
                .iter()
                .map(|change| (change.from_ts, SizeRules::of(vee, change.size)))
                .collect(),
            jump_slack_l: vee.jump_slack_l,
            expected_interval_ms: vee.expected_interval_ms,
            max_estimated_reads: vee.max_estimated_reads,
            exchange_threshold_l: vee.exchange_threshold_l,
            late_window_ms,
        }
    }

    /// What the meter in place at `ts` can register.
    fn at(&self, ts: i64) -> SizeRules {
        in_effect_at(&self.resized, ts, |(from, _)| *from).map_or(self.configured, |(_, r)| *r)
    }

    /// Raw register value at which the register in place at `ts` wraps to zero.
    fn capacity(&self, ts: i64) -> u64 {
        self.at(ts).capacity
    }

    /// Most litres the meter in place at `to_ts` can register in the `dt_ms` before.
    fn plausible_litres(&self, to_ts: i64, dt_ms: i64) -> u64 {
        let max_flow_lph = self.at(to_ts).max_flow_lph;
        let litres = u128::from(max_flow_lph) * dt_ms.max(0) as u128 / HOUR_MS as u128;
        u64::try_from(litres)
            .unwrap_or(u64::MAX)
            .saturating_add(self.jump_slack_l)
    }

    /// Whether `later` grew plausibly from `earlier` on the same register.
    fn grows_from(&self, earlier: &Reading, later: &Reading) -> bool {
        later.reg >= earlier.reg
            && later.reg - earlier.reg
                <= self.plausible_litres(later.ts, later.ts.saturating_sub(earlier.ts))
    }

    /// Reads that must continue an exchange candidate starting at `reg` to confirm it.
    fn confirmations(&self, reg: u64) -> usize {
        if reg < self.exchange_threshold_l {
            1
        } else {
            2
        }
    }
}

/// The VEE stage; its per-meter state is `MeterState::vee`.
pub struct VeeProcessor {
    directory: Arc<TenantDirectory>,
    /// Rows being built for the current meter (swapped into its batch).
    output: Vec<StoredReading>,
}

impl VeeProcessor {
    pub fn new(directory: Arc<TenantDirectory>) -> Self {
        Self {
            directory,
            output: Vec::new(),
        }
    }
}

impl Processor for VeeProcessor {
    fn name(&self) -> &'static str {
        "vee"
    }

    fn process(&mut self, batch: &mut SealedBatch, out: &mut Outputs) {
        let late_window_ms = self.directory.bill_close_after_ms;
        for meter in &mut batch.meters {
            let settings = &self.directory.get(&meter.key.tenant).settings;
            let id = &meter.key.meter;
            let earlier = MeterRules::new(settings, id, &meter.state.vee.sizes, late_window_ms);
            let resized = take_sizes(&mut meter.state.vee, &meter.orders)
                .then(|| MeterRules::new(settings, id, &meter.state.vee.sizes, late_window_ms));
            let rules = resized.as_ref().unwrap_or(&earlier);
            validate_meter(
                rules,
                &earlier,
                meter,
                &mut self.output,
                &mut out.exceptions,
            );
        }
    }

    fn rehydrate(&mut self, key: &MeterKey, state: &mut MeterState, rows: &mut Vec<StoredReading>) {
        let settings = &self.directory.get(&key.tenant).settings;
        let late_window_ms = self.directory.bill_close_after_ms;
        let rules = MeterRules::new(settings, &key.meter, &state.vee.sizes, late_window_ms);
        rebuild_window(&rules, &mut state.vee, rows, &mut self.output);
    }
}

/// Records the sizes that a batch's exchange orders give the meter (an order at or
/// before the settled point changes nothing: [`order_problem`] refuses it), so the
/// pass that follows them judges each read by the meter in place at its time.
/// Returns whether the meter's sizes changed.
fn take_sizes(state: &mut VeeState, orders: &[RegisterOrder]) -> bool {
    if orders.is_empty() {
        return false;
    }
    let settled_ts = state.settled_ts();
    let mut changed = false;
    for order in orders {
        if let OrderAction::Exchange { size, .. } = order.action
            && settled_ts.is_none_or(|settled| order.ts > settled)
        {
            changed |= state.record_size(order.ts, size);
        }
    }
    changed
}

/// Runs the module's rules over one meter's readings and the operator orders of its
/// batch, replacing the readings with the rows to store (estimates and re-emitted
/// corrections included), ascending `ts`, one per `ts`; `exceptions` gets the
/// validation exceptions those rows raise, resolve or decide. `earlier_rules` are
/// the meter's rules before the batch's orders changed its size (the pass of the
/// rows a re-run replaces followed them); `rules` when the batch changed none.
pub fn validate_meter(
    rules: &MeterRules,
    earlier_rules: &MeterRules,
    meter: &mut MeterBatch,
    output: &mut Vec<StoredReading>,
    exceptions: &mut Vec<ReadException>,
) {
    let mut notes: Vec<Note> = Vec::new();
    // Epochs only reads settled in earlier batches needed: this batch's rows (and
    // billing, which maps the settled ones among them) saw them last time. (Not on
    // hydration: that rebuilds the state as it was.)
    if !meter.readings.is_empty() || !meter.orders.is_empty() {
        forget_old_epochs(&mut meter.state.vee);
    }
    validate(
        rules,
        earlier_rules,
        &mut meter.state.vee,
        Inputs {
            readings: &mut meter.readings,
            orders: meter.orders.clone(),
        },
        output,
        &mut meter.replaced,
        &mut notes,
    );
    // The last word on each read wins (a read suspect, then confirmed in the same
    // batch, is resolved): a stable sort keeps each read's notes in pass order.
    notes.sort_by_key(|note| note.read.reading.ts);
    let mut last_words: Vec<Note> = Vec::with_capacity(notes.len());
    for note in notes {
        match last_words.last_mut() {
            Some(last) if last.read.reading.ts == note.read.reading.ts => *last = note,
            _ => last_words.push(note),
        }
    }
    exceptions.extend(
        last_words
            .into_iter()
            .map(|note| note.exception(&meter.key)),
    );
}

/// Why VEE cannot follow `order` on a meter in `state`, if it cannot: it contradicts
/// its exception ([`RegisterOrder::contradiction`]), a read order needs its read in
/// the window (a read at or before the settled point can only be
/// rejected, which records the decision and changes nothing else), and an exchange
/// must be after the settled point.
pub fn order_problem(state: &VeeState, order: &RegisterOrder) -> Option<String> {
    if let Some(why) = order.contradiction() {
        return Some(why.into());
    }
    let settled = state.settled_ts().filter(|settled| order.ts <= *settled);
    if !order.action.targets_a_read() {
        return settled.map(|settled| {
            format!(
                "an exchange at {} is before the meter's settled point ({settled}): reads that old can no longer change a bill",
                order.ts
            )
        });
    }
    if settled.is_some() {
        return (order.action != OrderAction::Reject || order.exception.is_none()).then(|| {
            format!(
                "the read at {} is settled (older than the late window before the meter's newest read): it can only be rejected",
                order.ts
            )
        });
    }
    let in_window = state
        .window
        .binary_search_by_key(&order.ts, |r| r.reading.ts)
        .is_ok();
    (!in_window).then(|| format!("the meter has no read at {} to decide", order.ts))
}

/// What a pass says about a read that is, or was, an exception.
#[derive(Clone, Debug)]
struct Note {
    read: RawRead,
    reason: ExceptionReason,
    state: ExceptionState,
    /// The order that decided it, if any.
    order: Option<RegisterOrder>,
}

impl Note {
    /// The record of a field work order (a recorded exchange at `order.ts`, the new
    /// register reading `initial_reg`): no suspect read, an exception already decided,
    /// so the work queue's history holds every register decision with who, when and
    /// why. A read's own exception at the same `ts` has the last word.
    fn work_order(order: &RegisterOrder, initial_reg: u64) -> Self {
        Note {
            read: RawRead {
                reading: Reading::register(order.ts, initial_reg),
                seq: 0,
                received_at: order.decision.at_ms,
            },
            reason: ExceptionReason::RecordedExchange,
            state: order.action.state(),
            order: Some(order.clone()),
        }
    }

    fn exception(self, key: &MeterKey) -> ReadException {
        ReadException {
            tenant: key.tenant.to_string(),
            meter: key.meter.to_string(),
            ts: self.read.reading.ts,
            reg: self.read.reading.reg,
            reason: self.reason,
            state: self.state,
            received_at: self.read.received_at,
            decision: self.order.map(|order| order.decision),
        }
    }
}

/// A meter's new reads and operator orders for [`validate`].
struct Inputs<'a> {
    readings: &'a mut Vec<StoredReading>,
    orders: Vec<RegisterOrder>,
}

/// Rebuilds the unpersisted part of a hydrated meter's state — the window and the
/// pass over it (`head`) — from `rows`, the meter's stored rows after the settled
/// point (ascending `ts`, one per `ts`, as the store returns them): the
/// non-estimated ones are the window's reads, and the pass re-runs over them from
/// the settled point as [`validate_meter`] runs an in-order batch. `rows` is
/// replaced with the rows that pass makes (what billing rebuilds its open reads
/// from); they are stored already, so they are not emitted again.
pub fn rebuild_window(
    rules: &MeterRules,
    state: &mut VeeState,
    rows: &mut Vec<StoredReading>,
    output: &mut Vec<StoredReading>,
) {
    rows.retain(|row| row.quality.is_from_meter());
    state.window.clear();
    state.head.clone_from(&state.settled);
    let inputs = Inputs {
        readings: rows,
        orders: Vec::new(),
    };
    validate(
        rules,
        rules,
        state,
        inputs,
        output,
        &mut Vec::new(),
        &mut Vec::new(),
    );
}

/// [`validate_meter`] on a meter's VEE state and inputs; `replaced` gets the earlier
/// rows the batch re-decides (see [`MeterBatch::replaced`]), `notes` what the rows
/// from the re-decided point on say about exceptions.
fn validate(
    rules: &MeterRules,
    earlier_rules: &MeterRules,
    state: &mut VeeState,
    inputs: Inputs,
    output: &mut Vec<StoredReading>,
    replaced: &mut Vec<StoredReading>,
    notes: &mut Vec<Note>,
) {
    let Inputs { readings, orders } = inputs;
    replaced.clear();
    if readings.is_empty() && orders.is_empty() {
        return;
    }
    let order = |r: &StoredReading| (r.reading.ts, r.seq, r.received_at);
    if !readings.is_sorted_by_key(order) {
        readings.sort_unstable_by_key(order);
    }
    output.clear();
    let oldest_input = readings
        .first()
        .map(|r| r.reading.ts)
        .into_iter()
        .chain(orders.iter().map(|o| o.ts))
        .min();
    // A read or order not after the newest read may re-run the pass: keep the window
    // and the orders as they were, to tell what the re-run replaces.
    let before = oldest_input
        .filter(|oldest| state.head.newest_ts.is_some_and(|newest| *oldest <= newest))
        .map(|_| Before {
            window: state.window.clone(),
            orders: state.orders.clone(),
            rules: earlier_rules,
        });
    let ordered_from = take_orders(state, orders, notes);
    let from = admit(state, readings, output, notes)
        .into_iter()
        .chain(ordered_from)
        .min();
    if let Some(from) = from {
        decide_from(rules, state, from, before.as_ref(), output, replaced, notes);
        settle(rules, state);
    }
    one_row_per_ts(output);
    readings.clear();
    std::mem::swap(readings, output);
}

/// A meter's window, orders and rules as they were before a batch that re-runs the
/// pass.
struct Before<'a> {
    window: VecDeque<RawRead>,
    orders: Vec<RegisterOrder>,
    rules: &'a MeterRules,
}

/// Puts a batch's orders into the meter's state (an order replaces an earlier one
/// of the same kind at the same `ts`); returns the `ts` of the oldest one the pass
/// must follow. An order at or before the settled point can change nothing any
/// more: a rejection there is recorded on the exception as it stands (the shard
/// lets no other order through for such a read).
fn take_orders(
    state: &mut VeeState,
    orders: Vec<RegisterOrder>,
    notes: &mut Vec<Note>,
) -> Option<i64> {
    let settled_ts = state.settled_ts();
    let mut oldest = None;
    for order in orders {
        if settled_ts.is_some_and(|settled| order.ts <= settled) {
            if let (OrderAction::Reject, Some(exception)) = (&order.action, order.exception) {
                notes.push(Note {
                    read: RawRead {
                        reading: Reading::register(order.ts, exception.reg),
                        seq: 0,
                        received_at: exception.received_at,
                    },
                    reason: exception.reason,
                    state: ExceptionState::Rejected,
                    order: Some(order),
                });
            }
            continue;
        }
        oldest = Some(oldest.map_or(order.ts, |o: i64| o.min(order.ts)));
        let same = |o: &RegisterOrder| {
            o.ts == order.ts && o.action.targets_a_read() == order.action.targets_a_read()
        };
        state.orders.retain(|o| !same(o));
        if let OrderAction::Exchange { initial_reg, .. } = order.action {
            notes.push(Note::work_order(&order, initial_reg));
        }
        let at = state.orders.partition_point(|o| o.ts <= order.ts);
        state.orders.insert(at, order);
    }
    let excess = state.orders.len().saturating_sub(MAX_METER_ORDERS);
    state.orders.drain(..excess);
    oldest
}

/// Puts the batch's new reads into the window and the rows of too-late reads into
/// `out`; returns the `ts` of the oldest new read.
fn admit(
    state: &mut VeeState,
    readings: &[StoredReading],
    out: &mut Vec<StoredReading>,
    notes: &mut Vec<Note>,
) -> Option<i64> {
    let settled_ts = state.settled_ts();
    let mut oldest_new = None;
    for stored in readings {
        let ts = stored.reading.ts;
        if settled_ts.is_some_and(|settled| ts <= settled) {
            let row = too_late(&state.settled, stored);
            if row.quality == Quality::Suspect {
                notes.push(Note {
                    read: raw(stored),
                    reason: ExceptionReason::LateAhead,
                    state: ExceptionState::Open,
                    order: None,
                });
            }
            out.push(row);
            continue;
        }
        if let Err(at) = state.window.find_time(ts, |r| r.reading.ts) {
            insert_at(&mut state.window, at, raw(stored));
            oldest_new = Some(oldest_new.map_or(ts, |o: i64| o.min(ts)));
        }
    }
    oldest_new
}

fn raw(stored: &StoredReading) -> RawRead {
    RawRead {
        reading: stored.reading,
        seq: stored.seq,
        received_at: stored.received_at,
    }
}

/// The row of a read at or before the settled point.
fn too_late(settled: &VeeFold, stored: &StoredReading) -> StoredReading {
    let r = stored.reading;
    let creg = settled.continuous_register(r.ts, r.reg);
    let ahead = settled.base.is_some_and(|base| creg > base.creg);
    StoredReading {
        quality: if ahead {
            Quality::Suspect
        } else {
            Quality::Actual
        },
        interval_l: None,
        ..*stored
    }
}

/// Runs the pass over the window and emits the rows of every read from `from` on.
/// New reads all after the newest one continue the head; otherwise the pass
/// re-runs from the settled point (silently up to `from`: those rows are stored),
/// and `replaced` gets the rows the same re-run makes over the window and orders as
/// they were `before` the batch: what was stored from that point on. An exception
/// of that earlier run whose read is no longer suspect, with no order deciding it,
/// is resolved.
fn decide_from(
    rules: &MeterRules,
    state: &mut VeeState,
    from: i64,
    before: Option<&Before<'_>>,
    out: &mut Vec<StoredReading>,
    replaced: &mut Vec<StoredReading>,
    notes: &mut Vec<Note>,
) {
    let VeeState {
        settled,
        window,
        head,
        orders,
        ..
    } = state;
    if head.newest_ts.is_none_or(|newest| from > newest) {
        // Counted from the back: here the reads from `from` on are the batch's new
        // ones, the window's last.
        let split = window.len()
            - window
                .iter()
                .rev()
                .take_while(|r| r.reading.ts >= from)
                .count();
        let mut pass = Pass::silent(rules, std::mem::take(head), window, orders);
        pass.out = Some(out);
        pass.notes = Some(notes);
        pass.run(window.range(split..));
        *head = pass.fold;
        return;
    }
    let mut earlier = Vec::new();
    if let Some(before) = before {
        let rerun = Rerun {
            window: &before.window,
            orders: &before.orders,
            from,
        };
        rerun.run(before.rules, settled, replaced, &mut earlier);
        one_row_per_ts(replaced);
    }
    let first_new_note = notes.len();
    let rerun = Rerun {
        window,
        orders,
        from,
    };
    *head = rerun.run(rules, settled, out, notes);
    let decided: Vec<i64> = notes[first_new_note..]
        .iter()
        .map(|note| note.read.reading.ts)
        .collect();
    for note in earlier {
        let ts = note.read.reading.ts;
        let now_suspect = out
            .iter()
            .rev()
            .find(|row| row.reading.ts == ts)
            .is_some_and(|row| row.quality == Quality::Suspect);
        if !now_suspect && !decided.contains(&ts) {
            notes.push(Note {
                state: ExceptionState::Resolved,
                order: None,
                ..note
            });
        }
    }
}

/// A re-run of the pass over a window with its orders from the settled point.
struct Rerun<'a> {
    window: &'a VecDeque<RawRead>,
    orders: &'a [RegisterOrder],
    /// Rows (and notes) are emitted for reads from here on.
    from: i64,
}

impl Rerun<'_> {
    /// Runs it, emitting into `out` and `notes`; where the pass ends.
    fn run(
        &self,
        rules: &MeterRules,
        settled: &VeeFold,
        out: &mut Vec<StoredReading>,
        notes: &mut Vec<Note>,
    ) -> VeeFold {
        let split = self.window.count_before(self.from, |r| r.reading.ts);
        let mut pass = Pass::silent(rules, settled.clone(), self.window, self.orders);
        pass.run(self.window.range(..split));
        pass.emit_from_here(out, notes);
        pass.run(self.window.range(split..));
        pass.fold
    }
}

/// Moves reads past the late window (and beyond [`MAX_WINDOW_READS`]) out of the
/// window into the settled pass, up to the newest such read accepted as actual and
/// before the first read still suspect with no decision (an open exception keeps its
/// read decidable, up to [`MAX_WINDOW_READS`]). Orders at or before the new settled
/// point are done with and dropped.
fn settle(rules: &MeterRules, state: &mut VeeState) {
    let Some(newest) = state.head.newest_ts else {
        return;
    };
    let cutoff = newest.saturating_sub(rules.late_window_ms);
    let overflow = state.window.len().saturating_sub(MAX_WINDOW_READS);
    if overflow == 0 && state.window.front().is_none_or(|r| r.reading.ts >= cutoff) {
        return;
    }
    let mut probe = Pass::silent(rules, state.settled.clone(), &state.window, &state.orders);
    let mut rests = Vec::new();
    let mut stepped = 0;
    for (i, read) in state.window.iter().enumerate() {
        if read.reading.ts >= cutoff {
            break;
        }
        probe.step(read);
        stepped = i + 1;
        if probe.rests_on(read) {
            rests.push(i + 1);
        }
    }
    let first_open = probe.open_suspects.iter().min().copied();
    let settle_up_to = rests
        .into_iter()
        .rev()
        .find(|&n| first_open.is_none_or(|open| state.window[n - 1].reading.ts < open))
        .unwrap_or(0)
        .max(overflow);
    if settle_up_to == 0 {
        return;
    }
    state.settled = if settle_up_to == stepped {
        // The probe stands there already (the common case: every read it passed was
        // accepted): the same pass over the same reads.
        probe.fold
    } else {
        let mut pass = Pass::silent(
            rules,
            std::mem::take(&mut state.settled),
            &state.window,
            &state.orders,
        );
        pass.run(state.window.range(..settle_up_to));
        pass.fold
    };
    state.window.drain(..settle_up_to);
    let settled_ts = state.settled.newest_ts;
    state
        .orders
        .retain(|order| settled_ts.is_none_or(|settled| order.ts > settled));
}

/// Drops the oldest register epochs beyond [`MAX_REGISTER_EPOCHS`] that no read after
/// the settled point can need: an epoch is needed only by reads before the next
/// epoch's first read, and once that one is settled, every read still to be decided
/// maps through the later epochs. (Reads stored too late, before the settled point,
/// map through what is left, as they always did.) The settled pass's epochs are a prefix of the
/// head's, so both drop the same ones; the window's epochs are never dropped (they
/// are as many as its reads at most).
fn forget_old_epochs(state: &mut VeeState) {
    let Some(settled_ts) = state.settled.newest_ts else {
        return;
    };
    let epochs = &state.settled.epochs;
    let mut drop = 0;
    while epochs.len() - drop > MAX_REGISTER_EPOCHS && epochs[drop + 1].first_ts <= settled_ts {
        drop += 1;
    }
    state.settled.epochs.drain(..drop);
    state.head.epochs.drain(..drop.min(state.head.epochs.len()));
}

/// Orders rows by `ts` and keeps the last one emitted for each `ts` (a correction
/// emitted later in the pass wins).
fn one_row_per_ts(rows: &mut Vec<StoredReading>) {
    rows.sort_by_key(|r| r.reading.ts);
    let mut kept = 0;
    for i in 0..rows.len() {
        if rows
            .get(i + 1)
            .is_some_and(|next| next.reading.ts == rows[i].reading.ts)
        {
            continue;
        }
        rows[kept] = rows[i];
        kept += 1;
    }
    rows.truncate(kept);
}

fn validated(read: &RawRead, creg: u64) -> ValidatedRead {
    ValidatedRead {
        reading: read.reading,
        creg,
        seq: read.seq,
        received_at: read.received_at,
    }
}

/// Why a read that is neither growth nor a rollover from `base` is suspect.
fn deviation(base: &Reading, read: &Reading) -> ExceptionReason {
    if read.reg < base.reg {
        ExceptionReason::Regression
    } else {
        ExceptionReason::ImplausibleJump
    }
}

/// The pass over reads in time order.
struct Pass<'a> {
    rules: &'a MeterRules,
    fold: VeeFold,
    /// The meter's window: estimates skip the `ts` of its reads.
    window: &'a VecDeque<RawRead>,
    /// The meter's operator orders, ascending `ts`.
    orders: &'a [RegisterOrder],
    /// Where rows go; `None` while re-running reads whose rows are already stored.
    out: Option<&'a mut Vec<StoredReading>>,
    /// Where exception notes go, with the rows.
    notes: Option<&'a mut Vec<Note>>,
    /// `ts` of the reads passed that are suspect with no decision (and not since
    /// confirmed as an exchange): open exceptions, which keep the window from
    /// settling past them.
    open_suspects: Vec<i64>,
}

impl<'a> Pass<'a> {
    fn silent(
        rules: &'a MeterRules,
        fold: VeeFold,
        window: &'a VecDeque<RawRead>,
        orders: &'a [RegisterOrder],
    ) -> Self {
        Self {
            rules,
            fold,
            window,
            orders,
            out: None,
            notes: None,
            open_suspects: Vec::new(),
        }
    }

    /// Starts emitting in a re-run. A pending exchange candidate's reads are emitted
    /// `Suspect` again: an earlier pass may have confirmed it with reads now
    /// re-decided.
    fn emit_from_here(&mut self, out: &'a mut Vec<StoredReading>, notes: &'a mut Vec<Note>) {
        self.out = Some(out);
        self.notes = Some(notes);
        if let Some(candidate) = self.fold.candidate.clone() {
            let reason = self.fold.base.map_or(ExceptionReason::Regression, |base| {
                deviation(&base.reading, &candidate.initial.reading)
            });
            self.suspect(&candidate.initial, reason);
            for read in &candidate.followers {
                self.suspect(read, ExceptionReason::UnconfirmedExchange);
            }
        }
    }

    fn run<'r>(&mut self, reads: impl IntoIterator<Item = &'r RawRead>) {
        for read in reads {
            self.step(read);
        }
    }

    /// Whether the pass stands on `read`: it is the base, with no candidate pending.
    fn rests_on(&self, read: &RawRead) -> bool {
        self.fold.candidate.is_none()
            && self
                .fold
                .base
                .is_some_and(|base| base.reading.ts == read.reading.ts)
    }

    fn emit(&mut self, read: &ValidatedRead, quality: Quality, interval_l: Option<u64>) {
        if let Some(out) = &mut self.out {
            out.push(StoredReading {
                reading: read.reading,
                seq: read.seq,
                received_at: read.received_at,
                quality,
                interval_l,
            });
        }
    }

    /// Emits `read` as `Suspect` for `reason`: an open exception, or a rejected one
    /// when an order rejects it.
    fn suspect(&mut self, read: &RawRead, reason: ExceptionReason) {
        self.emit(&validated(read, 0), Quality::Suspect, None);
        let rejection = self
            .read_order(read.reading.ts)
            .filter(|order| order.action == OrderAction::Reject);
        if rejection.is_none() {
            self.open_suspects.push(read.reading.ts);
        }
        let state = rejection.map_or(ExceptionState::Open, |order| order.action.state());
        self.note(read, reason, state, rejection);
    }

    /// Records what the pass says of an exception's read, while emitting.
    fn note(
        &mut self,
        read: &RawRead,
        reason: ExceptionReason,
        state: ExceptionState,
        order: Option<&RegisterOrder>,
    ) {
        if let Some(notes) = &mut self.notes {
            notes.push(Note {
                read: *read,
                reason,
                state,
                order: order.cloned(),
            });
        }
    }

    /// The order deciding the read at `ts`, if any.
    fn read_order(&self, ts: i64) -> Option<&'a RegisterOrder> {
        let orders = self.orders;
        orders
            .iter()
            .find(|order| order.ts == ts && order.action.targets_a_read())
    }

    /// Recorded exchanges from after the previous read up to `next` take effect.
    fn apply_exchanges_up_to(&mut self, next: &RawRead) {
        let orders = self.orders;
        for order in orders {
            let OrderAction::Exchange {
                final_reg,
                initial_reg,
                ..
            } = order.action
            else {
                continue;
            };
            let newest = self.fold.newest_ts;
            if order.ts <= next.reading.ts && newest.is_none_or(|newest| newest < order.ts) {
                self.exchange_at(order.ts, final_reg, initial_reg, next);
            }
        }
    }

    /// A recorded exchange at `at`, applied by the pass of `next`: the old register
    /// is billed up to its final read (when given and not below the base), which is
    /// a [`Quality::Recorded`] row at `at` ([`record_final_read`]), and a new
    /// register bills from its initial read. The initial read is no row; the next
    /// read's interval runs from it. A pending candidate is dropped.
    ///
    /// [`record_final_read`]: Self::record_final_read
    fn exchange_at(&mut self, at: i64, final_reg: Option<u64>, initial_reg: u64, next: &RawRead) {
        self.fold.candidate = None;
        let at_reg = |from: &ValidatedRead, reg: u64, creg: u64| ValidatedRead {
            reading: Reading::register(at, reg),
            creg,
            ..*from
        };
        let Some(base) = self.fold.base else {
            self.fold.base = Some(ValidatedRead {
                reading: Reading::register(at, initial_reg),
                creg: initial_reg,
                seq: 0,
                received_at: at,
            });
            return;
        };
        let last = match final_reg {
            Some(reg) if reg >= base.reading.reg => {
                let last = at_reg(&base, reg, base.creg.saturating_add(reg - base.reading.reg));
                self.record_final_read(&base, &last, next);
                last
            }
            _ => base,
        };
        let first = at_reg(&last, initial_reg, last.creg);
        let first_raw = RawRead {
            reading: first.reading,
            seq: first.seq,
            received_at: first.received_at,
        };
        self.push_epoch(EpochCause::Exchange, &last, &first_raw, last.creg);
        self.fold.base = Some(first);
    }

    /// The old register's final read at an exchange, `last`, as a row: the litres
    /// from `base` up to it are in the interval of some row (analytics, `today_l`),
    /// as they are in the continuous register (billing), the gap before it
    /// estimated as before any read. It carries the seq and receive time of `next`,
    /// the read whose pass applies the exchange, as estimates do. None when the
    /// meter sent a read at the exchange's own time: that read is the row there.
    fn record_final_read(&mut self, base: &ValidatedRead, last: &ValidatedRead, next: &RawRead) {
        if self.has_read_at(last.reading.ts) {
            return;
        }
        let row = ValidatedRead {
            seq: next.seq,
            received_at: next.received_at,
            ..*last
        };
        let previous_creg = self.estimate_between(base, &row);
        self.emit(&row, Quality::Recorded, Some(row.creg - previous_creg));
    }

    /// Whether the meter sent a read at `ts` (its window holds one).
    fn has_read_at(&self, ts: i64) -> bool {
        self.window
            .binary_search_by_key(&ts, |r| r.reading.ts)
            .is_ok()
    }

    /// One read, later than every read before it.
    fn step(&mut self, read: &RawRead) {
        self.apply_exchanges_up_to(read);
        self.fold.newest_ts = self.fold.newest_ts.max(Some(read.reading.ts));
        if let Some(order) = self.read_order(read.reading.ts)
            && self.follow_order(order, read)
        {
            return;
        }
        let Some(base) = self.fold.base else {
            let first = validated(
                read,
                self.fold
                    .continuous_register(read.reading.ts, read.reading.reg),
            );
            self.emit(&first, Quality::Actual, None);
            self.fold.base = Some(first);
            return;
        };
        if let Some(candidate) = self.fold.candidate.take()
            && self.continues(&candidate, &base, read)
        {
            self.follow(base, candidate, read);
            return;
        }
        self.judge(base, read);
    }

    /// Decides `read` as `order` says; false when the order does not apply (an
    /// acceptance of a regression, a meter's first read), and the rules decide.
    fn follow_order(&mut self, order: &RegisterOrder, read: &RawRead) -> bool {
        let reason = |base: Option<ValidatedRead>| {
            order.exception.map(|e| e.reason).unwrap_or_else(|| {
                base.map_or(ExceptionReason::Regression, |base| {
                    deviation(&base.reading, &read.reading)
                })
            })
        };
        match (&order.action, self.fold.base) {
            (OrderAction::Reject, base) => {
                self.suspect(read, reason(base));
                true
            }
            (OrderAction::ConfirmExchange, Some(base)) => {
                self.fold.candidate = None;
                self.push_epoch(EpochCause::Exchange, &base, read, base.creg);
                self.accept(read, base, 0);
                self.note(read, reason(Some(base)), order.action.state(), Some(order));
                true
            }
            (OrderAction::Accept, Some(base)) if read.reading.reg >= base.reading.reg => {
                self.fold.candidate = None;
                self.accept(read, base, read.reading.reg - base.reading.reg);
                self.note(read, reason(Some(base)), order.action.state(), Some(order));
                true
            }
            _ => false,
        }
    }

    /// `read` continues the candidate: it confirms the exchange, or waits with it.
    fn follow(&mut self, base: ValidatedRead, mut candidate: ExchangeCandidate, read: &RawRead) {
        let needed = self.rules.confirmations(candidate.initial.reading.reg);
        if candidate.followers.len() + 1 >= needed {
            self.confirm_exchange(base, &candidate, read);
        } else {
            self.suspect(read, ExceptionReason::UnconfirmedExchange);
            candidate.followers.push(*read);
            self.fold.candidate = Some(candidate);
        }
    }

    /// Whether `read` grows from the candidate's newest read and not from the base.
    fn continues(
        &self,
        candidate: &ExchangeCandidate,
        base: &ValidatedRead,
        read: &RawRead,
    ) -> bool {
        let newest = candidate.followers.last().unwrap_or(&candidate.initial);
        self.rules.grows_from(&newest.reading, &read.reading)
            && !self.rules.grows_from(&base.reading, &read.reading)
    }

    /// Growth, rollover, or a suspect read that may begin an exchange.
    fn judge(&mut self, base: ValidatedRead, read: &RawRead) {
        let r = read.reading;
        let limit = self
            .rules
            .plausible_litres(r.ts, r.ts.saturating_sub(base.reading.ts));
        if r.reg >= base.reading.reg && r.reg - base.reading.reg <= limit {
            self.accept(read, base, r.reg - base.reading.reg);
        } else if let Some(wrapped) = self.rollover_delta(&base.reading, &r)
            && wrapped <= limit
        {
            self.push_epoch(
                EpochCause::Rollover,
                &base,
                read,
                base.creg.saturating_add(wrapped),
            );
            self.accept(read, base, wrapped);
        } else {
            self.suspect(read, deviation(&base.reading, &r));
            self.fold.candidate = Some(ExchangeCandidate {
                initial: *read,
                followers: Vec::new(),
            });
        }
    }

    /// Litres across a wrap at the register capacity, when both registers fit in it.
    fn rollover_delta(&self, base: &Reading, r: &Reading) -> Option<u64> {
        let capacity = self.rules.capacity(r.ts);
        (base.reg < capacity && r.reg < capacity)
            .then(|| (capacity - base.reg).saturating_add(r.reg))
    }

    fn push_epoch(
        &mut self,
        cause: EpochCause,
        base: &ValidatedRead,
        first: &RawRead,
        first_creg: u64,
    ) {
        self.fold.epochs.push(RegisterEpoch {
            cause,
            after_ts: base.reading.ts,
            after_reg: base.reading.reg,
            after_creg: base.creg,
            first_ts: first.reading.ts,
            first_reg: first.reading.reg,
            first_creg,
        });
    }

    /// A new register from the candidate's initial read on: it bills from there, so
    /// its continuous register is the old base's; the candidate's reads and `read`
    /// are accepted on it.
    fn confirm_exchange(
        &mut self,
        base: ValidatedRead,
        candidate: &ExchangeCandidate,
        read: &RawRead,
    ) {
        self.push_epoch(EpochCause::Exchange, &base, &candidate.initial, base.creg);
        let reason = deviation(&base.reading, &candidate.initial.reading);
        self.resolve(&candidate.initial, reason);
        let mut previous = self.accept(&candidate.initial, base, 0);
        for next in candidate.followers.iter().chain([read]) {
            if next != read {
                self.resolve(next, ExceptionReason::UnconfirmedExchange);
            }
            let delta = next.reading.reg - previous.reading.reg;
            previous = self.accept(next, previous, delta);
        }
    }

    /// A suspect read that later reads explain: no longer an open exception.
    fn resolve(&mut self, read: &RawRead, reason: ExceptionReason) {
        self.open_suspects.retain(|&ts| ts != read.reading.ts);
        self.note(read, reason, ExceptionState::Resolved, None);
    }

    /// Accepts `read` as actual, `delta` litres after `base`, estimates before it
    /// included; it becomes the base.
    fn accept(&mut self, read: &RawRead, base: ValidatedRead, delta: u64) -> ValidatedRead {
        let accepted = validated(read, base.creg.saturating_add(delta));
        let previous_creg = self.estimate_between(&base, &accepted);
        self.emit(
            &accepted,
            Quality::Actual,
            Some(accepted.creg - previous_creg),
        );
        self.fold.base = Some(accepted);
        accepted
    }

    /// Emits estimates on the expected grid strictly between `from` and `to`, none
    /// within half an interval of `to` nor at a read of the window; returns the
    /// continuous register of the last row before `to`.
    fn estimate_between(&mut self, from: &ValidatedRead, to: &ValidatedRead) -> u64 {
        let step = self.rules.expected_interval_ms;
        let span = to.reading.ts.saturating_sub(from.reading.ts);
        if self.out.is_none()
            || span.saturating_mul(2) <= step.saturating_mul(3)
            || to.creg < from.creg
        {
            return from.creg;
        }
        let slots = ((span - step / 2 - 1) / step) as u64;
        if slots == 0 || slots > u64::from(self.rules.max_estimated_reads) {
            return from.creg;
        }
        let litres = to.creg - from.creg;
        let avg_flow_lph =
            u32::try_from(u128::from(litres) * HOUR_MS as u128 / span as u128).unwrap_or(u32::MAX);
        let rev_growth = to.reading.rev.saturating_sub(from.reading.rev);
        let share =
            |total: u64, elapsed: i64| (u128::from(total) * elapsed as u128 / span as u128) as u64;
        let capacity = self.rules.capacity(from.reading.ts);
        let mut previous = from.creg;
        for k in 1..=slots as i64 {
            let ts = from.reading.ts + k * step;
            if self.has_read_at(ts) {
                continue;
            }
            let creg = from.creg + share(litres, ts - from.reading.ts);
            let mut reg = from.reading.reg.saturating_add(creg - from.creg);
            if reg >= capacity && from.reading.reg < capacity {
                reg -= capacity; // the estimate lies past a rollover
            }
            let estimate = ValidatedRead {
                reading: Reading {
                    ts,
                    reg,
                    rev: from.reading.rev + share(rev_growth, ts - from.reading.ts),
                    flow: avg_flow_lph,
                    temp: None,
                },
                creg,
                seq: to.seq,
                received_at: to.received_at,
            };
            self.emit(&estimate, Quality::Estimated, Some(creg - previous));
            previous = creg;
        }
        previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{DAY0, batch_of, directory, stored};
    use meterflow_model::MeterState;
    use meterflow_model::time::DAY_MS;

    const HOUR: i64 = HOUR_MS;

    fn run(state: MeterState, readings: Vec<StoredReading>) -> (Vec<StoredReading>, MeterState) {
        let mut batch = batch_of(state, readings);
        VeeProcessor::new(directory()).process(&mut batch, &mut Outputs::default());
        let meter = batch.meters.pop().unwrap();
        (meter.readings, meter.state)
    }

    fn summary(rows: &[StoredReading]) -> Vec<(i64, Quality, Option<u64>)> {
        rows.iter()
            .map(|r| ((r.reading.ts - DAY0) / 60_000, r.quality, r.interval_l))
            .collect()
    }

    fn hourly(regs: &[u64]) -> Vec<StoredReading> {
        regs.iter()
            .enumerate()
            .map(|(i, reg)| stored(DAY0 + i as i64 * HOUR, *reg))
            .collect()
    }

    #[test]
    fn a_rollover_is_usage_across_the_wrap() {
        // Default: 8 digits, wraps at 100,000,000 L.
        let (rows, state) = run(MeterState::default(), hourly(&[99_999_900, 50, 120]));
        assert_eq!(
            summary(&rows),
            vec![
                (0, Quality::Actual, None),
                (60, Quality::Actual, Some(150)),
                (120, Quality::Actual, Some(70))
            ]
        );
        assert_eq!(state.vee.head.base.unwrap().creg, 100_000_120);
        // A late read from before the wrap still maps to the old epoch.
        assert_eq!(
            state
                .vee
                .continuous_register(DAY0 + 30 * 60_000, 99_999_950),
            99_999_950
        );
    }

    #[test]
    fn regressions_and_implausible_jumps_are_suspect() {
        // 3,125 L/h is a DN15's overload flow: 7,000 L in two hours cannot be water.
        let (rows, state) = run(
            MeterState::default(),
            hourly(&[10_000, 9_000, 17_000, 10_100]),
        );
        assert_eq!(
            summary(&rows),
            vec![
                (0, Quality::Actual, None),
                (60, Quality::Suspect, None),
                (120, Quality::Suspect, None),
                (180, Quality::Actual, Some(100))
            ]
        );
        assert_eq!(state.vee.head.base.unwrap().reading.reg, 10_100);
    }

    #[test]
    fn gaps_get_linear_estimates_that_late_reads_replace() {
        // Reads at 00:00 and 04:00: 01:00, 02:00, 03:00 are estimated.
        let (rows, state) = run(
            MeterState::default(),
            vec![stored(DAY0, 1_000), stored(DAY0 + 4 * HOUR, 1_400)],
        );
        assert_eq!(
            summary(&rows),
            vec![
                (0, Quality::Actual, None),
                (60, Quality::Estimated, Some(100)),
                (120, Quality::Estimated, Some(100)),
                (180, Quality::Estimated, Some(100)),
                (240, Quality::Actual, Some(100))
            ]
        );
        // The 01:00 read arrives late: the rest of the gap is re-spread.
        let (rows, state) = run(state, vec![stored(DAY0 + HOUR, 1_250)]);
        assert_eq!(
            summary(&rows),
            vec![
                (60, Quality::Actual, Some(250)),
                (120, Quality::Estimated, Some(50)),
                (180, Quality::Estimated, Some(50)),
                (240, Quality::Actual, Some(50))
            ]
        );
        assert_eq!(state.vee.window.len(), 3);
    }

    #[test]
    fn a_meter_exchange_continues_usage_from_the_new_register() {
        let (rows, state) = run(MeterState::default(), hourly(&[5_000_000, 5_000_100, 7]));
        assert_eq!(rows[2].quality, Quality::Suspect, "unconfirmed yet");
        let (rows, state) = run(state, vec![stored(DAY0 + 3 * HOUR, 57)]);
        // The new register bills from its initial read: 7 L of factory test water
        // are not the customer's.
        assert_eq!(
            summary(&rows),
            vec![
                (120, Quality::Actual, Some(0)),
                (180, Quality::Actual, Some(50))
            ]
        );
        assert_eq!(state.vee.head.base.unwrap().creg, 5_000_150);
    }

    #[test]
    fn a_one_off_drop_to_zero_is_not_an_exchange() {
        let (rows, state) = run(MeterState::default(), hourly(&[5_000_000, 0, 5_000_200]));
        assert_eq!(
            summary(&rows),
            vec![
                (0, Quality::Actual, None),
                (60, Quality::Suspect, None),
                (120, Quality::Actual, Some(200))
            ]
        );
        assert!(state.vee.head.epochs.is_empty());
    }

    #[test]
    fn the_newest_read_resent_is_dropped() {
        let (_, state) = run(MeterState::default(), hourly(&[100, 200]));
        let (rows, _) = run(state, vec![stored(DAY0 + HOUR, 200)]);
        assert!(rows.is_empty());
    }

    #[test]
    fn a_pre_wrap_read_arriving_last_still_makes_the_rollover() {
        // 99,999,900 → 99,999,980 → (wrap) 50 → 120: 80 + 70 + 70 L.
        let (_, state) = run(
            MeterState::default(),
            vec![stored(DAY0 + 2 * HOUR, 50), stored(DAY0 + 3 * HOUR, 120)],
        );
        let (rows, state) = run(
            state,
            vec![stored(DAY0, 99_999_900), stored(DAY0 + HOUR, 99_999_980)],
        );
        assert_eq!(
            summary(&rows),
            vec![
                (0, Quality::Actual, None),
                (60, Quality::Actual, Some(80)),
                (120, Quality::Actual, Some(70)),
                (180, Quality::Actual, Some(70))
            ]
        );
        assert_eq!(state.vee.head.base.unwrap().creg, 100_000_120);
    }

    #[test]
    fn a_refurbished_register_above_the_threshold_is_an_exchange() {
        // Old meter at 2,000; the new one starts at 350,000: two reads growing from
        // it, and not from 2,000, confirm the exchange.
        let (rows, state) = run(
            MeterState::default(),
            hourly(&[1_900, 2_000, 350_000, 350_040]),
        );
        assert_eq!(rows[2].quality, Quality::Suspect, "one read is not enough");
        assert_eq!(rows[3].quality, Quality::Suspect);
        let (rows, state) = run(state, vec![stored(DAY0 + 4 * HOUR, 350_100)]);
        assert_eq!(
            summary(&rows),
            vec![
                (120, Quality::Actual, Some(0)),
                (180, Quality::Actual, Some(40)),
                (240, Quality::Actual, Some(60))
            ]
        );
        assert_eq!(state.vee.head.base.unwrap().creg, 2_100);
    }

    #[test]
    fn a_repeated_glitch_above_the_threshold_is_not_an_exchange() {
        let (rows, state) = run(
            MeterState::default(),
            hourly(&[5_000_000, 2_500, 2_510, 5_000_300]),
        );
        assert_eq!(
            summary(&rows),
            vec![
                (0, Quality::Actual, None),
                (60, Quality::Suspect, None),
                (120, Quality::Suspect, None),
                (180, Quality::Actual, Some(300))
            ]
        );
        assert!(state.vee.head.epochs.is_empty());
    }

    #[test]
    fn a_late_read_can_undo_a_confirmed_exchange() {
        // 500 after 10,000 looked like a new meter, confirmed by 520 at 03:00; the
        // 02:00 read arriving late shows the old register still counting, so 500 is
        // a glitch again and 520 does not follow from the base.
        let (rows, state) = run(
            MeterState::default(),
            vec![
                stored(DAY0, 10_000),
                stored(DAY0 + HOUR, 500),
                stored(DAY0 + 3 * HOUR, 520),
            ],
        );
        assert_eq!(rows[1].quality, Quality::Actual, "confirmed at first");
        let (rows, state) = run(state, vec![stored(DAY0 + 2 * HOUR, 10_100)]);
        assert_eq!(
            summary(&rows),
            vec![
                (60, Quality::Suspect, None),
                (120, Quality::Actual, Some(100)),
                (180, Quality::Suspect, None)
            ]
        );
        assert!(state.vee.head.epochs.is_empty());
    }

    #[test]
    fn reads_settle_after_the_late_window() {
        let days = 5;
        let regs: Vec<u64> = (0..days * 24).map(|h| 1_000 + h * 10).collect();
        let (_, state) = run(MeterState::default(), hourly(&regs));
        // Three days (the default late window) before the newest read, and no more.
        let newest = DAY0 + (days as i64 * 24 - 1) * HOUR;
        assert_eq!(state.vee.window[0].reading.ts, newest - 3 * DAY_MS);
        assert_eq!(state.vee.settled_ts(), Some(newest - 3 * DAY_MS - HOUR));
        // A read older than the settled point is stored as late, alone.
        let (rows, state2) = run(state.clone(), vec![stored(DAY0 + 30 * 60_000, 1_005)]);
        assert_eq!(summary(&rows), vec![(30, Quality::Actual, None)]);
        assert_eq!(state2.vee, state.vee);
    }
}

#[cfg(test)]
#[path = "vee_exceptions_tests.rs"]
mod exceptions_tests;
