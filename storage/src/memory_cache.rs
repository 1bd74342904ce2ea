//! The in-process [`HotCache`]: what dashboards read when no Redis is configured
//! (DESIGN §5, "without Redis, the in-process cache serves the same data over HTTP").
//!
//! It keeps, per tenant, what the trait's reads serve, with the read semantics of
//! the Redis cache (`redis_cache`; the integration tests run one contract against
//! both): the latest [`MeterView`] per meter; district rows by resolution and start;
//! each local day's top-consumers list; the open alert episodes and the newest alert
//! steps; the latest [`TenantSummary`]. What only Redis dashboards read directly —
//! the bill and open-alert fields of a meter's hash — is not kept here (the HTTP API
//! reads bills from the store).
//!
//! Values are absolute, so applying outputs twice, or out of a crash-replay, leaves
//! the same picture — except the recent-alerts log, which, like the Redis stream,
//! takes a replayed step again. As in Redis, a meter's view, and the alert steps
//! beside it in the same outputs, change nothing when the cached view comes from a
//! state of a greater version (a stalled former owner's late apply). Rows, views and lists with a tenant, meter or
//! district name that is not an id are skipped, as Redis skips them.
//!
//! Memory is bounded. Per district, the newest [`MINUTE_WINDOWS_KEPT`],
//! [`HOUR_WINDOWS_KEPT`] and [`DAY_WINDOWS_KEPT`] windows (the spans the Redis TTLs
//! keep); per tenant the newest [`TOP_DAYS_KEPT`] top lists and
//! [`RECENT_ALERTS_KEPT`] alert steps. Meters, districts, open episodes (at most one
//! per meter and kind) and tenants are bounded by configuration: unknown tenants
//! and meters are dead-lettered before they reach processors. Nothing is persisted;
//! after a restart the cache refills from the next outputs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use meterflow_model::alert::{AlertEvent, AlertKind};
use meterflow_model::analytics::{DistrictUsage, Resolution, TopEntry};
use meterflow_model::{MeterKey, MeterPage, MeterQuery, MeterView, Outputs, TenantSummary};

use crate::redis_cache::keys::{clamp_read_from, day_label_stamp, ids_are_valid};
use crate::redis_cache::{cached_row, sort_open_alerts, sort_top};
use crate::{CacheError, HotCache};

/// Minute windows kept per district: 2 days (2,880), the Redis minute TTL. About
/// 100 bytes each: ~0.3 MB per district.
pub const MINUTE_WINDOWS_KEPT: usize = 2 * 24 * 60;
/// Hour windows kept per district: 35 days (840), the Redis hour TTL.
pub const HOUR_WINDOWS_KEPT: usize = 35 * 24;
/// Day windows kept per district: 400 days, the Redis day TTL.
pub const DAY_WINDOWS_KEPT: usize = 400;
/// Top-consumers days kept per tenant: 35, the Redis top TTL.
pub const TOP_DAYS_KEPT: usize = 35;
/// Alert steps kept per tenant for `recent_alerts`: the last 1,000 (~200 KB). A
/// dashboard's event feed shows tens; Redis keeps 10,000 because it also serves
/// consumers reading the stream directly, which the in-process cache has none of.
pub const RECENT_ALERTS_KEPT: usize = 1_000;

/// A district row without its names (the map's keys) nor its merge-only sketch.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    usage_l: u64,
    meters: u64,
    p50_l: Option<u64>,
    p90_l: Option<u64>,
    p99_l: Option<u64>,
    night_hour_l: [Option<u64>; 2],
    night_flow_lph: Option<u64>,
    inflow_l: Option<u64>,
    inflow_night_hour_l: [Option<u64>; 2],
    inflow_night_flow_lph: Option<u64>,
}

impl Row {
    fn of(row: &DistrictUsage) -> Self {
        Self {
            usage_l: row.usage_l,
            meters: row.meters,
            p50_l: row.p50_l,
            p90_l: row.p90_l,
            p99_l: row.p99_l,
            night_hour_l: row.night_hour_l,
            night_flow_lph: row.night_flow_lph,
            inflow_l: row.inflow_l,
            inflow_night_hour_l: row.inflow_night_hour_l,
            inflow_night_flow_lph: row.inflow_night_flow_lph,
        }
    }

    fn usage(
        &self,
        tenant: &str,
        district: &str,
        resolution: Resolution,
        start_ms: i64,
    ) -> DistrictUsage {
        let mut row = DistrictUsage::new(tenant, district, resolution, start_ms);
        row.usage_l = self.usage_l;
        row.meters = self.meters;
        row.p50_l = self.p50_l;
        row.p90_l = self.p90_l;
        row.p99_l = self.p99_l;
        row.night_hour_l = self.night_hour_l;
        row.night_flow_lph = self.night_flow_lph;
        row.inflow_l = self.inflow_l;
        row.inflow_night_hour_l = self.inflow_night_hour_l;
        row.inflow_night_flow_lph = self.inflow_night_flow_lph;
        cached_row(&row)
    }
}

/// One district's windows of each resolution, by start.
#[derive(Debug, Default)]
struct DistrictWindows {
    minutes: BTreeMap<i64, Row>,
    hours: BTreeMap<i64, Row>,
    days: BTreeMap<i64, Row>,
}

impl DistrictWindows {
    fn of(&self, resolution: Resolution) -> &BTreeMap<i64, Row> {
        match resolution {
            Resolution::Minute => &self.minutes,
            Resolution::Hour => &self.hours,
            Resolution::Day => &self.days,
        }
    }

    /// Upserts a row, then drops the oldest windows past the bound.
    fn put(&mut self, row: &DistrictUsage) {
        let (windows, kept) = match row.resolution {
            Resolution::Minute => (&mut self.minutes, MINUTE_WINDOWS_KEPT),
            Resolution::Hour => (&mut self.hours, HOUR_WINDOWS_KEPT),
            Resolution::Day => (&mut self.days, DAY_WINDOWS_KEPT),
        };
        windows.insert(row.start_ms, Row::of(row));
        while windows.len() > kept {
            windows.pop_first();
        }
    }
}

/// Everything cached for one tenant.
#[derive(Debug, Default)]
struct TenantCache {
    /// By meter id, ordered for the meter list's paging.
    meters: BTreeMap<String, MeterView>,
    districts: HashMap<String, DistrictWindows>,
    /// Top lists by `yyyymmdd` stamp (sorts as time), each sorted as served.
    tops: BTreeMap<String, Vec<TopEntry>>,
    /// The latest step of each open episode, by (meter, kind).
    open: HashMap<(String, AlertKind), AlertEvent>,
    /// Newest step last.
    recent: VecDeque<AlertEvent>,
    summary: Option<TenantSummary>,
}

impl TenantCache {
    fn alert(&mut self, event: &AlertEvent) {
        let episode = (event.meter.clone(), event.kind);
        // A step touches only its own episode (as in Redis's `APPLY_ALERTS`): a
        // closing one removes it only while it is the one held, an open one does not
        // replace a later-opened episode.
        let holds = self.open.get(&episode).map(|held| held.opened_at);
        if !event.state.is_open() {
            if holds == Some(event.opened_at) {
                self.open.remove(&episode);
            }
        } else if holds.is_none_or(|opened_at| opened_at <= event.opened_at) {
            self.open.insert(episode, event.clone());
        }
        if self.recent.len() == RECENT_ALERTS_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(event.clone());
    }
}

/// Whether a view of `version` comes after one of `held` and must change nothing
/// (`0`: unknown, never stale) — the check of Redis's `APPLY_VIEWS`.
fn is_stale(held: i64, version: i64) -> bool {
    version != 0 && held > version
}

/// The in-process [`HotCache`]. Never fails, except on a malformed day label.
#[derive(Debug, Default)]
pub struct MemoryCache {
    tenants: RwLock<HashMap<String, TenantCache>>,
}

impl MemoryCache {
    pub fn new() -> MemoryCache {
        MemoryCache::default()
    }

    /// Meters with a cached view.
    pub fn meter_count(&self) -> usize {
        self.read().values().map(|t| t.meters.len()).sum()
    }

    // A writer that panicked mid-`apply` leaves some values new and some old — each
    // one whole and absolute, which is what the cache promises anyway — so a poisoned
    // lock is used as is.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, TenantCache>> {
        self.tenants.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, TenantCache>> {
        self.tenants.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_tenant<T>(&self, tenant: &str, default: T, f: impl FnOnce(&TenantCache) -> T) -> T {
        self.read().get(tenant).map_or(default, f)
    }
}

/// The tenant's entry, created on first use without allocating a key otherwise.
fn tenant_entry<'a>(
    tenants: &'a mut HashMap<String, TenantCache>,
    tenant: &str,
) -> &'a mut TenantCache {
    if !tenants.contains_key(tenant) {
        tenants.insert(tenant.to_owned(), TenantCache::default());
    }
    tenants.get_mut(tenant).expect("inserted above")
}

impl HotCache for MemoryCache {
    /// Upserts every part of `outputs`; a later value of the same key in the same
    /// outputs wins.
    fn apply(&self, outputs: &Outputs) -> Result<(), CacheError> {
        if outputs.is_empty() {
            return Ok(());
        }
        let mut tenants = self.write();
        // Meters whose last view here was stale: their alert steps are too (Redis's
        // `APPLY_ALERTS` checks the view's version against the hash's the same way).
        let mut stale: HashSet<(&str, &str)> = HashSet::new();
        for view in &outputs.meters {
            // The district too, as Redis checks it: it is part of an index member there.
            if !ids_are_valid(&[&view.tenant, &view.meter, &view.district]) {
                continue;
            }
            if !stale.is_empty() {
                stale.remove(&(view.tenant.as_str(), view.meter.as_str()));
            }
            let meters = &mut tenant_entry(&mut tenants, &view.tenant).meters;
            match meters.get_mut(&view.meter) {
                Some(cached) if is_stale(cached.version, view.version) => {
                    stale.insert((&view.tenant, &view.meter));
                    continue;
                }
                Some(cached) => {
                    // Battery and signal are what the meter last reported; a view
                    // without a size (made before views showed it) and an unknown
                    // version (0) keep the ones held.
                    let (battery, rssi, size, version) =
                        (cached.battery, cached.rssi, cached.size, cached.version);
                    cached.clone_from(view);
                    cached.battery = view.battery.or(battery);
                    cached.rssi = view.rssi.or(rssi);
                    cached.size = view.size.or(size);
                    if view.version == 0 {
                        cached.version = version;
                    }
                }
                None => {
                    meters.insert(view.meter.clone(), view.clone());
                }
            }
        }
        for row in &outputs.districts {
            if !ids_are_valid(&[&row.tenant, &row.district]) {
                continue;
            }
            tenant_entry(&mut tenants, &row.tenant)
                .districts
                .entry(row.district.clone())
                .or_default()
                .put(row);
        }
        for list in &outputs.top {
            let Some(stamp) = day_label_stamp(&list.day).filter(|_| ids_are_valid(&[&list.tenant]))
            else {
                continue;
            };
            let mut entries = list.entries.clone();
            sort_top(&mut entries);
            let tops = &mut tenant_entry(&mut tenants, &list.tenant).tops;
            tops.insert(stamp, entries);
            while tops.len() > TOP_DAYS_KEPT {
                tops.pop_first();
            }
        }
        for event in &outputs.alerts {
            if ids_are_valid(&[&event.tenant, &event.meter])
                && !stale.contains(&(event.tenant.as_str(), event.meter.as_str()))
            {
                tenant_entry(&mut tenants, &event.tenant).alert(event);
            }
        }
        for summary in &outputs.summaries {
            if ids_are_valid(&[&summary.tenant]) {
                tenant_entry(&mut tenants, &summary.tenant).summary = Some(summary.clone());
            }
        }
        Ok(())
    }

    fn meter(&self, key: &MeterKey) -> Result<Option<MeterView>, CacheError> {
        Ok(self.with_tenant(key.tenant.as_str(), None, |t| {
            t.meters.get(key.meter.as_str()).cloned()
        }))
    }

    fn meters(&self, tenant: &str, query: &MeterQuery) -> Result<MeterPage, CacheError> {
        Ok(self.with_tenant(tenant, MeterPage::default(), |t| {
            let start = match &query.after {
                Some(after) => Bound::Excluded(after.as_str()),
                None => Bound::Unbounded,
            };
            let mut matching = t
                .meters
                .range::<str, _>((start, Bound::Unbounded))
                .map(|(_, view)| view)
                .filter(|view| query.matches(view));
            let meters: Vec<MeterView> = matching.by_ref().take(query.limit).cloned().collect();
            let next = match matching.next() {
                Some(_) => meters.last().map(|v| v.meter.clone()),
                None => None,
            };
            MeterPage { meters, next }
        }))
    }

    /// The latest summary, with `alerts_open` counted now (Redis keeps it current
    /// on every alert step).
    fn summary(&self, tenant: &str) -> Result<Option<TenantSummary>, CacheError> {
        Ok(self.with_tenant(tenant, None, |t| {
            t.summary.as_ref().map(|summary| TenantSummary {
                alerts_open: t.open.len() as u64,
                ..summary.clone()
            })
        }))
    }

    fn district_usage(
        &self,
        tenant: &str,
        district: &str,
        resolution: Resolution,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<DistrictUsage>, CacheError> {
        let from_ms = clamp_read_from(resolution, from_ms, to_ms);
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        Ok(self.with_tenant(tenant, Vec::new(), |t| {
            t.districts.get(district).map_or_else(Vec::new, |windows| {
                windows
                    .of(resolution)
                    .range(from_ms..to_ms)
                    .map(|(start, row)| row.usage(tenant, district, resolution, *start))
                    .collect()
            })
        }))
    }

    fn top_consumers(
        &self,
        tenant: &str,
        day: &str,
        limit: usize,
    ) -> Result<Vec<TopEntry>, CacheError> {
        let Some(stamp) = day_label_stamp(day) else {
            return Err(CacheError(format!(
                "day {day:?} must be a date as yyyy-mm-dd (the tenant's local day)"
            )));
        };
        Ok(self.with_tenant(tenant, Vec::new(), |t| {
            t.tops
                .get(&stamp)
                .map(|entries| entries.iter().take(limit).cloned().collect())
                .unwrap_or_default()
        }))
    }

    fn open_alerts(&self, tenant: &str) -> Result<Vec<AlertEvent>, CacheError> {
        let mut alerts =
            self.with_tenant(tenant, Vec::new(), |t| t.open.values().cloned().collect());
        sort_open_alerts(&mut alerts);
        Ok(alerts)
    }

    fn recent_alerts(&self, tenant: &str, limit: usize) -> Result<Vec<AlertEvent>, CacheError> {
        Ok(self.with_tenant(tenant, Vec::new(), |t| {
            t.recent.iter().rev().take(limit).cloned().collect()
        }))
    }
}

#[cfg(test)]
mod tests {
    use meterflow_model::alert::EpisodeState;
    use meterflow_model::{MeterId, Quality, TenantId, TopConsumers};

    use super::*;

    const MINUTE: i64 = 60_000;
    const HOUR: i64 = 3_600_000;

    fn key(tenant: &str, meter: &str) -> MeterKey {
        MeterKey::new(
            TenantId::try_from(tenant).unwrap(),
            MeterId::try_from(meter).unwrap(),
        )
    }

    fn view(tenant: &str, meter: &str, today_l: u64) -> MeterView {
        MeterView {
            tenant: tenant.into(),
            meter: meter.into(),
            last_seq: Some(today_l),
            last_ts: Some(1_700_000_000_000),
            reg: Some(1000 + today_l),
            rev: Some(0),
            flow: Some(12),
            temp: None,
            today_l,
            quality: Quality::Actual,
            district: "default".into(),
            size: None,
            battery: None,
            rssi: None,
            version: 0,
        }
    }

    fn row(resolution: Resolution, start_ms: i64, usage_l: u64) -> DistrictUsage {
        DistrictUsage {
            usage_l,
            meters: 1,
            ..DistrictUsage::new("t", "north", resolution, start_ms)
        }
    }

    fn event(meter: &str, kind: AlertKind, state: EpisodeState, at: i64) -> AlertEvent {
        AlertEvent {
            tenant: "t".into(),
            meter: meter.into(),
            kind,
            priority: kind.priority(),
            state,
            opened_at: 1,
            at,
            detail: String::new(),
            revision: AlertEvent::first_revision(at, state),
        }
    }

    #[test]
    fn apply_upserts_one_view_per_meter_and_the_latest_wins() {
        let cache = MemoryCache::new();
        let outputs = Outputs {
            meters: vec![view("t", "m1", 1), view("t", "m2", 2), view("t", "m1", 3)],
            ..Outputs::default()
        };
        cache.apply(&outputs).unwrap();
        cache.apply(&outputs).unwrap();
        assert_eq!(cache.meter_count(), 2);
        assert_eq!(
            cache.meter(&key("t", "m1")).unwrap(),
            Some(view("t", "m1", 3))
        );
        assert_eq!(
            cache.meter(&key("t", "m2")).unwrap(),
            Some(view("t", "m2", 2))
        );
    }

    #[test]
    fn tenants_do_not_see_each_other() {
        let cache = MemoryCache::new();
        cache
            .apply(&Outputs {
                meters: vec![view("a", "m", 1)],
                ..Outputs::default()
            })
            .unwrap();
        assert_eq!(cache.meter(&key("b", "m")).unwrap(), None);
        assert_eq!(cache.meter(&key("a", "other")).unwrap(), None);
    }

    #[test]
    fn district_windows_are_bounded_to_the_newest() {
        let cache = MemoryCache::new();
        let minutes: Vec<_> = (0..MINUTE_WINDOWS_KEPT as i64 + 10)
            .map(|i| row(Resolution::Minute, i * MINUTE, i as u64))
            .collect();
        cache
            .apply(&Outputs {
                districts: minutes,
                ..Outputs::default()
            })
            .unwrap();
        let tenants = cache.read();
        let windows = &tenants["t"].districts["north"];
        assert_eq!(windows.minutes.len(), MINUTE_WINDOWS_KEPT);
        assert_eq!(windows.minutes.keys().next(), Some(&(10 * MINUTE)));
        drop(tenants);
        // A read spans at most one day of minutes, the newest part of the range.
        assert!(
            cache
                .district_usage("t", "north", Resolution::Minute, 0, i64::MAX)
                .unwrap()
                .is_empty()
        );
        let newest = cache
            .district_usage(
                "t",
                "north",
                Resolution::Minute,
                0,
                (MINUTE_WINDOWS_KEPT as i64 + 10) * MINUTE,
            )
            .unwrap();
        assert_eq!(newest.len(), 1_440);
        assert_eq!(
            newest.last().unwrap().usage_l,
            MINUTE_WINDOWS_KEPT as u64 + 9
        );
        assert!(newest.windows(2).all(|w| w[0].start_ms < w[1].start_ms));
    }

    #[test]
    fn hour_rows_come_back_without_their_sketch() {
        let cache = MemoryCache::new();
        let mut hour = row(Resolution::Hour, HOUR, 7);
        hour.meter_hour_sketch.add(7);
        hour.refresh_derived();
        cache
            .apply(&Outputs {
                districts: vec![hour.clone()],
                ..Outputs::default()
            })
            .unwrap();
        let read = cache
            .district_usage("t", "north", Resolution::Hour, 0, 2 * HOUR)
            .unwrap();
        assert_eq!(read, vec![cached_row(&hour)]);
        assert_eq!(read[0].p50_l, Some(7));
        assert!(
            cache
                .district_usage("t", "north", Resolution::Hour, HOUR + 1, 2 * HOUR)
                .unwrap()
                .is_empty()
        );
        assert!(
            cache
                .district_usage("t", "south", Resolution::Hour, 0, 2 * HOUR)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn recent_alerts_keep_the_last_thousand_and_open_ones_follow_episodes() {
        let cache = MemoryCache::new();
        let steps: Vec<_> = (0..RECENT_ALERTS_KEPT as i64 + 5)
            .map(|i| event("m1", AlertKind::Leak, EpisodeState::Updated, i))
            .collect();
        cache
            .apply(&Outputs {
                alerts: steps,
                ..Outputs::default()
            })
            .unwrap();
        let recent = cache.recent_alerts("t", usize::MAX).unwrap();
        assert_eq!(recent.len(), RECENT_ALERTS_KEPT);
        assert_eq!(recent[0].at, RECENT_ALERTS_KEPT as i64 + 4);
        assert_eq!(cache.open_alerts("t").unwrap().len(), 1);
        cache
            .apply(&Outputs {
                alerts: vec![event("m1", AlertKind::Leak, EpisodeState::Cleared, 9_999)],
                ..Outputs::default()
            })
            .unwrap();
        assert!(cache.open_alerts("t").unwrap().is_empty());
        assert_eq!(cache.recent_alerts("t", 1).unwrap()[0].at, 9_999);
    }

    #[test]
    fn top_days_are_bounded_and_bad_day_labels_are_errors() {
        let cache = MemoryCache::new();
        // 40 days: 2025-01-01 … 2025-02-12.
        let tops: Vec<_> = (0..40)
            .map(|d| TopConsumers {
                tenant: "t".into(),
                day: format!("2025-{:02}-{:02}", 1 + d / 28, 1 + d % 28),
                day_start_ms: 0,
                limit: 2,
                changed: Vec::new(),
                entries: vec![
                    TopEntry {
                        meter: "b".into(),
                        usage_l: 5,
                    },
                    TopEntry {
                        meter: "a".into(),
                        usage_l: 5,
                    },
                ],
            })
            .collect();
        cache
            .apply(&Outputs {
                top: tops,
                ..Outputs::default()
            })
            .unwrap();
        assert_eq!(cache.read()["t"].tops.len(), TOP_DAYS_KEPT);
        assert!(
            cache
                .top_consumers("t", "2025-01-01", 10)
                .unwrap()
                .is_empty()
        );
        let top = cache.top_consumers("t", "2025-02-12", 1).unwrap();
        assert_eq!(
            top,
            vec![TopEntry {
                meter: "a".into(),
                usage_l: 5
            }]
        );
        assert!(cache.top_consumers("t", "yesterday", 1).is_err());
    }
}
