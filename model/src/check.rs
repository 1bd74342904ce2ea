//! The value rules of an uplink (DESIGN §3, §6.7), applied after decoding. `now_ms` is
//! passed in: this module never reads a clock.

use crate::limits::{Limits, MIN_PLAUSIBLE_TS_MS};
use crate::reject::Reject;
use crate::uplink::{UPLINK_VERSION, Uplink};

/// Checks a payload's size before it is decoded.
pub fn check_payload_size(len: usize, limits: &Limits) -> Result<(), Reject> {
    if len > limits.max_payload_bytes {
        Err(Reject::PayloadTooLarge)
    } else {
        Ok(())
    }
}

/// Checks a decoded uplink against the contract. The first broken rule is reported.
pub fn check_uplink(uplink: &Uplink, limits: &Limits, now_ms: i64) -> Result<(), Reject> {
    if uplink.v != UPLINK_VERSION {
        return Err(Reject::UnsupportedVersion);
    }
    if uplink.readings.is_empty() {
        return Err(Reject::EmptyReadings);
    }
    if uplink.readings.len() > limits.max_readings {
        return Err(Reject::TooManyReadings);
    }
    if uplink.battery.is_some_and(|b| b > 100) {
        return Err(Reject::ValueOutOfRange);
    }
    let latest_allowed = now_ms.saturating_add(limits.max_clock_skew_ms);
    let mut previous: Option<i64> = None;
    for reading in &uplink.readings {
        if reading.ts < MIN_PLAUSIBLE_TS_MS {
            return Err(Reject::ValueOutOfRange);
        }
        if reading.ts > latest_allowed {
            return Err(Reject::ClockSkew);
        }
        if previous.is_some_and(|p| reading.ts <= p) {
            return Err(Reject::UnorderedReadings);
        }
        previous = Some(reading.ts);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::Reading;

    const NOW: i64 = 1_763_800_000_000;

    fn at(ts: i64) -> Reading {
        Reading {
            ts,
            reg: 1,
            rev: 0,
            flow: 0,
            temp: None,
        }
    }

    fn check(u: &Uplink) -> Result<(), Reject> {
        check_uplink(u, &Limits::default(), NOW)
    }

    #[test]
    fn a_good_uplink_passes() {
        assert_eq!(
            check(&Uplink::new(1, vec![at(NOW - 1000), at(NOW)])),
            Ok(())
        );
    }

    #[test]
    fn each_rule_has_its_reason() {
        let mut u = Uplink::new(1, vec![at(NOW)]);
        u.v = 2;
        assert_eq!(check(&u), Err(Reject::UnsupportedVersion));
        assert_eq!(check(&Uplink::new(1, vec![])), Err(Reject::EmptyReadings));
        let many = (0..257).map(|i| at(NOW - 1_000_000 + i)).collect();
        assert_eq!(check(&Uplink::new(1, many)), Err(Reject::TooManyReadings));
        assert_eq!(
            check(&Uplink::new(1, vec![at(NOW), at(NOW)])),
            Err(Reject::UnorderedReadings)
        );
        assert_eq!(
            check(&Uplink::new(1, vec![at(NOW + 3_600_000)])),
            Err(Reject::ClockSkew)
        );
        assert_eq!(
            check(&Uplink::new(1, vec![at(5)])),
            Err(Reject::ValueOutOfRange)
        );
        let mut u = Uplink::new(1, vec![at(NOW)]);
        u.battery = Some(101);
        assert_eq!(check(&u), Err(Reject::ValueOutOfRange));
        assert_eq!(
            check_payload_size(64 * 1024 + 1, &Limits::default()),
            Err(Reject::PayloadTooLarge)
        );
    }
}
