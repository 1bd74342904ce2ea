//! Opens the store and the cache the configuration names (`store.backend`,
//! `cache.backend`). A ScyllaDB cluster that is not reachable yet is waited for —
//! after a power cut the database may come up after meterflow — while a bad setting
//! fails at once with what to change, and so does a cluster that answers but whose
//! keyspace replication can never meet `store.scylla.consistency` (`ScyllaStore::open`
//! reports that as `StoreError::Config`, not `Unavailable`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meterflow_storage::embedded::EmbeddedStore;
use meterflow_storage::memory_cache::MemoryCache;
use meterflow_storage::redis_cache::RedisCache;
use meterflow_storage::scylla::ScyllaStore;
use meterflow_storage::{HotCache, ReadingStore, StoreError};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::config::{CacheBackend, Config, StoreBackend};

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
            Ok(Arc::new(EmbeddedStore::open(dir)?))
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
