//! Wire codecs for uplinks (DESIGN §3) and the encoding of persisted records.
//!
//! The first byte of a payload picks the format:
//! - `{` — JSON ([`json`]);
//! - `0x01` — binary: the same [`Uplink`] in bincode 2 standard config ([`binary`]);
//! - anything else — [`Reject::UnknownFormat`].
//!
//! Decoding never panics and never allocates more than the payload can justify: the
//! binary decoder is bounded by the payload length, JSON by serde_json's own checks.
//! Decoding only parses; the contract's value rules live in [`crate::check`].

pub mod binary;
pub mod json;

use crate::mac::Mac;
use crate::reject::Reject;
use crate::uplink::Uplink;

/// First byte of a binary uplink.
pub const BINARY_FORMAT_BYTE: u8 = 0x01;

/// Parses a payload in either wire form.
pub fn decode(payload: &[u8]) -> Result<Uplink, Reject> {
    match payload.first() {
        Some(b'{') => json::decode(payload),
        Some(&BINARY_FORMAT_BYTE) => binary::decode_uplink(&payload[1..]),
        Some(_) => Err(Reject::UnknownFormat),
        None => Err(Reject::Malformed),
    }
}

/// The JSON wire form.
pub fn encode_json(uplink: &Uplink) -> Vec<u8> {
    json::encode(uplink)
}

/// The binary wire form: format byte, then bincode. This is also the canonical form
/// the MAC is computed over.
pub fn encode_binary(uplink: &Uplink) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + uplink.readings.len() * 16);
    write_binary(uplink, uplink.mac, &mut out);
    out
}

/// Writes the binary wire form of `uplink` with `mac` in place of its own: with
/// `None`, the canonical form [`crate::mac`] hashes.
pub(crate) fn write_binary(uplink: &Uplink, mac: Option<Mac>, out: &mut impl std::io::Write) {
    out.write_all(&[BINARY_FORMAT_BYTE])
        .expect("the writers are in memory");
    binary::encode_uplink_into(uplink, mac.map(|m| m.0), out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mac::Mac;
    use crate::uplink::{Flags, Reading};
    use proptest::prelude::*;

    fn arb_reading() -> impl Strategy<Value = Reading> {
        (
            any::<i64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<Option<i16>>(),
        )
            .prop_map(|(ts, reg, rev, flow, temp)| Reading {
                ts,
                reg,
                rev,
                flow,
                temp,
            })
    }

    fn arb_uplink() -> impl Strategy<Value = Uplink> {
        (
            any::<u8>(),
            any::<u64>(),
            proptest::collection::vec(arb_reading(), 0..40),
            0u32..(1 << 10),
            any::<Option<u8>>(),
            any::<Option<i16>>(),
            any::<Option<[u8; 16]>>(),
        )
            .prop_map(|(v, seq, readings, bits, battery, rssi, mac)| Uplink {
                v,
                seq,
                readings,
                flags: Flags::from_bits(bits).unwrap(),
                battery,
                rssi,
                mac: mac.map(Mac),
            })
    }

    proptest! {
        #[test]
        fn every_uplink_round_trips_through_json(u in arb_uplink()) {
            prop_assert_eq!(decode(&encode_json(&u)), Ok(u));
        }

        #[test]
        fn every_uplink_round_trips_through_binary(u in arb_uplink()) {
            prop_assert_eq!(decode(&encode_binary(&u)), Ok(u));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_binary_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut payload = vec![BINARY_FORMAT_BYTE];
            payload.extend(bytes);
            let _ = decode(&payload);
        }

        #[test]
        fn arbitrary_json_prefixed_bytes_never_panic(s in ".{0,200}") {
            let payload = format!("{{{s}");
            let _ = decode(payload.as_bytes());
        }

        #[test]
        fn truncated_binary_is_malformed_not_a_panic(u in arb_uplink(), cut in 1usize..64) {
            let bytes = encode_binary(&u);
            let keep = bytes.len().saturating_sub(cut).max(1);
            if keep < bytes.len() {
                prop_assert_eq!(decode(&bytes[..keep]), Err(Reject::Malformed));
            }
        }
    }

    #[test]
    fn format_byte_decides() {
        assert_eq!(decode(b""), Err(Reject::Malformed));
        assert_eq!(decode(b"\x02abc"), Err(Reject::UnknownFormat));
        assert_eq!(decode(b"[1,2]"), Err(Reject::UnknownFormat));
        assert_eq!(decode(b"{not json"), Err(Reject::Malformed));
    }

    #[test]
    fn documented_example_parses() {
        let u = decode(
            br#"{"v":1,"seq":1842,
             "readings":[{"ts":1763800000000,"reg":123456789,"rev":0,"flow":0,"temp":125}],
             "flags":["leak"],"battery":87,"rssi":-97}"#,
        )
        .unwrap();
        assert_eq!(u.seq, 1842);
        assert_eq!(u.readings[0].temp, Some(125));
        assert!(u.flags.contains(crate::uplink::DeviceFlag::Leak));
    }

    #[test]
    fn unknown_flag_has_its_own_reason() {
        let payload = br#"{"v":1,"seq":1,"readings":[{"ts":1,"reg":1}],"flags":["gremlins"]}"#;
        assert_eq!(decode(payload), Err(Reject::UnknownFlag));
        let mut bin = encode_binary(&Uplink::new(1, vec![]));
        // The flag bitset follows v, seq and the empty readings length; 1 << 10 is no
        // flag's bit (varint: 251 then a little-endian u16).
        bin.splice(4..5, [251, 0x00, 0x04]);
        assert_eq!(decode(&bin), Err(Reject::Malformed));
    }
}
