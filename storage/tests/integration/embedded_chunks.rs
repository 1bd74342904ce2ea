//! Readings stored as chunks in the embedded store: a model-based test with days
//! dense enough to split chunks, rewrites and withdrawn rows across and within
//! commits, reopenings and retention sweeps; a store written by the build before chunks (one row per reading);
//! chunk sizes under a flood; corrupt chunks on disk; and concurrent writers and
//! sweeps merging into the same chunk.

use std::collections::BTreeMap;

use meterflow_model::{MeterKey, Quality, SealedBatch, StoredReading};
use meterflow_storage::embedded::retention::{Retention, SWEEP_CHUNK};
use meterflow_storage::embedded::{APPEND_UP_TO, EmbeddedStore, MAX_CHUNK_READINGS};
use meterflow_storage::{ReadingStore, StoreError};
use proptest::prelude::*;

use crate::utils::{meter_batch, meter_key, meter_state, open, sealed_batch, stored_reading};

const DAY_MS: i64 = 86_400_000;
const MINUTE_MS: i64 = 60_000;
/// Midnight UTC, 2025-11-22: the day the model's readings start.
const DAY_0: i64 = 1_763_769_600_000;

/// The `readings` keyspace, as the store names it on disk.
const READINGS: &str = "readings";

fn meters() -> [MeterKey; 3] {
    [
        meter_key("t", "m"),
        meter_key("t", "m-2"),
        meter_key("t-2", "m"),
    ]
}

/// The key of the chunk (or older single-reading row) of `key` at `ts`:
/// `tenant 0x00 meter 0x00`, then `ts` big-endian with the sign bit flipped.
fn raw_key(key: &MeterKey, ts: i64) -> Vec<u8> {
    let mut out = format!("{}\0{}\0", key.tenant.as_str(), key.meter.as_str()).into_bytes();
    out.extend_from_slice(&((ts as u64) ^ (1 << 63)).to_be_bytes());
    out
}

/// One commit: per sealed batch, per meter share, readings `(minute slot, reg)`
/// and the slots of rows VEE replaced (those not among the readings are withdrawn).
type Commit = Vec<Vec<(usize, Vec<(i64, u64)>, Vec<i64>)>>;

#[derive(Clone, Debug)]
enum Op {
    Commit(Commit),
    Reopen,
    /// A retention sweep keeping a day of readings before `now`.
    Expire {
        now: i64,
    },
}

/// Minute slots over three days, dense in two windows so a day of one meter
/// outgrows a chunk and slots repeat (rewrites), plus the midnights.
fn slot() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..300,
        3 => 1_440i64..1_700,
        1 => 0i64..3 * 1_440,
        1 => prop::sample::select(vec![0i64, 1_439, 1_440, 2_879, 2_880]),
    ]
}

fn slot_ts(slot: i64) -> i64 {
    DAY_0 + slot * MINUTE_MS
}

/// A message's readings: random slots, or a run of consecutive ones as a meter
/// sends them, from a few starts in ascending order, so that runs often land after
/// a meter's newest chunk, overfill it and cross midnight.
fn readings() -> impl Strategy<Value = Vec<(i64, u64)>> {
    let start = prop_oneof![
        slot(),
        prop::sample::select(vec![0i64, 100, 200, 300, 1_400, 1_500, 1_600]),
    ];
    prop_oneof![
        1 => prop::collection::vec((slot(), 0u64..1_000_000), 0..160),
        2 => (start, 1i64..150, 0u64..1_000_000).prop_map(|(start, len, reg)| {
            (start..start + len)
                .map(|slot| (slot, reg + slot as u64))
                .collect()
        }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let share = (
        0..meters().len(),
        readings(),
        prop_oneof![
            2 => Just(Vec::new()),
            1 => prop::collection::vec(slot(), 0..40),
        ],
    );
    let sealed = prop::collection::vec(share, 0..3);
    prop_oneof![
        6 => prop::collection::vec(sealed, 1..3).prop_map(Op::Commit),
        1 => Just(Op::Reopen),
        1 => (0i64..4 * 1_440).prop_map(|slot| Op::Expire { now: slot_ts(slot) + DAY_MS }),
    ]
}

fn quality_of(reg: u64) -> Quality {
    [Quality::Actual, Quality::Estimated, Quality::Suspect][(reg % 3) as usize]
}

fn to_batches(commit: &Commit) -> Vec<SealedBatch> {
    let meters = meters();
    commit
        .iter()
        .enumerate()
        .map(|(number, shares)| {
            let batches = shares
                .iter()
                .map(|(meter, readings, replaced)| {
                    let readings = readings
                        .iter()
                        .map(|&(slot, reg)| stored_reading(slot_ts(slot), reg, quality_of(reg)))
                        .collect();
                    let mut batch =
                        meter_batch(meters[*meter].clone(), readings, meter_state(1, 0));
                    batch.replaced = replaced
                        .iter()
                        .map(|&slot| stored_reading(slot_ts(slot), 1, Quality::Estimated))
                        .collect();
                    batch
                })
                .collect();
            sealed_batch(number as u64, batches, vec![])
        })
        .collect()
}

/// What the store should show: the last reading written per meter and `ts`, none
/// where a later share withdrew it.
#[derive(Default)]
struct Model(BTreeMap<(usize, i64), StoredReading>);

impl Model {
    fn commit(&mut self, commit: &Commit) {
        for (meter, readings, replaced) in commit.iter().flatten() {
            for &slot in replaced {
                if !readings.iter().any(|(made, _)| *made == slot) {
                    self.0.remove(&(*meter, slot_ts(slot)));
                }
            }
            for &(slot, reg) in readings {
                let ts = slot_ts(slot);
                self.0
                    .insert((*meter, ts), stored_reading(ts, reg, quality_of(reg)));
            }
        }
    }

    fn expire(&mut self, cutoff: i64) {
        self.0.retain(|(_, ts), _| *ts >= cutoff);
    }

    fn readings(&self, meter: usize, from: i64, to: i64, limit: usize) -> Vec<StoredReading> {
        if from >= to {
            return Vec::new();
        }
        self.0
            .range((meter, from)..(meter, to))
            .map(|(_, r)| *r)
            .take(limit)
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn chunked_readings_agree_with_a_btreemap_model(
        ops in prop::collection::vec(op(), 1..8),
        queries in prop::collection::vec(
            (0..meters().len(), slot(), slot(), prop_oneof![0usize..5, 100usize..400]),
            1..10,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir);
        let mut model = Model::default();
        let meters = meters();
        let retention = Retention { readings_days: 1, dead_letters_days: 0, district_hourly_days: 0 };

        for op in &ops {
            match op {
                Op::Commit(commit) => {
                    store.commit(&to_batches(commit), &Default::default()).unwrap();
                    model.commit(commit);
                }
                Op::Reopen => {
                    drop(store);
                    store = open(&dir);
                }
                Op::Expire { now } => {
                    let before = model.0.len();
                    model.expire(now - DAY_MS);
                    let report = store.expire(*now, &retention, 3).unwrap();
                    prop_assert_eq!(report.rows(), (before - model.0.len()) as u64);
                }
            }
            for (meter, key) in meters.iter().enumerate() {
                prop_assert_eq!(
                    store.readings(key, i64::MIN, i64::MAX, usize::MAX).unwrap(),
                    model.readings(meter, i64::MIN, i64::MAX, usize::MAX),
                    "all readings of {}", key
                );
            }
        }
        for &(meter, from, to, limit) in &queries {
            let (from, to) = (slot_ts(from), slot_ts(to));
            prop_assert_eq!(
                store.readings(&meters[meter], from, to, limit).unwrap(),
                model.readings(meter, from, to, limit),
                "readings of {} in [{}, {}) limit {}", meters[meter], from, to, limit
            );
        }
    }
}

/// The 50-byte single-reading row the build before chunks wrote (format version 1,
/// little endian): version, reg, rev, flow, temp flag and value, quality, interval
/// flag and value, seq, received_at. Frozen here as that build's on-disk format.
fn previous_build_row(stored: &StoredReading) -> Vec<u8> {
    let reading = &stored.reading;
    let mut row = vec![1];
    row.extend_from_slice(&reading.reg.to_le_bytes());
    row.extend_from_slice(&reading.rev.to_le_bytes());
    row.extend_from_slice(&reading.flow.to_le_bytes());
    row.push(u8::from(reading.temp.is_some()));
    row.extend_from_slice(&reading.temp.unwrap_or(0).to_le_bytes());
    row.push(stored.quality.code());
    row.push(u8::from(stored.interval_l.is_some()));
    row.extend_from_slice(&stored.interval_l.unwrap_or(0).to_le_bytes());
    row.extend_from_slice(&stored.seq.to_le_bytes());
    row.extend_from_slice(&stored.received_at.to_le_bytes());
    assert_eq!(row.len(), 50);
    row
}

/// Writes raw `rows` into the `readings` keyspace of the fjall database in `dir`,
/// as a build would that the store's code does not run in.
fn write_raw(dir: &tempfile::TempDir, rows: &[(Vec<u8>, Vec<u8>)]) {
    let db = fjall::Database::builder(dir.path()).open().unwrap();
    let readings = db
        .keyspace(READINGS, fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let mut batch = db.batch();
    for (key, value) in rows {
        batch.insert(&readings, key.as_slice(), value.as_slice());
    }
    batch.commit().unwrap();
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

#[test]
fn a_store_of_the_previous_build_reads_and_takes_writes() {
    let dir = tempfile::tempdir().unwrap();
    let meters = meters();
    let mut model = BTreeMap::new();
    let mut rows = Vec::new();
    // Two days of 15-minute readings for two meters, as the previous build wrote them.
    for (m, key) in meters.iter().enumerate().take(2) {
        for i in 0..192 {
            let ts = DAY_0 + i * 15 * MINUTE_MS;
            let stored = stored_reading(ts, 1_000 * m as u64 + i as u64, Quality::Actual);
            rows.push((raw_key(key, ts), previous_build_row(&stored)));
            model.insert((m, ts), stored);
        }
    }
    write_raw(&dir, &rows);
    let model_readings = |model: &BTreeMap<(usize, i64), StoredReading>, m: usize| {
        model
            .range((m, i64::MIN)..=(m, i64::MAX))
            .map(|(_, r)| *r)
            .collect::<Vec<_>>()
    };

    let store = open(&dir);
    for (m, key) in meters.iter().enumerate() {
        let all = store.readings(key, i64::MIN, i64::MAX, usize::MAX).unwrap();
        assert_eq!(all, model_readings(&model, m), "{key}");
    }
    let first_day = store
        .readings(&meters[0], DAY_0 + 1, DAY_0 + DAY_MS, 10)
        .unwrap();
    assert_eq!(first_day.len(), 10);
    assert_eq!(first_day[0].reading.ts, DAY_0 + 15 * MINUTE_MS);

    // A VEE correction of an old reading, new readings between and after old ones,
    // and a day the old build never wrote.
    let writes = [
        (DAY_0 + 30 * MINUTE_MS, 77),
        (DAY_0 + 31 * MINUTE_MS, 78),
        (DAY_0 + DAY_MS + 15 * MINUTE_MS, 79),
        (DAY_0 + 2 * DAY_MS + 5 * MINUTE_MS, 80),
        (DAY_0 - 1, 81),
    ];
    let readings: Vec<_> = writes
        .iter()
        .map(|&(ts, reg)| stored_reading(ts, reg, Quality::Estimated))
        .collect();
    for stored in &readings {
        model.insert((0, stored.reading.ts), *stored);
    }
    store
        .write(&[sealed_batch(
            1,
            vec![meter_batch(meters[0].clone(), readings, meter_state(1, 0))],
            vec![],
        )])
        .unwrap();
    assert_eq!(
        store
            .readings(&meters[0], i64::MIN, i64::MAX, usize::MAX)
            .unwrap(),
        model_readings(&model, 0)
    );

    // Retention over old rows and chunks alike: everything before day 1 goes.
    let report = store
        .expire(
            DAY_0 + 2 * DAY_MS,
            &Retention {
                readings_days: 1,
                dead_letters_days: 0,
                district_hourly_days: 0,
            },
            SWEEP_CHUNK,
        )
        .unwrap();
    let before = model.len();
    model.retain(|(_, ts), _| *ts >= DAY_0 + DAY_MS);
    assert_eq!(report.rows(), (before - model.len()) as u64);
    drop(store);
    let store = open(&dir);
    for (m, key) in meters.iter().enumerate() {
        let all = store.readings(key, i64::MIN, i64::MAX, usize::MAX).unwrap();
        assert_eq!(all, model_readings(&model, m), "{key} after retention");
    }
}

/// Every value of `key`'s readings, straight from fjall: `(chunk key, readings in it)`.
fn raw_chunks(dir: &tempfile::TempDir, key: &MeterKey) -> Vec<(Vec<u8>, u64)> {
    let db = fjall::Database::builder(dir.path()).open().unwrap();
    let readings = db
        .keyspace(READINGS, fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let prefix = format!("{}\0{}\0", key.tenant.as_str(), key.meter.as_str());
    readings
        .prefix(prefix)
        .map(|entry| {
            let (key, value) = entry.into_inner().unwrap();
            assert_eq!(value[0], 2, "a chunk");
            // The count is the varint after the version byte.
            let mut count = 0;
            for (i, byte) in value[1..].iter().take(2).enumerate() {
                count |= u64::from(byte & 0x7f) << (7 * i);
                if byte & 0x80 == 0 {
                    break;
                }
            }
            (key.to_vec(), count)
        })
        .collect()
}

/// Commits one sealed batch (`number`) holding `readings` of the meter `key`.
fn write_message(store: &EmbeddedStore, key: &MeterKey, number: u64, readings: Vec<StoredReading>) {
    store
        .write(&[sealed_batch(
            number,
            vec![meter_batch(key.clone(), readings, meter_state(1, 0))],
            vec![],
        )])
        .unwrap();
}

/// The chunks of `key` (as [`raw_chunks`]), checked to hold 1 to the cap readings
/// each and `total` in all.
fn capped_chunks(dir: &tempfile::TempDir, key: &MeterKey, total: u64) -> Vec<(Vec<u8>, u64)> {
    let chunks = raw_chunks(dir, key);
    assert!(
        chunks
            .iter()
            .all(|(_, count)| (1..=MAX_CHUNK_READINGS as u64).contains(count)),
        "{chunks:?}"
    );
    assert_eq!(chunks.iter().map(|(_, count)| count).sum::<u64>(), total);
    chunks
}

#[test]
fn a_flood_into_one_day_is_split_into_capped_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let key = meter_key("t", "m");
    let store = open(&dir);
    // 3,000 readings a millisecond apart, in five commits, the last rewriting a
    // stretch in the middle.
    let reading = |i: i64, reg: u64| stored_reading(DAY_0 + i, reg, Quality::Actual);
    for commit in 0..4 {
        let readings = (commit * 750..(commit + 1) * 750)
            .map(|i| reading(i, i as u64))
            .collect();
        write_message(&store, &key, 1, readings);
    }
    let rewritten: Vec<_> = (1_000..1_300).map(|i| reading(i, 7)).collect();
    store
        .write(&[sealed_batch(
            2,
            vec![meter_batch(key.clone(), rewritten, meter_state(2, 0))],
            vec![],
        )])
        .unwrap();
    let expected: Vec<_> = (0..3_000)
        .map(|i| {
            reading(
                i,
                if (1_000..1_300).contains(&i) {
                    7
                } else {
                    i as u64
                },
            )
        })
        .collect();
    assert_eq!(
        store
            .readings(&key, i64::MIN, i64::MAX, usize::MAX)
            .unwrap(),
        expected
    );
    drop(store);

    let chunks = capped_chunks(&dir, &key, 3_000);
    assert!(chunks.len() < 3_000 / 64, "{} chunks", chunks.len());
}

#[test]
fn a_day_of_hourly_messages_fills_chunks_of_up_to_the_append_limit() {
    let dir = tempfile::tempdir().unwrap();
    let key = meter_key("t", "m");
    let store = open(&dir);
    for hour in 0..24 {
        let readings = (0..4)
            .map(|q| {
                let ts = DAY_0 + hour * 3_600_000 + q * 15 * MINUTE_MS;
                stored_reading(ts, (hour * 4 + q) as u64, Quality::Actual)
            })
            .collect();
        write_message(&store, &key, hour as u64, readings);
    }
    drop(store);
    // Four reads an hour: a chunk takes eight hours of appends (32 readings), then
    // the next message starts the next chunk.
    assert_eq!(APPEND_UP_TO, 32);
    assert_eq!(
        raw_chunks(&dir, &key),
        [0, 8, 16].map(|hour| (raw_key(&key, DAY_0 + hour * 3_600_000), 32))
    );
}

#[test]
fn after_a_reopen_a_message_past_the_append_limit_starts_its_own_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let key = meter_key("t", "m");
    let reading = |q: i64| stored_reading(DAY_0 + q * 15 * MINUTE_MS, q as u64, Quality::Actual);
    let write = |store: &EmbeddedStore, message: i64| {
        let readings = (message * 4..(message + 1) * 4).map(reading).collect();
        write_message(store, &key, message as u64, readings);
    };
    {
        let store = open(&dir);
        (0..8).for_each(|message| write(&store, message));
    }
    // Reopened: the newest chunk is not held, so the write scans the day and finds
    // the full chunk.
    let store = open(&dir);
    write(&store, 8);
    let expected: Vec<_> = (0..36).map(reading).collect();
    assert_eq!(
        store
            .readings(&key, i64::MIN, i64::MAX, usize::MAX)
            .unwrap(),
        expected
    );
    drop(store);
    assert_eq!(
        raw_chunks(&dir, &key),
        [
            (raw_key(&key, DAY_0), APPEND_UP_TO as u64),
            (raw_key(&key, DAY_0 + 8 * 3_600_000), 4)
        ]
    );
}

#[test]
fn in_order_messages_fill_a_chunk_then_start_the_next_and_the_next_day() {
    let dir = tempfile::tempdir().unwrap();
    let key = meter_key("t", "m");
    let store = open(&dir);
    // Five-minute reads sent 24 at a time (two hours) for two days: two messages
    // would take a chunk past the append limit, so every message starts a chunk of
    // its own (one row each, as an append would be); the thirteenth message begins
    // the second day.
    let reading = |i: i64| stored_reading(DAY_0 + i * 5 * MINUTE_MS, i as u64, Quality::Actual);
    for message in 0..24 {
        let readings = (message * 24..(message + 1) * 24).map(reading).collect();
        write_message(&store, &key, message as u64, readings);
    }
    let expected: Vec<_> = (0..576).map(reading).collect();
    let stored = store
        .readings(&key, i64::MIN, i64::MAX, usize::MAX)
        .unwrap();
    assert_eq!(stored, expected);
    // A range inside the second day, read across its chunks.
    let (from, to) = (
        DAY_0 + DAY_MS + 7 * 3_600_000,
        DAY_0 + DAY_MS + 19 * 3_600_000,
    );
    let inside: Vec<_> = expected
        .iter()
        .filter(|r| (from..to).contains(&r.reading.ts))
        .copied()
        .collect();
    assert_eq!(store.readings(&key, from, to, usize::MAX).unwrap(), inside);
    drop(store);
    let chunks = capped_chunks(&dir, &key, 576);
    let message_starts: Vec<_> = (0..24)
        .map(|message| (raw_key(&key, reading(message * 24).reading.ts), 24))
        .collect();
    assert_eq!(chunks, message_starts, "a chunk per message");
    assert!(
        chunks
            .iter()
            .any(|(chunk, _)| *chunk == raw_key(&key, DAY_0 + DAY_MS)),
        "the second day begins a chunk at its first reading"
    );
}

#[test]
fn a_corrupt_or_unknown_chunk_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (bad, good) = (meter_key("t", "m"), meter_key("t", "m-2"));
    {
        let store = open(&dir);
        let readings = |key: &MeterKey| {
            meter_batch(
                key.clone(),
                vec![stored_reading(DAY_0, 1, Quality::Actual)],
                meter_state(1, 0),
            )
        };
        store
            .write(&[sealed_batch(
                1,
                vec![readings(&bad), readings(&good)],
                vec![],
            )])
            .unwrap();
    }
    let mut hostile_count = vec![2];
    hostile_count.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    for (value, why) in [
        (vec![9, 1, 2, 3], "version 9"),
        (hostile_count, "4294967295 readings"),
        (vec![2, 1, 0], "truncated"),
    ] {
        write_raw(&dir, &[(raw_key(&bad, DAY_0), value)]);
        let store = open(&dir);
        let read = store.readings(&bad, i64::MIN, i64::MAX, 10);
        let Err(StoreError::Corrupt(message)) = read else {
            panic!("{why}: {read:?}");
        };
        assert!(message.contains(why), "{message}");
        assert!(message.contains("readings row 't\\x00m\\x00"), "{message}");
        // A write merging into the bad chunk fails the same way, and writes nothing.
        let merge = store.write(&[sealed_batch(
            2,
            vec![meter_batch(
                bad.clone(),
                vec![stored_reading(DAY_0 + 1, 2, Quality::Actual)],
                meter_state(2, 0),
            )],
            vec![],
        )]);
        assert!(matches!(merge, Err(StoreError::Corrupt(_))), "{merge:?}");
        assert_eq!(store.meter_state(&bad).unwrap(), Some(meter_state(1, 0)));
        // Other meters are unaffected.
        assert_eq!(
            store.readings(&good, i64::MIN, i64::MAX, 10).unwrap(),
            [stored_reading(DAY_0, 1, Quality::Actual)]
        );
    }
}

/// Merging into a chunk is a read-modify-write: two callers writing the same meter's
/// day at once, and a retention sweep trimming that day, must not lose each other's
/// readings. The store serialises them itself, whatever its callers do.
#[test]
fn concurrent_writers_and_sweeps_lose_no_reading() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let key = meter_key("t", "m");
    // The day straddles the cutoff: the sweep trims the same chunk the writers append
    // to.
    let cutoff = DAY_0 + 12 * 3_600_000;
    let retention = Retention {
        readings_days: 1,
        dead_letters_days: 0,
        district_hourly_days: 0,
    };
    let writes_per_writer = 60;
    let write = |writer: i64, i: i64| {
        let ts = cutoff + (i * 2 + writer) * MINUTE_MS;
        store
            .write(&[sealed_batch(
                i as u64,
                vec![meter_batch(
                    key.clone(),
                    vec![stored_reading(ts, i as u64, Quality::Actual)],
                    meter_state(1, 0),
                )],
                vec![],
            )])
            .unwrap();
    };
    store
        .write(&[sealed_batch(
            0,
            vec![meter_batch(
                key.clone(),
                vec![stored_reading(cutoff - MINUTE_MS, 0, Quality::Actual)],
                meter_state(1, 0),
            )],
            vec![],
        )])
        .unwrap();
    std::thread::scope(|scope| {
        for writer in 0..2 {
            scope.spawn(move || (0..writes_per_writer).for_each(|i| write(writer, i)));
        }
        scope.spawn(|| {
            for _ in 0..20 {
                store.expire(cutoff + DAY_MS, &retention, 1).unwrap();
            }
        });
    });
    let stored: Vec<i64> = store
        .readings(&key, i64::MIN, i64::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|s| s.reading.ts)
        .collect();
    let expected: Vec<i64> = (0..2 * writes_per_writer)
        .map(|n| cutoff + n * MINUTE_MS)
        .collect();
    assert_eq!(stored, expected);
}
