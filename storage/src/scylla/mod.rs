//! The ScyllaDB backend of [`ReadingStore`] (DESIGN §5), also run against Apache
//! Cassandra 5 in tests: same CQL, same schema ([`schema`] has the tables and the
//! column encodings).
//!
//! Writing a set of sealed batches ([`ScyllaStore::write`]):
//! - rows are grouped per partition: a meter's readings per UTC day (deduplicated on
//!   `ts`, the later batch winning), dead letters per tenant and day;
//! - each partition's rows go out as unlogged batches of at most `max_batch_rows`
//!   (an unlogged batch never spans partitions: that is what makes it cheap and
//!   atomic per partition), alongside one upsert into the matching `*_days` index —
//!   for `reading_days` only when this process did not write that row within the
//!   last hour (`day_index`, whose TTL keeps the row alive past every reading);
//! - a meter's `meter_state` is written only after every readings statement of that
//!   meter succeeded, so a crash in between leaves readings without the state that
//!   reflects them (harmless: they are rewritten on resend), never the reverse;
//! - meters and dead-letter partitions proceed concurrently, with at most
//!   `max_in_flight` statements in flight for the whole store;
//! - a rewritten row replaces the old one whole: an absent optional value (`temp`,
//!   `interval_l`, a state's `last_seq`) is written as `null`, not left unset, so an
//!   estimated reading replaced by the actual one (or back) keeps nothing stale. The
//!   price is a small cell tombstone per absent value, dropped with its TTL'd SSTable;
//! - the rows a batch withdraws (`MeterBatch::withdrawn`) are deleted in the same
//!   pass, per partition in unlogged batches of their own, at the same write time
//!   as the meter's rows, so a stale write of them cannot bring them back and a
//!   later batch that makes one again stores it;
//! - every statement is prepared and marked idempotent (upserts and deletes on
//!   natural keys),
//!   and sent once: neither the store nor the driver retries it (the driver's retry
//!   policy is `FallthroughRetryPolicy`). The caller retries the whole operation —
//!   the sink a group commit, while its error is transient (`resilience` has the
//!   table of who retries what) — so attempts never multiply across layers;
//! - `write` returns `Ok` only when every statement was acknowledged at the
//!   configured consistency; on the first failure it returns that error (statements
//!   already sent may have landed: rewriting the same batches is harmless).
//!
//! A meter's readings, state row and bills are written at its state's version
//! (`write_order`: `USING TIMESTAMP`, a value that rises with every uplink or order
//! the state took in), so the write of the state further along the meter's input
//! wins, whichever processor sent it, whenever it landed and whichever coordinators
//! applied it — a stalled former owner's late write replaces nothing newer. Other
//! rows take the driver's monotonic client-side generator; alert episodes carry the
//! event's own time (see `outputs`).
//!
//! [`ScyllaStore::write_outputs`](ReadingStore::write_outputs) stores bills, alert
//! episodes and hourly district rows the same way — grouped per partition, unlogged
//! batches within one partition plus the `*_days` index upsert, idempotent prepared
//! upserts, the same in-flight bound, one attempt and the breaker; the `outputs`
//! module has the details.
//!
//! A [`CircuitBreaker`] guards the whole store: each `write` or read is one operation;
//! when `failure_threshold` of them in a row failed transiently, calls fail at once
//! with [`StoreError::Unavailable`] until a probe succeeds. Its state is exposed by
//! [`ScyllaStore::breaker_state`] for metrics.
//!
//! The driver is async; [`ReadingStore`] is synchronous. The driver's connection
//! tasks run on a multi-thread tokio runtime — the service's, whose handle
//! [`ScyllaStore::open_on`] takes, or, for tests and tools without one, a small one
//! [`ScyllaStore::open`] starts — and each trait method `block_on`s that runtime's
//! handle. So the methods must be called from plain threads or `spawn_blocking`, never
//! from inside an async task: tokio panics on a `block_on` nested in a runtime worker.

mod config;
mod day_index;
mod errors;
mod exceptions;
mod migration_lease;
mod outputs;
pub mod schema;
mod write_order;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use ::scylla::client::execution_profile::ExecutionProfile;
use ::scylla::client::session::Session;
use ::scylla::client::session_builder::SessionBuilder;
use ::scylla::policies::retry::FallthroughRetryPolicy;
use ::scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use ::scylla::serialize::row::SerializeRow;
use ::scylla::statement::batch::{Batch, BatchType};
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::value::{CqlDate, CqlTimestamp, MaybeUnset};
use ::scylla::{DeserializeRow, SerializeRow};
use futures_util::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use meterflow_model::alert::AlertEvent;
use meterflow_model::analytics::DistrictUsage;
use meterflow_model::billing::BillLine;
use meterflow_model::codec::binary::{decode_record, encode_record};
use meterflow_model::time::day_of;
use meterflow_model::{
    DeadLetter, ExceptionState, MeterKey, MeterState, Outputs, Quality, ReadException, Reading,
    Reject, SealedBatch, StoredReading,
};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

pub use self::config::{Consistency, ScyllaConfig};
use crate::ReadingStore;
use crate::error::StoreError;
use crate::resilience::{BreakerPermit, BreakerState, CircuitBreaker};
use crate::runtime::ClientRuntime;
use day_index::{DayIndexTtl, RecentDays};
use write_order::{hydrated_version, write_time};

/// Worker threads of the runtime [`ScyllaStore::open`] starts (tests and tools; the
/// service's store runs on the service's runtime). The driver's work is
/// socket I/O and (de)serialisation, so one thread would do; the second keeps one slow
/// poll (a large result page) from stalling every connection's heartbeat.
const RUNTIME_WORKER_THREADS: usize = 2;

/// Rows per page of the read queries: a day of per-minute readings (1,440) fits in
/// two pages, and a page stays well under a megabyte.
const READ_PAGE_SIZE: i32 = 1_000;

/// The CQL `date` of the Unix epoch: `date` is an unsigned day count centred on 2^31.
const CQL_DATE_EPOCH: i64 = 1 << 31;

/// A `readings` row as bound to `insert_reading`. Like every row struct here, its
/// fields are matched to the statement's bind markers by name (the driver's default
/// `match_by_name` flavor) and type-checked when a row is bound, so a field bound to
/// the wrong column fails the statement instead of storing a value in it.
#[derive(SerializeRow)]
struct ReadingRow<'a> {
    tenant: &'a str,
    meter: &'a str,
    day: CqlDate,
    #[scylla(flatten)]
    columns: ReadingColumns,
    /// The `USING TTL ?` marker, which Cassandra and ScyllaDB name `[ttl]`.
    #[scylla(rename = "[ttl]")]
    ttl: i32,
    /// The `AND TIMESTAMP ?` marker: the meter state's version (µs scale), see
    /// [`MeterState::version`].
    #[scylla(rename = "[timestamp]")]
    write_timestamp: MaybeUnset<i64>,
}

/// A reading's own columns: written inside a [`ReadingRow`] and returned by
/// `select_readings`. [`ReadingColumns::of`] and [`ReadingColumns::decode`] hold
/// their encoding.
#[derive(Clone, Copy, SerializeRow, DeserializeRow)]
struct ReadingColumns {
    ts: CqlTimestamp,
    reg: i64,
    rev: i64,
    flow: i64,
    temp: Option<i16>,
    interval_l: Option<i64>,
    /// [`Quality::code`].
    quality: i8,
    seq: i64,
    received_at: CqlTimestamp,
}

/// A `readings` row's key as bound to `delete_reading`: a row a batch withdraws
/// ([`MeterBatch::withdrawn`](meterflow_model::MeterBatch::withdrawn)), deleted at
/// the meter state's version like the rows written with it.
#[derive(SerializeRow)]
struct ReadingKeyRow<'a> {
    tenant: &'a str,
    meter: &'a str,
    day: CqlDate,
    ts: CqlTimestamp,
    #[scylla(rename = "[timestamp]")]
    write_timestamp: MaybeUnset<i64>,
}

/// A `reading_days` row as bound to `insert_reading_day`.
#[derive(SerializeRow)]
struct MeterDayRow<'a> {
    tenant: &'a str,
    meter: &'a str,
    day: CqlDate,
    #[scylla(rename = "[ttl]")]
    ttl: i32,
}

/// A row of a day index keyed by tenant alone (`dead_letter_days`, `alert_days`), as
/// bound to its insert.
#[derive(SerializeRow)]
struct TenantDayRow<'a> {
    tenant: &'a str,
    day: CqlDate,
    #[scylla(rename = "[ttl]")]
    ttl: i32,
}

/// A `meter_state` row as bound to `insert_state`.
#[derive(SerializeRow)]
struct StateRow<'a> {
    tenant: &'a str,
    meter: &'a str,
    /// The state record (`meterflow_model::codec::binary`).
    state: &'a [u8],
    last_seq: Option<i64>,
    last_ts: Option<CqlTimestamp>,
    /// The `USING TIMESTAMP ?` marker: the state's version.
    #[scylla(rename = "[timestamp]")]
    write_timestamp: MaybeUnset<i64>,
}

/// A `dead_letters` row as bound to `insert_dead_letter` (borrowing the letter; what
/// comes back is [`DeadLetterColumns`]).
#[derive(SerializeRow)]
struct DeadLetterRow<'a> {
    tenant: &'a str,
    day: CqlDate,
    received_at: CqlTimestamp,
    id: i64,
    topic: &'a str,
    payload: &'a [u8],
    /// [`Reject::code`].
    reason: &'static str,
    correlation_id: &'a str,
    #[scylla(rename = "[ttl]")]
    ttl: i32,
}

/// What `select_dead_letters` returns.
#[derive(DeserializeRow)]
struct DeadLetterColumns {
    received_at: CqlTimestamp,
    id: i64,
    topic: String,
    payload: Vec<u8>,
    reason: String,
    correlation_id: String,
}

type UnitFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// Awaits every unit; the first error drops (cancels) the rest.
async fn drain(mut statements: FuturesUnordered<UnitFuture<'_>>) -> Result<(), StoreError> {
    while let Some(result) = statements.next().await {
        result?;
    }
    Ok(())
}

/// The store's prepared statements, prepared once at open.
struct Statements {
    insert_reading: PreparedStatement,
    delete_reading: PreparedStatement,
    insert_reading_day: PreparedStatement,
    insert_state: PreparedStatement,
    insert_dead_letter: PreparedStatement,
    insert_dead_letter_day: PreparedStatement,
    select_state: PreparedStatement,
    select_state_keys: PreparedStatement,
    select_reading_days: PreparedStatement,
    select_readings: PreparedStatement,
    select_dead_letter_days: PreparedStatement,
    select_dead_letters: PreparedStatement,
    /// Those of `bills`, `alerts` and `district_hourly`.
    outputs: outputs::OutputStatements,
    /// Those of `exceptions`.
    exceptions: exceptions::ExceptionStatements,
}

/// Prepares one statement of the store. Every statement here is an upsert, a delete or a
/// read on natural keys, so all are idempotent: a caller may send an operation again.
async fn prepare_statement(
    session: &Session,
    cql: String,
) -> Result<PreparedStatement, StoreError> {
    let mut statement = session
        .prepare(cql.as_str())
        .await
        .map_err(|e| errors::prepare_error(&format!("preparing `{cql}` failed"), &e))?;
    statement.set_is_idempotent(true);
    statement.set_page_size(READ_PAGE_SIZE);
    Ok(statement)
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let prepare = |cql: String| prepare_statement(session, cql);
        Ok(Self {
            insert_reading: prepare(format!(
                "INSERT INTO {ks}.readings (tenant, meter, day, ts, reg, rev, flow, temp, \
                 interval_l, quality, seq, received_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
            ))
            .await?,
            delete_reading: prepare(format!(
                "DELETE FROM {ks}.readings USING TIMESTAMP ? \
                 WHERE tenant = ? AND meter = ? AND day = ? AND ts = ?"
            ))
            .await?,
            insert_reading_day: prepare(format!(
                "INSERT INTO {ks}.reading_days (tenant, meter, day) VALUES (?, ?, ?) USING TTL ?"
            ))
            .await?,
            insert_state: prepare(format!(
                "INSERT INTO {ks}.meter_state (tenant, meter, state, last_seq, last_ts) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            insert_dead_letter: prepare(format!(
                "INSERT INTO {ks}.dead_letters (tenant, day, received_at, id, topic, payload, \
                 reason, correlation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
            insert_dead_letter_day: prepare(format!(
                "INSERT INTO {ks}.dead_letter_days (tenant, day) VALUES (?, ?) USING TTL ?"
            ))
            .await?,
            select_state: prepare(format!(
                "SELECT state, WRITETIME(state) AS written FROM {ks}.meter_state \
                 WHERE tenant = ? AND meter = ?"
            ))
            .await?,
            select_state_keys: prepare(format!(
                "SELECT DISTINCT tenant, meter FROM {ks}.meter_state"
            ))
            .await?,
            select_reading_days: prepare(format!(
                "SELECT day FROM {ks}.reading_days \
                 WHERE tenant = ? AND meter = ? AND day >= ? AND day <= ?"
            ))
            .await?,
            select_readings: prepare(format!(
                "SELECT ts, reg, rev, flow, temp, interval_l, quality, seq, received_at \
                 FROM {ks}.readings \
                 WHERE tenant = ? AND meter = ? AND day = ? AND ts >= ? AND ts < ? LIMIT ?"
            ))
            .await?,
            select_dead_letter_days: prepare(format!(
                "SELECT day FROM {ks}.dead_letter_days WHERE tenant = ?"
            ))
            .await?,
            select_dead_letters: prepare(format!(
                "SELECT received_at, id, topic, payload, reason, correlation_id \
                 FROM {ks}.dead_letters WHERE tenant = ? AND day = ? LIMIT ?"
            ))
            .await?,
            outputs: outputs::OutputStatements::prepare(session, ks).await?,
            exceptions: exceptions::ExceptionStatements::prepare(session, ks).await?,
        })
    }
}

/// The async half of the store: everything but the runtime.
struct Core {
    session: Session,
    keyspace: String,
    config: ScyllaConfig,
    statements: Statements,
    /// Permits for statements in flight (`config.max_in_flight`).
    in_flight: Semaphore,
    breaker: CircuitBreaker,
    /// Who this store writes district hours for, when several processes write them
    /// ([`ScyllaStore::with_contributor`]).
    contributor: Option<String>,
    /// The `reading_days` rows written lately, which later writes of the same day
    /// need not upsert again (`day_index`).
    recent_days: Mutex<RecentDays>,
    /// The TTL `reading_days` rows are written with (`DayIndexTtl`).
    reading_days_ttl_secs: i32,
}

/// [`ReadingStore`] on ScyllaDB or Apache Cassandra.
pub struct ScyllaStore {
    core: Core,
    /// The runtime the driver's tasks run on and every call `block_on`s.
    runtime: ClientRuntime,
}

impl ScyllaStore {
    /// Connects to the cluster through `contact_points` (`host:port`, e.g.
    /// `127.0.0.1:9042`), creates `keyspace` if missing, applies pending schema
    /// migrations and prepares the statements.
    ///
    /// `keyspace` must be lowercase `[a-z][a-z0-9_]*`, at most 48 characters.
    /// A new keyspace gets `replication_factor` capped by the nodes of the datacenter
    /// (see [`ScyllaConfig::replication_factor`]).
    ///
    /// An unreachable cluster is [`StoreError::Unavailable`] (try again later); a bad
    /// config or keyspace name, or an existing keyspace whose replication can never
    /// meet `consistency` on the cluster's nodes, is [`StoreError::Config`]. Opening
    /// is one attempt: a caller that waits for the cluster retries it (the service
    /// does, see `ingest/src/backends.rs`).
    ///
    /// The driver runs on the service's runtime, `runtime`: a multi-thread runtime
    /// that outlives the store's use (a current-thread one drives its I/O only inside
    /// its own `block_on`, so calls from other threads would stall:
    /// [`StoreError::Config`]). Call it from a plain thread or `spawn_blocking`.
    pub fn open_on<S: AsRef<str>>(
        runtime: Handle,
        contact_points: &[S],
        keyspace: &str,
        config: ScyllaConfig,
    ) -> Result<Self, StoreError> {
        let runtime = ClientRuntime::shared(runtime, "scylla").map_err(StoreError::Config)?;
        check_open(contact_points, keyspace, &config)?;
        Self::connect(runtime, contact_points, keyspace, config)
    }

    /// [`ScyllaStore::open_on`] for callers without a tokio runtime (tests, tools):
    /// the store starts one of its own ([`RUNTIME_WORKER_THREADS`] workers named
    /// `mf-scylla`), shut down when the store is dropped. A service must not use it:
    /// it would run a second runtime beside its own.
    pub fn open<S: AsRef<str>>(
        contact_points: &[S],
        keyspace: &str,
        config: ScyllaConfig,
    ) -> Result<Self, StoreError> {
        check_open(contact_points, keyspace, &config)?;
        let runtime = ClientRuntime::own("mf-scylla", RUNTIME_WORKER_THREADS)
            .map_err(|e| StoreError::Config(format!("cannot start the ScyllaDB runtime: {e}")))?;
        Self::connect(runtime, contact_points, keyspace, config)
    }

    fn connect<S: AsRef<str>>(
        runtime: ClientRuntime,
        contact_points: &[S],
        keyspace: &str,
        config: ScyllaConfig,
    ) -> Result<Self, StoreError> {
        let nodes: Vec<String> = contact_points
            .iter()
            .map(|c| c.as_ref().to_owned())
            .collect();
        let core = runtime.block_on(Core::connect(nodes, keyspace, config))?;
        Ok(Self { core, runtime })
    }

    /// The breaker's state, for metrics (`closed`, `open`, `half_open`).
    pub fn breaker_state(&self) -> BreakerState {
        self.core.breaker.state()
    }

    /// This store as one of several writers of district hours (distributed mode's
    /// processors, each counting the meters it owns): its hours are written to
    /// `district_hourly_shares` as `contributor`'s share, and reads merge every
    /// share (schema docs). `contributor` names one run of one process (an id no
    /// other run uses).
    pub fn with_contributor(mut self, contributor: &str) -> Self {
        self.core.contributor = Some(contributor.to_owned());
        self
    }

    pub fn keyspace(&self) -> &str {
        &self.core.keyspace
    }

    pub fn config(&self) -> &ScyllaConfig {
        &self.core.config
    }

    /// Schema versions recorded in `schema_migrations`.
    pub fn applied_migrations(&self) -> Result<Vec<i32>, StoreError> {
        let core = &self.core;
        self.block_on(async {
            schema::applied_versions(&core.session, &core.keyspace)
                .await
                .map(|set| set.into_iter().collect())
        })
    }

    /// Applies pending migrations again (a no-op when the schema is current) and
    /// returns the versions it applied. `open` already does this.
    pub fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        let core = &self.core;
        self.block_on(schema::migrate(&core.session, &core.keyspace, &core.config))
    }

    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        self.runtime.block_on(future)
    }

    /// Writes what `plan` holds of the outputs (nothing, without touching the
    /// breaker, when it holds none).
    fn write_planned(&self, plan: &outputs::OutputsPlan<'_>) -> Result<(), StoreError> {
        if plan.is_empty() {
            return Ok(());
        }
        self.block_on(self.core.guarded(self.core.write_outputs(plan)))
    }
}

/// Every problem of `open`'s arguments at once, before any connection is made.
fn check_open<S: AsRef<str>>(
    contact_points: &[S],
    keyspace: &str,
    config: &ScyllaConfig,
) -> Result<(), StoreError> {
    let mut problems = config.validate().err().unwrap_or_default();
    if contact_points.is_empty() {
        problems.push("scylla: at least one contact point (host:port) is needed".into());
    }
    if !schema::is_valid_keyspace(keyspace) {
        problems.push(format!(
            "scylla: keyspace {keyspace:?} must be lowercase [a-z][a-z0-9_]*, at most 48 characters"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Config(problems.join("; ")))
    }
}

impl ReadingStore for ScyllaStore {
    fn breaker_state(&self) -> Option<BreakerState> {
        Some(self.core.breaker.state())
    }

    fn write(&self, batches: &[SealedBatch]) -> Result<(), StoreError> {
        if batches.iter().all(SealedBatch::is_empty) {
            return Ok(());
        }
        self.block_on(self.core.guarded(self.core.write(batches)))
    }

    fn meter_state(&self, key: &MeterKey) -> Result<Option<MeterState>, StoreError> {
        self.block_on(self.core.guarded(self.core.meter_state(key)))
    }

    fn stored_meters(
        &self,
        visit: &mut dyn FnMut(MeterKey) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.block_on(self.core.guarded(self.core.stored_meters(visit)))
    }

    fn readings(
        &self,
        key: &MeterKey,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<StoredReading>, StoreError> {
        if limit == 0 || from_ms >= to_ms {
            return Ok(Vec::new());
        }
        self.block_on(
            self.core
                .guarded(self.core.readings(key, from_ms, to_ms, limit)),
        )
    }

    fn dead_letters(&self, tenant: &str, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.block_on(self.core.guarded(self.core.dead_letters(tenant, limit)))
    }

    fn write_outputs(&self, outputs: &Outputs) -> Result<(), StoreError> {
        self.write_planned(&outputs::plan(outputs, &[]))
    }

    /// As the default (readings first, then outputs), with each bill written at its
    /// meter's state version (`write_order`).
    fn commit(&self, batches: &[SealedBatch], outputs: &Outputs) -> Result<(), StoreError> {
        self.write(batches)?;
        self.write_planned(&outputs::plan(outputs, batches))
    }

    fn bill(
        &self,
        tenant: &str,
        period: &str,
        meter: &str,
    ) -> Result<Option<BillLine>, StoreError> {
        self.block_on(self.core.guarded(self.core.bill(tenant, period, meter)))
    }

    fn exceptions(
        &self,
        tenant: &str,
        state: Option<ExceptionState>,
        limit: usize,
    ) -> Result<Vec<ReadException>, StoreError> {
        self.block_on(
            self.core
                .guarded(self.core.exceptions(tenant, state, limit)),
        )
    }

    fn exception(
        &self,
        tenant: &str,
        meter: &str,
        ts: i64,
    ) -> Result<Option<ReadException>, StoreError> {
        self.block_on(self.core.guarded(self.core.exception(tenant, meter, ts)))
    }

    fn alerts(
        &self,
        tenant: &str,
        open_only: bool,
        limit: usize,
    ) -> Result<Vec<AlertEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.block_on(
            self.core
                .guarded(self.core.alerts(tenant, open_only, limit)),
        )
    }

    fn district_hourly(
        &self,
        tenant: &str,
        district: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<DistrictUsage>, StoreError> {
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        self.block_on(
            self.core
                .guarded(self.core.district_hourly(tenant, district, from_ms, to_ms)),
        )
    }

    fn is_ready(&self) -> bool {
        self.core.breaker.state() != BreakerState::Open
            && self
                .core
                .session
                .get_cluster_state()
                .get_nodes_info()
                .iter()
                .any(|node| node.is_connected())
    }
}

/// One meter's share of a write: readings by day then ts, and its newest state.
struct MeterWrite<'a> {
    key: &'a MeterKey,
    /// Per UTC day, per `ts`: the row to write, or `None` to delete a withdrawn one.
    days: BTreeMap<i64, BTreeMap<i64, Option<&'a StoredReading>>>,
    state: &'a MeterState,
}

/// Dead letters of one `(tenant, day)` partition, by `(received_at, id)`.
type DeadLetterPartition<'a> = BTreeMap<(i64, u64), &'a DeadLetter>;

/// What one `write` sends: per meter, and per dead-letter partition.
struct WritePlan<'a> {
    meters: Vec<MeterWrite<'a>>,
    dead_letters: BTreeMap<(&'a str, i64), DeadLetterPartition<'a>>,
}

/// Groups the batches per partition. Later batches win: a reading's row (or its
/// withdrawal) for a `ts` seen twice, and a meter's state.
fn plan(batches: &[SealedBatch]) -> WritePlan<'_> {
    let mut meters: Vec<MeterWrite<'_>> = Vec::new();
    let mut index: HashMap<&MeterKey, usize> = HashMap::new();
    let mut dead_letters: BTreeMap<(&str, i64), DeadLetterPartition<'_>> = BTreeMap::new();
    for batch in batches {
        for meter in &batch.meters {
            let slot = *index.entry(&meter.key).or_insert_with(|| {
                meters.push(MeterWrite {
                    key: &meter.key,
                    days: BTreeMap::new(),
                    state: &meter.state,
                });
                meters.len() - 1
            });
            let write = &mut meters[slot];
            write.state = &meter.state;
            for stored in &meter.readings {
                write
                    .days
                    .entry(day_of(stored.reading.ts))
                    .or_default()
                    .insert(stored.reading.ts, Some(stored));
            }
            for ts in meter.withdrawn() {
                write.days.entry(day_of(ts)).or_default().insert(ts, None);
            }
        }
        for letter in &batch.dead_letters {
            dead_letters
                .entry((letter.tenant.as_str(), day_of(letter.received_at)))
                .or_default()
                .insert((letter.received_at, letter.id), letter);
        }
    }
    WritePlan {
        meters,
        dead_letters,
    }
}

fn cql_date(day: i64) -> Result<CqlDate, StoreError> {
    u32::try_from(day + CQL_DATE_EPOCH)
        .map(CqlDate)
        .map_err(|_| StoreError::Config(format!("day {day} is outside CQL's date range")))
}

/// `day` clamped into CQL's date range, for range bounds.
fn cql_date_clamped(day: i64) -> CqlDate {
    let clamped = day.clamp(-CQL_DATE_EPOCH, i64::from(u32::MAX) - CQL_DATE_EPOCH);
    CqlDate(u32::try_from(clamped + CQL_DATE_EPOCH).unwrap_or(u32::MAX))
}

/// `limit` as CQL's `int` LIMIT.
fn cql_limit(limit: usize) -> i32 {
    i32::try_from(limit).unwrap_or(i32::MAX)
}

/// A `u64` as the `bigint` holding the same 64 bits (values above `i64::MAX` read
/// as negative in CQL; see `schema`).
fn bigint(value: u64) -> i64 {
    value as i64
}

/// Inverse of [`bigint`].
fn unsigned(value: i64) -> u64 {
    value as u64
}

impl ReadingColumns {
    fn of(stored: &StoredReading) -> Self {
        let r = &stored.reading;
        Self {
            ts: CqlTimestamp(r.ts),
            reg: bigint(r.reg),
            rev: bigint(r.rev),
            flow: i64::from(r.flow),
            temp: r.temp,
            interval_l: stored.interval_l.map(bigint),
            quality: stored.quality.code() as i8,
            seq: bigint(stored.seq),
            received_at: CqlTimestamp(stored.received_at),
        }
    }

    fn decode(self) -> Result<StoredReading, StoreError> {
        let Self {
            ts,
            reg,
            rev,
            flow,
            temp,
            interval_l,
            quality,
            seq,
            received_at,
        } = self;
        let flow = u32::try_from(flow).map_err(|_| {
            StoreError::Corrupt(format!("reading at {}: flow {flow} is not a u32", ts.0))
        })?;
        let quality = u8::try_from(quality)
            .ok()
            .and_then(Quality::from_code)
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "reading at {}: unknown quality code {quality} (written by a newer meterflow?)",
                    ts.0
                ))
            })?;
        Ok(StoredReading {
            reading: Reading {
                ts: ts.0,
                reg: unsigned(reg),
                rev: unsigned(rev),
                flow,
                temp,
            },
            seq: unsigned(seq),
            received_at: received_at.0,
            quality,
            interval_l: interval_l.map(unsigned),
        })
    }
}

fn decode_dead_letter(tenant: &str, columns: DeadLetterColumns) -> Result<DeadLetter, StoreError> {
    let DeadLetterColumns {
        received_at,
        id,
        topic,
        payload,
        reason,
        correlation_id,
    } = columns;
    let reason = Reject::from_code(&reason).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "dead letter {correlation_id}: unknown reason code {reason:?} (written by a newer meterflow?)"
        ))
    })?;
    Ok(DeadLetter {
        tenant: tenant.to_owned(),
        received_at: received_at.0,
        id: unsigned(id),
        topic,
        payload,
        reason,
        correlation_id,
    })
}

impl Core {
    async fn connect(
        contact_points: Vec<String>,
        keyspace: &str,
        config: ScyllaConfig,
    ) -> Result<Self, StoreError> {
        // No driver retries: the caller retries whole operations (module docs).
        let profile = ExecutionProfile::builder()
            .consistency(config.consistency.to_driver())
            .request_timeout(Some(config.request_timeout()))
            .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&contact_points)
            .connection_timeout(config.connect_timeout())
            .default_execution_profile_handle(profile.into_handle())
            .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()));
        if let Some(dc) = &config.local_datacenter {
            builder = builder.prefer_datacenter(dc.clone());
        }
        if let Some(username) = &config.username {
            builder = builder.user(username, config.password.as_deref().unwrap_or(""));
        }
        let session = builder.build().await.map_err(|e| errors::new_session(&e))?;
        let applied = schema::migrate(&session, keyspace, &config).await?;
        if !applied.is_empty() {
            tracing::info!(keyspace, ?applied, "schema migrations applied");
        }
        let statements = Statements::prepare(&session, keyspace).await?;
        tracing::info!(keyspace, nodes = ?contact_points, "scylla store ready");
        let day_index_ttl = DayIndexTtl::for_readings(config.readings_ttl_secs());
        Ok(Self {
            session,
            keyspace: keyspace.to_owned(),
            in_flight: Semaphore::new(config.max_in_flight),
            breaker: CircuitBreaker::new("scylla", config.breaker.clone()),
            config,
            statements,
            contributor: None,
            recent_days: Mutex::new(RecentDays::new(day_index_ttl.refresh, day_index::CAPACITY)),
            reading_days_ttl_secs: day_index_ttl.ttl_secs,
        })
    }

    fn recent_days(&self) -> MutexGuard<'_, RecentDays> {
        self.recent_days
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one store operation behind the breaker.
    async fn guarded<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let permit: BreakerPermit<'_> = self.breaker.acquire().map_err(|open| {
            StoreError::Unavailable(format!(
                "{open}; ScyllaDB calls fail fast until a probe succeeds"
            ))
        })?;
        let result = operation.await;
        match &result {
            Err(error) if error.is_transient() => permit.failed(),
            _ => permit.succeeded(),
        }
        result
    }

    /// The days a day-index table lists for `partition` that overlap
    /// `from_ms..to_ms` (`from_ms < to_ms`).
    async fn indexed_days(
        &self,
        what: &'static str,
        statement: &PreparedStatement,
        (a, b): (&str, &str),
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(CqlDate,)>, StoreError> {
        // `to_ms` is exclusive, and `from_ms < to_ms`, so `to_ms - 1` cannot overflow.
        let range = (
            a,
            b,
            cql_date_clamped(day_of(from_ms)),
            cql_date_clamped(day_of(to_ms - 1)),
        );
        self.select_all(what, statement, range, usize::MAX).await
    }

    /// Executes one statement once, holding an in-flight permit.
    async fn execute(
        &self,
        what: &'static str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<(), StoreError> {
        let _slot = self.slot().await?;
        self.session
            .execute_unpaged(statement, &values)
            .await
            .map(drop)
            .map_err(|e| errors::execution(what, &e))
    }

    /// Adds one unlogged batch per `max_batch_rows` of `rows` (one partition's) to
    /// `statements`.
    fn push_batches<'a, R: SerializeRow + Sync>(
        &'a self,
        statements: &FuturesUnordered<UnitFuture<'a>>,
        what: &'static str,
        statement: &'a PreparedStatement,
        rows: &'a [R],
    ) {
        for chunk in rows.chunks(self.config.max_batch_rows) {
            statements.push(Box::pin(self.execute_batch(what, statement, chunk)));
        }
    }

    /// Executes `rows` of one partition as one unlogged batch of `statement`.
    async fn execute_batch<R: SerializeRow>(
        &self,
        what: &'static str,
        statement: &PreparedStatement,
        rows: &[R],
    ) -> Result<(), StoreError> {
        if let [row] = rows {
            return self.execute(what, statement, row).await;
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in rows {
            batch.append_statement(statement.clone());
        }
        batch.set_is_idempotent(true);
        let _slot = self.slot().await?;
        self.session
            .batch(&batch, rows)
            .await
            .map(drop)
            .map_err(|e| errors::execution(what, &e))
    }

    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StoreError> {
        self.in_flight
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))
    }

    async fn write(&self, batches: &[SealedBatch]) -> Result<(), StoreError> {
        let plan = plan(batches);
        // When these writes are made, for what `reading_days` rows they may skip.
        let now = Instant::now();
        let mut units: FuturesUnordered<UnitFuture<'_>> = FuturesUnordered::new();
        for meter in &plan.meters {
            units.push(Box::pin(self.write_meter(meter, now)));
        }
        for ((tenant, day), letters) in &plan.dead_letters {
            units.push(Box::pin(self.write_dead_letters(tenant, *day, letters)));
        }
        while let Some(result) = units.next().await {
            // Dropping the remaining units cancels their pending statements.
            result?;
        }
        Ok(())
    }

    /// A meter's readings (and their day index, unless this process wrote it lately:
    /// `day_index`) first, then its state.
    async fn write_meter(&self, meter: &MeterWrite<'_>, now: Instant) -> Result<(), StoreError> {
        let ttl = self.config.readings_ttl_secs();
        let tenant = meter.key.tenant.as_str();
        let name = meter.key.meter.as_str();
        let write_timestamp = write_time(meter.state);
        let mut indexed = Vec::new();
        let mut days = Vec::with_capacity(meter.days.len());
        for (day, edits) in &meter.days {
            let date = cql_date(*day)?;
            let mut rows: Vec<ReadingRow<'_>> = Vec::with_capacity(edits.len());
            let mut withdrawn: Vec<ReadingKeyRow<'_>> = Vec::new();
            for (ts, edit) in edits {
                match edit {
                    Some(stored) => rows.push(ReadingRow {
                        tenant,
                        meter: name,
                        day: date,
                        columns: ReadingColumns::of(stored),
                        ttl,
                        write_timestamp,
                    }),
                    None => withdrawn.push(ReadingKeyRow {
                        tenant,
                        meter: name,
                        day: date,
                        ts: CqlTimestamp(*ts),
                        write_timestamp,
                    }),
                }
            }
            let index = !rows.is_empty() && self.recent_days().needs_write(meter.key, *day, now);
            if index {
                indexed.push(*day);
            }
            days.push((date, index, rows, withdrawn));
        }
        let statements: FuturesUnordered<UnitFuture<'_>> = FuturesUnordered::new();
        for (date, index, rows, withdrawn) in &days {
            if *index {
                statements.push(Box::pin(self.execute(
                    "writing reading_days failed",
                    &self.statements.insert_reading_day,
                    MeterDayRow {
                        tenant,
                        meter: name,
                        day: *date,
                        ttl: self.reading_days_ttl_secs,
                    },
                )));
            }
            self.push_batches(
                &statements,
                "writing readings failed",
                &self.statements.insert_reading,
                rows,
            );
            self.push_batches(
                &statements,
                "deleting withdrawn readings failed",
                &self.statements.delete_reading,
                withdrawn,
            );
        }
        drain(statements).await?;
        self.recent_days().wrote(meter.key, &indexed, now);
        let state = encode_record(meter.state);
        self.execute(
            "writing meter_state failed",
            &self.statements.insert_state,
            StateRow {
                tenant,
                meter: name,
                state: &state,
                last_seq: meter.state.seq.watermark().map(bigint),
                last_ts: meter.state.last_ts().map(CqlTimestamp),
                write_timestamp,
            },
        )
        .await
    }

    async fn write_dead_letters(
        &self,
        tenant: &str,
        day: i64,
        letters: &DeadLetterPartition<'_>,
    ) -> Result<(), StoreError> {
        let ttl = self.config.dead_letters_ttl_secs();
        let date = cql_date(day)?;
        let rows: Vec<DeadLetterRow<'_>> = letters
            .values()
            .map(|l| DeadLetterRow {
                tenant,
                day: date,
                received_at: CqlTimestamp(l.received_at),
                id: bigint(l.id),
                topic: &l.topic,
                payload: &l.payload,
                reason: l.reason.code(),
                correlation_id: &l.correlation_id,
                ttl,
            })
            .collect();
        let statements: FuturesUnordered<UnitFuture<'_>> = FuturesUnordered::new();
        statements.push(Box::pin(self.execute(
            "writing dead_letter_days failed",
            &self.statements.insert_dead_letter_day,
            TenantDayRow {
                tenant,
                day: date,
                ttl,
            },
        )));
        self.push_batches(
            &statements,
            "writing dead_letters failed",
            &self.statements.insert_dead_letter,
            &rows,
        );
        drain(statements).await
    }

    /// Every row of a paged query (at most `limit`).
    async fn select_all<R>(
        &self,
        what: &'static str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        limit: usize,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> ::scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        self.select_matching(what, statement, values, limit, |_| true)
            .await
    }

    /// The first `limit` rows of a paged query that `keep` accepts. Pages are fetched
    /// only until `limit` rows are kept.
    async fn select_matching<R>(
        &self,
        what: &'static str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        limit: usize,
        keep: impl Fn(&R) -> bool,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'f, 'm> ::scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        let mut out = Vec::new();
        self.for_each_row(what, statement, values, |row: R| {
            if out.len() < limit && keep(&row) {
                out.push(row);
            }
            Ok(if out.len() < limit {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            })
        })
        .await?;
        Ok(out)
    }

    /// Hands the rows of a paged query to `each` until it answers `Break`; pages are
    /// fetched as they are needed.
    async fn for_each_row<R>(
        &self,
        what: &'static str,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        mut each: impl FnMut(R) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError>
    where
        R: for<'f, 'm> ::scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
    {
        let _slot = self.slot().await?;
        let pager = self
            .session
            .execute_iter(statement.clone(), &values)
            .await
            .map_err(|e| errors::pager(what, &e))?;
        let mut rows = pager
            .rows_stream::<R>()
            .map_err(|e| errors::type_check(what, &e))?;
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| errors::next_row(what, &e))?
        {
            if each(row)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// `meter_state`'s partition keys, page by page (a scan of the whole table).
    async fn stored_meters(
        &self,
        visit: &mut dyn FnMut(MeterKey) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.for_each_row(
            "listing meter_state failed",
            &self.statements.select_state_keys,
            (),
            |(tenant, meter): (String, String)| {
                let key = MeterKey::parse(tenant.as_bytes(), meter.as_bytes()).map_err(|_| {
                    StoreError::Corrupt(format!(
                        "meter_state has a row of tenant {tenant:?} and meter {meter:?}, which are not ids"
                    ))
                })?;
                Ok(visit(key))
            },
        )
        .await
    }

    async fn meter_state(&self, key: &MeterKey) -> Result<Option<MeterState>, StoreError> {
        let rows: Vec<(Option<Vec<u8>>, Option<i64>)> = self
            .select_all(
                "reading meter_state failed",
                &self.statements.select_state,
                (key.tenant.as_str(), key.meter.as_str()),
                1,
            )
            .await?;
        match rows.into_iter().next() {
            None => Ok(None),
            Some((None, _)) => Err(StoreError::Corrupt(format!(
                "meter_state of {key} has no state blob"
            ))),
            Some((Some(blob), written)) => {
                let mut state: MeterState = decode_record(&blob)
                    .map_err(|e| StoreError::Corrupt(format!("meter_state of {key}: {e}")))?;
                state.version = hydrated_version(state.version, written.unwrap_or(0));
                Ok(Some(state))
            }
        }
    }

    async fn readings(
        &self,
        key: &MeterKey,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let tenant = key.tenant.as_str();
        let meter = key.meter.as_str();
        let days = self
            .indexed_days(
                "reading reading_days failed",
                &self.statements.select_reading_days,
                (tenant, meter),
                from_ms,
                to_ms,
            )
            .await?;
        let mut out = Vec::new();
        for (date,) in days {
            let remaining = limit - out.len();
            let rows: Vec<ReadingColumns> = self
                .select_all(
                    "reading readings failed",
                    &self.statements.select_readings,
                    (
                        tenant,
                        meter,
                        date,
                        CqlTimestamp(from_ms),
                        CqlTimestamp(to_ms),
                        cql_limit(remaining),
                    ),
                    remaining,
                )
                .await?;
            for columns in rows {
                out.push(columns.decode()?);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn dead_letters(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        // Newest day first (the index is clustered by day descending).
        let days: Vec<(CqlDate,)> = self
            .select_all(
                "reading dead_letter_days failed",
                &self.statements.select_dead_letter_days,
                (tenant,),
                usize::MAX,
            )
            .await?;
        let mut out = Vec::new();
        for (date,) in days {
            let remaining = limit - out.len();
            let rows: Vec<DeadLetterColumns> = self
                .select_all(
                    "reading dead_letters failed",
                    &self.statements.select_dead_letters,
                    (tenant, date, cql_limit(remaining)),
                    remaining,
                )
                .await?;
            for columns in rows {
                out.push(decode_dead_letter(tenant, columns)?);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use meterflow_model::{MeterBatch, MeterId, TenantId};

    use super::*;

    fn key(meter: &str) -> MeterKey {
        MeterKey::new(
            TenantId::try_from("t").unwrap(),
            MeterId::try_from(meter).unwrap(),
        )
    }

    fn stored(ts: i64, reg: u64) -> StoredReading {
        StoredReading::actual(Reading::register(ts, reg), 1, ts)
    }

    fn meter_batch(meter: &str, readings: Vec<StoredReading>) -> MeterBatch {
        MeterBatch {
            sent_readings: readings.len() as u32,
            readings,
            messages: 1,
            ..MeterBatch::empty(key(meter))
        }
    }

    #[test]
    fn plan_groups_by_day_and_later_batches_win() {
        let day = meterflow_model::time::DAY_MS;
        let first = SealedBatch {
            meters: vec![meter_batch("m1", vec![stored(10, 1), stored(day + 5, 2)])],
            ..SealedBatch::default()
        };
        let mut second_meter = meter_batch("m1", vec![stored(10, 99)]);
        second_meter.state.usage.today_l = 7;
        // It withdraws the row at day + 5 (replaced, not made again); the one at 10
        // it replaces and makes again.
        second_meter.replaced = vec![stored(day + 5, 2), stored(10, 1)];
        let second = SealedBatch {
            number: 1,
            meters: vec![second_meter, meter_batch("m2", vec![])],
            ..SealedBatch::default()
        };
        let batches = [first, second];
        let WritePlan {
            meters,
            dead_letters,
        } = plan(&batches);
        assert!(dead_letters.is_empty());
        assert_eq!(meters.len(), 2);
        let m1 = &meters[0];
        assert_eq!(m1.days.len(), 2);
        assert_eq!(
            m1.days[&0][&10].unwrap().reading.reg,
            99,
            "later batch wins"
        );
        assert_eq!(m1.days[&1][&(day + 5)], None, "a later withdrawal wins");
        assert_eq!(m1.state.usage.today_l, 7, "later state wins");
        assert!(
            meters[1].days.is_empty(),
            "a state-only meter still writes its state"
        );
    }

    #[test]
    fn cql_dates() {
        assert_eq!(cql_date(0).unwrap(), CqlDate(1 << 31));
        assert_eq!(cql_date(-1).unwrap(), CqlDate((1 << 31) - 1));
        assert!(cql_date(i64::from(u32::MAX)).is_err());
        assert_eq!(cql_date_clamped(i64::MIN), CqlDate(0));
        assert_eq!(cql_date_clamped(i64::MAX), CqlDate(u32::MAX));
        assert_eq!(cql_limit(usize::MAX), i32::MAX);
    }

    #[test]
    fn readings_round_trip_through_their_column_types() {
        let mut original = stored(1_763_800_000_000, u64::MAX - 3);
        original.reading.temp = Some(-15);
        original.reading.flow = u32::MAX;
        original.interval_l = Some(42);
        original.quality = Quality::Suspect;
        original.seq = u64::MAX;
        let columns = ReadingColumns::of(&original);
        assert_eq!(columns.decode().unwrap(), original);
        let bad_quality = ReadingColumns {
            quality: 9,
            ..columns
        };
        assert!(matches!(bad_quality.decode(), Err(StoreError::Corrupt(_))));
        let bad_flow = ReadingColumns {
            flow: i64::from(u32::MAX) + 1,
            ..columns
        };
        assert!(matches!(bad_flow.decode(), Err(StoreError::Corrupt(_))));
    }
}
