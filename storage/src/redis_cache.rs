//! The Redis backend of [`HotCache`]: the documented contract dashboards read
//! (DESIGN §5, Redis hot cache).
//!
//! Keys and values (this module owns this format):
//! - `mf:{<tenant>}:meter:<meter>` — a HASH per meter, e.g. `mf:{acme}:meter:M-001`.
//!   The `{<tenant>}` part is a Redis Cluster hash tag: every key of a tenant lands
//!   in the same slot, so a dashboard can read a tenant's keys together. Ids are
//!   `[A-Za-z0-9_-]` (model `ids`), so they never contain `{`, `}` or `:`. The `mf`
//!   prefix is [`RedisConfig::key_prefix`] (tests use their own).
//! - Hash fields, all decimal strings unless noted, mirroring [`MeterView`]:
//!   `last_seq` (acked watermark), `last_ts` (epoch ms of the newest reading), `reg`,
//!   `rev` (litres), `flow` (L/h), `temp` (0.1 °C), `today_l` (litres on the UTC day
//!   of `last_ts`), `quality` (`actual` | `estimated` | `suspect`). A field whose value
//!   is unknown is absent (deleted if it was set before).
//! - Every key gets a TTL ([`RedisConfig::meter_ttl_secs`], default 7 days), renewed on
//!   every update.
//!
//! Values are absolute (`HSET` of what processors computed, never `INCR`), so applying
//! the same outputs twice, or replaying them after a Redis restart, is harmless.
//!
//! [`RedisCache::apply`] sends all views of one [`Outputs`] as one pipeline: one round
//! trip, `HSET` + (`HDEL` of absent fields) + `EXPIRE` per meter. The pipeline is not a
//! transaction: a dashboard may, for an instant, see a meter's new fields next to an
//! old optional field that is about to be deleted.
//!
//! Resilience: the connection is a redis-rs [`ConnectionManager`] (multiplexed,
//! reconnects by itself), created lazily so the service starts even while Redis is
//! down (DESIGN §6.6: Redis down, keep storing; the cache is rebuilt by later
//! outputs). Each call is retried on transient errors and guarded by a
//! [`CircuitBreaker`], so a dead Redis costs the sink one fast failure per call
//! instead of a timeout. The cache owns a one-thread tokio runtime and `block_on`s it:
//! call it from plain threads or `spawn_blocking`, never from inside an async task.

use std::collections::HashMap;
use std::time::Duration;

use meterflow_model::ids::is_valid_id;
use meterflow_model::{MeterKey, MeterView, Outputs, Quality};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError, RetryMethod};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use crate::HotCache;
use crate::error::CacheError;
use crate::resilience::{
    BreakerConfig, BreakerState, CircuitBreaker, Guarded, RetryConfig, guarded,
};

/// Worker threads of the cache's runtime: one multiplexed connection needs one.
const RUNTIME_WORKER_THREADS: usize = 1;

/// Reconnection attempts the ConnectionManager makes by itself after a dropped
/// connection, before failing the call: our own retry and breaker pace the rest.
const MANAGER_RECONNECT_ATTEMPTS: usize = 1;

/// Hash field names, the dashboard contract.
pub mod fields {
    pub const LAST_SEQ: &str = "last_seq";
    pub const LAST_TS: &str = "last_ts";
    pub const REG: &str = "reg";
    pub const REV: &str = "rev";
    pub const FLOW: &str = "flow";
    pub const TEMP: &str = "temp";
    pub const TODAY_L: &str = "today_l";
    pub const QUALITY: &str = "quality";
}

/// How the Redis cache connects and what it writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// First segment of every key (default `mf`, DESIGN §5). Another prefix lets
    /// two deployments, or concurrent tests, share one Redis.
    pub key_prefix: String,
    /// TTL of a meter's hash, seconds (default 7 days). Renewed on every update, so
    /// only meters silent for a week expire: longer than the 72 h no-communication
    /// alert and a long weekend's outage, while a decommissioned meter does not hold
    /// memory forever.
    pub meter_ttl_secs: u64,
    /// Timeout of one connection attempt, ms (default 1000: Redis is near the
    /// service; waiting longer only delays the sink).
    pub connect_timeout_ms: u64,
    /// Timeout of one command or pipeline, ms (default 1000: a healthy Redis answers
    /// a pipeline of thousands of HSETs in milliseconds).
    pub response_timeout_ms: u64,
    /// Retries of each call (all calls are idempotent).
    pub retry: RetryConfig,
    /// The breaker in front of Redis.
    pub breaker: BreakerConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            key_prefix: "mf".to_owned(),
            meter_ttl_secs: 7 * 24 * 3600,
            connect_timeout_ms: 1_000,
            response_timeout_ms: 1_000,
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

impl RedisConfig {
    /// Every problem with the values, each phrased as what to change.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if !is_valid_id(self.key_prefix.as_bytes()) {
            problems.push(format!(
                "redis.key_prefix {:?} must be 1-64 characters of [A-Za-z0-9_-]",
                self.key_prefix
            ));
        }
        if self.meter_ttl_secs == 0 || i64::try_from(self.meter_ttl_secs).is_err() {
            problems.push("redis.meter_ttl_secs must be at least 1 (every key has a TTL)".into());
        }
        if self.connect_timeout_ms == 0 {
            problems.push("redis.connect_timeout_ms must be at least 1".into());
        }
        if self.response_timeout_ms == 0 {
            problems.push("redis.response_timeout_ms must be at least 1".into());
        }
        problems.extend(self.retry.problems("redis.retry"));
        problems.extend(self.breaker.problems("redis.breaker"));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// [`HotCache`] on Redis.
pub struct RedisCache {
    connection: ConnectionManager,
    config: RedisConfig,
    breaker: CircuitBreaker,
    /// `Some` until drop; shut down in the background so dropping the cache from
    /// anywhere is safe.
    runtime: Option<Runtime>,
}

impl RedisCache {
    /// Prepares a cache on `url` (`redis://host:port[/db]`, `rediss://…`,
    /// `unix:///path`). Does not connect: the first call does, so an unreachable
    /// Redis is a (retryable) error of that call, not of start-up. Fails only on a
    /// bad URL or config.
    pub fn open(url: &str, config: RedisConfig) -> Result<Self, CacheError> {
        config
            .validate()
            .map_err(|problems| CacheError(problems.join("; ")))?;
        let client = redis::Client::open(url)
            .map_err(|e| CacheError(format!("bad Redis URL {url:?}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_WORKER_THREADS)
            .thread_name("mf-redis")
            .enable_all()
            .build()
            .map_err(|e| CacheError(format!("cannot start the Redis runtime: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
            .set_response_timeout(Some(Duration::from_millis(config.response_timeout_ms)))
            .set_number_of_retries(MANAGER_RECONNECT_ATTEMPTS)
            .set_min_delay(Duration::from_millis(config.retry.initial_backoff_ms))
            .set_max_delay(Duration::from_millis(config.retry.max_backoff_ms));
        let connection = {
            // The manager spawns its reconnection tasks on the current runtime.
            let _context = runtime.enter();
            ConnectionManager::new_lazy_with_config(client, manager_config)
                .map_err(|e| CacheError(format!("cannot set up the Redis connection: {e}")))?
        };
        Ok(Self {
            connection,
            breaker: CircuitBreaker::new("redis", config.breaker.clone()),
            config,
            runtime: Some(runtime),
        })
    }

    /// The breaker's state, for metrics (`closed`, `open`, `half_open`).
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The key of a meter's hash: `{prefix}:{<tenant>}:meter:<meter>`.
    pub fn meter_key(&self, tenant: &str, meter: &str) -> String {
        format!("{}:{{{tenant}}}:meter:{meter}", self.config.key_prefix)
    }

    /// Round trip to Redis (behind the breaker), for `/readyz`.
    pub fn ping(&self) -> Result<(), CacheError> {
        self.call(|mut connection| async move {
            redis::cmd("PING").query_async::<()>(&mut connection).await
        })
    }

    fn call<T, Fut>(&self, op: impl Fn(ConnectionManager) -> Fut) -> Result<T, CacheError>
    where
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let Some(runtime) = &self.runtime else {
            unreachable!("the runtime lives as long as the cache")
        };
        runtime
            .block_on(guarded(
                &self.breaker,
                &self.config.retry,
                is_transient,
                || op(self.connection.clone()),
            ))
            .map_err(|error| match error {
                Guarded::Open(open) => CacheError(format!(
                    "{open}; Redis calls fail fast until a probe succeeds"
                )),
                Guarded::Failed(e) => CacheError(format!("Redis call failed: {e}")),
            })
    }
}

impl Drop for RedisCache {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Errors worth retrying: connection trouble, timeouts, a loading or failing-over
/// server. A wrong-type key or a refused command is not.
fn is_transient(error: &RedisError) -> bool {
    !matches!(error.retry_method(), RetryMethod::NoRetry)
        || error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
}

/// The hash fields of a view: values to set, and names of unknown ones to delete.
fn view_fields(view: &MeterView) -> (Vec<(&'static str, String)>, Vec<&'static str>) {
    let optional = [
        (fields::LAST_SEQ, view.last_seq.map(|v| v.to_string())),
        (fields::LAST_TS, view.last_ts.map(|v| v.to_string())),
        (fields::REG, view.reg.map(|v| v.to_string())),
        (fields::REV, view.rev.map(|v| v.to_string())),
        (fields::FLOW, view.flow.map(|v| v.to_string())),
        (fields::TEMP, view.temp.map(|v| v.to_string())),
    ];
    let mut set = vec![
        (fields::TODAY_L, view.today_l.to_string()),
        (fields::QUALITY, view.quality.as_str().to_owned()),
    ];
    let mut unset = Vec::new();
    for (name, value) in optional {
        match value {
            Some(value) => set.push((name, value)),
            None => unset.push(name),
        }
    }
    (set, unset)
}

fn parse_field<T: std::str::FromStr>(
    key: &str,
    hash: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, CacheError> {
    hash.get(name)
        .map(|raw| {
            raw.parse::<T>()
                .map_err(|_| CacheError(format!("{key}: field {name} holds {raw:?}, not a number")))
        })
        .transpose()
}

fn parse_quality(raw: &str) -> Option<Quality> {
    [Quality::Actual, Quality::Estimated, Quality::Suspect]
        .into_iter()
        .find(|q| q.as_str() == raw)
}

/// A meter's hash back into a view; `None` for a missing (or expired) key.
fn parse_view(
    key: &str,
    meter: &MeterKey,
    hash: &HashMap<String, String>,
) -> Result<Option<MeterView>, CacheError> {
    if hash.is_empty() {
        return Ok(None);
    }
    let today_l = parse_field(key, hash, fields::TODAY_L)?
        .ok_or_else(|| CacheError(format!("{key}: field {} is missing", fields::TODAY_L)))?;
    let quality = match hash.get(fields::QUALITY) {
        Some(raw) => parse_quality(raw).ok_or_else(|| {
            CacheError(format!(
                "{key}: unknown quality {raw:?} (written by a newer meterflow?)"
            ))
        })?,
        None => {
            return Err(CacheError(format!(
                "{key}: field {} is missing",
                fields::QUALITY
            )));
        }
    };
    Ok(Some(MeterView {
        tenant: meter.tenant.as_str().to_owned(),
        meter: meter.meter.as_str().to_owned(),
        last_seq: parse_field(key, hash, fields::LAST_SEQ)?,
        last_ts: parse_field(key, hash, fields::LAST_TS)?,
        reg: parse_field(key, hash, fields::REG)?,
        rev: parse_field(key, hash, fields::REV)?,
        flow: parse_field(key, hash, fields::FLOW)?,
        temp: parse_field(key, hash, fields::TEMP)?,
        today_l,
        quality,
    }))
}

impl HotCache for RedisCache {
    fn breaker_state(&self) -> Option<BreakerState> {
        Some(self.breaker.state())
    }

    fn apply(&self, outputs: &Outputs) -> Result<(), CacheError> {
        // Whole seconds below i64::MAX: checked by `validate`.
        let ttl = i64::try_from(self.config.meter_ttl_secs).unwrap_or(i64::MAX);
        let mut pipe = redis::pipe();
        let mut commands = 0usize;
        for view in &outputs.meters {
            if !is_valid_id(view.tenant.as_bytes()) || !is_valid_id(view.meter.as_bytes()) {
                // Ids are validated where they enter; a bad one here is a bug upstream.
                // Skipping it keeps one bad view from failing (and re-failing) the rest.
                tracing::warn!(
                    tenant = view.tenant,
                    meter = view.meter,
                    "cache view with a malformed id skipped"
                );
                continue;
            }
            let key = self.meter_key(&view.tenant, &view.meter);
            let (set, unset) = view_fields(view);
            pipe.hset_multiple(&key, &set).ignore();
            if !unset.is_empty() {
                pipe.hdel(&key, &unset).ignore();
            }
            pipe.expire(&key, ttl).ignore();
            commands += 1;
        }
        if commands == 0 {
            return Ok(());
        }
        self.call(|mut connection| {
            let pipe = &pipe;
            async move { pipe.query_async::<()>(&mut connection).await }
        })
    }

    fn meter(&self, key: &MeterKey) -> Result<Option<MeterView>, CacheError> {
        let redis_key = self.meter_key(key.tenant.as_str(), key.meter.as_str());
        let hash: HashMap<String, String> = self.call(|mut connection| {
            let redis_key = &redis_key;
            async move { connection.hgetall(redis_key).await }
        })?;
        parse_view(&redis_key, key, &hash)
    }
}

#[cfg(test)]
mod tests {
    use meterflow_model::{MeterId, TenantId};

    use super::*;

    fn view() -> MeterView {
        MeterView {
            tenant: "acme".into(),
            meter: "M-1".into(),
            last_seq: Some(7),
            last_ts: Some(1_763_800_000_000),
            reg: Some(123_456),
            rev: Some(0),
            flow: Some(40),
            temp: None,
            today_l: 310,
            quality: Quality::Estimated,
        }
    }

    #[test]
    fn fields_round_trip_and_absent_ones_are_deleted() {
        let v = view();
        let (set, unset) = view_fields(&v);
        assert_eq!(unset, vec![fields::TEMP]);
        let hash: HashMap<String, String> =
            set.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let key = MeterKey::new(
            TenantId::try_from("acme").unwrap(),
            MeterId::try_from("M-1").unwrap(),
        );
        assert_eq!(parse_view("k", &key, &hash).unwrap(), Some(v));
        assert_eq!(parse_view("k", &key, &HashMap::new()).unwrap(), None);
    }

    #[test]
    fn garbage_fields_are_errors_not_panics() {
        let key = MeterKey::new(
            TenantId::try_from("acme").unwrap(),
            MeterId::try_from("M-1").unwrap(),
        );
        let mut hash: HashMap<String, String> = [
            (fields::TODAY_L.to_owned(), "1".to_owned()),
            (fields::QUALITY.to_owned(), "actual".to_owned()),
        ]
        .into();
        assert!(parse_view("k", &key, &hash).unwrap().is_some());
        hash.insert(fields::REG.into(), "-1".into());
        assert!(parse_view("k", &key, &hash).is_err());
        hash.remove(fields::REG);
        hash.insert(fields::QUALITY.into(), "great".into());
        assert!(parse_view("k", &key, &hash).is_err());
        hash.remove(fields::QUALITY);
        assert!(parse_view("k", &key, &hash).is_err());
    }

    #[test]
    fn config_defaults_validate_and_refuse_unknown_fields() {
        let config = RedisConfig::default();
        config.validate().unwrap();
        assert_eq!(config.meter_ttl_secs, 604_800);
        let back: RedisConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        assert!(toml::from_str::<RedisConfig>("ttl = 5").is_err());
        let bad = RedisConfig {
            key_prefix: "mf:{x}".into(),
            meter_ttl_secs: 0,
            ..RedisConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().len(), 2);
    }

    #[test]
    fn keys_carry_the_tenant_hash_tag() {
        let cache = RedisCache::open("redis://127.0.0.1:1", RedisConfig::default()).unwrap();
        assert_eq!(cache.meter_key("acme", "M-1"), "mf:{acme}:meter:M-1");
        assert!(RedisCache::open("not a url", RedisConfig::default()).is_err());
    }
}
