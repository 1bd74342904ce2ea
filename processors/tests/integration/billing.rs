//! Billing scenarios and properties.

use std::collections::BTreeMap;

use meterflow_model::{
    MeterId, MeterSize, ProcessorsConfig, Tariff, TariffTier, TenantId, TenantProcessing,
};
use proptest::prelude::*;

use crate::utils::{DAY, HOUR, Input, Pipeline, key, reading};

/// 2025-01-31T23:00:00Z = 2025-02-01T00:00 in Paris (UTC+1 all February).
const FEB_START_PARIS: i64 = 1_738_364_400_000;
/// 2025-02-28T23:00:00Z = 2025-03-01T00:00 in Paris.
const MAR_START_PARIS: i64 = 1_740_783_600_000;

fn acme_config() -> ProcessorsConfig {
    let tariff = Tariff {
        currency: "EUR".into(),
        minor_units: 2,
        fixed_charge_by_size: BTreeMap::from([(MeterSize::Dn15, 850), (MeterSize::Dn25, 2_400)]),
        fixed_charge: 1_000,
        tiers: vec![
            TariffTier {
                up_to_m3: Some(5),
                price_per_m3: 120,
            },
            TariffTier {
                up_to_m3: Some(15),
                price_per_m3: 210,
            },
            TariffTier {
                up_to_m3: None,
                price_per_m3: 350,
            },
        ],
        time_zone: "Europe/Paris".into(),
    };
    let tenant = TenantId::try_from("acme").unwrap();
    ProcessorsConfig {
        tenants: BTreeMap::from([(
            tenant,
            TenantProcessing {
                tariff,
                ..TenantProcessing::default()
            },
        )]),
        ..ProcessorsConfig::default()
    }
}

/// Litres a household uses in the hour starting at local `hour`: nothing at night,
/// 20 L an hour from 06:00 to 22:00, 5 L an hour late in the evening — 330 L a day.
fn household_hour(hour: i64) -> u64 {
    match hour {
        6..=21 => 20,
        22 | 23 => 5,
        _ => 0,
    }
}

#[test]
fn a_household_month_gets_the_hand_computed_bill() {
    let mut pipeline = Pipeline::new(acme_config());
    let meter = key("acme", "house-7");
    // Hourly reads from local 2025-01-31 00:00 to 2025-03-01 03:00, sent a day per message.
    let first = FEB_START_PARIS - DAY;
    let last = MAR_START_PARIS + 3 * HOUR;
    let mut reg = 48_213_000;
    let mut ts = first;
    let mut day = Vec::new();
    while ts <= last {
        day.push(reading(ts, reg));
        // Local hour of the interval starting now (Paris is UTC+1 in February).
        let local_hour = (ts + HOUR).rem_euclid(DAY) / HOUR;
        reg += household_hour(local_hour);
        ts += HOUR;
        if day.len() == 24 || ts > last {
            pipeline.feed(ts, vec![Input::readings(&meter, std::mem::take(&mut day))]);
        }
    }
    // Three days after the period, the sweep issues the final February bill.
    let out = pipeline.sweep(MAR_START_PARIS + 3 * DAY);
    let bill = out
        .bills
        .iter()
        .find(|b| b.period == "2025-02")
        .expect("a final February bill");
    // 28 days × 330 L = 9,240 L = 9.240 m³ (January and March usage excluded: reads
    // fall exactly on local midnight, so nothing is interpolated).
    // Tier 1: 5 m³ × 1.20 = 6.00; tier 2: 4.240 m³ × 2.10 = 8.904 → 8.90; tier 3: 0.
    // Fixed DN15 charge 8.50. Total 6.00 + 8.90 + 8.50 = 23.40 EUR.
    assert_eq!(bill.usage_l, 9_240);
    let tiers: Vec<_> = bill
        .tiers
        .iter()
        .map(|t| (t.usage_l, t.amount_cents))
        .collect();
    assert_eq!(tiers, vec![(5_000, 600), (4_240, 890), (0, 0)]);
    assert_eq!(bill.fixed_cents, 850);
    assert_eq!(bill.amount_cents, 2_340);
    assert_eq!(bill.currency, "EUR");
    assert!(bill.final_ && !bill.estimated);
    // A February read arriving after the final bill (late beyond the window)
    // changes nothing: no February line, final or not.
    let late = reading(FEB_START_PARIS + 9 * DAY, 48_216_300);
    let (_, out) = pipeline.feed(
        MAR_START_PARIS + 4 * DAY,
        vec![Input::readings(&meter, vec![late])],
    );
    assert!(out.bills.iter().all(|b| b.period != "2025-02"));
}

#[test]
fn a_missing_boundary_read_is_estimated_then_trued_up() {
    let mut pipeline = Pipeline::new(acme_config());
    let meter = key("acme", "m");
    // 100 L an hour; reads around the February start are lost at first.
    let reg_at = |ts: i64| 1_000_000 + ((ts - FEB_START_PARIS + 10 * HOUR) / HOUR) as u64 * 100;
    let read = |ts| reading(ts, reg_at(ts));
    let before = FEB_START_PARIS - 3 * HOUR;
    let after = FEB_START_PARIS + 5 * HOUR;
    pipeline.feed(0, vec![Input::readings(&meter, vec![read(before)])]);
    let (_, out) = pipeline.feed(0, vec![Input::readings(&meter, vec![read(after)])]);
    let feb = out.bills.iter().find(|b| b.period == "2025-02").unwrap();
    assert_eq!((feb.usage_l, feb.estimated), (500, true));
    // The lost reads arrive: the bill stays right, and is no longer an estimate.
    let resent = (1..8).map(|h| read(before + h * HOUR)).collect();
    let (_, out) = pipeline.feed(0, vec![Input::readings(&meter, resent)]);
    let feb = out.bills.iter().find(|b| b.period == "2025-02").unwrap();
    assert_eq!((feb.usage_l, feb.estimated), (500, false));
}

/// A district's bulk (inflow) meter is no customer: a month of its reads, and the
/// sweep after the month, make no bill line, while a customer's do.
#[test]
fn a_bulk_meter_gets_no_bill() {
    let mut config = acme_config();
    let acme = config.tenants.values_mut().next().expect("acme");
    acme.bulk_meters
        .insert(MeterId::try_from("inlet").unwrap(), "north".into());
    let mut pipeline = Pipeline::new(config);
    let (inlet, house) = (key("acme", "inlet"), key("acme", "house"));
    let mut bills = Vec::new();
    for day in 0..30 {
        let ts = FEB_START_PARIS + day * DAY;
        let reg = 1_000 + day as u64 * 500;
        let inputs = vec![
            Input::readings(&inlet, vec![reading(ts, reg)]),
            Input::readings(&house, vec![reading(ts, reg)]),
        ];
        bills.extend(pipeline.feed(ts, inputs).1.bills);
    }
    bills.extend(pipeline.sweep(MAR_START_PARIS + 4 * DAY).bills);
    assert!(bills.iter().any(|b| b.meter == "house"));
    assert!(bills.iter().all(|b| b.meter != "inlet"), "{bills:?}");
}

/// Hourly reads from 2025-02-20 to 2025-03-10 (two periods), as messages.
fn messages_strategy() -> impl Strategy<Value = (u64, Vec<Vec<(i64, u64)>>)> {
    let start = FEB_START_PARIS + 19 * DAY;
    (
        prop_oneof![Just(99_990_000u64), 0u64..50_000_000],
        proptest::collection::vec(0u64..400, 24..18 * 24),
        proptest::collection::vec(1usize..30, 1..60),
    )
        .prop_map(move |(reg0, steps, sizes)| {
            let mut reg = reg0;
            let reads: Vec<(i64, u64)> = steps
                .iter()
                .enumerate()
                .map(|(i, step)| {
                    let r = (start + i as i64 * HOUR, reg);
                    reg = (reg + step) % 100_000_000;
                    r
                })
                .collect();
            let mut messages = Vec::new();
            let mut rest = &reads[..];
            for size in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (head, tail) = rest.split_at((*size).min(rest.len()));
                messages.push(head.to_vec());
                rest = tail;
            }
            (reg0, messages)
        })
}

fn bill_state(
    messages: &[Vec<(i64, u64)>],
) -> (meterflow_model::billing::BillingState, Vec<(String, u64)>) {
    let mut pipeline = Pipeline::new(acme_config());
    let meter = key("acme", "p");
    let mut bills = BTreeMap::new();
    for message in messages {
        let readings = message.iter().map(|(ts, reg)| reading(*ts, *reg)).collect();
        let (_, out) = pipeline.feed(0, vec![Input::readings(&meter, readings)]);
        for bill in out.bills {
            bills.insert(bill.period.clone(), bill.usage_l);
        }
    }
    (
        pipeline.states[&meter].billing.clone(),
        bills.into_iter().collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A bill depends only on the set of reads: not on message order (after the
    /// meter's first message), duplicates, or how reads are cut into messages —
    /// including across a register rollover.
    #[test]
    fn a_bill_depends_only_on_the_set_of_reads(
        (_, messages) in messages_strategy(),
        order in proptest::collection::vec(any::<u32>(), 60),
        duplicates in proptest::collection::vec(0usize..60, 0..6),
    ) {
        let all_at_once = vec![messages.concat()];
        let (expected_state, expected_bills) = bill_state(&all_at_once);
        let mut shuffled: Vec<_> = messages.iter().enumerate().skip(1).map(|(i, m)| (order[i % order.len()], i, m.clone())).collect();
        shuffled.sort();
        let mut delivered = vec![messages[0].clone()];
        delivered.extend(shuffled.into_iter().map(|(_, _, m)| m));
        for d in duplicates {
            let copy = delivered[d % delivered.len()].clone();
            delivered.push(copy);
        }
        let (state, bills) = bill_state(&delivered);
        prop_assert_eq!(state, expected_state);
        prop_assert_eq!(bills, expected_bills);
    }
}
