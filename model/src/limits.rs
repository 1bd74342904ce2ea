//! What an acceptable uplink looks like in size and time. The defaults are the wire
//! contract's (DESIGN §3); a tenant may not loosen them past the broker's own limit.

use serde::{Deserialize, Serialize};

/// Largest payload accepted: 256 readings in JSON are about 20 KiB, so 64 KiB leaves
/// room for vendor extras while keeping one message's memory small.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Most readings per message: a day of 15-minute reads (96) with room for catch-up.
pub const DEFAULT_MAX_READINGS: usize = 256;
/// How far in the future a reading may be stamped: device clocks drift, and NTP-less
/// meters resync only daily; five minutes covers honest drift, not a wrong year.
pub const DEFAULT_MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;
/// Timestamps before 2000-01-01T00:00:00Z are a device with an unset clock.
pub const MIN_PLAUSIBLE_TS_MS: i64 = 946_684_800_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest payload in bytes; larger ones are dead-lettered `payload_too_large`.
    pub max_payload_bytes: usize,
    /// Most readings in one message; more are dead-lettered `too_many_readings`.
    pub max_readings: usize,
    /// Greatest allowed lead of a reading's `ts` over the service clock, in ms.
    pub max_clock_skew_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_readings: DEFAULT_MAX_READINGS,
            max_clock_skew_ms: DEFAULT_MAX_CLOCK_SKEW_MS,
        }
    }
}
