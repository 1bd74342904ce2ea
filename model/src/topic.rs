//! The MQTT topic scheme (DESIGN §3):
//! - `meters/{tenant}/{meter}/up` — uplink, QoS 1, meter → meterflow;
//! - `meters/{tenant}/{meter}/ack` — durable watermark, QoS 0, meterflow → meter;
//! - `alerts/{tenant}/{meter}` — alert events for integrations.

use crate::ids::{MeterId, MeterKey, TenantId};
use crate::reject::Reject;

/// The filter the service subscribes to for every uplink.
pub const UPLINK_FILTER: &str = "meters/+/+/up";
/// Every meter's ack topic.
pub const ACK_FILTER: &str = "meters/+/+/ack";
/// Every alert topic, and every subscription to alert topics.
pub const ALERTS_FILTER: &str = "alerts/#";

/// The parts of an uplink topic, before the ids are checked against configuration.
#[derive(Debug, PartialEq, Eq)]
pub struct UplinkTopic<'a> {
    pub tenant: &'a [u8],
    pub meter: &'a [u8],
}

/// Splits `meters/{tenant}/{meter}/up` into its raw ids. Only the shape is checked.
pub fn split_uplink(topic: &[u8]) -> Result<UplinkTopic<'_>, Reject> {
    let rest = topic.strip_prefix(b"meters/").ok_or(Reject::BadTopic)?;
    let rest = rest.strip_suffix(b"/up").ok_or(Reject::BadTopic)?;
    let mut parts = rest.splitn(2, |b| *b == b'/');
    let tenant = parts.next().ok_or(Reject::BadTopic)?;
    let meter = parts.next().ok_or(Reject::BadTopic)?;
    if meter.contains(&b'/') {
        return Err(Reject::BadTopic);
    }
    Ok(UplinkTopic { tenant, meter })
}

/// Parses an uplink topic into a validated meter key.
pub fn parse_uplink(topic: &[u8]) -> Result<MeterKey, Reject> {
    let parts = split_uplink(topic)?;
    Ok(MeterKey::new(
        TenantId::parse(parts.tenant)?,
        MeterId::parse(parts.meter)?,
    ))
}

pub fn uplink_topic(key: &MeterKey) -> String {
    format!("meters/{}/{}/up", key.tenant, key.meter)
}

pub fn ack_topic(key: &MeterKey) -> String {
    format!("meters/{}/{}/ack", key.tenant, key.meter)
}

pub fn alert_topic(key: &MeterKey) -> String {
    format!("alerts/{}/{}", key.tenant, key.meter)
}

/// Whether `topic` is exactly `key`'s uplink topic, compared without allocating: the
/// endpoint asks this of every publish.
pub fn is_own_uplink(topic: &str, key: &MeterKey) -> bool {
    meter_topic_suffix(topic, key) == Some("/up")
}

/// Whether `topic` is exactly `key`'s ack topic.
pub fn is_own_ack(topic: &str, key: &MeterKey) -> bool {
    meter_topic_suffix(topic, key) == Some("/ack")
}

/// What follows `meters/{tenant}/{meter}` of `key` in `topic`, if it starts so.
fn meter_topic_suffix<'a>(topic: &'a str, key: &MeterKey) -> Option<&'a str> {
    topic
        .strip_prefix("meters/")?
        .strip_prefix(key.tenant.as_str())?
        .strip_prefix('/')?
        .strip_prefix(key.meter.as_str())
}

/// The MQTT client id a meter must connect with: `{tenant}.{meter}`.
pub fn client_id(key: &MeterKey) -> String {
    format!("{}.{}", key.tenant, key.meter)
}

/// Splits a client id `{tenant}.{meter}` back into a key.
pub fn parse_client_id(client_id: &str) -> Result<MeterKey, Reject> {
    let (tenant, meter) = client_id.split_once('.').ok_or(Reject::BadId)?;
    Ok(MeterKey::new(
        TenantId::try_from(tenant)?,
        MeterId::try_from(meter)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uplink_topics() {
        let key = parse_uplink(b"meters/demo/m-1/up").unwrap();
        assert_eq!(key.to_string(), "demo/m-1");
        assert_eq!(uplink_topic(&key), "meters/demo/m-1/up");
        assert_eq!(ack_topic(&key), "meters/demo/m-1/ack");
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            &b"meters/demo/up"[..],
            b"meter/demo/m/up",
            b"meters/demo/m/ack",
            b"meters/a/b/c/up",
        ] {
            assert_eq!(parse_uplink(bad), Err(Reject::BadTopic), "{bad:?}");
        }
        assert_eq!(parse_uplink(b"meters/de mo/m/up"), Err(Reject::BadId));
        assert_eq!(parse_uplink(b"meters/demo/\xff/up"), Err(Reject::BadId));
    }

    #[test]
    fn own_topics_match_exactly() {
        let key = parse_client_id("demo.m1").unwrap();
        assert!(is_own_uplink("meters/demo/m1/up", &key));
        assert!(is_own_ack("meters/demo/m1/ack", &key));
        for other in [
            "meters/demo/m10/up",
            "meters/demo/m/up",
            "meters/demox/m1/up",
            "meters/demo/m1/ack",
            "meters/demo/m1/up/",
            "alerts/demo/m1",
            "meters/+/+/up",
        ] {
            assert!(!is_own_uplink(other, &key), "{other}");
        }
        assert!(!is_own_ack("meters/demo/m1/up", &key));
    }

    #[test]
    fn client_ids_round_trip() {
        let key = parse_client_id("demo.m-1").unwrap();
        assert_eq!(client_id(&key), "demo.m-1");
        assert!(parse_client_id("demo").is_err());
        assert!(parse_client_id("demo.a.b").is_err());
    }
}
