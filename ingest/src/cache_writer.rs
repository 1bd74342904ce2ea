//! Applies processor outputs to the hot cache without ever holding up storage or
//! acks (DESIGN §6.6: Redis down → keep storing; the cache is rebuilt).
//!
//! When an update fails, what it carried is kept — per meter only the newest view,
//! since values are absolute — and applied with the next update that succeeds, or by
//! [`CacheWriter::retry_pending`] when no traffic comes. So once the cache is back,
//! it is current again with the next attempt, not only for meters that report again.
//! What is kept is bounded ([`MAX_PENDING_METERS`]); past it the oldest views are
//! dropped and counted — those meters are repaired by their next report.

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
    pending_meters: HashMap<(String, String), MeterView>,
    /// Everything else not yet applied, in order.
    pending_others: Outputs,
    failing_since: Option<Instant>,
}

impl CacheWriter {
    pub fn new(cache: Arc<dyn HotCache>, metrics: PipelineMetrics) -> Self {
        Self {
            cache,
            metrics,
            pending_meters: HashMap::new(),
            pending_others: Outputs::default(),
            failing_since: None,
        }
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
        batch.meters = self.pending_meters.drain().map(|(_, view)| view).collect();
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

    /// Whether updates are waiting for the cache.
    pub fn has_pending(&self) -> bool {
        !self.pending_meters.is_empty() || !self.pending_others.is_empty()
    }

    fn hold(&mut self, outputs: Outputs) {
        let Outputs {
            meters,
            bills,
            alerts,
            districts,
            top,
            summaries,
        } = outputs;
        for view in meters {
            self.pending_meters
                .insert((view.tenant.clone(), view.meter.clone()), view);
        }
        if self.pending_meters.len() > MAX_PENDING_METERS {
            let excess = self.pending_meters.len() - MAX_PENDING_METERS;
            let dropped: Vec<_> = self.pending_meters.keys().take(excess).cloned().collect();
            for key in dropped {
                self.pending_meters.remove(&key);
            }
            self.metrics.cache_dropped.increment(excess as u64);
        }
        let others = &mut self.pending_others;
        others.bills.extend(bills);
        others.alerts.extend(alerts);
        others.districts.extend(districts);
        others.top.extend(top);
        others.summaries.extend(summaries);
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

/// Drops up to `*count` of the oldest entries of `list`, lowering `*count` by as many.
fn drop_oldest<T>(list: &mut Vec<T>, count: &mut usize) {
    let n = (*count).min(list.len());
    list.drain(..n);
    *count -= n;
}
