//! The downlink ack: `{"seq": N}` on `meters/{tenant}/{meter}/ack`, where N is the
//! meter's durable watermark — every message with seq ≤ N is stored (DESIGN §3).
//! Cumulative, so QoS 0 is enough: a lost ack is superseded by the next one.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub seq: u64,
}

pub fn encode(seq: u64) -> Vec<u8> {
    format!("{{\"seq\":{seq}}}").into_bytes()
}

pub fn decode(payload: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Ack>(payload).ok().map(|a| a.seq)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips() {
        assert_eq!(super::decode(&super::encode(42)), Some(42));
        assert_eq!(super::decode(b"nope"), None);
    }
}
