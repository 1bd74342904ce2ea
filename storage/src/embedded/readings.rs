//! The `readings` keyspace of the embedded store: how a commit merges a meter's new
//! readings into its chunks, how a range read takes them apart, and how retention
//! trims them. The value format is `chunks.rs`'; the layout and why in `mod.rs`.
//!
//! Invariants every write keeps, for each meter:
//! - a chunk's readings share one UTC day ([`chunks::bucket`]), are strictly
//!   ascending by `ts`, number 1 to [`MAX_CHUNK_READINGS`], and the key holds the
//!   first one's `ts`;
//! - chunks are disjoint: every reading of a chunk is older than the next chunk's
//!   first `ts`. So a `ts` lives in at most one chunk — the one with the greatest
//!   first `ts` at or below it in its day — which is what makes last write wins a
//!   merge into that one chunk, and a range read one forward scan from the first
//!   chunk of `from`'s day.
//!
//! A write of new readings into one day of one meter (sorted, one per `ts`, the
//! latest occurrence of each) scans that day's chunks forwards up to the newest new
//! `ts` and hands each new reading to the chunk with the greatest first `ts` at or
//! below it; a chunk that receives readings newer than its last has them appended
//! (only the new ones are encoded, `chunks::append_to_chunk`) while it then holds at
//! most [`APPEND_UP_TO`](chunks::APPEND_UP_TO), or else they become a chunk of their
//! own after it (an append rewrites the whole chunk; see `mod.rs`); any other is
//! decoded, merged (the new reading replaces a stored one at the same `ts`) and
//! written back under its own key, split
//! into pieces of [`MAX_CHUNK_READINGS`] when it outgrows them (the first piece keeps
//! the key). New readings older than the day's first chunk, or in a day without
//! chunks, become new chunks. Chunks that receive nothing are not decoded, and the
//! scan holds one chunk at a time, so memory stays bounded by the cap whatever a
//! day holds; its time grows with the chunks of the day before the first new
//! reading — up to 4 for a day of fifteen-minute reads, up to 45 for one-minute
//! reads sent in small messages (12 when they arrive a day at a time).
//!
//! Rows a batch withdraws ([`MeterBatch::withdrawn`](meterflow_model::MeterBatch::withdrawn):
//! estimates or recorded rows no pass makes any more) go through the same scan: the
//! chunk holding each is decoded, merged with any new readings, and written back
//! without it. The key invariant holds: a chunk whose first reading is withdrawn is
//! written under its new first reading's `ts` and its old key removed; a chunk left
//! empty is removed. A withdrawn `ts` that no chunk holds changes nothing.
//!
//! The common write skips the scan: when the meter's newest chunk is held in memory
//! (`tails.rs`) and nothing is withdrawn, readings newer than it are appended to it
//! as they would have been after the scan, or — when it is full, or they begin a
//! later day, which then has no chunk yet — become chunks of their own after it. A
//! scan tells afterwards which chunk is the meter's newest — the last one it staged
//! or kept, when no chunk of the meter lies beyond its newest edit (one more seek) —
//! and the write hands that on as the meter's tail once the batch commits.
//!
//! This is a read-modify-write: the store's writer lock (`EmbeddedStore::lock_writer`,
//! which also guards the tails) is held from the first read until the batch holding
//! the merged chunks commits, so a merge never works from a chunk another writer (a
//! second caller, or the retention sweep) is about to replace.

use fjall::OwnedWriteBatch as WriteBatch;
use meterflow_model::{MeterBatch, MeterKey, StoredReading};

use super::chunks::{self, Append, MAX_CHUNK_READINGS};
use super::tails::{StoredChunk, Tail, TailUpdate, TailUpdates, Tails};
use super::{EmbeddedStore, MAX_PREALLOCATED_ROWS, READINGS, keep_last_by, keys};
use crate::StoreError;

impl EmbeddedStore {
    /// Adds the rows of the meter `key` to `batch`, merged into the chunks they
    /// belong to, and takes out the rows its batches withdraw
    /// ([`MeterBatch::withdrawn`]). `parts` are its shares of each batch of the call,
    /// in batch order: when a `ts` occurs more than once, the occurrence in the later
    /// part, or later in the same part, is the one that counts. The caller holds the
    /// writer lock (and `tails`, which it guards) until it commits, and then applies
    /// what this pushed to `updates`.
    pub(super) fn stage_meter_readings(
        &self,
        batch: &mut WriteBatch,
        key: &MeterKey,
        parts: &[&MeterBatch],
        tails: &Tails,
        updates: &mut TailUpdates,
    ) -> Result<(), StoreError> {
        if parts.is_empty() {
            return Ok(());
        }
        let Edits { rows, withdrawn } = latest_per_ts(parts);
        let prefix = keys::readings_prefix(key);
        let mut pending = DayEdits {
            rows: &rows,
            withdrawn: &withdrawn,
        };
        while let Some((oldest, _)) = pending.span() {
            let day = chunks::bucket(oldest);
            let (of_day, later) = pending.split_while(|ts| chunks::bucket(ts) == day);
            // The meter's newest chunk held in memory: readings after it go after it
            // without the scan.
            let extended = match tails.newest(&prefix) {
                Some(tail) if of_day.withdrawn.is_empty() && tail.day <= day => {
                    self.extend_newest(batch, &prefix, tail, day, of_day.rows)?
                }
                _ => None,
            };
            let update = match extended {
                Some(update) => update,
                None => self.merge_into_day(batch, &prefix, day, of_day)?,
            };
            if !matches!(update, TailUpdate::Keep) {
                updates.push((prefix.as_slice().into(), update));
            }
            pending = later;
        }
        Ok(())
    }

    /// Stages `rows` (of `day`, none withdrawn) after `tail`, the meter's newest
    /// chunk, without reading the store: appended to it when they are all newer and
    /// fit, as chunks of their own when they are all newer and do not fit or belong to
    /// a later day (which then has no chunk yet). `None` when some are not newer: the
    /// day has to be merged.
    fn extend_newest(
        &self,
        batch: &mut WriteBatch,
        prefix: &[u8],
        tail: &Tail,
        day: i64,
        rows: &[StoredReading],
    ) -> Result<Option<TailUpdate>, StoreError> {
        let newest = if tail.day == day {
            self.extend_chunk(batch, prefix, &tail.chunk, rows)?
        } else {
            self.stage_chunks(batch, prefix, rows)
        };
        Ok(newest.map(|chunk| TailUpdate::Set(Tail { day, chunk })))
    }

    /// Stages `rows` after `chunk` when they are all newer than its last reading:
    /// appended to it while it then holds at most
    /// [`APPEND_UP_TO`](chunks::APPEND_UP_TO) (only they are encoded), else as chunks
    /// of their own after it. Returns the newest chunk as staged; `None` when some
    /// are not newer (the chunk has to be merged).
    fn extend_chunk(
        &self,
        batch: &mut WriteBatch,
        prefix: &[u8],
        chunk: &StoredChunk,
        rows: &[StoredReading],
    ) -> Result<Option<StoredChunk>, StoreError> {
        let appended = chunks::append_to_chunk(chunk.first, &chunk.value, rows)
            .map_err(|e| self.corrupt_row(READINGS, &chunk.key, e))?;
        Ok(match appended {
            Append::Appended(value) => {
                let chunk = StoredChunk {
                    key: chunk.key.clone(),
                    first: chunk.first,
                    value: value.into(),
                };
                batch.insert(&self.readings, chunk.key.clone(), chunk.value.clone());
                Some(chunk)
            }
            Append::Full => self.stage_chunks(batch, prefix, rows),
            Append::Merge => None,
        })
    }

    /// Merges `edits` — of one meter (`prefix`) in one `day` — into that day's chunks
    /// (see the module doc). One forward scan over the day's chunks up to the newest
    /// edited `ts`, holding one chunk back: the held chunk receives the edits older
    /// than the next chunk's first `ts`. Returns what becomes of the meter's tail.
    fn merge_into_day(
        &self,
        batch: &mut WriteBatch,
        prefix: &[u8],
        day: i64,
        edits: DayEdits<'_>,
    ) -> Result<TailUpdate, StoreError> {
        let Some((oldest, newest)) = edits.span() else {
            return Ok(TailUpdate::Keep);
        };
        let day_start = keys::reading_key(prefix, chunks::bucket_start(oldest));
        let through_newest = keys::reading_key(prefix, newest);
        let mut pending = edits;
        let mut held: Option<StoredChunk> = None;
        for entry in self.readings.range(day_start..=through_newest) {
            let (key, value) = entry
                .into_inner()
                .map_err(|e| self.fjall_error("reading a readings chunk", e))?;
            let chunk = StoredChunk {
                first: self.chunk_first_ts(&key)?,
                key,
                value,
            };
            let (older, rest) = pending.split_while(|ts| ts < chunk.first);
            // Only the day's last chunk tells what the tail becomes.
            let _ = match held.replace(chunk) {
                Some(before) => self.merge_into_chunk(batch, prefix, &before, older)?,
                // Older than the day's first chunk: new chunks of their own (nothing
                // is stored there to withdraw).
                None => self.stage_chunks(batch, prefix, older.rows),
            };
            pending = rest;
            if pending.is_empty() {
                break;
            }
        }
        let last = match held {
            Some(last) => self.merge_into_chunk(batch, prefix, &last, pending)?,
            None => self.stage_chunks(batch, prefix, pending.rows),
        };
        // The meter's newest chunk is the last one staged or kept here, unless one
        // lies beyond the newest edit (then this write did not touch it).
        if newest < i64::MAX {
            let beyond =
                keys::reading_key(prefix, newest + 1)..=keys::reading_key(prefix, i64::MAX);
            if self.readings.range(beyond).next().is_some() {
                return Ok(TailUpdate::Keep);
            }
        }
        Ok(match last {
            Some(chunk) => TailUpdate::Set(Tail { day, chunk }),
            None => TailUpdate::Forget { day },
        })
    }

    /// Stages `chunk` with `edits` merged in (at or after its first `ts`, before the
    /// next chunk's); a chunk that receives nothing is left alone. A chunk whose
    /// first reading is withdrawn moves to the key of its new first one; one with
    /// none left is removed. Returns the last chunk of its range afterwards (none
    /// when nothing is left of it).
    fn merge_into_chunk(
        &self,
        batch: &mut WriteBatch,
        prefix: &[u8],
        chunk: &StoredChunk,
        edits: DayEdits<'_>,
    ) -> Result<Option<StoredChunk>, StoreError> {
        if edits.is_empty() {
            return Ok(Some(chunk.clone()));
        }
        if edits.withdrawn.is_empty()
            && let Some(extended) = self.extend_chunk(batch, prefix, chunk, edits.rows)?
        {
            return Ok(Some(extended));
        }
        let stored = chunks::decode_chunk(chunk.first, &chunk.value)
            .map_err(|e| self.corrupt_row(READINGS, &chunk.key, e))?;
        let mut merged = chunks::merge(stored, edits.rows);
        if !edits.withdrawn.is_empty() {
            merged.retain(|r| edits.withdrawn.binary_search(&r.reading.ts).is_err());
            if merged.first().is_none_or(|r| r.reading.ts != chunk.first) {
                batch.remove(&self.readings, chunk.key.clone());
            }
        }
        Ok(self.stage_chunks(batch, prefix, &merged))
    }

    /// Adds `readings` (strictly ascending, within one day) to `batch` as chunks of at
    /// most [`MAX_CHUNK_READINGS`], each keyed by its first `ts`; returns the last.
    fn stage_chunks(
        &self,
        batch: &mut WriteBatch,
        prefix: &[u8],
        readings: &[StoredReading],
    ) -> Option<StoredChunk> {
        let mut last = None;
        for piece in readings.chunks(MAX_CHUNK_READINGS) {
            let chunk = StoredChunk {
                key: keys::reading_key(prefix, piece[0].reading.ts).into(),
                first: piece[0].reading.ts,
                value: chunks::encode_chunk(piece).into(),
            };
            batch.insert(&self.readings, chunk.key.clone(), chunk.value.clone());
            last = Some(chunk);
        }
        last
    }

    /// The first `ts` of the chunk at `key`.
    fn chunk_first_ts(&self, key: &[u8]) -> Result<i64, StoreError> {
        keys::reading_ts(key).ok_or_else(|| self.corrupt_row(READINGS, key, "key too short"))
    }

    /// [`ReadingStore::readings`](crate::ReadingStore::readings): the chunks from the
    /// first of `from`'s day up to `to`, filtered to `from <= ts < to`.
    pub(super) fn stored_readings(
        &self,
        key: &MeterKey,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Result<Vec<StoredReading>, StoreError> {
        if from_ms >= to_ms || limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = keys::readings_prefix(key);
        let range = keys::reading_key(&prefix, chunks::bucket_start(from_ms))
            ..keys::reading_key(&prefix, to_ms);
        let mut out = Vec::with_capacity(limit.min(MAX_PREALLOCATED_ROWS));
        for entry in self.readings.range(range) {
            let (row_key, value) = entry
                .into_inner()
                .map_err(|e| self.fjall_error("reading readings", e))?;
            let chunk = chunks::decode_chunk(self.chunk_first_ts(&row_key)?, &value)
                .map_err(|e| self.corrupt_row(READINGS, &row_key, e))?;
            let wanted = chunk
                .into_iter()
                .filter(|stored| (from_ms..to_ms).contains(&stored.reading.ts));
            out.extend(wanted.take(limit - out.len()));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Stages the expiry of the chunk at `key` of the meter whose `readings` prefix is
    /// `prefix` (the chunk's first `ts` is older than `cutoff_ms`): removed, and when some of its readings are at or after the cutoff
    /// (the chunk straddles it), written again without the older ones under the key
    /// of its first kept reading. Returns how many readings expired. The caller holds
    /// the writer lock until it commits.
    pub(super) fn stage_chunk_expiry(
        &self,
        batch: &mut WriteBatch,
        prefix: &[u8],
        key: &[u8],
        value: &[u8],
        cutoff_ms: i64,
    ) -> Result<u64, StoreError> {
        let stored = chunks::decode_chunk(self.chunk_first_ts(key)?, value)
            .map_err(|e| self.corrupt_row(READINGS, key, e))?;
        let expired = stored.partition_point(|s| s.reading.ts < cutoff_ms);
        batch.remove(&self.readings, key);
        self.stage_chunks(batch, prefix, &stored[expired..]);
        Ok(expired as u64)
    }
}

/// What one write does to a meter's rows: the rows to store (ascending `ts`, one
/// per `ts`) and the `ts` of rows to withdraw (ascending, none also in `rows`).
struct Edits {
    rows: Vec<StoredReading>,
    withdrawn: Vec<i64>,
}

/// The edits of one day, or of the part of a day one chunk receives.
#[derive(Clone, Copy)]
struct DayEdits<'a> {
    rows: &'a [StoredReading],
    withdrawn: &'a [i64],
}

impl<'a> DayEdits<'a> {
    fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.withdrawn.is_empty()
    }

    /// The oldest and newest `ts` edited.
    fn span(&self) -> Option<(i64, i64)> {
        let ts = |row: &StoredReading| row.reading.ts;
        let firsts = self.rows.first().map(ts).into_iter();
        let lasts = self.rows.last().map(ts).into_iter();
        let oldest = firsts.chain(self.withdrawn.first().copied()).min()?;
        let newest = lasts.chain(self.withdrawn.last().copied()).max()?;
        Some((oldest, newest))
    }

    /// The edits whose `ts` pass `leading` (the ascending edits' leading run), and
    /// the rest.
    fn split_while(self, leading: impl Fn(i64) -> bool) -> (Self, Self) {
        let (rows, later_rows) = self
            .rows
            .split_at(self.rows.partition_point(|r| leading(r.reading.ts)));
        let (withdrawn, later_withdrawn) = self
            .withdrawn
            .split_at(self.withdrawn.partition_point(|ts| leading(*ts)));
        (
            Self { rows, withdrawn },
            Self {
                rows: later_rows,
                withdrawn: later_withdrawn,
            },
        )
    }
}

/// The edits of `parts` (in write order): the rows ascending by `ts`, the last
/// occurrence of each `ts` (usually the parts are ascending one after the other
/// already), and the withdrawn `ts` no later part stores again; a row a later part
/// withdraws is not stored.
fn latest_per_ts(parts: &[&MeterBatch]) -> Edits {
    let mut rows = Vec::with_capacity(parts.iter().map(|part| part.readings.len()).sum());
    for part in parts {
        rows.extend_from_slice(&part.readings);
    }
    if !rows.is_sorted_by(|a, b| a.reading.ts < b.reading.ts) {
        keep_last_by(&mut rows, |a, b| a.reading.ts.cmp(&b.reading.ts));
    }
    let mut withdrawn: Vec<i64> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let stored_later = |ts: i64| {
            parts[i + 1..]
                .iter()
                .any(|later| later.readings.iter().any(|r| r.reading.ts == ts))
        };
        withdrawn.extend(part.withdrawn().into_iter().filter(|ts| !stored_later(*ts)));
    }
    if !withdrawn.is_empty() {
        withdrawn.sort_unstable();
        withdrawn.dedup();
        rows.retain(|r| withdrawn.binary_search(&r.reading.ts).is_err());
    }
    Edits { rows, withdrawn }
}
