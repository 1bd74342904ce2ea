//! Alert vocabulary: kinds, priorities, episodes and their events, the per-tenant
//! rules (vendor-like defaults, each explained), the per-meter alert state persisted
//! in `meter_state`, and the notification limits. The rules are applied in
//! `meterflow-processors` (`alerting`, `notify`).
//!
//! An alert is an *episode* of one kind on one meter: opened → updated* → cleared.
//! At most one episode per (meter, kind) is open at a time.

use serde::{Deserialize, Serialize};

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
}

impl EpisodeState {
    pub const ALL: [EpisodeState; 3] = [
        EpisodeState::Opened,
        EpisodeState::Updated,
        EpisodeState::Cleared,
    ];

    /// The stable name stored and served (the serde name).
    pub const fn name(self) -> &'static str {
        match self {
            EpisodeState::Opened => "opened",
            EpisodeState::Updated => "updated",
            EpisodeState::Cleared => "cleared",
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
}

impl AlertEvent {
    /// Where the event stands in its episode: later events sort higher. `at` first;
    /// at the same instant, the lifecycle step (an episode opened and cleared by the
    /// same reading ends cleared). Both stores keep the latest event by this order.
    pub fn order(&self) -> (i64, u8) {
        let step = match self.state {
            EpisodeState::Opened => 0,
            EpisodeState::Updated => 1,
            EpisodeState::Cleared => 2,
        };
        (self.at, step)
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

/// Per-meter alerting state: open episodes and what the interval rules track.
/// Timestamps are epoch ms; "reading time" is the device's `ts`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    /// Open episodes, at most one per kind.
    pub open: Vec<OpenAlert>,
    /// Newest reading folded into the interval rules (older ones are ignored).
    pub last_ts: Option<i64>,
    /// Reverse register of that reading.
    pub last_rev: Option<u64>,
    /// First reading ever seen: the leak and no-consumption windows start here.
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
    /// Newest message received from the meter, service clock (no-communication).
    pub last_seen_at: Option<i64>,
    /// `ts` of the newest device status folded in; an older one arrives late.
    pub last_status_ts: Option<i64>,
    /// The flags of that status, as a [`Flags`](crate::Flags) bitset.
    pub last_status_flags: u32,
}

impl AlertState {
    pub fn is_open(&self, kind: AlertKind) -> bool {
        self.open.iter().any(|a| a.kind == kind)
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

impl crate::codec::binary::Record for AlertEvent {}
