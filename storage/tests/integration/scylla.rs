//! `ScyllaStore` against a real Cassandra 5 (`scripts/cassandra start`): the
//! `ReadingStore` contract, schema migrations, TTLs, and the circuit breaker when the
//! cluster disappears. Each test works in its own keyspace and drops it at the end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meterflow_model::batch::INVALID_TENANT;
use meterflow_model::time::DAY_MS;
use meterflow_model::{MeterState, Outputs, Quality, SealedBatch};
use meterflow_storage::resilience::{BreakerConfig, BreakerState, RetryConfig};
use meterflow_storage::scylla::{ScyllaConfig, ScyllaStore, schema};
use meterflow_storage::{ReadingStore, StoreError};
use scylla::client::session::Session;

use crate::servers::{self, Proxy};
use crate::utils::{
    bill, check_stored_meters, dead_letter, meter_batch, meter_key, meter_state,
    meter_state_with_temp, sealed_batch, stored_reading,
};

/// 2025-11-22T08:26:40Z: readings near a real date, spread over several UTC days.
const BASE_TS: i64 = 1_763_800_000_000;

fn test_config() -> ScyllaConfig {
    ScyllaConfig {
        // One node: RF 1, and LOCAL_QUORUM of one replica is that replica.
        replication_factor: 1,
        retry: RetryConfig {
            max_attempts: 3,
            initial_backoff_ms: 20,
            max_backoff_ms: 200,
        },
        ..ScyllaConfig::default()
    }
}

/// A plain driver session for looking at what the store wrote; drops the test's
/// keyspace when it goes out of scope (declare it before the store, so the store
/// closes first).
struct Inspector {
    runtime: tokio::runtime::Runtime,
    session: Session,
    keyspace: String,
}

impl Inspector {
    fn connect(contact_point: &str, keyspace: &str) -> Inspector {
        let (runtime, session) = crate::utils::cql_session(contact_point);
        Inspector {
            runtime,
            session,
            keyspace: keyspace.to_owned(),
        }
    }

    fn rows<R>(&self, cql: &str) -> Vec<R>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self
            .runtime
            .block_on(self.session.query_unpaged(cql, ()))
            .unwrap_or_else(|e| panic!("{cql}: {e}"));
        let rows = result.into_rows_result().unwrap();
        rows.rows::<R>()
            .unwrap()
            .collect::<Result<Vec<R>, _>>()
            .unwrap()
    }
}

impl Drop for Inspector {
    fn drop(&mut self) {
        let cql = format!("DROP KEYSPACE IF EXISTS {}", self.keyspace);
        if let Err(e) = self
            .runtime
            .block_on(self.session.query_unpaged(cql.as_str(), ()))
        {
            eprintln!("could not drop test keyspace {}: {e}", self.keyspace);
        }
    }
}

/// Opens a store in a fresh keyspace, with the inspector that cleans it up.
fn fresh(test: &str, contact_point: &str, config: ScyllaConfig) -> (Inspector, ScyllaStore) {
    let keyspace = servers::unique_name(test);
    let inspector = Inspector::connect(contact_point, &keyspace);
    let store = ScyllaStore::open(&[contact_point], &keyspace, config).expect("store opens");
    (inspector, store)
}

#[test]
fn scylla_readings_come_back_ascending_within_ranges_across_days() {
    let Some(cassandra) = servers::cassandra("scylla_readings") else {
        return;
    };
    let (inspector, store) = fresh("readings", &cassandra, test_config());
    let key = meter_key("acme", "m1");
    // Every 5 hours for three days: several day partitions.
    let readings: Vec<_> = (0..15)
        .map(|i| {
            stored_reading(
                BASE_TS + i * 5 * 3_600_000,
                1_000 + i as u64,
                Quality::Actual,
            )
        })
        .collect();
    // Written newest batch first: order on disk comes from the clustering key.
    store
        .write(&[
            sealed_batch(
                1,
                vec![meter_batch(
                    key.clone(),
                    readings[8..].to_vec(),
                    meter_state(2, 10),
                )],
                vec![],
            ),
            sealed_batch(
                2,
                vec![meter_batch(
                    key.clone(),
                    readings[..8].to_vec(),
                    meter_state(3, 20),
                )],
                vec![],
            ),
        ])
        .unwrap();

    assert_eq!(
        store.readings(&key, i64::MIN, i64::MAX, 100).unwrap(),
        readings
    );
    let (from, to) = (readings[2].reading.ts, readings[11].reading.ts);
    assert_eq!(
        store.readings(&key, from, to, 100).unwrap(),
        readings[2..11]
    );
    assert_eq!(store.readings(&key, from, to, 4).unwrap(), readings[2..6]);
    assert_eq!(
        store.readings(&key, from, from + 1, 10).unwrap(),
        readings[2..3]
    );
    assert!(store.readings(&key, from, from, 10).unwrap().is_empty());
    assert!(store.readings(&key, 0, DAY_MS, 10).unwrap().is_empty());
    assert!(
        store
            .readings(&meter_key("acme", "m2"), i64::MIN, i64::MAX, 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .readings(&meter_key("other", "m1"), i64::MIN, i64::MAX, 10)
            .unwrap()
            .is_empty()
    );

    // The later batch's state, with and without a temperature in its last reading.
    assert_eq!(store.meter_state(&key).unwrap(), Some(meter_state(3, 20)));
    assert_eq!(
        store.meter_state(&meter_key("acme", "nobody")).unwrap(),
        None
    );
    let quiet = meter_key("acme", "no-sensor");
    let state = meter_state_with_temp(9, 90, None);
    store
        .write(&[sealed_batch(
            3,
            vec![meter_batch(quiet.clone(), vec![], state.clone())],
            vec![],
        )])
        .unwrap();
    assert_eq!(store.meter_state(&quiet).unwrap(), Some(state));

    // Rows carry the configured TTL (400 days), and the day index exists.
    let ttls: Vec<(Option<i32>,)> = inspector.rows(&format!(
        "SELECT TTL(reg) FROM {}.readings WHERE tenant = 'acme' AND meter = 'm1' \
         AND day = '2025-11-22'",
        store.keyspace()
    ));
    assert!(!ttls.is_empty());
    for (ttl,) in ttls {
        let ttl = ttl.expect("readings have a TTL");
        assert!(ttl > 399 * 86_400 && ttl <= 400 * 86_400, "{ttl}");
    }
    let days: Vec<(scylla::value::CqlDate,)> = inspector.rows(&format!(
        "SELECT day FROM {}.reading_days WHERE tenant = 'acme' AND meter = 'm1'",
        store.keyspace()
    ));
    assert_eq!(
        days.len(),
        4,
        "15 readings 5 h apart from 08:26 span four UTC days"
    );
    assert!(store.is_ready());
    assert_eq!(store.breaker_state(), BreakerState::Closed);
}

/// What a restarted service lists to watch meters silent since before the restart:
/// a scan of `meter_state`'s partition keys.
#[test]
fn scylla_stored_meters_are_the_meters_with_a_state() {
    let Some(cassandra) = servers::cassandra("scylla_stored_meters") else {
        return;
    };
    let (_inspector, store) = fresh("stored_meters", &cassandra, test_config());
    check_stored_meters(&store);
}

#[test]
fn scylla_dead_letters_come_newest_first_across_days() {
    let Some(cassandra) = servers::cassandra("scylla_dead_letters") else {
        return;
    };
    let (_inspector, store) = fresh("dead_letters", &cassandra, test_config());
    let times = [
        BASE_TS,
        BASE_TS + 10,
        BASE_TS + 2 * DAY_MS,
        BASE_TS - 3 * DAY_MS,
        BASE_TS + 10,
    ];
    let acme: Vec<_> = times
        .iter()
        .enumerate()
        .map(|(i, &t)| dead_letter("acme", t, i as u64))
        .collect();
    let invalid = dead_letter(INVALID_TENANT, BASE_TS, 99);
    let other = dead_letter("other", BASE_TS + 5 * DAY_MS, 7);
    store
        .write(&[
            sealed_batch(1, vec![], acme[..3].to_vec()),
            sealed_batch(
                2,
                vec![],
                vec![acme[3].clone(), invalid.clone(), other.clone()],
            ),
            sealed_batch(3, vec![], acme[3..].to_vec()),
        ])
        .unwrap();

    let mut expected = acme.clone();
    expected.sort_by_key(|d| std::cmp::Reverse((d.received_at, d.id)));
    assert_eq!(store.dead_letters("acme", 100).unwrap(), expected);
    assert_eq!(store.dead_letters("acme", 2).unwrap(), expected[..2]);
    assert_eq!(store.dead_letters("acme", 4).unwrap(), expected[..4]);
    assert_eq!(store.dead_letters(INVALID_TENANT, 10).unwrap(), [invalid]);
    assert_eq!(store.dead_letters("other", 10).unwrap(), [other]);
    assert!(store.dead_letters("nobody", 10).unwrap().is_empty());
    assert!(store.dead_letters("acme", 0).unwrap().is_empty());
}

#[test]
fn scylla_rewrites_are_idempotent_and_the_later_batch_wins() {
    let Some(cassandra) = servers::cassandra("scylla_rewrites") else {
        return;
    };
    let config = ScyllaConfig {
        // Small batches, so one partition's 250 rows go out as several.
        max_batch_rows: 40,
        ..test_config()
    };
    let (_inspector, store) = fresh("rewrites", &cassandra, config);
    let key = meter_key("acme", "m1");
    let many: Vec<_> = (0..250)
        .map(|i| stored_reading(BASE_TS + i * 60_000, 5_000 + i as u64, Quality::Actual))
        .collect();
    let batch = sealed_batch(
        1,
        vec![meter_batch(key.clone(), many.clone(), meter_state(1, 1))],
        vec![dead_letter("acme", BASE_TS, 1)],
    );
    store.write(std::slice::from_ref(&batch)).unwrap();
    store.write(std::slice::from_ref(&batch)).unwrap();
    assert_eq!(
        store.readings(&key, i64::MIN, i64::MAX, 1_000).unwrap(),
        many
    );
    assert_eq!(store.dead_letters("acme", 10).unwrap().len(), 1);

    // An estimated reading replaced by the actual one, in one write and across
    // writes, in both directions (optional fields appear and disappear).
    let ts = BASE_TS + 10 * DAY_MS;
    let estimated = stored_reading(ts, 5, Quality::Estimated);
    let actual = stored_reading(ts, 6, Quality::Actual);
    assert_ne!(
        estimated.reading.temp.is_some(),
        actual.reading.temp.is_some()
    );
    let replace = |number, first, second: Option<_>| {
        let mut batches = vec![sealed_batch(
            number,
            vec![meter_batch(
                key.clone(),
                vec![first],
                meter_state(number, 5),
            )],
            vec![],
        )];
        if let Some(second) = second {
            batches.push(sealed_batch(
                number + 1,
                vec![meter_batch(
                    key.clone(),
                    vec![second],
                    meter_state(number + 1, 6),
                )],
                vec![],
            ));
        }
        store.write(&batches).unwrap();
    };
    let tail = |store: &ScyllaStore| store.readings(&key, ts, ts + 1, 10).unwrap();
    replace(10, estimated, Some(actual));
    assert_eq!(tail(&store), [actual]);
    assert_eq!(store.meter_state(&key).unwrap(), Some(meter_state(11, 6)));
    replace(20, estimated, None);
    assert_eq!(tail(&store), [estimated]);
    assert_eq!(store.meter_state(&key).unwrap(), Some(meter_state(20, 5)));
    replace(30, actual, None);
    assert_eq!(tail(&store), [actual]);

    // Empty writes touch nothing and succeed.
    store.write(&[]).unwrap();
    store.write(&[SealedBatch::default()]).unwrap();
}

/// A meter's `reading_days` row is upserted by the first write of its day, not by
/// the next ones while this process wrote it lately; a process that did not (a
/// restart, another processor) writes it again, as does the first write of a new day.
#[test]
fn scylla_a_days_index_row_is_not_rewritten_by_every_write_of_the_day() {
    let Some(cassandra) = servers::cassandra("scylla_day_index") else {
        return;
    };
    let (inspector, store) = fresh("day_index", &cassandra, test_config());
    let key = meter_key("acme", "m1");
    let write = |store: &ScyllaStore, number: u64, ts: i64| {
        let reading = stored_reading(ts, 5_000 + number, Quality::Actual);
        let meters = vec![meter_batch(
            key.clone(),
            vec![reading],
            meter_state(number, 1),
        )];
        store
            .write(&[sealed_batch(number, meters, vec![])])
            .unwrap();
    };
    let ks = inspector.keyspace.clone();
    let indexed_days = || {
        let cql = format!(
            "SELECT COUNT(*) FROM {ks}.reading_days WHERE tenant = 'acme' AND meter = 'm1'"
        );
        inspector.rows::<(i64,)>(&cql)[0].0
    };
    write(&store, 1, BASE_TS);
    assert_eq!(indexed_days(), 1);

    // Taken away behind the store's back, the row is not written again by a later
    // write of the same day…
    let delete = format!("DELETE FROM {ks}.reading_days WHERE tenant = 'acme' AND meter = 'm1'");
    inspector
        .runtime
        .block_on(inspector.session.query_unpaged(delete.as_str(), ()))
        .unwrap();
    write(&store, 2, BASE_TS + 60_000);
    assert_eq!(indexed_days(), 0);
    // …but the first write of another day writes that day's,
    write(&store, 3, BASE_TS + DAY_MS);
    assert_eq!(indexed_days(), 1);
    // and a process that did not write the first day's writes it again.
    let other = ScyllaStore::open(&[cassandra.as_str()], &ks, test_config()).expect("opens");
    write(&other, 4, BASE_TS + 120_000);
    assert_eq!(indexed_days(), 2);
    assert_eq!(
        other
            .readings(&key, i64::MIN, i64::MAX, 10)
            .unwrap()
            .iter()
            .map(|row| row.reading.ts)
            .collect::<Vec<_>>(),
        [
            BASE_TS,
            BASE_TS + 60_000,
            BASE_TS + 120_000,
            BASE_TS + DAY_MS
        ]
    );
}

/// Rows a batch withdraws (VEE replaced them and makes them no more) are deleted at
/// the meter state's version: gone from range reads on every day they were on, not
/// brought back by a stale owner's late write of them, and stored again by a later
/// batch that makes them.
#[test]
fn scylla_withdrawn_rows_are_deleted_at_the_batchs_version() {
    let Some(cassandra) = servers::cassandra("scylla_withdrawn") else {
        return;
    };
    let (_inspector, store) = fresh("withdrawn", &cassandra, test_config());
    let key = meter_key("acme", "m1");
    let quarter = 15 * 60_000;
    let estimates: Vec<_> = [0, quarter, 2 * quarter, DAY_MS]
        .iter()
        .map(|offset| stored_reading(BASE_TS + offset, 100, Quality::Estimated))
        .collect();
    let write = |seq: u64, readings: Vec<_>, replaced: Vec<_>| {
        let mut meter = meter_batch(key.clone(), readings, meter_state(seq, 0));
        meter.replaced = replaced;
        store
            .write(&[sealed_batch(seq, vec![meter], vec![])])
            .unwrap();
    };
    let all = |store: &ScyllaStore| store.readings(&key, i64::MIN, i64::MAX, 100).unwrap();
    write(5, estimates.clone(), Vec::new());
    assert_eq!(all(&store), estimates);

    // A late read between them re-spreads the gap: no estimate is made again.
    let late = stored_reading(BASE_TS + quarter + 60_000, 150, Quality::Actual);
    write(6, vec![late], estimates.clone());
    assert_eq!(
        all(&store),
        [late],
        "every withdrawn row is gone, on both days"
    );

    // The stale write of the estimates (an earlier version) does not bring them back.
    write(5, estimates.clone(), Vec::new());
    assert_eq!(all(&store), [late]);

    // A later batch that makes one again stores it.
    write(7, vec![estimates[3]], Vec::new());
    assert_eq!(all(&store), [late, estimates[3]]);
}

/// A processor that stalled past its consumer-group session (a zombie owner) and
/// wakes with a batch in hand commits it after the meter's new owner committed a
/// state further along: the late write replaces none of the new owner's rows
/// (readings, state, bill), and the new owner's next commit still lands.
#[test]
fn scylla_a_stale_owners_late_commit_replaces_nothing_newer() {
    let Some(cassandra) = servers::cassandra("scylla_zombie") else {
        return;
    };
    let (inspector, store) = fresh("zombie", &cassandra, test_config());
    let key = meter_key("acme", "m1");
    let ts = BASE_TS + 3_600_000;
    let commit = |seq: u64, quality: Quality, usage_l: u64| {
        let reading = stored_reading(ts, usage_l, quality);
        let batch = sealed_batch(
            seq,
            vec![meter_batch(
                key.clone(),
                vec![reading],
                meter_state(seq, usage_l),
            )],
            vec![],
        );
        let outputs = Outputs {
            bills: vec![bill("acme", "2025-11", "m1", usage_l)],
            ..Outputs::default()
        };
        store.commit(&[batch], &outputs).unwrap();
        reading
    };
    let stored = |store: &ScyllaStore| {
        (
            store.readings(&key, ts, ts + 1, 10).unwrap(),
            store.meter_state(&key).unwrap(),
            store
                .bill("acme", "2025-11", "m1")
                .unwrap()
                .map(|b| b.usage_l),
        )
    };

    let newer = commit(12, Quality::Actual, 700);
    let stale = commit(10, Quality::Estimated, 500);
    assert_ne!(newer, stale);
    assert_eq!(
        stored(&store),
        (vec![newer], Some(meter_state(12, 700)), Some(700)),
        "the stale owner's late commit left the newer rows in place"
    );
    let next = commit(13, Quality::Estimated, 900);
    assert_eq!(
        stored(&store),
        (vec![next], Some(meter_state(13, 900)), Some(900))
    );

    // A state written before versions existed (version 0, at the driver's clock)
    // resumes above its commit's write time, so the meter's next rows replace
    // that commit's bills, written just after the state.
    let legacy = meter_key("acme", "legacy");
    let batch = sealed_batch(
        1,
        vec![meter_batch(legacy.clone(), vec![], MeterState::default())],
        vec![],
    );
    store.write(&[batch]).unwrap();
    let written: Vec<(i64,)> = inspector.rows(&format!(
        "SELECT WRITETIME(state) FROM {}.meter_state WHERE tenant = 'acme' AND meter = 'legacy'",
        inspector.keyspace
    ));
    let resumed = store.meter_state(&legacy).unwrap().unwrap().version;
    assert_eq!(resumed, written[0].0 + 60_000_000);
}

/// Distributed mode's processors each write their share of a district hour (the
/// meters they own): a read returns every hour as the merge of its shares and of a
/// row written without a contributor — litres, meters and the sketch added,
/// percentiles from the merged sketch — and a contributor's rewrite replaces only
/// its own share.
#[test]
fn scylla_district_hours_of_several_contributors_are_merged() {
    use meterflow_model::analytics::{DistrictUsage, Resolution, UsageSketch};

    let Some(cassandra) = servers::cassandra("scylla_shares") else {
        return;
    };
    let (inspector, plain) = fresh("shares", &cassandra, test_config());
    let open = |contributor: &str| {
        ScyllaStore::open(&[cassandra.as_str()], &inspector.keyspace, test_config())
            .unwrap()
            .with_contributor(contributor)
    };
    let (p1, p2) = (open("p1"), open("p2"));
    let hour = |start_ms: i64, values: &[u64]| {
        let mut sketch = UsageSketch::default();
        values.iter().for_each(|v| sketch.add(*v));
        let mut row = DistrictUsage {
            usage_l: values.iter().sum(),
            meters: values.len() as u64,
            meter_hour_sketch: sketch,
            inflow_l: Some(1_000),
            ..DistrictUsage::new("acme", "north", Resolution::Hour, start_ms)
        };
        row.refresh_derived();
        row
    };
    let write = |store: &ScyllaStore, rows: Vec<DistrictUsage>| {
        let outputs = Outputs {
            districts: rows,
            ..Outputs::default()
        };
        store.write_outputs(&outputs).unwrap();
    };
    let (h0, h1) = (BASE_TS, BASE_TS + 3_600_000);
    write(&p1, vec![hour(h0, &[10, 20]), hour(h1, &[5])]);
    write(&p2, vec![hour(h0, &[30])]);
    write(&plain, vec![hour(h1, &[7])]);
    write(&p1, vec![hour(h0, &[10, 25])]);

    let mut merged = hour(h0, &[10, 25]);
    merged.merge(&hour(h0, &[30]));
    let mut second = hour(h1, &[5]);
    second.merge(&hour(h1, &[7]));
    let read = |store: &ScyllaStore| store.district_hourly("acme", "north", h0, h1 + 1).unwrap();
    assert_eq!(read(&plain), vec![merged.clone(), second.clone()]);
    assert_eq!(
        (merged.usage_l, merged.meters, merged.inflow_l),
        (65, 3, Some(2_000))
    );
    assert_eq!(read(&p2), read(&plain), "every store reads the merge");
    let shares: Vec<(String,)> = inspector.rows(&format!(
        "SELECT contributor FROM {}.district_hourly_shares",
        inspector.keyspace
    ));
    assert_eq!(shares.len(), 3, "{shares:?}");
}

#[test]
fn scylla_migrations_run_once_and_rerun_as_no_ops() {
    let Some(cassandra) = servers::cassandra("scylla_migrations") else {
        return;
    };
    let (inspector, store) = fresh("migrations", &cassandra, test_config());
    let all: Vec<i32> = schema::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(store.applied_migrations().unwrap(), all);
    assert!(
        store.migrate().unwrap().is_empty(),
        "second run applies nothing"
    );
    // A second process opening the same keyspace migrates nothing and works.
    let again = ScyllaStore::open(&[cassandra.as_str()], store.keyspace(), test_config()).unwrap();
    assert_eq!(again.applied_migrations().unwrap(), all);
    drop(again);

    let tables: Vec<(String, HashMap<String, String>, i32)> = inspector.rows(&format!(
        "SELECT table_name, compaction, default_time_to_live FROM system_schema.tables \
         WHERE keyspace_name = '{}'",
        store.keyspace()
    ));
    let mut names: Vec<_> = tables.iter().map(|t| t.0.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "alert_days",
            "alerts",
            "bills",
            "dead_letter_days",
            "dead_letters",
            "district_hourly",
            "district_hourly_days",
            "district_hourly_shares",
            "exceptions",
            "meter_state",
            "reading_days",
            "readings",
            "schema_lease",
            "schema_migrations"
        ]
    );
    let readings = tables.iter().find(|t| t.0 == "readings").unwrap();
    assert!(
        readings.1["class"].ends_with("TimeWindowCompactionStrategy"),
        "{:?}",
        readings.1
    );
    assert_eq!(readings.1["compaction_window_size"], "14");
    assert_eq!(readings.2, 400 * 86_400);
    let replication: Vec<(HashMap<String, String>,)> = inspector.rows(&format!(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = '{}'",
        store.keyspace()
    ));
    assert!(replication[0].0["class"].ends_with("NetworkTopologyStrategy"));
}

#[test]
fn scylla_replicas_starting_together_on_a_new_keyspace_all_open_it() {
    let Some(cassandra) = servers::cassandra("scylla_concurrent_migrations") else {
        return;
    };
    let keyspace = servers::unique_name("together");
    let inspector = Inspector::connect(&cassandra, &keyspace);
    let replicas = 4;
    let start = std::sync::Barrier::new(replicas);
    let opened: Vec<Result<Vec<i32>, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..replicas)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    ScyllaStore::open(&[cassandra.as_str()], &keyspace, test_config())
                        .and_then(|store| store.applied_migrations())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<i32> = schema::MIGRATIONS.iter().map(|m| m.version).collect();
    for result in opened {
        assert_eq!(result.expect("every replica opens the keyspace"), all);
    }
    let columns: Vec<(String,)> = inspector.rows(&format!(
        "SELECT column_name FROM system_schema.columns \
         WHERE keyspace_name = '{keyspace}' AND table_name = 'district_hourly'"
    ));
    assert!(columns.iter().any(|(c,)| c == "inflow_night_flow_lph"));
}

#[test]
fn scylla_breaker_opens_when_the_cluster_is_unreachable_and_recovers() {
    let Some(cassandra) = servers::cassandra("scylla_breaker") else {
        return;
    };
    let config = ScyllaConfig {
        request_timeout_ms: 2_000,
        connect_timeout_ms: 1_000,
        retry: RetryConfig {
            max_attempts: 2,
            initial_backoff_ms: 10,
            max_backoff_ms: 20,
        },
        breaker: BreakerConfig {
            failure_threshold: 2,
            cool_down_ms: 300,
        },
        ..test_config()
    };
    let mut proxy = Proxy::start(0, &cassandra).unwrap();
    let port = proxy.port();
    let keyspace = servers::unique_name("breaker");
    let _inspector = Inspector::connect(&cassandra, &keyspace);
    // The schema first, with the default timeouts: creating a keyspace and its tables
    // can take longer than this test's 2 s on a loaded machine, and is not what the
    // breaker is about.
    drop(ScyllaStore::open(&[&cassandra], &keyspace, test_config()).unwrap());
    let store = ScyllaStore::open(&[proxy.addr()], &keyspace, config).unwrap();
    let key = meter_key("acme", "m1");
    let write = |i: u64| {
        store.write(&[sealed_batch(
            i,
            vec![meter_batch(
                key.clone(),
                vec![stored_reading(BASE_TS + i as i64, i, Quality::Actual)],
                meter_state(i, i),
            )],
            vec![],
        )])
    };
    write(1).unwrap();

    // The cluster "crashes": its port closes and every connection is cut. Each write
    // is one attempt (the store and the driver do not retry; its caller does), so each
    // failed write is one breaker failure.
    proxy.stop();
    let mut failures = 0;
    while store.breaker_state() != BreakerState::Open {
        let error = write(2).expect_err("no cluster, no write");
        assert!(error.is_transient(), "{error}");
        failures += 1;
        assert!(
            failures <= 10,
            "breaker still {} after {failures} failures",
            store.breaker_state()
        );
    }
    assert_eq!(
        failures, 2,
        "failure_threshold failed writes open the breaker"
    );
    assert!(!store.is_ready());
    let started = Instant::now();
    let error = write(3).unwrap_err();
    assert!(
        matches!(&error, StoreError::Unavailable(m) if m.contains("circuit breaker")),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "an open breaker fails fast"
    );

    // The cluster comes back on the same address: a probe after the cool-down
    // succeeds (once the driver has reconnected) and closes the breaker.
    let _proxy = Proxy::start(port, &cassandra).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        match write(4) {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => assert!(e.is_transient(), "{e}"),
            Err(e) => panic!("store did not recover within 60 s: {e}"),
        }
    }
    assert_eq!(store.breaker_state(), BreakerState::Closed);
    assert_eq!(store.meter_state(&key).unwrap(), Some(meter_state(4, 4)));
}

#[test]
fn scylla_open_reports_unreachable_clusters_and_bad_settings() {
    let Some(_cassandra) = servers::cassandra("scylla_open") else {
        return;
    };
    let closed = format!("127.0.0.1:{}", servers::closed_port());
    let config = ScyllaConfig {
        connect_timeout_ms: 1_000,
        ..test_config()
    };
    let error = ScyllaStore::open(&[closed.as_str()], "mft_unreachable", config.clone())
        .err()
        .expect("nothing listens there");
    assert!(error.is_transient(), "{error}");

    let error = ScyllaStore::open(&[closed.as_str()], "Bad-Name", config.clone())
        .err()
        .unwrap();
    assert!(matches!(error, StoreError::Config(_)), "{error}");
    let none: [&str; 0] = [];
    let error = ScyllaStore::open(
        &none,
        "mft_x",
        ScyllaConfig {
            replication_factor: 0,
            ..config
        },
    )
    .err()
    .unwrap();
    let StoreError::Config(message) = error else {
        panic!("{error}")
    };
    assert!(
        message.contains("contact point") && message.contains("replication_factor"),
        "{message}"
    );
}

#[test]
fn scylla_a_new_keyspace_on_one_node_gets_the_replication_the_node_can_hold() {
    let Some(cassandra) = servers::cassandra("scylla_single_node") else {
        return;
    };
    // The default replication (3) and consistency (LOCAL_QUORUM), as a first run
    // against a development node would have them.
    let config = ScyllaConfig {
        retry: test_config().retry,
        ..ScyllaConfig::default()
    };
    assert_eq!(config.replication_factor, 3);
    let (inspector, store) = fresh("single_node", &cassandra, config);
    let key = meter_key("acme", "m1");
    let reading = stored_reading(BASE_TS, 1_000, Quality::Actual);
    store
        .write(&[sealed_batch(
            1,
            vec![meter_batch(key.clone(), vec![reading], meter_state(1, 1))],
            vec![],
        )])
        .unwrap();
    assert_eq!(
        store.readings(&key, i64::MIN, i64::MAX, 10).unwrap(),
        [reading]
    );

    let replication: Vec<(HashMap<String, String>,)> = inspector.rows(&format!(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = '{}'",
        store.keyspace()
    ));
    let factors: Vec<&String> = replication[0]
        .0
        .iter()
        .filter(|(key, _)| key.as_str() != "class")
        .map(|(_, rf)| rf)
        .collect();
    assert!(
        !factors.is_empty() && factors.iter().all(|rf| rf.as_str() == "1"),
        "{replication:?}"
    );
}

#[test]
fn scylla_an_existing_keyspace_the_node_cannot_serve_fails_fast_naming_the_fix() {
    let Some(cassandra) = servers::cassandra("scylla_rf_too_high") else {
        return;
    };
    let keyspace = servers::unique_name("rf_too_high");
    let inspector = Inspector::connect(&cassandra, &keyspace);
    let create = format!(
        "CREATE KEYSPACE {keyspace} WITH replication = \
         {{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}}"
    );
    inspector
        .runtime
        .block_on(inspector.session.query_unpaged(create.as_str(), ()))
        .expect("keyspace created");

    let started = Instant::now();
    let error = ScyllaStore::open(&[cassandra.as_str()], &keyspace, ScyllaConfig::default())
        .err()
        .expect("LOCAL_QUORUM of RF 3 cannot be met by one node");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(!error.is_transient(), "{error}");
    let StoreError::Config(message) = error else {
        panic!("{error}")
    };
    assert!(
        message.contains(&format!("ALTER KEYSPACE {keyspace}"))
            && message.contains("store.scylla.consistency")
            && message.contains("LOCAL_QUORUM"),
        "{message}"
    );
}

#[test]
fn scylla_open_on_runs_the_driver_on_the_callers_runtime() {
    let Some(cassandra) = servers::cassandra("scylla_open_on") else {
        return;
    };
    let current_thread = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let error = ScyllaStore::open_on(
        current_thread.handle().clone(),
        &[cassandra.as_str()],
        "mft_never_created",
        test_config(),
    )
    .err()
    .expect("a current-thread runtime cannot run the driver for other threads");
    assert!(matches!(error, StoreError::Config(_)), "{error}");

    let keyspace = servers::unique_name("open_on");
    let _inspector = Inspector::connect(&cassandra, &keyspace);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(runtime.metrics().num_alive_tasks(), 0);
    let store = ScyllaStore::open_on(
        runtime.handle().clone(),
        &[cassandra.as_str()],
        &keyspace,
        test_config(),
    )
    .expect("store opens");
    assert!(
        runtime.metrics().num_alive_tasks() > 0,
        "the driver's connection tasks live on the caller's runtime"
    );
    let key = meter_key("acme", "m1");
    let reading = stored_reading(BASE_TS, 7, Quality::Actual);
    store
        .write(&[sealed_batch(
            1,
            vec![meter_batch(key.clone(), vec![reading], meter_state(1, 7))],
            vec![],
        )])
        .unwrap();
    // A plain thread, like the sink, calls in while the runtime's worker is free.
    let read = std::thread::scope(|scope| {
        scope
            .spawn(|| store.readings(&key, BASE_TS, BASE_TS + 1, 10).unwrap())
            .join()
            .unwrap()
    });
    assert_eq!(read, vec![reading]);
    // Dropped in reverse: the store, then its runtime, then the inspector (keyspace).
}

/// The store's row structs derive `SerializeRow` by name, as these do: a field with
/// no bind marker of its name fails at bind time, before anything is sent, instead of
/// landing in whichever column sits at its position. Also pins the name Cassandra
/// gives the `USING TTL ?` marker, `[ttl]`.
#[test]
fn scylla_row_fields_are_bound_to_markers_by_name() {
    use scylla::SerializeRow;
    use scylla::value::CqlDate;

    #[derive(SerializeRow)]
    struct DayRow<'a> {
        // Out of the statement's order on purpose: matching is by name.
        day: CqlDate,
        meter: &'a str,
        tenant: &'a str,
        #[scylla(rename = "[ttl]")]
        ttl: i32,
    }
    #[derive(SerializeRow)]
    struct TtlNotRenamed<'a> {
        tenant: &'a str,
        meter: &'a str,
        day: CqlDate,
        ttl: i32,
    }
    #[derive(SerializeRow)]
    struct MisnamedColumn<'a> {
        tenant: &'a str,
        meter: &'a str,
        date: CqlDate,
        #[scylla(rename = "[ttl]")]
        ttl: i32,
    }

    let Some(cassandra) = servers::cassandra("scylla_bind_by_name") else {
        return;
    };
    let (inspector, _store) = fresh("bind_by_name", &cassandra, test_config());
    let ks = &inspector.keyspace;
    let statement = inspector
        .runtime
        .block_on(inspector.session.prepare(format!(
            "INSERT INTO {ks}.reading_days (tenant, meter, day) VALUES (?, ?, ?) USING TTL ?"
        )))
        .unwrap();
    let day = CqlDate((1 << 31) + 20_000);
    let execute = |row: &dyn scylla::serialize::row::SerializeRow| {
        inspector
            .runtime
            .block_on(inspector.session.execute_unpaged(&statement, row))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    execute(&DayRow {
        day,
        meter: "m1",
        tenant: "acme",
        ttl: 60,
    })
    .expect("every field has its marker");
    let rows: Vec<(String, String, CqlDate)> =
        inspector.rows(&format!("SELECT tenant, meter, day FROM {ks}.reading_days"));
    assert_eq!(rows, vec![("acme".into(), "m1".into(), day)]);

    let error = execute(&TtlNotRenamed {
        tenant: "acme",
        meter: "m2",
        day,
        ttl: 60,
    })
    .expect_err("the TTL marker is named [ttl]");
    assert!(
        error.contains("value for column [ttl] was not provided"),
        "{error}"
    );
    let error = execute(&MisnamedColumn {
        tenant: "acme",
        meter: "m3",
        date: day,
        ttl: 60,
    })
    .expect_err("no column is named date");
    assert!(
        error.contains("value for column day was not provided"),
        "{error}"
    );
    assert_eq!(
        inspector
            .rows::<(String,)>(&format!("SELECT meter FROM {ks}.reading_days"))
            .len(),
        1,
        "a row that failed to bind was never sent"
    );
}
