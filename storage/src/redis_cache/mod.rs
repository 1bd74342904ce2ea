//! The Redis backend of [`HotCache`]: the documented contract dashboards read
//! (DESIGN §5, Redis hot cache; for dashboard developers: `docs/redis-keys.md`).
//!
//! Keys (this module owns this format; names in [`keys`], fields in [`fields`]), all
//! `{prefix}:{<tenant>}:…` with the tenant as a Redis Cluster hash tag, so a tenant's
//! keys share one slot:
//!
//! | key | type | TTL (default) |
//! |---|---|---|
//! | `mf:{t}:meter:{m}` | HASH: view fields, `period`, `period_l`, `bill_cents`, `alerts_open` | 7 days |
//! | `mf:{t}:district:{d}:min:{yyyymmddHHMM}` (UTC minute) | HASH: usage, meters | 2 days |
//! | `mf:{t}:district:{d}:hour:{yyyymmddHH}` (UTC hour) | HASH: usage, meters, percentiles | 35 days |
//! | `mf:{t}:district:{d}:day:{yyyymmdd}` (local date) | HASH: usage, meters, night flow, inflow | 400 days |
//! | `mf:{t}:top:{yyyymmdd}` (local date) | ZSET: meter → litres that day | 35 days |
//! | `mf:{t}:alerts` | STREAM of alert steps, `MAXLEN ~ 10000` | 30 days |
//! | `mf:{t}:alerts:open` | HASH: `{meter}:{kind}` → JSON of the latest step | 30 days |
//! | `mf:{t}:summary` | HASH: day, usage_today_l, meters_reporting, alerts_open, updated_at | 7 days |
//! | `mf:{t}:series:district:{d}:{min\|hour\|day}` | ZSET: window start → point `{start_ms}:{usage_l}:{meters}…` | as the window hashes |
//! | `mf:{t}:districts` | ZSET: district → start of its newest window | 400 days |
//! | `mf:{t}:meters`, `…:meters:by_district` | ZSET (lex): meter ids, `{district}:{meter}` | 7 days |
//! | `mf:{t}:meters:last_ts`, `…:meters:seen` | ZSET: meter → newest reading, last view write | 7 days |
//! | `mf:{t}:meters:district` | HASH: meter → district | 7 days |
//! | `{district, top or summary key}:shares` | HASH: contributors' shares, `#v`, `#w` (`shares.rs`; only with a contributor) | as the key |
//!
//! Every TTL is renewed by each write of its key, and configurable ([`RedisConfig`]).
//! Sorted sets that grow with time or meters are also trimmed at each write: series
//! to the span their window hashes live (by window start), the district index to the
//! day span, the meter index to meters whose view was written within the meter TTL
//! (by the Redis clock) — so none outgrows what its hashes hold.
//!
//! Values are absolute (what processors computed, never `INCR`), so applying the
//! same outputs twice, or replaying them after a Redis restart, leaves the same
//! hashes and sorted sets. (With a contributor, an aggregate is the merge of the
//! contributors' absolute shares, `shares.rs`; the same holds.) The one exception is the alerts stream, an event log: a
//! replay appends the same steps again (readers may dedupe on meter, kind,
//! opened_at, state, at).
//!
//! [`RedisCache::apply`] sends everything of one [`Outputs`] as one pipeline, one
//! round trip (built by `apply.rs`; on a Redis Cluster one pipeline per tenant, see
//! below): plain `HSET`/`HDEL`/`EXPIRE`/`XADD`, plus small Lua scripts (`scripts.rs`)
//! where an absolute write needs Redis-side state — replacing a top list atomically,
//! not letting an older period's bill replace the current one, counting open alerts
//! (per meter and `HLEN` for the summary) in the same step that changes them, moving
//! a meter between districts in the index, and replacing a rewritten window's series
//! point instead of adding a second one. The pipeline is not a transaction: a
//! dashboard may, for an instant, see some keys of an apply new and others old; each
//! key (and each script's keys) changes atomically.
//!
//! Reads: `district_usage` computes the keys of every window in the (capped) range
//! and fetches them with one pipeline of `HGETALL`s, skipping missing ones; `meters`
//! walks the meter index with a read-only script in bounded chunks (its cost is on
//! the method); the others are one command each. Every read is of one tenant.
//!
//! Redis Cluster (DESIGN §9, distributed mode): a `redis+cluster://` URL
//! (`connection.rs`) connects to a cluster through redis-rs's cluster client, which
//! routes each command to the node serving its key's slot and follows `MOVED`/`ASK`.
//! A pipeline goes to one node and a script runs on one node, so each may touch
//! keys of one slot only: every key of a tenant shares the tenant's hash tag and so
//! its slot; every script gets all its keys through `KEYS` and touches one tenant's
//! (`scripts.rs`); each read is of one tenant; and `apply` splits its outputs into
//! one pipeline per tenant, sent concurrently — still one round trip of latency,
//! to as many nodes as the tenants live on (`apply.rs`, [`Grouping`]). Different
//! tenants' pipelines are not ordered with one another; nothing needs them to be.
//! Scripts go as `EVAL` with their text, never `EVALSHA`, so no node can answer
//! `NOSCRIPT` — not one that never saw the script, nor a new master after a
//! failover. The calls below are the same code for both kinds of server
//! ([`Connection`]).
//!
//! Resilience: the connection is a redis-rs
//! [`ConnectionManager`](redis::aio::ConnectionManager) (multiplexed, reconnects by
//! itself) — on a cluster a redis-rs cluster connection, which also reconnects,
//! re-reads the slot map and follows redirects — created lazily so the service
//! starts even while Redis is down (DESIGN §6.6: Redis down, keep storing; the cache
//! is rebuilt by later outputs). Each call is one operation behind a
//! [`CircuitBreaker`], retried as a whole with backon
//! ([`resilience::guarded`](crate::resilience::guarded), `redis.retry`) while Redis's
//! error is transient (`is_transient`: connection trouble, timeouts, a loading or
//! failing-over server, a cluster that is down or moving slots — not a refused
//! command, a wrong-type key or a pipeline over several slots). This is the only
//! retry of a Redis call, but for the cluster client's own few within a call
//! (`CLUSTER_RETRIES` in `connection.rs`: a redirect, a reconnect to a failed-over
//! node): the connection manager only reconnects, and the sink's cache writer does
//! not retry — it keeps what failed and sends it with the next update. So a dead
//! Redis costs the sink one fast failure per call instead of a timeout.
//!
//! The connection runs on a multi-thread tokio runtime — the service's, whose
//! handle [`RedisCache::open_on`] takes, or, for tests and tools without one, a
//! one-thread runtime [`RedisCache::open`] starts — and each call `block_on`s it: call
//! the cache from plain threads or `spawn_blocking`, never from inside an async task.

mod apply;
mod codec;
mod connection;
pub mod fields;
pub mod keys;
mod scripts;
mod shares;

use std::collections::HashMap;

use futures_util::future::try_join_all;
use meterflow_model::alert::AlertEvent;
use meterflow_model::analytics::{DistrictUsage, Resolution, TopEntry};
use meterflow_model::ids::is_valid_id;
use meterflow_model::{MeterKey, MeterPage, MeterQuery, MeterView, Outputs, TenantSummary};
use redis::{AsyncCommands, RedisError, RetryMethod};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use crate::HotCache;
use crate::error::CacheError;
use crate::resilience::{
    BreakerConfig, BreakerState, CircuitBreaker, Guarded, RetryConfig, guarded,
};
use crate::runtime::ClientRuntime;
pub use keys::KeySpace;

use self::apply::Grouping;
use self::connection::{Connection, Target};

pub(crate) use codec::{cached_row, sort_open_alerts, sort_top};

/// Worker threads of the runtime [`RedisCache::open`] starts (tests and tools; the
/// service's cache runs on the service's runtime): one multiplexed connection needs
/// one.
const RUNTIME_WORKER_THREADS: usize = 1;

const DAY_SECS: u64 = 24 * 3600;

/// How the Redis cache connects and what it writes. Every key has a TTL, renewed on
/// each write of that key: a TTL bounds how long data outlives the meter, district
/// or tenant that stopped reporting, and how far back dashboards can look.
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
    /// TTL of a district's minute hash, seconds (default 2 days): minute charts
    /// show the last 24 h (the longest minute read is one day); the second day lets
    /// "now vs. this time yesterday" work. At 1,440 keys per district per day, a
    /// longer TTL costs the most memory of all keys.
    pub district_minute_ttl_secs: u64,
    /// TTL of a district's hour hash, seconds (default 35 days): a month of hourly
    /// charts, plus slack so the previous month stays whole in the first days of
    /// the next.
    pub district_hour_ttl_secs: u64,
    /// TTL of a district's day hash, seconds (default 400 days): a year of daily
    /// bars plus a month, so "the same day last year" is still there.
    pub district_day_ttl_secs: u64,
    /// TTL of a day's top-consumers ZSET, seconds (default 35 days, like hours):
    /// the ranking of recent days; longer history is in the store's readings.
    pub top_ttl_secs: u64,
    /// TTL of the alert stream and the open-alerts hash, seconds (default 30 days).
    /// Renewed by every alert step, and the open set also by every summary, so it
    /// lives as long as the tenant reports; a tenant silent for a month is dropped.
    /// The stream is a recent-events feed: the full history is the `alerts` table.
    pub alerts_ttl_secs: u64,
    /// TTL of the tenant summary, seconds (default 7 days): rewritten at every
    /// analytics flush (a minute) while the tenant reports; the same week as meters.
    pub summary_ttl_secs: u64,
    /// Approximate length cap of the alert stream (`XADD MAXLEN ~`, default
    /// 10,000): days of steps for a large utility (the alert rules re-announce an
    /// open episode at most daily), a few MB at ~200 bytes an entry. `~` lets Redis
    /// trim whole radix-tree nodes, so the stream may briefly hold a little more.
    pub alerts_stream_maxlen: u64,
    /// Timeout of one connection attempt, ms (default 1000: Redis is near the
    /// service; waiting longer only delays the sink).
    pub connect_timeout_ms: u64,
    /// Timeout of one command or pipeline, ms (default 1000: a healthy Redis answers
    /// a pipeline of thousands of HSETs in milliseconds).
    pub response_timeout_ms: u64,
    /// Retries of each call, the only retry layer of a Redis call (all calls are
    /// idempotent); its delays also pace the connection's reconnects.
    pub retry: RetryConfig,
    /// The breaker in front of Redis.
    pub breaker: BreakerConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            key_prefix: "mf".to_owned(),
            meter_ttl_secs: 7 * DAY_SECS,
            district_minute_ttl_secs: 2 * DAY_SECS,
            district_hour_ttl_secs: 35 * DAY_SECS,
            district_day_ttl_secs: 400 * DAY_SECS,
            top_ttl_secs: 35 * DAY_SECS,
            alerts_ttl_secs: 30 * DAY_SECS,
            summary_ttl_secs: 7 * DAY_SECS,
            alerts_stream_maxlen: 10_000,
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
        for (name, secs) in [
            ("meter_ttl_secs", self.meter_ttl_secs),
            ("district_minute_ttl_secs", self.district_minute_ttl_secs),
            ("district_hour_ttl_secs", self.district_hour_ttl_secs),
            ("district_day_ttl_secs", self.district_day_ttl_secs),
            ("top_ttl_secs", self.top_ttl_secs),
            ("alerts_ttl_secs", self.alerts_ttl_secs),
            ("summary_ttl_secs", self.summary_ttl_secs),
        ] {
            if secs == 0 || i64::try_from(secs).is_err() {
                problems.push(format!(
                    "redis.{name} must be at least 1 and below 2^63 (every key has a TTL)"
                ));
            }
        }
        if self.alerts_stream_maxlen == 0 {
            problems.push("redis.alerts_stream_maxlen must be at least 1".into());
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
    /// One Redis or a Redis Cluster; cloned into each call.
    connection: Connection,
    /// How `apply` groups its commands into pipelines: all in one for a single
    /// Redis, one per tenant on a cluster.
    grouping: Grouping,
    config: RedisConfig,
    keys: KeySpace,
    breaker: CircuitBreaker,
    /// The runtime the connection runs on and every call `block_on`s.
    runtime: ClientRuntime,
    /// Who this cache writes aggregates for, when several processes write them
    /// ([`with_contributor`](Self::with_contributor)).
    contributor: Option<String>,
}

impl RedisCache {
    /// Prepares a cache on `url` — one Redis (`redis://host:port[/db]`, `rediss://…`,
    /// `unix:///path`) or a Redis Cluster
    /// (`redis+cluster://[user:password@]host:port[,host:port…]`, any seed nodes) —
    /// its connection running on `runtime` (the service's; a multi-thread runtime).
    /// Does not connect: the first call does, so an unreachable Redis is a
    /// (transient) error of that call, not of start-up. Fails only on a bad URL,
    /// config or runtime.
    pub fn open_on(runtime: Handle, url: &str, config: RedisConfig) -> Result<Self, CacheError> {
        let target = Self::target(url, &config)?;
        let runtime = ClientRuntime::shared(runtime, "redis").map_err(CacheError)?;
        Self::prepare(runtime, target, config)
    }

    /// [`RedisCache::open_on`] for callers without a tokio runtime (tests, tools): the
    /// cache starts one of its own ([`RUNTIME_WORKER_THREADS`] worker named
    /// `mf-redis`), shut down when the cache is dropped. A service must not use it: it
    /// would run a second runtime beside its own.
    pub fn open(url: &str, config: RedisConfig) -> Result<Self, CacheError> {
        let target = Self::target(url, &config)?;
        let runtime = ClientRuntime::own("mf-redis", RUNTIME_WORKER_THREADS)
            .map_err(|e| CacheError(format!("cannot start the Redis runtime: {e}")))?;
        Self::prepare(runtime, target, config)
    }

    /// The server (or cluster) of `url`, not connected yet, after every problem of
    /// the config.
    fn target(url: &str, config: &RedisConfig) -> Result<Target, CacheError> {
        config
            .validate()
            .map_err(|problems| CacheError(problems.join("; ")))?;
        Target::parse(url, config)
    }

    fn prepare(
        runtime: ClientRuntime,
        target: Target,
        config: RedisConfig,
    ) -> Result<Self, CacheError> {
        let grouping = if target.is_cluster() {
            Grouping::PerTenant
        } else {
            Grouping::One
        };
        let connection = {
            // Both clients spawn their connection tasks on the current runtime.
            let _context = runtime.handle().enter();
            target.connect_lazily(&config)?
        };
        Ok(Self {
            connection,
            grouping,
            breaker: CircuitBreaker::new("redis", config.breaker.clone()),
            keys: KeySpace::new(&config.key_prefix),
            config,
            runtime,
            contributor: None,
        })
    }

    /// This cache as one of several writers of the aggregates (distributed mode's
    /// processors, each counting the meters it owns): district rows, top lists and
    /// summaries are written as `contributor`'s share, and each key gets the merge
    /// of every contributor's (`shares.rs`). `contributor` names one run of one
    /// process (an id no other run uses); without one, as by default, the cache
    /// writes the aggregates it is given as the totals.
    pub fn with_contributor(mut self, contributor: &str) -> Self {
        self.contributor = Some(contributor.to_owned());
        self
    }

    /// Round one of the shared aggregates of `outputs` (`shares.rs`): their totals.
    fn share(&self, contributor: &str, outputs: &Outputs) -> Result<shares::Totals, CacheError> {
        let calls = shares::share_calls(&self.keys, &self.config, contributor, outputs);
        let replies = self.call(|connection| {
            try_join_all(calls.iter().map(|call| {
                let mut connection = connection.clone();
                async move {
                    redis::cmd("EVAL")
                        .arg(scripts::PUT_SHARES)
                        .arg(call.keys.len())
                        .arg(&call.keys)
                        .arg(&call.args)
                        .query_async::<Vec<Vec<String>>>(&mut connection)
                        .await
                }
            }))
        })?;
        Ok(shares::totals(&calls, replies))
    }

    /// The breaker's state, for metrics (`closed`, `open`, `half_open`).
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The key names this cache writes.
    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// The key of a meter's hash: `{prefix}:{<tenant>}:meter:<meter>`.
    pub fn meter_key(&self, tenant: &str, meter: &str) -> String {
        self.keys.meter(tenant, meter)
    }

    /// Round trip to Redis (behind the breaker), for `/readyz`.
    pub fn ping(&self) -> Result<(), CacheError> {
        self.call(|mut connection| async move {
            redis::cmd("PING").query_async::<()>(&mut connection).await
        })
    }

    fn call<T, Fut>(&self, op: impl Fn(Connection) -> Fut) -> Result<T, CacheError>
    where
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        self.runtime
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

    /// Every field of each hash `names`, in one pipeline (empty maps for missing keys).
    fn hashes(&self, names: &[String]) -> Result<Vec<HashMap<String, String>>, CacheError> {
        let mut pipe = redis::pipe();
        for name in names {
            pipe.hgetall(name);
        }
        self.call(|mut connection| {
            let pipe = &pipe;
            async move { pipe.query_async(&mut connection).await }
        })
    }
}

/// Errors worth retrying: connection trouble, timeouts, a loading or failing-over
/// server, a cluster that is down or whose slots moved (`CLUSTERDOWN`, `MOVED`,
/// `ASK`, no connection to a slot's node yet). A wrong-type key, a refused command
/// or a pipeline over several slots (`CROSSSLOT`) is not.
fn is_transient(error: &RedisError) -> bool {
    !matches!(error.retry_method(), RetryMethod::NoRetry)
        || error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
}

/// A stream entry as `XREVRANGE` returns it: id, then field and value alternating.
type StreamEntry = (String, Vec<String>);

/// Matches one [`PAGE_METERS`](scripts::PAGE_METERS) call returns at most, and so
/// hashes one pipeline fetches: the API's largest page (1,000) plus its look-ahead
/// takes two calls, a default page of 100 one.
const PAGE_MATCHES_PER_CALL: usize = 1_000;

/// Index members one page-script call examines at most. Measured on the test Redis
/// (7.0): ~1.3 µs a member when it passes the search and its `last_ts` is looked up,
/// ~0.35 µs when the search rejects it — at most ~3 ms a call, short enough not to
/// stall other clients; a filtered scan of a 100k-meter tenant is 50 calls.
const PAGE_SCAN_BUDGET: usize = 2_000;

impl RedisCache {
    /// The views of `ids` (one pipeline of `HGETALL`s) that still pass `query`:
    /// an id whose hash expired, holds no view yet, or changed since the index was
    /// read (a view and its index entry are written by consecutive commands of one
    /// apply) is left out.
    fn matching_views(
        &self,
        tenant: &str,
        query: &MeterQuery,
        ids: &[String],
    ) -> Result<Vec<MeterView>, CacheError> {
        let mut names = Vec::with_capacity(ids.len());
        let mut meter_keys = Vec::with_capacity(ids.len());
        for id in ids {
            let Ok(key) = MeterKey::parse(tenant.as_bytes(), id.as_bytes()) else {
                continue; // not written by meterflow: ids in the index are valid
            };
            names.push(self.keys.meter(tenant, id));
            meter_keys.push(key);
        }
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let hashes = self.hashes(&names)?;
        let mut views = Vec::with_capacity(names.len());
        for ((name, key), hash) in names.iter().zip(&meter_keys).zip(&hashes) {
            if let Some(view) = codec::parse_view(name, key, hash)?
                && query.matches(&view)
            {
                views.push(view);
            }
        }
        Ok(views)
    }
}

impl HotCache for RedisCache {
    fn breaker_state(&self) -> Option<BreakerState> {
        Some(self.breaker.state())
    }

    /// Sends the plan's pipelines — one, or on a cluster one per tenant —
    /// concurrently, as one call: a transient failure of any retries them all (every
    /// write is absolute; only the alert stream would get a step twice).
    fn apply(&self, outputs: &Outputs) -> Result<(), CacheError> {
        let shared = !(outputs.districts.is_empty()
            && outputs.top.is_empty()
            && outputs.summaries.is_empty());
        let totals = match &self.contributor {
            Some(contributor) if shared => Some(self.share(contributor, outputs)?),
            _ => None,
        };
        let plan = apply::plan(
            &self.keys,
            &self.config,
            self.grouping,
            outputs,
            totals.as_ref(),
        );
        if plan.skipped > 0 {
            // Ids are validated where they enter; a bad one here is a bug upstream.
            // Skipping it keeps one bad row from failing (and re-failing) the rest.
            tracing::warn!(
                skipped = plan.skipped,
                example = plan.first_skipped.as_deref().unwrap_or(""),
                "cache rows with a malformed tenant, meter or district id skipped"
            );
        }
        if plan.commands == 0 {
            return Ok(());
        }
        self.call(|connection| {
            try_join_all(plan.pipes.values().map(|pipe| {
                let mut connection = connection.clone();
                async move { pipe.query_async::<()>(&mut connection).await }
            }))
        })
        .map(|_| ())
    }

    fn meter(&self, key: &MeterKey) -> Result<Option<MeterView>, CacheError> {
        let redis_key = self.keys.meter(key.tenant.as_str(), key.meter.as_str());
        let hash: HashMap<String, String> = self.call(|mut connection| {
            let redis_key = &redis_key;
            async move { connection.hgetall(redis_key).await }
        })?;
        codec::parse_view(&redis_key, key, &hash)
    }

    /// Walks the tenant's meter index — `meters`, or `meters:by_district` with a
    /// district filter — from `after` in id order with the `PAGE_METERS` script,
    /// which applies the search and silent filters on the server and returns only
    /// matching ids; then one pipeline of `HGETALL`s fetches their views. It repeats
    /// until the page has `limit` views and one more match (for `next`) or the
    /// index ends.
    ///
    /// Cost: an unfiltered or district-only page examines `limit + 1` index members
    /// and fetches as many hashes, whatever the tenant's size. A search or silent
    /// filter examines every member between `after` and the page's last match —
    /// all of the rest of the index when few match — in script calls of at most
    /// `PAGE_SCAN_BUDGET` members, so Redis serves other clients between them; only
    /// matching hashes are fetched.
    fn meters(&self, tenant: &str, query: &MeterQuery) -> Result<MeterPage, CacheError> {
        if query.limit == 0 || !is_valid_id(tenant.as_bytes()) {
            return Ok(MeterPage::default());
        }
        let (index, mut min, max, strip) = match &query.district {
            Some(district) => {
                if !is_valid_id(district.as_bytes()) {
                    return Ok(MeterPage::default());
                }
                let (low, high) = keys::district_lex_range(district);
                let min = match &query.after {
                    Some(after) => format!("({}", keys::district_member(district, after)),
                    None => low,
                };
                (
                    self.keys.meters_by_district(tenant),
                    min,
                    high,
                    district.len() + 1,
                )
            }
            None => (
                self.keys.meters(tenant),
                query
                    .after
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |after| format!("({after}")),
                "+".to_owned(),
                0,
            ),
        };
        let last_ts = self.keys.meters_last_ts(tenant);
        let search = query.search.clone().unwrap_or_default();
        let before = query
            .silent_before_ms
            .map_or_else(String::new, |ms| ms.to_string());
        // The page and one more, to know whether a next page exists.
        let wanted_total = query.limit.saturating_add(1);
        let mut views: Vec<MeterView> = Vec::new();
        loop {
            let wanted = (wanted_total - views.len()).min(PAGE_MATCHES_PER_CALL);
            let reply: Vec<String> = self.call(|mut connection| {
                let (index, last_ts, min, max) = (&index, &last_ts, &min, &max);
                let (search, before) = (&search, &before);
                async move {
                    redis::cmd("EVAL")
                        .arg(scripts::PAGE_METERS)
                        .arg(2)
                        .arg(index)
                        .arg(last_ts)
                        .arg(min)
                        .arg(max)
                        .arg(strip)
                        .arg(search)
                        .arg(before)
                        .arg(wanted)
                        .arg(PAGE_SCAN_BUDGET)
                        .query_async(&mut connection)
                        .await
                }
            })?;
            let [exhausted, cursor, ids @ ..] = reply.as_slice() else {
                return Err(CacheError(format!(
                    "{index}: the page script answered {reply:?}, not a cursor and ids"
                )));
            };
            views.extend(self.matching_views(tenant, query, ids)?);
            if views.len() >= wanted_total || exhausted == "1" || cursor.is_empty() {
                break;
            }
            min = format!("({cursor}");
        }
        let next = if views.len() > query.limit {
            views.truncate(query.limit);
            views.last().map(|view| view.meter.clone())
        } else {
            None
        };
        Ok(MeterPage {
            meters: views,
            next,
        })
    }

    fn summary(&self, tenant: &str) -> Result<Option<TenantSummary>, CacheError> {
        if !is_valid_id(tenant.as_bytes()) {
            return Ok(None);
        }
        let key = self.keys.summary(tenant);
        let hash: HashMap<String, String> = self.call(|mut connection| {
            let key = &key;
            async move { connection.hgetall(key).await }
        })?;
        codec::parse_summary(&key, tenant, &hash)
    }

    /// Fetches the keys of every window in the range, capped to its newest
    /// [`keys::max_read_span_ms`], in one pipeline; missing keys are skipped.
    fn district_usage(
        &self,
        tenant: &str,
        district: &str,
        resolution: Resolution,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<DistrictUsage>, CacheError> {
        if !keys::ids_are_valid(&[tenant, district]) {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys::read_stamps(resolution, from_ms, to_ms)
            .iter()
            .map(|stamp| {
                self.keys
                    .district_stamped(tenant, district, resolution, stamp)
            })
            .collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let hashes = self.hashes(&names)?;
        let mut rows = Vec::new();
        for (name, hash) in names.iter().zip(&hashes) {
            if let Some(row) = codec::parse_district(name, tenant, district, resolution, hash)?
                && keys::in_read_range(resolution, row.start_ms, from_ms, to_ms)
            {
                rows.push(row);
            }
        }
        rows.sort_by_key(|row| row.start_ms);
        Ok(rows)
    }

    /// Reads the whole day's ZSET (a top-N list, N small) and orders it like
    /// `TopConsumers` — largest first, ties by meter id — before cutting to `limit`:
    /// `ZREVRANGE` alone would break ties the other way.
    fn top_consumers(
        &self,
        tenant: &str,
        day: &str,
        limit: usize,
    ) -> Result<Vec<TopEntry>, CacheError> {
        let Some(stamp) = keys::day_label_stamp(day) else {
            return Err(CacheError(format!(
                "day {day:?} must be a date as yyyy-mm-dd (the tenant's local day)"
            )));
        };
        if limit == 0 || !is_valid_id(tenant.as_bytes()) {
            return Ok(Vec::new());
        }
        let key = self.keys.top(tenant, &stamp);
        let scored: Vec<(String, f64)> = self.call(|mut connection| {
            let key = &key;
            async move { connection.zrevrange_withscores(key, 0, -1).await }
        })?;
        let mut entries = scored
            .into_iter()
            .map(|(meter, score)| {
                codec::score_litres(&key, &meter, score).map(|usage_l| TopEntry { meter, usage_l })
            })
            .collect::<Result<Vec<_>, _>>()?;
        sort_top(&mut entries);
        entries.truncate(limit);
        Ok(entries)
    }

    fn open_alerts(&self, tenant: &str) -> Result<Vec<AlertEvent>, CacheError> {
        if !is_valid_id(tenant.as_bytes()) {
            return Ok(Vec::new());
        }
        let key = self.keys.alerts_open(tenant);
        let hash: HashMap<String, String> = self.call(|mut connection| {
            let key = &key;
            async move { connection.hgetall(key).await }
        })?;
        let mut alerts = hash
            .iter()
            .map(|(field, json)| codec::parse_alert_json(&key, field, tenant, json))
            .collect::<Result<Vec<_>, _>>()?;
        sort_open_alerts(&mut alerts);
        Ok(alerts)
    }

    fn recent_alerts(&self, tenant: &str, limit: usize) -> Result<Vec<AlertEvent>, CacheError> {
        if limit == 0 || !is_valid_id(tenant.as_bytes()) {
            return Ok(Vec::new());
        }
        let key = self.keys.alerts(tenant);
        let entries: Vec<StreamEntry> = self.call(|mut connection| {
            let key = &key;
            async move {
                redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut connection)
                    .await
            }
        })?;
        entries
            .iter()
            .map(|(id, pairs)| codec::parse_alert_entry(&key, id, tenant, pairs))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_validate_and_refuse_unknown_fields() {
        let config = RedisConfig::default();
        config.validate().unwrap();
        assert_eq!(config.meter_ttl_secs, 604_800);
        assert_eq!(config.district_minute_ttl_secs, 172_800);
        assert_eq!(config.district_hour_ttl_secs, 3_024_000);
        assert_eq!(config.district_day_ttl_secs, 34_560_000);
        let back: RedisConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        assert!(toml::from_str::<RedisConfig>("ttl = 5").is_err());
        let bad = RedisConfig {
            key_prefix: "mf:{x}".into(),
            meter_ttl_secs: 0,
            district_day_ttl_secs: u64::MAX,
            alerts_stream_maxlen: 0,
            ..RedisConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().len(), 4);
    }

    #[test]
    fn unreachable_timed_out_and_loading_are_transient_refusals_are_not() {
        use redis::{ErrorKind, ServerErrorKind};
        let io = |kind| RedisError::from(std::io::Error::from(kind));
        assert!(is_transient(&io(std::io::ErrorKind::ConnectionRefused)));
        assert!(is_transient(&io(std::io::ErrorKind::ConnectionReset)));
        assert!(is_transient(&io(std::io::ErrorKind::TimedOut)));
        let server = |kind, what| RedisError::from((ErrorKind::Server(kind), what));
        assert!(is_transient(&server(
            ServerErrorKind::BusyLoading,
            "LOADING"
        )));
        assert!(is_transient(&server(ServerErrorKind::TryAgain, "TRYAGAIN")));
        // A cluster between states (no slot map yet, a failover, a moved slot).
        assert!(is_transient(&server(
            ServerErrorKind::ClusterDown,
            "CLUSTERDOWN"
        )));
        assert!(is_transient(&RedisError::from((
            ErrorKind::ClusterConnectionNotFound,
            "no connection"
        ))));
        assert!(is_transient(&server(ServerErrorKind::Moved, "MOVED")));
        // A pipeline over several slots is a bug of ours, not bad luck.
        assert!(!is_transient(&server(
            ServerErrorKind::CrossSlot,
            "CROSSSLOT"
        )));
        assert!(!is_transient(&server(
            ServerErrorKind::ResponseError,
            "WRONGTYPE"
        )));
        assert!(!is_transient(&server(
            ServerErrorKind::NoScript,
            "NOSCRIPT"
        )));
        assert!(!is_transient(&RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "not a hash"
        ))));
    }

    #[test]
    fn a_service_runtime_must_be_multi_thread() {
        let current_thread = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let refused = RedisCache::open_on(
            current_thread.handle().clone(),
            "redis://127.0.0.1:1",
            RedisConfig::default(),
        );
        assert!(refused.is_err_and(|e| e.0.contains("multi-thread")));
    }

    #[test]
    fn keys_carry_the_tenant_hash_tag() {
        let cache = RedisCache::open("redis://127.0.0.1:1", RedisConfig::default()).unwrap();
        assert_eq!(cache.meter_key("acme", "M-1"), "mf:{acme}:meter:M-1");
        assert_eq!(cache.keys().summary("acme"), "mf:{acme}:summary");
        assert!(RedisCache::open("not a url", RedisConfig::default()).is_err());
    }

    #[test]
    fn a_cluster_url_opens_without_a_cluster_and_splits_applies_per_tenant() {
        let single = RedisCache::open("redis://127.0.0.1:1", RedisConfig::default()).unwrap();
        assert_eq!(single.grouping, Grouping::One);
        let cluster = RedisCache::open(
            "redis+cluster://u:secret@127.0.0.1:1,127.0.0.1:2",
            RedisConfig::default(),
        )
        .unwrap();
        assert_eq!(cluster.grouping, Grouping::PerTenant);
        let refused = RedisCache::open("redis+cluster://u:secret@h", RedisConfig::default());
        assert!(refused.is_err_and(|e| !e.0.contains("secret")));
    }
}
