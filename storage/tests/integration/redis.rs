//! `RedisCache` against a real Redis (`scripts/redis start`): the key and field
//! contract of `docs/redis-keys.md` (every key, its type, fields and TTL), idempotent
//! applies, alert bookkeeping, bills that never step back a period, the stream cap,
//! and the circuit breaker on a closed port. The read contract shared with the
//! in-process cache is in `cache_contract.rs`. Each test uses its own key prefix and
//! deletes its keys.
//!
//! All but the breaker test (its proxy stands in for one server) run twice through
//! [`redis_and_cluster!`]: against the single Redis and against the Redis
//! Cluster (`scripts/redis-cluster start`), their own connection a cluster client
//! there ([`RawConnection`]). Cluster-only checks are in `redis_cluster.rs`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use meterflow_model::alert::{AlertKind, EpisodeState};
use meterflow_model::analytics::Resolution;
use meterflow_model::{MeterView, Outputs, Quality};
use meterflow_storage::HotCache;
use meterflow_storage::redis_cache::{RedisCache, RedisConfig, fields};
use meterflow_storage::resilience::{BreakerConfig, BreakerState, RetryConfig};
use redis::Commands;

use crate::cache_contract::{
    DAY, HOUR, MIDNIGHT, MINUTE, alert, bill, district_row, full_outputs, summary,
};
use crate::servers::{self, Proxy};
use crate::utils::meter_key;

fn view(tenant: &str, meter: &str, today_l: u64, temp: Option<i16>) -> MeterView {
    MeterView {
        tenant: tenant.into(),
        meter: meter.into(),
        last_seq: Some(41),
        last_ts: Some(1_763_800_000_000),
        reg: Some(123_456),
        rev: Some(2),
        flow: Some(35),
        temp,
        today_l,
        quality: Quality::Actual,
        district: "default".into(),
        size: None,
        battery: None,
        rssi: None,
        version: 0,
    }
}

fn config(prefix: &str) -> RedisConfig {
    RedisConfig {
        key_prefix: prefix.to_owned(),
        ..RedisConfig::default()
    }
}

/// Defines, for each named function `fn name(url: &str)`, a module `name` with two
/// tests: `single` runs it against the Redis of [`servers::redis`], `cluster`
/// against the Redis Cluster of [`servers::redis_cluster`] (test names
/// `…::name::single` and `…::name::cluster`).
macro_rules! redis_and_cluster {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn single() {
                if let Some(url) = crate::servers::redis(stringify!($name)) {
                    super::$name(&url);
                }
            }

            #[test]
            fn cluster() {
                if let Some(url) = crate::servers::redis_cluster(stringify!($name)) {
                    super::$name(&url);
                }
            }
        }
    )+};
}
pub(crate) use redis_and_cluster;

/// A test's own (blocking) connection to the server the cache uses: a plain one to a
/// single Redis, a cluster client (routing each key to its node, `KEYS` to every
/// master) to a Redis Cluster.
pub(crate) enum RawConnection {
    Single(redis::Connection),
    /// Boxed: several times the size of a plain connection.
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl RawConnection {
    pub(crate) fn open(url: &str) -> RawConnection {
        match servers::redis_cluster_seeds(url) {
            Some(seeds) => RawConnection::Cluster(Box::new(
                redis::cluster::ClusterClient::new(seeds)
                    .and_then(|client| client.get_connection())
                    .expect("Redis Cluster connection"),
            )),
            None => RawConnection::Single(
                redis::Client::open(url)
                    .and_then(|c| c.get_connection())
                    .expect("plain Redis connection"),
            ),
        }
    }
}

impl redis::ConnectionLike for RawConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        match self {
            RawConnection::Single(c) => c.req_packed_command(cmd),
            RawConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        match self {
            RawConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            RawConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    /// The cluster client routes by the unpacked command: forwarded, not packed.
    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            RawConnection::Single(c) => c.req_command(cmd),
            RawConnection::Cluster(c) => c.req_command(cmd),
        }
    }

    fn supports_pipelining(&self) -> bool {
        match self {
            RawConnection::Single(c) => c.supports_pipelining(),
            RawConnection::Cluster(c) => c.supports_pipelining(),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RawConnection::Single(c) => c.get_db(),
            RawConnection::Cluster(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            RawConnection::Single(c) => c.check_connection(),
            RawConnection::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            RawConnection::Single(c) => c.is_open(),
            RawConnection::Cluster(c) => c.is_open(),
        }
    }
}

/// Deletes the test's keys when dropped; its connection serves the test's own
/// commands.
pub(crate) struct Cleanup {
    pub(crate) connection: RawConnection,
    prefix: String,
}

impl Cleanup {
    pub(crate) fn new(url: &str, prefix: &str) -> Cleanup {
        Cleanup {
            connection: RawConnection::open(url),
            prefix: prefix.to_owned(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let keys: Vec<String> = self
            .connection
            .keys(format!("{}:*", self.prefix))
            .unwrap_or_default();
        // One key a command: on a cluster the keys are in many slots.
        for key in keys {
            let _: Result<(), _> = self.connection.del(key);
        }
    }
}

redis_and_cluster!(redis_apply_writes_the_documented_hash_with_a_ttl_and_reads_it_back);
fn redis_apply_writes_the_documented_hash_with_a_ttl_and_reads_it_back(url: &str) {
    let prefix = servers::unique_name("apply");
    let mut raw = Cleanup::new(url, &prefix);
    let cache = RedisCache::open(url, config(&prefix)).unwrap();
    cache.ping().unwrap();

    let first = view("acme", "M-1", 300, Some(125));
    let second = view("acme", "M-2", 7, None);
    let outputs = Outputs {
        meters: vec![first.clone(), second.clone()],
        ..Outputs::default()
    };
    cache.apply(&outputs).unwrap();
    cache.apply(&outputs).unwrap(); // absolute values: a replay changes nothing

    let key = format!("{prefix}:{{acme}}:meter:M-1");
    assert_eq!(cache.meter_key("acme", "M-1"), key);
    let hash: std::collections::HashMap<String, String> = raw.connection.hgetall(&key).unwrap();
    assert_eq!(hash[fields::TODAY_L], "300");
    assert_eq!(hash[fields::QUALITY], "actual");
    assert_eq!(hash[fields::TEMP], "125");
    assert_eq!(hash[fields::LAST_SEQ], "41");
    assert_eq!(hash[fields::DISTRICT], "default");
    assert_eq!(hash.len(), 9);
    let ttl: i64 = raw.connection.ttl(&key).unwrap();
    assert!(ttl > 7 * 86_400 - 60 && ttl <= 7 * 86_400, "{ttl}");

    assert_eq!(cache.meter(&meter_key("acme", "M-1")).unwrap(), Some(first));
    assert_eq!(
        cache.meter(&meter_key("acme", "M-2")).unwrap(),
        Some(second)
    );
    assert_eq!(cache.meter(&meter_key("acme", "M-3")).unwrap(), None);
    assert_eq!(cache.meter(&meter_key("other", "M-1")).unwrap(), None);

    // A newer view replaces the old one, and a field that became unknown disappears.
    let newer = view("acme", "M-1", 320, None);
    cache
        .apply(&Outputs {
            meters: vec![newer.clone()],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(cache.meter(&meter_key("acme", "M-1")).unwrap(), Some(newer));
    let temp: Option<String> = raw.connection.hget(&key, fields::TEMP).unwrap();
    assert_eq!(temp, None);

    // Empty outputs are no round trip at all.
    cache.apply(&Outputs::default()).unwrap();
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
}

#[test]
fn redis_breaker_opens_on_a_closed_port_and_closes_when_redis_appears() {
    let Some(url) = servers::redis("redis_breaker") else {
        return;
    };
    let prefix = servers::unique_name("breaker");
    let _cleanup = Cleanup::new(&url, &prefix);
    let port = servers::closed_port();
    let cache = RedisCache::open(
        &format!("redis://127.0.0.1:{port}"),
        RedisConfig {
            connect_timeout_ms: 200,
            response_timeout_ms: 500,
            retry: RetryConfig {
                max_attempts: 2,
                initial_backoff_ms: 10,
                max_backoff_ms: 20,
            },
            breaker: BreakerConfig {
                failure_threshold: 3,
                cool_down_ms: 300,
            },
            ..config(&prefix)
        },
    )
    .expect("opening does not need Redis to be up");
    let outputs = Outputs {
        meters: vec![view("acme", "M-1", 1, None)],
        ..Outputs::default()
    };

    let mut failures = 0;
    while cache.breaker_state() != BreakerState::Open {
        cache
            .apply(&outputs)
            .expect_err("nothing listens on the port");
        failures += 1;
        assert!(
            failures <= 10,
            "breaker still closed after {failures} failures"
        );
    }
    assert_eq!(failures, 3);
    let started = Instant::now();
    let error = cache.apply(&outputs).unwrap_err();
    assert!(error.0.contains("circuit breaker"), "{error}");
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "an open breaker fails fast"
    );

    // Redis appears on that port: after the cool-down a probe goes through.
    let _proxy = Proxy::start(port, &servers::redis_host_port(&url)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(350));
        match cache.apply(&outputs) {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "cache did not recover: {e}"),
        }
    }
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    assert_eq!(
        cache.meter(&meter_key("acme", "M-1")).unwrap(),
        Some(view("acme", "M-1", 1, None))
    );
}

redis_and_cluster!(redis_open_on_runs_the_connection_on_the_callers_runtime);
fn redis_open_on_runs_the_connection_on_the_callers_runtime(url: &str) {
    let prefix = servers::unique_name("open_on");
    let _cleanup = Cleanup::new(url, &prefix);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(runtime.metrics().num_alive_tasks(), 0);
    let cache = RedisCache::open_on(runtime.handle().clone(), url, config(&prefix)).unwrap();
    // A plain thread, like the sink, calls in while the runtime's worker is free.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                cache.ping().unwrap();
                cache
                    .apply(&Outputs {
                        meters: vec![view("acme", "M-1", 5, None)],
                        ..Outputs::default()
                    })
                    .unwrap();
            })
            .join()
            .unwrap()
    });
    assert!(
        runtime.metrics().num_alive_tasks() > 0,
        "the connection's tasks live on the caller's runtime"
    );
    assert_eq!(
        cache.meter(&meter_key("acme", "M-1")).unwrap(),
        Some(view("acme", "M-1", 5, None))
    );
    // Dropped in reverse: the cache, then its runtime.
}

/// A cache on its own prefix, with its cleanup (and raw connection).
pub(crate) fn cache_on(
    url: &str,
    test: &str,
    config: RedisConfig,
) -> (RedisCache, Cleanup, String) {
    let prefix = servers::unique_name(test);
    let cleanup = Cleanup::new(url, &prefix);
    let cache = RedisCache::open(
        url,
        RedisConfig {
            key_prefix: prefix.clone(),
            ..config
        },
    )
    .unwrap();
    (cache, cleanup, prefix)
}

/// Every key under `prefix`, with its type.
fn key_types(connection: &mut RawConnection, prefix: &str) -> BTreeMap<String, String> {
    let keys: Vec<String> = connection.keys(format!("{prefix}:*")).unwrap();
    keys.into_iter()
        .map(|key| {
            let kind: String = redis::cmd("TYPE").arg(&key).query(connection).unwrap();
            (key, kind)
        })
        .collect()
}

/// What a key holds, comparable: a hash's fields, a zset's members and scores, a
/// stream's length.
#[derive(Debug, PartialEq)]
enum Content {
    Hash(BTreeMap<String, String>),
    Zset(Vec<(String, String)>),
    StreamLen(usize),
}

fn contents(connection: &mut RawConnection, prefix: &str) -> BTreeMap<String, Content> {
    key_types(connection, prefix)
        .into_iter()
        .map(|(key, kind)| {
            let content = match kind.as_str() {
                "hash" => Content::Hash(connection.hgetall(&key).unwrap()),
                "zset" => Content::Zset(connection.zrange_withscores(&key, 0, -1).unwrap()),
                "stream" => {
                    Content::StreamLen(redis::cmd("XLEN").arg(&key).query(connection).unwrap())
                }
                other => panic!("{key} has unexpected type {other}"),
            };
            (key, content)
        })
        .collect()
}

fn hash(connection: &mut RawConnection, key: &str) -> HashMap<String, String> {
    connection.hgetall(key).unwrap()
}

redis_and_cluster!(redis_apply_writes_every_key_with_its_fields_and_a_ttl);
fn redis_apply_writes_every_key_with_its_fields_and_a_ttl(url: &str) {
    let (cache, mut raw, p) = cache_on(url, "every_key", RedisConfig::default());
    cache.apply(&full_outputs("acme")).unwrap();
    let config = RedisConfig::default();

    let t = format!("{p}:{{acme}}");
    let expected: BTreeMap<String, (&str, u64)> = [
        (format!("{t}:meter:m1"), ("hash", config.meter_ttl_secs)),
        (format!("{t}:meter:m2"), ("hash", config.meter_ttl_secs)),
        (
            format!("{t}:district:north:min:202501150010"),
            ("hash", config.district_minute_ttl_secs),
        ),
        (
            format!("{t}:district:north:min:202501150011"),
            ("hash", config.district_minute_ttl_secs),
        ),
        (
            format!("{t}:district:north:min:202501150013"),
            ("hash", config.district_minute_ttl_secs),
        ),
        (
            format!("{t}:district:south:min:202501150010"),
            ("hash", config.district_minute_ttl_secs),
        ),
        (
            format!("{t}:district:north:hour:2025011500"),
            ("hash", config.district_hour_ttl_secs),
        ),
        (
            format!("{t}:district:north:day:20250115"),
            ("hash", config.district_day_ttl_secs),
        ),
        (format!("{t}:top:20250115"), ("zset", config.top_ttl_secs)),
        (format!("{t}:alerts"), ("stream", config.alerts_ttl_secs)),
        (format!("{t}:alerts:open"), ("hash", config.alerts_ttl_secs)),
        (format!("{t}:summary"), ("hash", config.summary_ttl_secs)),
        // The meter index (redis_series.rs checks its contents and commands).
        (format!("{t}:meters"), ("zset", config.meter_ttl_secs)),
        (
            format!("{t}:meters:by_district"),
            ("zset", config.meter_ttl_secs),
        ),
        (
            format!("{t}:meters:last_ts"),
            ("zset", config.meter_ttl_secs),
        ),
        (format!("{t}:meters:seen"), ("zset", config.meter_ttl_secs)),
        (
            format!("{t}:meters:district"),
            ("hash", config.meter_ttl_secs),
        ),
        // District index and series.
        (
            format!("{t}:districts"),
            ("zset", config.district_day_ttl_secs),
        ),
        (
            format!("{t}:series:district:north:min"),
            ("zset", config.district_minute_ttl_secs),
        ),
        (
            format!("{t}:series:district:south:min"),
            ("zset", config.district_minute_ttl_secs),
        ),
        (
            format!("{t}:series:district:north:hour"),
            ("zset", config.district_hour_ttl_secs),
        ),
        (
            format!("{t}:series:district:north:day"),
            ("zset", config.district_day_ttl_secs),
        ),
    ]
    .into();
    let found = key_types(&mut raw.connection, &p);
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (key, (kind, ttl_secs)) in &expected {
        assert_eq!(found[key], *kind, "{key}");
        let ttl: i64 = raw.connection.ttl(key).unwrap();
        let ttl_secs = *ttl_secs as i64;
        assert!(
            ttl > ttl_secs - 60 && ttl <= ttl_secs,
            "{key}: TTL {ttl}, want {ttl_secs}"
        );
        // Hash tag: the first {…} of every key is the tenant.
        assert_eq!(
            key.split_once('{')
                .and_then(|(_, r)| r.split_once('}'))
                .map(|(tag, _)| tag),
            Some("acme")
        );
    }

    let m1 = hash(&mut raw.connection, &format!("{t}:meter:m1"));
    assert_eq!(m1.len(), 14, "{m1:?}");
    for (field, value) in [
        (fields::DISTRICT, "default"),
        (fields::SIZE, "dn25"),
        (fields::TODAY_L, "900"),
        (fields::QUALITY, "actual"),
        (fields::PERIOD, "2025-01"),
        (fields::PERIOD_L, "5000"),
        (fields::BILL_CENTS, "1550"),
        (fields::ALERTS_OPEN, "2"),
    ] {
        assert_eq!(m1[field], value, "m1 {field}");
    }
    let m2 = hash(&mut raw.connection, &format!("{t}:meter:m2"));
    assert_eq!(
        (
            m2[fields::ALERTS_OPEN].as_str(),
            m2[fields::PERIOD_L].as_str()
        ),
        ("1", "700")
    );

    let minute = hash(
        &mut raw.connection,
        &format!("{t}:district:north:min:202501150010"),
    );
    let want: HashMap<String, String> = [
        (
            fields::district::START_MS,
            (MIDNIGHT + 10 * MINUTE).to_string(),
        ),
        (fields::district::USAGE_L, "12".to_owned()),
        (fields::district::METERS, "2".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(minute, want);
    let hour = hash(
        &mut raw.connection,
        &format!("{t}:district:north:hour:2025011500"),
    );
    assert_eq!(hour.len(), 7, "{hour:?}");
    assert_eq!(hour[fields::district::P50_L], "10");
    assert_eq!(hour[fields::district::INFLOW_L], "52");
    let day = hash(
        &mut raw.connection,
        &format!("{t}:district:north:day:20250115"),
    );
    // The inflow's 03:00 hour is not known yet: no field.
    assert_eq!(day.len(), 9, "{day:?}");
    assert_eq!(
        (
            day[fields::district::USAGE_L].as_str(),
            day[fields::district::NIGHT_02_L].as_str(),
            day[fields::district::NIGHT_03_L].as_str(),
            day[fields::district::NIGHT_FLOW_LPH].as_str()
        ),
        ("1850", "6", "4", "4")
    );
    assert_eq!(
        (
            day[fields::district::INFLOW_L].as_str(),
            day[fields::district::INFLOW_NIGHT_02_L].as_str(),
            day[fields::district::INFLOW_NIGHT_FLOW_LPH].as_str()
        ),
        ("2100", "11", "11")
    );

    let top: Vec<(String, u64)> = raw
        .connection
        .zrange_withscores(format!("{t}:top:20250115"), 0, -1)
        .unwrap();
    assert_eq!(
        top,
        vec![("m3".into(), 50), ("m1".into(), 900), ("m2".into(), 900)]
    );

    let open = hash(&mut raw.connection, &format!("{t}:alerts:open"));
    let mut fields_open: Vec<_> = open.keys().cloned().collect();
    fields_open.sort();
    assert_eq!(fields_open, ["m1:burst", "m1:leak", "m2:low_battery"]);
    assert_eq!(
        open["m1:leak"],
        format!(
            "{{\"tenant\":\"acme\",\"meter\":\"m1\",\"kind\":\"leak\",\"priority\":\"high\",\
             \"state\":\"opened\",\"opened_at\":{o},\"at\":{o},\"detail\":\"leak on m1: \\\"test\\\"\",\
             \"revision\":{r}}}",
            o = MIDNIGHT + MINUTE,
            r = (MIDNIGHT + MINUTE) * 1_000
        )
    );

    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(format!("{t}:alerts"))
        .arg("-")
        .arg("+")
        .query(&mut raw.connection)
        .unwrap();
    assert_eq!(entries.len(), 5);
    let first: Vec<&str> = entries[0].1.iter().map(String::as_str).collect();
    let (opened, at, revision) = (
        (MIDNIGHT + MINUTE).to_string(),
        (MIDNIGHT + MINUTE).to_string(),
        ((MIDNIGHT + MINUTE) * 1_000).to_string(),
    );
    assert_eq!(
        first,
        [
            "meter",
            "m1",
            "kind",
            "leak",
            "priority",
            "high",
            "state",
            "opened",
            "opened_at",
            &opened,
            "at",
            &at,
            "detail",
            "leak on m1: \"test\"",
            "revision",
            &revision
        ]
    );

    let summary_hash = hash(&mut raw.connection, &format!("{t}:summary"));
    let want: HashMap<String, String> = [
        (fields::summary::DAY, "2025-01-15".to_owned()),
        (fields::summary::USAGE_TODAY_L, "1850".to_owned()),
        (fields::summary::METERS_REPORTING, "2".to_owned()),
        (fields::summary::ALERTS_OPEN, "3".to_owned()),
        (
            fields::summary::UPDATED_AT,
            (MIDNIGHT + 15 * MINUTE).to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(summary_hash, want);
}

redis_and_cluster!(redis_replaying_outputs_leaves_the_same_hashes_and_zsets_and_grows_the_stream);
fn redis_replaying_outputs_leaves_the_same_hashes_and_zsets_and_grows_the_stream(url: &str) {
    let (cache, mut raw, p) = cache_on(url, "replay", RedisConfig::default());
    let outputs = full_outputs("acme");
    cache.apply(&outputs).unwrap();
    let mut before = contents(&mut raw.connection, &p);
    cache.apply(&outputs).unwrap();
    let mut after = contents(&mut raw.connection, &p);
    // `meters:seen` records when (server clock) each view was last written: a replay
    // is a write, so only its scores move; its members stay.
    let seen = format!("{p}:{{acme}}:meters:seen");
    let members = |content: Option<Content>| match content {
        Some(Content::Zset(scored)) => scored.into_iter().map(|(m, _)| m).collect::<Vec<_>>(),
        other => panic!("{seen} holds {other:?}"),
    };
    let seen_before = members(before.remove(&seen));
    assert_eq!(seen_before, ["m1", "m2"]);
    assert_eq!(members(after.remove(&seen)), seen_before);
    let stream = format!("{p}:{{acme}}:alerts");
    // The stream is an event log: the replay appended the same five steps again.
    assert_eq!(before[&stream], Content::StreamLen(5));
    assert_eq!(
        after.insert(stream.clone(), Content::StreamLen(5)),
        Some(Content::StreamLen(10))
    );
    assert_eq!(after, before);
}

redis_and_cluster!(redis_cleared_alerts_leave_alerts_open_and_every_count_follows);
fn redis_cleared_alerts_leave_alerts_open_and_every_count_follows(url: &str) {
    let (cache, mut raw, p) = cache_on(url, "cleared", RedisConfig::default());
    cache.apply(&full_outputs("acme")).unwrap();
    let t = format!("{p}:{{acme}}");
    let at = MIDNIGHT + HOUR;
    cache
        .apply(&Outputs {
            alerts: vec![
                alert("acme", "m1", AlertKind::Leak, EpisodeState::Cleared, at),
                alert("acme", "m1", AlertKind::Burst, EpisodeState::Cleared, at),
            ],
            ..Outputs::default()
        })
        .unwrap();
    let open = hash(&mut raw.connection, &format!("{t}:alerts:open"));
    assert_eq!(open.keys().collect::<Vec<_>>(), ["m2:low_battery"]);
    let m1_open: String = raw
        .connection
        .hget(format!("{t}:meter:m1"), fields::ALERTS_OPEN)
        .unwrap();
    assert_eq!(m1_open, "0");
    let summary_open: String = raw
        .connection
        .hget(format!("{t}:summary"), fields::summary::ALERTS_OPEN)
        .unwrap();
    assert_eq!(summary_open, "1");

    cache
        .apply(&Outputs {
            alerts: vec![alert(
                "acme",
                "m2",
                AlertKind::LowBattery,
                EpisodeState::Cleared,
                at,
            )],
            ..Outputs::default()
        })
        .unwrap();
    let exists: bool = raw.connection.exists(format!("{t}:alerts:open")).unwrap();
    assert!(!exists, "an empty alerts:open hash is no key at all");
    let m2_open: String = raw
        .connection
        .hget(format!("{t}:meter:m2"), fields::ALERTS_OPEN)
        .unwrap();
    assert_eq!(m2_open, "0");
    assert_eq!(cache.summary("acme").unwrap().unwrap().alerts_open, 0);
    assert!(cache.open_alerts("acme").unwrap().is_empty());
    let stream_len: usize = redis::cmd("XLEN")
        .arg(format!("{t}:alerts"))
        .query(&mut raw.connection)
        .unwrap();
    assert_eq!(stream_len, 8);

    // Alert steps alone never create a summary (no half-filled hash).
    cache
        .apply(&Outputs {
            alerts: vec![alert(
                "fresh",
                "m1",
                AlertKind::Leak,
                EpisodeState::Opened,
                at,
            )],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(cache.summary("fresh").unwrap(), None);
    assert_eq!(cache.open_alerts("fresh").unwrap().len(), 1);
}

redis_and_cluster!(redis_bill_fields_never_step_back_a_period);
fn redis_bill_fields_never_step_back_a_period(url: &str) {
    let (cache, mut raw, p) = cache_on(url, "bills", RedisConfig::default());
    cache.apply(&full_outputs("acme")).unwrap();
    let key = format!("{p}:{{acme}}:meter:m1");
    let bill_fields = |raw: &mut Cleanup| -> (String, String, String) {
        let h = hash(&mut raw.connection, &key);
        (
            h[fields::PERIOD].clone(),
            h[fields::PERIOD_L].clone(),
            h[fields::BILL_CENTS].clone(),
        )
    };
    assert_eq!(
        bill_fields(&mut raw),
        ("2025-01".into(), "5000".into(), "1550".into())
    );
    // Last month's final bill, sent alone after this month's: ignored here.
    cache
        .apply(&Outputs {
            bills: vec![bill("acme", "m1", "2024-12", 9_100, true)],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(bill_fields(&mut raw).0, "2025-01");
    // The same period, grown, and then the next period replace it.
    for (period, usage) in [("2025-01", 6_000), ("2025-02", 10)] {
        cache
            .apply(&Outputs {
                bills: vec![bill("acme", "m1", period, usage, false)],
                ..Outputs::default()
            })
            .unwrap();
        assert_eq!(bill_fields(&mut raw).1, usage.to_string());
    }
    // A bill for a meter without a view yet: the hash holds the bill, with a TTL,
    // and the meter has no view.
    cache
        .apply(&Outputs {
            bills: vec![bill("acme", "m7", "2025-02", 1, false)],
            ..Outputs::default()
        })
        .unwrap();
    let ttl: i64 = raw
        .connection
        .ttl(format!("{p}:{{acme}}:meter:m7"))
        .unwrap();
    assert!(ttl > 0);
    assert_eq!(cache.meter(&meter_key("acme", "m7")).unwrap(), None);
}

redis_and_cluster!(redis_bill_fields_follow_the_newest_meter_state);
/// A bill beside a view of a lower version than the hash's (a stalled former
/// owner's late apply) leaves the bill fields alone, even of a later period.
fn redis_bill_fields_follow_the_newest_meter_state(url: &str) {
    let (cache, mut raw, p) = cache_on(url, "bill_versions", RedisConfig::default());
    let key = format!("{p}:{{acme}}:meter:m1");
    let apply = |version: i64, period: &str, usage_l: u64| {
        cache
            .apply(&Outputs {
                meters: vec![MeterView {
                    version,
                    ..view("acme", "m1", usage_l, None)
                }],
                bills: vec![bill("acme", "m1", period, usage_l, false)],
                ..Outputs::default()
            })
            .unwrap();
    };
    let held = |raw: &mut Cleanup| {
        let h = hash(&mut raw.connection, &key);
        (h[fields::PERIOD_L].clone(), h[fields::VERSION].clone())
    };
    apply(2_000, "2025-01", 500);
    assert_eq!(held(&mut raw), ("500".into(), "2000".into()));
    apply(1_000, "2025-02", 40);
    assert_eq!(held(&mut raw), ("500".into(), "2000".into()));
    apply(3_000, "2025-01", 600);
    assert_eq!(held(&mut raw), ("600".into(), "3000".into()));
}

redis_and_cluster!(redis_alert_stream_is_capped_near_its_maxlen);
fn redis_alert_stream_is_capped_near_its_maxlen(url: &str) {
    let maxlen = 100;
    let (cache, mut raw, p) = cache_on(
        url,
        "stream_cap",
        RedisConfig {
            alerts_stream_maxlen: maxlen,
            ..RedisConfig::default()
        },
    );
    for batch in 0..10 {
        let alerts = (0..100)
            .map(|i| {
                alert(
                    "acme",
                    "m1",
                    AlertKind::Leak,
                    EpisodeState::Updated,
                    batch * 100 + i,
                )
            })
            .collect();
        cache
            .apply(&Outputs {
                alerts,
                ..Outputs::default()
            })
            .unwrap();
    }
    let len: u64 = redis::cmd("XLEN")
        .arg(format!("{p}:{{acme}}:alerts"))
        .query(&mut raw.connection)
        .unwrap();
    // `MAXLEN ~` trims whole stream nodes (100 entries by default), never below.
    assert!((maxlen..=3 * maxlen).contains(&len), "stream holds {len}");
    let recent = cache.recent_alerts("acme", 3).unwrap();
    assert_eq!(
        recent.iter().map(|a| a.at).collect::<Vec<_>>(),
        [999, 998, 997]
    );
}

redis_and_cluster!(redis_district_keys_are_stamped_utc_hours_and_local_dates);
fn redis_district_keys_are_stamped_utc_hours_and_local_dates(url: &str) {
    let (cache, mut raw, p) = cache_on(url, "stamps", RedisConfig::default());
    // London: local 31 March 2025 starts at 23:00 UTC on the 30th. India: the local
    // 10:00 hour starts at 04:30 UTC.
    let march_30 = 1_743_292_800_000;
    let london_day = march_30 + 23 * HOUR;
    let india_hour = MIDNIGHT + 4 * HOUR + 30 * MINUTE;
    cache
        .apply(&Outputs {
            districts: vec![
                district_row("acme", "north", Resolution::Day, march_30, 1, 1),
                district_row("acme", "north", Resolution::Day, london_day, 2, 1),
                district_row("acme", "north", Resolution::Hour, india_hour, 3, 1),
            ],
            summaries: vec![summary("acme", 3, MIDNIGHT)],
            ..Outputs::default()
        })
        .unwrap();
    let t = format!("{p}:{{acme}}");
    for key in [
        format!("{t}:district:north:day:20250330"),
        format!("{t}:district:north:day:20250331"),
        format!("{t}:district:north:hour:2025011504"),
    ] {
        let exists: bool = raw.connection.exists(&key).unwrap();
        assert!(exists, "{key}");
    }
    let days = cache
        .district_usage(
            "acme",
            "north",
            Resolution::Day,
            march_30,
            march_30 + 2 * DAY,
        )
        .unwrap();
    assert_eq!(days.iter().map(|d| d.usage_l).collect::<Vec<_>>(), [1, 2]);
    let hour = |from, to| {
        cache
            .district_usage("acme", "north", Resolution::Hour, from, to)
            .unwrap()
            .len()
    };
    assert_eq!(hour(india_hour, india_hour + HOUR), 1);
    assert_eq!(hour(MIDNIGHT + 4 * HOUR, india_hour), 0);
    assert_eq!(hour(MIDNIGHT + 4 * HOUR, MIDNIGHT + 5 * HOUR), 1);
}

redis_and_cluster!(redis_aggregates_of_several_contributors_are_merged);
/// Two processors, each with its share of the same district windows, top list and
/// summary (the meters it owns): whatever order they apply in, every key holds the
/// merge of both shares — hashes, series points, the top list, the summary — and a
/// total older than one already written is never written over it.
fn redis_aggregates_of_several_contributors_are_merged(url: &str) {
    use meterflow_model::analytics::{DistrictUsage, UsageSketch};

    use crate::cache_contract::{as_cached, top_list};

    let (p1, _cleanup, prefix) = cache_on(url, "shares", RedisConfig::default());
    let p1 = p1.with_contributor("p1");
    let p2 = RedisCache::open(url, config(&prefix))
        .unwrap()
        .with_contributor("p2");
    let minute_start = MIDNIGHT + 10 * MINUTE;
    let minute = |usage_l, meters| {
        district_row(
            "acme",
            "north",
            Resolution::Minute,
            minute_start,
            usage_l,
            meters,
        )
    };
    let hour = |values: &[u64]| {
        let mut sketch = UsageSketch::default();
        values.iter().for_each(|v| sketch.add(*v));
        let mut row = DistrictUsage {
            meter_hour_sketch: sketch,
            ..district_row(
                "acme",
                "north",
                Resolution::Hour,
                MIDNIGHT,
                values.iter().sum(),
                values.len() as u64,
            )
        };
        row.refresh_derived();
        row
    };
    let day = |usage_l, meters, night: [Option<u64>; 2]| {
        let mut row = DistrictUsage {
            night_hour_l: night,
            ..district_row("acme", "north", Resolution::Day, MIDNIGHT, usage_l, meters)
        };
        row.refresh_derived();
        row
    };
    let outputs = |districts: Vec<DistrictUsage>, top: &[(&str, u64)], usage_today_l, at| Outputs {
        districts,
        top: vec![top_list("acme", "2025-01-15", top)],
        summaries: vec![summary("acme", usage_today_l, at)],
        ..Outputs::default()
    };
    p1.apply(&outputs(
        vec![minute(10, 1), hour(&[10, 20]), day(100, 2, [Some(5), None])],
        &[("m1", 60), ("m2", 40)],
        100,
        1,
    ))
    .unwrap();
    // m1 moved to p2 during the day: p2 lists its later (greater) day total.
    p2.apply(&outputs(
        vec![minute(7, 1), hour(&[30]), day(50, 1, [Some(3), Some(9)])],
        &[("m1", 70), ("m3", 30)],
        50,
        2,
    ))
    .unwrap();
    // p1's next flush of its still-growing minute.
    p1.apply(&Outputs {
        districts: vec![minute(12, 1)],
        ..Outputs::default()
    })
    .unwrap();

    let read = |resolution, from| {
        p2.district_usage("acme", "north", resolution, from, from + 1)
            .unwrap()
    };
    assert_eq!(read(Resolution::Minute, minute_start), vec![minute(19, 2)]);
    let mut merged_hour = hour(&[10, 20]);
    merged_hour.merge(&hour(&[30]));
    assert_eq!(merged_hour.p50_l, Some(20));
    assert_eq!(
        read(Resolution::Hour, MIDNIGHT),
        vec![as_cached(&merged_hour)]
    );
    let merged_day = day(150, 3, [Some(8), Some(9)]);
    assert_eq!(merged_day.night_flow_lph, Some(8));
    assert_eq!(read(Resolution::Day, MIDNIGHT), vec![merged_day]);
    let top = p1.top_consumers("acme", "2025-01-15", 10).unwrap();
    assert_eq!(
        top,
        top_list("acme", "2025-01-15", &[("m1", 70), ("m2", 40), ("m3", 30)]).entries
    );
    let total = p1.summary("acme").unwrap().unwrap();
    assert_eq!(
        (
            total.usage_today_l,
            total.meters_reporting,
            total.updated_at
        ),
        (150, 4, 2)
    );

    // A total merged at a lower version than the one written is not written: here
    // the minute's total is marked as written far ahead, so p1's next share is
    // kept but its total is not.
    let mut raw = RawConnection::open(url);
    let shares = format!("{prefix}:{{acme}}:district:north:min:202501150010:shares");
    let _: () = raw.hset(&shares, "#w", 1_000).unwrap();
    p1.apply(&Outputs {
        districts: vec![minute(40, 1)],
        ..Outputs::default()
    })
    .unwrap();
    assert_eq!(read(Resolution::Minute, minute_start), vec![minute(19, 2)]);
    let p1_share: String = raw.hget(&shares, "p1").unwrap();
    assert!(p1_share.contains("\"usage_l\":40"), "{p1_share}");
}
