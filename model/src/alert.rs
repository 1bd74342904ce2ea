//! Alert vocabulary: kinds, priorities, episodes and their events, the per-tenant
//! rules (vendor-like defaults, each explained), the per-meter alert state persisted
//! in `meter_state`, and the notification limits. The rules are applied in
//! `meterflow-processors` (`alerting`, `notify`).
//!
//! An alert is an *episode* of one kind on one meter: opened → updated* → cleared.
//! At most one episode per (meter, kind) is open at a time. An episode that data
//! arriving later shows never happened (a late read fills the quiet hour a leak
//! was opened for) is *withdrawn*; one whose clearing was wrong is updated again.

use serde::{Deserialize, Serialize};

pub use crate::status_log::{StatusLog, StatusPoint};
use crate::uplink::DeviceFlag;

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Water never stopped: no zero-consumption hour within the leak window.
    Leak,
    /// Flow above the burst threshold for the burst duration.
    Burst,
    /// The reverse register grew: water flowed back into the network.
    Backflow,
    /// No consumption for the configured number of days.
    NoConsumption,
    /// No message from the meter for the configured time.
    NoCommunication,
    LowBattery,
    /// Water temperature at or below the freeze threshold.
    Freeze,
    Tamper,
    /// A magnet was held to the meter (an attempt to stop the register).
    Magnetic,
    CutCable,
    /// The pipe ran dry (air in the meter).
    DryPipe,
    /// The device reports its register as faulty.
    RegisterError,
}

impl AlertKind {
    pub const ALL: [AlertKind; 12] = [
        AlertKind::Leak,
        AlertKind::Burst,
        AlertKind::Backflow,
        AlertKind::NoConsumption,
        AlertKind::NoCommunication,
        AlertKind::LowBattery,
        AlertKind::Freeze,
        AlertKind::Tamper,
        AlertKind::Magnetic,
        AlertKind::CutCable,
        AlertKind::DryPipe,
        AlertKind::RegisterError,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            AlertKind::Leak => "leak",
            AlertKind::Burst => "burst",
            AlertKind::Backflow => "backflow",
            AlertKind::NoConsumption => "no_consumption",
            AlertKind::NoCommunication => "no_communication",
            AlertKind::LowBattery => "low_battery",
            AlertKind::Freeze => "freeze",
            AlertKind::Tamper => "tamper",
            AlertKind::Magnetic => "magnetic",
            AlertKind::CutCable => "cut_cable",
            AlertKind::DryPipe => "dry_pipe",
            AlertKind::RegisterError => "register_error",
        }
    }

    /// How urgently a utility acts on it: water lost fast, contamination risk or
    /// fraud first; slow losses next; maintenance last.
    pub const fn priority(self) -> Priority {
        match self {
            AlertKind::Burst
            | AlertKind::Backflow
            | AlertKind::Tamper
            | AlertKind::Magnetic
            | AlertKind::CutCable => Priority::Critical,
            AlertKind::Leak | AlertKind::Freeze | AlertKind::DryPipe => Priority::High,
            AlertKind::NoCommunication
            | AlertKind::NoConsumption
            | AlertKind::RegisterError
            | AlertKind::LowBattery => Priority::Low,
        }
    }
}

/// Notification priority; `Critical` is delivered first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Critical,
    High,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::High, Priority::Low];

    /// The stable name stored and served (the serde name).
    pub const fn name(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Low => "low",
        }
    }
}

/// Where an episode is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EpisodeState {
    Opened,
    /// Still open; something about it changed or it was reconfirmed.
    Updated,
    Cleared,
    /// It never happened: data that arrived later (within the late window) shows
    /// the condition did not hold. Not open, and not counted as an episode.
    Withdrawn,
}

impl EpisodeState {
    pub const ALL: [EpisodeState; 4] = [
        EpisodeState::Opened,
        EpisodeState::Updated,
        EpisodeState::Cleared,
        EpisodeState::Withdrawn,
    ];

    /// The stable name stored and served (the serde name).
    pub const fn name(self) -> &'static str {
        match self {
            EpisodeState::Opened => "opened",
            EpisodeState::Updated => "updated",
            EpisodeState::Cleared => "cleared",
            EpisodeState::Withdrawn => "withdrawn",
        }
    }

    /// Whether the episode is open after this step.
    pub const fn is_open(self) -> bool {
        matches!(self, EpisodeState::Opened | EpisodeState::Updated)
    }

    /// Its place among the steps at one instant: an episode opened and cleared by
    /// the same reading ends cleared.
    pub const fn step(self) -> u8 {
        match self {
            EpisodeState::Opened => 0,
            EpisodeState::Updated => 1,
            EpisodeState::Cleared => 2,
            EpisodeState::Withdrawn => 3,
        }
    }
}

/// One step of an alert episode, for the `alerts` table, the Redis stream and
/// notifications.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlertEvent {
    pub tenant: String,
    pub meter: String,
    pub kind: AlertKind,
    pub priority: Priority,
    pub state: EpisodeState,
    /// When the episode opened, epoch ms; identifies the episode with (meter, kind).
    pub opened_at: i64,
    /// When this step happened, epoch ms: the reading or status time that showed it,
    /// or the sweep time for no-communication.
    pub at: i64,
    /// Human-readable cause, e.g. `no zero-flow hour for 26 h`.
    pub detail: String,
    /// Write order of the meter's alert events: each is above every earlier one of
    /// its meter, so it is the episode's latest word even when its `at` is earlier
    /// (a clearing moved back by a late read, a withdrawal). Both stores keep the
    /// event of the highest revision per episode (ScyllaDB writes it as the row's
    /// `USING TIMESTAMP`), so a batch replayed or written out of order cannot undo
    /// a later one. At least [`AlertEvent::first_revision`] of its `at` and step.
    pub revision: i64,
}

impl AlertEvent {
    /// The least revision of an event at `at` in `state`: `at` in µs, the step in
    /// the sub-millisecond digits. Revisions before version 6 were exactly this, so
    /// a meter's new events stay above the rows written before.
    pub fn first_revision(at: i64, state: EpisodeState) -> i64 {
        at.saturating_mul(1_000)
            .saturating_add(i64::from(state.step()))
    }
}

const HOUR_MS: i64 = 3_600_000;

/// Alert rules of one tenant. Defaults follow what AMI vendors ship.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertRules {
    /// Leak: no hour with zero consumption for this long. 24 h is the industry
    /// default: every occupied home has at least one quiet hour a night.
    pub leak_window_ms: i64,
    /// Leak: the longest interval between actual reads that counts as evidence of
    /// continuous flow (2 h: hourly and 15-minute meters qualify). A longer one —
    /// an outage — or estimated readings restart the leak window instead; meters
    /// read less often than this never raise the leak rule (their device flag
    /// still does).
    pub leak_evidence_interval_ms: i64,
    /// Burst: average flow over an interval at or above this, L/h. 1,500 L/h is
    /// well above household peaks (a shower is ~600 L/h) and 60 % of a DN15's Q3.
    pub burst_flow_lph: u64,
    /// Burst: sustained for at least this long (30 min).
    pub burst_duration_ms: i64,
    /// Backflow: reverse register growth within an episode, litres, that opens an
    /// alert. 10 L ignores the litre or two that pressure transients push back.
    pub backflow_min_l: u64,
    /// Backflow clears once the reverse register has not grown for this long.
    pub backflow_clear_ms: i64,
    /// No consumption for this many days. 30 days outlasts holidays, so it points
    /// at a stuck meter or a vacant property.
    pub no_consumption_days: u32,
    /// No communication: no message for this long. Meters send at least daily;
    /// 72 h rides out a weekend of gateway trouble.
    pub no_communication_ms: i64,
    /// Low battery at or below this percentage (vendors warn at 10 %, roughly a
    /// year before the device dies).
    pub low_battery_pct: u8,
    /// Low battery clears at or above this percentage (hysteresis, so a level
    /// hovering at the threshold does not flap).
    pub low_battery_clear_pct: u8,
    /// Freeze at or below this water temperature, 0.1 °C (2.0 °C).
    pub freeze_temp: i16,
    /// Freeze clears at or above this temperature, 0.1 °C (4.0 °C, hysteresis).
    pub freeze_clear_temp: i16,
    /// An open episode whose condition still holds is re-announced (`updated`) at
    /// most this often, so dashboards see it is ongoing without a flood (24 h).
    pub update_interval_ms: i64,
}

impl Default for AlertRules {
    fn default() -> Self {
        Self {
            leak_window_ms: 24 * HOUR_MS,
            leak_evidence_interval_ms: 2 * HOUR_MS,
            burst_flow_lph: 1_500,
            burst_duration_ms: HOUR_MS / 2,
            backflow_min_l: 10,
            backflow_clear_ms: 24 * HOUR_MS,
            no_consumption_days: 30,
            no_communication_ms: 72 * HOUR_MS,
            low_battery_pct: 10,
            low_battery_clear_pct: 15,
            freeze_temp: 20,
            freeze_clear_temp: 40,
            update_interval_ms: 24 * HOUR_MS,
        }
    }
}

impl AlertRules {
    /// Every problem with these rules, for configuration validation.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in [
            ("leak_window_ms", self.leak_window_ms),
            ("leak_evidence_interval_ms", self.leak_evidence_interval_ms),
            ("burst_duration_ms", self.burst_duration_ms),
            ("backflow_clear_ms", self.backflow_clear_ms),
            ("no_communication_ms", self.no_communication_ms),
            ("update_interval_ms", self.update_interval_ms),
        ] {
            if value <= 0 {
                problems.push(format!("{name} must be positive, got {value}"));
            }
        }
        if self.low_battery_clear_pct < self.low_battery_pct {
            problems.push(format!(
                "low_battery_clear_pct {} must be at least low_battery_pct {}",
                self.low_battery_clear_pct, self.low_battery_pct
            ));
        }
        if self.freeze_clear_temp < self.freeze_temp {
            problems.push(format!(
                "freeze_clear_temp {} must be at least freeze_temp {}",
                self.freeze_clear_temp, self.freeze_temp
            ));
        }
        problems
    }
}

/// Why an episode is open: a device flag, a rule on interval data, or both.
pub const SOURCE_DEVICE: u8 = 1;
pub const SOURCE_RULE: u8 = 2;

/// An open episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAlert {
    pub kind: AlertKind,
    pub opened_at: i64,
    /// When its last event (opened or updated) was emitted.
    pub last_event_at: i64,
    /// [`SOURCE_DEVICE`] | [`SOURCE_RULE`]: it clears when no source holds.
    pub sources: u8,
}

/// What alerting knows of a meter at one point of its time-ordered data: the open
/// episodes (but no-communication, which only the service clock shows) and what the
/// interval rules track. Timestamps are epoch ms of reading time (the device's `ts`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertFold {
    /// Open episodes, at most one per kind.
    pub open: Vec<OpenAlert>,
    /// Newest reading folded into the interval rules.
    pub last_ts: Option<i64>,
    /// Reverse register of that reading.
    pub last_rev: Option<u64>,
    /// First reading: the leak and no-consumption windows start here.
    pub first_ts: Option<i64>,
    /// Start of the current run of zero-consumption intervals.
    pub zero_run_since: Option<i64>,
    /// Where the leak window starts: the end of the newest complete
    /// zero-consumption hour, or of the newest interval that is no evidence
    /// (estimated, or an outage).
    pub last_zero_hour_ts: Option<i64>,
    /// Start of the current run of intervals at burst flow.
    pub burst_since: Option<i64>,
    /// End of the newest interval with consumption.
    pub last_consumption_ts: Option<i64>,
    /// Reverse-register growth since the backflow run began, litres.
    pub backflow_l: u64,
    /// Newest reading at which the reverse register grew.
    pub last_backflow_ts: Option<i64>,
}

/// Device flags and the alert kind each opens.
pub const FLAG_KINDS: [(DeviceFlag, AlertKind); 10] = [
    (DeviceFlag::Leak, AlertKind::Leak),
    (DeviceFlag::Burst, AlertKind::Burst),
    (DeviceFlag::Backflow, AlertKind::Backflow),
    (DeviceFlag::Tamper, AlertKind::Tamper),
    (DeviceFlag::Magnetic, AlertKind::Magnetic),
    (DeviceFlag::CutCable, AlertKind::CutCable),
    (DeviceFlag::DryPipe, AlertKind::DryPipe),
    (DeviceFlag::LowBattery, AlertKind::LowBattery),
    (DeviceFlag::Freeze, AlertKind::Freeze),
    (DeviceFlag::RegisterError, AlertKind::RegisterError),
];

/// Per-meter alerting state. Episodes are derived from the meter's data in reading
/// time, so they are the same whatever order the data arrived in: alerting keeps
/// its fold at VEE's settled point (persisted), the window's rows after it (rebuilt
/// from the stored rows on hydration, like VEE's window) and the window's status
/// statuses (persisted: statuses are not stored elsewhere), and derives the window's
/// events again when data lands inside it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    /// The fold over everything at or before `settled_ts` (final).
    pub settled: AlertFold,
    /// Where the settled fold ends (VEE's settled point when it last moved).
    pub settled_ts: Option<i64>,
    /// The device statuses after `settled_ts`, by `ts` (one per `ts`).
    pub statuses: StatusLog,
    /// The open no-communication episode (the sweep's, service clock).
    pub no_communication: Option<OpenAlert>,
    /// Newest message received from the meter, service clock (no-communication).
    pub last_seen_at: Option<i64>,
    /// Revision of the newest event emitted ([`AlertEvent::revision`]).
    pub revision: i64,
    /// The window's rows after `settled_ts` that the rules read (not suspect), by
    /// `ts`. Rebuilt on hydration.
    #[serde(skip)]
    pub rows: std::collections::VecDeque<RuleRow>,
    /// The fold over the settled fold, the rows and the statuses (it stands on the
    /// window's last item). Rebuilt on hydration.
    #[serde(skip)]
    pub head: AlertFold,
    /// The steps the window's items make from the settled fold, in order: what the
    /// stores hold of them, to compare with when the window is folded again.
    /// Rebuilt on hydration.
    #[serde(skip)]
    pub window_steps: Vec<EpisodeStep>,
}

/// One step of one of a meter's episodes, as alerting derives it (an
/// [`AlertEvent`] without its meter and revision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpisodeStep {
    pub kind: AlertKind,
    pub state: EpisodeState,
    pub opened_at: i64,
    pub at: i64,
    pub detail: String,
}

impl EpisodeStep {
    /// The episode it belongs to.
    pub fn episode(&self) -> (AlertKind, i64) {
        (self.kind, self.opened_at)
    }
}

/// What the interval rules read of a stored row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleRow {
    pub ts: i64,
    /// Litres of the interval ending at `ts` (0 for a read that measures none: the
    /// rules read it so). Not an `Option`: the window holds up to 288 rows a meter,
    /// and a row is 32 bytes this way, 40 with one.
    pub interval_l: u64,
    /// Actual or estimated.
    pub estimated: bool,
    pub rev: u64,
    pub temp: Option<i16>,
}

impl AlertState {
    /// Whether an episode of `kind` is open now.
    pub fn is_open(&self, kind: AlertKind) -> bool {
        self.head.open.iter().any(|a| a.kind == kind)
            || (kind == AlertKind::NoCommunication && self.no_communication.is_some())
    }

    /// The episodes open now, no-communication included.
    pub fn open(&self) -> impl Iterator<Item = &OpenAlert> {
        self.head.open.iter().chain(self.no_communication.iter())
    }
}

/// Per-tenant notification limits (token bucket and pending queue).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationLimits {
    /// Notifications that may go out at once after a quiet spell (bucket size).
    pub burst: u32,
    /// Sustained notifications per minute (refill rate). 30/min keeps a utility's
    /// on-call channel readable during an incident; the rest waits, coalesced.
    pub per_minute: u32,
    /// Most notifications waiting; past it the lowest-priority oldest is dropped
    /// (counted). Bounds memory in an alert storm (e.g. a district-wide freeze).
    pub max_pending: usize,
}

impl Default for NotificationLimits {
    fn default() -> Self {
        Self {
            burst: 100,
            per_minute: 30,
            max_pending: 10_000,
        }
    }
}

impl crate::codec::binary::Record for AlertEvent {
    fn decode_v1(body: &[u8]) -> Result<Self, crate::codec::binary::RecordError> {
        crate::state_v5::decode_event(body)
    }

    fn decode_v2(body: &[u8]) -> Result<Self, crate::codec::binary::RecordError> {
        crate::state_v5::decode_event(body)
    }

    fn decode_v3(body: &[u8]) -> Result<Self, crate::codec::binary::RecordError> {
        crate::state_v5::decode_event(body)
    }

    fn decode_v4(body: &[u8]) -> Result<Self, crate::codec::binary::RecordError> {
        crate::state_v5::decode_event(body)
    }

    fn decode_v5(body: &[u8]) -> Result<Self, crate::codec::binary::RecordError> {
        crate::state_v5::decode_event(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A meter's alerting window holds up to 288 rows in memory: keep a row small.
    #[test]
    fn a_rule_row_is_32_bytes() {
        assert_eq!(std::mem::size_of::<RuleRow>(), 32);
    }
}
