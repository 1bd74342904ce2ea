//! `meter_state` as record version 6 laid it out, read once and upgraded: version 7
//! appended the state's [`version`](MeterState::version), which an older state
//! reads as 0 (a store that orders writes by it makes up for that on hydration).
//!
//! bincode lays fields out by position, so the old layout is spelled out here.

use serde::Deserialize;

use crate::analytics::MeterAnalyticsState;
use crate::billing::BillingState;
use crate::codec::binary::RecordError;
use crate::seq_window::SeqWindow;
use crate::state::{MeterState, UsageState};
use crate::state_v7::VeeStateV7;
use crate::state_v8::AlertStateV8;

#[derive(Deserialize)]
struct MeterStateV6 {
    seq: SeqWindow,
    usage: UsageState,
    vee: VeeStateV7,
    billing: BillingState,
    alerts: AlertStateV8,
    analytics: MeterAnalyticsState,
}

/// Reads a version-6 `meter_state` body.
pub(crate) fn decode(body: &[u8]) -> Result<MeterState, RecordError> {
    let v6: MeterStateV6 = crate::codec::binary::decode_body(body)?;
    Ok(MeterState {
        seq: v6.seq,
        usage: v6.usage,
        vee: v6.vee.upgrade(),
        billing: v6.billing,
        alerts: v6.alerts.upgrade(),
        analytics: v6.analytics,
        version: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::binary::{decode_record, encode_record_as};

    /// A version-6 state (the same fields without the version) reads back whole,
    /// with version 0.
    #[test]
    fn a_version_6_state_reads_with_version_zero() {
        let mut state = MeterState::default();
        state.usage.today_l = 42;
        state.alerts.revision = 7;
        state.seq.admit(3, 1_000, &mut Vec::new());
        let v6 = (
            &state.seq,
            &state.usage,
            (&state.vee.settled, &state.vee.orders),
            &state.billing,
            &AlertStateV8 {
                revision: 7,
                ..AlertStateV8::default()
            },
            &state.analytics,
        );
        let back: MeterState = decode_record(&encode_record_as(6, &v6)).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.version, 0);
    }
}
