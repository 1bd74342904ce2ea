//! Meter state as record versions 3 and 4 laid it out: `VeeState` persisted its
//! settled pass only, without the operator orders version 5 added after it. Read
//! once and upgraded with no orders (there were none to keep).

use serde::Deserialize;

use crate::analytics::MeterAnalyticsState;
use crate::billing::BillingState;
use crate::codec::binary::RecordError;
use crate::seq_window::SeqWindow;
use crate::state::{MeterState, UsageState};
use crate::state_v5::AlertStateV5;
use crate::vee::{VeeFold, VeeState};

#[derive(Deserialize)]
struct MeterStateV4 {
    seq: SeqWindow,
    usage: UsageState,
    vee: VeeStateV4,
    billing: BillingState,
    alerts: AlertStateV5,
    analytics: MeterAnalyticsState,
}

/// `VeeState` of record versions 3 and 4: the settled pass (the window and the pass
/// over it were never persisted).
#[derive(Deserialize)]
struct VeeStateV4 {
    settled: VeeFold,
}

/// Reads a version-3 or version-4 `meter_state` body.
pub(crate) fn decode(body: &[u8]) -> Result<MeterState, RecordError> {
    let v4: MeterStateV4 = crate::codec::binary::decode_body(body)?;
    Ok(MeterState {
        seq: v4.seq,
        usage: v4.usage,
        vee: VeeState {
            settled: v4.vee.settled,
            ..VeeState::default()
        },
        billing: v4.billing,
        alerts: v4.alerts.upgrade(),
        analytics: v4.analytics,
        version: 0,
    })
}

#[cfg(test)]
mod tests {
    use crate::codec::binary::{decode_record, encode_record_as};
    use crate::state::{MeterState, UsageState};
    use crate::vee::VeeFold;

    /// A version-4 record (the fields of its `VeeState` without `orders`, as a tuple:
    /// bincode's layout is positional) reads back whole, with no orders.
    #[test]
    fn a_version_4_state_upgrades() {
        let fold = VeeFold {
            newest_ts: Some(8_000),
            ..VeeFold::default()
        };
        let usage = UsageState {
            today_l: 42,
            ..UsageState::default()
        };
        let current = MeterState {
            usage: usage.clone(),
            ..MeterState::default()
        };
        let v4 = (
            &current.seq,
            &usage,
            (&fold,),
            &current.billing,
            crate::state_v5::EMPTY_ALERTS_V5,
            &current.analytics,
        );
        for version in [3, 4] {
            let state: MeterState = decode_record(&encode_record_as(version, &v4)).unwrap();
            assert_eq!(state.usage, usage);
            assert_eq!(state.vee.settled, fold);
            assert!(state.vee.orders.is_empty());
        }
    }
}
