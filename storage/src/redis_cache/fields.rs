//! Field names of the Redis contract: what dashboards read (`docs/redis-keys.md`).
//! Values are decimal strings unless noted; the Lua scripts (`scripts.rs`) spell some
//! of these names too, and a test checks they agree.

// `mf:{t}:meter:{m}` HASH, mirroring `MeterView` (these keep their historical place
// at the top of the module).

/// Acked watermark (seq).
pub const LAST_SEQ: &str = "last_seq";
/// Epoch ms of the newest reading.
pub const LAST_TS: &str = "last_ts";
/// Forward register, litres.
pub const REG: &str = "reg";
/// Reverse register, litres.
pub const REV: &str = "rev";
/// Max flow of the newest interval, L/h.
pub const FLOW: &str = "flow";
/// Water temperature, 0.1 °C.
pub const TEMP: &str = "temp";
/// Litres on the UTC day of `last_ts`.
pub const TODAY_L: &str = "today_l";
/// `actual` | `estimated` | `suspect`.
pub const QUALITY: &str = "quality";
/// Billing period (`yyyy-mm`, tenant-local month) of `period_l` and `bill_cents`.
pub const PERIOD: &str = "period";
/// Litres used in `period` so far.
pub const PERIOD_L: &str = "period_l";
/// Running bill of `period`, minor currency units (cents).
pub const BILL_CENTS: &str = "bill_cents";
/// Alert episodes of the meter open now.
pub const ALERTS_OPEN: &str = "alerts_open";
/// District metered area of the meter (`default` when unassigned); always written.
pub const DISTRICT: &str = "district";
/// Battery level, percent, as the meter last reported it. Kept when a later batch
/// reports none (never deleted by a view).
pub const BATTERY: &str = "battery";
/// Signal strength at the meter, dBm, as it last reported it; kept like `battery`.
pub const RSSI: &str = "rssi";
/// The meter's size (`dn15` … `dn150`): the one its newest recorded exchange gave,
/// else the configured one. Absent in hashes written before views showed it.
pub const SIZE: &str = "size";
/// The version of the meter state the view was made from (`MeterView::version`):
/// a view, bill or alert step of a lower one is not applied over it. Absent in
/// hashes written before versions.
pub const VERSION: &str = "version";

/// `mf:{t}:district:{d}:{min|hour|day}:{stamp}` HASH.
pub mod district {
    /// Window start, epoch ms (exact; the key's stamp is derived from it).
    pub const START_MS: &str = "start_ms";
    /// Litres used in the window.
    pub const USAGE_L: &str = "usage_l";
    /// Meters with a counted read ending in the window.
    pub const METERS: &str = "meters";
    /// Hour rows: percentiles of per-meter hourly usage, litres.
    pub const P50_L: &str = "p50_l";
    pub const P90_L: &str = "p90_l";
    pub const P99_L: &str = "p99_l";
    /// Day rows: district usage in the local 02:00 and 03:00 hours, litres
    /// (`NIGHT_HOURS`).
    pub const NIGHT_02_L: &str = "night_02_l";
    pub const NIGHT_03_L: &str = "night_03_l";
    /// Day rows: minimum night flow, L/h.
    pub const NIGHT_FLOW_LPH: &str = "night_flow_lph";
    /// Litres the district's bulk (inflow) meters measured in the window.
    pub const INFLOW_L: &str = "inflow_l";
    /// Day rows: inflow in the local 02:00 and 03:00 hours, litres.
    pub const INFLOW_NIGHT_02_L: &str = "inflow_night_02_l";
    pub const INFLOW_NIGHT_03_L: &str = "inflow_night_03_l";
    /// Day rows: minimum night flow of the inflow, L/h.
    pub const INFLOW_NIGHT_FLOW_LPH: &str = "inflow_night_flow_lph";
}

/// Entries of the `mf:{t}:alerts` STREAM, and keys of the JSON objects in
/// `mf:{t}:alerts:open` (which also carry `tenant`).
pub mod alert {
    pub const TENANT: &str = "tenant";
    pub const METER: &str = "meter";
    /// `leak`, `burst`, … (`AlertKind::name`).
    pub const KIND: &str = "kind";
    /// `critical` | `high` | `low`.
    pub const PRIORITY: &str = "priority";
    /// `opened` | `updated` | `cleared` | `withdrawn`.
    pub const STATE: &str = "state";
    /// Epoch ms the episode opened; with meter and kind, the episode's identity.
    pub const OPENED_AT: &str = "opened_at";
    /// Epoch ms of this step.
    pub const AT: &str = "at";
    /// Human-readable cause.
    pub const DETAIL: &str = "detail";
    /// Write order of the meter's alert events (`AlertEvent::revision`).
    pub const REVISION: &str = "revision";
}

/// `mf:{t}:summary` HASH.
pub mod summary {
    /// Tenant-local day of the figures, `yyyy-mm-dd`.
    pub const DAY: &str = "day";
    /// Litres used that day so far.
    pub const USAGE_TODAY_L: &str = "usage_today_l";
    /// Meters that reported that day.
    pub const METERS_REPORTING: &str = "meters_reporting";
    /// Alert episodes open now (`HLEN mf:{t}:alerts:open`).
    pub const ALERTS_OPEN: &str = "alerts_open";
    /// When the figures were computed, epoch ms (service clock).
    pub const UPDATED_AT: &str = "updated_at";
}
