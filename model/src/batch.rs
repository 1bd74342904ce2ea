//! What a shard worker hands on when it seals a batch: per meter, the readings it
//! accepted since the last seal and its state after them, plus the batch's dead
//! letters. The sink writes all of it in one durable write and, only then, acks each
//! meter's watermark (DESIGN §2, §6).

use crate::exception::RegisterOrder;
use crate::ids::MeterKey;
use crate::reject::Reject;
use crate::state::{MeterState, Quality};
use crate::status::DeviceStatus;
use crate::uplink::Reading;

/// One reading as stored: the measurement plus what the pipeline learnt about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredReading {
    pub reading: Reading,
    /// Seq of the message that carried it.
    pub seq: u64,
    /// When meterflow received the message, epoch ms (service clock).
    pub received_at: i64,
    pub quality: Quality,
    /// Litres since the previous reading (register delta), when known.
    pub interval_l: Option<u64>,
}

impl StoredReading {
    /// A reading as the meter sent it: quality actual, interval not yet known.
    pub fn actual(reading: Reading, seq: u64, received_at: i64) -> Self {
        Self {
            reading,
            seq,
            received_at,
            quality: Quality::Actual,
            interval_l: None,
        }
    }
}

/// One meter's share of a sealed batch.
#[derive(Clone, Debug)]
pub struct MeterBatch {
    pub key: MeterKey,
    /// Newly accepted readings, in arrival order (ascending `ts` within a message).
    pub readings: Vec<StoredReading>,
    /// The meter's state after this batch; persisted with the readings. Its
    /// watermark is the ack to publish once the batch is durable.
    pub state: MeterState,
    /// New messages whose readings are in `readings`.
    pub messages: u32,
    /// Rows VEE stored for this meter before this batch and re-decides in it: the
    /// earlier version of each row it re-emits in `readings`, and rows no pass makes
    /// any more ([`withdrawn`](Self::withdrawn): the store deletes them with the
    /// batch). Set by VEE, so that what counted the earlier versions (analytics) can
    /// take them back; empty otherwise.
    pub replaced: Vec<StoredReading>,
    /// Readings those new messages carried. `readings` can hold more: rows VEE
    /// re-decided for reads of earlier messages are re-emitted there, and are not new
    /// readings (the stored-readings metric counts these).
    pub sent_readings: u32,
    /// Duplicate messages seen in this batch; they are answered with the watermark.
    pub duplicates: u32,
    /// Earliest `received_at` among the new messages (for publish→durable latency).
    pub first_received_at: Option<i64>,
    /// Device status of every new message in the batch, in arrival order: a flag
    /// raised in any of them counts, whatever else the batch holds (alerting folds
    /// them by `ts`; the meter view shows the newest one's battery and signal).
    pub statuses: Vec<DeviceStatus>,
    /// Operator orders about the meter's register taken into this batch (decided
    /// exceptions, recorded exchanges); VEE keeps them in the meter's state and
    /// re-runs its pass from the oldest.
    pub orders: Vec<RegisterOrder>,
}

impl MeterBatch {
    /// A meter's share with nothing in it yet, its state the default one (a shard's
    /// open batch fills it in as the meter's messages join).
    pub fn empty(key: MeterKey) -> Self {
        Self {
            key,
            readings: Vec::new(),
            state: MeterState::default(),
            messages: 0,
            replaced: Vec::new(),
            sent_readings: 0,
            duplicates: 0,
            first_received_at: None,
            statuses: Vec::new(),
            orders: Vec::new(),
        }
    }

    /// The newest status of the batch by `ts` (of equal `ts`, the greater seq's).
    pub fn newest_status(&self) -> Option<&DeviceStatus> {
        self.statuses.iter().max_by_key(|s| (s.ts, s.seq))
    }

    /// The `ts` of the rows stored before this batch that no pass makes any more —
    /// [`replaced`](Self::replaced) and not re-emitted in `readings` (an estimate a
    /// late read re-spread, a recorded final read a new base no longer needs). The
    /// store deletes them in the write that stores the batch; a later batch's row
    /// at the same `ts` wins over the delete. Ascending, each once; empty (no
    /// allocation) when VEE replaced nothing.
    pub fn withdrawn(&self) -> Vec<i64> {
        if self.replaced.is_empty() {
            return Vec::new();
        }
        let mut made: Vec<i64> = self.readings.iter().map(|r| r.reading.ts).collect();
        made.sort_unstable();
        let mut gone: Vec<i64> = self
            .replaced
            .iter()
            .map(|r| r.reading.ts)
            .filter(|ts| made.binary_search(ts).is_err())
            .collect();
        gone.sort_unstable();
        gone.dedup();
        gone
    }

    /// What the batch changes in rows a processor counted already (at or before
    /// `counted_up_to`): per `ts`, the row as it counts now against the row before —
    /// VEE's re-emitted `readings` against the earlier versions it
    /// [`replaced`](Self::replaced), a replaced row no longer made counting as taken
    /// back. Ascending `ts`, changes only; empty for an in-order batch.
    pub fn row_changes(&self, counted_up_to: i64) -> Vec<RowChange> {
        let rows = &self.readings;
        if self.replaced.is_empty() && rows.first().is_none_or(|r| r.reading.ts > counted_up_to) {
            return Vec::new();
        }
        let mut changes: std::collections::BTreeMap<i64, RowChange> = Default::default();
        for row in self
            .replaced
            .iter()
            .filter(|r| r.reading.ts <= counted_up_to)
        {
            changes
                .entry(row.reading.ts)
                .or_insert_with(|| RowChange::at(row.reading.ts))
                .before = counted_litres(row);
        }
        for row in rows.iter().filter(|r| r.reading.ts <= counted_up_to) {
            changes
                .entry(row.reading.ts)
                .or_insert_with(|| RowChange::at(row.reading.ts))
                .now = counted_litres(row);
        }
        changes
            .into_values()
            .filter(|c| c.before != c.now)
            .collect()
    }

    /// [`row_changes`](Self::row_changes) as litres: per `ts`, what the row counts
    /// now minus what it counted before (a row that does not count, 0).
    pub fn corrections(&self, counted_up_to: i64) -> Vec<(i64, i64)> {
        self.row_changes(counted_up_to)
            .into_iter()
            .map(|c| (c.ts, c.delta()))
            .filter(|(_, delta)| *delta != 0)
            .collect()
    }
}

/// The litres a row counts in usage and analytics: its interval, unless it is
/// suspect; `None` when it counts nothing (suspect, or a meter's first read, which
/// measures no interval).
pub fn counted_litres(row: &StoredReading) -> Option<u64> {
    match row.quality {
        Quality::Suspect => None,
        _ => row.interval_l,
    }
}

/// How a batch changed one counted row ([`MeterBatch::row_changes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowChange {
    pub ts: i64,
    /// What the row counted before the batch ([`counted_litres`]).
    pub before: Option<u64>,
    /// What it counts now.
    pub now: Option<u64>,
}

impl RowChange {
    fn at(ts: i64) -> Self {
        Self {
            ts,
            before: None,
            now: None,
        }
    }

    /// Litres now minus litres before.
    pub fn delta(&self) -> i64 {
        let litres = |l: Option<u64>| i64::try_from(l.unwrap_or(0)).unwrap_or(i64::MAX);
        litres(self.now) - litres(self.before)
    }
}

/// A rejected uplink, kept with its reason (DESIGN §6.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The tenant named by the topic when it is a well-formed id, else
    /// [`INVALID_TENANT`].
    pub tenant: String,
    pub received_at: i64,
    /// Unique among dead letters of the same tenant and millisecond.
    pub id: u64,
    pub topic: String,
    /// The payload, capped at [`DEAD_LETTER_PAYLOAD_CAP`] bytes.
    pub payload: Vec<u8>,
    pub reason: Reject,
    /// `{tenant}/{meter}/{seq}`, with `-` for parts that could not be read.
    pub correlation_id: String,
}

/// Where dead letters go whose topic names no well-formed tenant id. Not itself a
/// valid id, so it can never collide with a configured tenant.
pub const INVALID_TENANT: &str = "~invalid";

/// Bytes of a rejected payload kept for diagnosis: enough to see the JSON head or the
/// binary header, without letting garbage fill the disk.
pub const DEAD_LETTER_PAYLOAD_CAP: usize = 1024;

/// A batch sealed by one shard worker.
#[derive(Clone, Debug, Default)]
pub struct SealedBatch {
    pub shard: usize,
    /// Per-shard sequence number: batches of one shard are made durable in this order.
    pub number: u64,
    pub meters: Vec<MeterBatch>,
    pub dead_letters: Vec<DeadLetter>,
    /// The service clock when the batch was sealed, epoch ms. Processors never read a
    /// clock: time-driven work (analytics flushes, billing late windows) runs off
    /// this, so replaying a batch gives the same outputs.
    pub now_ms: i64,
}

impl SealedBatch {
    pub fn reading_count(&self) -> usize {
        self.meters.iter().map(|m| m.readings.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.meters.is_empty() && self.dead_letters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MeterKey;

    fn row(ts: i64, quality: Quality) -> StoredReading {
        StoredReading {
            quality,
            ..StoredReading::actual(Reading::register(ts, 100), 1, ts)
        }
    }

    fn batch(readings: Vec<StoredReading>, replaced: Vec<StoredReading>) -> MeterBatch {
        MeterBatch {
            readings,
            replaced,
            ..MeterBatch::empty(MeterKey::new(
                "demo".try_into().unwrap(),
                "m".try_into().unwrap(),
            ))
        }
    }

    #[test]
    fn a_batch_withdraws_the_replaced_rows_it_does_not_make_again() {
        let estimated = |ts| row(ts, Quality::Estimated);
        // A late read at 30 re-spreads estimates at 10 and 20 to one at 15.
        let late = batch(
            vec![estimated(15), row(30, Quality::Actual), estimated(40)],
            vec![estimated(40), estimated(20), estimated(10), estimated(20)],
        );
        assert_eq!(late.withdrawn(), vec![10, 20]);
        // Nothing replaced, nothing withdrawn, whatever the rows.
        assert!(
            batch(vec![row(5, Quality::Actual)], Vec::new())
                .withdrawn()
                .is_empty()
        );
        // Every replaced row made again: nothing withdrawn.
        let again = batch(
            vec![row(5, Quality::Suspect)],
            vec![row(5, Quality::Actual)],
        );
        assert!(again.withdrawn().is_empty());
    }
}
