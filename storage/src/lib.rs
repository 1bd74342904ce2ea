//! Where meterflow keeps things: [`ReadingStore`] backends for the durable tables of
//! DESIGN §5 (readings, meter_state, dead_letters, …) and [`HotCache`] backends for
//! what dashboards read.
//!
//! Both traits are synchronous: the sink stage calls them from its own thread, and a
//! backend whose client is async (ScyllaDB, Redis) drives it on the service's tokio
//! runtime, whose handle it is given (`open_on`; `open` starts a small runtime of the
//! backend's own, for tests and tools). The HTTP API calls them through
//! `spawn_blocking`.
//!
//! Contracts every backend keeps:
//! - [`ReadingStore::write`] returns `Ok` only when everything in the batches is
//!   durable (embedded: journal persisted; ScyllaDB: acknowledged at the configured
//!   consistency). A meter's `meter_state` is written with the readings it reflects.
//! - Writes are idempotent on natural keys: writing the same batch twice leaves the
//!   same rows.
//! - Errors carry a kind the caller branches on ([`StoreError::is_transient`]);
//!   `resilience` says which layer retries what.

pub mod embedded;
pub mod error;
pub mod memory_cache;
pub mod redis_cache;
pub mod resilience;
mod runtime;
pub mod scylla;

pub use error::{CacheError, StoreError};
pub use resilience::BreakerState;

use std::ops::ControlFlow;

use meterflow_model::alert::AlertEvent;
use meterflow_model::analytics::{DistrictUsage, Resolution, TopEntry};
use meterflow_model::billing::BillLine;
use meterflow_model::{
    DeadLetter, ExceptionState, MeterKey, MeterPage, MeterQuery, MeterState, MeterView, Outputs,
    ReadException, SealedBatch, StoredReading, TenantSummary,
};

/// The durable tables.
pub trait ReadingStore: Send + Sync + 'static {
    /// Writes the readings, meter states and dead letters of `batches` durably, in
    /// one atomic write where the backend allows it. Batches of one shard come in
    /// their sealing order and a later batch's state supersedes an earlier one's.
    fn write(&self, batches: &[SealedBatch]) -> Result<(), StoreError>;

    /// The persisted state of a meter, for hydration after a restart.
    fn meter_state(&self, key: &MeterKey) -> Result<Option<MeterState>, StoreError>;

    /// Calls `visit` with every meter that has a persisted state, once each, in no
    /// particular order, until it answers `Break`. After a restart the shards hydrate
    /// them in their idle time, so that the timer rules (no-communication alerts, bill
    /// closing) cover meters silent since before it, not only those heard from again.
    /// Stops at the first error; visiting again from the start is harmless.
    fn stored_meters(
        &self,
        visit: &mut dyn FnMut(MeterKey) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;

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

    /// Persists what processors derived — bills (`bills`), alert episode events
    /// (`alerts`), hourly district rows (`district_hourly`; minute and day rows are
    /// cache-only) and validation exceptions (`exceptions`) — as idempotent upserts on their natural keys (DESIGN §5). Called
    /// after the readings they derive from are durable; the same outputs twice leave
    /// the same rows.
    fn write_outputs(&self, outputs: &Outputs) -> Result<(), StoreError>;

    /// Makes one group durable: the readings, states and dead letters of `batches`
    /// and the durable rows of `outputs` derived from them. Backends that can do it
    /// atomically (embedded: one journal sync) override this; the default writes the
    /// readings first, then the outputs, so outputs never precede their readings.
    fn commit(&self, batches: &[SealedBatch], outputs: &Outputs) -> Result<(), StoreError> {
        self.write(batches)?;
        self.write_outputs(outputs)
    }

    /// The bill of one meter for one period (`yyyy-mm`).
    fn bill(&self, tenant: &str, period: &str, meter: &str)
    -> Result<Option<BillLine>, StoreError>;

    /// A tenant's alert episodes, newest `opened_at` first, at most `limit`; with
    /// `open_only`, only those whose latest event is not `cleared`. One entry per
    /// episode: its latest event.
    fn alerts(
        &self,
        tenant: &str,
        open_only: bool,
        limit: usize,
    ) -> Result<Vec<AlertEvent>, StoreError>;

    /// Hourly usage rows of a district with `from_ms <= start_ms < to_ms`, ascending.
    fn district_hourly(
        &self,
        tenant: &str,
        district: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<DistrictUsage>, StoreError>;

    /// A tenant's validation exceptions in (meter, ts) order, at most `limit`; with
    /// `state`, only those in it. A backend may bound how many rows one call looks
    /// through to find them.
    fn exceptions(
        &self,
        tenant: &str,
        state: Option<ExceptionState>,
        limit: usize,
    ) -> Result<Vec<ReadException>, StoreError>;

    /// The exception of one read, if it has one.
    fn exception(
        &self,
        tenant: &str,
        meter: &str,
        ts: i64,
    ) -> Result<Option<ReadException>, StoreError>;

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

    /// A page of the tenant's cached meters matching `query`, in meter-id order
    /// (the meter list and its silent-meter filter).
    fn meters(&self, tenant: &str, query: &MeterQuery) -> Result<MeterPage, CacheError>;

    /// A tenant's headline numbers (`mf:{t}:summary`).
    fn summary(&self, tenant: &str) -> Result<Option<TenantSummary>, CacheError>;

    /// Cached usage rows of a district at `resolution` (minute or hour) with
    /// `from_ms <= start_ms < to_ms`, ascending.
    fn district_usage(
        &self,
        tenant: &str,
        district: &str,
        resolution: Resolution,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<DistrictUsage>, CacheError>;

    /// The top consumers of a tenant's local day (`yyyy-mm-dd`), largest first.
    fn top_consumers(
        &self,
        tenant: &str,
        day: &str,
        limit: usize,
    ) -> Result<Vec<TopEntry>, CacheError>;

    /// A tenant's open alert episodes (`mf:{t}:alerts:open`), highest priority first.
    fn open_alerts(&self, tenant: &str) -> Result<Vec<AlertEvent>, CacheError>;

    /// The newest alert events of a tenant (`mf:{t}:alerts` stream), newest first.
    fn recent_alerts(&self, tenant: &str, limit: usize) -> Result<Vec<AlertEvent>, CacheError>;

    /// The circuit breaker's state, for backends that have one (for metrics).
    fn breaker_state(&self) -> Option<BreakerState> {
        None
    }
}
