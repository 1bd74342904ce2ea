//! Retention of the embedded store: rows older than their table's retention period
//! are deleted by an expiry sweep — the embedded counterpart of ScyllaDB's table TTLs
//! (`store.scylla.*_ttl_days`).
//!
//! fjall 3.1 has compaction filters, which could drop old rows as a side effect of
//! compaction, but a compaction only touches the tables it picks, so an expired row
//! could stay readable for as long as its table is left alone. The sweep gives a bound
//! instead: after a sweep at `now_ms`, no expired row is left.
//!
//! Which rows expire (the pure part, [`plan`] and [`expired_range`]): every time-keyed
//! table is a sequence of *series* — one tenant's dead letters, one meter's readings,
//! one district's hours — whose keys are the series prefix (ids ending in `0x00`,
//! see `keys.rs`) then the row's time as 8 ordered bytes. So one series' expired rows
//! are exactly the keys from `prefix ordered_ts(i64::MIN)` up to, not including,
//! `prefix ordered_ts(cutoff)`, where `cutoff = now_ms − days × 86 400 000`. A row
//! whose time equals the cutoff is kept. The time of a row is its key's: a dead
//! letter's `received_at`, an hour row's start, a readings chunk's first `ts`.
//!
//! A readings chunk holds up to a day of readings (`chunks.rs`), so one whose key is
//! before the cutoff may hold readings at or after it. Each chunk in the expired range
//! is decoded: it is deleted, and when it straddles the cutoff it is written again
//! with only its readings at or after the cutoff, under the key of the first of them.
//! Trimming rather than keeping the whole chunk means a read never sees a reading
//! older than the cutoff after a sweep, exactly as with one row per reading. The
//! report counts readings, not chunks.
//!
//! How they are deleted (the I/O part, [`EmbeddedStore::expire`]): the sweep seeks to
//! the first key of a table, reads its series prefix, deletes that series' expired
//! range in write batches of at most `chunk` keys, then seeks past the series and
//! repeats. Memory is bounded by one chunk of keys (and, for readings, their values:
//! at most `chunk` × 128 readings); each batch commits on its own (journal-written,
//! not fsynced: a deletion lost in a crash is redone by the next sweep). Each batch is
//! read and committed under the store's writer lock, so a commit merging into a chunk
//! the sweep is trimming waits for at most one batch, and neither overwrites the
//! other's rows.
//!
//! [`spawn_sweeper`] runs the sweep on a thread of its own: once at start, then every
//! `every`. It holds the store only while sweeping, so dropping the store is never
//! delayed by more than one sweep.

use std::ops::Range;
use std::sync::Weak;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use fjall::Keyspace;
use tracing::{info, warn};

use super::{DEAD_LETTERS, DISTRICT_HOURLY, EmbeddedStore, READINGS, keys};
use crate::StoreError;

/// Milliseconds in a retention day.
const DAY_MS: i64 = 86_400_000;

/// Keys deleted per write batch. 1,000 keys of ~40 bytes is ~40 KiB of batch (plus
/// at most one trimmed readings chunk per meter, ~2 KiB): a commit of that size takes
/// well under a millisecond, so writers sharing the journal barely notice, and a
/// sweep of millions of rows still needs only thousands of commits.
pub const SWEEP_CHUNK: usize = 1_000;

/// How often [`spawn_sweeper`] sweeps by default: retention is counted in days, so an
/// hour of lateness is noise, and a sweep that finds nothing expired costs one seek
/// per series.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3_600);

/// Retention periods in days; `0` keeps a table's rows forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// `readings`, by reading time.
    pub readings_days: u32,
    /// `dead_letters`, by the time the uplink was received.
    pub dead_letters_days: u32,
    /// `district_hourly`, by the hour's start.
    pub district_hourly_days: u32,
}

impl Retention {
    /// Whether no table expires, so there is nothing to sweep.
    pub fn keeps_everything(&self) -> bool {
        Table::ALL.iter().all(|table| self.days(*table) == 0)
    }

    fn days(&self, table: Table) -> u32 {
        match table {
            Table::Readings => self.readings_days,
            Table::DeadLetters => self.dead_letters_days,
            Table::DistrictHourly => self.district_hourly_days,
        }
    }
}

/// A time-keyed table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    Readings,
    DeadLetters,
    DistrictHourly,
}

impl Table {
    const ALL: [Table; 3] = [Table::Readings, Table::DeadLetters, Table::DistrictHourly];

    /// The keyspace name.
    fn name(self) -> &'static str {
        match self {
            Table::Readings => READINGS,
            Table::DeadLetters => DEAD_LETTERS,
            Table::DistrictHourly => DISTRICT_HOURLY,
        }
    }

    /// Ids before the time in the table's keys, which make up a series prefix: the
    /// tenant; or the tenant and the meter or district.
    fn ids(self) -> usize {
        match self {
            Table::DeadLetters => 1,
            Table::Readings | Table::DistrictHourly => 2,
        }
    }
}

/// The tables a sweep can expire rows from, as named in [`SweepReport::expired`].
pub const EXPIRING_TABLES: [&str; 3] = [READINGS, DEAD_LETTERS, DISTRICT_HOURLY];

/// One table's part of a sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Expiry {
    pub(crate) table: Table,
    /// Rows older than this (epoch ms) expire.
    pub(crate) cutoff_ms: i64,
}

/// What a sweep at `now_ms` expires: one entry per table with a retention period.
pub(crate) fn plan(now_ms: i64, retention: &Retention) -> Vec<Expiry> {
    Table::ALL
        .into_iter()
        .filter(|table| retention.days(*table) > 0)
        .map(|table| Expiry {
            table,
            cutoff_ms: now_ms.saturating_sub(i64::from(retention.days(table)) * DAY_MS),
        })
        .collect()
}

/// The smallest key above `key`: where a scan resumes after it.
fn after_key(key: &[u8]) -> Vec<u8> {
    [key, &[0]].concat()
}

/// The keys of the series `prefix` older than `cutoff_ms`.
pub(crate) fn expired_range(prefix: &[u8], cutoff_ms: i64) -> Range<Vec<u8>> {
    let at = |ts: i64| [prefix, &keys::ordered_ts(ts)].concat();
    at(i64::MIN)..at(cutoff_ms)
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Rows deleted, per table in [`EXPIRING_TABLES`] (tables that were not swept
    /// are absent); for `readings`, readings (not the chunks holding them).
    pub expired: Vec<(&'static str, u64)>,
    /// Write batches committed.
    pub batches: u64,
    /// Keys expired in the largest of them (at most the sweep's chunk; a trimmed
    /// readings chunk is one).
    pub largest_batch: usize,
}

impl SweepReport {
    /// Rows deleted across tables.
    pub fn rows(&self) -> u64 {
        self.expired.iter().map(|(_, rows)| rows).sum()
    }
}

impl EmbeddedStore {
    /// Deletes every row older than its table's retention at `now_ms`, in write
    /// batches of at most `chunk` keys (see the module docs). Rows inside the window
    /// are kept (a readings chunk straddling the cutoff is rewritten without its
    /// expired readings). Safe to run while the store is written.
    pub fn expire(
        &self,
        now_ms: i64,
        retention: &Retention,
        chunk: usize,
    ) -> Result<SweepReport, StoreError> {
        let chunk = chunk.max(1);
        let mut report = SweepReport::default();
        for expiry in plan(now_ms, retention) {
            let rows = self.expire_table(&expiry, chunk, &mut report)?;
            report.expired.push((expiry.table.name(), rows));
        }
        Ok(report)
    }

    fn keyspace(&self, table: Table) -> &Keyspace {
        match table {
            Table::Readings => &self.readings,
            Table::DeadLetters => &self.dead_letters,
            Table::DistrictHourly => &self.district_hourly,
        }
    }

    /// Deletes one table's expired rows, series by series; returns how many (for
    /// readings, how many readings).
    fn expire_table(
        &self,
        expiry: &Expiry,
        chunk: usize,
        report: &mut SweepReport,
    ) -> Result<u64, StoreError> {
        let (table, keyspace) = (expiry.table.name(), self.keyspace(expiry.table));
        let mut rows = 0;
        let mut from: Vec<u8> = Vec::new();
        while let Some(first) = keyspace.range(from.as_slice()..).next() {
            let key = first
                .key()
                .map_err(|e| self.fjall_error("scanning for expired rows", e))?;
            let prefix = keys::series_prefix(&key, expiry.table.ids())
                .ok_or_else(|| self.corrupt_row(table, &key, "key without its ids"))?;
            let mut range = expired_range(prefix, expiry.cutoff_ms);
            loop {
                let mut tails = self.lock_writer();
                let doomed = keyspace
                    .range(range.clone())
                    .take(chunk)
                    .map(|entry| entry.into_inner())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| self.fjall_error("scanning for expired rows", e))?;
                let Some((last, _)) = doomed.last() else {
                    break;
                };
                // The next chunk starts after this one, not over its tombstones.
                range.start = after_key(last);
                let mut batch = self.db.batch();
                let count = doomed.len();
                for (key, value) in &doomed {
                    rows += match expiry.table {
                        Table::Readings => {
                            // Its chunks change under the key it might append to.
                            tails.forget(prefix);
                            self.stage_chunk_expiry(
                                &mut batch,
                                prefix,
                                key,
                                value,
                                expiry.cutoff_ms,
                            )?
                        }
                        Table::DeadLetters | Table::DistrictHourly => {
                            batch.remove(keyspace, key.clone());
                            1
                        }
                    };
                }
                batch
                    .commit()
                    .map_err(|e| self.fjall_error("deleting expired rows", e))?;
                report.batches += 1;
                report.largest_batch = report.largest_batch.max(count);
                if count < chunk {
                    break;
                }
            }
            from = keys::after_series(prefix);
        }
        Ok(rows)
    }
}

/// Sweeps `store` with `retention` at start and then every `every`, on a thread of
/// its own, reading the time from `clock` (epoch ms) and handing each report to
/// `on_sweep`. A failed sweep is logged and retried at the next one. The thread ends
/// at its first wake-up after the store is dropped.
pub fn spawn_sweeper<F>(
    store: Weak<EmbeddedStore>,
    retention: Retention,
    every: Duration,
    clock: fn() -> i64,
    mut on_sweep: F,
) -> std::io::Result<JoinHandle<()>>
where
    F: FnMut(&SweepReport) + Send + 'static,
{
    thread::Builder::new()
        .name("store-retention".into())
        .spawn(move || {
            while let Some(store) = store.upgrade() {
                match store.expire(clock(), &retention, SWEEP_CHUNK) {
                    Ok(report) => {
                        if report.rows() > 0 {
                            info!(expired = ?report.expired, batches = report.batches, "retention sweep deleted expired rows");
                        }
                        on_sweep(&report);
                    }
                    Err(error) => {
                        warn!(%error, "retention sweep failed; the next one retries");
                    }
                }
                drop(store);
                thread::sleep(every);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_750_000_000_000;

    fn retention(readings: u32, dead_letters: u32, district_hourly: u32) -> Retention {
        Retention {
            readings_days: readings,
            dead_letters_days: dead_letters,
            district_hourly_days: district_hourly,
        }
    }

    #[test]
    fn the_plan_has_one_cutoff_per_table_with_a_retention() {
        assert_eq!(
            plan(NOW, &retention(400, 14, 0)),
            vec![
                Expiry {
                    table: Table::Readings,
                    cutoff_ms: NOW - 400 * DAY_MS
                },
                Expiry {
                    table: Table::DeadLetters,
                    cutoff_ms: NOW - 14 * DAY_MS
                },
            ]
        );
        assert!(plan(NOW, &retention(0, 0, 0)).is_empty());
        assert!(retention(0, 0, 0).keeps_everything());
        assert!(!retention(0, 0, 1).keeps_everything());
    }

    #[test]
    fn a_cutoff_before_the_epoch_of_i64_saturates() {
        let planned = plan(i64::MIN + 5, &retention(0, 1, 0));
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].cutoff_ms, i64::MIN);
    }

    #[test]
    fn the_table_names_are_the_expiring_tables() {
        let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names, EXPIRING_TABLES);
        assert!(after_key(b"ab") > b"ab".to_vec());
        assert!(after_key(b"ab") < b"ab\x00\x00".to_vec());
    }

    #[test]
    fn the_expired_range_holds_exactly_the_rows_before_the_cutoff() {
        let prefix = b"t\0m\0";
        let range = expired_range(prefix, 1_000);
        let key = |ts: i64| [&prefix[..], &keys::ordered_ts(ts)].concat();
        for (ts, expired) in [
            (i64::MIN, true),
            (-1, true),
            (999, true),
            (1_000, false),
            (i64::MAX, false),
        ] {
            assert_eq!(range.contains(&key(ts)), expired, "ts {ts}");
        }
        // A dead letter's id follows its time: one received at the cutoff is kept,
        // whatever its id; one just before it expires, whatever its id.
        let letter = |ts: i64, id: u64| [key(ts), id.to_be_bytes().to_vec()].concat();
        assert!(!range.contains(&letter(1_000, 0)));
        assert!(range.contains(&letter(999, u64::MAX)));
        // Another series is never in range.
        assert!(!range.contains(&[&b"t\0m2\0"[..], &keys::ordered_ts(0)].concat()));
        assert!(!range.contains(&[&b"t\0l\0"[..], &keys::ordered_ts(0)].concat()));
    }
}
