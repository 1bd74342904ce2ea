//! What a simulated fleet does: which broker, which meters, how many messages of how
//! many readings, how fast, and how patiently.
//!
//! Invariants after [`SimConfig::validate`] succeeds:
//! - `tenant` and every meter id `m{index:06}` are valid ids (DESIGN §3);
//! - `1 ≤ readings_per_message ≤ 256` (the wire limit) and every count is ≥ 1;
//! - the whole reading span fits in `i64` epoch milliseconds after 2000-01-01.
//!
//! [`SimConfig::start_ts_ms`] left unset is resolved once against the wall clock by
//! [`SimConfig::resolved`]; the ground truth ([`crate::meter_messages`]) is a pure
//! function of the *resolved* config, so callers that compare stored readings must
//! resolve first (or read [`crate::Report::start_ts_ms`]).

use std::time::Duration;

use meterflow_model::limits::{DEFAULT_MAX_READINGS, MIN_PLAUSIBLE_TS_MS};
use std::collections::BTreeMap;

use meterflow_model::ids::is_valid_id;
use meterflow_model::{MeterId, MeterKey, MeterSize, TenantId, credentials};
use serde::{Deserialize, Serialize};

use crate::error::SimError;
use crate::scenario::ScenarioRates;

/// Broker of a laptop setup (DESIGN §8: MQTT on 127.0.0.1:1883).
pub const DEFAULT_MQTT: &str = "127.0.0.1:1883";
/// The built-in tenant that accepts anonymous meters on loopback (DESIGN §8).
pub const DEFAULT_TENANT: &str = "demo";
/// A fleet small enough to start instantly, large enough to show concurrency.
pub const DEFAULT_METERS: usize = 10;
pub const DEFAULT_MESSAGES_PER_METER: u64 = 10;
/// An hourly burst of 15-minute reads, the most common AMI pattern (DESIGN §3).
pub const DEFAULT_READINGS_PER_MESSAGE: usize = 4;
/// Unacked messages a meter keeps in flight: enough to hide a batching linger of a
/// few tens of ms at the service without letting one meter hog a shard.
pub const DEFAULT_WINDOW: usize = 8;
/// Resend after this long without an ack. Longer than any healthy commit (batches
/// seal within ~100 ms) so a slow-but-alive service is not flooded with duplicates.
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 5_000;
/// Overall deadline: long enough to ride out a service restart of tens of seconds.
pub const DEFAULT_TIMEOUT_S: u64 = 120;
/// 15 minutes: the usual AMI interval.
pub const DEFAULT_INTERVAL_MS: i64 = 15 * 60 * 1000;
/// Connection attempts in flight at once across the fleet: 1,000 meters connect in
/// well under a second on loopback without a SYN/CONNECT stampede on the broker.
pub const DEFAULT_CONNECT_CONCURRENCY: usize = 64;
pub const DEFAULT_SEED: u64 = 42;

/// Which key a meter signs its uplinks with (see `meterflow_model::mac`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MacKeys {
    /// Every meter uses the UTF-8 bytes of this secret.
    Shared(String),
    /// Meter `m` uses the UTF-8 bytes of `"{secret}.{m}"`, so each meter has its own
    /// key without a key file.
    PerMeter(String),
}

impl MacKeys {
    /// The key `meter` signs with.
    pub fn key_for(&self, meter: &str) -> Vec<u8> {
        match self {
            MacKeys::Shared(secret) => secret.as_bytes().to_vec(),
            MacKeys::PerMeter(secret) => format!("{secret}.{meter}").into_bytes(),
        }
    }
}

/// A fleet run. Every field has a default that works against a local service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Broker address, `host:port` (`[v6]:port` for IPv6 literals).
    pub mqtt: String,
    pub tenant: String,
    /// Meters in the fleet; each is one MQTT connection.
    pub meters: usize,
    /// Index of the first meter: meters are `m{first_meter:06}` onwards, so several
    /// simulator processes can split one fleet.
    pub first_meter: usize,
    pub messages_per_meter: u64,
    /// Readings per message, 1..=256.
    pub readings_per_message: usize,
    /// New messages per second across the fleet, on a fixed schedule (open loop:
    /// a late fleet catches up). `None`: as fast as each meter's window allows.
    pub rate: Option<f64>,
    /// Most unacked messages per meter; a meter with a full window waits for acks.
    pub window: usize,
    /// Seed of the ground truth: same seed, same messages.
    pub seed: u64,
    /// Binary payloads (`0x01` + bincode) instead of JSON.
    pub binary: bool,
    /// Resend a message unacked for this long.
    pub ack_timeout_ms: u64,
    /// The run stops by itself after this long, acked or not.
    pub timeout_s: u64,
    /// Timestamp of the first reading, epoch ms. `None`: resolved at start to
    /// `now - messages_per_meter × readings_per_message × interval_ms`, rounded down
    /// to the interval, so no reading is in the future (the service refuses readings
    /// more than 5 minutes ahead of its clock).
    pub start_ts_ms: Option<i64>,
    /// Time between consecutive readings of a meter.
    pub interval_ms: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The tenant's `meter_secret`: every meter logs in with username = tenant id and
    /// its own password derived from it (`meterflow_model::credentials`). Replaces
    /// `username`/`password`.
    pub meter_secret: Option<String>,
    /// Subscribe to each meter's ack topic and settle messages by its cumulative
    /// watermark. `false`: a meter relies on PUBACKs alone, as a standard MQTT device
    /// does (needs `puback_durable`).
    pub ack_topic: bool,
    /// A QoS 1 PUBACK means the uplink is durable (meterflow's endpoint), so it
    /// settles the message as the ack topic does — whichever comes first. `false`: a
    /// PUBACK only means "received by the broker" (a plain broker such as mosquitto
    /// with something else acking on the ack topic), and only the ack topic settles.
    pub puback_durable: bool,
    /// Sign uplinks with a MAC; `None` sends them unsigned.
    pub mac_keys: Option<MacKeys>,
    /// Connection attempts in flight at once across the fleet (the connect ramp).
    pub connect_concurrency: usize,
    /// First connections per second across the fleet (the ramp rate); `None`: as
    /// fast as `connect_concurrency` allows. Reconnects are not paced.
    pub connect_rate: Option<f64>,
    /// Connect the whole fleet before any meter sends, so the send phase measures a
    /// fleet that is all online (as in the field) rather than a wave of meters that
    /// finish while others are still connecting. Rates in the report cover the send
    /// phase; the connect phase is `Report::connect_s`.
    pub connect_first: bool,
    /// District metered areas the meters are spread over (uniformly); empty: none.
    pub districts: Vec<String>,
    /// Relative weights of meter sizes; empty: every meter is a household DN15.
    pub sizes: BTreeMap<MeterSize, u32>,
    /// Injected scenarios and faults (all off by default).
    pub scenarios: ScenarioRates,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            mqtt: DEFAULT_MQTT.to_owned(),
            tenant: DEFAULT_TENANT.to_owned(),
            meters: DEFAULT_METERS,
            first_meter: 0,
            messages_per_meter: DEFAULT_MESSAGES_PER_METER,
            readings_per_message: DEFAULT_READINGS_PER_MESSAGE,
            rate: None,
            window: DEFAULT_WINDOW,
            seed: DEFAULT_SEED,
            binary: false,
            ack_timeout_ms: DEFAULT_ACK_TIMEOUT_MS,
            timeout_s: DEFAULT_TIMEOUT_S,
            start_ts_ms: None,
            interval_ms: DEFAULT_INTERVAL_MS,
            username: None,
            password: None,
            meter_secret: None,
            ack_topic: true,
            puback_durable: true,
            mac_keys: None,
            connect_concurrency: DEFAULT_CONNECT_CONCURRENCY,
            connect_rate: None,
            connect_first: true,
            districts: Vec::new(),
            sizes: BTreeMap::new(),
            scenarios: ScenarioRates::default(),
        }
    }
}

/// Largest window: rumqttc counts in-flight publishes in a `u16` and the simulator
/// asks it for twice the window (resends overlap originals).
const MAX_WINDOW: usize = (u16::MAX as usize - 8) / 2;

impl SimConfig {
    /// Every problem with this config at once, or `Ok`.
    pub fn validate(&self) -> Result<(), SimError> {
        let mut problems = Vec::new();
        if let Err(problem) = parse_broker_addr(&self.mqtt) {
            problems.push(problem);
        }
        if TenantId::try_from(self.tenant.as_str()).is_err() {
            problems.push(format!(
                "tenant {:?} is not a valid id: use 1-64 characters of [A-Za-z0-9_-]",
                self.tenant
            ));
        }
        if self.meters == 0 {
            problems.push("meters must be at least 1".to_owned());
        }
        match self.first_meter.checked_add(self.meters) {
            Some(end) if MeterId::try_from(meter_id_string(end.saturating_sub(1))).is_ok() => {}
            _ => problems.push("first_meter + meters is too large for a meter id".to_owned()),
        }
        if self.messages_per_meter == 0 {
            problems.push("messages_per_meter must be at least 1".to_owned());
        }
        if !(1..=DEFAULT_MAX_READINGS).contains(&self.readings_per_message) {
            problems.push(format!(
                "readings_per_message must be 1..={DEFAULT_MAX_READINGS} (the wire limit), got {}",
                self.readings_per_message
            ));
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            problems.push(format!(
                "rate must be a positive number of messages per second, got {rate}"
            ));
        }
        if !(1..=MAX_WINDOW).contains(&self.window) {
            problems.push(format!(
                "window must be 1..={MAX_WINDOW}, got {}",
                self.window
            ));
        }
        if self.ack_timeout_ms == 0 {
            problems.push("ack_timeout_ms must be at least 1".to_owned());
        }
        if self.timeout_s == 0 {
            problems.push("timeout_s must be at least 1".to_owned());
        }
        if self.interval_ms <= 0 {
            problems.push(format!(
                "interval_ms must be positive, got {}",
                self.interval_ms
            ));
        } else if self.span_ms().is_none() {
            problems.push(
                "messages_per_meter × readings_per_message × interval_ms overflows".to_owned(),
            );
        }
        if let Some(start) = self.start_ts_ms {
            if start < MIN_PLAUSIBLE_TS_MS {
                problems.push(format!(
                    "start_ts_ms {start} is before 2000-01-01; the service rejects such readings"
                ));
            } else if self
                .span_ms()
                .is_some_and(|span| start.checked_add(span).is_none())
            {
                problems.push("start_ts_ms + the reading span overflows".to_owned());
            }
        }
        if self.username.is_some() != self.password.is_some() {
            problems.push("username and password go together: set both or neither".to_owned());
        }
        match &self.meter_secret {
            Some(_) if self.username.is_some() || self.password.is_some() => problems.push(
                "meter_secret replaces username/password (meters log in as the tenant with \
                 their derived password): set one or the other"
                    .to_owned(),
            ),
            Some(secret) if secret.is_empty() => {
                problems.push("meter_secret must not be empty".to_owned());
            }
            _ => {}
        }
        if !self.ack_topic && !self.puback_durable {
            problems.push(
                "without the ack topic only a durable PUBACK can settle a message: \
                 ack_topic = false needs puback_durable = true"
                    .to_owned(),
            );
        }
        if self.connect_concurrency == 0 {
            problems.push("connect_concurrency must be at least 1".to_owned());
        }
        if let Some(rate) = self.connect_rate
            && !(rate.is_finite() && rate > 0.0)
        {
            problems.push(format!(
                "connect_rate must be a positive number of connections per second, got {rate}"
            ));
        }
        for district in &self.districts {
            if !is_valid_id(district.as_bytes()) {
                problems.push(format!(
                    "district {district:?} is not a valid id: use 1-64 characters of [A-Za-z0-9_-]"
                ));
            }
        }
        problems.extend(self.scenarios.problems());
        if self.scenarios.out_of_order > 0.0 && self.window < 2 {
            problems.push(
                "out_of_order needs a window of at least 2 (a held message waits in it)".to_owned(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SimError::InvalidConfig(problems))
        }
    }

    /// Total milliseconds covered by one meter's readings, `None` on overflow.
    fn span_ms(&self) -> Option<i64> {
        let readings = i64::try_from(self.messages_per_meter)
            .ok()?
            .checked_mul(i64::try_from(self.readings_per_message).ok()?)?;
        readings.checked_mul(self.interval_ms)
    }

    /// This config with `start_ts_ms` fixed: unchanged when already set, else
    /// `now_ms - span` rounded down to a multiple of `interval_ms`, so the newest
    /// reading is at least one interval before `now_ms`.
    pub fn resolved(mut self, now_ms: i64) -> SimConfig {
        if self.start_ts_ms.is_none() {
            let span = self.span_ms().unwrap_or(0);
            let start = now_ms.saturating_sub(span);
            let interval = self.interval_ms.max(1);
            self.start_ts_ms = Some(start - start.rem_euclid(interval));
        }
        self
    }

    /// `resolved` against the system clock.
    pub fn resolved_now(self) -> SimConfig {
        self.resolved(now_epoch_ms())
    }

    /// Total messages the fleet sends: `messages_per_meter` per meter, less what
    /// comms-loss meters never send (their count does not depend on the start).
    pub fn total_messages(&self) -> u64 {
        self.meter_indices()
            .map(|index| crate::generator::meter_messages(self, index).remaining())
            .sum()
    }

    /// Absolute indices of the fleet's meters.
    pub fn meter_indices(&self) -> std::ops::Range<usize> {
        self.first_meter..self.first_meter.saturating_add(self.meters)
    }

    /// The key of meter `index` (`{tenant}` / `m{index:06}`).
    pub fn meter_key(&self, index: usize) -> Result<MeterKey, SimError> {
        let tenant = TenantId::try_from(self.tenant.as_str())
            .map_err(|_| SimError::InvalidConfig(vec![format!("bad tenant {:?}", self.tenant)]))?;
        let meter = MeterId::try_from(meter_id_string(index))
            .map_err(|_| SimError::InvalidConfig(vec![format!("bad meter index {index}")]))?;
        Ok(MeterKey::new(tenant, meter))
    }

    /// The MQTT login of meter `key`: the tenant id and the meter's derived password
    /// with a `meter_secret`, else `username`/`password` if set.
    pub fn login(&self, key: &MeterKey) -> Option<(String, String)> {
        match (&self.meter_secret, &self.username, &self.password) {
            (Some(secret), _, _) => Some((
                key.tenant.to_string(),
                credentials::meter_password(secret, &key.tenant, &key.meter),
            )),
            (None, Some(user), Some(password)) => Some((user.clone(), password.clone())),
            _ => None,
        }
    }

    pub(crate) fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }
}

/// The id of meter `index`: `m` and the index, zero-padded to six digits.
pub fn meter_id_string(index: usize) -> String {
    format!("m{index:06}")
}

/// Splits `host:port` (or `[v6]:port`) into its parts.
pub(crate) fn parse_broker_addr(addr: &str) -> Result<(String, u16), String> {
    let bad = || format!("mqtt {addr:?} is not host:port (e.g. 127.0.0.1:1883)");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// The wall clock as epoch milliseconds.
pub fn now_epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        SimConfig::default().validate().unwrap();
        SimConfig::default()
            .resolved(1_763_800_000_000)
            .validate()
            .unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = SimConfig {
            mqtt: "nope".into(),
            tenant: "bad tenant".into(),
            meters: 0,
            readings_per_message: 257,
            window: 0,
            rate: Some(-1.0),
            username: Some("u".into()),
            ..SimConfig::default()
        };
        let Err(SimError::InvalidConfig(problems)) = config.validate() else {
            panic!("expected an invalid config");
        };
        assert_eq!(problems.len(), 7, "{problems:#?}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<SimConfig>(r#"{"meterz": 3}"#).is_err());
        let parsed: SimConfig =
            serde_json::from_str(r#"{"meters": 3, "mac_keys": {"per_meter": "s"}}"#).unwrap();
        assert_eq!(parsed.meters, 3);
        assert_eq!(parsed.mac_keys, Some(MacKeys::PerMeter("s".into())));
    }

    #[test]
    fn start_is_on_the_interval_grid_and_in_the_past() {
        let now = 1_763_800_123_456;
        let config = SimConfig::default().resolved(now);
        let start = config.start_ts_ms.unwrap();
        assert_eq!(start % DEFAULT_INTERVAL_MS, 0);
        let last = start + (config.span_ms().unwrap() - DEFAULT_INTERVAL_MS);
        assert!(last < now);
        // An explicit start is kept.
        let fixed = SimConfig {
            start_ts_ms: Some(1_700_000_000_000),
            ..SimConfig::default()
        };
        assert_eq!(fixed.resolved(now).start_ts_ms, Some(1_700_000_000_000));
    }

    #[test]
    fn broker_addresses() {
        assert_eq!(
            parse_broker_addr("127.0.0.1:1883"),
            Ok(("127.0.0.1".into(), 1883))
        );
        assert_eq!(parse_broker_addr("[::1]:1883"), Ok(("::1".into(), 1883)));
        assert!(parse_broker_addr("host").is_err());
        assert!(parse_broker_addr(":1883").is_err());
        assert!(parse_broker_addr("h:0").is_err());
    }

    #[test]
    fn a_meter_secret_gives_each_meter_its_own_login() {
        let config = SimConfig {
            tenant: "acme".into(),
            meter_secret: Some("correct-horse-battery-staple".into()),
            ..SimConfig::default()
        };
        config.validate().unwrap();
        let (user, password) = config.login(&config.meter_key(1).unwrap()).unwrap();
        assert_eq!(user, "acme");
        // The model's known answer: printf '%s' 'acme.m000001' | openssl dgst -sha256 -hmac …
        assert_eq!(
            password,
            "db8c56dcdc219c1e367a0d2fc41188c65562e7a94f37ef023684e8bc92564b1b"
        );
        let (_, other) = config.login(&config.meter_key(2).unwrap()).unwrap();
        assert_ne!(password, other);

        let shared = SimConfig {
            username: Some("u".into()),
            password: Some("p".into()),
            ..SimConfig::default()
        };
        let key = shared.meter_key(1).unwrap();
        assert_eq!(shared.login(&key), Some(("u".into(), "p".into())));
        assert_eq!(SimConfig::default().login(&key), None);

        let both = SimConfig {
            meter_secret: Some("s".into()),
            ..shared
        };
        assert!(both.validate().is_err());
        let empty = SimConfig {
            meter_secret: Some(String::new()),
            ..SimConfig::default()
        };
        assert!(empty.validate().is_err());
    }

    #[test]
    fn something_must_be_able_to_settle_a_message() {
        let pubacks_only = SimConfig {
            ack_topic: false,
            ..SimConfig::default()
        };
        pubacks_only.validate().unwrap();
        let neither = SimConfig {
            puback_durable: false,
            ..pubacks_only
        };
        assert!(neither.validate().is_err());
    }

    #[test]
    fn meter_keys_are_derived_per_meter() {
        assert_eq!(MacKeys::Shared("s".into()).key_for("m000007"), b"s");
        assert_eq!(
            MacKeys::PerMeter("s".into()).key_for("m000007"),
            b"s.m000007"
        );
        assert_eq!(meter_id_string(7), "m000007");
        assert_eq!(meter_id_string(1_234_567), "m1234567");
    }
}
