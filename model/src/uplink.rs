//! The uplink v1 message (DESIGN §3): one meter's burst of interval readings plus its
//! device status. Integers only — litres, L/h, 0.1 °C, epoch milliseconds — so every
//! value is exact and has one canonical encoding (which the MAC relies on).
//!
//! JSON shape (the binary form carries the same fields, see [`crate::codec`]):
//! `{"v":1,"seq":1842,"readings":[{"ts":…,"reg":…,"rev":0,"flow":0,"temp":125}],
//!   "flags":["leak"],"battery":87,"rssi":-97,"mac":"<32 hex digits>"}`

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::DEFAULT_MAX_READINGS;
use crate::mac::Mac;

/// The only uplink version this build understands.
pub const UPLINK_VERSION: u8 = 1;

/// One interval reading of a meter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// End of the interval, epoch milliseconds (UTC).
    pub ts: i64,
    /// Cumulative forward register, litres.
    pub reg: u64,
    /// Cumulative reverse (backflow) register, litres.
    #[serde(default)]
    pub rev: u64,
    /// Maximum flow seen in the interval, litres per hour.
    #[serde(default)]
    pub flow: u32,
    /// Water temperature in 0.1 °C, when the meter has a sensor. Always serialised
    /// (as `null` when absent): readings are also persisted inside meter state with
    /// bincode's serde mode, which cannot read back a skipped field.
    #[serde(default)]
    pub temp: Option<i16>,
}

impl Reading {
    /// A forward register value at a time and nothing else (no reverse register,
    /// flow or temperature): an operator's figure such as a work order's read.
    pub const fn register(ts: i64, reg: u64) -> Self {
        Self {
            ts,
            reg,
            rev: 0,
            flow: 0,
            temp: None,
        }
    }
}

/// Alarms a meter raises itself. The discriminant is the bit in the binary bitset and
/// must never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DeviceFlag {
    Leak = 0,
    Burst = 1,
    Backflow = 2,
    Tamper = 3,
    Magnetic = 4,
    CutCable = 5,
    DryPipe = 6,
    LowBattery = 7,
    Freeze = 8,
    RegisterError = 9,
}

impl DeviceFlag {
    pub const ALL: [DeviceFlag; 10] = [
        DeviceFlag::Leak,
        DeviceFlag::Burst,
        DeviceFlag::Backflow,
        DeviceFlag::Tamper,
        DeviceFlag::Magnetic,
        DeviceFlag::CutCable,
        DeviceFlag::DryPipe,
        DeviceFlag::LowBattery,
        DeviceFlag::Freeze,
        DeviceFlag::RegisterError,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            DeviceFlag::Leak => "leak",
            DeviceFlag::Burst => "burst",
            DeviceFlag::Backflow => "backflow",
            DeviceFlag::Tamper => "tamper",
            DeviceFlag::Magnetic => "magnetic",
            DeviceFlag::CutCable => "cut_cable",
            DeviceFlag::DryPipe => "dry_pipe",
            DeviceFlag::LowBattery => "low_battery",
            DeviceFlag::Freeze => "freeze",
            DeviceFlag::RegisterError => "register_error",
        }
    }

    pub fn from_name(name: &str) -> Option<DeviceFlag> {
        DeviceFlag::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A set of [`DeviceFlag`]s: a name list in JSON, a `u32` bitset in binary.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u32);

/// Bits that name a known flag; a binary payload with any other bit set is rejected.
pub const KNOWN_FLAG_BITS: u32 = (1 << DeviceFlag::ALL.len()) - 1;

impl Flags {
    pub const fn empty() -> Self {
        Flags(0)
    }

    /// From a binary bitset; `None` when it sets a bit no flag owns.
    pub const fn from_bits(bits: u32) -> Option<Flags> {
        if bits & !KNOWN_FLAG_BITS == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    pub fn insert(&mut self, flag: DeviceFlag) {
        self.0 |= 1 << flag as u8;
    }

    pub const fn contains(self, flag: DeviceFlag) -> bool {
        self.0 & (1 << flag as u8) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = DeviceFlag> {
        DeviceFlag::ALL
            .into_iter()
            .filter(move |f| self.contains(*f))
    }
}

impl FromIterator<DeviceFlag> for Flags {
    fn from_iter<I: IntoIterator<Item = DeviceFlag>>(iter: I) -> Self {
        let mut flags = Flags::empty();
        iter.into_iter().for_each(|f| flags.insert(f));
        flags
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(DeviceFlag::name))
            .finish()
    }
}

impl Serialize for Flags {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for flag in self.iter() {
            seq.serialize_element(flag.name())?;
        }
        seq.end()
    }
}

/// Marker in the serde error for an unknown flag name, so the decoder can map it to
/// [`crate::Reject::UnknownFlag`] instead of `malformed`.
pub(crate) const UNKNOWN_FLAG_MARKER: &str = "unknown device flag";

impl<'de> Deserialize<'de> for Flags {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FlagsVisitor;
        impl<'de> Visitor<'de> for FlagsVisitor {
            type Value = Flags;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of device flag names")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Flags, A::Error> {
                let mut flags = Flags::empty();
                while let Some(name) = seq.next_element::<&str>()? {
                    let flag = DeviceFlag::from_name(name)
                        .ok_or_else(|| de::Error::custom(UNKNOWN_FLAG_MARKER))?;
                    flags.insert(flag);
                }
                Ok(flags)
            }
        }
        deserializer.deserialize_seq(FlagsVisitor)
    }
}

/// Readings a JSON uplink's vector has room for before it grows: JSON tells no
/// length up front, and growing from empty to a message of 24 readings took five
/// reallocations (~2 % of the service's CPU at 24 readings a message).
const READINGS_ROOM: usize = 32;

/// Deserializes an uplink's readings into a vector with room for a typical message
/// (or the length the format tells, up to the most readings an uplink may carry).
fn readings_with_room<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Reading>, D::Error> {
    struct ReadingsVisitor;
    impl<'de> Visitor<'de> for ReadingsVisitor {
        type Value = Vec<Reading>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of readings")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Reading>, A::Error> {
            // A told length is trusted only up to what an uplink may carry.
            let room = seq
                .size_hint()
                .map_or(READINGS_ROOM, |len| len.min(DEFAULT_MAX_READINGS));
            let mut readings = Vec::with_capacity(room);
            while let Some(reading) = seq.next_element()? {
                readings.push(reading);
            }
            Ok(readings)
        }
    }
    deserializer.deserialize_seq(ReadingsVisitor)
}

/// One uplink message from a meter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uplink {
    /// Wire version; only [`UPLINK_VERSION`] is accepted.
    pub v: u8,
    /// Per-meter message counter: +1 per message, survives device reboots.
    pub seq: u64,
    /// 1..=256 readings in strictly ascending `ts`.
    #[serde(deserialize_with = "readings_with_room")]
    pub readings: Vec<Reading>,
    #[serde(default, skip_serializing_if = "Flags::is_empty")]
    pub flags: Flags,
    /// Battery level, percent (0..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<u8>,
    /// Received signal strength at the meter, dBm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rssi: Option<i16>,
    /// HMAC-SHA256 (first 16 bytes) with the meter's key, see [`crate::mac`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
}

impl Uplink {
    /// An uplink with the current version and no status fields.
    pub fn new(seq: u64, readings: Vec<Reading>) -> Self {
        Self {
            v: UPLINK_VERSION,
            seq,
            readings,
            flags: Flags::empty(),
            battery: None,
            rssi: None,
            mac: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_bits_are_stable() {
        let flags: Flags = [DeviceFlag::Leak, DeviceFlag::RegisterError]
            .into_iter()
            .collect();
        assert_eq!(flags.bits(), 0b10_0000_0001);
        assert_eq!(Flags::from_bits(1 << 10), None);
    }
}
