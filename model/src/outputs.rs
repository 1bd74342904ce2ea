//! What processors produce for the hot cache and the API. Values are absolute — the
//! latest reading, today's litres — never increments, so writing them twice is
//! harmless (DESIGN §5, Redis contract).

use serde::{Deserialize, Serialize};

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
}

impl Outputs {
    pub fn clear(&mut self) {
        self.meters.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.meters.is_empty()
    }
}
