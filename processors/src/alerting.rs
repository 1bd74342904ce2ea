//! Alerting: alert episodes from device flags and from rules recomputed over
//! interval data (DESIGN §4). Thresholds are per tenant ([`AlertRules`], defaults
//! explained there).
//!
//! Episodes: at most one open per (meter, kind); an episode is *opened*, then
//! *updated* when another source confirms it or, while its condition holds, at most
//! every `update_interval_ms`, and *cleared* when no source holds any more — or
//! *withdrawn* when later data shows it never happened. An episode has two possible
//! sources — the device's own flag and a rule — and stays open while either holds.
//!
//! Leak, burst and no-consumption are consumption rules: a district's bulk (inflow)
//! meter (`bulk_meters`) is exempt from them — its flow never stops and is no one's use.
//!
//! **Reading time, not arrival order.** Episodes are what folding the meter's rows
//! and statuses in reading time gives (the `fold` module), whatever order they
//! arrived in:
//! - The fold up to VEE's settled point is kept (`AlertState::settled`); after it
//!   lie the window's rows (VEE's rows that are not suspect, replaced when VEE
//!   re-decides them, rebuilt from the stored rows on hydration) and the device
//!   statuses (persisted: statuses are not stored elsewhere).
//! - A batch whose data lands after everything folded (the usual case) is folded on
//!   from the head. One that lands inside the window folds the window again from
//!   the settled fold and compares its steps with those it made before: an episode
//!   no longer made is *withdrawn*, a step not made before is emitted, and an
//!   episode whose latest step changed gets it again. Every event carries a
//!   revision above the meter's earlier ones; the stores keep the highest per
//!   episode, so the stored episodes are the in-order ones.
//! - As VEE's settled point moves on, the window's items before it are folded into
//!   the settled fold for good.
//!
//! Rules, over the meter's non-suspect rows (estimated rows count, they carry the
//! gap's litres), where an interval is the time and litres between consecutive rows:
//! - **leak**: no complete hour of zero consumption in `leak_window_ms` (a run of
//!   zero-litre intervals spanning ≥ 1 h is a zero hour); clears at the next one.
//!   Only evidence counts: actual reads at most `leak_evidence_interval_ms` apart.
//!   An estimated row or an outage restarts the window and releases the rule.
//! - **burst**: intervals whose average flow is ≥ `burst_flow_lph`, in a run lasting
//!   ≥ `burst_duration_ms`; clears at the first interval below it.
//! - **backflow**: the reverse register grew by ≥ `backflow_min_l`; clears once it
//!   has not grown for `backflow_clear_ms`.
//! - **no consumption**: no litre for `no_consumption_days`; clears on consumption.
//! - **freeze**: a water temperature ≤ `freeze_temp`; clears at ≥ `freeze_clear_temp`.
//! - **low battery**: the status's battery ≤ `low_battery_pct`; clears at ≥
//!   `low_battery_clear_pct`.
//! - **no communication**: no message for `no_communication_ms` — only time can show
//!   it, so the sweep ([`AlertingProcessor::sweep`]) opens it; any message clears it.
//! - **device flags** (leak, burst, backflow, tamper, magnetic, cut cable, dry pipe,
//!   low battery, freeze, register error): every message's status counts, folded
//!   with the rows in reading time: a status raises its flags' episodes and
//!   releases the device's hold on the others. One status per reading time — of two
//!   messages about one time, the greater seq's. A status older than the settled
//!   point cannot be folded any more: each flag it raises gets a closed episode of
//!   its own, up to the next status that does not raise it.
//!
//! Event times are data times (the reading's or status's `ts`), except for
//! no-communication, which uses the service clock of the sweep and the message's
//! `received_at`.

mod fold;

use std::collections::HashSet;
use std::sync::Arc;

use meterflow_model::alert::{
    AlertFold, AlertState, EpisodeStep, FLAG_KINDS, OpenAlert, RuleRow, SOURCE_RULE, StatusPoint,
};
use meterflow_model::vee::MAX_WINDOW_READS;
use meterflow_model::{
    AlertEvent, AlertKind, DeviceFlag, DeviceStatus, EpisodeState, Flags, MeterKey, MeterState,
    Outputs, Quality, SealedBatch, StoredReading,
};

use crate::Processor;
use crate::by_time::{ByTime, insert_at};
use crate::calendar::HOUR_MS;
use crate::tenants::TenantDirectory;
use fold::{Episodes, FoldRules, Item, fold_item, merged};

/// The alerting stage; its per-meter state is `MeterState::alerts`.
pub struct AlertingProcessor {
    directory: Arc<TenantDirectory>,
}

impl AlertingProcessor {
    pub fn with_directory(directory: Arc<TenantDirectory>) -> Self {
        Self { directory }
    }

    /// Opens no-communication episodes for meters silent for too long at `now_ms`
    /// (service clock). Returns the meters whose state changed: persist them.
    pub fn sweep<'a>(
        &mut self,
        now_ms: i64,
        states: impl Iterator<Item = (&'a MeterKey, &'a mut MeterState)>,
        out: &mut Outputs,
    ) -> Vec<MeterKey> {
        states
            .filter_map(|(key, state)| {
                self.sweep_meter(now_ms, key, state, out)
                    .then(|| key.clone())
            })
            .collect()
    }

    /// The rules of the meter's tenant, as the fold reads them.
    fn fold_rules(&self, key: &MeterKey) -> FoldRules<'_> {
        let settings = &self.directory.get(&key.tenant).settings;
        FoldRules {
            rules: &settings.alert_rules,
            // A bulk meter's flow is a district's inflow: it never stops and is not
            // a customer's use, so the consumption rules do not apply to it.
            consumer: !settings.is_bulk(&key.meter),
        }
    }
}

impl Processor for AlertingProcessor {
    fn name(&self) -> &'static str {
        "alerting"
    }

    fn process(&mut self, batch: &mut SealedBatch, out: &mut Outputs) {
        for meter in &mut batch.meters {
            let rules = self.fold_rules(&meter.key);
            let settled_point = meter.state.vee.settled_ts();
            let alerts = &mut meter.state.alerts;
            let mut emitter = Emitter {
                key: &meter.key,
                revision: alerts.revision,
                events: &mut out.alerts,
            };
            note_contact(&mut emitter, alerts, &meter.readings, &meter.statuses);
            // The head stands on the window's last item (everything is folded
            // after every batch): what this batch changes at or before it lands
            // inside the window.
            let head = last_key(alerts);
            let mut window = WindowChange::default();
            take_rows(alerts, &meter.readings, &meter.replaced, &mut window);
            for status in &meter.statuses {
                take_status(alerts, status, &mut window, &mut emitter);
            }
            match window
                .first
                .filter(|first| head.is_some_and(|head| *first <= head))
            {
                Some((from, _)) => fold_again(alerts, rules, from, &mut emitter),
                None => fold_on(alerts, rules, head, &mut emitter),
            }
            settle(alerts, rules, settled_point.max(statuses_overflow(alerts)));
            alerts.revision = emitter.revision;
        }
    }

    fn sweep_meter(
        &mut self,
        now_ms: i64,
        key: &MeterKey,
        state: &mut MeterState,
        out: &mut Outputs,
    ) -> bool {
        let rules = &self.directory.get(&key.tenant).settings.alert_rules;
        let alerts = &mut state.alerts;
        let Some(seen) = alerts.last_seen_at else {
            return false;
        };
        let silent = now_ms - seen;
        if silent < rules.no_communication_ms {
            return false;
        }
        let steps = no_communication(alerts, rules.update_interval_ms, |episodes| {
            episodes.raise(AlertKind::NoCommunication, SOURCE_RULE, now_ms, || {
                format!("no message for {} h", silent / HOUR_MS)
            });
        });
        let mut emitter = Emitter {
            key,
            revision: alerts.revision,
            events: &mut out.alerts,
        };
        let changed = !steps.is_empty();
        for step in steps {
            emitter.emit(step);
        }
        alerts.revision = emitter.revision;
        changed
    }

    /// The silence rule acts once the meter has been silent `no_communication_ms`,
    /// then again each `update_interval_ms` after the open episode's last event (an
    /// episode the rule did not raise takes the rule's source at once).
    fn sweep_due(&mut self, key: &MeterKey, state: &MeterState) -> Option<i64> {
        let rules = &self.directory.get(&key.tenant).settings.alert_rules;
        let alerts = &state.alerts;
        let silent_from = alerts
            .last_seen_at?
            .saturating_add(rules.no_communication_ms);
        Some(match &alerts.no_communication {
            Some(open) if open.sources & SOURCE_RULE != 0 => {
                silent_from.max(open.last_event_at.saturating_add(rules.update_interval_ms))
            }
            _ => silent_from,
        })
    }

    /// The window's rows are the rows VEE made of its rebuilt window after the
    /// settled fold; folding them (and the persisted statuses) again gives the head
    /// and the steps the stores hold of them. Nothing is emitted.
    fn rehydrate(&mut self, key: &MeterKey, state: &mut MeterState, rows: &mut Vec<StoredReading>) {
        let rules = self.fold_rules(key);
        let alerts = &mut state.alerts;
        let floor = alerts.settled_ts;
        alerts.rows = rows
            .iter()
            .filter(|row| floor.is_none_or(|f| row.reading.ts > f))
            .filter_map(rule_row)
            .collect();
        (alerts.head, alerts.window_steps) = fold_window(alerts, rules);
    }
}

/// Turns steps into events of the meter, each with the next revision.
struct Emitter<'a> {
    key: &'a MeterKey,
    revision: i64,
    events: &'a mut Vec<AlertEvent>,
}

impl Emitter<'_> {
    fn emit(&mut self, step: EpisodeStep) {
        let revision = self
            .revision
            .saturating_add(1)
            .max(AlertEvent::first_revision(step.at, step.state));
        self.revision = revision;
        self.events.push(AlertEvent {
            tenant: self.key.tenant.to_string(),
            meter: self.key.meter.to_string(),
            kind: step.kind,
            priority: step.kind.priority(),
            state: step.state,
            opened_at: step.opened_at,
            at: step.at,
            detail: step.detail,
            revision,
        });
    }
}

/// Where a batch changed the window: the earliest fold key it touched.
#[derive(Default)]
struct WindowChange {
    first: Option<(i64, u8)>,
}

impl WindowChange {
    fn at(&mut self, key: (i64, u8)) {
        self.first = Some(self.first.map_or(key, |first| first.min(key)));
    }
}

/// Any message proves the meter can talk: it clears no-communication.
fn note_contact(
    emitter: &mut Emitter<'_>,
    alerts: &mut AlertState,
    readings: &[StoredReading],
    statuses: &[DeviceStatus],
) {
    let newest = readings
        .iter()
        .map(|r| r.received_at)
        .chain(statuses.iter().map(|s| s.received_at))
        .max();
    let Some(seen) = newest else {
        return;
    };
    alerts.last_seen_at = alerts.last_seen_at.max(Some(seen));
    // Most messages find no episode open: nothing to release.
    if alerts.no_communication.is_none() {
        return;
    }
    // Any update interval: a release is never held back.
    let steps = no_communication(alerts, i64::MAX, |episodes| {
        episodes.release(AlertKind::NoCommunication, SOURCE_RULE, seen, || {
            "meter reported again".into()
        });
    });
    for step in steps {
        emitter.emit(step);
    }
}

/// Applies `change` to the no-communication episode by the shared episode rules
/// ([`Episodes`]); it is kept apart from the fold (only the service clock shows
/// it). Returns the steps made.
fn no_communication(
    alerts: &mut AlertState,
    update_interval_ms: i64,
    change: impl FnOnce(&mut Episodes<'_>),
) -> Vec<EpisodeStep> {
    let mut open: Vec<OpenAlert> = alerts.no_communication.take().into_iter().collect();
    let mut steps = Vec::new();
    change(&mut Episodes {
        open: &mut open,
        update_interval_ms,
        steps: &mut steps,
    });
    alerts.no_communication = open.pop();
    steps
}

/// What the rules read of one of VEE's rows; none for a suspect one.
fn rule_row(row: &StoredReading) -> Option<RuleRow> {
    (row.quality != Quality::Suspect).then_some(RuleRow {
        ts: row.reading.ts,
        interval_l: row.interval_l.unwrap_or(0),
        estimated: row.quality == Quality::Estimated,
        rev: row.reading.rev,
        temp: row.reading.temp,
    })
}

/// Takes VEE's rows of the batch into the window: a row replaces the one at its
/// `ts`, a suspect row removes it, and a row VEE made before and no longer makes
/// (`replaced`, not re-emitted) leaves. Rows at or before the settled fold's end
/// are final already.
fn take_rows(
    alerts: &mut AlertState,
    rows: &[StoredReading],
    replaced: &[StoredReading],
    window: &mut WindowChange,
) {
    let floor = alerts.settled_ts;
    let inside = |ts: i64| floor.is_none_or(|f| ts > f);
    for row in rows.iter().filter(|row| inside(row.reading.ts)) {
        let ts = row.reading.ts;
        let at = alerts.rows.find_time(ts, |r| r.ts);
        match (rule_row(row), at) {
            (None, Ok(index)) => {
                alerts.rows.remove(index);
            }
            (None, Err(_)) => continue,
            (Some(new), Ok(index)) if alerts.rows[index] == new => continue,
            (Some(new), Ok(index)) => alerts.rows[index] = new,
            (Some(new), Err(index)) => insert_at(&mut alerts.rows, index, new),
        }
        window.at((ts, 0));
    }
    if replaced.is_empty() {
        return;
    }
    let made: HashSet<i64> = rows.iter().map(|r| r.reading.ts).collect();
    for gone in replaced
        .iter()
        .map(|r| r.reading.ts)
        .filter(|ts| !made.contains(ts))
    {
        if let Ok(index) = alerts.rows.binary_search_by_key(&gone, |r| r.ts) {
            alerts.rows.remove(index);
            window.at((gone, 0));
        }
    }
}

/// Takes a status into the window at its `ts`: one per `ts`, the message of the
/// greater seq deciding (a status of an older seq at a time the window holds says
/// nothing new). One at or before the settled fold's end cannot be folded in time
/// any more: each flag it raises gets an episode of its own ([`late_span_outside`]).
fn take_status(
    alerts: &mut AlertState,
    status: &DeviceStatus,
    window: &mut WindowChange,
    emitter: &mut Emitter<'_>,
) {
    let point = StatusPoint {
        ts: status.ts,
        seq: status.seq,
        flags: status.flags.bits(),
        battery: status.battery,
    };
    if alerts.settled_ts.is_some_and(|s| point.ts <= s) {
        for (flag, kind) in FLAG_KINDS {
            if status.flags.contains(flag) {
                late_span_outside(alerts, flag, kind, point.ts, emitter);
            }
        }
        return;
    }
    if alerts.statuses.insert(point) {
        window.at(Item::Status(point).key());
    }
}

/// A raised flag at or before the settled fold's end cannot be folded in reading
/// time any more: it becomes a closed episode of its own, from `at` to the next
/// thing known of it — the window's first status that does not raise it (else the
/// settled point, where the settled fold did not hold it), or the start of a later
/// episode of its kind open at the settled point or now — unless one of those
/// episodes already covers it.
fn late_span_outside(
    alerts: &AlertState,
    flag: DeviceFlag,
    kind: AlertKind,
    at: i64,
    emitter: &mut Emitter<'_>,
) {
    let lowered = alerts
        .statuses
        .iter()
        .find(|s| !Flags::from_bits(s.flags).is_some_and(|f| f.contains(flag)))
        .map(|s| s.ts);
    let mut until = lowered.or(alerts.settled_ts).unwrap_or(at).max(at);
    let known = alerts
        .settled
        .open
        .iter()
        .chain(&alerts.head.open)
        .filter(|a| a.kind == kind);
    for alert in known {
        if alert.opened_at <= at {
            return;
        }
        until = until.min(alert.opened_at);
    }
    let name = flag.name();
    for (state, step_at, detail) in [
        (
            EpisodeState::Opened,
            at,
            format!("device flag {name} (reported late)"),
        ),
        (
            EpisodeState::Cleared,
            until,
            format!("device flag {name} lowered by a newer message"),
        ),
    ] {
        emitter.emit(EpisodeStep {
            kind,
            state,
            opened_at: at,
            at: step_at,
            detail,
        });
    }
}

/// Folds the window's items after `head` (the key of the last item folded before
/// this batch) onto the head — a batch that only added data newer than everything
/// folded — emitting their steps.
fn fold_on(
    alerts: &mut AlertState,
    rules: FoldRules<'_>,
    head: Option<(i64, u8)>,
    emitter: &mut Emitter<'_>,
) {
    let folded = |key: (i64, u8)| head.is_some_and(|head| key <= head);
    let first_row = alerts.rows.partition_point(|r| folded(Item::Row(r).key()));
    // A status folds after a row of its time: one at the head's time is new when
    // the head is a row.
    let first_status = head.map_or(
        i64::MIN,
        |(ts, item)| if item == 0 { ts } else { ts.saturating_add(1) },
    );
    let new = merged(
        alerts.rows.range(first_row..),
        alerts.statuses.from_ts(first_status),
    );
    let steps = fold_items(&mut alerts.head, rules, new);
    for step in &steps {
        emitter.emit(step.clone());
    }
    alerts.window_steps.extend(steps);
}

/// Folds the whole window again from the settled fold (data landed inside it) and
/// emits what changed against the steps it made before.
fn fold_again(alerts: &mut AlertState, rules: FoldRules<'_>, from: i64, emitter: &mut Emitter<'_>) {
    let (head, steps) = fold_window(alerts, rules);
    for step in changed_steps(&alerts.window_steps, &steps, &head.open, from) {
        emitter.emit(step);
    }
    alerts.head = head;
    alerts.window_steps = steps;
}

/// The settled fold with every window item folded in, and the steps they make.
fn fold_window(alerts: &AlertState, rules: FoldRules<'_>) -> (AlertFold, Vec<EpisodeStep>) {
    let mut head = alerts.settled.clone();
    let steps = fold_items(
        &mut head,
        rules,
        merged(&alerts.rows, alerts.statuses.iter()),
    );
    (head, steps)
}

/// Folds `items` into `fold`; returns the steps they make.
fn fold_items<'a>(
    fold: &mut AlertFold,
    rules: FoldRules<'_>,
    items: impl Iterator<Item = Item<'a>>,
) -> Vec<EpisodeStep> {
    let mut steps = Vec::new();
    for item in items {
        fold_item(fold, rules, item, &mut steps);
    }
    steps
}

/// The fold key of the window's last item: where the head stands.
fn last_key(alerts: &AlertState) -> Option<(i64, u8)> {
    let row = alerts.rows.back().map(|r| Item::Row(r).key());
    let status = alerts.statuses.last().map(|s| Item::Status(s).key());
    row.max(status)
}

/// What to emit when the window's steps go from `old` to `new` (`open`: the
/// episodes open after `new`), so that the latest step the stores keep of every
/// episode is `new`'s: episodes opened in `old` and absent from `new` are
/// withdrawn (at `from`, where the change begins, or their opening if later);
/// steps of `new` that `old` did not make are emitted in order; and an episode
/// whose latest step changed without a new one (its clearing went away) gets its
/// latest step again — or, opened before the window and stepped in it no more, an
/// update that it is open.
fn changed_steps(
    old: &[EpisodeStep],
    new: &[EpisodeStep],
    open: &[OpenAlert],
    from: i64,
) -> Vec<EpisodeStep> {
    let mut out = Vec::new();
    let in_new = |episode: (AlertKind, i64)| new.iter().any(|s| s.episode() == episode);
    for gone in old
        .iter()
        .filter(|s| s.state == EpisodeState::Opened && !in_new(s.episode()))
    {
        out.push(EpisodeStep {
            state: EpisodeState::Withdrawn,
            at: from.max(gone.opened_at),
            detail: "withdrawn: data that arrived later shows it did not happen".into(),
            ..gone.clone()
        });
    }
    let mut matched = vec![false; old.len()];
    for step in new {
        match (0..old.len()).find(|&i| !matched[i] && old[i] == *step) {
            Some(i) => matched[i] = true,
            None => out.push(step.clone()),
        }
    }
    let mut episodes: Vec<(AlertKind, i64)> =
        old.iter().chain(new).map(EpisodeStep::episode).collect();
    episodes.sort_unstable();
    episodes.dedup();
    for episode in episodes {
        let latest =
            |steps: &[EpisodeStep]| steps.iter().rev().find(|s| s.episode() == episode).cloned();
        let latest_new = latest(new);
        // What the stores hold of the episode once `out` is applied.
        let held = latest(&out).or_else(|| latest(old));
        if held == latest_new {
            continue;
        }
        match latest_new {
            Some(step) => out.push(step),
            None => {
                let Some(alert) = open.iter().find(|a| (a.kind, a.opened_at) == episode) else {
                    continue;
                };
                out.push(EpisodeStep {
                    kind: alert.kind,
                    state: EpisodeState::Updated,
                    opened_at: alert.opened_at,
                    at: alert.last_event_at,
                    detail: "open again: data that arrived later undid its clearing".into(),
                });
            }
        }
    }
    out
}

/// Where the settled fold must reach so that at most [`MAX_STATUSES`] statuses
/// stay in the window. A status's time is one of its message's reads, and VEE's
/// window holds at most as many, so a meter stays within it unless its messages'
/// reads are suspect or replaced (a fault, or a hostile client sending one read per
/// message at new times): its oldest statuses, and the rows up to them, settle
/// early — their episodes are final from then on — so its persisted state stays
/// bounded.
fn statuses_overflow(alerts: &AlertState) -> Option<i64> {
    let excess = alerts.statuses.len().checked_sub(MAX_STATUSES + 1)?;
    alerts.statuses.nth(excess).map(|s| s.ts)
}

/// Most device statuses a meter's window keeps (see `statuses_overflow`): one per
/// read of VEE's window.
pub const MAX_STATUSES: usize = MAX_WINDOW_READS;

/// Folds the window's items up to VEE's settled point into the settled fold for
/// good (their steps were emitted when they were first folded) and drops them.
fn settle(alerts: &mut AlertState, rules: FoldRules<'_>, point: Option<i64>) {
    let Some(point) = point else {
        return;
    };
    if alerts.settled_ts.is_some_and(|s| point <= s) {
        return;
    }
    // Counted from the front: the rows settling are few (a message's worth) and are
    // folded next, where a binary search would touch the middle of the window.
    let rows = alerts.rows.iter().take_while(|r| r.ts <= point).count();
    // Their steps were emitted when the head first folded them.
    let statuses = alerts.statuses.iter().take_while(|s| s.ts <= point);
    let settling = merged(alerts.rows.range(..rows), statuses);
    fold_items(&mut alerts.settled, rules, settling);
    alerts.rows.drain(..rows);
    alerts.statuses.drop_through(point);
    alerts.window_steps.retain(|s| s.at > point);
    alerts.settled_ts = Some(point);
}
