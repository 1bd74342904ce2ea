//! Values of the embedded store's `dead_letters` keyspace, and the single-reading
//! `readings` row of older builds: hand-written, fixed little-endian layouts behind a
//! leading format-version byte, so that a row can be read without any serialisation
//! framework and a future layout can be told apart from this one. (`meter_state`
//! values are `meterflow_model::codec::binary::encode_record` records, and `readings`
//! values are now chunks, `chunks.rs`; neither is encoded here.)
//!
//! Single-reading `readings` value, [`READING_ROW_LEN`] bytes (the `ts` lives in the
//! key). This build no longer writes it, but reads it — as a chunk of one reading —
//! from stores written before readings were chunked:
//!
//! | offset | bytes | field                                            |
//! |--------|-------|--------------------------------------------------|
//! | 0      | 1     | format version, [`ROW_FORMAT_VERSION`]           |
//! | 1      | 8     | reg, u64                                         |
//! | 9      | 8     | rev, u64                                         |
//! | 17     | 4     | flow, u32                                        |
//! | 21     | 1     | temp present: 0 or 1                             |
//! | 22     | 2     | temp, i16 (0 when absent)                        |
//! | 24     | 1     | quality code (`Quality::code`)                   |
//! | 25     | 1     | interval_l present: 0 or 1                       |
//! | 26     | 8     | interval_l, u64 (0 when absent)                  |
//! | 34     | 8     | seq, u64                                         |
//! | 42     | 8     | received_at, i64 epoch ms                        |
//!
//! `dead_letters` value (received_at and id live in the key); each `len` is a u32:
//!
//! | field          | encoding                                   |
//! |----------------|--------------------------------------------|
//! | format version | 1 byte, [`ROW_FORMAT_VERSION`]             |
//! | topic          | len, UTF-8 bytes                           |
//! | payload        | len, bytes (capped by the producer)        |
//! | reason         | len, `Reject::code()` (ASCII snake_case)   |
//! | correlation_id | len, UTF-8 bytes                           |
//!
//! Decoding never panics: a row that does not match its layout is a [`RowError`].

use meterflow_model::{Quality, Reading, Reject, StoredReading};

use super::chunks::{CHUNK_FORMAT_VERSION, MAX_CHUNK_READINGS};

/// Version byte in front of every value written here. Bump it when a layout changes
/// and keep decoding the old one.
pub(crate) const ROW_FORMAT_VERSION: u8 = 1;

/// Length of a `readings` value.
pub(crate) const READING_ROW_LEN: usize = 50;

/// Why a stored value does not decode. Small and cheap; the store adds which row.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RowError {
    #[error(
        "row format version {0} is unknown to this build (it reads {ROW_FORMAT_VERSION}); was the store written by a newer meterflow?"
    )]
    Version(u8),
    #[error("row is {got} bytes, its layout needs {expected}")]
    Length { expected: usize, got: usize },
    #[error("row is truncated")]
    Truncated,
    #[error("{field} presence flag is {flag}, expected 0 or 1")]
    PresenceFlag { field: &'static str, flag: u8 },
    #[error("quality code {0} is unknown")]
    Quality(u8),
    #[error(
        "readings value format version {0} is unknown to this build (it reads {ROW_FORMAT_VERSION} and {CHUNK_FORMAT_VERSION}); was the store written by a newer meterflow?"
    )]
    ReadingsVersion(u8),
    #[error("chunk holds {0} readings, this build reads 1 to {MAX_CHUNK_READINGS}")]
    ChunkCount(u64),
    #[error("chunk timestamps are not strictly ascending")]
    TsOrder,
    #[error("chunk readings do not end where its header says")]
    Tail,
    #[error("chunk holds a varint longer than 64 bits")]
    Varint,
    #[error("chunk reading flags {0:#04x} hold unknown bits")]
    Flags(u8),
    #[error("chunk {0} is out of its range")]
    Field(&'static str),
    #[error("dead-letter reason {0:?} is unknown to this build")]
    Reason(String),
    #[error("{0} is not UTF-8")]
    Utf8(&'static str),
}

/// Encodes the value of a single-reading `readings` row (everything but `ts`), as
/// older builds wrote it; kept for the tests that check this build still reads it.
#[cfg(test)]
pub(crate) fn encode_reading(stored: &StoredReading) -> [u8; READING_ROW_LEN] {
    let mut row = [0u8; READING_ROW_LEN];
    let reading = &stored.reading;
    row[0] = ROW_FORMAT_VERSION;
    row[1..9].copy_from_slice(&reading.reg.to_le_bytes());
    row[9..17].copy_from_slice(&reading.rev.to_le_bytes());
    row[17..21].copy_from_slice(&reading.flow.to_le_bytes());
    if let Some(temp) = reading.temp {
        row[21] = 1;
        row[22..24].copy_from_slice(&temp.to_le_bytes());
    }
    row[24] = stored.quality.code();
    if let Some(interval_l) = stored.interval_l {
        row[25] = 1;
        row[26..34].copy_from_slice(&interval_l.to_le_bytes());
    }
    row[34..42].copy_from_slice(&stored.seq.to_le_bytes());
    row[42..50].copy_from_slice(&stored.received_at.to_le_bytes());
    row
}

/// Decodes a single-reading `readings` value (the layout above); `ts` comes from the
/// key.
pub(crate) fn decode_reading(ts: i64, bytes: &[u8]) -> Result<StoredReading, RowError> {
    check_version(bytes)?;
    let row: &[u8; READING_ROW_LEN] = bytes.try_into().map_err(|_| RowError::Length {
        expected: READING_ROW_LEN,
        got: bytes.len(),
    })?;
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&row[at..at + 8]);
        b
    };
    let temp = present(row[21], "temp")?.then(|| i16::from_le_bytes([row[22], row[23]]));
    let quality = Quality::from_code(row[24]).ok_or(RowError::Quality(row[24]))?;
    let interval_l = present(row[25], "interval_l")?.then(|| u64::from_le_bytes(u64_at(26)));
    Ok(StoredReading {
        reading: Reading {
            ts,
            reg: u64::from_le_bytes(u64_at(1)),
            rev: u64::from_le_bytes(u64_at(9)),
            flow: u32::from_le_bytes([row[17], row[18], row[19], row[20]]),
            temp,
        },
        seq: u64::from_le_bytes(u64_at(34)),
        received_at: i64::from_le_bytes(u64_at(42)),
        quality,
        interval_l,
    })
}

/// The fields of a dead letter that live in its value (the rest is in the key).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DeadLetterBody {
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) reason: Reject,
    pub(crate) correlation_id: String,
}

/// Encodes the value of a `dead_letters` row.
pub(crate) fn encode_dead_letter(
    topic: &str,
    payload: &[u8],
    reason: Reject,
    correlation_id: &str,
) -> Vec<u8> {
    let reason = reason.code().as_bytes();
    let fields: [&[u8]; 4] = [topic.as_bytes(), payload, reason, correlation_id.as_bytes()];
    let len: usize = fields.iter().map(|f| 4 + f.len()).sum();
    let mut out = Vec::with_capacity(1 + len);
    out.push(ROW_FORMAT_VERSION);
    for field in fields {
        // Topics, ids and the capped payload are far below 4 GiB; saturating keeps
        // the encoder total, and the decoder would then report the row as truncated.
        let field_len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&field_len.to_le_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// Decodes a `dead_letters` value written by [`encode_dead_letter`].
pub(crate) fn decode_dead_letter(bytes: &[u8]) -> Result<DeadLetterBody, RowError> {
    check_version(bytes)?;
    let mut rest = &bytes[1..];
    let topic = utf8(take_field(&mut rest)?, "topic")?;
    let payload = take_field(&mut rest)?.to_vec();
    let code = utf8(take_field(&mut rest)?, "reason")?;
    let reason = Reject::from_code(&code).ok_or(RowError::Reason(code))?;
    let correlation_id = utf8(take_field(&mut rest)?, "correlation_id")?;
    if !rest.is_empty() {
        return Err(RowError::Length {
            expected: bytes.len() - rest.len(),
            got: bytes.len(),
        });
    }
    Ok(DeadLetterBody {
        topic,
        payload,
        reason,
        correlation_id,
    })
}

fn check_version(bytes: &[u8]) -> Result<(), RowError> {
    match bytes.first() {
        Some(&ROW_FORMAT_VERSION) => Ok(()),
        Some(&other) => Err(RowError::Version(other)),
        None => Err(RowError::Truncated),
    }
}

fn present(flag: u8, field: &'static str) -> Result<bool, RowError> {
    match flag {
        0 => Ok(false),
        1 => Ok(true),
        flag => Err(RowError::PresenceFlag { field, flag }),
    }
}

/// Splits one `u32 len, bytes` field off the front of `rest`.
fn take_field<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], RowError> {
    let (len, tail) = rest.split_first_chunk::<4>().ok_or(RowError::Truncated)?;
    let len = usize::try_from(u32::from_le_bytes(*len)).map_err(|_| RowError::Truncated)?;
    if tail.len() < len {
        return Err(RowError::Truncated);
    }
    let (field, tail) = tail.split_at(len);
    *rest = tail;
    Ok(field)
}

fn utf8(bytes: &[u8], field: &'static str) -> Result<String, RowError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| RowError::Utf8(field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::embedded::chunks::tests::stored_at;

    fn stored_reading() -> impl Strategy<Value = StoredReading> {
        any::<i64>().prop_flat_map(stored_at)
    }

    proptest! {
        #[test]
        fn reading_rows_round_trip(stored in stored_reading()) {
            let row = encode_reading(&stored);
            prop_assert_eq!(decode_reading(stored.reading.ts, &row), Ok(stored));
        }

        #[test]
        fn dead_letter_rows_round_trip(
            topic in "\\PC{0,80}",
            payload in proptest::collection::vec(any::<u8>(), 0..1024),
            reason in proptest::sample::select(Reject::ALL.to_vec()),
            correlation_id in "[a-z0-9/-]{0,40}",
        ) {
            let row = encode_dead_letter(&topic, &payload, reason, &correlation_id);
            prop_assert_eq!(
                decode_dead_letter(&row),
                Ok(DeadLetterBody { topic, payload, reason, correlation_id })
            );
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode_reading(0, &bytes);
            let _ = decode_dead_letter(&bytes);
        }
    }

    #[test]
    fn reading_row_layout_is_fixed() {
        let stored = StoredReading {
            reading: Reading {
                ts: 0,
                reg: 0x0102,
                rev: 3,
                flow: 4,
                temp: Some(-5),
            },
            seq: 6,
            received_at: -7,
            quality: Quality::Suspect,
            interval_l: None,
        };
        let row = encode_reading(&stored);
        assert_eq!(row[0], ROW_FORMAT_VERSION);
        assert_eq!(&row[1..3], &[0x02, 0x01]);
        assert_eq!(&row[21..24], &[1, 0xfb, 0xff]);
        assert_eq!(row[24], Quality::Suspect.code());
        assert_eq!(&row[25..34], &[0; 9]);
        assert_eq!(&row[42..50], &(-7i64).to_le_bytes());
    }

    #[test]
    fn bad_reading_rows_are_named() {
        let mut row = encode_reading(&StoredReading {
            reading: Reading {
                ts: 0,
                reg: 0,
                rev: 0,
                flow: 0,
                temp: None,
            },
            seq: 0,
            received_at: 0,
            quality: Quality::Actual,
            interval_l: None,
        });
        assert_eq!(
            decode_reading(0, &row[..10]),
            Err(RowError::Length {
                expected: READING_ROW_LEN,
                got: 10
            })
        );
        row[24] = 9;
        assert_eq!(decode_reading(0, &row), Err(RowError::Quality(9)));
        row[21] = 2;
        assert!(matches!(
            decode_reading(0, &row),
            Err(RowError::PresenceFlag { field: "temp", .. })
        ));
        row[0] = 2;
        assert_eq!(decode_reading(0, &row), Err(RowError::Version(2)));
        assert_eq!(decode_reading(0, &[]), Err(RowError::Truncated));
    }

    #[test]
    fn bad_dead_letter_rows_are_named() {
        let row = encode_dead_letter("t", b"p", Reject::BadMac, "c");
        assert_eq!(
            decode_dead_letter(&row[..row.len() - 1]),
            Err(RowError::Truncated)
        );
        let mut longer = row.clone();
        longer.push(0);
        assert!(matches!(
            decode_dead_letter(&longer),
            Err(RowError::Length { .. })
        ));
        let unknown = encode_dead_letter("t", b"p", Reject::BadMac, "c")
            .iter()
            .map(|&b| if b == b'b' { b'x' } else { b })
            .collect::<Vec<_>>();
        assert_eq!(
            decode_dead_letter(&unknown),
            Err(RowError::Reason("xad_mac".into()))
        );
    }
}
