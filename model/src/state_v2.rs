//! Meter state as record versions 1 and 2 laid out VEE and billing state, read once
//! and upgraded: a data directory or keyspace written by an earlier meterflow keeps
//! every meter's registers, epochs and billing boundaries across the upgrade.
//!
//! bincode lays fields out by position, so the old layouts are spelled out here as
//! they were. What the upgrade cannot carry over: the old state kept no raw reads,
//! so the upgraded meter's window starts empty and its newest read is the settled
//! point (no stored row lies after it, so hydration's rebuild finds the window empty
//! too) — a read older than it that arrives after the upgrade is stored as late
//! (the old remembered gap, where such a read used to re-spread estimates, is
//! dropped). From the meter's next reads on, the window fills as usual.

use serde::Deserialize;

use crate::analytics::MeterAnalyticsState;
use crate::billing::{BillingState, PeriodReads};
use crate::codec::binary::RecordError;
use crate::seq_window::SeqWindow;
use crate::state::{MeterState, UsageState};
use crate::state_v5::AlertStateV5;
use crate::vee::{
    EpochCause, ExchangeCandidate, RawRead, RegisterEpoch, ValidatedRead, VeeFold, VeeState,
};

#[derive(Deserialize)]
struct MeterStateV2 {
    seq: SeqWindow,
    usage: UsageState,
    vee: VeeStateV2,
    billing: BillingStateV2,
    alerts: AlertStateV5,
    analytics: MeterAnalyticsState,
}

/// `VeeState` of record versions 1 and 2.
#[derive(Deserialize)]
pub(crate) struct VeeStateV2 {
    last: Option<ValidatedRead>,
    epochs: Vec<RegisterEpochV2>,
    exchange_candidate: Option<ValidatedRead>,
    // The newest estimated gap: not carried over (see the module doc).
    _gap: Option<(ValidatedRead, ValidatedRead)>,
    newest_seen_ts: Option<i64>,
}

/// An epoch as an offset added to raw registers (`creg = reg + offset`).
#[derive(Deserialize)]
struct RegisterEpochV2 {
    cause: EpochCause,
    after_ts: i64,
    after_reg: u64,
    first_ts: i64,
    offset: u64,
    previous_offset: u64,
}

/// `BillingState` of record versions 1 and 2.
#[derive(Deserialize)]
pub(crate) struct BillingStateV2 {
    current: Option<PeriodReads>,
    previous: Option<PeriodReads>,
}

impl VeeStateV2 {
    /// The old state as a pass with nothing left to re-decide: settled and head alike.
    pub(crate) fn upgrade(self) -> VeeState {
        let fold = VeeFold {
            base: self.last,
            epochs: self
                .epochs
                .into_iter()
                .map(|e| RegisterEpoch {
                    cause: e.cause,
                    after_ts: e.after_ts,
                    after_reg: e.after_reg,
                    after_creg: e.after_reg.saturating_add(e.previous_offset),
                    first_ts: e.first_ts,
                    first_reg: 0,
                    first_creg: e.offset,
                })
                .collect(),
            candidate: self.exchange_candidate.map(|c| ExchangeCandidate {
                initial: RawRead {
                    reading: c.reading,
                    seq: c.seq,
                    received_at: c.received_at,
                },
                followers: Vec::new(),
            }),
            newest_ts: self.newest_seen_ts,
        };
        VeeState {
            settled: fold.clone(),
            head: fold,
            ..VeeState::default()
        }
    }
}

impl BillingStateV2 {
    /// Everything the old state folded counts as settled.
    pub(crate) fn upgrade(self) -> BillingState {
        BillingState {
            current: self.current,
            previous: self.previous,
            open: Default::default(),
            reported_to: None,
            reported_from: None,
        }
    }
}

/// Reads a version-2 `meter_state` body.
pub(crate) fn decode(body: &[u8]) -> Result<MeterState, RecordError> {
    let v2: MeterStateV2 = crate::codec::binary::decode_body(body)?;
    Ok(MeterState {
        seq: v2.seq,
        usage: v2.usage,
        vee: v2.vee.upgrade(),
        billing: v2.billing.upgrade(),
        alerts: v2.alerts.upgrade(),
        analytics: v2.analytics,
        version: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::RegisterPoint;
    use crate::codec::binary::{decode_record, encode_record_as};
    use crate::uplink::Reading;

    fn read(ts: i64, reg: u64, creg: u64) -> ValidatedRead {
        ValidatedRead {
            reading: Reading {
                ts,
                reg,
                rev: 0,
                flow: 0,
                temp: None,
            },
            creg,
            seq: 9,
            received_at: ts,
        }
    }

    /// A version-2 record, as the previous release wrote it (its fields as tuples:
    /// bincode's layout is positional), reads back with registers, epochs and
    /// billing boundaries in place, and maps raw registers as before.
    #[test]
    fn a_version_2_state_upgrades() {
        let last = read(7_000, 120, 100_000_120);
        let candidate = read(8_000, 3, 0);
        // A rollover: reads after ts 6000 are offset by the capacity.
        let epoch = (
            EpochCause::Rollover,
            5_000i64,
            99_999_900u64,
            6_000i64,
            100_000_000u64,
            0u64,
        );
        let gap = Some((last, last));
        let vee = (
            Some(last),
            vec![epoch],
            Some(candidate),
            gap,
            Some(8_000i64),
        );
        let period = PeriodReads {
            year: 2025,
            month: 1,
            start_ms: 0,
            end_ms: 10_000,
            before: None,
            first: Some(RegisterPoint {
                ts: 5_000,
                creg: 99_999_900,
            }),
            last: Some(RegisterPoint {
                ts: 7_000,
                creg: 100_000_120,
            }),
            after: None,
        };
        let usage = UsageState {
            today_l: 42,
            ..UsageState::default()
        };
        let v2 = (
            SeqWindow::default(),
            usage.clone(),
            vee,
            (Some(period), None::<PeriodReads>),
            crate::state_v5::EMPTY_ALERTS_V5,
            MeterAnalyticsState::default(),
        );
        let state: MeterState = decode_record(&encode_record_as(2, &v2)).unwrap();
        assert_eq!(state.usage, usage);
        assert_eq!(state.vee.head, state.vee.settled);
        assert!(state.vee.window.is_empty());
        assert_eq!(state.vee.head.base, Some(last));
        assert_eq!(state.vee.settled_ts(), Some(8_000));
        assert_eq!(
            state.vee.head.candidate.as_ref().map(|c| c.initial.reading),
            Some(candidate.reading)
        );
        assert_eq!(state.vee.continuous_register(5_500, 99_999_950), 99_999_950);
        assert_eq!(state.vee.continuous_register(7_500, 150), 100_000_150);
        assert_eq!(state.billing.current, Some(period));
        assert!(state.billing.open.is_empty());
    }
}
