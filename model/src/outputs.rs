//! What processors produce for the hot cache and the API. Values are absolute — the
//! latest reading, today's litres — never increments, so writing them twice is
//! harmless (DESIGN §5, Redis contract).

use serde::{Deserialize, Serialize};

use crate::alert::AlertEvent;
use crate::analytics::{DistrictUsage, TopConsumers};
use crate::billing::BillLine;
use crate::ids::MeterKey;
use crate::state::Quality;

/// The latest picture of one meter, as dashboards read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterView {
    pub tenant: String,
    pub meter: String,
    /// Watermark of accepted messages when the view was made.
    pub last_seq: Option<u64>,
    /// Timestamp of the newest reading, epoch ms.
    pub last_ts: Option<i64>,
    /// Forward register of the newest reading, litres.
    pub reg: Option<u64>,
    /// Reverse register of the newest reading, litres.
    pub rev: Option<u64>,
    /// Max flow in the newest reading's interval, L/h.
    pub flow: Option<u32>,
    /// Water temperature of the newest reading, 0.1 °C.
    pub temp: Option<i16>,
    /// Litres used on the UTC day of `last_ts`.
    pub today_l: u64,
    pub quality: Quality,
}

impl MeterView {
    pub fn key_matches(&self, key: &MeterKey) -> bool {
        self.tenant == key.tenant.as_str() && self.meter == key.meter.as_str()
    }
}

/// Everything processors emit for one sealed batch.
/// A tenant's headline numbers, as the dashboard's summary shows them. Absolute
/// values, computed where the shards' partials are merged (the sink's rollup).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSummary {
    pub tenant: String,
    /// Local day (tenant time zone) the figures are for, `yyyy-mm-dd`.
    pub day: String,
    /// Litres used by the tenant's meters that day so far.
    pub usage_today_l: u64,
    /// Meters that reported that day.
    pub meters_reporting: u64,
    /// Alert episodes open now.
    pub alerts_open: u64,
    /// When the figures were computed, epoch ms (service clock).
    pub updated_at: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    /// One view per meter touched by the batch.
    pub meters: Vec<MeterView>,
    /// Running bill of each touched meter for each period the batch changed.
    pub bills: Vec<BillLine>,
    /// Alert episode steps (opened, updated, cleared).
    pub alerts: Vec<AlertEvent>,
    /// District usage rows flushed by analytics (per-shard partials: rows of the
    /// same window from different shards merge, see `DistrictUsage::merge`).
    pub districts: Vec<DistrictUsage>,
    /// Top-consumer lists flushed by analytics (per-shard partials as well).
    pub top: Vec<TopConsumers>,
    /// Per-tenant headline numbers; filled by the sink's rollup, never by a shard.
    pub summaries: Vec<TenantSummary>,
}

impl Outputs {
    pub fn clear(&mut self) {
        self.meters.clear();
        self.bills.clear();
        self.alerts.clear();
        self.districts.clear();
        self.top.clear();
        self.summaries.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.meters.is_empty()
            && self.bills.is_empty()
            && self.alerts.is_empty()
            && self.districts.is_empty()
            && self.top.is_empty()
            && self.summaries.is_empty()
    }
}
