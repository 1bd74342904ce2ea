//! Validation, estimation and editing (VEE) vocabulary: meter sizes and what they can
//! physically measure, the per-tenant VEE rules, and the per-meter VEE state persisted
//! in `meter_state`. The rules themselves live in `meterflow-processors` (`vee`).
//!
//! The *continuous register* is the VEE's central idea: a meter's raw register wraps
//! at its digit capacity and restarts elsewhere when the meter is exchanged, so raw
//! registers cannot be subtracted across those events. VEE keeps, per register
//! epoch, how a raw register maps to litres since the first reading in time order
//! (`creg`): within an epoch litre for litre, across a rollover plus the litres
//! through the wrap, across an exchange from the new register's initial read.
//! Billing subtracts continuous registers, so a rollover or an exchange never shows
//! up as negative or enormous usage.
//!
//! [`VeeState`] keeps the raw reads of the late window, so that VEE's decisions are
//! those of the reads in time order, whatever order they arrive in.
//!
//! Persisted with bincode's serde mode: no `skip_serializing_if` and no untagged or
//! flattened fields in the state types. Of [`VeeState`], only the settled pass is
//! persisted (`meter_state` record version 3): the window's raw reads are stored as
//! readings rows anyway, in the same atomic write, so the window and the pass over it
//! are rebuilt from those rows when a shard hydrates the meter
//! (`meterflow_processors::vee::rebuild_window`). They are `#[serde(skip)]`, which
//! bincode's positional layout allows because both directions skip them.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::exception::RegisterOrder;
use crate::uplink::Reading;

/// Nominal diameter of a water meter (ISO 4064 / EN 14154 sizes). Decides the
/// plausible maximum flow and, per tariff, the fixed charge.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
/// A meter fresh from the factory reads a few litres of test water: a register that
/// restarts under one cubic metre looks like a new meter, and one read continuing
/// it confirms the exchange (a register restarting elsewhere needs two).
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
    /// A register that restarts below this many litres is confirmed as a meter
    /// exchange by one read growing from it (and not from the old register); one
    /// that lands anywhere else, by two.
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
    /// The meter was exchanged: a new register took over.
    Exchange,
}

/// From `first_ts` on, a meter's raw registers belong to a new register epoch. Each
/// side of the event is pinned by one read and its continuous register; within an
/// epoch the continuous register moves litre for litre with the raw one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterEpoch {
    pub cause: EpochCause,
    /// `ts` of the last read of the previous epoch.
    pub after_ts: i64,
    /// Raw register of that read. A read between `after_ts` and `first_ts` whose raw
    /// register is at least this belongs to the previous epoch (registers only grow
    /// within an epoch); one below it belongs to this one.
    pub after_reg: u64,
    /// Continuous register of that read.
    pub after_creg: u64,
    /// `ts` of the first read of this epoch.
    pub first_ts: i64,
    /// Raw register of that read.
    pub first_reg: u64,
    /// Its continuous register: after a rollover, `after_creg` plus the litres across
    /// the wrap; after an exchange, `after_creg` itself (the new register bills from
    /// its initial read, whatever its value).
    pub first_creg: u64,
}

/// The continuous register of `reg` on a register where `pin_reg` reads `pin_creg`.
fn along(pin_reg: u64, pin_creg: u64, reg: u64) -> u64 {
    if reg >= pin_reg {
        pin_creg.saturating_add(reg - pin_reg)
    } else {
        pin_creg.saturating_sub(pin_reg - reg)
    }
}

/// Epochs remembered per meter: enough to place late reads around the last few
/// rollovers or exchanges (each happens at most every few years).
pub const MAX_REGISTER_EPOCHS: usize = 4;

/// A read as the meter sent it, kept until VEE's decision on it is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRead {
    pub reading: Reading,
    /// Seq of the message that carried it.
    pub seq: u64,
    /// When that message was received, epoch ms.
    pub received_at: i64,
}

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

/// A register regression or jump that may be a meter exchange: its reads are stored
/// `Suspect` until enough later reads grow from it (and not from the old base).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeCandidate {
    /// The first read off the old register: the new register's initial read if the
    /// exchange is confirmed.
    pub initial: RawRead,
    /// Reads since, each grown plausibly from the one before (at most one: a second
    /// confirms the exchange).
    pub followers: Vec<RawRead>,
}

/// Where VEE's left-to-right pass over a meter's reads in time order stands: what the
/// next read is judged against.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VeeFold {
    /// The newest read accepted as actual: the base of the next delta.
    pub base: Option<ValidatedRead>,
    /// Recent register epochs, oldest first: at most [`MAX_REGISTER_EPOCHS`] before
    /// the settled point, and every one after it (see
    /// `meterflow_processors::vee`). Empty
    /// while the meter has never rolled over or been exchanged (the continuous
    /// register is then the raw one).
    pub epochs: Vec<RegisterEpoch>,
    /// A pending exchange, while its reads are suspect.
    pub candidate: Option<ExchangeCandidate>,
    /// Newest `ts` of any read passed, suspect ones included.
    pub newest_ts: Option<i64>,
}

impl VeeFold {
    /// Continuous register of a raw read taken at `ts` (late reads included): the
    /// register epoch the read belongs to decides how its raw register maps.
    pub fn continuous_register(&self, ts: i64, reg: u64) -> u64 {
        for epoch in self.epochs.iter().rev() {
            if ts >= epoch.first_ts || (ts > epoch.after_ts && reg < epoch.after_reg) {
                return along(epoch.first_reg, epoch.first_creg, reg);
            }
            if ts > epoch.after_ts {
                return along(epoch.after_reg, epoch.after_creg, reg);
            }
        }
        self.epochs
            .first()
            .map_or(reg, |e| along(e.after_reg, e.after_creg, reg))
    }
}

/// Per-meter VEE state: reads in time order, split at the *settled* point. Reads up
/// to it are folded into `settled` and forgotten; reads after it are kept raw in
/// `window`, so that a late read among them re-runs the pass from `settled` and
/// every decision is the one the reads in time order give, whatever their arrival
/// order. `head` is the pass over the whole window (the state new reads continue).
///
/// Only `settled` is persisted: `window` is the meter's stored non-estimated rows
/// after the settled point, and `head` the pass over them, so both are rebuilt from
/// the readings table on hydration. A state just decoded has them empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VeeState {
    /// The pass over every settled read.
    pub settled: VeeFold,
    /// Reads after the settled point, ascending `ts`, one per `ts`; bounded by the
    /// late window and by [`MAX_WINDOW_READS`]. Not persisted (rebuilt from the
    /// stored rows). A deque: reads settle off its front a message's worth at a
    /// time, and a `Vec` moved the whole window (~16 KiB) down for each.
    #[serde(skip)]
    pub window: VecDeque<RawRead>,
    /// The pass over `settled` and then `window`. Not persisted (rebuilt with the
    /// window).
    #[serde(skip)]
    pub head: VeeFold,
    /// Operator orders about reads after the settled point (decided exceptions,
    /// recorded exchanges), ascending `ts`, at most
    /// [`MAX_METER_ORDERS`](crate::exception::MAX_METER_ORDERS); the pass
    /// follows them. Persisted (record version 5): nothing else holds them.
    pub orders: Vec<RegisterOrder>,
    /// Sizes recorded with the meter's exchanges, ascending `from_ts`, at most
    /// [`MAX_SIZE_CHANGES`]; before the first (and with none), the tenant's
    /// configured size holds. Persisted (record version 8): the orders that
    /// recorded them are forgotten once the window settles past them.
    pub sizes: Vec<SizeChange>,
}

/// From `from_ts` on (a recorded exchange's time), the meter is of `size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeChange {
    pub from_ts: i64,
    pub size: MeterSize,
}

/// A meter's size at `ts`, of its recorded `changes` (ascending): the newest at or
/// before it, else `configured` (a read at an exchange's own time is the new
/// meter's, as VEE places it on the new register).
pub fn size_at(changes: &[SizeChange], ts: i64, configured: MeterSize) -> MeterSize {
    in_effect_at(changes, ts, |c| c.from_ts).map_or(configured, |c| c.size)
}

/// Of `changes`, ascending by the time each takes effect (`from`), the newest in
/// effect at `ts`.
pub fn in_effect_at<T>(changes: &[T], ts: i64, from: impl Fn(&T) -> i64) -> Option<&T> {
    let after = changes.partition_point(|c| from(c) <= ts);
    after.checked_sub(1).map(|i| &changes[i])
}

/// Size changes remembered per meter: each comes with a field exchange, a few in a
/// meter's life; the oldest is forgotten first (it can only matter to periods long
/// billed final).
pub const MAX_SIZE_CHANGES: usize = 8;

/// Most raw reads kept per meter: three days (the default late window) of
/// 15-minute reads. A meter reading more often than that keeps a shorter window, and
/// its reads arriving later than the window are stored without re-deciding others.
pub const MAX_WINDOW_READS: usize = 288;

impl VeeState {
    /// Continuous register of a raw read taken at `ts`, by the newest pass.
    pub fn continuous_register(&self, ts: i64, reg: u64) -> u64 {
        self.head.continuous_register(ts, reg)
    }

    /// `ts` of the newest settled read: a read at or before it can no longer change
    /// any decision (it is late beyond the window).
    pub fn settled_ts(&self) -> Option<i64> {
        self.settled.newest_ts
    }

    /// Records what an exchange order at `ts` says of the meter's size: `size`
    /// from `ts` on, or — an order replacing one that gave a size — nothing at
    /// `ts` any more. Keeps the newest [`MAX_SIZE_CHANGES`]. Returns whether the
    /// sizes changed.
    pub fn record_size(&mut self, ts: i64, size: Option<MeterSize>) -> bool {
        let held = self.sizes.iter().find(|c| c.from_ts == ts).map(|c| c.size);
        if held == size {
            return false;
        }
        self.sizes.retain(|c| c.from_ts != ts);
        if let Some(size) = size {
            let at = self.sizes.partition_point(|c| c.from_ts < ts);
            self.sizes.insert(at, SizeChange { from_ts: ts, size });
        }
        let excess = self.sizes.len().saturating_sub(MAX_SIZE_CHANGES);
        self.sizes.drain(..excess);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{AlertKind, OpenAlert, SOURCE_RULE};
    use crate::billing::{PeriodReads, RegisterPoint};
    use crate::codec::binary::{decode_record, encode_record};
    use crate::exception::{Decision, OrderAction};
    use crate::state::MeterState;

    /// Every processor's persisted state survives the `meter_state` record codec, and
    /// the fields skipped in both directions (VEE's window and head, billing's open
    /// reads) come back empty without shifting the fields after them (bincode's serde
    /// mode is positional: a field skipped one way only would break this).
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
        let raw = RawRead {
            reading: read.reading,
            seq: 5,
            received_at: 12,
        };
        let fold = VeeFold {
            base: Some(read),
            epochs: vec![RegisterEpoch {
                cause: EpochCause::Rollover,
                after_ts: 5,
                after_reg: 99_999_000,
                after_creg: 99_999_000,
                first_ts: 10,
                first_reg: 20,
                first_creg: 100_000_020,
            }],
            candidate: Some(ExchangeCandidate {
                initial: raw,
                followers: vec![raw],
            }),
            newest_ts: Some(10),
        };
        let mut state = MeterState {
            vee: VeeState {
                settled: fold.clone(),
                window: VecDeque::from([raw, raw]),
                head: fold,
                orders: vec![RegisterOrder {
                    ts: 10,
                    action: OrderAction::Exchange {
                        final_reg: Some(7),
                        initial_reg: 2,
                        size: Some(MeterSize::Dn25),
                    },
                    decision: Decision {
                        by: "ana".into(),
                        why: "work order 12".into(),
                        at_ms: 13,
                    },
                    exception: None,
                }],
                sizes: vec![SizeChange {
                    from_ts: 10,
                    size: MeterSize::Dn25,
                }],
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
        state
            .billing
            .open
            .push_back(RegisterPoint { ts: 3, creg: 4 });
        state.alerts.settled.open.push(OpenAlert {
            kind: AlertKind::Leak,
            opened_at: 1,
            last_event_at: 2,
            sources: SOURCE_RULE,
        });
        state.alerts.settled.last_zero_hour_ts = Some(3);
        state.analytics.day_l = 7;
        let back: MeterState = decode_record(&encode_record(&state)).unwrap();
        let mut persisted = state.clone();
        persisted.vee.window.clear();
        persisted.vee.head = VeeFold::default();
        persisted.billing.open.clear();
        assert_eq!(back, persisted);
        assert_eq!(back.billing.current, state.billing.current);
        assert_eq!(back.alerts, state.alerts);
        // Nothing of the window is written: the record is as long as one without it.
        let without_window = encode_record(&persisted);
        assert_eq!(encode_record(&state), without_window);
    }

    #[test]
    fn a_meters_size_is_the_newest_recorded_at_or_before_a_time() {
        let mut state = VeeState::default();
        let configured = MeterSize::Dn15;
        assert_eq!(size_at(&state.sizes, 5, configured), configured);
        state.record_size(100, Some(MeterSize::Dn25));
        state.record_size(50, Some(MeterSize::Dn20));
        assert_eq!(size_at(&state.sizes, 49, configured), configured);
        assert_eq!(
            size_at(&state.sizes, 50, configured),
            MeterSize::Dn20,
            "from its time on"
        );
        assert_eq!(size_at(&state.sizes, 99, configured), MeterSize::Dn20);
        assert_eq!(size_at(&state.sizes, i64::MAX, configured), MeterSize::Dn25);
        state.record_size(100, None);
        assert_eq!(
            size_at(&state.sizes, 200, configured),
            MeterSize::Dn20,
            "an order without a size takes back its time's size"
        );
        for ts in 0..20 {
            state.record_size(1_000 + ts, Some(MeterSize::Dn40));
        }
        assert_eq!(state.sizes.len(), MAX_SIZE_CHANGES);
        assert_eq!(state.sizes[0].from_ts, 1_012, "the oldest are forgotten");
    }

    #[test]
    fn late_reads_find_their_epoch() {
        let fold = VeeFold {
            epochs: vec![
                RegisterEpoch {
                    cause: EpochCause::Rollover,
                    after_ts: 100,
                    after_reg: 99_999_000,
                    after_creg: 99_999_000,
                    first_ts: 300,
                    first_reg: 50,
                    first_creg: 100_000_050,
                },
                RegisterEpoch {
                    cause: EpochCause::Exchange,
                    after_ts: 500,
                    after_reg: 900,
                    after_creg: 100_000_900,
                    first_ts: 600,
                    first_reg: 350_000,
                    first_creg: 100_000_900,
                },
            ],
            ..VeeFold::default()
        };
        assert_eq!(fold.continuous_register(50, 99_998_000), 99_998_000);
        assert_eq!(
            fold.continuous_register(200, 99_999_500),
            99_999_500,
            "before the wrap"
        );
        assert_eq!(
            fold.continuous_register(200, 20),
            100_000_020,
            "after the wrap"
        );
        assert_eq!(fold.continuous_register(400, 70), 100_000_070);
        assert_eq!(
            fold.continuous_register(700, 350_100),
            100_001_000,
            "a refurbished register bills from its initial read"
        );
    }
}
