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
    /// any more (they stay stored: storage has no deletes). Set by VEE, so that what
    /// counted the earlier versions (analytics) can take them back; empty otherwise.
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
    /// The newest status of the batch by `ts` (the later one of equal `ts`).
    pub fn newest_status(&self) -> Option<&DeviceStatus> {
        self.statuses.iter().rev().max_by_key(|s| s.ts)
    }

    /// What the batch changes in rows a processor counted already (at or before
    /// `counted_up_to`): per `ts`, the litres of the row now minus those of the row
    /// before — VEE's re-emitted `readings` against the earlier versions it
    /// [`replaced`](Self::replaced), a replaced row no longer made counting as taken
    /// back. A row counts its interval unless it is suspect. Ascending `ts`, changes
    /// only; empty for an in-order batch.
    pub fn corrections(&self, counted_up_to: i64) -> Vec<(i64, i64)> {
        let rows = &self.readings;
        if self.replaced.is_empty() && rows.first().is_none_or(|r| r.reading.ts > counted_up_to) {
            return Vec::new();
        }
        let counted = |row: &StoredReading| match row.quality {
            Quality::Suspect => 0,
            _ => row
                .interval_l
                .map_or(0, |l| i64::try_from(l).unwrap_or(i64::MAX)),
        };
        let mut deltas: std::collections::BTreeMap<i64, i64> = Default::default();
        for row in rows.iter().filter(|r| r.reading.ts <= counted_up_to) {
            *deltas.entry(row.reading.ts).or_default() += counted(row);
        }
        for row in self
            .replaced
            .iter()
            .filter(|r| r.reading.ts <= counted_up_to)
        {
            *deltas.entry(row.reading.ts).or_default() -= counted(row);
        }
        deltas
            .into_iter()
            .filter(|(_, delta)| *delta != 0)
            .collect()
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
