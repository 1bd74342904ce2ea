//! Model-based test of the embedded store: random sequences of writes (repeated
//! meters and timestamps, several batches per call, reopenings in between) applied to
//! the store and to a `BTreeMap` model; every query must agree with the model.

use std::collections::BTreeMap;

use meterflow_model::{MeterKey, MeterState, Quality, SealedBatch, StoredReading};
use meterflow_storage::ReadingStore;
use proptest::prelude::*;

use crate::utils::{meter_batch, meter_key, meter_state, open, sealed_batch, stored_reading};

/// Meters the operations draw from. `m` is a byte prefix of `m-2` and `t` of `t-2`, so
/// a key layout that leaked across ids would show.
fn meters() -> [MeterKey; 4] {
    [
        meter_key("t", "m"),
        meter_key("t", "m-2"),
        meter_key("t-2", "m"),
        meter_key("t", "x"),
    ]
}

/// One meter's share of a sealed batch: meter index, readings `(ts, reg, quality)`
/// and a tag the meter's state is built from.
type MeterShare = (usize, Vec<(i64, u64, Quality)>, u64);

/// One `write` call: its sealed batches, each a list of meter shares (a meter may
/// appear in several batches, or twice in one).
type WriteCall = Vec<Vec<MeterShare>>;

#[derive(Clone, Debug)]
enum Op {
    Write(WriteCall),
    /// Drop the store and open the directory again.
    Reopen,
}

/// Few distinct timestamps so readings are often rewritten, plus the extremes and the
/// sign change so the ordered encoding is exercised.
fn ts() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => -4i64..12,
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
    ]
}

fn quality() -> impl Strategy<Value = Quality> {
    prop_oneof![
        Just(Quality::Actual),
        Just(Quality::Estimated),
        Just(Quality::Suspect)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let meter_share = (
        0..meters().len(),
        prop::collection::vec((ts(), 0u64..1_000, quality()), 0..6),
        0u64..1_000,
    );
    let sealed = prop::collection::vec(meter_share, 0..4);
    prop_oneof![
        6 => prop::collection::vec(sealed, 1..4).prop_map(Op::Write),
        1 => Just(Op::Reopen),
    ]
}

fn to_batches(write: &[Vec<MeterShare>]) -> Vec<SealedBatch> {
    let meters = meters();
    write
        .iter()
        .enumerate()
        .map(|(number, shares)| {
            let meter_batches = shares
                .iter()
                .map(|(meter, readings, state_tag)| {
                    meter_batch(
                        meters[*meter].clone(),
                        readings
                            .iter()
                            .map(|&(ts, reg, quality)| stored_reading(ts, reg, quality))
                            .collect(),
                        meter_state(*state_tag, *state_tag),
                    )
                })
                .collect();
            sealed_batch(number as u64, meter_batches, vec![])
        })
        .collect()
}

#[derive(Default)]
struct Model {
    readings: BTreeMap<(usize, i64), StoredReading>,
    states: BTreeMap<usize, MeterState>,
}

impl Model {
    fn apply(&mut self, write: &[Vec<MeterShare>]) {
        for (meter, readings, state_tag) in write.iter().flatten() {
            for &(ts, reg, quality) in readings {
                self.readings
                    .insert((*meter, ts), stored_reading(ts, reg, quality));
            }
            self.states
                .insert(*meter, meter_state(*state_tag, *state_tag));
        }
    }

    fn readings(&self, meter: usize, from: i64, to: i64, limit: usize) -> Vec<StoredReading> {
        if from >= to {
            return Vec::new();
        }
        self.readings
            .range((meter, from)..(meter, to))
            .map(|(_, r)| *r)
            .take(limit)
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn embedded_store_agrees_with_a_btreemap_model(
        ops in prop::collection::vec(op(), 1..8),
        queries in prop::collection::vec((0..meters().len(), ts(), ts(), 0usize..8), 1..10),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir);
        let mut model = Model::default();
        let meters = meters();

        for op in &ops {
            match op {
                Op::Write(write) => {
                    store.write(&to_batches(write)).unwrap();
                    model.apply(write);
                }
                Op::Reopen => {
                    drop(store);
                    store = open(&dir);
                }
            }
            for (meter, key) in meters.iter().enumerate() {
                prop_assert_eq!(
                    store.readings(key, i64::MIN, i64::MAX, usize::MAX).unwrap(),
                    model.readings(meter, i64::MIN, i64::MAX, usize::MAX),
                    "all readings of {}", key
                );
                prop_assert_eq!(
                    store.meter_state(key).unwrap(),
                    model.states.get(&meter).cloned(),
                    "state of {}", key
                );
            }
        }
        for &(meter, from, to, limit) in &queries {
            prop_assert_eq!(
                store.readings(&meters[meter], from, to, limit).unwrap(),
                model.readings(meter, from, to, limit),
                "readings of {} in [{}, {}) limit {}", meters[meter], from, to, limit
            );
        }
    }
}
