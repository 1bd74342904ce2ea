//! Values of the embedded store's `readings` keyspace: **chunks**, each holding up to
//! [`MAX_CHUNK_READINGS`] readings of one meter within one UTC day, delta-encoded
//! behind a format-version byte. The key is the meter's prefix and the chunk's first
//! `ts` (`keys.rs`), so the first reading's `ts` is not repeated in the value.
//!
//! Chunk value, format version [`CHUNK_FORMAT_VERSION`] (varints are unsigned LEB128,
//! at most 10 bytes; "signed" means a zigzag-encoded varint; deltas wrap, so every
//! `u64`/`i64` round-trips):
//!
//! | field              | encoding                                                        |
//! |--------------------|-----------------------------------------------------------------|
//! | format version     | 1 byte, [`CHUNK_FORMAT_VERSION`]                                |
//! | count              | varint, `1..=MAX_CHUNK_READINGS`                                |
//! | tail               | the last reading's `ts` (varint, from the first `ts`), reg, rev, seq (varints) and received_at (signed, from its `ts`) |
//! | then per reading, in ascending `ts`:                                                 ||
//! | ts                 | varint delta from the previous `ts` (≥ 1); absent for the first |
//! | reg, rev           | signed delta from the previous reading's (the first from 0)     |
//! | flow               | varint                                                          |
//! | flags              | 1 byte: bits 0–1 quality code, bit 2 temp present, bit 3 interval_l present, bits 4–7 zero |
//! | temp               | signed, when present                                            |
//! | interval_l         | varint, when present                                            |
//! | seq                | signed delta from the previous reading's (the first from 0)     |
//! | received_at        | signed delta from the previous reading's (the first from the chunk's first `ts`) |
//!
//! The tail repeats what the last reading's deltas end at, so that readings newer
//! than a chunk's last are appended ([`append_to_chunk`]) by encoding only them after
//! a copy of the stored readings' bytes — the common write, a meter's next message —
//! instead of decoding and re-encoding the whole chunk. A full decode checks that the
//! readings end where the tail says.
//!
//! A fifteen-minute reading costs about 12–16 bytes this way, against 50 bytes of
//! value plus a ~30-byte key for the one-row-per-reading layout before it.
//!
//! That older layout, `rows.rs`' 50-byte row with version byte
//! [`ROW_FORMAT_VERSION`](super::rows::ROW_FORMAT_VERSION) (1), is still read: a store
//! written by an older build holds such rows in the same keyspace, under the same key
//! shape (prefix, `ts`), and [`decode_chunk`] reads one as a chunk of one reading. No
//! conversion is needed at open; such a row becomes part of a chunk when a write merges
//! into it, and leaves with retention otherwise.
//!
//! Decoding never panics and never allocates more than [`MAX_CHUNK_READINGS`]
//! readings: a value that does not match its layout — unknown version, count above
//! the cap, timestamps not strictly ascending, bad flags, truncated or trailing
//! bytes — is a [`RowError`].

use meterflow_model::{Quality, Reading, StoredReading};

use super::rows::{self, ROW_FORMAT_VERSION, RowError};

/// Version byte of a chunk value. Distinct from the single-reading row's
/// [`ROW_FORMAT_VERSION`], which shares the keyspace.
pub(crate) const CHUNK_FORMAT_VERSION: u8 = 2;

/// Most readings one chunk holds; a merge that would make a chunk larger splits it.
/// It bounds what one read-modify-write decodes and re-encodes (128 readings are
/// ~2 KiB encoded, ~7 KiB decoded) and what one corrupt or hostile value can make
/// the decoder allocate. 128 holds a whole day of fifteen-minute reads (96) in one
/// chunk, and a day of one-minute reads (1,440) in 12.
pub const MAX_CHUNK_READINGS: usize = 128;

/// Most readings a chunk grows to by appends ([`append_to_chunk`]); readings that
/// would take it past this start a chunk of their own after it, which is still one
/// row for the message. An append rewrites the whole chunk (its stored bytes are
/// copied into the new value), so this bounds the bytes a message's write carries
/// into the journal, the memtable, flushes and compactions: a message of 24 readings
/// writes its own ~24 readings, not the day so far (~60 on average when chunks grew
/// to a whole day of fifteen-minute reads). A day of fifteen-minute reads becomes
/// 3–4 chunks instead of one; merges that are not appends still fill a chunk up to
/// [`MAX_CHUNK_READINGS`].
pub const APPEND_UP_TO: usize = 32;

/// Length of a chunk's time bucket: one UTC day (see "Bucket" in `mod.rs`).
pub(crate) const BUCKET_MS: i64 = 86_400_000;

/// The bucket of `ts`; a chunk's readings all share one.
pub(crate) fn bucket(ts: i64) -> i64 {
    ts.div_euclid(BUCKET_MS)
}

/// The first instant of `ts`'s bucket (`i64::MIN` for the partial bucket at the
/// bottom of the range).
pub(crate) fn bucket_start(ts: i64) -> i64 {
    ts.saturating_sub(ts.rem_euclid(BUCKET_MS))
}

/// Flag bits of a reading in a chunk.
const QUALITY_BITS: u8 = 0b0011;
const TEMP_PRESENT: u8 = 0b0100;
const INTERVAL_PRESENT: u8 = 0b1000;

/// Encodes `readings` — 1 to [`MAX_CHUNK_READINGS`] of them, strictly ascending by
/// `ts` — as one chunk value.
pub(crate) fn encode_chunk(readings: &[StoredReading]) -> Vec<u8> {
    debug_assert!((1..=MAX_CHUNK_READINGS).contains(&readings.len()));
    debug_assert!(readings.is_sorted_by(|a, b| a.reading.ts < b.reading.ts));
    let first_ts = readings.first().map_or(0, |r| r.reading.ts);
    let mut tail = Previous::at(first_ts);
    let mut body = Vec::with_capacity(MAX_READING_BYTES * readings.len());
    put_readings(&mut body, readings, &mut tail, false);
    with_header(first_ts, readings.len(), &tail, &[&body])
}

/// What appending readings to a stored chunk gives ([`append_to_chunk`]: its new
/// value; the store's append: the chunk as staged).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Append<T> {
    /// The chunk with the readings appended.
    Appended(T),
    /// The readings are all newer than the chunk's last but would take it past
    /// [`APPEND_UP_TO`]: they can start a chunk of their own after it.
    Full,
    /// Not all newer than the chunk's last (or none given, or the value is an older
    /// single-reading row): the chunk has to be decoded and merged.
    Merge,
}

/// The chunk value `value` (at `first_ts`) with `new` appended, when every reading
/// of `new` is newer than the chunk's last and the chunk then holds at most
/// [`APPEND_UP_TO`]. Only the header is read: the stored readings' bytes are copied,
/// not checked.
pub(crate) fn append_to_chunk(
    first_ts: i64,
    value: &[u8],
    new: &[StoredReading],
) -> Result<Append<Vec<u8>>, RowError> {
    let Some((&CHUNK_FORMAT_VERSION, rest)) = value.split_first() else {
        return Ok(Append::Merge);
    };
    let mut cursor = Cursor(rest);
    let (count, mut tail) = cursor.header(first_ts)?;
    let count = count + new.len();
    let after_tail = new
        .first()
        .is_some_and(|oldest| oldest.reading.ts > tail.ts);
    if !after_tail {
        return Ok(Append::Merge);
    }
    if count > APPEND_UP_TO {
        return Ok(Append::Full);
    }
    let mut appended = Vec::with_capacity(MAX_READING_BYTES * new.len());
    put_readings(&mut appended, new, &mut tail, true);
    Ok(Append::Appended(with_header(
        first_ts,
        count,
        &tail,
        &[cursor.0, &appended],
    )))
}

/// Most bytes one encoded reading takes (seven varints, a flags byte and a temp),
/// preallocated so that encoding never grows the buffer (a reading usually takes
/// 12–16; the buffer is dropped once the value is built).
const MAX_READING_BYTES: usize = 7 * MAX_VARINT_BYTES + 1 + 3;

/// Version, count and tail, then the `bodies`' bytes.
fn with_header(first_ts: i64, count: usize, tail: &Previous, bodies: &[&[u8]]) -> Vec<u8> {
    let body_len: usize = bodies.iter().map(|body| body.len()).sum();
    let mut out = Vec::with_capacity(1 + 6 * MAX_VARINT_BYTES + body_len);
    out.push(CHUNK_FORMAT_VERSION);
    put_varint(&mut out, count as u64);
    put_varint(&mut out, (tail.ts as u64).wrapping_sub(first_ts as u64));
    put_varint(&mut out, tail.reg);
    put_varint(&mut out, tail.rev);
    put_varint(&mut out, tail.seq);
    put_signed(&mut out, tail.received_at.wrapping_sub(tail.ts));
    for body in bodies {
        out.extend_from_slice(body);
    }
    out
}

/// Encodes `readings` after the reading `prev` describes, advancing it to the last
/// one. The first reading's `ts` delta is written only when `after_prev` (it is the
/// key's for a chunk's first reading).
fn put_readings(
    out: &mut Vec<u8>,
    readings: &[StoredReading],
    prev: &mut Previous,
    after_prev: bool,
) {
    for (i, stored) in readings.iter().enumerate() {
        let reading = &stored.reading;
        if after_prev || i > 0 {
            put_varint(out, (reading.ts as u64).wrapping_sub(prev.ts as u64));
        }
        put_signed(out, reading.reg.wrapping_sub(prev.reg) as i64);
        put_signed(out, reading.rev.wrapping_sub(prev.rev) as i64);
        put_varint(out, u64::from(reading.flow));
        let mut flags = stored.quality.code();
        flags |= if reading.temp.is_some() {
            TEMP_PRESENT
        } else {
            0
        };
        flags |= if stored.interval_l.is_some() {
            INTERVAL_PRESENT
        } else {
            0
        };
        out.push(flags);
        if let Some(temp) = reading.temp {
            put_signed(out, i64::from(temp));
        }
        if let Some(interval_l) = stored.interval_l {
            put_varint(out, interval_l);
        }
        put_signed(out, stored.seq.wrapping_sub(prev.seq) as i64);
        put_signed(out, stored.received_at.wrapping_sub(prev.received_at));
        *prev = Previous::of(stored);
    }
}

/// Decodes a `readings` value whose key holds `first_ts`: a chunk, or a single
/// reading in the older row layout.
pub(crate) fn decode_chunk(first_ts: i64, bytes: &[u8]) -> Result<Vec<StoredReading>, RowError> {
    match bytes.first() {
        Some(&CHUNK_FORMAT_VERSION) => decode_chunk_body(first_ts, &bytes[1..]),
        Some(&ROW_FORMAT_VERSION) => rows::decode_reading(first_ts, bytes).map(|r| vec![r]),
        Some(&other) => Err(RowError::ReadingsVersion(other)),
        None => Err(RowError::Truncated),
    }
}

/// What the next reading's deltas are taken from: the previous reading's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Previous {
    ts: i64,
    reg: u64,
    rev: u64,
    seq: u64,
    received_at: i64,
}

impl Previous {
    /// Before a chunk's first reading, at `first_ts`.
    fn at(first_ts: i64) -> Previous {
        Previous {
            ts: first_ts,
            reg: 0,
            rev: 0,
            seq: 0,
            received_at: first_ts,
        }
    }

    fn of(stored: &StoredReading) -> Previous {
        Previous {
            ts: stored.reading.ts,
            reg: stored.reading.reg,
            rev: stored.reading.rev,
            seq: stored.seq,
            received_at: stored.received_at,
        }
    }
}

fn decode_chunk_body(first_ts: i64, body: &[u8]) -> Result<Vec<StoredReading>, RowError> {
    let mut cursor = Cursor(body);
    let (count, tail) = cursor.header(first_ts)?;
    let mut out = Vec::with_capacity(count);
    let mut prev = Previous::at(first_ts);
    for i in 0..count {
        let ts = if i == 0 {
            first_ts
        } else {
            let delta = cursor.varint()?;
            (delta > 0)
                .then(|| prev.ts.checked_add_unsigned(delta))
                .flatten()
                .ok_or(RowError::TsOrder)?
        };
        let stored = cursor.reading(ts, &prev)?;
        prev = Previous::of(&stored);
        out.push(stored);
    }
    if !cursor.0.is_empty() {
        return Err(RowError::Length {
            expected: body.len() + 1 - cursor.0.len(),
            got: body.len() + 1,
        });
    }
    if prev != tail {
        return Err(RowError::Tail);
    }
    Ok(out)
}

/// The unread rest of a chunk body.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, RowError> {
        let (&byte, rest) = self.0.split_first().ok_or(RowError::Truncated)?;
        self.0 = rest;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64, RowError> {
        // Most fields are deltas under 128: one byte.
        if let Some((&byte, rest)) = self.0.split_first()
            && byte < 0x80
        {
            self.0 = rest;
            return Ok(u64::from(byte));
        }
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte holds the top bit of a u64 only.
            if shift == 63 && bits > 1 {
                return Err(RowError::Varint);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(RowError::Varint)
    }

    /// The count and the tail of a chunk whose first reading is at `first_ts`.
    fn header(&mut self, first_ts: i64) -> Result<(usize, Previous), RowError> {
        let count = self.varint()?;
        let count = usize::try_from(count)
            .ok()
            .filter(|count| (1..=MAX_CHUNK_READINGS).contains(count))
            .ok_or(RowError::ChunkCount(count))?;
        let span = self.varint()?;
        let ts = first_ts
            .checked_add_unsigned(span)
            .ok_or(RowError::TsOrder)?;
        let tail = Previous {
            ts,
            reg: self.varint()?,
            rev: self.varint()?,
            seq: self.varint()?,
            received_at: ts.wrapping_add(self.signed()?),
        };
        Ok((count, tail))
    }

    fn signed(&mut self) -> Result<i64, RowError> {
        self.varint().map(unzigzag)
    }

    /// The fields of the reading at `ts` after its `ts` delta.
    fn reading(&mut self, ts: i64, prev: &Previous) -> Result<StoredReading, RowError> {
        let reg = prev.reg.wrapping_add(self.signed()? as u64);
        let rev = prev.rev.wrapping_add(self.signed()? as u64);
        let flow = self.varint()?;
        let flow = u32::try_from(flow).map_err(|_| RowError::Field("flow"))?;
        let flags = self.byte()?;
        if flags & !(QUALITY_BITS | TEMP_PRESENT | INTERVAL_PRESENT) != 0 {
            return Err(RowError::Flags(flags));
        }
        let quality = Quality::from_code(flags & QUALITY_BITS)
            .ok_or(RowError::Quality(flags & QUALITY_BITS))?;
        let temp = if flags & TEMP_PRESENT != 0 {
            let temp = self.signed()?;
            Some(i16::try_from(temp).map_err(|_| RowError::Field("temp"))?)
        } else {
            None
        };
        let interval_l = if flags & INTERVAL_PRESENT != 0 {
            Some(self.varint()?)
        } else {
            None
        };
        let seq = prev.seq.wrapping_add(self.signed()? as u64);
        let received_at = prev.received_at.wrapping_add(self.signed()?);
        Ok(StoredReading {
            reading: Reading {
                ts,
                reg,
                rev,
                flow,
                temp,
            },
            seq,
            received_at,
            quality,
            interval_l,
        })
    }
}

/// Longest varint of a u64.
const MAX_VARINT_BYTES: usize = 10;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_signed(out: &mut Vec<u8>, value: i64) {
    put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// `old` with `new` merged in, both strictly ascending by `ts`: a reading of `new`
/// replaces the one of `old` at the same `ts` (last write wins).
pub(crate) fn merge(old: Vec<StoredReading>, new: &[StoredReading]) -> Vec<StoredReading> {
    let mut out = Vec::with_capacity(old.len() + new.len());
    let mut old = old.into_iter().peekable();
    for stored in new {
        while let Some(kept) = old.next_if(|o| o.reading.ts < stored.reading.ts) {
            out.push(kept);
        }
        old.next_if(|o| o.reading.ts == stored.reading.ts);
        out.push(*stored);
    }
    out.extend(old);
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn quality() -> impl Strategy<Value = Quality> {
        proptest::sample::select(Quality::ALL.to_vec())
    }

    prop_compose! {
        /// Any stored reading at `ts` (also the row codec's tests' input).
        pub(in crate::embedded) fn stored_at(ts: i64)(
            reg: u64, rev: u64, flow: u32, temp: Option<i16>,
            seq: u64, received_at: i64, quality in quality(), interval_l: Option<u64>,
        ) -> StoredReading {
            StoredReading {
                reading: Reading { ts, reg, rev, flow, temp },
                seq,
                received_at,
                quality,
                interval_l,
            }
        }
    }

    /// 1 to [`MAX_CHUNK_READINGS`] readings at distinct, ascending times anywhere in
    /// the i64 range (chunks never cross a day, but the codec does not care).
    fn chunk() -> impl Strategy<Value = Vec<StoredReading>> {
        prop::collection::btree_set(any::<i64>(), 1..=MAX_CHUNK_READINGS)
            .prop_flat_map(|times| times.into_iter().map(stored_at).collect::<Vec<_>>())
    }

    fn at(ts: i64, reg: u64) -> StoredReading {
        StoredReading {
            reading: Reading {
                ts,
                reg,
                rev: 0,
                flow: 0,
                temp: None,
            },
            seq: 0,
            received_at: ts,
            quality: Quality::Actual,
            interval_l: None,
        }
    }

    proptest! {
        #[test]
        fn chunks_round_trip(readings in chunk()) {
            let bytes = encode_chunk(&readings);
            prop_assert_eq!(decode_chunk(readings[0].reading.ts, &bytes), Ok(readings));
        }

        /// The decoder's fuzz test: arbitrary bytes, and valid chunks with bytes
        /// flipped, cut or appended, decode to an error or to at most the cap of
        /// strictly ascending readings — never a panic.
        #[test]
        fn garbage_never_panics(
            first_ts: i64,
            bytes in prop::collection::vec(any::<u8>(), 0..400),
            readings in chunk(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut versioned = bytes.clone();
            versioned.insert(0, CHUNK_FORMAT_VERSION);
            let mut damaged = encode_chunk(&readings);
            for (at, byte) in flips {
                let at = at.index(damaged.len());
                damaged[at] ^= byte;
            }
            let cut = damaged[..cut.index(damaged.len() + 1)].to_vec();
            for value in [bytes, versioned, damaged, cut] {
                if let Ok(decoded) = decode_chunk(first_ts, &value) {
                    prop_assert!((1..=MAX_CHUNK_READINGS).contains(&decoded.len()));
                    prop_assert!(decoded.is_sorted_by(|a, b| a.reading.ts < b.reading.ts));
                }
            }
        }

        /// Appending to a chunk encodes exactly what encoding the whole would, and
        /// is refused for readings not after the chunk's last or past
        /// [`APPEND_UP_TO`].
        #[test]
        fn appending_equals_encoding_the_whole(
            readings in chunk(),
            split in any::<prop::sample::Index>(),
            extra in 0usize..3,
        ) {
            let split = split.index(readings.len()).max(1);
            let (stored, new) = readings.split_at(split);
            let value = encode_chunk(stored);
            let (first, last) = (stored[0].reading.ts, stored[split - 1].reading.ts);
            let appended = append_to_chunk(first, &value, new).unwrap();
            if new.is_empty() {
                prop_assert_eq!(appended, Append::Merge);
            } else {
                let expected = if readings.len() <= APPEND_UP_TO {
                    Append::Appended(encode_chunk(&readings))
                } else {
                    Append::Full
                };
                prop_assert_eq!(appended, expected);
                prop_assert_eq!(
                    append_to_chunk(first, &value, &stored[split - 1..]),
                    Ok(Append::Merge)
                );
            }
            if let Some(room) = last.checked_add(2 * MAX_CHUNK_READINGS as i64) {
                let too_many = (1..=(APPEND_UP_TO + 1).saturating_sub(stored.len()).max(1) + extra)
                    .map(|i| at(room - i as i64, 1))
                    .rev()
                    .collect::<Vec<_>>();
                prop_assert_eq!(append_to_chunk(first, &value, &too_many), Ok(Append::Full));
            }
        }

        #[test]
        fn merge_is_last_write_wins_by_ts(
            old in prop::collection::btree_map(-50i64..50, any::<u64>(), 0..40),
            new in prop::collection::btree_map(-50i64..50, any::<u64>(), 0..40),
        ) {
            let mut model = old.clone();
            model.extend(new.iter().map(|(ts, reg)| (*ts, *reg)));
            let old: Vec<_> = old.into_iter().map(|(ts, reg)| at(ts, reg)).collect();
            let new: Vec<_> = new.into_iter().map(|(ts, reg)| at(ts, reg)).collect();
            let merged: Vec<_> = merge(old, &new).iter().map(|s| (s.reading.ts, s.reading.reg)).collect();
            prop_assert_eq!(merged, model.into_iter().collect::<Vec<_>>());
        }

        #[test]
        fn a_bucket_holds_its_start_and_not_the_next(ts: i64) {
            let start = bucket_start(ts);
            prop_assert!(start <= ts);
            prop_assert_eq!(bucket(start), bucket(ts));
            if let Some(before) = start.checked_sub(1) {
                prop_assert_eq!(bucket(before), bucket(ts) - 1);
            }
        }
    }

    #[test]
    fn a_fifteen_minute_day_is_small() {
        let day: Vec<_> = (0..96)
            .map(|i| {
                let mut stored = at(1_763_800_000_000 + i * 900_000, 1_234_567 + 3 * i as u64);
                stored.reading.flow = 40;
                stored.seq = 7_000 + i as u64 / 4;
                stored.received_at = 1_763_800_000_000 + (i / 4 + 1) * 3_600_000;
                stored.interval_l = Some(3);
                stored
            })
            .collect();
        let bytes = encode_chunk(&day);
        assert!(bytes.len() < 96 * 14, "{} bytes", bytes.len());
    }

    #[test]
    fn bad_chunks_are_named() {
        let two = encode_chunk(&[at(0, 1), at(5, 2)]);
        assert_eq!(decode_chunk(0, &[]), Err(RowError::Truncated));
        assert_eq!(decode_chunk(0, &[9]), Err(RowError::ReadingsVersion(9)));
        assert_eq!(
            decode_chunk(0, &two[..two.len() - 1]),
            Err(RowError::Truncated)
        );
        let mut longer = two.clone();
        longer.push(0);
        assert!(matches!(
            decode_chunk(0, &longer),
            Err(RowError::Length { .. })
        ));
        // Count 0, and one above the cap.
        assert_eq!(
            decode_chunk(0, &[CHUNK_FORMAT_VERSION, 0]),
            Err(RowError::ChunkCount(0))
        );
        let mut huge = vec![CHUNK_FORMAT_VERSION];
        put_varint(&mut huge, MAX_CHUNK_READINGS as u64 + 1);
        assert_eq!(
            decode_chunk(0, &huge),
            Err(RowError::ChunkCount(MAX_CHUNK_READINGS as u64 + 1))
        );
        // A ts delta of 0 repeats a ts; one past i64::MAX overflows.
        let mut repeated = encode_chunk(&[at(0, 1)]);
        repeated[1] = 2;
        repeated.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_chunk(0, &repeated), Err(RowError::TsOrder));
        let past_max = encode_chunk(&[at(i64::MAX - 1, 1), at(i64::MAX, 1)]);
        assert_eq!(decode_chunk(i64::MAX, &past_max), Err(RowError::TsOrder));
        // Unknown flag bits, an eleven-byte varint.
        let one = encode_chunk(&[at(0, 0)]);
        // Version, count, a five-field tail, then reg, rev and flow: the flags.
        let flags_at = 10;
        assert_eq!(one[flags_at], 0);
        let mut flagged = one.clone();
        flagged[flags_at] = 0x10;
        assert_eq!(decode_chunk(0, &flagged), Err(RowError::Flags(0x10)));
        flagged[flags_at] = Quality::Recorded.code();
        assert_eq!(
            decode_chunk(0, &flagged).map(|rows| rows[0].quality),
            Ok(Quality::Recorded),
            "every quality code fits the flags' two bits"
        );
        // Readings that do not end where the tail says.
        let mut wrong_tail = two.clone();
        assert_eq!(wrong_tail[3], 2, "the tail's reg");
        wrong_tail[3] = 3;
        assert_eq!(decode_chunk(0, &wrong_tail), Err(RowError::Tail));
        let mut long_varint = vec![CHUNK_FORMAT_VERSION];
        long_varint.extend_from_slice(&[0xff; 10]);
        long_varint.push(0);
        assert_eq!(decode_chunk(0, &long_varint), Err(RowError::Varint));
    }

    #[test]
    fn an_old_single_reading_row_is_a_chunk_of_one() {
        let stored = at(42, 7);
        let row = rows::encode_reading(&stored);
        assert_eq!(decode_chunk(42, &row), Ok(vec![stored]));
        // It is merged, not appended to.
        assert_eq!(append_to_chunk(42, &row, &[at(43, 8)]), Ok(Append::Merge));
    }

    #[test]
    fn buckets_are_utc_days() {
        assert_eq!(bucket_start(86_400_000 + 5), 86_400_000);
        assert_eq!(bucket_start(-1), -86_400_000);
        assert_eq!(bucket_start(i64::MIN), i64::MIN);
        assert_eq!(bucket(-1), -1);
    }
}
