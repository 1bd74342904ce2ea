//! `meter_state` as record versions 6 to 8 laid out alerting's state, read once and
//! upgraded: version 9 keeps every device status of the late window
//! ([`AlertState::statuses`]) instead of the changes they made (*marks*) and the
//! newest status.
//!
//! The upgrade turns the marks into statuses. Walking them in time, each time that
//! has a mark becomes a status with the flags the device holds after it (at first
//! those of the settled fold's episodes the device holds) and the level a battery
//! mark gave; folded, they make the marks' steps again. The newest status, when it
//! is newer than every mark, becomes one too: its flags were marked already, so it
//! changes no episode, but a status arriving late stops there. The statuses get
//! seq 0, so a message at the same time decides over them.
//!
//! bincode lays fields out by position, so the old layout is spelled out here.

use serde::Deserialize;

use crate::alert::{
    AlertFold, AlertKind, AlertState, FLAG_KINDS, OpenAlert, SOURCE_DEVICE, SOURCE_RULE,
    StatusPoint,
};
use crate::analytics::MeterAnalyticsState;
use crate::billing::BillingState;
use crate::codec::binary::RecordError;
use crate::seq_window::SeqWindow;
use crate::state::{MeterState, UsageState};
use crate::vee::VeeState;

/// `AlertState` of record versions 6 to 8.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize, Default))]
pub(crate) struct AlertStateV8 {
    pub(crate) settled: AlertFold,
    pub(crate) settled_ts: Option<i64>,
    pub(crate) marks: Vec<StatusMarkV8>,
    pub(crate) device: DeviceHeadV8,
    pub(crate) no_communication: Option<OpenAlert>,
    pub(crate) last_seen_at: Option<i64>,
    pub(crate) revision: i64,
}

/// A change the statuses made to one kind: a flag raised (or reconfirmed) or
/// lowered, the battery rule held or released.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(crate) struct StatusMarkV8 {
    pub(crate) at: i64,
    pub(crate) kind: AlertKind,
    pub(crate) source: u8,
    pub(crate) raised: bool,
    pub(crate) battery: Option<u8>,
}

/// The newest status in arrival order.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize, Default))]
pub(crate) struct DeviceHeadV8 {
    pub(crate) last_status_ts: Option<i64>,
    pub(crate) flags: u32,
    /// Whether the battery rule held: the fold's episodes say so too, so the
    /// upgrade does not read it.
    pub(crate) _battery_low: bool,
}

impl AlertStateV8 {
    pub(crate) fn upgrade(self) -> AlertState {
        let mut flags = device_flags(&self.settled.open);
        let mut statuses: Vec<StatusPoint> = Vec::new();
        for mark in &self.marks {
            let bit = flag_bit(mark.kind).filter(|_| mark.source == SOURCE_DEVICE);
            match (bit, mark.raised) {
                (Some(bit), true) => flags |= bit,
                (Some(bit), false) => flags &= !bit,
                (None, _) => {}
            }
            let battery = mark.battery.filter(|_| mark.source == SOURCE_RULE);
            match statuses.last_mut() {
                Some(last) if last.ts == mark.at => {
                    last.flags = flags;
                    last.battery = battery.or(last.battery);
                }
                _ => statuses.push(StatusPoint {
                    ts: mark.at,
                    seq: 0,
                    flags,
                    battery,
                }),
            }
        }
        let known = statuses.last().map(|s| s.ts).or(self.settled_ts);
        if let Some(ts) = self.device.last_status_ts
            && known.is_none_or(|known| ts > known)
        {
            statuses.push(StatusPoint {
                ts,
                seq: 0,
                flags: self.device.flags,
                battery: None,
            });
        }
        AlertState {
            settled: self.settled,
            settled_ts: self.settled_ts,
            statuses: statuses.into_iter().collect(),
            no_communication: self.no_communication,
            last_seen_at: self.last_seen_at,
            revision: self.revision,
            ..AlertState::default()
        }
    }
}

/// The flags of the episodes the device holds among `open`.
fn device_flags(open: &[OpenAlert]) -> u32 {
    open.iter()
        .filter(|a| a.sources & SOURCE_DEVICE != 0)
        .filter_map(|a| flag_bit(a.kind))
        .fold(0, |flags, bit| flags | bit)
}

/// The bit of the device flag that raises `kind`.
fn flag_bit(kind: AlertKind) -> Option<u32> {
    FLAG_KINDS
        .iter()
        .find(|(_, k)| *k == kind)
        .map(|(flag, _)| 1 << *flag as u32)
}

#[derive(Deserialize)]
struct MeterStateV8 {
    seq: SeqWindow,
    usage: UsageState,
    vee: VeeState,
    billing: BillingState,
    alerts: AlertStateV8,
    analytics: MeterAnalyticsState,
    version: i64,
}

/// Reads a version-8 `meter_state` body.
pub(crate) fn decode(body: &[u8]) -> Result<MeterState, RecordError> {
    let v8: MeterStateV8 = crate::codec::binary::decode_body(body)?;
    Ok(MeterState {
        seq: v8.seq,
        usage: v8.usage,
        vee: v8.vee,
        billing: v8.billing,
        alerts: v8.alerts.upgrade(),
        analytics: v8.analytics,
        version: v8.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::binary::{decode_record, encode_record_as};

    fn mark(at: i64, kind: AlertKind, source: u8, raised: bool) -> StatusMarkV8 {
        StatusMarkV8 {
            at,
            kind,
            source,
            raised,
            battery: None,
        }
    }

    /// A version-8 state's marks read as the statuses that make them: a tamper
    /// episode held at the settled point, a magnetic flag raised and lowered, the
    /// battery low at one time, and the newest status after them.
    #[test]
    fn a_version_8_state_reads_its_marks_as_statuses() {
        let tamper = 1 << 3;
        let magnetic = 1 << 4;
        let alerts = AlertStateV8 {
            settled: AlertFold {
                open: vec![OpenAlert {
                    kind: AlertKind::Tamper,
                    opened_at: 50,
                    last_event_at: 50,
                    sources: SOURCE_DEVICE,
                }],
                ..AlertFold::default()
            },
            settled_ts: Some(100),
            marks: vec![
                mark(110, AlertKind::Magnetic, SOURCE_DEVICE, true),
                StatusMarkV8 {
                    battery: Some(9),
                    ..mark(110, AlertKind::LowBattery, SOURCE_RULE, true)
                },
                mark(120, AlertKind::Magnetic, SOURCE_DEVICE, false),
            ],
            device: DeviceHeadV8 {
                last_status_ts: Some(130),
                flags: tamper,
                _battery_low: true,
            },
            revision: 7,
            ..AlertStateV8::default()
        };
        let state = MeterState {
            version: 77,
            ..MeterState::default()
        };
        let v8 = (
            &state.seq,
            &state.usage,
            &state.vee,
            &state.billing,
            &alerts,
            &state.analytics,
            state.version,
        );
        let back: MeterState = decode_record(&encode_record_as(8, &v8)).unwrap();
        let point = |ts, flags, battery| StatusPoint {
            ts,
            seq: 0,
            flags,
            battery,
        };
        assert_eq!(
            back.alerts.statuses.iter().collect::<Vec<_>>(),
            [
                point(110, tamper | magnetic, Some(9)),
                point(120, tamper, None),
                point(130, tamper, None),
            ]
        );
        assert_eq!(back.alerts.settled_ts, Some(100));
        assert_eq!(back.alerts.revision, 7);
        assert_eq!(back.version, 77);
    }
}
