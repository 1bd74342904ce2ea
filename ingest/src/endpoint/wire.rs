//! MQTT on the wire, for the endpoint: the packets a server receives, in one
//! protocol-neutral form, and the packets it sends — framed by rumqttc's `mqttbytes`
//! codecs for MQTT 3.1.1 (`v4`) and MQTT 5 (`v5`). Nothing here parses MQTT by hand but
//! [`protocol_level`], which peeks at a CONNECT to pick the codec.
//!
//! MQTT 5 specifics the endpoint relies on: CONNACK advertises what it serves —
//! receive maximum = the in-flight cap, maximum QoS 1, no retain, no wildcard, shared or
//! identified subscriptions, topic alias maximum 0 (so a compliant client never sends
//! an alias; one that does breaks the protocol and is disconnected), the maximum packet
//! size; refusals carry MQTT 5 reason codes, and a PUBACK for a publish the session
//! refused says "not authorized" (the uplink is still kept as a dead letter).

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::Error as V4Error;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::{Error as V5Error, QoS as V5QoS};
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};

/// Byte offset of the protocol level in a CONNECT after its fixed header (protocol
/// name "MQTT" with its 2-byte length).
const PROTOCOL_LEVEL_OFFSET: usize = 6;

/// The protocol a connection speaks, chosen by its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    V4,
    V5,
}

/// A CONNECT, as far as the endpoint cares.
#[derive(Debug)]
pub struct ConnectInfo {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub has_will: bool,
    pub keep_alive: u16,
    /// MQTT 5 enhanced authentication was asked for (not served).
    pub auth_method: bool,
}

/// A packet from a client, after CONNECT.
#[derive(Debug)]
pub enum Incoming {
    Publish {
        topic: String,
        pkid: u16,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        /// MQTT 5: the publish used a topic alias (never granted).
        aliased: bool,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
    /// A PUBACK for one of our QoS 0 publishes: nothing to do.
    PubAck,
    /// Anything a server never receives after CONNECT (CONNECT again, PUBREL, …).
    Unexpected,
}

/// Why no packet could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// More bytes are needed.
    Incomplete,
    /// Larger than the endpoint's packet limit.
    TooLarge,
    /// Not a valid packet (bad framing, non-UTF-8 topic, …).
    Malformed,
}

/// How a CONNECT is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectAnswer {
    Accepted,
    BadClientId,
    BadCredentials,
    NotAuthorized,
    ServerUnavailable,
    UnsupportedProtocol,
}

/// The protocol level of a complete CONNECT at the head of `buf` (`None` for other
/// packets or when incomplete). The codecs keep their header length private, so the
/// remaining-length field's size (1-4 bytes, the last without its top bit) is counted
/// here.
pub fn protocol_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let length_bytes = buf.get(1..)?.iter().take(4).position(|b| b & 0x80 == 0)? + 1;
    buf.get(1 + length_bytes + PROTOCOL_LEVEL_OFFSET).copied()
}

/// Reads the CONNECT at the head of `buf`, choosing the protocol by its level.
pub fn read_connect(
    buf: &mut BytesMut,
    max_packet_bytes: usize,
) -> Result<(Wire, ConnectInfo), ConnectReadError> {
    match rumqttc::mqttbytes::check(buf.iter(), max_packet_bytes) {
        Ok(_) => {}
        Err(V4Error::InsufficientBytes(_)) => return Err(ConnectReadError::Incomplete),
        Err(_) => return Err(ConnectReadError::Malformed),
    }
    match protocol_level(buf) {
        Some(4) => match rumqttc::Packet::read(buf, max_packet_bytes) {
            Ok(rumqttc::Packet::Connect(c)) => Ok((
                Wire::V4,
                ConnectInfo {
                    client_id: c.client_id,
                    username: c.login.as_ref().map(|l| l.username.clone()),
                    password: c.login.map(|l| Bytes::from(l.password)),
                    has_will: c.last_will.is_some(),
                    keep_alive: c.keep_alive,
                    auth_method: false,
                },
            )),
            _ => Err(ConnectReadError::Malformed),
        },
        Some(5) => match v5::Packet::read(buf, Some(max_packet_bytes as u32)) {
            Ok(v5::Packet::Connect(c, will, login)) => Ok((
                Wire::V5,
                ConnectInfo {
                    client_id: c.client_id,
                    username: login.as_ref().map(|l| l.username.clone()),
                    password: login.map(|l| Bytes::from(l.password)),
                    has_will: will.is_some(),
                    keep_alive: c.keep_alive,
                    auth_method: c
                        .properties
                        .is_some_and(|p| p.authentication_method.is_some()),
                },
            )),
            _ => Err(ConnectReadError::Malformed),
        },
        Some(_) => Err(ConnectReadError::UnsupportedProtocol),
        None => Err(ConnectReadError::Malformed),
    }
}

/// Why no CONNECT could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectReadError {
    Incomplete,
    /// A protocol level other than 3.1.1 or 5 (answered in 3.1.1's words).
    UnsupportedProtocol,
    Malformed,
}

impl Wire {
    /// Reads the next packet after CONNECT.
    pub fn read(self, buf: &mut BytesMut, max_packet_bytes: usize) -> Result<Incoming, ReadError> {
        match self {
            Wire::V4 => match rumqttc::Packet::read(buf, max_packet_bytes) {
                Ok(packet) => Ok(from_v4(packet)),
                Err(V4Error::InsufficientBytes(_)) => Err(ReadError::Incomplete),
                Err(V4Error::PayloadSizeLimitExceeded(_)) => Err(ReadError::TooLarge),
                Err(_) => Err(ReadError::Malformed),
            },
            // MQTT 5 §3.14.2.1: a normal DISCONNECT may omit its reason code and
            // properties (remaining length 0) — what mosquitto and most clients send.
            // rumqttc's v5 codec answers that with `PayloadRequired`, which made every
            // clean MQTT 5 disconnect a "malformed" protocol violation.
            Wire::V5 if buf.starts_with(&[0xE0, 0x00]) => {
                let _ = buf.split_to(2);
                Ok(Incoming::Disconnect)
            }
            Wire::V5 => match v5::Packet::read(buf, Some(max_packet_bytes as u32)) {
                Ok(packet) => from_v5(packet),
                Err(V5Error::InsufficientBytes(_)) => Err(ReadError::Incomplete),
                Err(V5Error::PayloadSizeLimitExceeded { .. }) => Err(ReadError::TooLarge),
                Err(_) => Err(ReadError::Malformed),
            },
        }
    }

    /// CONNACK. An accepted MQTT 5 session is told the endpoint's limits.
    pub fn connack(self, answer: ConnectAnswer, limits: (usize, usize), out: &mut BytesMut) {
        match self {
            Wire::V4 => {
                let code = match answer {
                    ConnectAnswer::Accepted => ConnectReturnCode::Success,
                    ConnectAnswer::BadClientId => ConnectReturnCode::BadClientId,
                    ConnectAnswer::BadCredentials => ConnectReturnCode::BadUserNamePassword,
                    ConnectAnswer::NotAuthorized => ConnectReturnCode::NotAuthorized,
                    ConnectAnswer::ServerUnavailable => ConnectReturnCode::ServiceUnavailable,
                    ConnectAnswer::UnsupportedProtocol => ConnectReturnCode::RefusedProtocolVersion,
                };
                write_v4(
                    rumqttc::Packet::ConnAck(rumqttc::ConnAck::new(code, false)),
                    out,
                );
            }
            Wire::V5 => {
                let (max_inflight, max_packet_bytes) = limits;
                let code = match answer {
                    ConnectAnswer::Accepted => v5::ConnectReturnCode::Success,
                    ConnectAnswer::BadClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                    ConnectAnswer::BadCredentials => v5::ConnectReturnCode::BadUserNamePassword,
                    ConnectAnswer::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                    ConnectAnswer::ServerUnavailable => v5::ConnectReturnCode::ServerUnavailable,
                    ConnectAnswer::UnsupportedProtocol => {
                        v5::ConnectReturnCode::UnsupportedProtocolVersion
                    }
                };
                let properties =
                    (answer == ConnectAnswer::Accepted).then(|| v5::ConnAckProperties {
                        session_expiry_interval: None,
                        receive_max: Some(u16::try_from(max_inflight).unwrap_or(u16::MAX)),
                        max_qos: Some(1),
                        retain_available: Some(0),
                        max_packet_size: Some(u32::try_from(max_packet_bytes).unwrap_or(u32::MAX)),
                        assigned_client_identifier: None,
                        topic_alias_max: Some(0),
                        reason_string: None,
                        user_properties: Vec::new(),
                        wildcard_subscription_available: Some(0),
                        subscription_identifiers_available: Some(0),
                        shared_subscription_available: Some(0),
                        server_keep_alive: None,
                        response_information: None,
                        server_reference: None,
                        authentication_method: None,
                        authentication_data: None,
                    });
                write_v5(
                    v5::Packet::ConnAck(v5::ConnAck {
                        session_present: false,
                        code,
                        properties,
                    }),
                    out,
                );
            }
        }
    }

    /// PUBACK; `refused` says "not authorized" in MQTT 5 (3.1.1 has no way to).
    pub fn puback(self, pkid: u16, refused: bool, out: &mut BytesMut) {
        match self {
            Wire::V4 => write_v4(rumqttc::Packet::PubAck(rumqttc::PubAck::new(pkid)), out),
            Wire::V5 => {
                let mut ack = v5::PubAck::new(pkid, None);
                if refused {
                    ack.reason = v5::PubAckReason::NotAuthorized;
                }
                write_v5(v5::Packet::PubAck(ack), out);
            }
        }
    }

    /// SUBACK with one code per filter: granted at QoS 0, or refused.
    pub fn suback(self, pkid: u16, granted: &[bool], out: &mut BytesMut) {
        match self {
            Wire::V4 => {
                let codes = granted
                    .iter()
                    .map(|g| {
                        if *g {
                            SubscribeReasonCode::Success(QoS::AtMostOnce)
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                write_v4(
                    rumqttc::Packet::SubAck(rumqttc::SubAck::new(pkid, codes)),
                    out,
                );
            }
            Wire::V5 => {
                let return_codes = granted
                    .iter()
                    .map(|g| {
                        if *g {
                            v5::SubscribeReasonCode::Success(V5QoS::AtMostOnce)
                        } else {
                            v5::SubscribeReasonCode::NotAuthorized
                        }
                    })
                    .collect();
                write_v5(
                    v5::Packet::SubAck(v5::SubAck {
                        pkid,
                        return_codes,
                        properties: None,
                    }),
                    out,
                );
            }
        }
    }

    pub fn unsuback(self, pkid: u16, filters: usize, out: &mut BytesMut) {
        match self {
            Wire::V4 => write_v4(rumqttc::Packet::UnsubAck(rumqttc::UnsubAck::new(pkid)), out),
            Wire::V5 => write_v5(
                v5::Packet::UnsubAck(v5::UnsubAck {
                    pkid,
                    reasons: vec![v5::UnsubAckReason::Success; filters],
                    properties: None,
                }),
                out,
            ),
        }
    }

    pub fn pingresp(self, out: &mut BytesMut) {
        match self {
            Wire::V4 => write_v4(rumqttc::Packet::PingResp, out),
            Wire::V5 => write_v5(v5::Packet::PingResp(v5::PingResp), out),
        }
    }

    /// A QoS 0 publish to the client (acks, alerts).
    pub fn publish(self, topic: &str, payload: Bytes, out: &mut BytesMut) {
        match self {
            Wire::V4 => write_v4(
                rumqttc::Packet::Publish(rumqttc::Publish::from_bytes(
                    topic,
                    QoS::AtMostOnce,
                    payload,
                )),
                out,
            ),
            Wire::V5 => write_v5(
                v5::Packet::Publish(v5::Publish::new(topic, V5QoS::AtMostOnce, payload, None)),
                out,
            ),
        }
    }
}

/// Our own packets are well-formed and far below any size limit.
fn write_v4(packet: rumqttc::Packet, out: &mut BytesMut) {
    let _ = packet.write(out, usize::MAX);
}

fn write_v5(packet: v5::Packet, out: &mut BytesMut) {
    let _ = packet.write(out, None);
}

fn from_v4(packet: rumqttc::Packet) -> Incoming {
    match packet {
        rumqttc::Packet::Publish(p) => Incoming::Publish {
            topic: p.topic,
            pkid: p.pkid,
            qos: p.qos,
            retain: p.retain,
            payload: p.payload,
            aliased: false,
        },
        rumqttc::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s.filters.into_iter().map(|f| f.path).collect(),
        },
        rumqttc::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        rumqttc::Packet::PingReq => Incoming::PingReq,
        rumqttc::Packet::Disconnect => Incoming::Disconnect,
        rumqttc::Packet::PubAck(_) => Incoming::PubAck,
        _ => Incoming::Unexpected,
    }
}

fn from_v5(packet: v5::Packet) -> Result<Incoming, ReadError> {
    Ok(match packet {
        v5::Packet::Publish(p) => Incoming::Publish {
            // MQTT 5 §1.5.4: topics are UTF-8; the codec leaves that to us.
            topic: String::from_utf8(p.topic.to_vec()).map_err(|_| ReadError::Malformed)?,
            pkid: p.pkid,
            qos: match p.qos {
                V5QoS::AtMostOnce => QoS::AtMostOnce,
                V5QoS::AtLeastOnce => QoS::AtLeastOnce,
                V5QoS::ExactlyOnce => QoS::ExactlyOnce,
            },
            retain: p.retain,
            payload: p.payload,
            aliased: p
                .properties
                .is_some_and(|props| props.topic_alias.is_some()),
        },
        v5::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s.filters.into_iter().map(|f| f.path).collect(),
        },
        v5::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Incoming::PingReq,
        v5::Packet::Disconnect(_) => Incoming::Disconnect,
        v5::Packet::PubAck(_) => Incoming::PubAck,
        _ => Incoming::Unexpected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_connect() -> BytesMut {
        let mut out = BytesMut::new();
        rumqttc::Connect::new("demo.m1").write(&mut out).unwrap();
        out
    }

    fn v5_connect() -> BytesMut {
        let mut out = BytesMut::new();
        v5::Packet::Connect(
            v5::Connect {
                keep_alive: 30,
                client_id: "demo.m1".into(),
                clean_start: true,
                properties: None,
            },
            None,
            Some(v5::Login {
                username: "demo".into(),
                password: "pw".into(),
            }),
        )
        .write(&mut out, None)
        .unwrap();
        out
    }

    #[test]
    fn the_connect_picks_the_protocol() {
        let (wire, info) = read_connect(&mut v4_connect(), 1024).unwrap();
        assert_eq!((wire, info.client_id.as_str()), (Wire::V4, "demo.m1"));
        let (wire, info) = read_connect(&mut v5_connect(), 1024).unwrap();
        assert_eq!(wire, Wire::V5);
        assert_eq!(info.username.as_deref(), Some("demo"));
        assert_eq!(info.password.as_deref(), Some(&b"pw"[..]));
        assert_eq!(info.keep_alive, 30);
        let mut v3 = v4_connect();
        v3[2 + PROTOCOL_LEVEL_OFFSET] = 3;
        assert_eq!(
            read_connect(&mut v3, 1024).unwrap_err(),
            ConnectReadError::UnsupportedProtocol
        );
        let whole = v4_connect();
        let mut half = BytesMut::from(&whole[..whole.len() / 2]);
        assert_eq!(
            read_connect(&mut half, 1024).unwrap_err(),
            ConnectReadError::Incomplete
        );
        assert_eq!(protocol_level(&[0x30, 0]), None, "not a CONNECT");
        assert_eq!(
            protocol_level(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF]),
            None,
            "no level"
        );
    }

    #[test]
    fn what_we_write_reads_back_in_both_protocols() {
        for wire in [Wire::V4, Wire::V5] {
            let mut out = BytesMut::new();
            wire.puback(7, false, &mut out);
            wire.suback(8, &[true, false], &mut out);
            wire.publish(
                "meters/demo/m1/ack",
                Bytes::from_static(b"{\"seq\":3}"),
                &mut out,
            );
            wire.pingresp(&mut out);
            match wire {
                Wire::V4 => {
                    assert_eq!(
                        rumqttc::Packet::read(&mut out, 1024).unwrap(),
                        rumqttc::Packet::PubAck(rumqttc::PubAck::new(7))
                    );
                    let rumqttc::Packet::SubAck(suback) =
                        rumqttc::Packet::read(&mut out, 1024).unwrap()
                    else {
                        panic!("suback")
                    };
                    assert_eq!(suback.return_codes[1], SubscribeReasonCode::Failure);
                    assert!(matches!(
                        rumqttc::Packet::read(&mut out, 1024),
                        Ok(rumqttc::Packet::Publish(_))
                    ));
                    assert_eq!(
                        rumqttc::Packet::read(&mut out, 1024).unwrap(),
                        rumqttc::Packet::PingResp
                    );
                }
                Wire::V5 => {
                    let v5::Packet::PubAck(ack) = v5::Packet::read(&mut out, None).unwrap() else {
                        panic!("puback")
                    };
                    assert_eq!((ack.pkid, ack.reason), (7, v5::PubAckReason::Success));
                    let v5::Packet::SubAck(suback) = v5::Packet::read(&mut out, None).unwrap()
                    else {
                        panic!("suback")
                    };
                    assert_eq!(
                        suback.return_codes[1],
                        v5::SubscribeReasonCode::NotAuthorized
                    );
                    assert!(matches!(
                        v5::Packet::read(&mut out, None),
                        Ok(v5::Packet::Publish(_))
                    ));
                    assert!(matches!(
                        v5::Packet::read(&mut out, None),
                        Ok(v5::Packet::PingResp(_))
                    ));
                }
            }
        }
    }

    #[test]
    fn an_accepted_mqtt5_session_is_told_the_limits() {
        let mut out = BytesMut::new();
        Wire::V5.connack(ConnectAnswer::Accepted, (32, 4096), &mut out);
        let v5::Packet::ConnAck(ack) = v5::Packet::read(&mut out, None).unwrap() else {
            panic!("connack")
        };
        let props = ack.properties.unwrap();
        assert_eq!(
            (props.receive_max, props.max_qos, props.topic_alias_max),
            (Some(32), Some(1), Some(0))
        );
        let mut refused = BytesMut::new();
        Wire::V5.puback(9, true, &mut refused);
        let v5::Packet::PubAck(ack) = v5::Packet::read(&mut refused, None).unwrap() else {
            panic!("puback")
        };
        assert_eq!(ack.reason, v5::PubAckReason::NotAuthorized);
    }

    #[test]
    fn a_bare_mqtt5_disconnect_is_a_disconnect_not_a_violation() {
        // Remaining length 0: reason code (normal) and properties omitted.
        let mut buf = BytesMut::from(&[0xE0, 0x00, 0xC0, 0x00][..]);
        assert!(matches!(
            Wire::V5.read(&mut buf, 1024),
            Ok(Incoming::Disconnect)
        ));
        assert!(matches!(
            Wire::V5.read(&mut buf, 1024),
            Ok(Incoming::PingReq)
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn an_incomplete_packet_waits_and_an_oversized_one_is_refused_at_once() {
        for wire in [Wire::V4, Wire::V5] {
            let mut whole = BytesMut::new();
            wire.publish(
                "meters/demo/m1/up",
                Bytes::from(vec![b'x'; 1500]),
                &mut whole,
            );
            let len = whole.len();
            // Cut inside the remaining length, right after the fixed header, inside
            // the body, one byte short: more is awaited and nothing is consumed.
            for cut in [2, 3, 600, len - 1] {
                let mut part = BytesMut::from(&whole[..cut]);
                assert_eq!(
                    wire.read(&mut part, 4096).unwrap_err(),
                    ReadError::Incomplete,
                    "{wire:?} cut at {cut} of {len}"
                );
                assert_eq!(part.len(), cut, "{wire:?} cut at {cut}: nothing consumed");
            }
            // A declared length past the limit is refused before anything is awaited.
            assert_eq!(
                wire.read(&mut BytesMut::from(&whole[..600]), 1000)
                    .unwrap_err(),
                ReadError::TooLarge
            );
            assert!(matches!(
                wire.read(&mut whole, 4096),
                Ok(Incoming::Publish { .. })
            ));
        }
    }
}
