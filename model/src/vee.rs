//! Validation, estimation and editing (VEE) vocabulary: meter sizes and what they can
//! physically measure, the per-tenant VEE rules, and the per-meter VEE state persisted
//! in `meter_state`. The rules themselves live in `meterflow-processors` (`vee`).
//!
//! The *continuous register* is the VEE's central idea: a meter's raw register wraps
//! at its digit capacity and restarts near zero when the meter is exchanged, so raw
//! registers cannot be subtracted across those events. VEE keeps, per register
//! epoch, the offset that turns a raw register into litres since the first reading
//! ever seen (`creg = reg + offset`). Billing subtracts continuous registers, so a
//! rollover or an exchange never shows up as negative or enormous usage.
//!
//! Persisted with bincode's serde mode: no `skip_serializing_if` and no untagged or
//! flattened fields in the state types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::uplink::Reading;

/// Nominal diameter of a water meter (ISO 4064 / EN 14154 sizes). Decides the
/// plausible maximum flow and, per tariff, the fixed charge.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum MeterSize {
    /// Household meter (½"), the most common size.
    #[default]
    Dn15,
    Dn20,
    Dn25,
    Dn32,
    Dn40,
    Dn50,
    Dn65,
    Dn80,
    Dn100,
    Dn150,
}

impl MeterSize {
    pub const ALL: [MeterSize; 10] = [
        MeterSize::Dn15,
        MeterSize::Dn20,
        MeterSize::Dn25,
        MeterSize::Dn32,
        MeterSize::Dn40,
        MeterSize::Dn50,
        MeterSize::Dn65,
        MeterSize::Dn80,
        MeterSize::Dn100,
        MeterSize::Dn150,
    ];

    /// Overload flow Q4 in L/h: the highest flow the meter measures, for short
    /// periods, without deterioration. ISO 4064 sets Q4 = 1.25 × Q3, with the usual
    /// permanent flow Q3 per size (DN15: 2.5 m³/h … DN150: 250 m³/h). A register that
    /// grew faster than Q4 did not measure water.
    pub const fn max_flow_lph(self) -> u64 {
        match self {
            MeterSize::Dn15 => 3_125,
            MeterSize::Dn20 => 5_000,
            MeterSize::Dn25 => 7_875,
            MeterSize::Dn32 => 12_500,
            MeterSize::Dn40 => 20_000,
            MeterSize::Dn50 => 31_250,
            MeterSize::Dn65 => 50_000,
            MeterSize::Dn80 => 78_750,
            MeterSize::Dn100 => 125_000,
            MeterSize::Dn150 => 312_500,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            MeterSize::Dn15 => "dn15",
            MeterSize::Dn20 => "dn20",
            MeterSize::Dn25 => "dn25",
            MeterSize::Dn32 => "dn32",
            MeterSize::Dn40 => "dn40",
            MeterSize::Dn50 => "dn50",
            MeterSize::Dn65 => "dn65",
            MeterSize::Dn80 => "dn80",
            MeterSize::Dn100 => "dn100",
            MeterSize::Dn150 => "dn150",
        }
    }
}

/// Eight digits of litres (99,999.999 m³): the register of a household meter, five
/// digits of m³ plus three decimals.
pub const DEFAULT_REGISTER_DIGITS: u8 = 8;
/// Hourly reads: what AMI water meters send by default (in bursts of 4–96).
pub const DEFAULT_EXPECTED_INTERVAL_MS: i64 = 3_600_000;
/// At most a month of hourly estimates per gap: a longer gap is a dead meter, and
/// filling it would write thousands of invented rows; its usage still lands in full
/// on the next actual read.
pub const DEFAULT_MAX_ESTIMATED_READS: u32 = 744;
/// A meter fresh from the factory reads a few litres of test water; anything under
/// one cubic metre after a large register is a new meter, not a read error.
pub const DEFAULT_EXCHANGE_THRESHOLD_L: u64 = 1_000;
/// Litres a register may exceed the size's maximum flow by: register resolution and
/// rounding of the interval (one litre per tick on household meters, plus margin).
pub const DEFAULT_JUMP_SLACK_L: u64 = 10;

/// VEE rules of one tenant. Defaults fit hourly household AMI meters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VeeRules {
    /// Digits of the litre register; it wraps at `10^digits`.
    pub register_digits: u8,
    /// Per-size override of `register_digits` (large meters carry more digits).
    pub register_digits_by_size: BTreeMap<MeterSize, u8>,
    /// Interval between a meter's reads. A gap longer than 1.5 intervals is filled
    /// with estimates on this grid.
    pub expected_interval_ms: i64,
    /// Longest gap, in expected intervals, that is filled with estimates.
    pub max_estimated_reads: u32,
    /// A register that drops below this many litres (and then grows normally) is a
    /// meter exchange.
    pub exchange_threshold_l: u64,
    /// Slack on the maximum-flow plausibility check, litres.
    pub jump_slack_l: u64,
}

impl Default for VeeRules {
    fn default() -> Self {
        Self {
            register_digits: DEFAULT_REGISTER_DIGITS,
            register_digits_by_size: BTreeMap::new(),
            expected_interval_ms: DEFAULT_EXPECTED_INTERVAL_MS,
            max_estimated_reads: DEFAULT_MAX_ESTIMATED_READS,
            exchange_threshold_l: DEFAULT_EXCHANGE_THRESHOLD_L,
            jump_slack_l: DEFAULT_JUMP_SLACK_L,
        }
    }
}

/// Most digits a register may have: 10^19 still fits in a `u64`.
pub const MAX_REGISTER_DIGITS: u8 = 19;

impl VeeRules {
    /// The raw register value at which a meter of `size` wraps to zero.
    pub fn register_capacity(&self, size: MeterSize) -> u64 {
        let digits = self
            .register_digits_by_size
            .get(&size)
            .copied()
            .unwrap_or(self.register_digits)
            .min(MAX_REGISTER_DIGITS);
        10u64.pow(u32::from(digits))
    }

    /// Every problem with these rules, for configuration validation.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let digits = std::iter::once(self.register_digits)
            .chain(self.register_digits_by_size.values().copied());
        for d in digits {
            if d == 0 || d > MAX_REGISTER_DIGITS {
                problems.push(format!(
                    "register digits {d} must be within 1..={MAX_REGISTER_DIGITS}"
                ));
            }
        }
        if self.expected_interval_ms < 1_000 {
            problems.push(format!(
                "expected_interval_ms {} must be at least 1000 (one second)",
                self.expected_interval_ms
            ));
        }
        problems
    }
}

/// Why a register epoch began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpochCause {
    /// The register wrapped at its digit capacity.
    Rollover,
    /// The meter was exchanged: the register restarted near zero.
    Exchange,
}

/// From `first_ts` on, a meter's raw registers are offset by `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterEpoch {
    pub cause: EpochCause,
    /// `ts` of the last read of the previous epoch.
    pub after_ts: i64,
    /// Raw register of that read. A read between `after_ts` and `first_ts` whose raw
    /// register is at least this belongs to the previous epoch (registers only grow
    /// within an epoch); one below it belongs to this one.
    pub after_reg: u64,
    /// `ts` of the first read of this epoch.
    pub first_ts: i64,
    /// Continuous register = raw register + `offset` within this epoch.
    pub offset: u64,
    /// The previous epoch's offset.
    pub previous_offset: u64,
}

/// Epochs remembered per meter: enough to place late reads around the last few
/// rollovers or exchanges (each happens at most every few years).
pub const MAX_REGISTER_EPOCHS: usize = 4;

/// A validated read: raw and continuous register at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatedRead {
    pub reading: Reading,
    /// Continuous register, litres (see the module doc).
    pub creg: u64,
    /// Seq of the message that carried it.
    pub seq: u64,
    /// When that message was received, epoch ms.
    pub received_at: i64,
}

/// The newest gap VEE filled with estimates, so a late real read inside it can
/// replace estimates and re-spread the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EstimatedGap {
    /// The actual read before the estimates (moves right as late reads fill in).
    pub from: ValidatedRead,
    /// The actual read after the estimates.
    pub to: ValidatedRead,
}

/// Per-meter VEE state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VeeState {
    /// The newest read accepted as actual: the base of the next delta.
    pub last: Option<ValidatedRead>,
    /// Recent register epochs, oldest first, at most [`MAX_REGISTER_EPOCHS`]. Empty
    /// while the meter has never rolled over or been exchanged (offset 0).
    pub epochs: Vec<RegisterEpoch>,
    /// A read whose register dropped near zero: a meter exchange if the next read
    /// grows normally from it. Stored as suspect until then.
    pub exchange_candidate: Option<ValidatedRead>,
    /// The newest estimated gap.
    pub gap: Option<EstimatedGap>,
    /// Newest `ts` of any read, suspect ones included: a suspect read is still a
    /// read, so no estimate is made at or before it.
    pub newest_seen_ts: Option<i64>,
}

impl VeeState {
    /// Continuous register of a raw read taken at `ts` (late reads included): the
    /// offset of the epoch the read belongs to, added to its raw register.
    pub fn continuous_register(&self, ts: i64, reg: u64) -> u64 {
        for epoch in self.epochs.iter().rev() {
            if ts >= epoch.first_ts || (ts > epoch.after_ts && reg < epoch.after_reg) {
                return reg.saturating_add(epoch.offset);
            }
            if ts > epoch.after_ts {
                return reg.saturating_add(epoch.previous_offset);
            }
        }
        let base = self.epochs.first().map_or(0, |e| e.previous_offset);
        reg.saturating_add(base)
    }

    /// Offset of the current (newest) epoch.
    pub fn current_offset(&self) -> u64 {
        self.epochs.last().map_or(0, |e| e.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{AlertKind, OpenAlert, SOURCE_RULE};
    use crate::billing::{PeriodReads, RegisterPoint};
    use crate::codec::binary::{decode_record, encode_record};
    use crate::state::MeterState;

    /// Every processor's state survives the `meter_state` record codec (bincode's
    /// serde mode is positional: a skipped field would break this).
    #[test]
    fn a_fully_populated_meter_state_round_trips() {
        let read = ValidatedRead {
            reading: Reading {
                ts: 10,
                reg: 99_999_990,
                rev: 1,
                flow: 2,
                temp: None,
            },
            creg: 99_999_990,
            seq: 4,
            received_at: 11,
        };
        let mut state = MeterState {
            vee: VeeState {
                last: Some(read),
                epochs: vec![RegisterEpoch {
                    cause: EpochCause::Rollover,
                    after_ts: 5,
                    after_reg: 99_999_000,
                    first_ts: 10,
                    offset: 100_000_000,
                    previous_offset: 0,
                }],
                exchange_candidate: Some(read),
                gap: Some(EstimatedGap {
                    from: read,
                    to: read,
                }),
                newest_seen_ts: Some(10),
            },
            ..MeterState::default()
        };
        let point = Some(RegisterPoint { ts: 1, creg: 2 });
        state.billing.current = Some(PeriodReads {
            year: 2025,
            month: 2,
            start_ms: 0,
            end_ms: 1,
            before: point,
            first: point,
            last: None,
            after: point,
        });
        state.alerts.open.push(OpenAlert {
            kind: AlertKind::Leak,
            opened_at: 1,
            last_event_at: 2,
            sources: SOURCE_RULE,
        });
        state.alerts.last_zero_hour_ts = Some(3);
        state.analytics.day_l = 7;
        let back: MeterState = decode_record(&encode_record(&state)).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn late_reads_find_their_epoch() {
        let state = VeeState {
            epochs: vec![RegisterEpoch {
                cause: EpochCause::Rollover,
                after_ts: 100,
                after_reg: 99_999_000,
                first_ts: 300,
                offset: 100_000_000,
                previous_offset: 0,
            }],
            ..VeeState::default()
        };
        assert_eq!(state.continuous_register(50, 99_998_000), 99_998_000);
        assert_eq!(
            state.continuous_register(200, 99_999_500),
            99_999_500,
            "before the wrap"
        );
        assert_eq!(
            state.continuous_register(200, 20),
            100_000_020,
            "after the wrap"
        );
        assert_eq!(state.continuous_register(400, 70), 100_000_070);
    }
}
