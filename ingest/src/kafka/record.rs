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
//! An operator's order about the meter's register (a decided validation exception, a
//! recorded exchange; the HTTP API of an endpoint) travels the same way, so that the
//! meter's processor applies it in order with the meter's data: header `mf-order`
//! (`1`), `mf-topic` empty, value = the order as JSON ([`RegisterOrder`]). A processor
//! older than orders would dead-letter it as a malformed uplink of that meter:
//! upgrade processors before endpoints.
//!
//! The events topic's records ([`LogEvent`], processors → endpoints) share the key and
//! the `mf-v` header; `mf-event` says what they carry:
//!
//! - `watermark`: value = the meter's durable seq watermark, decimal;
//! - `alert`: value = the alert event's JSON as integrations receive it, `mf-topic` =
//!   the MQTT topic it goes out on (`alerts/{tenant}/{meter}`, checked against the key).
//!
//! A record that does not decode (another writer, a newer format) is a
//! [`RecordError`]: the processor counts and logs it and moves on, since it names no
//! meter to dead-letter it for (an endpoint does the same with an event).

use bytes::Bytes;
use meterflow_model::{MeterId, MeterKey, RegisterOrder, Reject, TenantId, topic};

pub const HEADER_VERSION: &str = "mf-v";
pub const HEADER_TOPIC: &str = "mf-topic";
pub const HEADER_RECEIVED_AT: &str = "mf-received-at";
pub const HEADER_REFUSED: &str = "mf-refused";
/// Marks an operator's order (value: the order as JSON).
pub const HEADER_ORDER: &str = "mf-order";
/// Largest order value read back: an order is a few hundred bytes of JSON.
const MAX_ORDER_BYTES: usize = 8 * 1024;
/// What an events-topic record carries: [`EVENT_WATERMARK`] or [`EVENT_ALERT`].
pub const HEADER_EVENT: &str = "mf-event";
pub const EVENT_WATERMARK: &[u8] = b"watermark";
pub const EVENT_ALERT: &[u8] = b"alert";
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
    /// An operator's order instead of an uplink (the payload is then empty).
    pub order: Option<Box<RegisterOrder>>,
}

/// What a processor tells the endpoints about one meter, on the events topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEvent {
    pub meter: MeterKey,
    pub event: Event,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Every seq of the meter up to this one is durable in the store.
    Watermark(u64),
    /// An alert event's JSON, for the subscribers of the meter's alert topic.
    Alert(Bytes),
}

/// Why a record is not an uplink (or an event) of this format.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record format {0:?} is not the one this build reads (1)")]
    Version(String),
    #[error("record key {0:?} is not tenant/meter")]
    Key(String),
    #[error("header {0} is missing or malformed")]
    Header(&'static str),
    #[error("event {0:?} is not one this build reads")]
    Event(String),
    #[error("record value {0:?} is no seq")]
    Seq(String),
    #[error("record value is no operator order: {0}")]
    Order(String),
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

/// The header values of an operator's order (see the module doc).
pub fn order_headers(received_at: i64) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (HEADER_VERSION, VERSION.to_vec()),
        (HEADER_TOPIC, Vec::new()),
        (HEADER_RECEIVED_AT, received_at.to_string().into_bytes()),
        (HEADER_ORDER, b"1".to_vec()),
    ]
}

/// Reads a record back; `header` looks a header up by name.
pub fn decode<'a>(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    header: impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<LogUplink, RecordError> {
    let identity = versioned_key(key, &header)?;
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
    let payload = payload.unwrap_or_default();
    let order = match header(HEADER_ORDER) {
        None => None,
        Some(_) if payload.len() > MAX_ORDER_BYTES => {
            return Err(RecordError::Order(format!("{} bytes", payload.len())));
        }
        Some(_) => Some(Box::new(
            serde_json::from_slice(payload).map_err(|e| RecordError::Order(e.to_string()))?,
        )),
    };
    Ok(LogUplink {
        identity,
        topic: Bytes::copy_from_slice(topic),
        payload: match order {
            Some(_) => Bytes::new(),
            None => Bytes::copy_from_slice(payload),
        },
        refused,
        received_at,
        order,
    })
}

impl LogEvent {
    /// The header values of the event's record.
    pub fn headers(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut headers = vec![(HEADER_VERSION, VERSION.to_vec())];
        match &self.event {
            Event::Watermark(_) => headers.push((HEADER_EVENT, EVENT_WATERMARK.to_vec())),
            Event::Alert(_) => {
                headers.push((HEADER_EVENT, EVENT_ALERT.to_vec()));
                headers.push((HEADER_TOPIC, topic::alert_topic(&self.meter).into_bytes()));
            }
        }
        headers
    }

    /// The record's value.
    pub fn value(&self) -> Bytes {
        match &self.event {
            Event::Watermark(seq) => Bytes::from(seq.to_string()),
            Event::Alert(payload) => payload.clone(),
        }
    }

    /// Reads an events-topic record back; `header` looks a header up by name.
    pub fn decode<'a>(
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        header: impl Fn(&str) -> Option<&'a [u8]>,
    ) -> Result<LogEvent, RecordError> {
        let meter = versioned_key(key, &header)?;
        let payload = payload.unwrap_or_default();
        let event = match header(HEADER_EVENT).ok_or(RecordError::Header(HEADER_EVENT))? {
            EVENT_WATERMARK => Event::Watermark(
                std::str::from_utf8(payload)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| {
                        RecordError::Seq(String::from_utf8_lossy(payload).into_owned())
                    })?,
            ),
            EVENT_ALERT => {
                if header(HEADER_TOPIC) != Some(topic::alert_topic(&meter).as_bytes()) {
                    return Err(RecordError::Header(HEADER_TOPIC));
                }
                Event::Alert(Bytes::copy_from_slice(payload))
            }
            other => {
                return Err(RecordError::Event(
                    String::from_utf8_lossy(other).into_owned(),
                ));
            }
        };
        Ok(LogEvent { meter, event })
    }
}

/// The meter a record of this format is about (its key), once its version is checked.
fn versioned_key<'a>(
    key: Option<&[u8]>,
    header: &impl Fn(&str) -> Option<&'a [u8]>,
) -> Result<MeterKey, RecordError> {
    let version = header(HEADER_VERSION).unwrap_or_default();
    if version != VERSION {
        return Err(RecordError::Version(
            String::from_utf8_lossy(version).into_owned(),
        ));
    }
    let key = key.unwrap_or_default();
    parse_key(key).ok_or_else(|| RecordError::Key(String::from_utf8_lossy(key).into_owned()))
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
        decode(Some(key), Some(payload), lookup(headers))
    }

    fn event_from(
        key: &[u8],
        payload: &[u8],
        headers: &[(&'static str, Vec<u8>)],
    ) -> Result<LogEvent, RecordError> {
        LogEvent::decode(Some(key), Some(payload), lookup(headers))
    }

    fn lookup<'a>(headers: &'a [(&'static str, Vec<u8>)]) -> impl Fn(&str) -> Option<&'a [u8]> {
        |name| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_slice())
        }
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
                    order: None,
                }
            );
        }
    }

    #[test]
    fn an_order_survives_the_log_and_a_bad_one_is_an_error() {
        let identity = parse_client_id("acme.m-42").unwrap();
        let order = RegisterOrder {
            ts: 1_764_000_000_000,
            action: meterflow_model::OrderAction::Exchange {
                final_reg: Some(5_000_180),
                initial_reg: 2_500,
                size: Some(meterflow_model::MeterSize::Dn25),
            },
            decision: meterflow_model::Decision {
                by: "field crew 4".into(),
                why: "work order 7781".into(),
                at_ms: 1_764_000_000_500,
            },
            exception: None,
        };
        let value = serde_json::to_vec(&order).unwrap();
        let headers = order_headers(7);
        let back = decode_from(key(&identity).as_bytes(), &value, &headers).unwrap();
        assert_eq!(back.order.as_deref(), Some(&order));
        assert!(back.payload.is_empty());
        assert_eq!(back.received_at, 7);
        assert!(matches!(
            decode_from(key(&identity).as_bytes(), b"{\"ts\": 1}", &headers),
            Err(RecordError::Order(_))
        ));
        let huge = vec![b' '; MAX_ORDER_BYTES + 1];
        assert!(matches!(
            decode_from(key(&identity).as_bytes(), &huge, &headers),
            Err(RecordError::Order(_))
        ));
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

    #[test]
    fn events_survive_the_log() {
        let meter = parse_client_id("acme.m-42").unwrap();
        for event in [
            Event::Watermark(0),
            Event::Watermark(u64::MAX),
            Event::Alert(Bytes::from_static(br#"{"kind":"leak"}"#)),
        ] {
            let sent = LogEvent {
                meter: meter.clone(),
                event,
            };
            let back = event_from(key(&meter).as_bytes(), &sent.value(), &sent.headers());
            assert_eq!(back, Ok(sent));
        }
        let alert = LogEvent {
            meter: meter.clone(),
            event: Event::Alert(Bytes::new()),
        };
        assert!(
            alert
                .headers()
                .contains(&(HEADER_TOPIC, b"alerts/acme/m-42".to_vec()))
        );
        assert_eq!(
            LogEvent {
                meter,
                event: Event::Watermark(17)
            }
            .value(),
            Bytes::from_static(b"17")
        );
    }

    #[test]
    fn foreign_events_are_errors_that_say_why() {
        let v = (HEADER_VERSION, VERSION.to_vec());
        let watermark = (HEADER_EVENT, EVENT_WATERMARK.to_vec());
        let alert = (HEADER_EVENT, EVENT_ALERT.to_vec());
        assert_eq!(
            event_from(b"acme/m1", b"1", std::slice::from_ref(&v)),
            Err(RecordError::Header(HEADER_EVENT))
        );
        assert_eq!(
            event_from(
                b"acme/m1",
                b"1",
                &[v.clone(), (HEADER_EVENT, b"gossip".to_vec())]
            ),
            Err(RecordError::Event("gossip".into()))
        );
        for bad in [&b"-1"[..], b"", b"1.5", b"18446744073709551616"] {
            assert!(matches!(
                event_from(b"acme/m1", bad, &[v.clone(), watermark.clone()]),
                Err(RecordError::Seq(_))
            ));
        }
        // An alert whose topic is not its key's meter's alert topic.
        let elsewhere = (HEADER_TOPIC, b"alerts/acme/m2".to_vec());
        for headers in [vec![v.clone(), alert.clone()], vec![v, alert, elsewhere]] {
            assert_eq!(
                event_from(b"acme/m1", b"{}", &headers),
                Err(RecordError::Header(HEADER_TOPIC))
            );
        }
        assert!(matches!(
            event_from(b"acme/m1", b"1", &[watermark]),
            Err(RecordError::Version(_))
        ));
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

        /// Whatever bytes an events-topic record holds, decoding answers.
        #[test]
        fn decoding_arbitrary_events_never_panics(
            key in proptest::collection::vec(any::<u8>(), 0..40),
            value in proptest::collection::vec(any::<u8>(), 0..24),
            event in prop_oneof![
                Just(EVENT_WATERMARK.to_vec()),
                Just(EVENT_ALERT.to_vec()),
                proptest::collection::vec(any::<u8>(), 0..12),
            ],
            topic in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let headers = [
                (HEADER_VERSION, VERSION.to_vec()),
                (HEADER_EVENT, event),
                (HEADER_TOPIC, topic),
            ];
            let _ = event_from(&key, &value, &headers);
        }
    }
}
