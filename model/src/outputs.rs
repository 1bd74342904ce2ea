//! What processors produce for the hot cache and the API. Values are absolute — the
//! latest reading, today's litres — never increments, so writing them twice is
//! harmless (DESIGN §5, Redis contract).

use serde::{Deserialize, Serialize};

use crate::alert::AlertEvent;
use crate::analytics::{DistrictUsage, TopConsumers};
use crate::billing::BillLine;
use crate::exception::ReadException;
use crate::ids::MeterKey;
use crate::state::{MeterState, Quality};
use crate::vee::{MeterSize, size_at};

/// The latest picture of one meter, as dashboards read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Litres used on the tenant's local day of `last_ts` (the interval rule of
    /// [`TenantSummary`]).
    pub today_l: u64,
    pub quality: Quality,
    /// District metered area the meter belongs to (`default` when unassigned).
    #[serde(default)]
    pub district: String,
    /// The meter's size: the one its newest recorded exchange gave, else the
    /// configured one (`meter_sizes`). None in a view written before views showed it.
    #[serde(default)]
    pub size: Option<MeterSize>,
    /// Battery level, percent, as the meter last reported it.
    #[serde(default)]
    pub battery: Option<u8>,
    /// Received signal strength at the meter, dBm, as it last reported it.
    #[serde(default)]
    pub rssi: Option<i16>,
    /// The [`MeterState::version`] the view was made from: a cache keeps the view
    /// (and the bill and alert steps of the same apply) of the greatest version, so
    /// a stalled former owner's late apply replaces nothing newer. Not part of the
    /// API's view. 0: unknown (the cache writes it unconditionally).
    #[serde(skip)]
    pub version: i64,
}

impl MeterView {
    /// The view of a meter in `state`, a member of `district`, configured as of
    /// `configured_size`; battery and signal are left for the caller, which knows the
    /// newest device status if any.
    pub fn of_state(
        key: &MeterKey,
        state: &MeterState,
        district: &str,
        configured_size: MeterSize,
    ) -> Self {
        let last = state.usage.last;
        MeterView {
            tenant: key.tenant.to_string(),
            meter: key.meter.to_string(),
            last_seq: state.seq.watermark(),
            last_ts: last.map(|r| r.ts),
            reg: last.map(|r| r.reg),
            rev: last.map(|r| r.rev),
            flow: last.map(|r| r.flow),
            temp: last.and_then(|r| r.temp),
            today_l: state.usage.today_l,
            quality: state.usage.last_quality,
            district: district.to_owned(),
            size: Some(size_at(&state.vee.sizes, i64::MAX, configured_size)),
            battery: None,
            rssi: None,
            version: state.version,
        }
    }
}

/// Which of a tenant's cached meters to list (`GET …/meters`), in meter-id order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeterQuery {
    /// Only meters whose id contains this text.
    pub search: Option<String>,
    /// Only meters of this district.
    pub district: Option<String>,
    /// Only silent meters: those whose newest reading is older than this, epoch ms.
    pub silent_before_ms: Option<i64>,
    /// Start after this meter id (the previous page's `next`).
    pub after: Option<String>,
    /// At most this many meters.
    pub limit: usize,
}

impl MeterQuery {
    /// Whether `view` passes the query's filters (not its paging).
    pub fn matches(&self, view: &MeterView) -> bool {
        self.search
            .as_deref()
            .is_none_or(|s| view.meter.contains(s))
            && self.district.as_deref().is_none_or(|d| view.district == d)
            && self
                .silent_before_ms
                .is_none_or(|before| view.last_ts.is_none_or(|ts| ts < before))
    }
}

/// One page of a meter list; `next` is the `after` of the following page, `None` on
/// the last one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MeterPage {
    pub meters: Vec<MeterView>,
    pub next: Option<String>,
}

/// A tenant's headline numbers, as the dashboard's summary shows them. Absolute
/// values, computed where the shards' partials are merged (the sink's rollup).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Per-tenant headline numbers; filled by the sink's rollup, never by a shard.
    pub summaries: Vec<TenantSummary>,
    /// Validation exceptions raised, resolved or decided (VEE): the latest word on
    /// each `(meter, ts)`, upserted.
    pub exceptions: Vec<ReadException>,
}

impl Outputs {
    pub fn clear(&mut self) {
        self.meters.clear();
        self.bills.clear();
        self.alerts.clear();
        self.districts.clear();
        self.top.clear();
        self.summaries.clear();
        self.exceptions.clear();
    }

    /// Moves everything of `other` after this outputs' own (later values of the same
    /// key win where they are applied), leaving `other` empty.
    pub fn append(&mut self, other: &mut Outputs) {
        self.meters.append(&mut other.meters);
        self.bills.append(&mut other.bills);
        self.alerts.append(&mut other.alerts);
        self.districts.append(&mut other.districts);
        self.top.append(&mut other.top);
        self.summaries.append(&mut other.summaries);
        self.exceptions.append(&mut other.exceptions);
    }

    pub fn is_empty(&self) -> bool {
        self.meters.is_empty()
            && self.bills.is_empty()
            && self.alerts.is_empty()
            && self.districts.is_empty()
            && self.top.is_empty()
            && self.summaries.is_empty()
            && self.exceptions.is_empty()
    }
}
