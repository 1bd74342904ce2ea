//! The processors' view of [`ProcessorsConfig`]: each tenant's settings with its time
//! zone resolved, shared (read-only) by every processor of every shard. Tenants
//! without an entry get the defaults.
//!
//! Validation reports every problem at once (CONVENTIONS §6): the model's structural
//! checks plus time zones, which only resolve here.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use meterflow_model::processing::{AnalyticsSettings, TenantProcessing};
use meterflow_model::{ProcessorsConfig, TenantId};

use crate::calendar::LocalCalendar;

/// Why a processors configuration was refused; lists every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid processors configuration: {}", .problems.join("; "))]
pub struct ProcessorsConfigError {
    pub problems: Vec<String>,
}

/// One tenant's settings and its resolved calendar (cloned per processor: each keeps
/// its own span caches).
pub struct TenantEntry {
    pub settings: TenantProcessing,
    pub calendar: LocalCalendar,
}

/// Every tenant's settings; see the module doc.
pub struct TenantDirectory {
    default: TenantEntry,
    tenants: HashMap<TenantId, TenantEntry>,
    pub analytics: AnalyticsSettings,
    pub bill_close_after_ms: i64,
}

impl TenantDirectory {
    pub fn resolve(config: &ProcessorsConfig) -> Result<Arc<Self>, ProcessorsConfigError> {
        let mut problems = config.problems();
        let mut entry =
            |label: &str, settings: &TenantProcessing| match LocalCalendar::for_zone_name(
                &settings.tariff.time_zone,
            ) {
                Ok(calendar) => Some(TenantEntry {
                    settings: settings.clone(),
                    calendar,
                }),
                Err(e) => {
                    problems.push(format!("processors.{label}.tariff.time_zone: {e}"));
                    None
                }
            };
        let default = entry("defaults", &config.defaults);
        let tenants: HashMap<_, _> = config
            .tenants
            .iter()
            .filter_map(|(id, settings)| {
                entry(&format!("tenants.{id}"), settings).map(|e| (id.clone(), e))
            })
            .collect();
        match default {
            Some(default) if problems.is_empty() => Ok(Arc::new(Self {
                default,
                tenants,
                analytics: config.analytics.clone(),
                bill_close_after_ms: config.bill_close_after_ms,
            })),
            _ => Err(ProcessorsConfigError { problems }),
        }
    }

    /// Settings of `tenant`, or the defaults.
    pub fn get(&self, tenant: &TenantId) -> &TenantEntry {
        self.tenants.get(tenant).unwrap_or(&self.default)
    }
}

/// Per-tenant runtime state of one processor, built from the directory on a tenant's
/// first sight (one allocation per tenant, none per reading).
pub(crate) struct PerTenant<T> {
    directory: Arc<TenantDirectory>,
    runtimes: HashMap<TenantId, T>,
    build: fn(&TenantEntry) -> T,
}

impl<T> PerTenant<T> {
    pub(crate) fn new(directory: Arc<TenantDirectory>, build: fn(&TenantEntry) -> T) -> Self {
        Self {
            directory,
            runtimes: HashMap::new(),
            build,
        }
    }

    /// The tenant's settings and this processor's runtime for it.
    pub(crate) fn get(&mut self, tenant: &TenantId) -> (&TenantEntry, &mut T) {
        let entry = self.directory.get(tenant);
        if !self.runtimes.contains_key(tenant) {
            self.runtimes.insert(tenant.clone(), (self.build)(entry));
        }
        (
            entry,
            self.runtimes.get_mut(tenant).expect("inserted above"),
        )
    }
}
