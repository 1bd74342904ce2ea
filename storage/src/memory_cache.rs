//! The in-process [`HotCache`]: what dashboards read when no Redis is configured
//! (DESIGN §5, "without Redis, the in-process cache serves the same data over HTTP").
//!
//! It holds exactly one [`MeterView`] per meter ever applied — the latest — keyed by
//! tenant, then meter. Views are absolute values, so applying outputs twice, or out of
//! a crash-replay, leaves the same picture. Memory grows with the number of meters
//! (a few hundred bytes each), which configuration bounds: unknown tenants and meters
//! are dead-lettered before they reach processors. Nothing is persisted; after a
//! restart the cache refills from the next outputs.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use meterflow_model::{MeterKey, MeterView, Outputs};

use crate::{CacheError, HotCache};

/// Views by tenant, then by meter: two levels so that a lookup borrows the ids of a
/// [`MeterKey`] instead of allocating a `(String, String)` key.
type ViewsByTenant = HashMap<String, HashMap<String, MeterView>>;

/// The in-process [`HotCache`]. Never fails.
#[derive(Debug, Default)]
pub struct MemoryCache {
    views: RwLock<ViewsByTenant>,
}

impl MemoryCache {
    pub fn new() -> MemoryCache {
        MemoryCache::default()
    }

    /// Meters with a cached view.
    pub fn meter_count(&self) -> usize {
        self.read().values().map(HashMap::len).sum()
    }

    // A writer that panicked mid-`apply` leaves some views new and some old — each one
    // whole and absolute, which is what the cache promises anyway — so a poisoned lock
    // is used as is.
    fn read(&self) -> RwLockReadGuard<'_, ViewsByTenant> {
        self.views.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, ViewsByTenant> {
        self.views.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl HotCache for MemoryCache {
    /// Upserts every view of `outputs.meters`; a later view of the same meter in the
    /// same outputs wins.
    fn apply(&self, outputs: &Outputs) -> Result<(), CacheError> {
        if outputs.meters.is_empty() {
            return Ok(());
        }
        let mut views = self.write();
        for view in &outputs.meters {
            let meters = match views.get_mut(&view.tenant) {
                Some(meters) => meters,
                None => views.entry(view.tenant.clone()).or_default(),
            };
            match meters.get_mut(&view.meter) {
                Some(cached) => cached.clone_from(view),
                None => {
                    meters.insert(view.meter.clone(), view.clone());
                }
            }
        }
        Ok(())
    }

    fn meter(&self, key: &MeterKey) -> Result<Option<MeterView>, CacheError> {
        Ok(self
            .read()
            .get(key.tenant.as_str())
            .and_then(|meters| meters.get(key.meter.as_str()))
            .cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_model::{MeterId, Quality, TenantId};

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
}
