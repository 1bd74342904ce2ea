//! meterflow on its production backends — Apache Cassandra (the ScyllaDB protocol)
//! and Redis — started by `scripts/test`: exact rows checked with CQL queries, the
//! Redis key contract checked with Redis commands, replays, `kill -9`, and outages of
//! each backend. Outages cut a TCP proxy between meterflow and the server, so tests
//! running in parallel against the same servers are not disturbed; to meterflow it
//! looks like the server died (connections reset, the port closed).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use meterflow_model::Reading;
use meterflow_simulator::{SimConfig, run};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::CqlTimestamp;

use crate::server_support::{self, Proxy};
use crate::utils::{
    Meterflow, expected_today_l, free_addr, ground_truth, spawn_fleet, wait_for_acks,
};

/// A meterflow on Cassandra (keyspace `keyspace`, reached at `cassandra`) and Redis
/// (`redis` URL) with its own Redis key prefix.
fn start(dir: &Path, cassandra: &str, keyspace: &str, redis: &str, prefix: &str) -> Meterflow {
    start_on(
        dir,
        free_addr(),
        free_addr(),
        cassandra,
        keyspace,
        redis,
        prefix,
    )
}

fn start_on(
    dir: &Path,
    mqtt: std::net::SocketAddr,
    http: std::net::SocketAddr,
    cassandra: &str,
    keyspace: &str,
    redis: &str,
    prefix: &str,
) -> Meterflow {
    let config = dir.join("meterflow.toml");
    std::fs::write(
        &config,
        format!(
            "[store.scylla]\nreplication_factor = 1\n\n[cache.redis]\nkey_prefix = \"{prefix}\"\n\n\
             [cache.redis.breaker]\ncool_down_ms = 500\n\n[store.scylla.breaker]\ncool_down_ms = 500\n"
        ),
    )
    .unwrap();
    let store = format!("scylla://{cassandra}/{keyspace}");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--store",
        &store,
        "--cache",
        redis,
    ];
    Meterflow::start_with(&dir.join("data"), mqtt, http, &args)
}

pub(crate) async fn cql(cassandra: &str) -> Session {
    SessionBuilder::new()
        .known_node(cassandra)
        .build()
        .await
        .expect("connect to Cassandra")
}

/// Every stored reading, per meter id, read straight from Cassandra.
pub(crate) async fn stored_readings(
    session: &Session,
    keyspace: &str,
) -> BTreeMap<String, Vec<(u64, Reading)>> {
    let query = format!("SELECT meter, ts, reg, rev, flow, temp, seq FROM {keyspace}.readings");
    let mut rows = session
        .query_iter(query, &[])
        .await
        .unwrap()
        .rows_stream::<(String, CqlTimestamp, i64, i64, i64, Option<i16>, i64)>()
        .unwrap();
    let mut by_meter: BTreeMap<String, Vec<(u64, Reading)>> = BTreeMap::new();
    while let Some((meter, ts, reg, rev, flow, temp, seq)) = rows.try_next().await.unwrap() {
        let reading = Reading {
            ts: ts.0,
            reg: reg as u64,
            rev: rev as u64,
            flow: flow as u32,
            temp,
        };
        by_meter
            .entry(meter)
            .or_default()
            .push((seq as u64, reading));
    }
    for readings in by_meter.values_mut() {
        readings.sort_by_key(|(_, r)| r.ts);
    }
    by_meter
}

/// Checks Cassandra holds exactly the simulated readings of every meter.
async fn assert_cassandra_matches(cassandra: &str, keyspace: &str, config: &SimConfig) {
    let session = cql(cassandra).await;
    let stored = stored_readings(&session, keyspace).await;
    assert_eq!(stored.len(), config.meters, "meters with rows");
    for index in config.meter_indices() {
        let key = config.meter_key(index).unwrap();
        let expected: Vec<(u64, Reading)> = ground_truth(config, index)
            .into_iter()
            .flat_map(|u| u.readings.into_iter().map(move |r| (u.seq, r)))
            .collect();
        assert_eq!(
            stored.get(key.meter.as_str()),
            Some(&expected),
            "rows of {key}"
        );
    }
}

/// A connection to the Redis (`redis://`) or Redis Cluster (`redis+cluster://`) at
/// `url`, for the test's own reads.
pub(crate) fn redis_connection(url: &str) -> Box<dyn redis::ConnectionLike> {
    match server_support::redis_cluster_seeds(url) {
        Some(seeds) => Box::new(
            redis::cluster::ClusterClient::new(seeds)
                .and_then(|c| c.get_connection())
                .expect("connect to the Redis Cluster"),
        ),
        None => Box::new(
            redis::Client::open(url)
                .and_then(|c| c.get_connection())
                .expect("connect to Redis"),
        ),
    }
}

/// Checks every meter's Redis hash holds the final values, with a TTL.
fn redis_mismatches(redis: &str, prefix: &str, config: &SimConfig) -> Vec<String> {
    let mut connection = redis_connection(redis);
    let mut problems = Vec::new();
    for index in config.meter_indices() {
        let key = config.meter_key(index).unwrap();
        let redis_key = format!("{prefix}:{{{}}}:meter:{}", key.tenant, key.meter);
        let hash: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(&redis_key)
            .query(&mut *connection)
            .unwrap();
        let want_today = expected_today_l(config, index).to_string();
        let want_seq = config.messages_per_meter.to_string();
        if hash.get("today_l") != Some(&want_today) || hash.get("last_seq") != Some(&want_seq) {
            problems.push(format!(
                "{redis_key}: {hash:?}, want today_l {want_today}, last_seq {want_seq}"
            ));
            continue;
        }
        let ttl: i64 = redis::cmd("TTL")
            .arg(&redis_key)
            .query(&mut *connection)
            .unwrap();
        if ttl <= 0 {
            problems.push(format!("{redis_key} has no TTL ({ttl})"));
        }
    }
    problems
}

pub(crate) async fn wait_for_redis(
    redis: &str,
    prefix: &str,
    config: &SimConfig,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let problems = redis_mismatches(redis, prefix, config);
        if problems.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} Redis keys stale, e.g. {:?}",
            problems.len(),
            &problems[..1]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_and_redis_hold_exactly_what_was_sent_even_when_replayed() {
    let test = "backends_exact";
    let (Some(cassandra), Some(redis)) =
        (server_support::cassandra(test), server_support::redis(test))
    else {
        return;
    };
    let keyspace = server_support::unique_name("exact");
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), &cassandra, &keyspace, &redis, &keyspace);
    let config = SimConfig {
        meters: 1_000,
        messages_per_meter: 20,
        readings_per_message: 4,
        seed: 21,
        timeout_s: 240,
        ..service.sim_config()
    }
    .resolved_now();

    let report = run(config.clone()).await.unwrap();
    assert_eq!(report.acked, 20_000, "{report:?}\n{}", service.log_tail());
    assert_cassandra_matches(&cassandra, &keyspace, &config).await;
    wait_for_redis(&redis, &keyspace, &config, Duration::from_secs(10)).await;

    // The same messages again: acked, nothing new stored, values unchanged.
    let replay = run(config.clone()).await.unwrap();
    assert_eq!(replay.acked, 20_000, "{replay:?}");
    let metrics = service.metrics();
    metrics.assert_accounted();
    assert_eq!(metrics.messages("stored"), 20_000.0);
    // Every replayed message is a duplicate, and so is each resend a busy machine
    // caused (an ack slower than the simulator's ack timeout) that reached meterflow.
    let duplicates = metrics.messages("duplicate");
    let resent = (report.resent + replay.resent) as f64;
    assert!(
        (20_000.0..=20_000.0 + resent).contains(&duplicates),
        "{duplicates} duplicates, 20,000 replayed and {resent} resent"
    );
    assert_cassandra_matches(&cassandra, &keyspace, &config).await;
    assert_eq!(
        redis_mismatches(&redis, &keyspace, &config),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_on_cassandra_hydrates_state_and_counts_nothing_twice() {
    let test = "backends_kill9";
    let (Some(cassandra), Some(redis)) =
        (server_support::cassandra(test), server_support::redis(test))
    else {
        return;
    };
    let keyspace = server_support::unique_name("kill9");
    let dir = tempfile::tempdir().unwrap();
    let mut service = start(dir.path(), &cassandra, &keyspace, &redis, &keyspace);
    let config = SimConfig {
        meters: 200,
        messages_per_meter: 30,
        readings_per_message: 4,
        rate: Some(800.0),
        ack_timeout_ms: 2_000,
        seed: 23,
        timeout_s: 180,
        ..service.sim_config()
    }
    .resolved_now();
    let (fleet, counters) = spawn_fleet(&config);
    wait_for_acks(&counters, 1_000, Duration::from_secs(60), &service).await;
    let (mqtt, http) = (service.mqtt, service.http);
    service.kill9();
    assert!(
        counters.snapshot().acked < 6_000,
        "the crash must land mid-run"
    );
    let service = start_on(
        dir.path(),
        mqtt,
        http,
        &cassandra,
        &keyspace,
        &redis,
        &keyspace,
    );

    let report = fleet.await.unwrap().unwrap();
    assert_eq!(report.acked, 6_000, "{report:?}\n{}", service.log_tail());
    service.metrics().assert_accounted();
    assert_cassandra_matches(&cassandra, &keyspace, &config).await;
    // Usage was not counted twice: Redis holds the register delta of the last day.
    wait_for_redis(&redis, &keyspace, &config, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_loses_nothing_and_the_cache_catches_up() {
    let test = "backends_redis_outage";
    let (Some(cassandra), Some(redis)) =
        (server_support::cassandra(test), server_support::redis(test))
    else {
        return;
    };
    let mut proxy = Proxy::start(0, &server_support::redis_host_port(&redis)).unwrap();
    let proxied = format!("redis://{}", proxy.addr());
    let keyspace = server_support::unique_name("redis_out");
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), &cassandra, &keyspace, &proxied, &keyspace);
    let config = SimConfig {
        meters: 300,
        messages_per_meter: 30,
        readings_per_message: 4,
        rate: Some(1_000.0),
        seed: 29,
        timeout_s: 180,
        ..service.sim_config()
    }
    .resolved_now();
    let (fleet, counters) = spawn_fleet(&config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let port = proxy.port();
    proxy.stop();
    // Storing and acking go on without Redis.
    let acked_before = counters.snapshot().acked;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        counters.snapshot().acked > acked_before,
        "acks must go on while Redis is down:\n{}",
        service.log_tail()
    );
    let _proxy = Proxy::start(port, &server_support::redis_host_port(&redis)).unwrap();

    let report = fleet.await.unwrap().unwrap();
    assert_eq!(report.acked, 9_000, "{report:?}\n{}", service.log_tail());
    assert!(
        service.metrics().value("meterflow_cache_errors_total") > 0.0,
        "the outage was seen"
    );
    wait_for_redis(&redis, &keyspace, &config, Duration::from_secs(10)).await;
    assert_cassandra_matches(&cassandra, &keyspace, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cassandra_outage_pauses_acks_then_everything_is_stored_once() {
    let test = "backends_cassandra_outage";
    let (Some(cassandra), Some(redis)) =
        (server_support::cassandra(test), server_support::redis(test))
    else {
        return;
    };
    let mut proxy = Proxy::start(0, &cassandra).unwrap();
    let keyspace = server_support::unique_name("cass_out");
    let dir = tempfile::tempdir().unwrap();
    let mut service = start(dir.path(), &proxy.addr(), &keyspace, &redis, &keyspace);
    let config = SimConfig {
        meters: 200,
        messages_per_meter: 30,
        readings_per_message: 4,
        rate: Some(800.0),
        ack_timeout_ms: 3_000,
        seed: 31,
        timeout_s: 240,
        ..service.sim_config()
    }
    .resolved_now();
    let (fleet, counters) = spawn_fleet(&config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let port = proxy.port();
    proxy.stop();
    // Acks stop while nothing can be made durable (after what was in flight drains).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked_during = counters.snapshot().acked;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        counters.snapshot().acked,
        acked_during,
        "no acks while Cassandra is down"
    );
    assert!(acked_during < 6_000);
    assert!(
        service.is_running(),
        "meterflow keeps running:\n{}",
        service.log_tail()
    );
    assert_eq!(
        service.get("/readyz").0,
        503,
        "not ready while the store fails"
    );
    let rss = service.rss_bytes();
    assert!(
        rss < 1024 * 1024 * 1024,
        "memory stays bounded: {rss} bytes"
    );
    let _proxy = Proxy::start(port, &cassandra).unwrap();

    let report = fleet.await.unwrap().unwrap();
    assert_eq!(report.acked, 6_000, "{report:?}\n{}", service.log_tail());
    let metrics = service.metrics();
    metrics.assert_accounted();
    assert!(metrics.value("meterflow_store_errors_total") > 0.0);
    assert_cassandra_matches(&cassandra, &keyspace, &config).await;
}
