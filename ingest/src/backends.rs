//! Opens the store and the cache the configuration names (`store.backend`,
//! `cache.backend`), their async clients on the service's tokio runtime (one runtime
//! per process: the backends start none of their own). A ScyllaDB cluster that is not
//! reachable yet is waited for — after a power cut the database may come up after
//! meterflow — by retrying the whole open with backon, paced by `store.scylla.retry`,
//! while its error is transient; a bad setting fails at once with what to change, and
//! so does a cluster that answers but whose keyspace replication can never meet
//! `store.scylla.consistency` (`ScyllaStore::open_on` reports that as
//! `StoreError::Config`, not `Unavailable`).
//!
//! The embedded store gets its retention sweeper here: a thread that deletes rows past
//! `store.*_retention_days` at start and then hourly, and counts them in
//! `meterflow_store_expired_rows_total{table}`. (ScyllaDB expires rows by TTL.)

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backon::BlockingRetryable;
use meterflow_storage::embedded::EmbeddedStore;
use meterflow_storage::embedded::retention::{Retention, SWEEP_EVERY, spawn_sweeper};
use meterflow_storage::memory_cache::MemoryCache;
use meterflow_storage::redis_cache::RedisCache;
use meterflow_storage::resilience::RetryConfig;
use meterflow_storage::scylla::ScyllaStore;
use meterflow_storage::{HotCache, ReadingStore, StoreError};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::config::{CacheBackend, Config, StoreBackend};
use crate::metrics::PipelineMetrics;

/// Runs the embedded store's flush and compaction threads at nice value `nice`
/// (`embedded/background.rs`); at 0 they keep the pipeline's priority. A failure
/// costs only the ack tail it was for, so it is a warning.
fn lower_background_priority(store: &EmbeddedStore, nice: u8) {
    if nice == 0 {
        return;
    }
    match store.lower_background_priority(i32::from(nice)) {
        Ok(0) if cfg!(target_os = "linux") => {
            warn!("no store background thread found to run at a lower priority")
        }
        Ok(threads) => info!(
            threads,
            nice, "store background threads at a lower priority"
        ),
        Err(error) => warn!(%error, nice, "could not lower the store background threads' priority"),
    }
}

/// Starts the embedded store's retention sweeper, which counts the rows it expires per
/// table; none when every table keeps its rows forever. The sweeper holds the store
/// only while sweeping, so it never keeps a stopped service's store open.
fn start_retention(store: &Arc<EmbeddedStore>, retention: Retention) -> anyhow::Result<()> {
    if retention.keeps_everything() {
        return Ok(());
    }
    let counters = PipelineMetrics::store_expired();
    spawn_sweeper(
        Arc::downgrade(store),
        retention,
        SWEEP_EVERY,
        now_ms,
        move |report| {
            for (table, rows) in &report.expired {
                if let Some((_, counter)) = counters.iter().find(|(name, _)| name == table) {
                    counter.increment(*rows);
                }
            }
        },
    )
    .context("starting the retention sweeper thread")?;
    Ok(())
}

/// Opens the configured store. Blocking: call it off the async workers. The ScyllaDB
/// client runs on `runtime` (the service's; a multi-thread runtime).
///
/// With a `contributor` (see [`contributor`]), ScyllaDB's district hours are written
/// as that contributor's share; the embedded store has a single writer and none.
pub fn open_store(
    config: &Config,
    runtime: &Handle,
    contributor: Option<&str>,
) -> anyhow::Result<Arc<dyn ReadingStore>> {
    match config.store.parse_backend().map_err(anyhow::Error::msg)? {
        StoreBackend::Embedded => {
            let dir = &config.store.data_dir;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the data directory {}", dir.display()))?;
            let store = Arc::new(EmbeddedStore::open(dir)?);
            lower_background_priority(&store, config.store.background_nice);
            start_retention(&store, config.store.retention())?;
            Ok(store)
        }
        StoreBackend::Scylla {
            contact_points,
            keyspace,
        } => {
            let mut waits = 0u32;
            let open = || {
                ScyllaStore::open_on(
                    runtime.clone(),
                    &contact_points,
                    &keyspace,
                    config.store.scylla.clone(),
                )
            };
            let store = open
                .retry(config.store.scylla.retry.backoff().without_max_times())
                .sleep(std::thread::sleep)
                .when(StoreError::is_transient)
                .notify(|error, delay: Duration| {
                    waits += 1;
                    if waits.is_power_of_two() {
                        warn!(%error, waits, retry_in_ms = delay.as_millis() as u64, "ScyllaDB not reachable yet; waiting for it");
                    }
                })
                .call()?;
            info!(?contact_points, keyspace, "connected to ScyllaDB");
            Ok(Arc::new(match contributor {
                Some(contributor) => store.with_contributor(contributor),
                None => store,
            }))
        }
    }
}

/// How the sink retries a group commit that failed transiently: `store.scylla.retry`
/// with ScyllaDB; the defaults with the embedded store, which has no retry settings
/// of its own (a local disk that fails is retried at the same pace).
pub fn commit_retry(config: &Config) -> RetryConfig {
    match config.store.parse_backend() {
        Ok(StoreBackend::Scylla { .. }) => config.store.scylla.retry.clone(),
        _ => RetryConfig::default(),
    }
}

/// Opens the configured cache, a Redis client on `runtime` (the service's). Redis
/// connects lazily: a Redis that is down is not a start-up error (the pipeline stores
/// and acks without it).
///
/// With a `contributor`, Redis's district rows, top lists and summaries are written
/// as that contributor's share and each key holds the merge of every contributor's;
/// the in-process cache holds this process's own.
pub fn open_cache(
    config: &Config,
    runtime: &Handle,
    contributor: Option<&str>,
) -> anyhow::Result<Arc<dyn HotCache>> {
    match config.cache.parse_backend().map_err(anyhow::Error::msg)? {
        CacheBackend::Memory => Ok(Arc::new(MemoryCache::default())),
        CacheBackend::Redis { url } => {
            let cache = RedisCache::open_on(runtime.clone(), &url, config.cache.redis.clone())?;
            Ok(Arc::new(match contributor {
                Some(contributor) => cache.with_contributor(contributor),
                None => cache,
            }))
        }
    }
}

/// The name this run writes its share of the aggregates under, when several
/// processes count disjoint meters (a mode that consumes the log, DESIGN §9): a
/// random id, new at every start, so a restarted processor's share starts beside
/// the one its earlier run left (which keeps what that run counted). None when this
/// process owns every meter.
pub fn contributor(config: &Config) -> Option<String> {
    config
        .mode
        .consumes_log()
        .then(|| format!("{:016x}", rand::random::<u64>()))
}
