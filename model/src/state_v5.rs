//! Alert records as versions 1–5 laid them out, read once and upgraded (version 6
//! derives episodes in reading time; `alert.rs`):
//! - `AlertState` (inside `meter_state`) kept one fold at the newest reading, its
//!   open episodes (no-communication among them) and the newest device status.
//!   The upgrade takes that fold as settled at its newest reading: rows at or before
//!   it were folded already and are not folded again, so nothing is emitted twice,
//!   and the meter's episodes are derived in reading time from its next rows on.
//!   The newest status, when newer than that reading, stays in the window.
//! - `AlertEvent` had no revision: its stores ordered events by `(at, step)`, which
//!   is [`AlertEvent::first_revision`], so an old row reads with that revision.
//!
//! bincode lays fields out by position, so the old layouts are spelled out here.

use serde::Deserialize;

use crate::alert::{
    AlertEvent, AlertFold, AlertKind, AlertState, EpisodeState, OpenAlert, Priority, StatusPoint,
};
use crate::analytics::MeterAnalyticsState;
use crate::billing::BillingState;
use crate::codec::binary::RecordError;
use crate::seq_window::SeqWindow;
use crate::state::{MeterState, UsageState};
use crate::state_v7::VeeStateV7;

/// `AlertState` of record versions 2 to 5 (version 1's lacked the last two fields).
#[derive(Deserialize)]
pub(crate) struct AlertStateV5 {
    pub(crate) open: Vec<OpenAlert>,
    pub(crate) last_ts: Option<i64>,
    pub(crate) last_rev: Option<u64>,
    pub(crate) first_ts: Option<i64>,
    pub(crate) zero_run_since: Option<i64>,
    pub(crate) last_zero_hour_ts: Option<i64>,
    pub(crate) burst_since: Option<i64>,
    pub(crate) last_consumption_ts: Option<i64>,
    pub(crate) backflow_l: u64,
    pub(crate) last_backflow_ts: Option<i64>,
    pub(crate) last_seen_at: Option<i64>,
    pub(crate) last_status_ts: Option<i64>,
    pub(crate) last_status_flags: u32,
}

impl AlertStateV5 {
    /// The old fold, settled at its newest reading (see the module doc).
    pub(crate) fn upgrade(self) -> AlertState {
        let (no_communication, open): (Vec<_>, Vec<_>) = self
            .open
            .into_iter()
            .partition(|a| a.kind == AlertKind::NoCommunication);
        AlertState {
            settled: AlertFold {
                open,
                last_ts: self.last_ts,
                last_rev: self.last_rev,
                first_ts: self.first_ts,
                zero_run_since: self.zero_run_since,
                last_zero_hour_ts: self.last_zero_hour_ts,
                burst_since: self.burst_since,
                last_consumption_ts: self.last_consumption_ts,
                backflow_l: self.backflow_l,
                last_backflow_ts: self.last_backflow_ts,
            },
            settled_ts: self.last_ts,
            // The newest status, when newer than the fold, stays in the window.
            statuses: self
                .last_status_ts
                .filter(|ts| self.last_ts.is_none_or(|last| *ts > last))
                .map(|ts| StatusPoint {
                    ts,
                    seq: 0,
                    flags: self.last_status_flags,
                    battery: None,
                })
                .into_iter()
                .collect(),
            no_communication: no_communication.into_iter().next(),
            last_seen_at: self.last_seen_at,
            ..AlertState::default()
        }
    }
}

/// An empty version-5 `AlertState` as a tuple, for tests of older layouts.
#[cfg(test)]
#[allow(clippy::type_complexity)]
pub(crate) const EMPTY_ALERTS_V5: (
    Vec<OpenAlert>,
    Option<i64>,
    Option<u64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    u64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    u32,
) = (
    Vec::new(),
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    0,
    None,
    None,
    None,
    0,
);

#[derive(Deserialize)]
struct MeterStateV5 {
    seq: SeqWindow,
    usage: UsageState,
    vee: VeeStateV7,
    billing: BillingState,
    alerts: AlertStateV5,
    analytics: MeterAnalyticsState,
}

/// Reads a version-5 `meter_state` body.
pub(crate) fn decode(body: &[u8]) -> Result<MeterState, RecordError> {
    let v5: MeterStateV5 = crate::codec::binary::decode_body(body)?;
    Ok(MeterState {
        seq: v5.seq,
        usage: v5.usage,
        vee: v5.vee.upgrade(),
        billing: v5.billing,
        alerts: v5.alerts.upgrade(),
        analytics: v5.analytics,
        version: 0,
    })
}

/// `AlertEvent` of record versions 1 to 5.
#[derive(Deserialize)]
struct AlertEventV5 {
    tenant: String,
    meter: String,
    kind: AlertKind,
    priority: Priority,
    state: EpisodeState,
    opened_at: i64,
    at: i64,
    detail: String,
}

/// Reads an `AlertEvent` body of versions 1 to 5.
pub(crate) fn decode_event(body: &[u8]) -> Result<AlertEvent, RecordError> {
    let v5: AlertEventV5 = crate::codec::binary::decode_body(body)?;
    Ok(AlertEvent {
        revision: AlertEvent::first_revision(v5.at, v5.state),
        tenant: v5.tenant,
        meter: v5.meter,
        kind: v5.kind,
        priority: v5.priority,
        state: v5.state,
        opened_at: v5.opened_at,
        at: v5.at,
        detail: v5.detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::SOURCE_RULE;
    use crate::codec::binary::{decode_record, encode_record, encode_record_as};

    fn open(kind: AlertKind, sources: u8) -> OpenAlert {
        OpenAlert {
            kind,
            opened_at: 10,
            last_event_at: 11,
            sources,
        }
    }

    /// A version-5 state (its alert fields as a tuple: bincode's layout is
    /// positional) reads back settled at its newest reading, no-communication apart.
    #[test]
    fn a_version_5_state_upgrades() {
        let current = MeterState::default();
        let alerts_v5 = (
            vec![
                open(AlertKind::Leak, SOURCE_RULE),
                open(AlertKind::NoCommunication, SOURCE_RULE),
                open(AlertKind::LowBattery, SOURCE_RULE),
            ],
            Some(100i64),
            Some(5u64),
            Some(1i64),
            None::<i64>,
            Some(50i64),
            None::<i64>,
            Some(90i64),
            3u64,
            Some(80i64),
            Some(99i64),
            Some(120i64),
            4u32,
        );
        let v5 = (
            &current.seq,
            &current.usage,
            (&current.vee.settled, &current.vee.orders),
            &current.billing,
            alerts_v5,
            &current.analytics,
        );
        let state: MeterState = decode_record(&encode_record_as(5, &v5)).unwrap();
        let alerts = &state.alerts;
        assert_eq!(alerts.settled_ts, Some(100));
        assert_eq!(alerts.settled.last_zero_hour_ts, Some(50));
        assert_eq!(
            alerts.settled.open,
            [
                open(AlertKind::Leak, SOURCE_RULE),
                open(AlertKind::LowBattery, SOURCE_RULE)
            ]
        );
        assert_eq!(
            alerts.no_communication,
            Some(open(AlertKind::NoCommunication, SOURCE_RULE))
        );
        assert_eq!(alerts.last_seen_at, Some(99));
        assert_eq!(
            alerts.statuses.iter().collect::<Vec<_>>(),
            [StatusPoint {
                ts: 120,
                seq: 0,
                flags: 4,
                battery: None
            }]
        );
    }

    /// An alert row written before revisions reads with the revision its old order
    /// gave it; one written now round-trips.
    #[test]
    fn a_version_5_event_reads_with_its_old_order_as_revision() {
        let v5 = (
            "t",
            "m",
            AlertKind::Burst,
            Priority::Critical,
            EpisodeState::Cleared,
            7i64,
            9i64,
            "flow down",
        );
        let event: AlertEvent = decode_record(&encode_record_as(5, &v5)).unwrap();
        assert_eq!(event.revision, 9_002);
        assert_eq!((event.opened_at, event.at), (7, 9));
        let back: AlertEvent = decode_record(&encode_record(&event)).unwrap();
        assert_eq!(back, event);
    }
}
