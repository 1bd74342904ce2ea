//! `meter_state` as record versions 5 to 7 laid out VEE's state, read once and
//! upgraded: version 8 gave a recorded exchange the new meter's size
//! (`OrderAction::Exchange::size`) and appended the sizes recorded to `VeeState`
//! (`sizes`); an older state reads with none (its exchanges kept the configured size).
//!
//! bincode lays fields out by position, so the old layout is spelled out here.

use serde::Deserialize;

use crate::analytics::MeterAnalyticsState;
use crate::billing::BillingState;
use crate::codec::binary::RecordError;
use crate::exception::{Decision, ExceptionRef, OrderAction, RegisterOrder};
use crate::seq_window::SeqWindow;
use crate::state::{MeterState, UsageState};
use crate::state_v8::AlertStateV8;
use crate::vee::{VeeFold, VeeState};

/// `VeeState` of record versions 5 to 7: the settled pass and the orders.
#[derive(Deserialize)]
pub(crate) struct VeeStateV7 {
    settled: VeeFold,
    orders: Vec<RegisterOrderV7>,
}

impl VeeStateV7 {
    pub(crate) fn upgrade(self) -> VeeState {
        VeeState {
            settled: self.settled,
            orders: self
                .orders
                .into_iter()
                .map(RegisterOrderV7::upgrade)
                .collect(),
            ..VeeState::default()
        }
    }
}

#[derive(Deserialize)]
struct RegisterOrderV7 {
    ts: i64,
    action: OrderActionV7,
    decision: Decision,
    exception: Option<ExceptionRef>,
}

impl RegisterOrderV7 {
    fn upgrade(self) -> RegisterOrder {
        RegisterOrder {
            ts: self.ts,
            action: match self.action {
                OrderActionV7::Accept => OrderAction::Accept,
                OrderActionV7::Reject => OrderAction::Reject,
                OrderActionV7::ConfirmExchange => OrderAction::ConfirmExchange,
                OrderActionV7::Exchange {
                    final_reg,
                    initial_reg,
                } => OrderAction::Exchange {
                    final_reg,
                    initial_reg,
                    size: None,
                },
            },
            decision: self.decision,
            exception: self.exception,
        }
    }
}

/// `OrderAction` of record versions 5 to 7 (variants in the same order).
#[derive(Deserialize)]
enum OrderActionV7 {
    Accept,
    Reject,
    ConfirmExchange,
    Exchange {
        final_reg: Option<u64>,
        initial_reg: u64,
    },
}

#[derive(Deserialize)]
struct MeterStateV7 {
    seq: SeqWindow,
    usage: UsageState,
    vee: VeeStateV7,
    billing: BillingState,
    alerts: AlertStateV8,
    analytics: MeterAnalyticsState,
    version: i64,
}

/// Reads a version-7 `meter_state` body.
pub(crate) fn decode(body: &[u8]) -> Result<MeterState, RecordError> {
    let v7: MeterStateV7 = crate::codec::binary::decode_body(body)?;
    Ok(MeterState {
        seq: v7.seq,
        usage: v7.usage,
        vee: v7.vee.upgrade(),
        billing: v7.billing,
        alerts: v7.alerts.upgrade(),
        analytics: v7.analytics,
        version: v7.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::binary::{decode_record, encode_record_as};

    /// The order as version 7 wrote it: the exchange without a size.
    #[derive(serde::Serialize)]
    enum OldAction {
        #[allow(dead_code)]
        Accept,
        Reject,
        #[allow(dead_code)]
        ConfirmExchange,
        Exchange {
            final_reg: Option<u64>,
            initial_reg: u64,
        },
    }

    /// A version-7 state with an exchange order and a rejection reads back whole,
    /// with no sizes recorded.
    #[test]
    fn a_version_7_state_reads_its_orders_without_sizes() {
        let decision = Decision {
            by: "ana".into(),
            why: "work order 12".into(),
            at_ms: 13,
        };
        let mut state = MeterState::default();
        state.usage.today_l = 42;
        state.version = 77;
        state.vee.orders = vec![
            RegisterOrder {
                ts: 5,
                action: OrderAction::Reject,
                decision: decision.clone(),
                exception: None,
            },
            RegisterOrder {
                ts: 10,
                action: OrderAction::Exchange {
                    final_reg: Some(7),
                    initial_reg: 2,
                    size: None,
                },
                decision: decision.clone(),
                exception: None,
            },
        ];
        let old_orders = vec![
            (5i64, OldAction::Reject, &decision, None::<ExceptionRef>),
            (
                10,
                OldAction::Exchange {
                    final_reg: Some(7),
                    initial_reg: 2,
                },
                &decision,
                None,
            ),
        ];
        let v7 = (
            &state.seq,
            &state.usage,
            (&state.vee.settled, &old_orders),
            &state.billing,
            &AlertStateV8::default(),
            &state.analytics,
            state.version,
        );
        let back: MeterState = decode_record(&encode_record_as(7, &v7)).unwrap();
        assert_eq!(back, state);
        assert!(back.vee.sizes.is_empty());
    }
}
