//! The few MQTT 3.1.1 packets the peer-baseline acker speaks, as pure encode and
//! decode functions over byte buffers (no socket here): CONNECT, SUBSCRIBE, QoS 0
//! PUBLISH and PINGREQ out; CONNACK, SUBACK and PUBLISH in (PINGRESP is skipped).
//!
//! Wire format (MQTT 3.1.1 §2): a fixed header byte (type in the high nibble, flags
//! in the low), the remaining length as a 1–4 byte base-128 varint, then the body.
//! Strings are a big-endian `u16` length and UTF-8 bytes.

/// Packet types (high nibble of the first byte).
pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;
pub(crate) const SUBACK: u8 = 9;

/// Largest remaining length MQTT can express (four varint bytes).
const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// One complete packet at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub(crate) packet_type: u8,
    pub(crate) flags: u8,
    pub(crate) body: &'a [u8],
    /// Bytes the whole packet takes in the buffer.
    pub(crate) len: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The remaining-length varint is longer than four bytes.
    BadLength,
}

/// The packet at the start of `buf`: `Ok(None)` when more bytes are needed.
pub(crate) fn next_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut shift = 0;
    let mut pos = 1;
    loop {
        let Some(&byte) = buf.get(pos) else {
            return Ok(None);
        };
        pos += 1;
        remaining |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(FrameError::BadLength);
        }
    }
    let len = pos + remaining;
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(Frame {
        packet_type: first >> 4,
        flags: first & 0x0f,
        body: &buf[pos..len],
        len,
    }))
}

fn put_remaining_length(out: &mut Vec<u8>, mut len: usize) {
    debug_assert!(len <= MAX_REMAINING_LENGTH);
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s[..usize::from(len)]);
}

/// CONNECT, protocol level 4 (3.1.1), clean session, no credentials. A keep-alive of
/// 0 turns the broker's keep-alive timer off, so an idle acker needs no PINGREQ.
pub(crate) fn connect(out: &mut Vec<u8>, client_id: &str, keep_alive_s: u16) {
    let body_len = 2 + 4 + 1 + 1 + 2 + 2 + client_id.len();
    out.push(0x10);
    put_remaining_length(out, body_len);
    put_str(out, b"MQTT");
    out.push(4); // protocol level 3.1.1
    out.push(0x02); // clean session
    out.extend_from_slice(&keep_alive_s.to_be_bytes());
    put_str(out, client_id.as_bytes());
}

/// PINGREQ: keeps a connection with a keep-alive open while it sends nothing else.
pub(crate) fn pingreq(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xc0, 0x00]);
}

/// SUBSCRIBE to one filter at `qos`.
pub(crate) fn subscribe(out: &mut Vec<u8>, packet_id: u16, filter: &str, qos: u8) {
    let body_len = 2 + 2 + filter.len() + 1;
    out.push(0x82); // SUBSCRIBE has reserved flags 0b0010
    put_remaining_length(out, body_len);
    out.extend_from_slice(&packet_id.to_be_bytes());
    put_str(out, filter.as_bytes());
    out.push(qos);
}

/// A QoS 0 PUBLISH (no packet id).
pub(crate) fn publish_qos0(out: &mut Vec<u8>, topic: &[u8], payload: &[u8]) {
    out.push(0x30);
    put_remaining_length(out, 2 + topic.len() + payload.len());
    put_str(out, topic);
    out.extend_from_slice(payload);
}

/// Topic and payload of a PUBLISH body (`flags` from its fixed header: QoS 1 and 2
/// carry a packet id between them). `None` when malformed.
pub(crate) fn parse_publish(flags: u8, body: &[u8]) -> Option<(&[u8], &[u8])> {
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let topic = body.get(2..2 + topic_len)?;
    let qos = (flags >> 1) & 0x03;
    let payload_at = 2 + topic_len + if qos > 0 { 2 } else { 0 };
    Some((topic, body.get(payload_at..)?))
}

/// The CONNACK return code (0 = accepted).
pub(crate) fn connack_code(body: &[u8]) -> Option<u8> {
    body.get(1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_matches_the_spec_example_layout() {
        let mut out = Vec::new();
        connect(&mut out, "acker", 0);
        assert_eq!(
            out,
            [
                0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 5, b'a', b'c', b'k',
                b'e', b'r'
            ]
        );
    }

    #[test]
    fn publish_round_trips_through_the_framer() {
        let mut out = Vec::new();
        publish_qos0(&mut out, b"meters/demo/m000001/ack", br#"{"seq":7}"#);
        let frame = next_frame(&out).unwrap().unwrap();
        assert_eq!(frame.packet_type, PUBLISH);
        assert_eq!(frame.len, out.len());
        let (topic, payload) = parse_publish(frame.flags, frame.body).unwrap();
        assert_eq!(topic, b"meters/demo/m000001/ack");
        assert_eq!(payload, br#"{"seq":7}"#);
    }

    #[test]
    fn qos1_publish_skips_the_packet_id() {
        // flags 0b0010 = QoS 1; topic "a/b", packet id 0x0102, payload "xy".
        let body = [0, 3, b'a', b'/', b'b', 1, 2, b'x', b'y'];
        assert_eq!(parse_publish(0x02, &body), Some((&b"a/b"[..], &b"xy"[..])));
        assert_eq!(parse_publish(0x02, &body[..4]), None);
    }

    #[test]
    fn long_remaining_lengths_and_partial_frames() {
        let payload = vec![7u8; 300];
        let mut out = Vec::new();
        publish_qos0(&mut out, b"t", &payload);
        // 2 + 1 + 300 = 303 = 0b10_0101111 → [0xAF, 0x02]
        assert_eq!(&out[1..3], &[0xAF, 0x02]);
        assert_eq!(next_frame(&out[..100]), Ok(None));
        assert_eq!(next_frame(&out[..1]), Ok(None));
        assert_eq!(next_frame(&[]), Ok(None));
        let frame = next_frame(&out).unwrap().unwrap();
        assert_eq!(frame.body.len(), 303);
        assert_eq!(
            next_frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(FrameError::BadLength)
        );
    }

    #[test]
    fn pingreq_is_a_bare_fixed_header() {
        let mut out = Vec::new();
        pingreq(&mut out);
        let frame = next_frame(&out).unwrap().unwrap();
        assert_eq!((frame.packet_type, frame.body.len(), frame.len), (12, 0, 2));
    }

    #[test]
    fn subscribe_and_acks() {
        let mut out = Vec::new();
        subscribe(&mut out, 1, "meters/+/+/up", 0);
        assert_eq!(out[0], 0x82);
        let frame = next_frame(&out).unwrap().unwrap();
        assert_eq!(frame.body, b"\x00\x01\x00\x0dmeters/+/+/up\x00");
        assert_eq!(connack_code(&[0, 0]), Some(0));
        assert_eq!(connack_code(&[0, 5]), Some(5));
        assert_eq!(connack_code(&[0]), None);
    }
}
