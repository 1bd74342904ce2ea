//! Every use of bincode in meterflow lives here (bincode 3.0.0 on crates.io is an empty
//! tombstone; the workspace pins `=2.0.1`).
//!
//! Binary uplink layout, after the `0x01` format byte — bincode 2 standard config
//! (little-endian varints), fields in this order:
//!
//! | field    | type                 | note                              |
//! |----------|----------------------|-----------------------------------|
//! | v        | u8                   |                                   |
//! | seq      | u64                  |                                   |
//! | readings | Vec<(i64 ts, u64 reg, u64 rev, u32 flow, Option<i16> temp)> | |
//! | flags    | u32                  | bitset, bit = `DeviceFlag as u8`  |
//! | battery  | Option<u8>           |                                   |
//! | rssi     | Option<i16>          |                                   |
//! | mac      | Option<[u8; 16]>     |                                   |
//!
//! Persisted records (meter state snapshots) are encoded with [`encode_record`]:
//! bincode's serde mode behind a one-byte record version.

use bincode::config::{Config, standard};
use bincode::{Decode, Encode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::mac::Mac;
use crate::reject::Reject;
use crate::uplink::{Flags, Reading, Uplink};

/// Upper bound on what one decode may claim to allocate: a payload can never justify
/// more than this, whatever its length prefixes say.
const DECODE_LIMIT: usize = 1 << 20;

fn config() -> impl Config {
    standard().with_limit::<DECODE_LIMIT>()
}

#[derive(Encode, Decode)]
struct WireReading {
    ts: i64,
    reg: u64,
    rev: u64,
    flow: u32,
    temp: Option<i16>,
}

#[derive(Encode, Decode)]
struct WireUplink {
    v: u8,
    seq: u64,
    readings: Vec<WireReading>,
    flags: u32,
    battery: Option<u8>,
    rssi: Option<i16>,
    mac: Option<[u8; 16]>,
}

/// Writes `uplink`'s bincode body with `mac` in place of its own (the MAC is
/// computed over the body with none).
pub(crate) fn encode_uplink_into(
    uplink: &Uplink,
    mac: Option<[u8; 16]>,
    out: &mut impl std::io::Write,
) {
    let wire = WireUplink {
        v: uplink.v,
        seq: uplink.seq,
        readings: uplink
            .readings
            .iter()
            .map(|r| WireReading {
                ts: r.ts,
                reg: r.reg,
                rev: r.rev,
                flow: r.flow,
                temp: r.temp,
            })
            .collect(),
        flags: uplink.flags.bits(),
        battery: uplink.battery,
        rssi: uplink.rssi,
        mac,
    };
    // The writers are a Vec and a MAC's hash: neither fails.
    bincode::encode_into_std_write(wire, out, standard()).expect("encode into memory");
}

pub(crate) fn decode_uplink(body: &[u8]) -> Result<Uplink, Reject> {
    let (wire, used): (WireUplink, usize) =
        bincode::decode_from_slice(body, config()).map_err(|_| Reject::Malformed)?;
    if used != body.len() {
        return Err(Reject::Malformed);
    }
    Ok(Uplink {
        v: wire.v,
        seq: wire.seq,
        readings: wire
            .readings
            .into_iter()
            .map(|r| Reading {
                ts: r.ts,
                reg: r.reg,
                rev: r.rev,
                flow: r.flow,
                temp: r.temp,
            })
            .collect(),
        flags: Flags::from_bits(wire.flags).ok_or(Reject::Malformed)?,
        battery: wire.battery,
        rssi: wire.rssi,
        mac: wire.mac.map(Mac),
    })
}

/// Version byte in front of every persisted record; bump it when a record's shape
/// changes, and teach [`Record`] the old one.
///
/// - 1: the first layouts.
/// - 2: `AlertState` (inside `MeterState`) gained the newest device status
///   (`last_status_ts`, `last_status_flags`). Other records are unchanged.
/// - 3: `VeeState` persists the pass over its settled reads in the new layout
///   (register epochs pinned by reads, a pending exchange candidate with its
///   followers); the late window's raw reads, the pass over them and billing's open
///   reads are not persisted but rebuilt from the stored readings on hydration
///   (`#[serde(skip)]`). Other records are unchanged. (Version 3 never shipped with
///   the window persisted: that layout lived on `main` for an hour and was changed
///   in place.)
/// - 4: `DistrictUsage` gained the inflow of bulk meters (`inflow_l`,
///   `inflow_night_hour_l`, `inflow_night_flow_lph`); older rows read with none.
///   Other records are unchanged.
/// - 5: `VeeState` (inside `MeterState`) persists the operator orders about the
///   meter's register (`orders`, after `settled`); older states read with none.
///   Other records are unchanged.
/// - 6: alert episodes are derived in reading time. `AlertState` (inside
///   `MeterState`) keeps its fold at VEE's settled point, the window's status
///   marks, the newest device status, the no-communication episode and the newest
///   event revision; `AlertEvent` gained its `revision`. Older layouts are frozen
///   in `model/src/state_v5.rs`. Other records are unchanged.
/// - 7: `MeterState` gained its `version` (last), which orders a meter's writes in
///   a shared store; older states read with 0 (`model/src/state_v6.rs`). Other
///   records are unchanged.
/// - 8: a recorded exchange may give the new meter's size: `OrderAction::Exchange`
///   gained `size`, and `VeeState` (inside `MeterState`) keeps the sizes recorded
///   (`sizes`, last); older states read with none (`model/src/state_v7.rs`). Other
///   records are unchanged.
/// - 9: alerting keeps every device status of the late window (`statuses`: reading
///   time, seq, flags, battery level) instead of the changes they made (marks) and
///   the newest status; older states read with their marks turned into statuses
///   (`model/src/state_v8.rs`). Other records are unchanged.
const RECORD_VERSION: u8 = 9;

/// A persisted record type, and how it reads bodies of older record versions.
pub trait Record: DeserializeOwned {
    /// Reads a version-1 body; types whose layout has not changed since read it as
    /// they are.
    fn decode_v1(body: &[u8]) -> Result<Self, RecordError> {
        decode_body(body)
    }

    /// Reads a version-2 body; types whose layout has not changed since read it as
    /// they are.
    fn decode_v2(body: &[u8]) -> Result<Self, RecordError> {
        decode_body(body)
    }

    /// Reads a version-3 body; types whose layout has not changed since read it as
    /// they are.
    fn decode_v3(body: &[u8]) -> Result<Self, RecordError> {
        decode_body(body)
    }

    /// Reads a version-4 body; types whose layout has not changed since read it as
    /// they are.
    fn decode_v4(body: &[u8]) -> Result<Self, RecordError> {
        decode_body(body)
    }

    /// Reads a version-5 body; types whose layout has not changed since read it as
    /// they are.
    fn decode_v5(body: &[u8]) -> Result<Self, RecordError> {
        decode_body(body)
    }

    /// Reads a version-6 body; types whose layout has not changed since read it as
    /// they are.
    fn decode_v6(body: &[u8]) -> Result<Self, RecordError> {
        decode_body(body)
    }

    /// Reads a version-7 body; types whose layout has not changed since read it as
    /// they are.
    fn decode_v7(body: &[u8]) -> Result<Self, RecordError> {
        decode_body(body)
    }

    /// Reads a version-8 body; types whose layout has not changed since read it as
    /// they are.
    fn decode_v8(body: &[u8]) -> Result<Self, RecordError> {
        decode_body(body)
    }
}

/// Decodes a record body (after its version byte) in the current layout of `T`.
pub(crate) fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, RecordError> {
    bincode::serde::decode_from_slice(body, config())
        .map(|(value, _)| value)
        .map_err(|e| RecordError::Corrupt(e.to_string()))
}

/// Why a stored record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "record version {0} is not readable by this build (expected {RECORD_VERSION}); was the data written by a newer meterflow?"
    )]
    Version(u8),
    #[error("record is corrupt: {0}")]
    Corrupt(String),
}

/// Most capacity the per-thread encoding buffer of [`encode_record`] keeps between
/// records (a larger one is given back after use).
const KEPT_ENCODE_BUFFER: usize = 64 * 1024;

thread_local! {
    /// Where [`encode_record`] writes before copying out: bincode writes a record in
    /// many small pieces, and a `Vec` grown from empty for each record reallocated
    /// (and copied) about a dozen times per meter state, 8 % of a group commit.
    static ENCODE_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encodes a persisted record (compact, versioned).
pub fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    ENCODE_BUFFER.with_borrow_mut(|buffer| {
        buffer.clear();
        buffer.push(RECORD_VERSION);
        bincode::serde::encode_into_std_write(value, buffer, standard())
            .expect("records are plain data and serialise into a Vec");
        let out = buffer.as_slice().to_vec();
        if buffer.capacity() > KEPT_ENCODE_BUFFER {
            *buffer = Vec::new();
        }
        out
    })
}

/// Encodes `value` behind an older version byte, as that version's layouts were
/// written (for tests of the upgrade path).
#[cfg(test)]
pub(crate) fn encode_record_as<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut out = encode_record(value);
    out[0] = version;
    out
}

/// Decodes a record written by [`encode_record`] of this or an older version.
pub fn decode_record<T: Record>(bytes: &[u8]) -> Result<T, RecordError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => decode_body(body),
        Some((1, body)) => T::decode_v1(body),
        Some((2, body)) => T::decode_v2(body),
        Some((3, body)) => T::decode_v3(body),
        Some((4, body)) => T::decode_v4(body),
        Some((5, body)) => T::decode_v5(body),
        Some((6, body)) => T::decode_v6(body),
        Some((7, body)) => T::decode_v7(body),
        Some((8, body)) => T::decode_v8(body),
        Some((&other, _)) => Err(RecordError::Version(other)),
        None => Err(RecordError::Corrupt("empty record".into())),
    }
}
