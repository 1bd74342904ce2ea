//! Meter state as record version 1 wrote it, read once and upgraded: a data
//! directory or keyspace written by an earlier meterflow keeps every meter's dedupe
//! window, registers, billing boundaries and open alerts across the upgrade.
//!
//! bincode lays fields out by position, so version 1 is spelled out here as it was.
//! `AlertState` changed in version 2 (it gained the newest device status, which
//! starts unknown after the upgrade: the next status a meter sends is taken as the
//! newest); VEE and billing state changed in version 3 and are upgraded as version 2's
//! are (`state_v2.rs`).

use serde::Deserialize;

use crate::alert::OpenAlert;
use crate::analytics::MeterAnalyticsState;
use crate::codec::binary::RecordError;
use crate::seq_window::SeqWindow;
use crate::state::{MeterState, UsageState};
use crate::state_v2::{BillingStateV2, VeeStateV2};
use crate::state_v5::AlertStateV5;

#[derive(Deserialize)]
struct MeterStateV1 {
    seq: SeqWindow,
    usage: UsageState,
    vee: VeeStateV2,
    billing: BillingStateV2,
    alerts: AlertStateV1,
    analytics: MeterAnalyticsState,
}

#[derive(Deserialize)]
struct AlertStateV1 {
    open: Vec<OpenAlert>,
    last_ts: Option<i64>,
    last_rev: Option<u64>,
    first_ts: Option<i64>,
    zero_run_since: Option<i64>,
    last_zero_hour_ts: Option<i64>,
    burst_since: Option<i64>,
    last_consumption_ts: Option<i64>,
    backflow_l: u64,
    last_backflow_ts: Option<i64>,
    last_seen_at: Option<i64>,
}

/// Reads a version-1 `meter_state` body.
pub(crate) fn decode(body: &[u8]) -> Result<MeterState, RecordError> {
    let v1: MeterStateV1 = crate::codec::binary::decode_body(body)?;
    let a = v1.alerts;
    Ok(MeterState {
        seq: v1.seq,
        usage: v1.usage,
        vee: v1.vee.upgrade(),
        billing: v1.billing.upgrade(),
        alerts: AlertStateV5 {
            open: a.open,
            last_ts: a.last_ts,
            last_rev: a.last_rev,
            first_ts: a.first_ts,
            zero_run_since: a.zero_run_since,
            last_zero_hour_ts: a.last_zero_hour_ts,
            burst_since: a.burst_since,
            last_consumption_ts: a.last_consumption_ts,
            backflow_l: a.backflow_l,
            last_backflow_ts: a.last_backflow_ts,
            last_seen_at: a.last_seen_at,
            last_status_ts: None,
            last_status_flags: 0,
        }
        .upgrade(),
        analytics: v1.analytics,
        version: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::AlertKind;
    use crate::billing::PeriodReads;
    use crate::codec::binary::{decode_record, encode_record_as};
    use crate::vee::{ValidatedRead, VeeState};

    /// A version-1 record, as the previous release wrote it (its fields as a tuple:
    /// bincode's layout is positional), reads back with every field in place.
    #[test]
    fn a_version_1_state_upgrades() {
        let mut seq = SeqWindow::default();
        seq.admit(7, 0, &mut Vec::new());
        let open = vec![OpenAlert {
            kind: AlertKind::Tamper,
            opened_at: 10,
            last_event_at: 11,
            sources: 1,
        }];
        let usage = UsageState {
            today_l: 42,
            ..UsageState::default()
        };
        let alerts_v1 = (
            open.clone(),
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
        );
        let v1 = (
            seq.clone(),
            usage.clone(),
            // VEE and billing state as versions 1 and 2 laid them out, empty.
            (
                None::<ValidatedRead>,
                Vec::<u8>::new(),
                None::<ValidatedRead>,
                None::<(ValidatedRead, ValidatedRead)>,
                None::<i64>,
            ),
            (None::<PeriodReads>, None::<PeriodReads>),
            alerts_v1,
            MeterAnalyticsState::default(),
        );
        let state: MeterState = decode_record(&encode_record_as(1, &v1)).unwrap();
        assert_eq!(state.seq, seq);
        assert_eq!(state.usage, usage);
        assert_eq!(state.alerts.settled.open, open);
        assert_eq!(state.alerts.settled.last_ts, Some(100));
        assert_eq!(state.alerts.settled_ts, Some(100));
        assert_eq!(state.alerts.settled.last_zero_hour_ts, Some(50));
        assert_eq!(state.alerts.last_seen_at, Some(99));
        assert!(state.alerts.statuses.is_empty());
        assert_eq!(state.vee, VeeState::default());
    }
}
