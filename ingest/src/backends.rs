//! Opens the store and the cache the configuration names (`store.backend`,
//! `cache.backend`). A ScyllaDB cluster that is not reachable yet is waited for —
//! after a power cut the database may come up after meterflow — while a bad setting
//! fails at once with what to change, and so does a cluster that answers but whose
//! keyspace replication can never meet `store.scylla.consistency` (`ScyllaStore::open`
//! reports that as `StoreError::Config`, not `Unavailable`).
//!
//! The embedded store gets its retention sweeper here: a thread that deletes rows past
//! `store.*_retention_days` at start and then hourly, and counts them in
//! `meterflow_store_expired_rows_total{table}`. (ScyllaDB expires rows by TTL.)

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meterflow_storage::embedded::EmbeddedStore;
use meterflow_storage::embedded::retention::{Retention, SWEEP_EVERY, spawn_sweeper};
use meterflow_storage::memory_cache::MemoryCache;
use meterflow_storage::redis_cache::RedisCache;
use meterflow_storage::scylla::ScyllaStore;
use meterflow_storage::{HotCache, ReadingStore, StoreError};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::config::{CacheBackend, Config, StoreBackend};
use crate::metrics::PipelineMetrics;

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

/// Longest pause between attempts to reach a ScyllaDB cluster at start.
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(10);

/// Opens the configured store. Blocking: call it off the async workers. The ScyllaDB
/// client runs on `runtime` (the service's; a multi-thread runtime).
pub fn open_store(config: &Config, runtime: &Handle) -> anyhow::Result<Arc<dyn ReadingStore>> {
    match config.store.parse_backend().map_err(anyhow::Error::msg)? {
        StoreBackend::Embedded => {
            let dir = &config.store.data_dir;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the data directory {}", dir.display()))?;
            let store = Arc::new(EmbeddedStore::open(dir)?);
            start_retention(&store, config.store.retention())?;
            Ok(store)
        }
        StoreBackend::Scylla {
            contact_points,
            keyspace,
        } => {
            let mut delay = Duration::from_millis(500);
            loop {
                match ScyllaStore::open_on(
                    runtime.clone(),
                    &contact_points,
                    &keyspace,
                    config.store.scylla.clone(),
                ) {
                    Ok(store) => {
                        info!(?contact_points, keyspace, "connected to ScyllaDB");
                        return Ok(Arc::new(store));
                    }
                    Err(e @ StoreError::Unavailable(_)) => {
                        warn!(error = %e, retry_in = ?delay, "ScyllaDB not reachable yet; waiting for it");
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(CONNECT_RETRY_MAX);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// Opens the configured cache. Redis connects lazily: a Redis that is down is not a
/// start-up error (the pipeline stores and acks without it).
pub fn open_cache(config: &Config) -> anyhow::Result<Arc<dyn HotCache>> {
    match config.cache.parse_backend().map_err(anyhow::Error::msg)? {
        CacheBackend::Memory => Ok(Arc::new(MemoryCache::default())),
        CacheBackend::Redis { url } => Ok(Arc::new(RedisCache::open(
            &url,
            config.cache.redis.clone(),
        )?)),
    }
}
