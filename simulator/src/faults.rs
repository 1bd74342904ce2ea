//! Message-level faults a meter injects into its own traffic, decided per message from
//! the meter's faults stream ([`crate::rng::Stream::Faults`]), so they are part of the
//! ground truth and never shift the readings:
//! - **duplicate**: the message is published once more after its ack arrives, as a
//!   meter does when the ack was lost; the service counts it `duplicate`;
//! - **held back** (out-of-order): the message is sent right after the next one;
//! - **malformed**: a broken payload follows the message on the same topic; the
//!   service dead-letters it with the reason [`Malformed::reason`]. Only payloads that
//!   fail to *decode* are used: a payload that decodes consumes its seq at the service
//!   (contract violations are acked past), which would shadow a real message.

use meterflow_model::{Reject, Uplink, codec};
use serde::{Deserialize, Serialize};

/// What happens to one message besides being sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageFaults {
    pub duplicate: bool,
    pub held_back: bool,
    pub malformed: Option<Malformed>,
}

/// Kinds of broken payloads, drawn uniformly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Malformed {
    /// The JSON uplink cut off halfway (a radio frame lost mid-message).
    Truncated,
    /// Neither JSON nor the binary format byte (a gateway speaking another protocol).
    UnknownFormat,
    /// A flag name the contract does not know (newer firmware).
    UnknownFlag,
}

impl Malformed {
    pub const ALL: [Malformed; 3] = [
        Malformed::Truncated,
        Malformed::UnknownFormat,
        Malformed::UnknownFlag,
    ];

    /// The dead-letter reason the service gives this payload.
    pub fn reason(self) -> Reject {
        match self {
            Malformed::Truncated => Reject::Malformed,
            Malformed::UnknownFormat => Reject::UnknownFormat,
            Malformed::UnknownFlag => Reject::UnknownFlag,
        }
    }

    /// The broken payload, derived from the real message `uplink`.
    pub fn payload(self, uplink: &Uplink) -> Vec<u8> {
        match self {
            Malformed::Truncated => {
                let mut json = codec::encode_json(uplink);
                json.truncate(json.len() / 2);
                json
            }
            Malformed::UnknownFormat => {
                let mut bytes = b"\x7fMFv9".to_vec();
                bytes.extend_from_slice(&uplink.seq.to_be_bytes());
                bytes
            }
            Malformed::UnknownFlag => {
                let mut value = serde_json::to_value(uplink).unwrap_or_default();
                value["flags"] = serde_json::json!(["gremlins"]);
                serde_json::to_vec(&value).unwrap_or_default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_model::Reading;

    #[test]
    fn every_malformed_payload_fails_to_decode_with_its_reason() {
        let reading = Reading {
            ts: 1_763_800_000_000,
            reg: 12_345,
            rev: 0,
            flow: 12,
            temp: Some(120),
        };
        let uplink = Uplink::new(7, vec![reading; 4]);
        for kind in Malformed::ALL {
            assert_eq!(
                codec::decode(&kind.payload(&uplink)),
                Err(kind.reason()),
                "{kind:?}"
            );
        }
    }
}
