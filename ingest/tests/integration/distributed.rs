//! Distributed mode (DESIGN §9) on loopback, every part a real process or server:
//! `meterflow --mode endpoint` and `--mode processor` replicas around a real Kafka
//! (`scripts/kafka`), Cassandra and a 3-node Redis Cluster (`scripts/redis-cluster`),
//! the simulator's meters on MQTT. Each test has its own topic, consumer group,
//! keyspace and Redis key prefix.
//!
//! What they prove: every reading stored once and bills, alerts and the district,
//! top-list and summary figures (merged over both processors' shares) equal to
//! embedded mode's on the same fleet while meters move between endpoints (one
//! killed); a
//! processor killed mid-stream loses nothing and counts nothing twice; a meter whose
//! partition moves to another processor and back is never processed with the state
//! the first one cached; a processor stalled past its session wakes, restarts in
//! place and overwrites nothing newer; two `--mode combined` nodes (endpoint and processor in one
//! process) started at once share the work through the log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meterflow_model::Reading;
use meterflow_model::time::{DAY_MS, civil_from_days, day_of};
use meterflow_simulator::{SimConfig, run};

use crate::backends::{cql, stored_readings, wait_for_redis};
use crate::server_support::{self, Proxy};
use crate::utils::{
    Meterflow, Metrics, assert_no_communication_opens, free_addr, ground_truth, report_once,
    spawn_fleet, start_configured, wait_for_acks,
};

/// How long processors get to store what the endpoints appended.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Analytics flushed every second (the sweep flushes a quiet shard's windows), so
/// the district figures settle within seconds of the fleet's last message; minute
/// windows open for three days (hours stay open two, days three), so a run minutes
/// later — the embedded reference — counts the fleet's reads in the same windows.
const FAST_FLUSH: &str = "[pipeline]\nsweep_interval_s = 1\n\
    [processors.analytics]\nflush_interval_ms = 1000\nminute_retention_ms = 259200000\n";

/// One test's cluster: its servers and names, and the configuration every replica
/// shares.
pub(crate) struct Cluster {
    cassandra: String,
    redis: String,
    keyspace: String,
    pub(crate) config: std::path::PathBuf,
    dir: tempfile::TempDir,
    /// Held for the test's life: one cluster at a time (each is four or five
    /// processes and a new keyspace; several at once on two cores time out schema
    /// changes instead of testing anything).
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Cluster {
    pub(crate) fn new(test: &str) -> Option<Cluster> {
        let (Some(cassandra), Some(redis), Some(kafka)) = (
            server_support::cassandra(test),
            server_support::redis_cluster(test),
            server_support::kafka(test),
        ) else {
            return None;
        };
        let keyspace = server_support::unique_name(test);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("meterflow.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\nbackend = \"scylla://{cassandra}/{keyspace}\"\n\
                 [store.scylla]\nreplication_factor = 1\n\
                 [cache]\nbackend = \"{redis}\"\n[cache.redis]\nkey_prefix = \"{keyspace}\"\n\
                 [kafka]\nbrokers = \"{kafka}\"\ntopic = \"{keyspace}\"\npartitions = 8\n\
                 group_id = \"{keyspace}\"\ncommit_interval_ms = 200\nrebalance_drain_s = 20\n\
                 [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\
                 \"heartbeat.interval.ms\" = \"1000\"\n{FAST_FLUSH}"
            ),
        )
        .unwrap();
        Some(Cluster {
            cassandra,
            redis,
            keyspace,
            config,
            dir,
            _one_at_a_time: ONE_CLUSTER_AT_A_TIME
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        })
    }

    /// A replica in `mode`, ready. Start the first processor alone: it applies the
    /// schema the others then find.
    pub(crate) fn start(&self, mode: &str, name: &str) -> Meterflow {
        let config = self.config.to_str().unwrap();
        Meterflow::start_with(
            &self.dir.path().join(name),
            free_addr(),
            free_addr(),
            &["--config", config, "--mode", mode],
        )
    }

    /// Waits until Cassandra holds exactly the fleet's readings (within `within`), then
    /// until the Redis Cluster holds every meter's final view.
    async fn wait_settled(&self, config: &SimConfig, within: Duration) {
        self.wait_stored(config, within).await;
        wait_for_redis(&self.redis, &self.keyspace, config, Duration::from_secs(20)).await;
    }

    /// Waits until Cassandra holds exactly the fleet's readings.
    pub(crate) async fn wait_stored(&self, config: &SimConfig, within: Duration) {
        let session = cql(&self.cassandra).await;
        let expected = expected_rows(config);
        let deadline = Instant::now() + within;
        loop {
            let stored = stored_readings(&session, &self.keyspace).await;
            if stored == expected {
                return;
            }
            let rows: usize = stored.values().map(Vec::len).sum();
            let want: usize = expected.values().map(Vec::len).sum();
            assert!(
                Instant::now() < deadline,
                "Cassandra holds {rows} rows of {} meters, want exactly {want} of {}",
                stored.len(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Every reading of the fleet with its message's seq, per meter id.
fn expected_rows(config: &SimConfig) -> BTreeMap<String, Vec<(u64, Reading)>> {
    config
        .meter_indices()
        .map(|index| {
            let key = config.meter_key(index).unwrap();
            let rows = ground_truth(config, index)
                .into_iter()
                .flat_map(|u| u.readings.into_iter().map(move |r| (u.seq, r)))
                .collect();
            (key.meter.to_string(), rows)
        })
        .collect()
}

/// 200 meters × 30 messages of 4 readings at `rate` msgs/s, aimed at `mqtt`.
pub(crate) fn fleet(mqtt: String, rate: f64, seed: u64) -> SimConfig {
    SimConfig {
        mqtt,
        meters: 200,
        messages_per_meter: 30,
        readings_per_message: 4,
        rate: Some(rate),
        ack_timeout_ms: 2_000,
        seed,
        timeout_s: 180,
        ..SimConfig::default()
    }
    .resolved_now()
}

/// Messages stored (not duplicates) by these processors together.
fn stored_by(processors: &[&Meterflow]) -> f64 {
    processors
        .iter()
        .map(|p| p.metrics().messages("stored"))
        .sum()
}

/// Waits (at most 10 s) until these processors together counted `expected` messages
/// stored — each once: the store shows a group's rows a moment before its sink counts
/// it — and fails on more at any time.
pub(crate) async fn assert_stored_once(processors: &[&Meterflow], expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored = stored_by(processors);
        assert!(
            stored <= expected,
            "{stored} messages stored of {expected}: some twice"
        );
        if stored == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} of {expected} messages counted stored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every bill and every alert episode the API of `service` shows for the fleet.
fn bills_and_alerts(service: &Meterflow, config: &SimConfig) -> (Vec<String>, Vec<String>) {
    let months: std::collections::BTreeSet<String> = config
        .meter_indices()
        .flat_map(|index| ground_truth(config, index))
        .flat_map(|u| u.readings)
        .map(|r| utc_month(r.ts))
        .collect();
    let mut bills = Vec::new();
    for index in config.meter_indices() {
        let meter = config.meter_key(index).unwrap().meter;
        for month in &months {
            let (status, body) =
                service.get(&format!("/api/v1/tenants/demo/bills/{month}/{meter}"));
            bills.push(format!("{meter} {month} {status} {body}"));
        }
    }
    let alerts = service.get_json("/api/v1/tenants/demo/alerts?state=all&limit=1000");
    let mut episodes: Vec<String> = alerts
        .as_array()
        .map(|list| {
            list.iter()
                .map(|a| {
                    format!(
                        "{} {} {} {}",
                        a["meter"], a["kind"], a["state"], a["opened_at"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    episodes.sort();
    (bills, episodes)
}

/// The district figures (every minute, hour and day of the fleet), the top list of
/// each day and the summary's day figures the API of `service` shows.
fn aggregates(service: &Meterflow, config: &SimConfig) -> Vec<String> {
    let times: Vec<i64> = config
        .meter_indices()
        .flat_map(|index| ground_truth(config, index))
        .flat_map(|u| u.readings)
        .map(|r| r.ts)
        .collect();
    let (oldest, newest) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    let mut figures = Vec::new();
    let districts = service.get_json("/api/v1/tenants/demo/districts");
    figures.push(districts.to_string());
    for district in districts.as_array().unwrap() {
        let district = district.as_str().unwrap();
        // A read of minutes covers one day at most: the fleet's last.
        let ranges = [
            ("minute", newest + 60_000 - DAY_MS, newest + 60_000),
            ("hour", oldest - 2 * DAY_MS, newest + 2 * DAY_MS),
            ("day", oldest - 2 * DAY_MS, newest + 2 * DAY_MS),
        ];
        for (resolution, from, to) in ranges {
            let usage = service.get_json(&format!(
                "/api/v1/tenants/demo/districts/{district}/usage?from={from}&to={to}&resolution={resolution}"
            ));
            figures.push(format!("{district} {resolution} {usage}"));
        }
    }
    let days: std::collections::BTreeSet<i64> = times.iter().map(|ts| day_of(*ts)).collect();
    for day in days {
        let (year, month, day) = civil_from_days(day);
        let top = service.get_json(&format!(
            "/api/v1/tenants/demo/top?day={year:04}-{month:02}-{day:02}&limit=10"
        ));
        figures.push(format!("top {top}"));
    }
    let summary = service.get_json("/api/v1/tenants/demo/summary");
    figures.push(format!(
        "summary {} {} {}",
        summary["day"], summary["usage_today_l"], summary["meters_reporting"]
    ));
    figures
}

/// `service`'s [`aggregates`] once two reads 3 s apart agree (its last flush is in).
async fn settled_aggregates(service: &Meterflow, config: &SimConfig) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = aggregates(service, config);
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = aggregates(service, config);
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "the figures never settled");
        last = now;
    }
}

/// `yyyy-mm` of an epoch-ms instant in UTC (the demo tenant's billing zone).
fn utc_month(ts: i64) -> String {
    let (year, month, _) = civil_from_days(day_of(ts));
    format!("{year:04}-{month:02}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_and_two_processors_store_every_reading_once_and_bill_as_embedded() {
    let Some(cluster) = Cluster::new("dist_fleet") else {
        return;
    };
    let p1 = cluster.start("processor", "p1");
    let p2 = cluster.start("processor", "p2");
    let mut e1 = cluster.start("endpoint", "e1");
    let e2 = cluster.start("endpoint", "e2");
    // The meters reach the endpoints through one address, first E1's, then E2's.
    let mut front = Proxy::start(0, &e1.mqtt.to_string()).unwrap();
    let port = front.port();
    let config = fleet(front.addr(), 600.0, 31);
    let (fleet, counters) = spawn_fleet(&config);
    wait_for_acks(&counters, 1_500, Duration::from_secs(60), &e1).await;
    e1.kill9();
    front.stop();
    let _front = Proxy::start(port, &e2.mqtt.to_string()).unwrap();
    let report = fleet.await.unwrap().unwrap();
    assert_eq!(report.acked, 6_000, "{report:?}\n{}", e2.log_tail());
    assert!(report.reconnects > 0, "the meters moved: {report:?}");

    cluster.wait_settled(&config, DRAIN_TIMEOUT).await;
    assert_stored_once(&[&p1, &p2], 6_000.0).await;
    // What the chart's alerts and autoscalers query (grafana.rs cannot see these).
    for (process, metric) in [
        (&p1, "meterflow_consumer_lag"),
        (&p1, "meterflow_log_partitions_owned"),
        (&e2, "meterflow_log_append_failures_total"),
        (&e2, "meterflow_log_appended_total"),
    ] {
        assert!(
            process.metrics().0.contains_key(metric),
            "{metric} not exported"
        );
    }
    assert!(
        p1.metrics().messages("stored") > 0.0 && p2.metrics().messages("stored") > 0.0,
        "both processors took a share"
    );

    // The same fleet on one embedded meterflow: the same bills and alerts, and the
    // same district, top-list and summary figures — each processor wrote only its
    // share of them, and Redis and Cassandra hold the merge.
    let embedded_dir = tempfile::tempdir().unwrap();
    let embedded = start_configured(embedded_dir.path(), FAST_FLUSH, &[]);
    let same = SimConfig {
        mqtt: embedded.mqtt.to_string(),
        ..config.clone()
    };
    assert_eq!(run(same).await.unwrap().acked, 6_000);
    let expected = bills_and_alerts(&embedded, &config);
    assert!(
        expected.0.iter().all(|b| b.contains(" 200 ")),
        "{:?}",
        &expected.0[..1]
    );
    assert_eq!(bills_and_alerts(&e2, &config), expected);
    let expected = settled_aggregates(&embedded, &config).await;
    assert!(
        expected.iter().any(|f| f.contains("usage_l")),
        "{expected:?}"
    );
    assert_eq!(settled_aggregates(&e2, &config).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_combined_nodes_started_together_store_every_reading_once() {
    let Some(cluster) = Cluster::new("dist_combined") else {
        return;
    };
    // Both at once against the new keyspace: they take turns at the schema.
    let (n1, n2) = std::thread::scope(|scope| {
        let n1 = scope.spawn(|| cluster.start("combined", "n1"));
        let n2 = scope.spawn(|| cluster.start("combined", "n2"));
        (n1.join().unwrap(), n2.join().unwrap())
    });
    // The meters reach the nodes through one address, first N1's endpoint, then N2's.
    let mut front = Proxy::start(0, &n1.mqtt.to_string()).unwrap();
    let port = front.port();
    let config = fleet(front.addr(), 600.0, 33);
    let (fleet, counters) = spawn_fleet(&config);
    wait_for_acks(&counters, 1_500, Duration::from_secs(60), &n1).await;
    front.stop();
    let _front = Proxy::start(port, &n2.mqtt.to_string()).unwrap();
    let report = fleet.await.unwrap().unwrap();
    assert_eq!(report.acked, 6_000, "{report:?}\n{}", n2.log_tail());

    cluster.wait_settled(&config, DRAIN_TIMEOUT).await;
    assert_stored_once(&[&n1, &n2], 6_000.0).await;
    for node in [&n1, &n2] {
        let metrics = node.metrics();
        assert!(
            metrics.messages("stored") > 0.0,
            "both processors took a share"
        );
        assert!(
            metrics.value("meterflow_log_appended_total") > 0.0,
            "both endpoints appended"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_mid_stream_loses_nothing_and_counts_nothing_twice() {
    let Some(cluster) = Cluster::new("dist_kill") else {
        return;
    };
    let mut p1 = cluster.start("processor", "p1");
    let p2 = cluster.start("processor", "p2");
    let endpoint = cluster.start("endpoint", "e1");
    let config = fleet(endpoint.mqtt.to_string(), 400.0, 33);
    let (fleet, counters) = spawn_fleet(&config);
    wait_for_acks(&counters, 2_000, Duration::from_secs(60), &endpoint).await;
    let before = p1.metrics().messages("stored");
    assert!(before > 0.0, "p1 owned partitions and stored some");
    p1.kill9();
    let report = fleet.await.unwrap().unwrap();
    assert_eq!(report.acked, 6_000, "acks continue: {report:?}");

    // p2 takes p1's partitions over (after the session timeout) and replays them
    // from p1's last commit; the seq window stored with the data absorbs the rest.
    cluster.wait_settled(&config, DRAIN_TIMEOUT).await;
    let stored = p2.metrics().messages("stored");
    assert!(
        stored > 6_000.0 - 2.0 * before,
        "p2 took p1's partitions over"
    );
    // Everything again: all duplicates now, none stored a second time.
    assert_eq!(run(config.clone()).await.unwrap().acked, 6_000);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while p2.metrics().messages("duplicate") < 6_000.0 {
        assert!(Instant::now() < deadline, "{}", p2.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        p2.metrics().messages("stored"),
        stored,
        "a replay stores nothing"
    );
    cluster.wait_stored(&config, Duration::from_secs(5)).await;
}

/// A processor stopped (SIGSTOP) past its session timeout while holding uplinks —
/// a zombie owner — wakes after the other processor took its partitions over and
/// stored everything since. It finds it did not run for longer than its session
/// allows, writes nothing more of what it held and restarts in place (its ownership
/// lease); what a group write it was in the middle of still sends late replaces
/// nothing newer. Every reading is stored once, every view is the final one, and a
/// replay of the whole fleet, now spread over both processors again and hydrated
/// from the store, is all duplicates. (The district figures are not compared: a stop
/// that falls inside a group's write can still count it twice — docs/distributed.md,
/// Known limits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_that_stalls_past_its_session_writes_nothing_late_and_restarts() {
    let Some(cluster) = Cluster::new("dist_zombie") else {
        return;
    };
    let mut p1 = cluster.start("processor", "p1");
    let p2 = cluster.start("processor", "p2");
    let endpoint = cluster.start("endpoint", "e1");
    let config = fleet(endpoint.mqtt.to_string(), 400.0, 37);
    let (fleet, counters) = spawn_fleet(&config);
    wait_for_acks(&counters, 2_000, Duration::from_secs(60), &endpoint).await;
    assert!(p1.metrics().messages("stored") > 0.0, "p1 owned partitions");
    p1.signal("STOP");
    let report = fleet.await.unwrap().unwrap();
    assert_eq!(report.acked, 6_000, "acks continue: {report:?}");
    // p2 takes p1's partitions over after the session timeout, replays them from
    // p1's last commit and stores the rest of the fleet.
    cluster.wait_stored(&config, DRAIN_TIMEOUT).await;

    p1.signal("CONT");
    // p1 finds its lease lapsed, restarts in place (the same process) and rejoins.
    wait_for_log(&p1, "restarting in place", Duration::from_secs(30)).await;
    p1.wait_ready();
    wait_for_count(
        &p1,
        "meterflow_log_partitions_owned",
        Duration::from_secs(60),
    )
    .await;
    cluster.wait_settled(&config, Duration::from_secs(30)).await;

    let taken = |metrics: &Metrics| metrics.messages("stored") + metrics.messages("duplicate");
    let stored = stored_by(&[&p1, &p2]);
    let before = taken(&p1.metrics()) + taken(&p2.metrics());
    assert_eq!(run(config.clone()).await.unwrap().acked, 6_000);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while taken(&p1.metrics()) + taken(&p2.metrics()) - before < 6_000.0 {
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            p1.log_tail(),
            p2.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stored_by(&[&p1, &p2]), stored, "a replay stores nothing");
    cluster.wait_settled(&config, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_moving_between_processors_is_never_processed_with_stale_state() {
    let Some(cluster) = Cluster::new("dist_moves") else {
        return;
    };
    let p1 = cluster.start("processor", "p1");
    let endpoint = cluster.start("endpoint", "e1");
    let full = SimConfig {
        mqtt: endpoint.mqtt.to_string(),
        meters: 100,
        messages_per_meter: 20,
        readings_per_message: 4,
        ack_timeout_ms: 2_000,
        seed: 35,
        timeout_s: 120,
        ..SimConfig::default()
    }
    .resolved_now();
    // The first half of every meter's messages: p1 owns every partition and caches
    // every meter's state.
    let first_half = SimConfig {
        messages_per_meter: 10,
        ..full.clone()
    };
    assert_eq!(run(first_half.clone()).await.unwrap().acked, 1_000);
    cluster.wait_stored(&first_half, DRAIN_TIMEOUT).await;

    // p2 joins: half the partitions move to it, and it takes the second half of
    // their meters' messages.
    let mut p2 = cluster.start("processor", "p2");
    wait_for_count(
        &p2,
        "meterflow_log_partitions_owned",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(run(full.clone()).await.unwrap().acked, 2_000);
    cluster.wait_stored(&full, DRAIN_TIMEOUT).await;
    assert_stored_once(&[&p1, &p2], 2_000.0).await;
    assert!(p2.metrics().messages("stored") > 0.0, "p2 took some meters");

    // p2 leaves: its partitions return to p1, whose cached state of their meters
    // predates p2's work. Everything again must be all duplicates. (Not always all
    // 2,000 messages: a meter that gets its ack-topic watermark — seq 20, durable
    // since the last run — while still sending need not send the rest; so p1 must
    // take what the endpoint appended.)
    p2.stop();
    let appended = || endpoint.metrics().value("meterflow_log_appended_total");
    let taken = |metrics: &Metrics| metrics.messages("stored") + metrics.messages("duplicate");
    let (before, appended_before) = (p1.metrics(), appended());
    assert_eq!(run(full.clone()).await.unwrap().acked, 2_000);
    while endpoint.metrics().value("meterflow_log_append_in_flight") > 0.0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let appended_by_run = appended() - appended_before;
    assert!(appended_by_run > 0.0, "the run reached the log");
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let now = p1.metrics();
        if taken(&now) - taken(&before) >= appended_by_run {
            assert_eq!(
                now.messages("stored"),
                before.messages("stored"),
                "p1 stored nothing a second time"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "p1 took {} of the {appended_by_run} messages appended again; metrics: {:?}\n{}",
            taken(&now) - taken(&before),
            now.0
                .iter()
                .filter(|(name, _)| name.contains("_log_") || name.contains("messages"))
                .collect::<BTreeMap<_, _>>(),
            p1.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.wait_settled(&full, Duration::from_secs(5)).await;
}

/// A Kafka broker of this test's own (`scripts/kafka` on another port), so stopping it
/// disturbs no other test; stopped and its data removed when dropped.
struct OwnKafka {
    port: u16,
}

impl OwnKafka {
    fn start(port: u16) -> OwnKafka {
        let kafka = OwnKafka { port };
        kafka.script("start");
        kafka
    }

    fn script(&self, command: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka");
        let status = std::process::Command::new(script)
            .arg(command)
            .env("MF_KAFKA_PORT", self.port.to_string())
            .env("MF_KAFKA_HEAP", "256m")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run scripts/kafka");
        assert!(
            status.success(),
            "scripts/kafka {command} on port {}",
            self.port
        );
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        self.script("reset");
    }
}

/// Waits until `node`'s log holds `text`, failing with its tail after `within`.
async fn wait_for_log(node: &Meterflow, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !node.log_text().contains(text) {
        assert!(
            Instant::now() < deadline,
            "{text:?} not logged:\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `node`'s metric `metric` is at least one, failing with its log after
/// `within`.
async fn wait_for_count(node: &Meterflow, metric: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while node.metrics().value(metric) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "{metric} stayed 0\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A processor that starts lists the stored meters of the partitions it is assigned
/// (`ingest/src/dormant.rs`): a meter silent since before the restart still opens its
/// no-communication episode. The first run's rule is the default 72 h, so nothing can
/// open before the restart; the second run's is 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_processor_watches_the_silent_meters_of_its_partitions() {
    let Some(cluster) = Cluster::new("dist_dormant") else {
        return;
    };
    let mut processor = cluster.start("processor", "p1");
    let endpoint = cluster.start("endpoint", "e1");
    wait_for_count(
        &processor,
        "meterflow_log_partitions_owned",
        Duration::from_secs(60),
    )
    .await;
    report_once(endpoint.mqtt, "quiet3").await;
    wait_for_count(
        &processor,
        "meterflow_messages_total{outcome=\"stored\"}",
        Duration::from_secs(60),
    )
    .await;
    processor.stop();

    let mut text = std::fs::read_to_string(&cluster.config).unwrap();
    text.push_str("[processors.defaults.alert_rules]\nno_communication_ms = 3000\n");
    std::fs::write(&cluster.config, text).unwrap();
    let processor = cluster.start("processor", "p2");
    assert_no_communication_opens(&processor, "quiet3", Duration::from_secs(90)).await;
    drop(endpoint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_kafka_is_down_nothing_is_acked_and_nothing_is_lost() {
    let Some(mut cluster) = Cluster::new("dist_outage") else {
        return;
    };
    let kafka = OwnKafka::start(19_192);
    let text: String = std::fs::read_to_string(&cluster.config)
        .unwrap()
        .lines()
        .map(|line| {
            if line.starts_with("brokers = ") {
                format!(
                    "brokers = \"127.0.0.1:{}\"\ndelivery_timeout_ms = 3000\nstall_patience_s = 5\n",
                    kafka.port
                )
            } else if line.starts_with("rebalance_drain_s = ") {
                // The consumer's membership patience: max(5 s, three drains) = 6 s.
                "rebalance_drain_s = 2\n".to_owned()
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    cluster.config = cluster.dir.path().join("outage.toml");
    std::fs::write(&cluster.config, text).unwrap();
    let processor = cluster.start("processor", "p1");
    let endpoint = cluster.start("endpoint", "e1");
    let config = SimConfig {
        mqtt: endpoint.mqtt.to_string(),
        meters: 100,
        messages_per_meter: 40,
        readings_per_message: 4,
        rate: Some(200.0),
        ack_timeout_ms: 2_000,
        seed: 37,
        timeout_s: 240,
        ..SimConfig::default()
    }
    .resolved_now();
    let (fleet, counters) = spawn_fleet(&config);
    wait_for_acks(&counters, 500, Duration::from_secs(60), &endpoint).await;

    kafka.script("stop");
    // The endpoint's appends time out (kafka.delivery_timeout_ms): no PUBACK while the
    // log is away, however long the meters keep sending.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stalled = counters.snapshot().acked;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        counters.snapshot().acked,
        stalled,
        "acked while Kafka was down"
    );
    assert!(stalled < 4_000, "the outage must land mid-run");
    // The producer holds uplinks and appends none: past kafka.stall_patience_s the
    // watchdog replaces it, and the new one is what delivers after the outage.
    let producer_replaced = "meterflow_log_producer_replacements_total";
    wait_for_count(&endpoint, producer_replaced, Duration::from_secs(30)).await;
    // The processor's consumer loses its group once its session times out (6 s,
    // `kafka.properties`), owning nothing; past its patience (three drains, 6 s) the
    // membership watchdog replaces it, and the new one is what consumes after.
    let consumer_replaced = "meterflow_log_consumer_rejoins_total";
    wait_for_count(&processor, consumer_replaced, Duration::from_secs(60)).await;

    kafka.script("start");
    let report = fleet.await.unwrap().unwrap();
    assert_eq!(report.acked, 4_000, "{report:?}\n{}", endpoint.log_tail());
    assert!(report.resent > 0, "meters held and resent: {report:?}");
    cluster.wait_stored(&config, DRAIN_TIMEOUT).await;
    assert_stored_once(&[&processor], 4_000.0).await;
}
