//! Per-meter state that the shard worker owns and persists in `meter_state`, written in
//! the same durable batch as the readings it reflects (DESIGN §2), so that after a
//! crash state and data agree. Plain data: the logic that changes it lives in the
//! shard worker (dedupe) and in `processors` (VEE, usage, billing, alerting,
//! analytics); each processor owns one field.
//!
//! Persisted with [`crate::codec::binary::encode_record`]; adding a field means a new
//! record version. bincode's serde mode is positional: no `skip_serializing_if`,
//! flattened or untagged fields anywhere inside. `#[serde(skip)]` (both directions)
//! is fine, and marks what is not persisted but rebuilt on hydration: VEE's window of
//! raw reads and the pass over it, billing's open reads — they are the meter's stored
//! readings rows after VEE's settled point, written in the same atomic write as the
//! state, so persisting them again (about 40 bytes a read, 3 KB to 12 KB a meter,
//! with every batch) bought nothing.

use serde::{Deserialize, Serialize};

use crate::alert::AlertState;
use crate::analytics::MeterAnalyticsState;
use crate::billing::BillingState;
use crate::seq_window::SeqWindow;
use crate::uplink::Reading;
use crate::vee::VeeState;

/// How far a stored reading can be trusted (VEE, DESIGN §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// As measured by the meter.
    #[default]
    Actual,
    /// Filled in for a gap; replaced when the real read arrives.
    Estimated,
    /// Stored, but excluded from billing (regression, implausible jump).
    Suspect,
    /// Read by hand at a recorded meter exchange: the removed register's final read
    /// (a field work order's). No meter sent it; it counts in usage and analytics
    /// like an actual read, and billing has it already through VEE's continuous
    /// register.
    Recorded,
}

impl Quality {
    /// Every quality, in code order.
    pub const ALL: [Quality; 4] = [
        Quality::Actual,
        Quality::Estimated,
        Quality::Suspect,
        Quality::Recorded,
    ];

    /// Whether a row of this quality is a read the meter sent (actual or suspect),
    /// not one meterflow made (an estimate) or an operator recorded (an exchange's
    /// final read): what rebuilds a meter's window of reads from its stored rows.
    pub const fn is_from_meter(self) -> bool {
        matches!(self, Quality::Actual | Quality::Suspect)
    }

    pub const fn code(self) -> u8 {
        match self {
            Quality::Actual => 0,
            Quality::Estimated => 1,
            Quality::Suspect => 2,
            Quality::Recorded => 3,
        }
    }

    pub const fn from_code(code: u8) -> Option<Quality> {
        match code {
            0 => Some(Quality::Actual),
            1 => Some(Quality::Estimated),
            2 => Some(Quality::Suspect),
            3 => Some(Quality::Recorded),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Quality::Actual => "actual",
            Quality::Estimated => "estimated",
            Quality::Suspect => "suspect",
            Quality::Recorded => "recorded",
        }
    }
}

/// Consumption derived from register deltas (never from summing messages, so a lost
/// or repeated message cannot change it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageState {
    /// The newest reading folded in; its register is the base of the next delta.
    pub last: Option<Reading>,
    /// Quality of `last`.
    pub last_quality: Quality,
    /// Start (epoch ms) of the tenant's local day that `today_l` belongs to. (States
    /// written before local days held a UTC day number here; such a state starts a
    /// fresh day at its next reading.)
    pub day: i64,
    /// Litres used on `day`: register deltas of intervals ending within it (`ts − 1 ms`).
    pub today_l: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterState {
    /// Dedupe and ack watermark.
    pub seq: SeqWindow,
    /// Usage, fed by the usage processor.
    pub usage: UsageState,
    /// The settled pass (persisted); the late window's raw reads and the pass over
    /// them (rebuilt on hydration) (VEE).
    pub vee: VeeState,
    /// Billing periods' boundary reads (persisted) and the window's actual reads
    /// (rebuilt on hydration) (billing).
    pub billing: BillingState,
    /// Alerting's fold at the settled point and the window's device statuses
    /// (persisted), the window's rows and the fold over them (rebuilt on hydration).
    pub alerts: AlertState,
    /// Running hour and day totals (analytics).
    pub analytics: MeterAnalyticsState,
    /// How far along the meter's input this state is: it rises with every uplink or
    /// order the state takes in ([`MeterState::advance_version`]), and a store
    /// shared by several processors writes the meter's rows with it as their write
    /// time, so a stalled former owner's late write never replaces a newer one
    /// (ARCHITECTURE.md, "a meter's rows carry its state's version"). 0 in a state
    /// read from a record older than version 7.
    pub version: i64,
}

impl crate::codec::binary::Record for MeterState {
    fn decode_v1(body: &[u8]) -> Result<Self, crate::codec::binary::RecordError> {
        crate::state_v1::decode(body)
    }

    fn decode_v2(body: &[u8]) -> Result<Self, crate::codec::binary::RecordError> {
        crate::state_v2::decode(body)
    }

    fn decode_v3(body: &[u8]) -> Result<Self, crate::codec::binary::RecordError> {
        crate::state_v4::decode(body)
    }

    fn decode_v4(body: &[u8]) -> Result<Self, crate::codec::binary::RecordError> {
        crate::state_v4::decode(body)
    }

    fn decode_v5(body: &[u8]) -> Result<Self, crate::codec::binary::RecordError> {
        crate::state_v5::decode(body)
    }

    fn decode_v6(body: &[u8]) -> Result<Self, crate::codec::binary::RecordError> {
        crate::state_v6::decode(body)
    }

    fn decode_v7(body: &[u8]) -> Result<Self, crate::codec::binary::RecordError> {
        crate::state_v7::decode(body)
    }

    fn decode_v8(body: &[u8]) -> Result<Self, crate::codec::binary::RecordError> {
        crate::state_v8::decode(body)
    }
}

impl MeterState {
    /// A copy of what is persisted, the `#[serde(skip)]` parts (windows and the folds
    /// over them) left empty: it encodes as the state does. What a sealed batch
    /// carries to the store while the shard keeps the whole state — copying the
    /// windows with every batch was a fifth of a seal.
    pub fn persisted(&self) -> MeterState {
        MeterState {
            seq: self.seq.clone(),
            usage: self.usage.clone(),
            vee: VeeState {
                settled: self.vee.settled.clone(),
                orders: self.vee.orders.clone(),
                sizes: self.vee.sizes.clone(),
                ..VeeState::default()
            },
            billing: BillingState {
                current: self.billing.current,
                previous: self.billing.previous,
                ..BillingState::default()
            },
            alerts: AlertState {
                settled: self.alerts.settled.clone(),
                settled_ts: self.alerts.settled_ts,
                statuses: self.alerts.statuses.clone(),
                no_communication: self.alerts.no_communication,
                last_seen_at: self.alerts.last_seen_at,
                revision: self.alerts.revision,
                ..AlertState::default()
            },
            analytics: self.analytics.persisted(),
            version: self.version,
        }
    }

    /// Counts one more uplink or order taken in, received (by the endpoint) at
    /// `received_at` ms: the version becomes the greater of one more than before
    /// and `received_at` in µs. It depends only on what the meter took in and in
    /// which order, so two processors that fold the same log from the same stored
    /// state reach the same version at the same point, and the one further along
    /// has the greater; and it stays near the clock in µs, which the write times of
    /// rows written before versions existed were (and ScyllaDB refuses write times
    /// more than three days ahead of its clock).
    pub fn advance_version(&mut self, received_at: i64) {
        self.version = self
            .version
            .saturating_add(1)
            .max(received_at.saturating_mul(1000));
    }

    /// Timestamp of the newest reading folded in.
    pub fn last_ts(&self) -> Option<i64> {
        self.usage.last.map(|r| r.ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::binary::{decode_record, encode_record};

    /// The persisted copy encodes as the whole state does, and decodes to it.
    #[test]
    fn the_persisted_copy_is_what_the_record_holds() {
        let mut state = MeterState::default();
        state.vee.window.push_back(crate::vee::RawRead {
            reading: Reading {
                ts: 5,
                reg: 6,
                rev: 0,
                flow: 0,
                temp: None,
            },
            seq: 1,
            received_at: 5,
        });
        state
            .billing
            .open
            .push_back(crate::billing::RegisterPoint { ts: 5, creg: 6 });
        state.alerts.rows.push_back(crate::alert::RuleRow {
            ts: 5,
            interval_l: 1,
            estimated: false,
            rev: 0,
            temp: None,
        });
        state.alerts.head.last_ts = Some(5);
        state.alerts.settled_ts = Some(4);
        state.alerts.revision = 9;
        state.usage.today_l = 3;
        let copy = state.persisted();
        assert_eq!(encode_record(&copy), encode_record(&state));
        assert!(copy.vee.window.is_empty() && copy.alerts.rows.is_empty());
        let back: MeterState = decode_record(&encode_record(&state)).unwrap();
        assert_eq!(back, copy);
    }

    #[test]
    fn state_records_round_trip_with_and_without_optional_fields() {
        for temp in [None, Some(-5)] {
            let mut state = MeterState::default();
            let mut skipped = Vec::new();
            state.seq.admit(3, 0, &mut skipped);
            state.seq.admit(5, 0, &mut skipped);
            state.usage.last = Some(Reading {
                ts: 1,
                reg: 2,
                rev: 3,
                flow: 4,
                temp,
            });
            state.usage.today_l = 9;
            let back: MeterState = decode_record(&encode_record(&state)).unwrap();
            assert_eq!(back, state);
        }
    }
}
