//! Why an uplink was not accepted. Every variant is a dead-letter reason with a stable
//! snake_case code (DESIGN §6.7): dashboards, alerts and operators' scripts key on these
//! strings, so a code is never reused for another meaning and never renamed. This is
//! the one place the codes are listed; the README's table is generated from the same
//! words.

use std::fmt;

/// A reason to dead-letter an uplink. Cheap to create (no allocation): it is produced
/// on the hot path for every bad message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reject {
    /// The payload claims a format (JSON or binary) but does not parse as an uplink.
    Malformed,
    /// The payload starts with neither `{` (JSON) nor `0x01` (binary).
    UnknownFormat,
    /// `v` is not a version this build understands (only 1 today).
    UnsupportedVersion,
    /// The topic is not `meters/{tenant}/{meter}/up`.
    BadTopic,
    /// A tenant or meter id in the topic breaks `[A-Za-z0-9_-]{1,64}`.
    BadId,
    /// The topic names a tenant that is not configured.
    UnknownTenant,
    /// The tenant keeps a meter registry and this meter is not in it.
    UnknownMeter,
    /// The payload is larger than the configured limit.
    PayloadTooLarge,
    /// More readings in one message than the limit allows.
    TooManyReadings,
    /// A message with no readings at all.
    EmptyReadings,
    /// Readings whose timestamps do not strictly ascend.
    UnorderedReadings,
    /// A reading timestamped further in the future than the clock-skew window allows.
    ClockSkew,
    /// The MAC is missing where the tenant requires one, or does not verify.
    BadMac,
    /// A field holds a value outside its documented range (battery over 100 %, a
    /// timestamp before 2000-01-01, …).
    ValueOutOfRange,
    /// A device flag name this build does not know.
    UnknownFlag,
    /// Published to a topic other than the session's own uplink topic (another
    /// meter's or tenant's, an ack or alert topic): the endpoint never takes a topic's
    /// word for who sent a message, so the uplink is kept as a dead letter of the
    /// meter that really sent it and moves no window.
    ForbiddenTopic,
    /// A publish with the retain flag: meter topics keep no retained messages.
    RetainedPublish,
}

impl Reject {
    /// Every reason, in documentation order.
    pub const ALL: [Reject; 17] = [
        Reject::Malformed,
        Reject::UnknownFormat,
        Reject::UnsupportedVersion,
        Reject::BadTopic,
        Reject::BadId,
        Reject::UnknownTenant,
        Reject::UnknownMeter,
        Reject::PayloadTooLarge,
        Reject::TooManyReadings,
        Reject::EmptyReadings,
        Reject::UnorderedReadings,
        Reject::ClockSkew,
        Reject::BadMac,
        Reject::ValueOutOfRange,
        Reject::UnknownFlag,
        Reject::ForbiddenTopic,
        Reject::RetainedPublish,
    ];

    /// The stable code stored with the dead letter and used as a metric label.
    pub const fn code(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::UnknownFormat => "unknown_format",
            Reject::UnsupportedVersion => "unsupported_version",
            Reject::BadTopic => "bad_topic",
            Reject::BadId => "bad_id",
            Reject::UnknownTenant => "unknown_tenant",
            Reject::UnknownMeter => "unknown_meter",
            Reject::PayloadTooLarge => "payload_too_large",
            Reject::TooManyReadings => "too_many_readings",
            Reject::EmptyReadings => "empty_readings",
            Reject::UnorderedReadings => "unordered_readings",
            Reject::ClockSkew => "clock_skew",
            Reject::BadMac => "bad_mac",
            Reject::ValueOutOfRange => "value_out_of_range",
            Reject::UnknownFlag => "unknown_flag",
            Reject::ForbiddenTopic => "forbidden_topic",
            Reject::RetainedPublish => "retained_publish",
        }
    }

    /// Looks a code up again (for stored dead letters).
    pub fn from_code(code: &str) -> Option<Reject> {
        Reject::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl std::error::Error for Reject {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reject::ALL {
            let code = r.code();
            assert!(code.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            assert!(seen.insert(code), "duplicate code {code}");
            assert_eq!(Reject::from_code(code), Some(r));
        }
    }
}
