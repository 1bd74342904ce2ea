//! The `ReadingStore` contract on the embedded store: range semantics, dead letters
//! newest first, tenant isolation, idempotent and last-write-wins upserts.

use meterflow_model::Quality;
use meterflow_model::batch::INVALID_TENANT;
use meterflow_storage::ReadingStore;

use crate::utils::{
    check_stored_meters, dead_letter, meter_batch, meter_key, meter_state, meter_state_with_temp,
    open, sealed_batch, stored_reading,
};

#[test]
fn readings_are_ascending_from_inclusive_to_exclusive_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let key = meter_key("acme", "m1");
    let readings: Vec<_> = [-20, -1, 0, 5, 10, 15]
        .into_iter()
        .map(|ts| stored_reading(ts, ts.unsigned_abs() + 100, Quality::Actual))
        .collect();
    store
        .write(&[sealed_batch(
            1,
            vec![meter_batch(
                key.clone(),
                readings.clone(),
                meter_state(1, 0),
            )],
            vec![],
        )])
        .unwrap();

    assert_eq!(
        store.readings(&key, i64::MIN, i64::MAX, 100).unwrap(),
        readings
    );
    assert_eq!(store.readings(&key, -1, 10, 100).unwrap(), readings[1..4]);
    assert_eq!(store.readings(&key, -1, 10, 2).unwrap(), readings[1..3]);
    assert!(store.readings(&key, 10, 10, 100).unwrap().is_empty());
    assert!(store.readings(&key, 10, -1, 100).unwrap().is_empty());
    assert!(
        store
            .readings(&key, i64::MIN, i64::MAX, 0)
            .unwrap()
            .is_empty()
    );
}

/// What a restarted service lists to watch meters silent since before the restart.
#[test]
fn stored_meters_are_the_meters_with_a_state() {
    let dir = tempfile::tempdir().unwrap();
    check_stored_meters(&open(&dir));
}

#[test]
fn dead_letters_come_newest_first_and_honour_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let letters = vec![
        dead_letter("acme", 1_000, 1),
        dead_letter("acme", 3_000, 2),
        dead_letter("acme", 2_000, 3),
        dead_letter("acme", 3_000, 1),
        dead_letter("acme", -5, 9),
    ];
    store
        .write(&[sealed_batch(1, vec![], letters.clone())])
        .unwrap();

    let newest: Vec<_> = store
        .dead_letters("acme", 10)
        .unwrap()
        .into_iter()
        .map(|l| (l.received_at, l.id))
        .collect();
    assert_eq!(
        newest,
        [(3_000, 2), (3_000, 1), (2_000, 3), (1_000, 1), (-5, 9)]
    );
    assert_eq!(
        store.dead_letters("acme", 2).unwrap(),
        [letters[1].clone(), letters[3].clone()]
    );
    assert!(store.dead_letters("acme", 0).unwrap().is_empty());
}

#[test]
fn tenants_never_see_each_others_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // `acme` is a byte prefix of `acme-2`, and `m` of `m-2`: the key separators must
    // keep them apart.
    let (acme, acme_2, acme_m2) = (
        meter_key("acme", "m"),
        meter_key("acme-2", "m"),
        meter_key("acme", "m-2"),
    );
    store
        .write(&[sealed_batch(
            1,
            vec![
                meter_batch(
                    acme.clone(),
                    vec![stored_reading(1, 10, Quality::Actual)],
                    meter_state(1, 10),
                ),
                meter_batch(
                    acme_2.clone(),
                    vec![stored_reading(2, 20, Quality::Actual)],
                    meter_state(2, 20),
                ),
            ],
            vec![
                dead_letter("acme", 1, 1),
                dead_letter("acme-2", 2, 2),
                dead_letter(INVALID_TENANT, 3, 3),
            ],
        )])
        .unwrap();

    let ts = |key| -> Vec<i64> {
        store
            .readings(key, i64::MIN, i64::MAX, 100)
            .unwrap()
            .iter()
            .map(|r| r.reading.ts)
            .collect()
    };
    assert_eq!(ts(&acme), [1]);
    assert_eq!(ts(&acme_2), [2]);
    assert!(ts(&acme_m2).is_empty());
    assert_eq!(store.meter_state(&acme).unwrap(), Some(meter_state(1, 10)));
    assert_eq!(
        store.meter_state(&acme_2).unwrap(),
        Some(meter_state(2, 20))
    );
    assert_eq!(store.meter_state(&acme_m2).unwrap(), None);

    let ids = |tenant| -> Vec<u64> {
        store
            .dead_letters(tenant, 100)
            .unwrap()
            .iter()
            .map(|l| l.id)
            .collect()
    };
    assert_eq!(ids("acme"), [1]);
    assert_eq!(ids("acme-2"), [2]);
    assert_eq!(ids(INVALID_TENANT), [3]);
    assert!(ids("acm").is_empty());
    assert!(ids("").is_empty());
}

#[test]
fn writing_the_same_batch_twice_leaves_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let key = meter_key("acme", "m1");
    let batch = sealed_batch(
        7,
        vec![meter_batch(
            key.clone(),
            (0..50)
                .map(|ts| stored_reading(ts, 1000 + ts as u64, Quality::Actual))
                .collect(),
            meter_state(7, 49),
        )],
        vec![dead_letter("acme", 5, 1)],
    );
    store.write(std::slice::from_ref(&batch)).unwrap();
    let readings_once = store.readings(&key, i64::MIN, i64::MAX, 1000).unwrap();
    let letters_once = store.dead_letters("acme", 1000).unwrap();

    store.write(&[batch.clone(), batch]).unwrap();
    assert_eq!(
        store.readings(&key, i64::MIN, i64::MAX, 1000).unwrap(),
        readings_once
    );
    assert_eq!(readings_once.len(), 50);
    assert_eq!(store.dead_letters("acme", 1000).unwrap(), letters_once);
    assert_eq!(letters_once.len(), 1);
    assert_eq!(store.meter_state(&key).unwrap(), Some(meter_state(7, 49)));
}

#[test]
fn the_later_batch_wins_for_states_and_rewritten_readings() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let key = meter_key("acme", "m1");
    let estimated = stored_reading(100, 5, Quality::Estimated);
    let actual = stored_reading(100, 6, Quality::Actual);
    store
        .write(&[
            sealed_batch(
                1,
                vec![meter_batch(key.clone(), vec![estimated], meter_state(1, 5))],
                vec![],
            ),
            sealed_batch(
                2,
                vec![meter_batch(key.clone(), vec![actual], meter_state(2, 6))],
                vec![],
            ),
        ])
        .unwrap();
    assert_eq!(
        store.readings(&key, i64::MIN, i64::MAX, 10).unwrap(),
        [actual]
    );
    assert_eq!(store.meter_state(&key).unwrap(), Some(meter_state(2, 6)));

    // A later call replaces the row again, in either direction.
    store
        .write(&[sealed_batch(
            3,
            vec![meter_batch(key.clone(), vec![estimated], meter_state(3, 5))],
            vec![],
        )])
        .unwrap();
    assert_eq!(
        store.readings(&key, i64::MIN, i64::MAX, 10).unwrap(),
        [estimated]
    );
    assert_eq!(store.meter_state(&key).unwrap(), Some(meter_state(3, 5)));
}

#[test]
fn empty_writes_succeed_and_the_store_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.write(&[]).unwrap();
    store.write(&[sealed_batch(1, vec![], vec![])]).unwrap();
    assert!(store.is_ready());
    assert_eq!(store.meter_state(&meter_key("acme", "m1")).unwrap(), None);
}

/// Most meters have no temperature sensor, so most states hold a last reading with
/// `temp: None`; such a state must survive bincode's (not self-describing) serde
/// mode, which cannot read back a field skipped on write.
#[test]
fn meter_state_without_temperature_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let key = meter_key("acme", "m1");
    let state = meter_state_with_temp(3, 40, None);
    store
        .write(&[sealed_batch(
            1,
            vec![meter_batch(key.clone(), vec![], state.clone())],
            vec![],
        )])
        .unwrap();
    assert_eq!(store.meter_state(&key).unwrap(), Some(state));
}
