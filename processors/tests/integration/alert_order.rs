//! Alert episodes in reading time, whatever the arrival order (issue 10, case 7 and
//! "Order independence"): a scenario with hand-computed episodes, and a model-based
//! property that compares any late, shuffled, duplicated, re-batched and restarted
//! arrival of a meter's messages with the in-order stream.

use std::collections::{BTreeMap, BTreeSet};

use meterflow_model::{AlertKind, DeviceStatus, Flags, ProcessorsConfig, StoredReading};
use proptest::prelude::*;
use proptest::sample::Index;

use crate::register_order::{arrival, keep_episodes};
use crate::utils::{HOUR, Input, Pipeline, key, reading, restart};

/// 2025-03-03T00:00Z.
const START: i64 = 1_740_960_000_000;

/// The episodes as the stores keep them: (kind, opened_at) → when cleared.
type Episodes = BTreeMap<(AlertKind, i64), Option<i64>>;

/// One message: its reads and a clean status (the device raises no flag and its
/// battery is full: device flags arriving late are approximated, ARCHITECTURE.md
/// departure 18, and are property-tested in `alerting.rs`).
fn input(meter: &meterflow_model::MeterKey, reads: &[StoredReading]) -> Input {
    let ts = reads.last().map_or(START, |r| r.reading.ts);
    Input {
        key: meter.clone(),
        readings: reads.to_vec(),
        status: Some(DeviceStatus {
            ts,
            received_at: ts,
            flags: Flags::empty(),
            battery: Some(90),
            rssi: None,
        }),
    }
}

/// Feeds the batches (each a list of messages) through the standard chain and keeps
/// the episodes; before each batch whose index is in `restarts` the meter restarts
/// (`utils::restart`), and its alert state must come back as it was.
fn replay(batches: &[Vec<Vec<StoredReading>>], restarts: &BTreeSet<usize>) -> Episodes {
    let meter = key("demo", "m");
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let mut episodes = Episodes::new();
    let mut stored: BTreeMap<i64, StoredReading> = BTreeMap::new();
    for (i, batch) in batches.iter().enumerate() {
        if restarts.contains(&i)
            && let Some((before, state)) = restart(&mut pipeline, &meter, &stored)
        {
            assert_eq!(state.alerts, before.alerts, "rehydrated before batch {i}");
        }
        let inputs = batch.iter().map(|reads| input(&meter, reads)).collect();
        let (sealed, out) = pipeline.feed(0, inputs);
        for row in &sealed.meters[0].readings {
            stored.insert(row.reading.ts, *row);
        }
        keep_episodes(&mut episodes, &out.alerts);
    }
    episodes
}

/// Hourly reads from `START`: (litres used in the hour before, reverse litres,
/// water temperature) per hour, `None` for an hour with no read.
fn reads_of(hours: &[Option<(u64, u64, Option<i16>)>]) -> Vec<StoredReading> {
    let (mut reg, mut rev) = (50_000u64, 0u64);
    let mut reads = Vec::new();
    for (h, hour) in hours.iter().enumerate() {
        let Some((used, reverse, temp)) = hour else {
            continue;
        };
        reg += used;
        rev += reverse;
        let mut r = reading(START + h as i64 * HOUR, reg);
        r.reading.rev = rev;
        r.reading.temp = *temp;
        reads.push(r);
    }
    reads
}

/// Case 7, "a shuffled backlog", for a burst: in order, 2,900 L in the hour to
/// 03:00 (after 100 L to 02:00) open a burst at 03:00, cleared at 04:00. With the
/// 02:00 read arriving last, VEE first spreads 3,000 L over 01:00–03:00 as two
/// estimated hours of 1,500 L/h: a burst opens at 02:00. When the read lands, that
/// episode is withdrawn and the in-order one is stored.
#[test]
fn case_7_a_burst_opened_on_estimates_is_withdrawn_when_the_read_arrives() {
    let hours: Vec<_> = [0, 20, 100, 2_900, 20, 20, 20]
        .into_iter()
        .map(|used| Some((used, 0, None)))
        .collect();
    let reads = reads_of(&hours);
    let burst_at = |h: i64| (AlertKind::Burst, START + h * HOUR);
    let cleared_at = |h: i64| Some(START + h * HOUR);
    let in_order = replay(&[vec![reads.clone()]], &BTreeSet::new());
    assert_eq!(in_order, BTreeMap::from([(burst_at(3), cleared_at(4))]));

    let (late, rest): (Vec<_>, Vec<_>) =
        reads.iter().partition(|r| r.reading.ts == START + 2 * HOUR);
    let before = replay(&[vec![rest.clone()]], &BTreeSet::new());
    assert_eq!(before, BTreeMap::from([(burst_at(2), cleared_at(4))]));
    let after = replay(&[vec![rest], vec![late]], &BTreeSet::new());
    assert_eq!(after, in_order);
}

/// A meter's hours: segments of quiet hours, small use, bursts, backflow and cold
/// water, with hours missing (gaps VEE estimates).
fn hours() -> impl Strategy<Value = Vec<Option<(u64, u64, Option<i16>)>>> {
    let segment = prop_oneof![
        2 => (1usize..4).prop_map(|n| vec![(0u64, 0u64, None); n]),
        4 => (1usize..30, 1u64..50).prop_map(|(n, l)| vec![(l, 0, None); n]),
        1 => (1usize..3, 1_500u64..3_000).prop_map(|(n, l)| vec![(l, 0, None); n]),
        1 => (1usize..3, 5u64..30).prop_map(|(n, r)| vec![(10, r, None); n]),
        1 => (1usize..5, 0i16..60).prop_map(|(n, t)| vec![(10, 0, Some(t)); n]),
    ];
    (
        proptest::collection::vec(segment, 2..20),
        proptest::collection::vec(any::<Index>(), 0..6),
    )
        .prop_map(|(segments, missing)| {
            let mut hours: Vec<_> = segments.into_iter().flatten().map(Some).collect();
            let len = hours.len();
            for at in missing {
                hours[at.index(len)] = None;
            }
            hours
        })
}

proptest! {
    // 256 generated meters per run; seeds as in `register_order.rs` (a fresh random
    // seed each run, `PROPTEST_RNG_SEED=<u64>` replays one).
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Model-based: the model is the in-order stream (every read in one message).
    /// Any arrival within the late window — cut differently, delayed and so
    /// reordered, duplicated, several messages to a batch, restarted between any
    /// batches — leaves the same episodes in the stores (kind, open and clear
    /// times, count) as the model.
    #[test]
    fn rule_episodes_are_the_in_order_ones_in_any_arrival(
        hours in hours(),
        arrival in arrival(),
        restarts in proptest::collection::vec(any::<Index>(), 0..3),
    ) {
        let reads = reads_of(&hours);
        prop_assume!(!reads.is_empty());
        let expected = replay(&[vec![reads.clone()]], &BTreeSet::new());
        let batches = arrival.batches_of(&reads, |r| r.reading.ts);
        let restarts: BTreeSet<usize> =
            restarts.iter().map(|at| at.index(batches.len())).collect();
        let actual = replay(&batches, &restarts);
        prop_assert_eq!(actual, expected);
    }
}
