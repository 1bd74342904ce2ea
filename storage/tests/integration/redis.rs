//! `RedisCache` against a real Redis (`scripts/redis start`): the key and field
//! contract, TTLs, idempotent applies, and the circuit breaker on a closed port. Each
//! test uses its own key prefix and deletes its keys.

use std::time::{Duration, Instant};

use meterflow_model::{MeterView, Outputs, Quality};
use meterflow_storage::HotCache;
use meterflow_storage::redis_cache::{RedisCache, RedisConfig, fields};
use meterflow_storage::resilience::{BreakerConfig, BreakerState, RetryConfig};
use redis::Commands;

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
    }
}

fn config(prefix: &str) -> RedisConfig {
    RedisConfig {
        key_prefix: prefix.to_owned(),
        ..RedisConfig::default()
    }
}

/// Deletes the test's keys when dropped.
struct Cleanup {
    connection: redis::Connection,
    prefix: String,
}

impl Cleanup {
    fn new(url: &str, prefix: &str) -> Cleanup {
        let connection = redis::Client::open(url)
            .and_then(|c| c.get_connection())
            .expect("plain Redis connection");
        Cleanup {
            connection,
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
        if !keys.is_empty() {
            let _: Result<(), _> = self.connection.del(keys);
        }
    }
}

#[test]
fn redis_apply_writes_the_documented_hash_with_a_ttl_and_reads_it_back() {
    let Some(url) = servers::redis("redis_apply") else {
        return;
    };
    let prefix = servers::unique_name("apply");
    let mut raw = Cleanup::new(&url, &prefix);
    let cache = RedisCache::open(&url, config(&prefix)).unwrap();
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
    assert_eq!(hash.len(), 8);
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
