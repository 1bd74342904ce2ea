//! Analytics: per tenant and district (district metered area), per-minute, hourly
//! and daily usage, meters reporting, minimum night flow, percentiles of per-meter
//! hourly usage and the top consumers of the day (DESIGN §4).
//!
//! Rules:
//! - A row counts when it is non-suspect, has an interval (a meter's very first read
//!   measures none) and is newer than the meter's last counted row. Its
//!   `interval_l` is attributed to the window containing the end of its interval,
//!   `ts - 1 ms`: an hourly read stamped 03:00 measured 02:00–03:00 and lands in the
//!   02:00 hour.
//! - **Corrections** (issue 10, case 6): when VEE re-decides rows already counted —
//!   a late read replaces a gap's estimates, a read turns suspect or actual — it
//!   hands the earlier versions along ([`MeterBatch::row_changes`]: per row, what it
//!   counted before and counts now). The difference is added to (or taken from) the
//!   usage, inflow and night-hour litres of the windows the row ends in, while they
//!   are open, to the meter's running hour and day, and to its entry in the day's
//!   top list. Each meter keeps a ledger of the open windows this process counted
//!   it in (`MeterAnalyticsState::ledger`: rows and litres per window, and what it
//!   put in an hour's sketch), so a correction there also moves `meters` (a meter
//!   whose last counted row in a window turned suspect leaves it, one whose late
//!   read lands in a window it had none in enters it) and the sketch (the hour's
//!   old value out, the new one in), and an unlisted meter enters a past day's top
//!   list with its day total. So every open window's litres, meters and
//!   percentiles and a meter's top-list litres are those of the rows in time order,
//!   whatever the arrival order (property-tested in `register_order.rs`). The
//!   ledger is not persisted: when a shard hydrates a meter it is rebuilt from the
//!   rows VEE's rebuilt pass makes after its settled point (`rehydrate`), so it
//!   holds every window that began after that point. What a correction takes
//!   back there beyond what this process's partial holds — litres, a meter
//!   reporting, an hour value an earlier process put in the sketch — is kept as
//!   [`DistrictUsage::taken`], and the rollup takes it from the total, in which
//!   the earlier process's published row is (embedded mode seeds it; a
//!   processor's share holds its own run only, so there it stays counted).
//!   Windows that began before the settled point (possible only with retentions
//!   longer than the late window) follow in litres only.
//! - Minute windows are UTC minutes (every time zone's offset is a whole number of
//!   minutes); hour and day windows are the tenant's local hours and days (its
//!   tariff's time zone), DST included.
//! - `meters` counts meters with a counted row ending in the window.
//! - Percentiles: each meter's usage of a local hour enters that hour's sketch once
//!   the meter has a counted row in a later hour (the hour is then complete for
//!   that meter); a correction can take it out again.
//! - Minimum night flow: per local day, the district's usage in the 02:00 and 03:00
//!   hours; the lower one, in L/h. (On a fall-back night the repeated hour adds up.)
//! - Top consumers: per tenant and local day, the meters with the most litres.
//! - Bulk (inflow) meters (`bulk_meters` of the tenant): a counted row of one adds
//!   its litres to its district's `inflow_l` in the minute, hour and day it ends in,
//!   and a day's 02:00 and 03:00 hours to `inflow_night_hour_l` (the inflow's
//!   minimum night flow, by the night flow's rule). It counts in no customer figure:
//!   not `usage_l`, `meters`, percentiles, night flow or top consumers.
//! - Windows stay open for late rows for their retention after they end (settings);
//!   a row for a window past it is not counted, so a published total is never
//!   replaced by a partial one.
//! - Flush: by default (`flush_interval_ms` 0) every window and top list a batch
//!   changed is emitted into `Outputs::districts` / `Outputs::top` with that batch,
//!   so the sink stores district hours in the same commit as the meter states that
//!   counted them (a `kill -9` loses none of them), at a cost of what the batch
//!   changed ([`AnalyticsPartial::emit_changed`]); windows past retention are dropped
//!   every 5 s of batch time. With `flush_interval_ms` > 0, changed windows are
//!   emitted, and expired ones dropped, when the batch's `now_ms` (or a tick's)
//!   reaches the next multiple of it.
//!
//! Everything is a per-shard [`AnalyticsPartial`]; partials merge (associatively, in
//! any order) with [`AnalyticsPartial::merge`], and rows flushed by different shards
//! merge with [`DistrictRollup`], which also adds up each tenant's headline summary.
//!
//! [`MeterBatch::row_changes`]: meterflow_model::MeterBatch::row_changes

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};
use meterflow_model::analytics::{MeterAnalyticsState, NIGHT_HOURS, WindowLedger, add_signed};
use meterflow_model::batch::{RowChange, counted_litres};
use meterflow_model::processing::AnalyticsSettings;
use meterflow_model::time::{day_of, day_string};
use meterflow_model::{
    DistrictUsage, MeterKey, MeterState, Outputs, Quality, Resolution, SealedBatch, StoredReading,
    TenantSummary, TopConsumers,
};

use crate::Processor;
use crate::calendar::{HOUR_MS, LocalCalendar, MINUTE_MS};
use crate::tenants::{PerTenant, TenantDirectory};

const DAY_MS: i64 = 24 * HOUR_MS;

/// Longest a window can be: a local day with a DST fall-back hour.
fn max_width_ms(resolution: Resolution) -> i64 {
    match resolution {
        Resolution::Minute => MINUTE_MS,
        Resolution::Hour => HOUR_MS,
        Resolution::Day => DAY_MS + HOUR_MS,
    }
}

/// How often windows past retention are dropped when windows are published with
/// every batch (`flush_interval_ms` 0), by batch time: dropping looks at every
/// window held, so not with every batch.
const PRUNE_INTERVAL_MS: i64 = 5_000;

type WindowKey = (u32, Resolution, i64);
type TopKey = (u32, i64);

#[derive(Clone, Debug)]
struct Window {
    row: DistrictUsage,
    dirty: bool,
}

#[derive(Clone, Debug)]
struct TopWindow {
    list: TopConsumers,
    dirty: bool,
    /// In [`AnalyticsPartial::touched_tops`]: looked at since the last emission
    /// (its list may not have changed: then `dirty` is false).
    queued: bool,
}

/// Aggregates over some set of meters (one shard's, or merged). See the module doc.
#[derive(Clone, Debug, Default)]
pub struct AnalyticsPartial {
    /// (tenant, district) of each scope id.
    scopes: Vec<(String, String)>,
    scope_ids: HashMap<(String, String), u32>,
    tenants: Vec<String>,
    tenant_ids: HashMap<String, u32>,
    windows: HashMap<WindowKey, Window>,
    tops: HashMap<TopKey, TopWindow>,
    top_n: usize,
    /// The windows that turned dirty since the last emission, each once: what
    /// [`emit_changed`](Self::emit_changed) looks at, so that emitting after every
    /// batch costs what the batch changed, not every window held.
    changed_windows: Vec<WindowKey>,
    /// The top lists looked at since the last emission, each once.
    touched_tops: Vec<TopKey>,
}

/// A partial's content keyed by names, independent of ids and insertion order.
pub type PartialSnapshot = (
    BTreeMap<(String, String, Resolution, i64), DistrictUsage>,
    BTreeMap<(String, i64), TopConsumers>,
);

impl AnalyticsPartial {
    pub fn new(top_n: usize) -> Self {
        Self {
            top_n,
            ..Self::default()
        }
    }

    fn scope_id(&mut self, tenant: &str, district: &str) -> u32 {
        let key = (tenant.to_string(), district.to_string());
        if let Some(id) = self.scope_ids.get(&key) {
            return *id;
        }
        let id = self.scopes.len() as u32;
        self.scopes.push(key.clone());
        self.scope_ids.insert(key, id);
        id
    }

    fn tenant_id(&mut self, tenant: &str) -> u32 {
        if let Some(id) = self.tenant_ids.get(tenant) {
            return *id;
        }
        let id = self.tenants.len() as u32;
        self.tenants.push(tenant.to_string());
        self.tenant_ids.insert(tenant.to_string(), id);
        id
    }

    fn window(&mut self, scope: u32, resolution: Resolution, start_ms: i64) -> &mut Window {
        let scopes = &self.scopes;
        let key = (scope, resolution, start_ms);
        let window = self.windows.entry(key).or_insert_with(|| {
            let (tenant, district) = &scopes[scope as usize];
            Window {
                row: DistrictUsage::new(tenant, district, resolution, start_ms),
                dirty: false,
            }
        });
        if !window.dirty {
            window.dirty = true;
            self.changed_windows.push(key);
        }
        window
    }

    fn top(
        &mut self,
        tenant: u32,
        day_start_ms: i64,
        day_label: impl FnOnce() -> String,
    ) -> &mut TopWindow {
        let tenants = &self.tenants;
        let limit = self.top_n;
        let key = (tenant, day_start_ms);
        let top = self.tops.entry(key).or_insert_with(|| TopWindow {
            list: TopConsumers::new(&tenants[tenant as usize], day_label(), day_start_ms, limit),
            dirty: true,
            queued: false,
        });
        if !top.queued {
            top.queued = true;
            self.touched_tops.push(key);
        }
        top
    }

    /// Adds another partial (e.g. another shard's): associative and commutative.
    pub fn merge(&mut self, other: &AnalyticsPartial) {
        self.top_n = self.top_n.max(other.top_n);
        for (&(scope, resolution, start), theirs) in &other.windows {
            let (tenant, district) = &other.scopes[scope as usize];
            let mine = self.scope_id(tenant, district);
            match self.windows.get_mut(&(mine, resolution, start)) {
                Some(window) => {
                    window.row.merge(&theirs.row);
                    window.dirty |= theirs.dirty;
                }
                None => {
                    self.windows
                        .insert((mine, resolution, start), theirs.clone());
                }
            }
        }
        for (&(tenant, day), theirs) in &other.tops {
            let mine = self.tenant_id(&other.tenants[tenant as usize]);
            match self.tops.get_mut(&(mine, day)) {
                Some(top) => {
                    top.list.merge(&theirs.list);
                    top.dirty |= theirs.dirty;
                }
                None => {
                    self.tops.insert((mine, day), theirs.clone());
                }
            }
        }
        self.requeue();
    }

    /// Rebuilds the lists of what changed since the last emission from the dirty
    /// flags (after a merge, which sets flags wholesale).
    fn requeue(&mut self) {
        self.changed_windows.clear();
        for (key, window) in &self.windows {
            if window.dirty {
                self.changed_windows.push(*key);
            }
        }
        self.touched_tops.clear();
        for (key, top) in &mut self.tops {
            top.queued = top.dirty;
            if top.dirty {
                self.touched_tops.push(*key);
            }
        }
    }

    /// The content by names, with derived fields fresh (for comparisons and tests).
    pub fn snapshot(&self) -> PartialSnapshot {
        let windows = self
            .windows
            .iter()
            .map(|(&(scope, resolution, start), window)| {
                let (tenant, district) = self.scopes[scope as usize].clone();
                let mut row = window.row.clone();
                row.refresh_derived();
                ((tenant, district, resolution, start), row)
            })
            .collect();
        let tops = self
            .tops
            .iter()
            .map(|(&(tenant, day), top)| {
                (
                    (self.tenants[tenant as usize].clone(), day),
                    top.list.clone(),
                )
            })
            .collect();
        (windows, tops)
    }

    /// Emits changed windows (sorted, so output order is deterministic) and drops
    /// those past retention at `now_ms`.
    pub fn flush(&mut self, now_ms: i64, settings: &AnalyticsSettings, out: &mut Outputs) {
        self.emit_changed(out);
        self.windows
            .retain(|&(_, resolution, start), _| is_open(start, resolution, now_ms, settings));
        self.tops
            .retain(|&(_, day), _| is_open(day, Resolution::Day, now_ms, settings));
    }

    /// Emits the windows and top lists that changed since the last emission (sorted,
    /// so output order is deterministic), at a cost of what changed.
    pub fn emit_changed(&mut self, out: &mut Outputs) {
        let first = out.districts.len();
        for key in self.changed_windows.drain(..) {
            let Some(window) = self.windows.get_mut(&key).filter(|w| w.dirty) else {
                continue;
            };
            window.row.refresh_derived();
            out.districts.push(window.row.clone());
            window.dirty = false;
        }
        out.districts[first..].sort_unstable_by(|a, b| {
            (&a.tenant, &a.district, a.resolution, a.start_ms).cmp(&(
                &b.tenant,
                &b.district,
                b.resolution,
                b.start_ms,
            ))
        });
        let first = out.top.len();
        for key in self.touched_tops.drain(..) {
            let Some(top) = self.tops.get_mut(&key) else {
                continue;
            };
            top.queued = false;
            if top.dirty {
                out.top.push(top.list.clone());
                top.dirty = false;
            }
        }
        out.top[first..]
            .sort_unstable_by(|a, b| (&a.tenant, a.day_start_ms).cmp(&(&b.tenant, b.day_start_ms)));
    }
}

fn retention_ms(resolution: Resolution, settings: &AnalyticsSettings) -> i64 {
    match resolution {
        Resolution::Minute => settings.minute_retention_ms,
        Resolution::Hour => settings.hour_retention_ms,
        Resolution::Day => settings.day_retention_ms,
    }
}

/// The minute, hour and day windows an interval ending at `end` falls in.
fn windows_of(calendar: &mut LocalCalendar, end: i64) -> [(Resolution, i64); 3] {
    [
        (Resolution::Minute, end.div_euclid(MINUTE_MS) * MINUTE_MS),
        (Resolution::Hour, calendar.hour_start(end)),
        (Resolution::Day, calendar.day(end).start_ms),
    ]
}

/// Whether a window still takes rows at `now_ms`.
fn is_open(
    start_ms: i64,
    resolution: Resolution,
    now_ms: i64,
    settings: &AnalyticsSettings,
) -> bool {
    start_ms + max_width_ms(resolution) + retention_ms(resolution, settings) > now_ms
}

struct TenantAnalytics {
    calendar: LocalCalendar,
    /// Scope id of each district seen, by district name.
    scope_of_district: HashMap<String, u32>,
    tenant_id: Option<u32>,
}

/// The analytics stage: per-shard partial aggregates; its per-meter state is
/// `MeterState::analytics`.
pub struct AnalyticsProcessor {
    tenants: PerTenant<TenantAnalytics>,
    settings: AnalyticsSettings,
    partial: AnalyticsPartial,
    next_flush_ms: Option<i64>,
}

impl AnalyticsProcessor {
    pub fn with_directory(directory: Arc<TenantDirectory>) -> Self {
        let settings = directory.analytics.clone();
        Self {
            partial: AnalyticsPartial::new(settings.top_n),
            settings,
            tenants: PerTenant::new(directory, |entry| TenantAnalytics {
                calendar: entry.calendar.clone(),
                scope_of_district: HashMap::new(),
                tenant_id: None,
            }),
            next_flush_ms: None,
        }
    }

    /// This shard's aggregates.
    pub fn partial(&self) -> &AnalyticsPartial {
        &self.partial
    }

    /// Emits every changed window now, whatever the flush boundary.
    pub fn flush(&mut self, now_ms: i64, out: &mut Outputs) {
        self.partial.flush(now_ms, &self.settings, out);
        self.next_flush_ms = Some(self.boundary_after(now_ms));
    }

    fn boundary_after(&self, now_ms: i64) -> i64 {
        let interval = match self.settings.flush_interval_ms {
            0 => PRUNE_INTERVAL_MS,
            interval => interval,
        };
        (now_ms.div_euclid(interval) + 1) * interval
    }

    /// Emits what changed when windows are published with every batch
    /// (`flush_interval_ms` 0); flushes — emits and drops windows past retention —
    /// when `now_ms` reached the next boundary (the first call only sets it).
    fn flush_if_due(&mut self, now_ms: i64, out: &mut Outputs) {
        if self.settings.flush_interval_ms == 0 {
            self.partial.emit_changed(out);
        }
        match self.next_flush_ms {
            Some(due) if now_ms >= due => self.flush(now_ms, out),
            Some(_) => {}
            None => self.next_flush_ms = Some(self.boundary_after(now_ms)),
        }
    }
}

impl Processor for AnalyticsProcessor {
    fn name(&self) -> &'static str {
        "analytics"
    }

    fn process(&mut self, batch: &mut SealedBatch, out: &mut Outputs) {
        let now_ms = batch.now_ms;
        for meter in &mut batch.meters {
            let (entry, runtime) = self.tenants.get(&meter.key.tenant);
            let district = entry.settings.district_of(&meter.key.meter);
            let bulk = entry.settings.is_bulk(&meter.key.meter);
            let tenant = meter.key.tenant.as_str();
            let scope = match runtime.scope_of_district.get(district) {
                Some(scope) => *scope,
                None => {
                    let scope = self.partial.scope_id(tenant, district);
                    runtime
                        .scope_of_district
                        .insert(district.to_string(), scope);
                    scope
                }
            };
            let tenant_id = *runtime
                .tenant_id
                .get_or_insert_with(|| self.partial.tenant_id(tenant));
            let state = &mut meter.state.analytics;
            let since = *state
                .ledger
                .since
                .get_or_insert(state.last_ts.unwrap_or(i64::MIN));
            let changes = state
                .last_ts
                .map_or_else(Vec::new, |counted_up_to| meter.row_changes(counted_up_to));
            let settled_ts = meter.state.vee.settled_ts();
            let mut folder = MeterFolder {
                partial: &mut self.partial,
                settings: &self.settings,
                calendar: &mut runtime.calendar,
                state: &mut meter.state.analytics,
                scope,
                tenant_id,
                meter: meter.key.meter.as_str(),
                now_ms,
                since,
                touched_hour: None,
            };
            let newest_before = folder.state.ledger.newest_reporting_hour();
            for change in changes {
                folder.revise(change, bulk);
            }
            for row in &meter.readings {
                let ts = row.reading.ts;
                if row.quality == Quality::Suspect
                    || folder.state.last_ts.is_some_and(|last| ts <= last)
                {
                    continue;
                }
                match row.interval_l {
                    Some(litres) if bulk => folder.fold_inflow(ts, litres),
                    Some(litres) => folder.fold(ts, litres),
                    // A meter's first read measures no interval yet.
                    None => folder.state.last_ts = Some(ts),
                }
            }
            let newest = folder.sketch_finished_hours(newest_before);
            if folder.state.ledger.is_full() {
                folder.forget_fixed(settled_ts, newest);
            }
        }
        self.flush_if_due(now_ms, out);
    }

    fn tick(&mut self, now_ms: i64, out: &mut Outputs) {
        self.flush_if_due(now_ms, out);
    }

    fn finish(&mut self, now_ms: i64, out: &mut Outputs) {
        self.flush(now_ms, out);
    }

    /// Rebuilds the meter's ledger from the rows VEE's rebuilt pass made after its
    /// settled point — the rows the earlier process counted there — so that a
    /// correction after a restart moves meters reporting and the hour's sketch of
    /// windows the earlier process published (taking back what this process's
    /// partial does not hold, [`DistrictUsage::taken`]). Windows starting at or after
    /// the settled point are whole in it.
    fn rehydrate(&mut self, key: &MeterKey, state: &mut MeterState, rows: &mut Vec<StoredReading>) {
        let (entry, runtime) = self.tenants.get(&key.tenant);
        let settled = state.vee.settled_ts().unwrap_or(i64::MIN);
        let analytics = &mut state.analytics;
        analytics.ledger = WindowLedger::default();
        analytics.ledger.since = Some(settled);
        if entry.settings.is_bulk(&key.meter) {
            return;
        }
        let counted_up_to = analytics.last_ts.unwrap_or(i64::MIN);
        let calendar = &mut runtime.calendar;
        for row in rows.iter() {
            let ts = row.reading.ts;
            let Some(litres) = counted_litres(row).filter(|_| ts > settled && ts <= counted_up_to)
            else {
                continue;
            };
            for (resolution, start) in windows_of(calendar, ts - 1) {
                if start >= settled {
                    analytics.ledger.count(resolution, start, litres);
                }
            }
        }
        // The earlier process put each hour the meter had finished in its sketch.
        let newest = analytics.ledger.newest_reporting_hour();
        for hour in analytics.ledger.list_mut(Resolution::Hour) {
            hour.sketched = hour.sketch_value(newest);
        }
    }
}

/// Folds one meter's rows into the partial.
struct MeterFolder<'a> {
    partial: &'a mut AnalyticsPartial,
    settings: &'a AnalyticsSettings,
    calendar: &'a mut LocalCalendar,
    state: &'a mut MeterAnalyticsState,
    scope: u32,
    tenant_id: u32,
    meter: &'a str,
    now_ms: i64,
    /// Windows starting at or after this are in the meter's ledger
    /// ([`WindowLedger::since`](meterflow_model::analytics::WindowLedger::since)).
    since: i64,
    /// The earliest hour the batch changed the meter's rows in.
    touched_hour: Option<i64>,
}

impl MeterFolder<'_> {
    fn open(&self, start_ms: i64, resolution: Resolution) -> bool {
        is_open(start_ms, resolution, self.now_ms, self.settings)
    }

    /// Folds a bulk meter's interval: the district's inflow in every window it ends
    /// in (and the day's night hours), nothing of the customers' figures.
    fn fold_inflow(&mut self, ts: i64, litres: u64) {
        self.state.last_ts = Some(ts);
        self.add_to_windows(ts - 1, i64::try_from(litres).unwrap_or(i64::MAX), true);
    }

    /// Adds `delta` litres ending at `end` to the open minute, hour and day windows
    /// (and the day's night hour) it falls in: to `usage_l`, or to the inflow for a
    /// bulk meter.
    fn add_to_windows(&mut self, end: i64, delta: i64, bulk: bool) {
        let minute = end.div_euclid(MINUTE_MS) * MINUTE_MS;
        let hour = self.calendar.hour_start(end);
        let day = self.calendar.day(end).start_ms;
        let night_slot = NIGHT_HOURS
            .iter()
            .position(|h| *h == self.calendar.hour_of_day(end));
        for (resolution, start) in [
            (Resolution::Minute, minute),
            (Resolution::Hour, hour),
            (Resolution::Day, day),
        ] {
            if !self.open(start, resolution) {
                continue;
            }
            let row = &mut self.partial.window(self.scope, resolution, start).row;
            let taken = &mut row.taken;
            match bulk {
                true => {
                    let held = row.inflow_l.unwrap_or(0);
                    row.inflow_l = Some(add_signed(held, &mut taken.inflow_l, delta));
                }
                false => row.usage_l = add_signed(row.usage_l, &mut taken.usage_l, delta),
            }
            if let (Resolution::Day, Some(slot)) = (resolution, night_slot) {
                let (night, taken) = match bulk {
                    true => (
                        &mut row.inflow_night_hour_l[slot],
                        &mut taken.inflow_night_hour_l[slot],
                    ),
                    false => (&mut row.night_hour_l[slot], &mut taken.night_hour_l[slot]),
                };
                *night = Some(add_signed(night.unwrap_or(0), taken, delta));
            }
        }
    }

    /// VEE re-decided a row this meter counted (a late read replaced estimates, or
    /// turned a read suspect): the windows it ends in follow, while they are open —
    /// their litres, and for windows in the ledger whether the meter reports there
    /// and the hour's sketch (settled in [`sketch_finished_hours`]) — and so do the
    /// meter's running hour and day and its top-list entry.
    ///
    /// [`sketch_finished_hours`]: Self::sketch_finished_hours
    fn revise(&mut self, change: RowChange, bulk: bool) {
        let delta = change.delta();
        let end = change.ts - 1;
        if delta != 0 {
            self.add_to_windows(end, delta, bulk);
        }
        if bulk {
            return;
        }
        let rows_delta = i64::from(change.now.is_some()) - i64::from(change.before.is_some());
        for (resolution, start) in windows_of(self.calendar, end) {
            if start < self.since || !self.open(start, resolution) {
                continue;
            }
            let entry = self.state.ledger.entry(resolution, start);
            let reported = entry.rows > 0;
            entry.rows = entry.rows.saturating_add_signed(rows_delta as i32);
            entry.litres = entry.litres.saturating_add_signed(delta);
            let reports = entry.rows > 0;
            if reported != reports {
                let row = &mut self.partial.window(self.scope, resolution, start).row;
                let step = if reports { 1 } else { -1 };
                row.meters = add_signed(row.meters, &mut row.taken.meters, step);
            }
            if resolution == Resolution::Hour {
                self.touch_hour(start);
            }
        }
        if delta == 0 {
            return;
        }
        let hour = self.calendar.hour_start(end);
        let label = self.calendar.day(end);
        let day = label.start_ms;
        if hour == self.state.hour_start {
            self.state.hour_l = self.state.hour_l.saturating_add_signed(delta);
        }
        // The meter's running day is the day of its newest counted row (a meter whose
        // only row there is its first read has counted nothing in it yet).
        let newest_day = self
            .state
            .last_ts
            .map(|ts| self.calendar.day(ts - 1).start_ms);
        let today = newest_day == Some(day);
        if today {
            if self.state.day_start != day {
                self.state.day_start = day;
                self.state.day_l = 0;
            }
            self.state.day_l = self.state.day_l.saturating_add_signed(delta);
        }
        if self.open(day, Resolution::Day) {
            // The meter's day total: its running day's, or the ledger's.
            let ledger_day = (day >= self.since)
                .then(|| self.state.ledger.get(Resolution::Day, day))
                .flatten()
                .map(|entry| entry.litres);
            let running = today.then_some(self.state.day_l).or(ledger_day);
            let top = self.partial.top(self.tenant_id, day, || label.day_label());
            if !top.list.correct(self.meter, delta) {
                // Unlisted: its day total is known on its running day or from the
                // ledger. Else this run knows only the change (an earlier run may
                // have counted the meter that day: the rollup adds the change to
                // what that run published); when the list has room, every meter
                // this run offered that day is listed, so the change is what this
                // run counted of it.
                match running {
                    Some(total) => top.list.offer(self.meter, total),
                    None => {
                        top.list.change_unknown(self.meter, delta);
                        if top.list.entries.len() < top.list.limit {
                            top.list.offer(self.meter, delta.max(0).unsigned_abs());
                        }
                    }
                }
            }
            top.dirty = true;
        }
    }

    /// The batch changed the meter's rows ending in the hour starting at `start`.
    fn touch_hour(&mut self, start: i64) {
        self.touched_hour = Some(self.touched_hour.map_or(start, |t| t.min(start)));
    }

    /// One more row ending in a window, counted by [`fold`](Self::fold): whether the
    /// meter reports there for the first time. The ledger says for windows in it;
    /// for one an earlier process may have counted the meter in, `by_state` (the
    /// window is not the one the meter was last counted in).
    fn first_report(
        &mut self,
        resolution: Resolution,
        start: i64,
        litres: u64,
        by_state: bool,
    ) -> bool {
        if start < self.since {
            return by_state;
        }
        if resolution == Resolution::Hour {
            self.touch_hour(start);
        }
        self.state.ledger.count(resolution, start, litres)
    }

    /// Puts each of the meter's finished hours in the ledger into the hour's sketch
    /// with its litres as they are now, and takes out what it put there before:
    /// an hour is finished for a meter that reports in a later hour. Looks only at
    /// hours from the earliest one the batch changed, or that was or is the newest.
    /// Returns the newest hour the meter reports in.
    fn sketch_finished_hours(&mut self, newest_before: Option<i64>) -> Option<i64> {
        let newest = self.state.ledger.newest_reporting_hour();
        let Some(from) = [self.touched_hour, newest_before, newest]
            .into_iter()
            .flatten()
            .min()
        else {
            return newest;
        };
        self.touched_hour = None;
        let hours = self.state.ledger.list_mut(Resolution::Hour);
        let first = hours.partition_point(|e| e.start_ms < from);
        for entry in &mut hours[first..] {
            let wanted = entry.sketch_value(newest);
            if wanted == entry.sketched
                || !is_open(entry.start_ms, Resolution::Hour, self.now_ms, self.settings)
            {
                continue;
            }
            let window = self
                .partial
                .window(self.scope, Resolution::Hour, entry.start_ms);
            // A value an earlier process put in is taken from the total.
            if let Some(value) = entry.sketched
                && !window.row.meter_hour_sketch.remove(value)
            {
                window.row.taken.sketch.add(value);
            }
            if let Some(value) = wanted {
                window.row.meter_hour_sketch.add(value);
            }
            entry.sketched = wanted;
        }
        newest
    }

    /// Drops the ledger's windows that can change no more: closed ones, and those
    /// ending at or before VEE's settled point (no row there is re-decided) — but
    /// not the newest hour the meter reports in (`newest`), which goes into its
    /// sketch when a later hour comes. Oldest first: what stays is newer than what
    /// goes. (Until dropped, an entry is looked at only while its window is open.)
    fn forget_fixed(&mut self, settled_ts: Option<i64>, newest: Option<i64>) {
        let (now_ms, settings) = (self.now_ms, self.settings);
        let settled = settled_ts.unwrap_or(i64::MIN);
        for resolution in [Resolution::Minute, Resolution::Hour, Resolution::Day] {
            let list = self.state.ledger.list_mut(resolution);
            let fixed = list
                .iter()
                .take_while(|e| {
                    let running = resolution == Resolution::Hour && Some(e.start_ms) == newest;
                    let ended = e.start_ms.saturating_add(max_width_ms(resolution)) <= settled;
                    !running && (ended || !is_open(e.start_ms, resolution, now_ms, settings))
                })
                .count();
            list.drain(..fixed);
        }
    }

    fn fold(&mut self, ts: i64, litres: u64) {
        self.state.last_ts = Some(ts);
        let end = ts - 1;

        let minute = end.div_euclid(MINUTE_MS) * MINUTE_MS;
        if self.open(minute, Resolution::Minute) {
            let by_state = self.state.minute_start != minute;
            let new_meter = self.first_report(Resolution::Minute, minute, litres, by_state);
            let window = self.partial.window(self.scope, Resolution::Minute, minute);
            window.row.usage_l += litres;
            window.row.meters += u64::from(new_meter);
        }
        self.state.minute_start = minute;

        let hour = self.calendar.hour_start(end);
        let new_hour = hour != self.state.hour_start;
        if new_hour {
            // An hour an earlier process counted the meter in: finished now. (Hours
            // in the ledger are put in their sketch by `sketch_finished_hours`.)
            // (Its window may hold nothing of this process yet: made here, the
            // value reaches the total an earlier process published.)
            let finished = (self.state.hour_start, self.state.hour_l);
            if finished.0 != 0
                && finished.0 < hour
                && finished.0 < self.since
                && self.open(finished.0, Resolution::Hour)
            {
                self.partial
                    .window(self.scope, Resolution::Hour, finished.0)
                    .row
                    .meter_hour_sketch
                    .add(finished.1);
            }
            self.state.hour_start = hour;
            self.state.hour_l = 0;
        }
        self.state.hour_l += litres;
        if self.open(hour, Resolution::Hour) {
            let new_meter = self.first_report(Resolution::Hour, hour, litres, new_hour);
            let row = &mut self.partial.window(self.scope, Resolution::Hour, hour).row;
            row.usage_l += litres;
            row.meters += u64::from(new_meter);
        }

        let day = self.calendar.day(end);
        let new_day = day.start_ms != self.state.day_start;
        if new_day {
            self.state.day_start = day.start_ms;
            self.state.day_l = 0;
        }
        self.state.day_l += litres;
        if !self.open(day.start_ms, Resolution::Day) {
            return;
        }
        let new_meter = self.first_report(Resolution::Day, day.start_ms, litres, new_day);
        let hour_of_day = self.calendar.hour_of_day(end);
        let row = &mut self
            .partial
            .window(self.scope, Resolution::Day, day.start_ms)
            .row;
        row.usage_l += litres;
        row.meters += u64::from(new_meter);
        if let Some(slot) = NIGHT_HOURS.iter().position(|h| *h == hour_of_day) {
            row.night_hour_l[slot] = Some(row.night_hour_l[slot].unwrap_or(0) + litres);
        }
        let day_l = self.state.day_l;
        let top = self
            .partial
            .top(self.tenant_id, day.start_ms, || day.day_label());
        let list = &top.list;
        if list.entries.len() < list.limit
            || list.entries.last().is_some_and(|l| day_l >= l.usage_l)
        {
            top.list.offer(self.meter, day_l);
            top.dirty = true;
        }
    }
}

/// How long after a window closes (stops taking rows, see the module doc) the rollup
/// still keeps its shards' partials: shards' batch clocks differ a little and their
/// last flushes of a window can reach the sink after another shard's later batches.
/// An hour covers both many times over, and costs only an hour more of windows.
pub const ROLLUP_FORGET_SLACK_MS: i64 = HOUR_MS;

/// A district's newest merged day total: (usage_l, meters).
type DayTotal = (u64, u64);

/// Merges the district rows and top lists that shards flush: keeps each shard's
/// latest partial per window and turns every row of a flush into the district's
/// total over all shards, and adds each tenant's headline [`TenantSummary`]. Run it
/// where the shards' outputs meet (the sink), before writing absolute values to the
/// cache.
///
/// Memory: a window's partials are kept while a shard may still flush it (its
/// retention, as in [`AnalyticsSettings`], plus [`ROLLUP_FORGET_SLACK_MS`]), then
/// forgotten by [`absorb`](Self::absorb) itself. With the default settings that is
/// about 3 h of minute windows, 3 days of hours and 4 days of days per district.
pub struct DistrictRollup {
    shards: usize,
    settings: AnalyticsSettings,
    rows: HashMap<(String, String, Resolution, i64), Vec<Option<DistrictUsage>>>,
    tops: HashMap<(String, i64), Vec<Option<TopConsumers>>>,
    /// Merged day totals by tenant, day start and district: what summaries add up.
    days: HashMap<String, BTreeMap<i64, HashMap<String, DayTotal>>>,
}

impl DistrictRollup {
    /// A rollup for windows kept as long as [`AnalyticsSettings::default`] keeps them
    /// open; use [`with_settings`](Self::with_settings) with the shards' settings.
    pub fn new(shards: usize) -> Self {
        Self::with_settings(shards, &AnalyticsSettings::default())
    }

    /// A rollup of `shards` shards whose analytics run with `settings` (their
    /// retentions decide how long partials must be kept).
    pub fn with_settings(shards: usize, settings: &AnalyticsSettings) -> Self {
        Self {
            shards,
            settings: settings.clone(),
            rows: HashMap::new(),
            tops: HashMap::new(),
            days: HashMap::new(),
        }
    }

    /// Replaces `out.districts` and `out.top`, flushed by `shard`, with totals; adds
    /// to `out.summaries` one [`TenantSummary`] per tenant with a day row in `out`;
    /// then forgets windows no shard can flush any more at `now_ms`.
    ///
    /// `now_ms` is the time of the batch the outputs came with (the service clock
    /// shards run on): it stamps the summaries (`updated_at`) and drives forgetting.
    pub fn absorb(&mut self, shard: usize, now_ms: i64, out: &mut Outputs) {
        let slots = self.shards + 1;
        for row in &mut out.districts {
            let key = (
                row.tenant.clone(),
                row.district.clone(),
                row.resolution,
                row.start_ms,
            );
            let partials = self.rows.entry(key).or_insert_with(|| vec![None; slots]);
            partials[shard] = Some(row.clone());
            let mut total =
                DistrictUsage::new(&row.tenant, &row.district, row.resolution, row.start_ms);
            partials.iter().flatten().for_each(|p| total.merge(p));
            total.settle_taken();
            *row = total;
            if row.resolution == Resolution::Day {
                self.days
                    .entry(row.tenant.clone())
                    .or_default()
                    .entry(row.start_ms)
                    .or_default()
                    .insert(row.district.clone(), (row.usage_l, row.meters));
            }
        }
        for top in &mut out.top {
            let partials = self
                .tops
                .entry((top.tenant.clone(), top.day_start_ms))
                .or_insert_with(|| vec![None; slots]);
            partials[shard] = Some(top.clone());
            let mut total = TopConsumers {
                entries: Vec::new(),
                changed: Vec::new(),
                ..top.clone()
            };
            // This run's shards, then what an earlier run published (the seed).
            let (shards, seed) = partials.split_at(slots - 1);
            shards.iter().flatten().for_each(|p| total.merge(p));
            total.merge_earlier(seed[0].as_ref());
            total.changed.clear();
            *top = total;
        }
        self.summarise(now_ms, out);
        self.forget_closed(now_ms);
    }

    /// The district windows and top lists among `out`'s that this rollup holds
    /// nothing of: what was published of them before this process started (by an
    /// earlier run) must be [`seed`](Self::seed)ed before `out` is absorbed, or their
    /// totals would start again from this process's rows alone.
    pub fn unseen(&self, out: &Outputs) -> (Vec<DistrictUsage>, Vec<TopConsumers>) {
        let rows = out
            .districts
            .iter()
            .filter(|row| {
                let key = (
                    row.tenant.clone(),
                    row.district.clone(),
                    row.resolution,
                    row.start_ms,
                );
                !self.rows.contains_key(&key)
            })
            .map(|row| DistrictUsage::new(&row.tenant, &row.district, row.resolution, row.start_ms))
            .collect();
        let tops = out
            .top
            .iter()
            .filter(|top| {
                !self
                    .tops
                    .contains_key(&(top.tenant.clone(), top.day_start_ms))
            })
            .map(|top| TopConsumers {
                entries: Vec::new(),
                changed: Vec::new(),
                ..top.clone()
            })
            .collect();
        (rows, tops)
    }

    /// What an earlier run published of windows [`unseen`](Self::unseen) here: a
    /// slot of its own beside the shards', added to every total of the window. The
    /// meters' persisted analytics state keeps this run from counting again what it
    /// holds (a meter counted in an hour before the restart is not counted again).
    pub fn seed(&mut self, rows: Vec<DistrictUsage>, tops: Vec<TopConsumers>) {
        let base = self.shards;
        let slots = self.shards + 1;
        for row in rows {
            let key = (
                row.tenant.clone(),
                row.district.clone(),
                row.resolution,
                row.start_ms,
            );
            self.rows.entry(key).or_insert_with(|| vec![None; slots])[base] = Some(row);
        }
        for top in tops {
            let key = (top.tenant.clone(), top.day_start_ms);
            self.tops.entry(key).or_insert_with(|| vec![None; slots])[base] = Some(top);
        }
    }

    /// One summary per tenant with a day row in `out`: the tenant's newest day that
    /// has begun at `now_ms` (over every day the rollup holds, so a late row for
    /// yesterday does not turn the headline back a day, and a row for tomorrow — a
    /// meter whose clock runs fast, within `limits.max_clock_skew_ms` — does not turn
    /// it forward before midnight), summed over its districts.
    fn summarise(&self, now_ms: i64, out: &mut Outputs) {
        let mut tenants: Vec<&str> = out
            .districts
            .iter()
            .filter(|row| row.resolution == Resolution::Day)
            .map(|row| row.tenant.as_str())
            .collect();
        tenants.sort_unstable();
        tenants.dedup();
        let mut summaries = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let Some((&day_start, districts)) = self
                .days
                .get(tenant)
                .and_then(|days| days.range(..=now_ms).next_back())
            else {
                continue;
            };
            let (usage, meters) = districts
                .values()
                .fold((0, 0), |(u, m), (du, dm)| (u + du, m + dm));
            summaries.push(TenantSummary {
                tenant: tenant.to_string(),
                day: self.day_label(tenant, day_start),
                usage_today_l: usage,
                meters_reporting: meters,
                alerts_open: 0,
                updated_at: now_ms,
            });
        }
        out.summaries.extend(summaries);
    }

    /// The local date (`yyyy-mm-dd`) of a tenant's day: the label shards gave the
    /// day's top list (every day window comes with one). Without one, the UTC date
    /// of the day's middle, which is the local date for UTC offsets within ±12 h.
    fn day_label(&self, tenant: &str, day_start: i64) -> String {
        self.tops
            .get(&(tenant.to_string(), day_start))
            .and_then(|partials| partials.iter().flatten().next())
            .map(|top| top.day.clone())
            .unwrap_or_else(|| day_string(day_of(day_start.saturating_add(DAY_MS / 2))))
    }

    /// Forgets the windows that closed at least [`ROLLUP_FORGET_SLACK_MS`] before
    /// `now_ms`: no shard flushes them any more.
    fn forget_closed(&mut self, now_ms: i64) {
        let horizon = now_ms.saturating_sub(ROLLUP_FORGET_SLACK_MS);
        let settings = &self.settings;
        self.rows
            .retain(|key, _| is_open(key.3, key.2, horizon, settings));
        self.tops
            .retain(|key, _| is_open(key.1, Resolution::Day, horizon, settings));
        self.days.retain(|_, days| {
            days.retain(|start, _| is_open(*start, Resolution::Day, horizon, settings));
            !days.is_empty()
        });
    }

    /// Forgets windows that started before `start_ms`, whatever their retention
    /// (`absorb` already forgets closed windows by itself).
    pub fn forget_before(&mut self, start_ms: i64) {
        self.rows.retain(|key, _| key.3 >= start_ms);
        self.tops.retain(|key, _| key.1 >= start_ms);
        self.days.retain(|_, days| {
            days.retain(|start, _| *start >= start_ms);
            !days.is_empty()
        });
    }

    /// Windows (district rows and top lists) held, for tests and metrics.
    pub fn windows_held(&self) -> usize {
        self.rows.len() + self.tops.len()
    }
}

#[cfg(test)]
mod rollup_tests {
    use proptest::prelude::*;

    use super::*;

    /// 2025-01-15T00:00Z.
    const MIDNIGHT: i64 = 1_736_899_200_000;

    fn day_row(
        tenant: &str,
        district: &str,
        start_ms: i64,
        usage_l: u64,
        meters: u64,
    ) -> DistrictUsage {
        DistrictUsage {
            usage_l,
            meters,
            ..DistrictUsage::new(tenant, district, Resolution::Day, start_ms)
        }
    }

    fn top(tenant: &str, day_start_ms: i64, day: &str) -> TopConsumers {
        TopConsumers::new(tenant, day.into(), day_start_ms, 3)
    }

    fn summaries(
        rollup: &mut DistrictRollup,
        shard: usize,
        now_ms: i64,
        out: &Outputs,
    ) -> Vec<TenantSummary> {
        let mut out = out.clone();
        rollup.absorb(shard, now_ms, &mut out);
        out.summaries
    }

    #[test]
    fn a_seeded_window_adds_what_an_earlier_run_published() {
        let mut rollup = DistrictRollup::new(2);
        let out = Outputs {
            districts: vec![day_row("acme", "north", MIDNIGHT, 30, 1)],
            top: vec![top("acme", MIDNIGHT, "2025-01-15")],
            ..Outputs::default()
        };
        let (rows, tops) = rollup.unseen(&out);
        assert_eq!((rows.len(), tops.len()), (1, 1));
        let mut earlier = top("acme", MIDNIGHT, "2025-01-15");
        earlier.offer("m9", 500);
        rollup.seed(
            vec![day_row("acme", "north", MIDNIGHT, 200, 4)],
            vec![earlier],
        );
        assert_eq!(rollup.unseen(&out), (Vec::new(), Vec::new()));
        let mut absorbed = out.clone();
        rollup.absorb(1, MIDNIGHT + 5_000, &mut absorbed);
        let day = &absorbed.districts[0];
        assert_eq!((day.usage_l, day.meters), (230, 5));
        assert_eq!(absorbed.top[0].entries[0].meter, "m9");
        assert_eq!(absorbed.summaries[0].usage_today_l, 230);
    }

    #[test]
    fn summaries_add_up_the_newest_day_over_districts_and_shards() {
        let mut rollup = DistrictRollup::new(2);
        let shard0 = Outputs {
            districts: vec![
                day_row("acme", "north", MIDNIGHT, 100, 2),
                day_row("acme", "south", MIDNIGHT, 10, 1),
                DistrictUsage::new("acme", "north", Resolution::Minute, MIDNIGHT),
            ],
            top: vec![top("acme", MIDNIGHT, "2025-01-15")],
            ..Outputs::default()
        };
        let got = summaries(&mut rollup, 0, MIDNIGHT + 5_000, &shard0);
        assert_eq!(
            got,
            vec![TenantSummary {
                tenant: "acme".into(),
                day: "2025-01-15".into(),
                usage_today_l: 110,
                meters_reporting: 3,
                alerts_open: 0,
                updated_at: MIDNIGHT + 5_000,
            }]
        );
        let shard1 = Outputs {
            districts: vec![day_row("acme", "north", MIDNIGHT, 1, 1)],
            ..Outputs::default()
        };
        let got = summaries(&mut rollup, 1, MIDNIGHT + 6_000, &shard1);
        assert_eq!((got[0].usage_today_l, got[0].meters_reporting), (111, 4));
        // A late row for the day before does not turn the headline back.
        let late = Outputs {
            districts: vec![day_row("acme", "north", MIDNIGHT - DAY_MS, 7, 1)],
            ..Outputs::default()
        };
        let got = summaries(&mut rollup, 1, MIDNIGHT + 7_000, &late);
        assert_eq!(
            (got[0].day.as_str(), got[0].usage_today_l),
            ("2025-01-15", 111)
        );
        // A row for tomorrow (a meter's clock runs fast) does not turn it forward
        // before tomorrow begins; then it is the headline.
        let fast = Outputs {
            districts: vec![day_row("acme", "north", MIDNIGHT + DAY_MS, 5, 1)],
            top: vec![top("acme", MIDNIGHT + DAY_MS, "2025-01-16")],
            ..Outputs::default()
        };
        let got = summaries(&mut rollup, 0, MIDNIGHT + DAY_MS - 60_000, &fast);
        assert_eq!(
            (
                got[0].day.as_str(),
                got[0].usage_today_l,
                got[0].meters_reporting
            ),
            ("2025-01-15", 111, 4)
        );
        let got = summaries(&mut rollup, 1, MIDNIGHT + DAY_MS, &shard1);
        assert_eq!(
            (
                got[0].day.as_str(),
                got[0].usage_today_l,
                got[0].meters_reporting
            ),
            ("2025-01-16", 5, 1)
        );
        // No day row, no summary.
        let minutes = Outputs {
            districts: vec![DistrictUsage::new(
                "acme",
                "north",
                Resolution::Minute,
                MIDNIGHT,
            )],
            ..Outputs::default()
        };
        assert!(summaries(&mut rollup, 0, MIDNIGHT + DAY_MS + 8_000, &minutes).is_empty());
    }

    #[test]
    fn a_day_without_a_top_list_is_labelled_by_its_middle() {
        let mut rollup = DistrictRollup::new(1);
        // Local midnight of 2025-01-15 in UTC+10 is 14:00 UTC on the 14th.
        let start = MIDNIGHT - 10 * HOUR_MS;
        let out = Outputs {
            districts: vec![day_row("acme", "north", start, 1, 1)],
            ..Outputs::default()
        };
        assert_eq!(
            summaries(&mut rollup, 0, MIDNIGHT, &out)[0].day,
            "2025-01-15"
        );
    }

    #[test]
    fn closed_windows_are_forgotten_and_open_ones_kept() {
        let mut rollup = DistrictRollup::new(1);
        let out = Outputs {
            districts: vec![
                DistrictUsage::new("acme", "north", Resolution::Minute, MIDNIGHT),
                DistrictUsage::new("acme", "north", Resolution::Hour, MIDNIGHT),
                day_row("acme", "north", MIDNIGHT, 1, 1),
            ],
            top: vec![top("acme", MIDNIGHT, "2025-01-15")],
            ..Outputs::default()
        };
        rollup.absorb(0, MIDNIGHT, &mut out.clone());
        assert_eq!(rollup.windows_held(), 4);
        let settings = AnalyticsSettings::default();
        // The minute closes after a minute plus its retention; plus the slack.
        let minute_gone =
            MIDNIGHT + MINUTE_MS + settings.minute_retention_ms + ROLLUP_FORGET_SLACK_MS;
        rollup.absorb(0, minute_gone - 1, &mut Outputs::default());
        assert_eq!(rollup.windows_held(), 4);
        rollup.absorb(0, minute_gone, &mut Outputs::default());
        assert_eq!(rollup.windows_held(), 3);
        let all_gone =
            MIDNIGHT + DAY_MS + HOUR_MS + settings.day_retention_ms + ROLLUP_FORGET_SLACK_MS;
        rollup.absorb(0, all_gone, &mut Outputs::default());
        assert_eq!(rollup.windows_held(), 0);
        assert!(rollup.days.is_empty());
        // `forget_before` still forgets by start.
        rollup.absorb(0, MIDNIGHT, &mut out.clone());
        rollup.forget_before(MIDNIGHT + 1);
        assert_eq!(rollup.windows_held(), 0);
        assert!(rollup.days.is_empty());
    }

    /// (shard, district, day, usage, meters) partials.
    fn partials_strategy() -> impl Strategy<Value = Vec<(usize, usize, i64, u64, u64)>> {
        proptest::collection::vec(
            (0usize..3, 0usize..3, 0i64..2, 0u64..1_000, 0u64..50),
            1..20,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// After every shard's outputs are absorbed, in any order and with replays,
        /// the summary is the newest day's total over districts and shards (each
        /// shard's latest partial of a window counts once) once every day has begun.
        #[test]
        fn summaries_are_order_free_and_replay_safe(
            partials in partials_strategy(),
            order in Just((0..3usize).collect::<Vec<_>>()).prop_shuffle(),
            replay in 0usize..3,
        ) {
            let mut latest: HashMap<(usize, usize, i64), (u64, u64)> = HashMap::new();
            let mut outs: Vec<Outputs> = vec![Outputs::default(); 3];
            for &(shard, district, day, usage, meters) in &partials {
                latest.insert((shard, district, day), (usage, meters));
                let start = MIDNIGHT + day * DAY_MS;
                outs[shard].districts.push(day_row("acme", &format!("d{district}"), start, usage, meters));
                outs[shard].top.push(top("acme", start, &format!("2025-01-{}", 15 + day)));
            }
            let mut rollup = DistrictRollup::new(3);
            let mut last = None;
            for shard in order.iter().copied().chain([replay]) {
                let got = summaries(&mut rollup, shard, MIDNIGHT + DAY_MS, &outs[shard]);
                if let Some(summary) = got.into_iter().next() {
                    last = Some(summary);
                }
            }
            let newest = latest.keys().map(|k| k.2).max().unwrap();
            let (usage, meters) = latest
                .iter()
                .filter(|(k, _)| k.2 == newest)
                .fold((0, 0), |(u, m), (_, (du, dm))| (u + du, m + dm));
            let summary = last.unwrap();
            prop_assert_eq!(summary.usage_today_l, usage);
            prop_assert_eq!(summary.meters_reporting, meters);
            prop_assert_eq!(summary.day, format!("2025-01-{}", 15 + newest));
        }
    }
}
