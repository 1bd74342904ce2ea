//! Applies processor outputs to the hot cache without ever holding up storage or
//! acks (DESIGN §6.6: Redis down → keep storing; the cache is rebuilt).
//!
//! When an update fails, what it carried is kept — per meter only the newest view,
//! since values are absolute — and applied with the next update that succeeds, or by
//! [`CacheWriter::retry_pending`] when no traffic comes. So once the cache is back,
//! it is current again with the next attempt, not only for meters that report again.
//! What is kept is bounded ([`MAX_PENDING_METERS`]); past it the views held longest
//! are dropped and counted — those meters are repaired by their next report. A held
//! view keeps the battery and signal of an older held one when it reports none, as
//! the caches do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use meterflow_model::{MeterView, Outputs};
use meterflow_storage::HotCache;
use tracing::{info, warn};

use crate::metrics::PipelineMetrics;

/// Meter views kept while the cache is down: at ~200 bytes a view, 1M meters is
/// ~200 MiB — a whole large utility — before anything is dropped.
const MAX_PENDING_METERS: usize = 1_000_000;
/// Other outputs (alerts, bills, analytics) kept while the cache is down.
const MAX_PENDING_OTHERS: usize = 100_000;

pub struct CacheWriter {
    cache: Arc<dyn HotCache>,
    metrics: PipelineMetrics,
    /// Views not yet applied, newest per meter.
    pending_meters: PendingViews,
    /// Everything else not yet applied, in order.
    pending_others: Outputs,
    failing_since: Option<Instant>,
}

impl CacheWriter {
    pub fn new(cache: Arc<dyn HotCache>, metrics: PipelineMetrics) -> Self {
        Self {
            cache,
            metrics,
            pending_meters: PendingViews::default(),
            pending_others: Outputs::default(),
            failing_since: None,
        }
    }

    /// The cache written to (for reading what it holds).
    pub fn cache(&self) -> &dyn HotCache {
        &*self.cache
    }

    /// Applies `outputs` (after whatever is pending).
    pub fn apply(&mut self, outputs: Outputs) {
        self.hold(outputs);
        self.retry_pending();
    }

    /// Tries to apply what is pending; a no-op when nothing is.
    pub fn retry_pending(&mut self) {
        if self.pending_meters.is_empty() && self.pending_others.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.pending_others);
        batch.meters = self.pending_meters.drain();
        let started = Instant::now();
        match self.cache.apply(&batch) {
            Ok(()) => {
                self.metrics
                    .cache_write_seconds
                    .record(started.elapsed().as_secs_f64());
                if let Some(since) = self.failing_since.take() {
                    info!(down_for = ?since.elapsed(), "hot cache is back and up to date");
                }
            }
            Err(e) => {
                self.metrics.cache_errors.increment(1);
                if self.failing_since.is_none() {
                    warn!(error = %e, "hot cache update failed; storing and acking go on, the cache catches up when it is back");
                    self.failing_since = Some(Instant::now());
                }
                self.hold(batch);
            }
        }
        if let Some(state) = self.cache.breaker_state() {
            let value = f64::from(state.as_gauge());
            self.metrics.cache_breaker_state.set(value);
            self.metrics.cache_breaker_open.set(value);
        }
    }

    fn hold(&mut self, outputs: Outputs) {
        let Outputs {
            meters,
            bills,
            alerts,
            districts,
            top,
            summaries,
            // Exceptions live in the store only (the API reads them there).
            exceptions: _,
        } = outputs;
        for view in meters {
            self.pending_meters.insert(view);
        }
        let dropped = self.pending_meters.trim(MAX_PENDING_METERS);
        self.metrics.cache_dropped.increment(dropped as u64);
        let others = &mut self.pending_others;
        others.bills.extend(bills);
        others.alerts.extend(alerts);
        // District rows, top lists and summaries are absolute values, and analytics
        // sends a changed window with every group: while the cache is down only the
        // newest of each waits.
        let superseding =
            !others.districts.is_empty() || !others.top.is_empty() || !others.summaries.is_empty();
        others.districts.extend(districts);
        others.top.extend(top);
        others.summaries.extend(summaries);
        if superseding {
            keep_newest(&mut others.districts, |row| {
                (
                    row.tenant.clone(),
                    row.district.clone(),
                    row.resolution,
                    row.start_ms,
                )
            });
            keep_newest(&mut others.top, |top| {
                (top.tenant.clone(), top.day_start_ms)
            });
            keep_newest(&mut others.summaries, |summary| summary.tenant.clone());
        }
        let held = others.bills.len()
            + others.alerts.len()
            + others.districts.len()
            + others.top.len()
            + others.summaries.len();
        if held > MAX_PENDING_OTHERS {
            // Oldest first, and analytics before bills: newer values supersede them.
            // Alerts are kept: they are episodes, not values.
            let excess = held - MAX_PENDING_OTHERS;
            let mut left = excess;
            drop_oldest(&mut others.summaries, &mut left);
            drop_oldest(&mut others.districts, &mut left);
            drop_oldest(&mut others.top, &mut left);
            drop_oldest(&mut others.bills, &mut left);
            self.metrics.cache_dropped.increment((excess - left) as u64);
        }
    }
}

/// The newest view of each meter waiting for the cache, in the order they were first
/// held.
#[derive(Default)]
struct PendingViews {
    /// By (tenant, meter): when first held (a counter) and the newest view.
    views: HashMap<(String, String), (u64, MeterView)>,
    held: u64,
}

impl PendingViews {
    fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// Holds `view`, replacing the meter's held one; battery and signal the new view
    /// does not report stay as the held one had them.
    fn insert(&mut self, mut view: MeterView) {
        let key = (view.tenant.clone(), view.meter.clone());
        match self.views.get_mut(&key) {
            Some((_, held)) => {
                view.battery = view.battery.or(held.battery);
                view.rssi = view.rssi.or(held.rssi);
                *held = view;
            }
            None => {
                self.held += 1;
                self.views.insert(key, (self.held, view));
            }
        }
    }

    /// Drops the views held longest until at most `max` remain; returns how many.
    fn trim(&mut self, max: usize) -> usize {
        let excess = self.views.len().saturating_sub(max);
        if excess > 0 {
            let mut order: Vec<(u64, (String, String))> = self
                .views
                .iter()
                .map(|(key, (held, _))| (*held, key.clone()))
                .collect();
            order.select_nth_unstable(excess - 1);
            for (_, key) in &order[..excess] {
                self.views.remove(key);
            }
        }
        excess
    }

    /// Every held view, leaving none.
    fn drain(&mut self) -> Vec<MeterView> {
        self.views.drain().map(|(_, (_, view))| view).collect()
    }
}

/// Keeps, of the entries of `list` with the same `key`, the last one (in its place
/// among the others, so that the order of what is kept is the order it came in).
fn keep_newest<T, K: Eq + std::hash::Hash>(list: &mut Vec<T>, key: impl Fn(&T) -> K) {
    let mut seen = std::collections::HashSet::with_capacity(list.len());
    let keep: Vec<bool> = list
        .iter()
        .rev()
        .map(|item| seen.insert(key(item)))
        .collect();
    let mut keep = keep.into_iter().rev();
    list.retain(|_| keep.next().unwrap_or(true));
}

/// Drops up to `*count` of the oldest entries of `list`, lowering `*count` by as many.
fn drop_oldest<T>(list: &mut Vec<T>, count: &mut usize) {
    let n = (*count).min(list.len());
    list.drain(..n);
    *count -= n;
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_model::MeterKey;
    use meterflow_model::state::MeterState;

    fn view(meter: &str, battery: Option<u8>) -> MeterView {
        let key = MeterKey::new("t".try_into().unwrap(), meter.try_into().unwrap());
        MeterView {
            battery,
            ..MeterView::of_state(&key, &MeterState::default(), "north", Default::default())
        }
    }

    #[test]
    fn a_held_view_keeps_the_battery_an_older_one_reported() {
        let mut pending = PendingViews::default();
        pending.insert(view("m1", Some(40)));
        pending.insert(view("m1", None));
        assert_eq!(pending.drain(), vec![view("m1", Some(40))]);
        assert!(pending.is_empty());
    }

    #[test]
    fn of_absolute_values_only_the_newest_of_each_waits() {
        let mut list = vec![("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)];
        keep_newest(&mut list, |(key, _)| *key);
        assert_eq!(list, [("a", 3), ("c", 4), ("b", 5)]);
    }

    #[test]
    fn trimming_drops_the_views_held_longest() {
        let mut pending = PendingViews::default();
        for meter in ["m1", "m2", "m3", "m4"] {
            pending.insert(view(meter, None));
        }
        // A newer view of m1 does not make it younger: it has waited longest.
        pending.insert(view("m1", Some(9)));
        assert_eq!(pending.trim(2), 2);
        let mut left: Vec<String> = pending.drain().into_iter().map(|v| v.meter).collect();
        left.sort();
        assert_eq!(left, ["m3", "m4"]);
        assert_eq!(pending.trim(2), 0);
    }
}
