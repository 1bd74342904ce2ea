//! A meter's device status as its newest message reported it: the alarm flags, the
//! battery level and the radio signal. Readings say how much water went through;
//! the status says how the device itself is doing, and alerting reads both.

use serde::{Deserialize, Serialize};

use crate::uplink::Flags;

/// Status carried by the newest message of a meter in a sealed batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// `ts` of the newest reading of that message, epoch ms (device clock).
    pub ts: i64,
    /// Seq of that message: of two statuses at one `ts`, the greater one's is the
    /// device's word.
    pub seq: u64,
    /// When meterflow received that message, epoch ms (service clock).
    pub received_at: i64,
    /// Alarms the device raised in that message; an absent flag means "not raised".
    pub flags: Flags,
    /// Battery level, percent, when the device reports it.
    pub battery: Option<u8>,
    /// Received signal strength at the meter, dBm, when reported.
    pub rssi: Option<i16>,
}
