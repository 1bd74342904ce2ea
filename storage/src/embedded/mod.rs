//! The embedded reading store: fjall 3, an LSM tree in one local directory — the
//! default backend on one machine (DESIGN §5).
//!
//! On disk: one fjall keyspace per logical table. Keys are order-preserving (ids never
//! contain `0x00`; `ts*` is the i64 as big-endian u64 with the sign bit flipped), so a
//! prefix or range scan yields one meter's or one tenant's rows in time order:
//!
//! | keyspace       | key                                       | value                              |
//! |----------------|-------------------------------------------|------------------------------------|
//! | `readings`     | tenant `0x00` meter `0x00` first ts*      | a chunk: 1–128 readings of one UTC day, delta-encoded, version byte first (or, from older builds, one 50-byte reading row) |
//! | `meter_state`  | tenant `0x00` meter                       | `encode_record(&MeterState)`       |
//! | `dead_letters` | tenant `0x00` received_at* id (u64 BE)    | version byte, then u32-length-prefixed topic, payload, reason code, correlation id |
//! | `bills`        | tenant `0x00` period `0x00` meter         | `encode_record(&BillLine)`         |
//! | `alerts`       | tenant `0x00` opened_at* meter `0x00` kind name | `encode_record(&AlertEvent)`, the episode's latest event |
//! | `district_hourly` | tenant `0x00` district `0x00` hour start* | `encode_record(&DistrictUsage)`, hour rows only |
//! | `exceptions`   | tenant `0x00` meter `0x00` ts*            | `encode_record(&ReadException)` (`exceptions.rs`) |
//!
//! The byte-level layouts are documented, and tested, in `keys.rs`, `chunks.rs`
//! (readings) and `rows.rs` (dead letters, and the older reading row); how readings
//! are merged into chunks in `readings.rs`; the last three keyspaces, written by
//! [`ReadingStore::write_outputs`], and their rules (one fsync per call, latest event
//! per alert episode) in `outputs.rs`. A store
//! created by an older build gains them, empty, when it is opened.
//!
//! Invariants:
//! - **Durable means fsynced.** [`ReadingStore::write`] turns all given sealed batches
//!   into ONE fjall write batch across `readings`, `meter_state` and `dead_letters`,
//!   and commits it with `PersistMode::SyncData`: the journal is written and `fdatasync`ed before `Ok` is
//!   returned, so an acknowledged write survives `kill -9` and power loss, and the
//!   readings and the meter states that reflect them become visible (and recoverable)
//!   together or not at all. Many sealed batches cost one fsync: that is the group
//!   commit the sink relies on.
//! - **Last write wins, per key.** Writing a reading again (same meter, same `ts`)
//!   replaces it in its chunk, so replays are idempotent. Within one call, when a key
//!   occurs more than once (a meter in several batches of a shard, a reading re-sent),
//!   the occurrence in the later batch — or later in the same batch — is the one
//!   stored. Merging into a chunk reads it first: every writer holds
//!   the store's writer lock (`EmbeddedStore::lock_writer`) from that read to its
//!   commit.
//! - **One process per directory.** fjall locks the directory; a second open fails
//!   with [`StoreError::Config`] naming it.
//! - **Bounded memory**: see the constants below.
//! - **Retention**: [`retention`] deletes rows older than their table's retention
//!   period (readings, dead letters, district hours; `0` keeps them forever) in
//!   bounded chunks, from a sweeper thread the service starts.
//!
//! ## Readings as chunks
//!
//! fjall takes ~0.5–0.7M rows/s on one core (DESIGN §5), and one row per reading cost
//! ~8.7k instructions per reading in the perf gate's `store_commit`: the row rate
//! capped the pipeline. So a `readings` row is a **chunk** of one meter's readings —
//! up to [`MAX_CHUNK_READINGS`] (128), all in one UTC day, keyed by the first one's
//! `ts` — and a commit writes one row per meter per day it touches: each reading is
//! merged into the chunk its `ts` belongs to, usually appended to the day's newest
//! (read-modify-write; invariants and algorithm in `readings.rs`) — without the read
//! when the meter's newest chunk is held in memory (`tails.rs`, exactly as stored;
//! a message that begins a new day, or finds that chunk full, then starts a chunk
//! without a read too).
//! The logical model (a reading per meter and `ts`, last write wins), the API and
//! the single fsynced batch per commit are unchanged.
//!
//! **Bucket: the UTC day**, because it keeps rows per message at 1–2 for every common
//! profile, while appending (`chunks::append_to_chunk`: only the new readings are
//! encoded, the stored bytes copied) and the cap bound what a write costs:
//! - 15-minute reads sent hourly (the simulator's default): 1 row per message (hour
//!   buckets: 1–2, as messages straddle hours); appends stop at
//!   [`APPEND_UP_TO`] (32) readings, after which the next message starts a chunk of
//!   its own, so the row carries ~18 readings × ~13 bytes on average (~60 bytes a
//!   reading; one row per reading took ~80). Appending without the limit would carry
//!   the day so far (~48 readings): every byte of a rewritten chunk goes through the
//!   journal, the memtable, a flush and compactions, and a `burst24` message (24
//!   readings) writes its own 24 instead of ~60 (bench/README.md, "Huge pages off, and
//!   chunks that stop growing");
//! - hourly or 15-minute reads sent once a day (24–96 readings): 1–2 rows per
//!   message, where hour buckets would write 24;
//! - one-minute reads: the day splits into chunks of 128, so a row carries at most
//!   128 readings whatever the cadence, and a merge that is not an append (a VEE
//!   re-estimate, a replay) decodes and re-encodes at most that.
//!
//! In the perf gate's `store_commit` (a group of 1,024 readings, 16 per meter for 64
//! meters, appended to the morning of their day) the commit went from 8.88M to 2.75M
//! instructions, ~8.7k to ~2.7k per reading; what is left is mostly fjall's commit
//! (journal, memtable inserts) and encoding meter states.
//!
//! Chunks per sealed batch (keyed by the batch's first `ts`, never read back on write)
//! would avoid the read, but a replay or a VEE re-estimate overlaps earlier chunks, so
//! reads would have to merge overlapping chunks by write order and retention could not
//! tell a chunk's end from its key; fixed days keep chunks disjoint, and a range read
//! is one forward scan from the first chunk of `from`'s day.
//!
//! **Older stores.** A store written before chunks holds single-reading rows
//! (version byte 1, `rows.rs`) in the same keyspace with the same key shape; they are
//! read as chunks of one reading, and a write into their day merges into them. So an
//! older store opens with no conversion step (nothing to interrupt, nothing to
//! resume), and its rows become chunks as they are rewritten or leave with retention.
//!
//! **Retention** deletes whole chunks older than the cutoff and rewrites a chunk that
//! straddles it without its expired readings (`retention.rs`), so no reading at or
//! after the cutoff is lost and none before it stays readable.
//!
//! If a journal write or fsync fails, fjall poisons the database and refuses every
//! later write: that write fails with the I/O error, every later one with a
//! [`StoreError::Unavailable`] that asks for a restart (recovery replays the journal),
//! and from then on [`ReadingStore::is_ready`] is false.

pub mod background;
mod chunks;
mod exceptions;
mod keys;
mod outputs;
mod readings;
pub mod retention;
mod rows;
mod tails;

pub use chunks::{APPEND_UP_TO, MAX_CHUNK_READINGS};

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fjall::compaction::Leveled;
use fjall::{
    Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch as WriteBatch, PersistMode,
};
use meterflow_model::alert::AlertEvent;
use meterflow_model::analytics::DistrictUsage;
use meterflow_model::billing::BillLine;
use meterflow_model::codec::binary::{Record, decode_record, encode_record};
use meterflow_model::{
    DeadLetter, ExceptionState, MeterBatch, MeterKey, MeterState, Outputs, ReadException,
    SealedBatch, StoredReading,
};

use self::tails::{TailUpdates, Tails};
use crate::{ReadingStore, StoreError};

const MIB: u64 = 1024 * 1024;

/// Block cache shared by the keyspaces. The store is write-heavy: reads are
/// dashboard range scans over recent readings (mostly still in memtables) and
/// `meter_state` point reads when a meter is hydrated. 64 MiB keeps those hot
/// without making the laptop default expensive (fjall suggests 20–25 % of RAM only
/// for read-heavy stores).
const BLOCK_CACHE_BYTES: u64 = 64 * MIB;

/// Memtable (write buffer) of `readings`. fjall accounts ~60 bytes of overhead per
/// row (~30-byte key, entry overhead) plus the chunk, ~15 bytes per reading; a chunk
/// rewritten by several commits before a flush is held once per version. With hourly
/// messages of 15-minute reads that is ~650 bytes per meter per message, so 8 MiB
/// holds ~13k meter-messages (~50k readings) between flushes. Small on purpose: a
/// flush writes the memtable out as one table and fsyncs it, and while that table's
/// pages go to disk the sink's journal sync can wait behind them (ext4 in its default
/// `data=ordered` mode commits the journal file's new size only after the data
/// written before it), so the table's size bounds how long a group commit stalls.
/// 32 MiB gave acks a p99 of ~120 ms at 18k messages/s of 24 readings on the bench's
/// 2-core box, 8 MiB (with [`TABLE_TARGET_BYTES`] and [`background_workers`]) ~35 ms,
/// for the same CPU: the smaller skiplist makes the sink's inserts cheaper by about
/// what the extra flushes cost (bench/README.md, "Background work and the ack
/// tail"). fjall keeps one active memtable per keyspace and stalls writers while 4
/// sealed ones wait for a flush, so `readings` holds at most ~5 × 8 MiB in memory.
const READINGS_MEMTABLE_BYTES: u64 = 8 * MIB;

/// Target size of the tables compaction writes (fjall's leveled strategy; its default
/// is 64 MiB), in every keyspace. Each table is fsynced when written, and a group
/// commit can wait behind that sync as behind a flush's (see
/// [`READINGS_MEMTABLE_BYTES`]); 8 MiB tables keep that wait short. The price: L1
/// holds 4 tables (32 MiB instead of 256), so a large store has one level more and
/// compaction rewrites its data one time more over its life.
const TABLE_TARGET_BYTES: u64 = 8 * MIB;

/// fjall's background threads (flushes and compactions) for a machine of `cores`:
/// half of them, 1 to 4. fjall's default is one per core up to 4; on a small machine
/// two compacting threads took both cores at once for hundreds of milliseconds, and
/// every pipeline thread — the sink holding the group's acks among them — waited for
/// a CPU meanwhile. One thread kept up with the bench's highest sustainable rate on 2
/// cores (bench/README.md, "Background work and the ack tail").
fn background_workers(cores: usize) -> usize {
    (cores / 2).clamp(1, 4)
}

/// Memtable of `meter_state`: one row of a few hundred bytes per meter per write, so
/// 8 MiB holds the latest states of tens of thousands of meters.
const METER_STATE_MEMTABLE_BYTES: u64 = 8 * MIB;

/// Memtable of `dead_letters`: rows are at most ~1.2 KiB (the payload is capped) and
/// rare in a healthy system.
const DEAD_LETTERS_MEMTABLE_BYTES: u64 = 8 * MIB;

/// Memtable of `bills`: one row of ~150 bytes per meter and period, rewritten at
/// every output flush of a meter, so 8 MiB holds the running bills of ~50k meters
/// between flushes.
const BILLS_MEMTABLE_BYTES: u64 = 8 * MIB;

/// Memtable of `alerts`: episodes are rare (a few per meter per year), rows a few
/// hundred bytes.
const ALERTS_MEMTABLE_BYTES: u64 = 4 * MIB;

/// Memtable of `district_hourly`: one row of ~100 bytes to a few KiB (the sketch) per
/// district and hour, rewritten while the hour is open.
const DISTRICT_HOURLY_MEMTABLE_BYTES: u64 = 4 * MIB;

/// Keyspace names; they are part of the on-disk format.
const READINGS: &str = "readings";
const METER_STATE: &str = "meter_state";
const DEAD_LETTERS: &str = "dead_letters";
const BILLS: &str = "bills";
const ALERTS: &str = "alerts";
const DISTRICT_HOURLY: &str = "district_hourly";
const EXCEPTIONS: &str = "exceptions";

/// Most rows preallocated for a read, whatever `limit` says.
const MAX_PREALLOCATED_ROWS: usize = 1024;

/// What an operator can do about a row that does not decode.
const CORRUPT_ADVICE: &str = "stop meterflow and restore the store directory from a backup, or run the meterflow version that wrote it";

/// The embedded [`ReadingStore`]. Cheap to share behind an `Arc`; fjall synchronises
/// internally, so all methods take `&self`.
pub struct EmbeddedStore {
    /// Where the store lives; named in error messages.
    dir: PathBuf,
    db: Database,
    readings: Keyspace,
    meter_state: Keyspace,
    dead_letters: Keyspace,
    bills: Keyspace,
    alerts: Keyspace,
    district_hourly: Keyspace,
    exceptions: Keyspace,
    /// Serialises the store's read-modify-writes, and guards the meters' newest
    /// chunks held in memory (`tails.rs`); see [`Self::lock_writer`].
    writer: Mutex<Tails>,
    /// fjall's flush and compaction threads started for this store.
    background_threads: usize,
    /// Set once fjall reports the database poisoned (a failed journal write or
    /// fsync): no later write can succeed without a restart.
    poisoned: AtomicBool,
}

impl EmbeddedStore {
    /// Opens the store in `dir`, creating the directory and the keyspaces when they do
    /// not exist, and recovering from the journal after a crash. Memtable sizes and
    /// the compaction's table size are fixed when a keyspace is created; an existing
    /// store keeps the ones it was created with.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let background_threads = background_workers(cores);
        let db = Database::builder(dir)
            .cache_size(BLOCK_CACHE_BYTES)
            .worker_threads(background_threads)
            .open()
            .map_err(|e| open_error(dir, e))?;
        let compaction = Arc::new(Leveled::default().with_table_target_size(TABLE_TARGET_BYTES));
        let keyspace = |name: &str, memtable_bytes: u64| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(memtable_bytes)
                    .compaction_strategy(compaction.clone())
            })
            .map_err(|e| open_error(dir, e))
        };
        Ok(EmbeddedStore {
            readings: keyspace(READINGS, READINGS_MEMTABLE_BYTES)?,
            meter_state: keyspace(METER_STATE, METER_STATE_MEMTABLE_BYTES)?,
            dead_letters: keyspace(DEAD_LETTERS, DEAD_LETTERS_MEMTABLE_BYTES)?,
            bills: keyspace(BILLS, BILLS_MEMTABLE_BYTES)?,
            alerts: keyspace(ALERTS, ALERTS_MEMTABLE_BYTES)?,
            district_hourly: keyspace(DISTRICT_HOURLY, DISTRICT_HOURLY_MEMTABLE_BYTES)?,
            exceptions: keyspace(EXCEPTIONS, DISTRICT_HOURLY_MEMTABLE_BYTES)?,
            writer: Mutex::new(Tails::default()),
            background_threads,
            dir: dir.to_path_buf(),
            db,
            poisoned: AtomicBool::new(false),
        })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs fjall's flush and compaction threads (this store's and any other open
    /// store's in the process) at nice value `nice`, 0–19 (`background.rs`); returns
    /// how many threads it found.
    pub fn lower_background_priority(&self, nice: i32) -> std::io::Result<usize> {
        background::lower_priority(nice, self.background_threads)
    }

    /// Maps an error fjall returned while the store was open.
    fn fjall_error(&self, doing: &str, error: fjall::Error) -> StoreError {
        let dir = self.dir.display();
        match error {
            fjall::Error::Poisoned => {
                self.poisoned.store(true, Ordering::Relaxed);
                StoreError::Unavailable(format!(
                    "{doing} in the embedded store at {dir}: an earlier journal write or fsync failed, so the store refuses writes to stay consistent; check the disk, then restart meterflow (it recovers from the journal)"
                ))
            }
            error if caused_by_io(&error) => {
                StoreError::Unavailable(format!("{doing} in the embedded store at {dir}: {error}"))
            }
            error => StoreError::Corrupt(format!(
                "{doing} in the embedded store at {dir}: {error}; {CORRUPT_ADVICE}"
            )),
        }
    }

    /// Names a row that does not decode, for [`StoreError::Corrupt`].
    fn corrupt_row(&self, table: &str, key: &[u8], why: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt(format!(
            "{table} row '{key}' in the embedded store at {dir}: {why}; {CORRUPT_ADVICE}",
            key = key.escape_ascii(),
            dir = self.dir.display(),
        ))
    }

    /// The record at `key` of `keyspace` (the table named `table`), if there is one;
    /// `doing` names the read in errors.
    fn get_record<T: Record>(
        &self,
        keyspace: &Keyspace,
        table: &str,
        key: &[u8],
        doing: &str,
    ) -> Result<Option<T>, StoreError> {
        let Some(value) = keyspace.get(key).map_err(|e| self.fjall_error(doing, e))? else {
            return Ok(None);
        };
        decode_record(&value)
            .map(Some)
            .map_err(|e| self.corrupt_row(table, key, e))
    }

    /// The records of a scan of `table` (`entries`) that `keep` passes, at most
    /// `limit`; `doing` names the read in errors.
    fn collect_records<T: Record>(
        &self,
        entries: impl Iterator<Item = fjall::Guard>,
        table: &str,
        doing: &str,
        limit: usize,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(MAX_PREALLOCATED_ROWS));
        for entry in entries {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry.into_inner().map_err(|e| self.fjall_error(doing, e))?;
            let record = decode_record(&value).map_err(|e| self.corrupt_row(table, &key, e))?;
            if keep(&record) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Adds the readings, meter states and dead letters of `batches` to `batch`; the
    /// caller holds [`Self::lock_writer`] until it commits (readings are merged into
    /// stored chunks, `readings.rs`), and then applies the returned tail updates.
    fn stage_batches(
        &self,
        batch: &mut WriteBatch,
        batches: &[SealedBatch],
        tails: &Tails,
    ) -> Result<TailUpdates, StoreError> {
        let mut updates = Vec::new();
        for (key, writes) in writes_by_meter(batches) {
            self.stage_meter_readings(batch, key, &writes.parts, tails, &mut updates)?;
            batch.insert(
                &self.meter_state,
                keys::meter_state_key(key),
                encode_record(writes.state),
            );
        }
        let mut dead_letters = Vec::new();
        for batch in batches {
            dead_letters.extend(batch.dead_letters.iter().map(|letter| {
                debug_assert!(!letter.tenant.is_empty() && !letter.tenant.contains('\0'));
                (
                    keys::dead_letter_key(&letter.tenant, letter.received_at, letter.id),
                    rows::encode_dead_letter(
                        &letter.topic,
                        &letter.payload,
                        letter.reason,
                        &letter.correlation_id,
                    ),
                )
            }));
        }
        keep_last_per_key(&mut dead_letters);
        for (key, value) in &dead_letters {
            batch.insert(&self.dead_letters, key.as_slice(), value.as_slice());
        }
        Ok(updates)
    }

    /// Held by every writer from its first read of stored rows until its batch is
    /// committed: merging readings into chunks, keeping the latest event of an alert
    /// episode (`outputs.rs`) and trimming a chunk at the retention cutoff
    /// (`retention.rs`) are read-modify-writes, and two of them interleaved could
    /// each overwrite the other's rows. The sink writes from one thread, so the lock is
    /// uncontended there; it makes correctness independent of how callers call.
    fn lock_writer(&self) -> MutexGuard<'_, Tails> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn durable_batch(&self) -> WriteBatch {
        self.db.batch().durability(Some(PersistMode::SyncData))
    }
}

impl ReadingStore for EmbeddedStore {
    fn write(&self, batches: &[SealedBatch]) -> Result<(), StoreError> {
        let mut tails = self.lock_writer();
        let mut batch = self.durable_batch();
        let updates = self.stage_batches(&mut batch, batches, &tails)?;
        // An empty batch commits nothing and syncs nothing: there is nothing to make
        // durable.
        batch
            .commit()
            .map_err(|e| self.fjall_error("writing a batch", e))?;
        tails.apply(updates);
        Ok(())
    }

    /// One fjall batch, one journal sync: the group's readings, states and dead
    /// letters and every durable output derived from them become durable together.
    fn commit(&self, batches: &[SealedBatch], outputs: &Outputs) -> Result<(), StoreError> {
        let mut tails = self.lock_writer();
        let mut batch = self.durable_batch();
        let updates = self.stage_batches(&mut batch, batches, &tails)?;
        self.stage_outputs(&mut batch, outputs)?;
        batch
            .commit()
            .map_err(|e| self.fjall_error("writing a group", e))?;
        tails.apply(updates);
        Ok(())
    }

    fn meter_state(&self, key: &MeterKey) -> Result<Option<MeterState>, StoreError> {
        let state_key = keys::meter_state_key(key);
        self.get_record(
            &self.meter_state,
            METER_STATE,
            &state_key,
            "reading a meter state",
        )
    }

    /// A scan of `meter_state`'s keys; values are not read.
    fn stored_meters(
        &self,
        visit: &mut dyn FnMut(MeterKey) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        for entry in self.meter_state.iter() {
            let key = entry
                .key()
                .map_err(|e| self.fjall_error("listing meter states", e))?;
            let meter = keys::meter_of_state_key(&key).ok_or_else(|| {
                self.corrupt_row(METER_STATE, &key, "not a tenant and a meter id")
            })?;
            if visit(meter).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn readings(
        &self,
        key: &MeterKey,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<StoredReading>, StoreError> {
        self.stored_readings(key, from_ms, to_ms, limit)
    }

    /// Newest first. A `tenant` that could not be stored (empty, or containing
    /// `0x00`) has no dead letters, so it can never read another tenant's.
    fn dead_letters(&self, tenant: &str, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        if tenant.is_empty() || tenant.contains('\0') || limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = keys::dead_letters_prefix(tenant);
        let mut out = Vec::with_capacity(limit.min(MAX_PREALLOCATED_ROWS));
        for entry in self.dead_letters.prefix(&prefix).rev().take(limit) {
            let (row_key, value) = entry
                .into_inner()
                .map_err(|e| self.fjall_error("reading dead letters", e))?;
            let (received_at, id) = keys::dead_letter_received_at_and_id(&row_key)
                .ok_or_else(|| self.corrupt_row(DEAD_LETTERS, &row_key, "key too short"))?;
            let body = rows::decode_dead_letter(&value)
                .map_err(|e| self.corrupt_row(DEAD_LETTERS, &row_key, e))?;
            out.push(DeadLetter {
                tenant: tenant.to_owned(),
                received_at,
                id,
                topic: body.topic,
                payload: body.payload,
                reason: body.reason,
                correlation_id: body.correlation_id,
            });
        }
        Ok(out)
    }

    /// Bills, alert episodes and hourly district rows in one fsynced batch; see
    /// `outputs.rs`.
    fn write_outputs(&self, outputs: &Outputs) -> Result<(), StoreError> {
        self.store_outputs(outputs)
    }

    fn bill(
        &self,
        tenant: &str,
        period: &str,
        meter: &str,
    ) -> Result<Option<BillLine>, StoreError> {
        self.stored_bill(tenant, period, meter)
    }

    /// Newest `opened_at` first. A `tenant` that could not be stored has no alerts.
    fn alerts(
        &self,
        tenant: &str,
        open_only: bool,
        limit: usize,
    ) -> Result<Vec<AlertEvent>, StoreError> {
        self.stored_alerts(tenant, open_only, limit)
    }

    fn district_hourly(
        &self,
        tenant: &str,
        district: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<DistrictUsage>, StoreError> {
        self.stored_district_hours(tenant, district, from_ms, to_ms)
    }

    fn exceptions(
        &self,
        tenant: &str,
        state: Option<ExceptionState>,
        limit: usize,
    ) -> Result<Vec<ReadException>, StoreError> {
        self.stored_exceptions(tenant, state, limit)
    }

    fn exception(
        &self,
        tenant: &str,
        meter: &str,
        ts: i64,
    ) -> Result<Option<ReadException>, StoreError> {
        self.stored_exception(tenant, meter, ts)
    }

    /// True while open, until fjall reports the database poisoned.
    fn is_ready(&self) -> bool {
        !self.poisoned.load(Ordering::Relaxed)
    }
}

/// What one call writes for one meter.
struct MeterWrites<'a> {
    /// The meter's share of each batch that has rows to store or withdraw, in batch
    /// order.
    parts: Vec<&'a MeterBatch>,
    /// Its state in the last of those batches, which supersedes the earlier ones.
    state: &'a MeterState,
}

/// The meters of `batches`, each once. Encoding a state is the costliest part of a
/// commit after the readings, so superseded states are dropped before they are
/// encoded.
fn writes_by_meter(batches: &[SealedBatch]) -> BTreeMap<&MeterKey, MeterWrites<'_>> {
    let mut by_meter: BTreeMap<&MeterKey, MeterWrites<'_>> = BTreeMap::new();
    for meter in batches.iter().flat_map(|batch| &batch.meters) {
        let writes = by_meter.entry(&meter.key).or_insert(MeterWrites {
            parts: Vec::new(),
            state: &meter.state,
        });
        writes.state = &meter.state;
        if !meter.readings.is_empty() || !meter.replaced.is_empty() {
            writes.parts.push(meter);
        }
    }
    by_meter
}

/// Sorts rows by key and keeps, of every key, the row written last (latest batch,
/// latest position).
fn keep_last_per_key<V>(rows: &mut Vec<(Vec<u8>, V)>) {
    keep_last_by(rows, |a, b| a.0.cmp(&b.0));
}

/// Sorts `rows` by `order` and keeps, of every run of equal rows, the one that came
/// last. The sort is stable, so after reversing, the first row of each run is the
/// newest one.
fn keep_last_by<T>(rows: &mut Vec<T>, mut order: impl FnMut(&T, &T) -> std::cmp::Ordering) {
    rows.reverse();
    rows.sort_by(&mut order);
    rows.dedup_by(|later_in_vec, kept| order(later_in_vec, kept).is_eq());
}

/// Whether an fjall error comes from the operating system (disk full, I/O error)
/// rather than from data that does not decode.
fn caused_by_io(error: &fjall::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if current.is::<std::io::Error>() {
            return true;
        }
        cause = current.source();
    }
    false
}

/// Maps an error fjall returned while opening the store in `dir`. Nothing here is
/// retryable: the directory is wrong, held, or damaged.
fn open_error(dir: &Path, error: fjall::Error) -> StoreError {
    let dir = dir.display();
    match error {
        fjall::Error::Locked => StoreError::Config(format!(
            "the embedded store at {dir} is locked by another process (is another meterflow running with the same data directory?); stop it or give this instance its own directory"
        )),
        error if caused_by_io(&error) => StoreError::Config(format!(
            "cannot open the embedded store at {dir}: {error}; check that the directory exists or can be created, and is writable by this user"
        )),
        error => StoreError::Corrupt(format!(
            "cannot open the embedded store at {dir}: {error}; {CORRUPT_ADVICE}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_last_per_key_keeps_the_latest_write_of_each_key() {
        let mut rows = vec![
            (b"b".to_vec(), 1),
            (b"a".to_vec(), 2),
            (b"b".to_vec(), 3),
            (b"c".to_vec(), 4),
            (b"b".to_vec(), 5),
            (b"a".to_vec(), 6),
        ];
        keep_last_per_key(&mut rows);
        assert_eq!(
            rows,
            vec![(b"a".to_vec(), 6), (b"b".to_vec(), 5), (b"c".to_vec(), 4)]
        );
    }

    #[test]
    fn background_work_takes_half_the_cores_one_to_four() {
        let workers: Vec<usize> = [1, 2, 3, 4, 8, 16].map(background_workers).into();
        assert_eq!(workers, vec![1, 1, 1, 2, 4, 4]);
    }

    #[test]
    fn io_errors_are_told_apart_from_bad_data() {
        let io = fjall::Error::Io(std::io::Error::other("disk on fire"));
        assert!(caused_by_io(&io));
        assert!(!caused_by_io(&fjall::Error::InvalidTrailer));
    }

    #[test]
    fn a_locked_directory_is_a_config_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let _first = EmbeddedStore::open(dir.path()).unwrap();
        let Err(StoreError::Config(message)) = EmbeddedStore::open(dir.path()) else {
            panic!("second open of {} should be refused", dir.path().display());
        };
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("locked"), "{message}");
    }
}
