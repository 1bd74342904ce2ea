//! Where meterflow keeps things: [`ReadingStore`] backends for the durable tables of
//! DESIGN §5 (readings, meter_state, dead_letters, …) and [`HotCache`] backends for
//! what dashboards read.
//!
//! Both traits are synchronous: the sink stage calls them from its own thread, and a
//! backend whose client is async (ScyllaDB, Redis) drives it on a runtime it owns. The
//! HTTP API calls them through `spawn_blocking`.
//!
//! Contracts every backend keeps:
//! - [`ReadingStore::write`] returns `Ok` only when everything in the batches is
//!   durable (embedded: journal persisted; ScyllaDB: acknowledged at the configured
//!   consistency). A meter's `meter_state` is written with the readings it reflects.
//! - Writes are idempotent on natural keys: writing the same batch twice leaves the
//!   same rows.
//! - Errors carry a kind the caller branches on ([`StoreError::is_retryable`]).

pub mod embedded;
pub mod error;
pub mod memory_cache;
pub mod redis_cache;
pub mod resilience;
pub mod scylla;

pub use error::{CacheError, StoreError};
pub use resilience::BreakerState;

use meterflow_model::{
    DeadLetter, MeterKey, MeterState, MeterView, Outputs, SealedBatch, StoredReading,
};

/// The durable tables.
pub trait ReadingStore: Send + Sync + 'static {
    /// Writes the readings, meter states and dead letters of `batches` durably, in
    /// one atomic write where the backend allows it. Batches of one shard come in
    /// their sealing order and a later batch's state supersedes an earlier one's.
    fn write(&self, batches: &[SealedBatch]) -> Result<(), StoreError>;

    /// The persisted state of a meter, for hydration after a restart.
    fn meter_state(&self, key: &MeterKey) -> Result<Option<MeterState>, StoreError>;

    /// Stored readings of a meter with `from_ms <= ts < to_ms`, ascending by `ts`, at
    /// most `limit`.
    fn readings(
        &self,
        key: &MeterKey,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<StoredReading>, StoreError>;

    /// The newest dead letters of a tenant (the tenant string as stored, which may be
    /// `INVALID_TENANT`), newest first, at most `limit`.
    fn dead_letters(&self, tenant: &str, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;

    /// Whether the store can take writes now (for `/readyz`).
    fn is_ready(&self) -> bool;

    /// The circuit breaker's state, for backends that have one (for metrics).
    fn breaker_state(&self) -> Option<BreakerState> {
        None
    }
}

/// The hot cache dashboards read.
pub trait HotCache: Send + Sync + 'static {
    /// Applies what processors computed for one or more sealed batches. Values are
    /// absolute, so applying the same outputs twice is harmless.
    fn apply(&self, outputs: &Outputs) -> Result<(), CacheError>;

    /// The cached view of one meter.
    fn meter(&self, key: &MeterKey) -> Result<Option<MeterView>, CacheError>;

    /// The circuit breaker's state, for backends that have one (for metrics).
    fn breaker_state(&self) -> Option<BreakerState> {
        None
    }
}
