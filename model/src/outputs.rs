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
}

impl Outputs {
    pub fn clear(&mut self) {
        self.meters.clear();
        self.bills.clear();
        self.alerts.clear();
        self.districts.clear();
        self.top.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.meters.is_empty()
            && self.bills.is_empty()
            && self.alerts.is_empty()
            && self.districts.is_empty()
            && self.top.is_empty()
    }
}
