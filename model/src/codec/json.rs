//! The JSON wire form of an uplink, through serde_json. Unknown top-level fields are
//! ignored (vendors add their own); unknown flag names are rejected with their own
//! reason so an installer sees what the meter sent.

use crate::reject::Reject;
use crate::uplink::{UNKNOWN_FLAG_MARKER, Uplink};

pub(crate) fn decode(payload: &[u8]) -> Result<Uplink, Reject> {
    serde_json::from_slice(payload).map_err(|e| {
        if e.to_string().contains(UNKNOWN_FLAG_MARKER) {
            Reject::UnknownFlag
        } else {
            Reject::Malformed
        }
    })
}

pub(crate) fn encode(uplink: &Uplink) -> Vec<u8> {
    // Serialising plain integers, strings and vectors into memory cannot fail.
    serde_json::to_vec(uplink).expect("uplink serialises to JSON")
}
