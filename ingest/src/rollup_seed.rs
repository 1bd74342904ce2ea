//! What an earlier run published of the district windows and top lists a restarted
//! process flushes again (DESIGN §4: a published total is never replaced by a partial
//! one). The sink seeds its [`DistrictRollup`] with it before absorbing a window it
//! holds nothing of, read from where readers read each window: hours from the store
//! (written in the same commit as the meter states that counted them), minutes, days
//! and top lists from the hot cache. A day the cache does not have (the in-process
//! cache starts empty) is rebuilt from the store's hours of that local day: its litres,
//! inflow and night hours exactly, its `meters` as the most of any one hour (a lower
//! bound: who reported in which hour is not stored).
//!
//! A read that fails seeds nothing (logged): the window's totals then start from
//! this run's rows, as they did before seeding existed.
//!
//! [`DistrictRollup`]: meterflow_processors::analytics::DistrictRollup

use meterflow_model::analytics::{NIGHT_HOURS, add_known};
use meterflow_model::{DistrictUsage, Resolution, TenantId, TopConsumers};
use meterflow_processors::TenantDirectory;
use meterflow_storage::{HotCache, ReadingStore};
use tracing::warn;

/// Where a restarted sink reads what was published.
pub struct Published<'a> {
    pub store: &'a dyn ReadingStore,
    pub cache: &'a dyn HotCache,
    /// The tenants' local days.
    pub tenants: &'a TenantDirectory,
}

/// `rows` and `tops` (placeholders naming windows, as the rollup's `unseen` gives
/// them) filled with what was published of each.
impl Published<'_> {
    /// `rows` and `tops` (placeholders naming windows, as the rollup's `unseen`
    /// gives them) filled with what was published of each.
    pub fn read(
        &self,
        rows: Vec<DistrictUsage>,
        tops: Vec<TopConsumers>,
    ) -> (Vec<DistrictUsage>, Vec<TopConsumers>) {
        let rows = rows
            .into_iter()
            .map(|row| match self.window(&row) {
                Ok(published) => published.unwrap_or(row),
                Err(error) => {
                    warn!(tenant = %row.tenant, district = %row.district, start_ms = row.start_ms, %error, "reading what an earlier run published of a district window failed; its totals start from this run's rows");
                    row
                }
            })
            .collect();
        let tops = tops.into_iter().map(|top| self.top(top)).collect();
        (rows, tops)
    }

    /// The published row of `row`'s window, if any.
    fn window(&self, row: &DistrictUsage) -> Result<Option<DistrictUsage>, String> {
        let (tenant, district, start) = (&row.tenant, &row.district, row.start_ms);
        let found = |rows: Vec<DistrictUsage>| rows.into_iter().find(|r| r.start_ms == start);
        match row.resolution {
            Resolution::Hour => self
                .store
                .district_hourly(tenant, district, start, start + 1)
                .map(found)
                .map_err(|e| e.to_string()),
            resolution => {
                let cached = self
                    .cache
                    .district_usage(tenant, district, resolution, start, start + 1)
                    .map(found)
                    .map_err(|e| e.to_string())?;
                match (cached, resolution) {
                    (None, Resolution::Day) => self.day_from_hours(row),
                    (cached, _) => Ok(cached),
                }
            }
        }
    }

    /// `row`'s local day added up from the store's hours of it.
    fn day_from_hours(&self, row: &DistrictUsage) -> Result<Option<DistrictUsage>, String> {
        let Ok(tenant) = TenantId::try_from(row.tenant.as_str()) else {
            return Ok(None);
        };
        let mut calendar = self.tenants.get(&tenant).calendar.clone();
        let end = calendar.day(row.start_ms).end_ms;
        let hours = self
            .store
            .district_hourly(&row.tenant, &row.district, row.start_ms, end)
            .map_err(|e| e.to_string())?;
        if hours.is_empty() {
            return Ok(None);
        }
        let mut day = DistrictUsage::new(&row.tenant, &row.district, Resolution::Day, row.start_ms);
        for hour in &hours {
            day.usage_l += hour.usage_l;
            day.meters = day.meters.max(hour.meters);
            day.inflow_l = add_known(day.inflow_l, hour.inflow_l);
            let hour_of_day = calendar.hour_of_day(hour.start_ms);
            if let Some(slot) = NIGHT_HOURS.iter().position(|h| *h == hour_of_day) {
                day.night_hour_l[slot] = add_known(day.night_hour_l[slot], Some(hour.usage_l));
                day.inflow_night_hour_l[slot] =
                    add_known(day.inflow_night_hour_l[slot], hour.inflow_l);
            }
        }
        day.refresh_derived();
        Ok(Some(day))
    }

    /// `top` filled with the cached list of its day.
    fn top(&self, top: TopConsumers) -> TopConsumers {
        match self.cache.top_consumers(&top.tenant, &top.day, top.limit) {
            Ok(entries) => TopConsumers { entries, ..top },
            Err(error) => {
                warn!(tenant = %top.tenant, day = %top.day, %error, "reading what an earlier run published of a top list failed; it starts from this run's meters");
                top
            }
        }
    }
}
