//! Configuration of the processors: per tenant, the tariff, VEE and alert rules,
//! notification limits, meter sizes and districts; globally, analytics windows and
//! the billing late window. Serde structs with defaults for every field
//! (CONVENTIONS §6); `ingest` loads them as the `[processors]` section of its TOML.
//!
//! A tenant without an entry gets `defaults`. A tenant entry replaces the defaults
//! as a whole: fields it omits take the built-in defaults, not `defaults`' values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alert::{AlertRules, NotificationLimits};
use crate::billing::Tariff;
use crate::ids::{MeterId, TenantId};
use crate::vee::{MeterSize, VeeRules};

/// District of meters without an entry in [`TenantProcessing::districts`].
pub const DEFAULT_DISTRICT: &str = "default";

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Everything one tenant's processing depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantProcessing {
    pub tariff: Tariff,
    pub vee: VeeRules,
    pub alert_rules: AlertRules,
    pub notifications: NotificationLimits,
    /// Size of meters without an entry in `meter_sizes`.
    pub default_meter_size: MeterSize,
    pub meter_sizes: BTreeMap<MeterId, MeterSize>,
    /// District metered area of each meter; others are in [`DEFAULT_DISTRICT`].
    pub districts: BTreeMap<MeterId, String>,
    /// Bulk (inflow) meters, each with the district it feeds: their usage is the
    /// district's inflow for the water balance, not consumption. A bulk meter is in
    /// no `districts` entry (it is not a customer).
    pub bulk_meters: BTreeMap<MeterId, String>,
}

impl TenantProcessing {
    pub fn meter_size(&self, meter: &MeterId) -> MeterSize {
        self.meter_sizes
            .get(meter)
            .copied()
            .unwrap_or(self.default_meter_size)
    }

    /// The district a meter belongs to: the one it feeds for a bulk meter, its
    /// `districts` entry for a customer, else [`DEFAULT_DISTRICT`].
    pub fn district_of(&self, meter: &MeterId) -> &str {
        self.bulk_meters
            .get(meter)
            .or_else(|| self.districts.get(meter))
            .map_or(DEFAULT_DISTRICT, String::as_str)
    }

    /// Whether `meter` is a bulk (inflow) meter.
    pub fn is_bulk(&self, meter: &MeterId) -> bool {
        self.bulk_meters.contains_key(meter)
    }

    /// Problems of `districts` and `bulk_meters`, each prefixed with `at`.
    fn district_problems(&self, at: &str) -> Vec<String> {
        let names = self
            .districts
            .iter()
            .map(|(meter, district)| (format!("{at}.districts.{meter}"), district))
            .chain(
                self.bulk_meters
                    .iter()
                    .map(|(meter, district)| (format!("{at}.bulk_meters.{meter}"), district)),
            );
        let mut problems: Vec<String> = names
            .filter(|(_, district)| !crate::ids::is_valid_id(district.as_bytes()))
            .map(|(place, district)| {
                format!(
                    "{place}: district {district:?} must be 1-64 of A-Z a-z 0-9 _ - (it becomes \
                     part of Redis keys and URLs)"
                )
            })
            .collect();
        for (meter, fed) in &self.bulk_meters {
            if let Some(member) = self.districts.get(meter) {
                problems.push(format!(
                    "{at}.bulk_meters.{meter}: meter {meter} is also a customer of district \
                     {member:?} in districts; a bulk meter measures the inflow of {fed:?} and is \
                     no customer: remove it from districts"
                ));
            }
        }
        problems
    }
}

/// Windows and flushing of district analytics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsSettings {
    /// How often partial aggregates are flushed to outputs, by batch time. 0 (the
    /// default): with every batch — the district windows and top lists a batch
    /// changed go out with it, so the hourly district rows are stored in the same
    /// commit as the meter states that counted them and a process killed without
    /// stopping (`kill -9`, a power cut) loses none of them; each group commit costs
    /// the cache one write per window the group changed (`bench/README.md`,
    /// `redis_apply`). A positive interval batches those writes instead, at the
    /// price that a killed process loses what its districts counted since its last
    /// flush (its meters' states and readings are stored; they are not counted
    /// again).
    pub flush_interval_ms: i64,
    /// Entries in a top-consumers list.
    pub top_n: usize,
    /// How long minute windows stay open for late reads; older reads are not
    /// counted in them (their totals were already published).
    pub minute_retention_ms: i64,
    /// Same for hour windows (two days: covers a weekend of gateway backlog).
    pub hour_retention_ms: i64,
    /// Same for day windows and top-consumer lists.
    pub day_retention_ms: i64,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        Self {
            flush_interval_ms: 0,
            top_n: 10,
            minute_retention_ms: 2 * HOUR_MS,
            hour_retention_ms: 2 * DAY_MS,
            day_retention_ms: 3 * DAY_MS,
        }
    }
}

/// Reads may still change a billing period's bill this long after it ends; then the
/// bill is final. Three days covers the resend window and a weekend of backlog.
pub const DEFAULT_BILL_CLOSE_AFTER_MS: i64 = 3 * DAY_MS;

/// The `[processors]` configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorsConfig {
    /// Settings of tenants without an entry in `tenants`.
    pub defaults: TenantProcessing,
    /// Per-tenant settings.
    pub tenants: BTreeMap<TenantId, TenantProcessing>,
    pub analytics: AnalyticsSettings,
    /// See [`DEFAULT_BILL_CLOSE_AFTER_MS`].
    pub bill_close_after_ms: i64,
}

impl Default for ProcessorsConfig {
    fn default() -> Self {
        Self {
            defaults: TenantProcessing::default(),
            tenants: BTreeMap::new(),
            analytics: AnalyticsSettings::default(),
            bill_close_after_ms: DEFAULT_BILL_CLOSE_AFTER_MS,
        }
    }
}

impl ProcessorsConfig {
    /// Every problem the model can see, each prefixed with where it is. Time zones
    /// are checked by `meterflow-processors`, which resolves them.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let entries = std::iter::once(("defaults".to_string(), &self.defaults)).chain(
            self.tenants
                .iter()
                .map(|(tenant, settings)| (format!("tenants.{tenant}"), settings)),
        );
        for (tenant, settings) in entries {
            let sections = [
                ("tariff", settings.tariff.problems()),
                ("vee", settings.vee.problems()),
                ("alert_rules", settings.alert_rules.problems()),
            ];
            for (section, found) in sections {
                problems.extend(
                    found
                        .into_iter()
                        .map(|p| format!("processors.{tenant}.{section}: {p}")),
                );
            }
            problems.extend(settings.district_problems(&format!("processors.{tenant}")));
            if settings.notifications.per_minute == 0 || settings.notifications.burst == 0 {
                problems.push(format!(
                    "processors.{tenant}.notifications: burst and per_minute must be at least 1"
                ));
            }
        }
        let a = &self.analytics;
        if a.flush_interval_ms < 0 {
            problems.push(format!(
                "processors.analytics.flush_interval_ms must be 0 (with every batch) or positive, got {}",
                a.flush_interval_ms
            ));
        }
        for (name, value) in [
            ("minute_retention_ms", a.minute_retention_ms),
            ("hour_retention_ms", a.hour_retention_ms),
            ("day_retention_ms", a.day_retention_ms),
        ] {
            if value <= 0 {
                problems.push(format!(
                    "processors.analytics.{name} must be positive, got {value}"
                ));
            }
        }
        if a.top_n == 0 {
            problems.push("processors.analytics.top_n must be at least 1".into());
        }
        if self.bill_close_after_ms < 0 {
            problems.push("processors.bill_close_after_ms must not be negative".into());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(districts: &[(&str, &str)], bulk: &[(&str, &str)]) -> TenantProcessing {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(m, d)| (MeterId::try_from(*m).unwrap(), d.to_string()))
                .collect()
        };
        TenantProcessing {
            districts: map(districts),
            bulk_meters: map(bulk),
            ..TenantProcessing::default()
        }
    }

    #[test]
    fn bulk_meters_feed_a_valid_district_and_are_no_customers() {
        let good = tenant(&[("m1", "north")], &[("b1", "north"), ("b2", "south")]);
        assert!(good.district_problems("t").is_empty());
        assert_eq!(good.district_of(&"b2".try_into().unwrap()), "south");
        assert_eq!(good.district_of(&"m1".try_into().unwrap()), "north");
        assert_eq!(
            good.district_of(&"m9".try_into().unwrap()),
            DEFAULT_DISTRICT
        );
        assert!(good.is_bulk(&"b1".try_into().unwrap()));

        let both = tenant(&[("b1", "south")], &[("b1", "north")]);
        let problems = both.district_problems("t");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("t.bulk_meters.b1:"), "{problems:?}");
        assert!(
            problems[0].contains("remove it from districts"),
            "{problems:?}"
        );

        let bad = tenant(&[("m1", "no rth")], &[("b1", "")]);
        let problems = bad.district_problems("t");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].starts_with("t.bulk_meters.b1: district \"\""));
    }
}
