//! An uplink as a record of the log, and back. The record carries what the endpoint
//! knew and the payload untouched (the processor decodes and verifies it, as a shard
//! does in embedded mode):
//!
//! - key: `tenant/meter`, the identity the meter's session authenticated (never a
//!   topic's word — the log is inside the trust boundary: only endpoints write it);
//! - value: the payload as received;
//! - headers: `mf-v` (record format, `1`), `mf-topic` (the topic as published, kept
//!   with a dead letter), `mf-received-at` (epoch ms, decimal), and `mf-refused` (the
//!   reject code when the session refused the publish).
//!
//! A record that does not decode (another writer, a newer format) is a
//! [`RecordError`]: the processor counts and logs it and moves on, since it names no
//! meter to dead-letter it for.

use bytes::Bytes;
use meterflow_model::{MeterId, MeterKey, Reject, TenantId};

pub const HEADER_VERSION: &str = "mf-v";
pub const HEADER_TOPIC: &str = "mf-topic";
pub const HEADER_RECEIVED_AT: &str = "mf-received-at";
pub const HEADER_REFUSED: &str = "mf-refused";
/// The record format this build writes and reads.
pub const VERSION: &[u8] = b"1";

/// What a processor gets back from a record.
#[derive(Debug, PartialEq, Eq)]
pub struct LogUplink {
    pub identity: MeterKey,
    pub topic: Bytes,
    pub payload: Bytes,
    pub refused: Option<Reject>,
    pub received_at: i64,
}

/// Why a record is not an uplink of this format.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record format {0:?} is not the one this build reads (1)")]
    Version(String),
    #[error("record key {0:?} is not tenant/meter")]
    Key(String),
    #[error("header {0} is missing or malformed")]
    Header(&'static str),
}

/// The record key of a meter's uplinks.
pub fn key(identity: &MeterKey) -> String {
    format!("{}/{}", identity.tenant.as_str(), identity.meter.as_str())
}

/// The header values of an uplink, in [`HEADER_VERSION`] … order (`mf-refused` only
/// when refused).
pub fn headers(
    topic: &[u8],
    received_at: i64,
    refused: Option<Reject>,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut headers = vec![
        (HEADER_VERSION, VERSION.to_vec()),
        (HEADER_TOPIC, topic.to_vec()),
        (HEADER_RECEIVED_AT, received_at.to_string().into_bytes()),
    ];
    if let Some(reject) = refused {
        headers.push((HEADER_REFUSED, reject.code().as_bytes().to_vec()));
    }
    headers
}

/// Reads a record back; `header` looks a header up by name.
pub fn decode<'a>(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    header: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<LogUplink, RecordError> {
    let version = header(HEADER_VERSION).unwrap_or_default();
    if version != VERSION {
        return Err(RecordError::Version(
            String::from_utf8_lossy(version).into_owned(),
        ));
    }
    let key = key.unwrap_or_default();
    let identity = parse_key(key)
        .ok_or_else(|| RecordError::Key(String::from_utf8_lossy(key).into_owned()))?;
    let topic = header(HEADER_TOPIC).ok_or(RecordError::Header(HEADER_TOPIC))?;
    let received_at = header(HEADER_RECEIVED_AT)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .ok_or(RecordError::Header(HEADER_RECEIVED_AT))?;
    let refused = match header(HEADER_REFUSED) {
        None => None,
        Some(code) => Some(
            std::str::from_utf8(code)
                .ok()
                .and_then(Reject::from_code)
                .ok_or(RecordError::Header(HEADER_REFUSED))?,
        ),
    };
    Ok(LogUplink {
        identity,
        topic: Bytes::copy_from_slice(topic),
        payload: Bytes::copy_from_slice(payload.unwrap_or_default()),
        refused,
        received_at,
    })
}

fn parse_key(key: &[u8]) -> Option<MeterKey> {
    let key = std::str::from_utf8(key).ok()?;
    let (tenant, meter) = key.split_once('/')?;
    Some(MeterKey::new(
        TenantId::try_from(tenant).ok()?,
        MeterId::try_from(meter).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_model::topic::parse_client_id;
    use proptest::prelude::*;

    fn decode_from(
        key: &[u8],
        payload: &[u8],
        headers: &[(&'static str, Vec<u8>)],
    ) -> Result<LogUplink, RecordError> {
        decode(Some(key), Some(payload), |name| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_slice())
        })
    }

    #[test]
    fn an_uplink_survives_the_log() {
        let identity = parse_client_id("acme.m-42").unwrap();
        for refused in [None, Some(Reject::RetainedPublish)] {
            let headers = headers(b"meters/acme/m-42/up", 1_764_000_000_123, refused);
            let back = decode_from(key(&identity).as_bytes(), b"\x01\x02", &headers).unwrap();
            assert_eq!(
                back,
                LogUplink {
                    identity: identity.clone(),
                    topic: Bytes::from_static(b"meters/acme/m-42/up"),
                    payload: Bytes::from_static(b"\x01\x02"),
                    refused,
                    received_at: 1_764_000_000_123,
                }
            );
        }
    }

    #[test]
    fn foreign_records_are_errors_that_say_why() {
        let good = headers(b"t", 1, None);
        assert_eq!(
            decode_from(b"acme/m1", b"", &[]),
            Err(RecordError::Version(String::new()))
        );
        assert!(matches!(
            decode_from(b"acme", b"", &good),
            Err(RecordError::Key(_))
        ));
        assert!(matches!(
            decode_from(b"ac me/m1", b"", &good),
            Err(RecordError::Key(_))
        ));
        let mut bad_time = good.clone();
        bad_time[2].1 = b"soon".to_vec();
        assert_eq!(
            decode_from(b"acme/m1", b"", &bad_time),
            Err(RecordError::Header(HEADER_RECEIVED_AT))
        );
        let mut bad_reject = good;
        bad_reject.push((HEADER_REFUSED, b"no-such-code".to_vec()));
        assert_eq!(
            decode_from(b"acme/m1", b"", &bad_reject),
            Err(RecordError::Header(HEADER_REFUSED))
        );
    }

    proptest! {
        /// Whatever bytes a record holds, decoding answers (an uplink or an error).
        #[test]
        fn decoding_arbitrary_records_never_panics(
            key in proptest::collection::vec(any::<u8>(), 0..40),
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 4),
        ) {
            let names = [HEADER_VERSION, HEADER_TOPIC, HEADER_RECEIVED_AT, HEADER_REFUSED];
            let mut headers: Vec<(&'static str, Vec<u8>)> =
                names.iter().copied().zip(values).collect();
            headers[0].1 = VERSION.to_vec();
            let _ = decode_from(&key, b"x", &headers);
        }
    }
}
