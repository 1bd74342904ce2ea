//! Validation exceptions (revenue protection) and the operator orders that settle
//! them.
//!
//! Every read VEE stores `Suspect` — a register regression, an implausible jump, the
//! reads of a possible meter exchange awaiting confirmation, a late read ahead of the
//! settled register — is a [`ReadException`], keyed by `(tenant, meter, ts)` like the
//! reading. It is `open` until later data explains it (`resolved`: an exchange the
//! next reads confirm, a late read that makes it plausible) or an operator decides
//! it with a [`RegisterOrder`]: `accept` as actual, `confirm_exchange`, or `reject`;
//! the decision is recorded (who, when, why) and VEE re-runs its pass with the order
//! in place, so the readings and the bill follow.
//!
//! A field work order that records a meter exchange is a [`RegisterOrder`] too
//! ([`OrderAction::Exchange`]): from its time on, the meter's reads belong to the new
//! register, billed from its initial read; the old register's final read, when
//! given, is billed up to the exchange.

use serde::{Deserialize, Serialize};

use crate::vee::MeterSize;

/// Longest `by` or `why` of a decision, in bytes: a name and a sentence, not a file.
pub const MAX_DECISION_TEXT: usize = 500;

/// Orders a meter's VEE state keeps while they can still change a decision (the
/// order's read is in VEE's window): far more than a meter needs, a bound on what
/// one meter's state can hold.
pub const MAX_METER_ORDERS: usize = 32;

/// Why VEE stored a read `Suspect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExceptionReason {
    /// The register went backwards and no rollover explains it.
    Regression,
    /// The register grew faster than the meter's size can measure.
    ImplausibleJump,
    /// The read continues a regression or jump that may be a meter exchange, not
    /// confirmed yet.
    UnconfirmedExchange,
    /// A read older than VEE's late window that is ahead of the settled register.
    LateAhead,
    /// Not a suspect read: a field work order recorded a meter exchange at this time
    /// (`POST …/exchanges`; `reg` is the new register's initial read). It is decided
    /// when it is made (`exchange_confirmed`, with who, when and why), so the queue's
    /// history holds every register decision.
    RecordedExchange,
}

impl ExceptionReason {
    pub const ALL: [ExceptionReason; 5] = [
        ExceptionReason::Regression,
        ExceptionReason::ImplausibleJump,
        ExceptionReason::UnconfirmedExchange,
        ExceptionReason::LateAhead,
        ExceptionReason::RecordedExchange,
    ];

    pub const fn code(self) -> &'static str {
        match self {
            ExceptionReason::Regression => "regression",
            ExceptionReason::ImplausibleJump => "implausible_jump",
            ExceptionReason::UnconfirmedExchange => "unconfirmed_exchange",
            ExceptionReason::LateAhead => "late_ahead",
            ExceptionReason::RecordedExchange => "recorded_exchange",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.code() == code)
    }
}

/// Where an exception stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExceptionState {
    /// Waiting for a decision; the read is excluded from billing.
    Open,
    /// Later data explained it (an exchange confirmed by the next reads, a late read
    /// that made the sequence plausible); the read is billed as actual.
    Resolved,
    /// An operator accepted the read as actual; it is billed.
    Accepted,
    /// An operator rejected the read; it stays excluded.
    Rejected,
    /// An operator confirmed a meter exchange at the read: the new register bills
    /// from it.
    ExchangeConfirmed,
}

impl ExceptionState {
    pub const ALL: [ExceptionState; 5] = [
        ExceptionState::Open,
        ExceptionState::Resolved,
        ExceptionState::Accepted,
        ExceptionState::Rejected,
        ExceptionState::ExchangeConfirmed,
    ];

    pub const fn code(self) -> &'static str {
        match self {
            ExceptionState::Open => "open",
            ExceptionState::Resolved => "resolved",
            ExceptionState::Accepted => "accepted",
            ExceptionState::Rejected => "rejected",
            ExceptionState::ExchangeConfirmed => "exchange_confirmed",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.code() == code)
    }
}

/// Who decided, when, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Decision {
    /// Who decided (an operator's name or id, as the caller gives it).
    pub by: String,
    /// Why (free text).
    pub why: String,
    /// When the decision was made, epoch ms (service clock).
    pub at_ms: i64,
}

impl Decision {
    /// What is wrong with the decision's texts, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.by.trim().is_empty() {
            return Some("`by` must name who decides".into());
        }
        [("by", &self.by), ("why", &self.why)]
            .into_iter()
            .find(|(_, text)| text.len() > MAX_DECISION_TEXT)
            .map(|(name, _)| format!("`{name}` must be at most {MAX_DECISION_TEXT} bytes"))
    }
}

/// One validation exception: a suspect read and where its case stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadException {
    pub tenant: String,
    pub meter: String,
    /// The read's timestamp, epoch ms (its reading row's key).
    pub ts: i64,
    /// The read's raw register, litres.
    pub reg: u64,
    pub reason: ExceptionReason,
    pub state: ExceptionState,
    /// When meterflow received the read, epoch ms.
    pub received_at: i64,
    /// The operator's decision, for `accepted`, `rejected` and `exchange_confirmed`.
    pub decision: Option<Decision>,
}

/// First written in record version 5; no older layout exists.
impl crate::codec::binary::Record for ReadException {}

/// What an operator orders about a meter's register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderAction {
    /// The read at the order's `ts` is actual, however implausible its growth (not
    /// for a regression: that is an exchange or a glitch).
    Accept,
    /// The read at `ts` is not a true register value: excluded, and never taken as
    /// the start of a new register.
    Reject,
    /// The read at `ts` is the initial read of a new register (a meter exchange).
    ConfirmExchange,
    /// A field work order: the meter was exchanged at `ts`. The old register read
    /// `final_reg` when removed (billed up to `ts`, when given); the new one read
    /// `initial_reg` when fitted and bills from there. `size`, when given, is the new
    /// meter's size: from `ts` on it sets the register's capacity, what the meter
    /// can plausibly measure and its fixed charge (record version 8).
    Exchange {
        final_reg: Option<u64>,
        initial_reg: u64,
        #[serde(default)]
        size: Option<MeterSize>,
    },
}

impl OrderAction {
    /// Whether the order decides one read (rather than recording an event).
    pub const fn targets_a_read(&self) -> bool {
        !matches!(self, OrderAction::Exchange { .. })
    }

    /// The state the order gives the exception of its read.
    pub const fn state(&self) -> ExceptionState {
        match self {
            OrderAction::Accept => ExceptionState::Accepted,
            OrderAction::Reject => ExceptionState::Rejected,
            OrderAction::ConfirmExchange | OrderAction::Exchange { .. } => {
                ExceptionState::ExchangeConfirmed
            }
        }
    }
}

/// An operator's order about one meter's register at `ts`, with the decision behind
/// it. Kept in the meter's VEE state while it can still change a decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterOrder {
    pub ts: i64,
    pub action: OrderAction,
    pub decision: Decision,
    /// The exception the order decides, as stored (for a read VEE can no longer
    /// re-decide, the decision is recorded on it as it is).
    pub exception: Option<ExceptionRef>,
}

impl RegisterOrder {
    /// Why the order contradicts the exception it decides, if it does: a regression
    /// cannot be accepted as actual (it is an exchange, or a glitch).
    pub fn contradiction(&self) -> Option<&'static str> {
        let regression = self
            .exception
            .is_some_and(|e| e.reason == ExceptionReason::Regression);
        (self.action == OrderAction::Accept && regression).then_some(
            "a regression cannot be accepted as actual: confirm an exchange, or reject it",
        )
    }
}

/// What an order knows of the exception it decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExceptionRef {
    pub reg: u64,
    pub received_at: i64,
    pub reason: ExceptionReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for state in ExceptionState::ALL {
            assert_eq!(ExceptionState::from_code(state.code()), Some(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.code()));
        }
        for reason in ExceptionReason::ALL {
            assert_eq!(ExceptionReason::from_code(reason.code()), Some(reason));
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.code()));
        }
        assert_eq!(ExceptionState::from_code("closed"), None);
    }

    #[test]
    fn a_decision_names_who_and_stays_short() {
        let decision = |by: &str, why: &str| Decision {
            by: by.into(),
            why: why.into(),
            at_ms: 0,
        };
        assert_eq!(decision("ana", "field visit").problem(), None);
        assert!(decision("  ", "x").problem().unwrap().contains("by"));
        let long = "x".repeat(MAX_DECISION_TEXT + 1);
        assert!(decision("ana", &long).problem().unwrap().contains("why"));
    }

    #[test]
    fn only_accepting_a_regression_is_a_contradiction() {
        let order = |action: OrderAction, reason: ExceptionReason| RegisterOrder {
            ts: 0,
            action,
            decision: Decision {
                by: "ana".into(),
                why: String::new(),
                at_ms: 0,
            },
            exception: Some(ExceptionRef {
                reg: 1,
                received_at: 0,
                reason,
            }),
        };
        let regression = ExceptionReason::Regression;
        assert!(
            order(OrderAction::Accept, regression)
                .contradiction()
                .is_some()
        );
        assert!(
            order(OrderAction::Reject, regression)
                .contradiction()
                .is_none()
        );
        assert!(
            order(OrderAction::ConfirmExchange, regression)
                .contradiction()
                .is_none()
        );
        let jump = ExceptionReason::ImplausibleJump;
        assert!(order(OrderAction::Accept, jump).contradiction().is_none());
    }
}
