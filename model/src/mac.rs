//! The payload MAC: HMAC-SHA256 with the meter's key, truncated to its first 16 bytes,
//! over the canonical binary encoding of the uplink with `mac` empty (the full binary
//! payload, format byte included — see [`crate::codec::encode_binary`]). Computing it
//! over the binary form means a JSON and a binary uplink with the same content carry
//! the same MAC, and JSON whitespace or key order cannot break it.
//!
//! rumqttd has no topic ACLs and does not tell us who published, so this MAC is what
//! stops one meter from writing as another (DESIGN §7).

use std::fmt;

use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

use crate::codec;
use crate::uplink::Uplink;

/// Bytes of the truncated HMAC carried in the uplink.
pub const MAC_LEN: usize = 16;

/// A truncated HMAC tag; hex on the JSON wire, raw in binary.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; MAC_LEN]);

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <&str>::deserialize(d)?;
        let mut tag = [0u8; MAC_LEN];
        hex::decode_to_slice(text, &mut tag).map_err(serde::de::Error::custom)?;
        Ok(Mac(tag))
    }
}

/// HMAC-SHA256 under `key` over `uplink`'s canonical form (its own `mac` field
/// ignored; written without copying the uplink, and hashed in one piece — bincode
/// writes many small ones, each a costly hash update).
fn hmac_of(key: &[u8], uplink: &Uplink) -> Hmac<Sha256> {
    let mut canonical = Vec::with_capacity(16 + uplink.readings.len() * 16);
    codec::write_binary(uplink, None, &mut canonical);
    // HMAC accepts keys of any length, so new_from_slice cannot fail.
    let mut hmac = <Hmac<Sha256>>::new_from_slice(key).expect("hmac takes any key length");
    hmac.update(&canonical);
    hmac
}

/// The MAC of `uplink` (its own `mac` field is ignored) under `key`.
pub fn compute(key: &[u8], uplink: &Uplink) -> Mac {
    let full = hmac_of(key, uplink).finalize().into_bytes();
    let mut tag = [0u8; MAC_LEN];
    tag.copy_from_slice(&full[..MAC_LEN]);
    Mac(tag)
}

/// Whether `uplink` carries a MAC that verifies under `key` (hmac's constant-time
/// compare of the truncated tag).
pub fn verify(key: &[u8], uplink: &Uplink) -> bool {
    let Some(given) = uplink.mac else {
        return false;
    };
    hmac_of(key, uplink).verify_truncated_left(&given.0).is_ok()
}

/// Signs `uplink` in place.
pub fn sign(key: &[u8], uplink: &mut Uplink) {
    uplink.mac = Some(compute(key, uplink));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::Reading;

    fn uplink() -> Uplink {
        Uplink::new(
            7,
            vec![Reading {
                ts: 1_763_800_000_000,
                reg: 10,
                rev: 0,
                flow: 0,
                temp: None,
            }],
        )
    }

    #[test]
    fn signed_uplink_verifies_and_tampering_breaks_it() {
        let mut u = uplink();
        sign(b"meter-key", &mut u);
        assert!(verify(b"meter-key", &u));
        assert!(!verify(b"other-key", &u));
        u.readings[0].reg += 1;
        assert!(!verify(b"meter-key", &u));
    }

    #[test]
    fn json_and_binary_carry_the_same_mac() {
        let mut u = uplink();
        sign(b"k", &mut u);
        let via_json = codec::decode(&codec::encode_json(&u)).unwrap();
        let via_bin = codec::decode(&codec::encode_binary(&u)).unwrap();
        assert!(verify(b"k", &via_json));
        assert!(verify(b"k", &via_bin));
    }

    #[test]
    fn the_mac_is_over_the_binary_form_with_no_mac() {
        let mut u = uplink();
        u.battery = Some(80);
        u.mac = Some(Mac([9; MAC_LEN]));
        let mut unsigned = u.clone();
        unsigned.mac = None;
        let mut hmac = <Hmac<Sha256>>::new_from_slice(b"k").unwrap();
        hmac.update(&codec::encode_binary(&unsigned));
        let full = hmac.finalize().into_bytes();
        assert_eq!(compute(b"k", &u).0[..], full[..MAC_LEN]);
    }

    #[test]
    fn unsigned_uplink_does_not_verify() {
        assert!(!verify(b"k", &uplink()));
    }
}
