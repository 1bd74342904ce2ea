//! Billing vocabulary: a tenant's tariff, the running bill line per meter and period,
//! and the per-meter billing state persisted in `meter_state`. The rules live in
//! `meterflow-processors` (`billing`).
//!
//! Money is integers in the currency's minor unit (cents for EUR and USD), volumes are
//! litres, tier bounds are whole cubic metres as tariffs publish them.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::vee::MeterSize;

/// One increasing-block tier: consumption up to `up_to_m3` (cumulative over the
/// period, from the previous tier's bound) is charged `price_per_m3`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TariffTier {
    /// Upper bound of the tier in m³ of period usage; `None` for the last tier,
    /// which is unbounded.
    pub up_to_m3: Option<u64>,
    /// Price of one m³ in this tier, minor units.
    pub price_per_m3: u64,
}

/// A tenant's water tariff.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tariff {
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: String,
    /// Digits of the minor unit (2 for cents); amounts are in minor units.
    pub minor_units: u8,
    /// Fixed (standing) charge per billing period by meter size, minor units.
    pub fixed_charge_by_size: BTreeMap<MeterSize, u64>,
    /// Fixed charge for sizes missing from `fixed_charge_by_size`.
    pub fixed_charge: u64,
    /// Increasing-block tiers, ascending bounds, the last one unbounded.
    pub tiers: Vec<TariffTier>,
    /// IANA time zone of the tenant: billing periods are calendar months there.
    pub time_zone: String,
}

impl Default for Tariff {
    /// A plain illustrative tariff: EUR, 8.00 fixed per month, 1.50/m³ up to 10 m³,
    /// 2.50/m³ up to 30 m³, 4.00/m³ above — the shape of a household block tariff.
    /// Real tenants configure their own.
    fn default() -> Self {
        Self {
            currency: "EUR".into(),
            minor_units: 2,
            fixed_charge_by_size: BTreeMap::new(),
            fixed_charge: 800,
            tiers: vec![
                TariffTier {
                    up_to_m3: Some(10),
                    price_per_m3: 150,
                },
                TariffTier {
                    up_to_m3: Some(30),
                    price_per_m3: 250,
                },
                TariffTier {
                    up_to_m3: None,
                    price_per_m3: 400,
                },
            ],
            time_zone: "UTC".into(),
        }
    }
}

impl Tariff {
    /// Fixed charge per period for a meter of `size` (billing prorates it in a
    /// meter's first period).
    pub fn fixed_charge_for(&self, size: MeterSize) -> u64 {
        self.fixed_charge_by_size
            .get(&size)
            .copied()
            .unwrap_or(self.fixed_charge)
    }

    /// Every structural problem with the tariff (the time zone is checked where it
    /// is resolved, in `processors`).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            problems.push(format!(
                "currency {:?} must be an ISO 4217 code such as \"EUR\"",
                self.currency
            ));
        }
        if self.tiers.is_empty() {
            problems.push("tiers must not be empty: give at least one unbounded tier".into());
        }
        let mut previous = 0;
        for (i, tier) in self.tiers.iter().enumerate() {
            let last = i + 1 == self.tiers.len();
            match tier.up_to_m3 {
                None if !last => problems.push(format!(
                    "tier {i} is unbounded but is not the last; only the last tier may omit up_to_m3"
                )),
                None => {}
                Some(bound) if last => problems.push(format!(
                    "the last tier (up to {bound} m³) must be unbounded: omit its up_to_m3"
                )),
                Some(bound) if bound <= previous => problems.push(format!(
                    "tier {i} bound {bound} m³ must be above the previous bound {previous} m³"
                )),
                Some(bound) => previous = bound,
            }
        }
        problems
    }
}

/// What one tier contributes to a bill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TierCharge {
    /// Litres of the period's usage that fell in this tier.
    pub usage_l: u64,
    pub price_per_m3: u64,
    /// `usage_l × price_per_m3 / 1000`, rounded half up, minor units.
    pub amount_cents: u64,
}

/// The running bill of one meter for one period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BillLine {
    pub tenant: String,
    pub meter: String,
    /// Calendar month in the tenant's time zone, `yyyy-mm`.
    pub period: String,
    pub currency: String,
    /// Usage in the period, litres: continuous-register delta across the period.
    pub usage_l: u64,
    /// One entry per tariff tier, in tier order (zero-usage tiers included).
    pub tiers: Vec<TierCharge>,
    /// Fixed charge for the period, minor units: prorated to the local days in
    /// service in the meter's first period, in full otherwise.
    pub fixed_cents: u64,
    /// `fixed_cents` + the tiers' amounts, minor units.
    pub amount_cents: u64,
    /// Whether an end of the period was interpolated across a read gap, or the
    /// period has no read at all and its usage is interpolated between the reads
    /// around it (the bill is trued up when actual reads arrive).
    pub estimated: bool,
    /// No later read can change this bill: the period closed and its late window
    /// passed.
    #[serde(rename = "final")]
    pub final_: bool,
}

/// A continuous register (see [`crate::vee`]) at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RegisterPoint {
    pub ts: i64,
    pub creg: u64,
}

/// What billing knows about one period of one meter: the actual reads nearest to
/// its two boundaries. Each field is a minimum or maximum over reads, so the result
/// does not depend on the order reads arrive in, nor on duplicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodReads {
    pub year: i16,
    pub month: u8,
    /// First instant of the period, epoch ms (local midnight of the 1st).
    pub start_ms: i64,
    /// First instant of the next period.
    pub end_ms: i64,
    /// Newest read at or before `start_ms`.
    pub before: Option<RegisterPoint>,
    /// Oldest read within `[start_ms, end_ms]`.
    pub first: Option<RegisterPoint>,
    /// Newest read within `[start_ms, end_ms]`.
    pub last: Option<RegisterPoint>,
    /// Oldest read at or after `end_ms`.
    pub after: Option<RegisterPoint>,
}

/// Per-meter billing state. `current` and `previous` fold *settled* reads only (VEE's
/// decision on them is final); the actual reads of VEE's window, which a late read
/// can still re-decide, are kept apart in `open` and folded in when a bill is made.
/// Only `current` and `previous` are persisted: `open` is rebuilt from VEE's rebuilt
/// window on hydration (see [`crate::vee::VeeState`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingState {
    /// The period of the meter's newest settled read.
    pub current: Option<PeriodReads>,
    /// The period before it, until its late window passes and its bill is final.
    pub previous: Option<PeriodReads>,
    /// Actual reads not yet settled, ascending `ts`, one per `ts`: as many as VEE's
    /// window holds at most (`MAX_WINDOW_READS`). Not persisted (rebuilt).
    #[serde(skip)]
    pub open: VecDeque<RegisterPoint>,
    /// `ts` of the newest read VEE decided, actual or suspect: a month after the
    /// periods' whose reads are all suspect (pending exceptions) is billed as a month
    /// without reads. Not persisted (rebuilt: the newest read is always in VEE's
    /// window).
    #[serde(skip)]
    pub reported_to: Option<i64>,
    /// `ts` of the oldest read in VEE's window (after the settled point), actual or
    /// suspect, as of the last batch, while no actual read has settled (`current` is
    /// none): the months from its month up to the meter's first period, when no
    /// actual read of the meter falls in them, are *leading months* (billed as owing
    /// nothing). Not persisted (rebuilt with the window).
    #[serde(skip)]
    pub reported_from: Option<i64>,
}

impl crate::codec::binary::Record for BillLine {}
