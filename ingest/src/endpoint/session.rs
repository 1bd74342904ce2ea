//! The endpoint's protocol decisions, as pure functions over a connection's state —
//! no sockets, no clock (CONVENTIONS §16; rumqttc's `state.rs` beside its event loop).
//!
//! - [`Authenticator::authenticate`]: who a CONNECT is. A meter logs in with client id
//!   `{tenant}.{meter}`, username = tenant id and the tenant's password — or, where the
//!   tenant has a `meter_secret`, the password derived for that meter
//!   (`meterflow_model::credentials`), so no meter can log in as another. An
//!   integration logs in with username `{tenant}:integration` and the tenant's
//!   `integration_password`. Tenants without credentials take anonymous meters
//!   (allowed on loopback only, see `config`). Last Wills are refused outright: meter
//!   topics keep no wills and nobody else may publish.
//! - [`Session::on_publish`]: a meter publishes only to its own uplink topic, QoS 0 or
//!   1, without retain. Anything else it publishes is still taken — as a dead letter of
//!   the meter that really sent it (`forbidden_topic`, `retained_publish`), durably,
//!   then PUBACKed — so a misconfigured device stops resending and the operator sees
//!   why; it never moves a window. QoS 2, and any publish by an integration, is a
//!   protocol violation here: the connection is closed.
//! - [`Session::on_subscribe`]: a meter may subscribe to its own ack topic and its own
//!   alert topic; an integration to its tenant's alert topics (`alerts/{t}/#`,
//!   `alerts/{t}/+`, `alerts/{t}/{meter}`). Every other filter is refused with SUBACK
//!   0x80 and counted.
//! - In flight: a connection holds at most `max_inflight` uplinks not yet answered;
//!   at the cap the runner stops reading the socket (TCP backpressure).

use meterflow_model::topic::{is_own_ack, is_own_uplink, parse_client_id};
use meterflow_model::{MeterKey, Reject, TenantId, ids::is_valid_id};
use rumqttc::QoS;

use super::wire::ConnectAnswer;

use crate::tenants::Tenants;

/// Who a connection is, once its CONNECT was accepted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    Meter(MeterKey),
    /// An integration of one tenant, subscribing to its alerts.
    Integration {
        tenant: TenantId,
        client_id: String,
    },
    /// The service's own readiness probe: may do nothing but connect.
    Probe,
}

/// Username suffix integrations log in with: `{tenant}:integration`.
pub const INTEGRATION_USER_SUFFIX: &str = ":integration";
/// Username of the readiness probe (not a valid tenant id, so never a tenant's).
pub const PROBE_USER: &str = "$meterflow-probe";

/// Why a CONNECT was refused (counted by reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// The client id is not `{tenant}.{meter}` of a configured tenant (or its registry).
    ClientId,
    /// Wrong username or password.
    Credentials,
    /// A Last Will was set.
    Will,
}

/// How a CONNECT ended, as counted in `meterflow_mqtt_connects_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectOutcome {
    Accepted,
    Refused(ConnectRefusal),
    /// Over `mqtt.max_connections`.
    Capacity,
    /// Over `mqtt.connection_rate`.
    Rate,
    /// No CONNECT (or TLS handshake) within the deadline.
    Timeout,
    /// A protocol level other than MQTT 3.1.1 or 5.
    ProtocolVersion,
    /// The TLS handshake failed or timed out.
    Tls,
    /// The first packet was not a decodable CONNECT.
    Malformed,
}

impl ConnectOutcome {
    /// Every outcome, in the order its counters are registered.
    pub const ALL: [ConnectOutcome; 10] = [
        ConnectOutcome::Accepted,
        ConnectOutcome::Refused(ConnectRefusal::ClientId),
        ConnectOutcome::Refused(ConnectRefusal::Credentials),
        ConnectOutcome::Refused(ConnectRefusal::Will),
        ConnectOutcome::Capacity,
        ConnectOutcome::Rate,
        ConnectOutcome::Timeout,
        ConnectOutcome::ProtocolVersion,
        ConnectOutcome::Tls,
        ConnectOutcome::Malformed,
    ];

    /// The metric label.
    pub const fn code(self) -> &'static str {
        match self {
            ConnectOutcome::Accepted => "accepted",
            ConnectOutcome::Refused(refusal) => refusal.code(),
            ConnectOutcome::Capacity => "capacity",
            ConnectOutcome::Rate => "rate",
            ConnectOutcome::Timeout => "timeout",
            ConnectOutcome::ProtocolVersion => "protocol_version",
            ConnectOutcome::Tls => "tls",
            ConnectOutcome::Malformed => "malformed",
        }
    }

    /// Its position in [`ConnectOutcome::ALL`].
    pub fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|o| *o == self)
            .expect("ALL lists every outcome")
    }
}

impl ConnectRefusal {
    /// Metric label and log reason.
    pub const fn code(self) -> &'static str {
        match self {
            ConnectRefusal::ClientId => "client_id",
            ConnectRefusal::Credentials => "credentials",
            ConnectRefusal::Will => "will",
        }
    }

    /// The CONNACK that says it.
    pub fn answer(self) -> ConnectAnswer {
        match self {
            ConnectRefusal::ClientId => ConnectAnswer::BadClientId,
            ConnectRefusal::Credentials => ConnectAnswer::BadCredentials,
            ConnectRefusal::Will => ConnectAnswer::NotAuthorized,
        }
    }
}

/// What a CONNECT carried, as far as authentication goes.
pub struct Login<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub has_will: bool,
}

/// Decides who a CONNECT is.
pub struct Authenticator {
    tenants: std::sync::Arc<Tenants>,
    /// The readiness probe's password: random per process, never logged.
    probe_secret: String,
}

impl Authenticator {
    pub fn new(tenants: std::sync::Arc<Tenants>, probe_secret: String) -> Self {
        Self {
            tenants,
            probe_secret,
        }
    }

    pub fn authenticate(&self, login: &Login<'_>) -> Result<Identity, ConnectRefusal> {
        if login.has_will {
            return Err(ConnectRefusal::Will);
        }
        let password = login.password.unwrap_or_default();
        if login.username == Some(PROBE_USER) {
            return if crate::tenants::constant_time_eq(password, self.probe_secret.as_bytes()) {
                Ok(Identity::Probe)
            } else {
                Err(ConnectRefusal::Credentials)
            };
        }
        if let Some(tenant) = login
            .username
            .and_then(|u| u.strip_suffix(INTEGRATION_USER_SUFFIX))
        {
            let tenant = self
                .tenants
                .get(tenant.as_bytes())
                .ok_or(ConnectRefusal::Credentials)?;
            if !is_valid_client_id(login.client_id) {
                return Err(ConnectRefusal::ClientId);
            }
            return if tenant.check_integration_password(password) {
                Ok(Identity::Integration {
                    tenant: tenant.id.clone(),
                    client_id: login.client_id.to_string(),
                })
            } else {
                Err(ConnectRefusal::Credentials)
            };
        }
        let key = parse_client_id(login.client_id).map_err(|_| ConnectRefusal::ClientId)?;
        let tenant = self
            .tenants
            .get(key.tenant.as_str().as_bytes())
            .ok_or(ConnectRefusal::ClientId)?;
        tenant
            .admits(&key.meter)
            .map_err(|_| ConnectRefusal::ClientId)?;
        if !tenant.requires_login() {
            return Ok(Identity::Meter(key));
        }
        if login.username != Some(key.tenant.as_str()) {
            return Err(ConnectRefusal::Credentials);
        }
        if tenant.check_meter_password(&key.meter, password) {
            Ok(Identity::Meter(key))
        } else {
            Err(ConnectRefusal::Credentials)
        }
    }
}

/// Client ids integrations may use: 1-64 of `[A-Za-z0-9_.-]`.
fn is_valid_client_id(client_id: &str) -> bool {
    !client_id.is_empty()
        && client_id.len() <= 64
        && client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// What to do with a PUBLISH.
#[derive(Debug, PartialEq, Eq)]
pub enum PublishVerdict {
    /// Hand it to the pipeline, with the dead-letter reason when it was refused.
    Take {
        meter: MeterKey,
        refused: Option<Reject>,
    },
    /// Close the connection: this publish breaks what the endpoint speaks.
    Close(ProtocolViolation),
}

/// Why a connection was closed for what it sent (counted by kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolViolation {
    /// QoS 2 publishes are not taken (meters publish at QoS 0 or 1).
    QoS2,
    /// Only meters publish.
    PublishNotAllowed,
    /// A second CONNECT, a packet a server never receives, or undecodable bytes.
    Malformed,
    /// A packet larger than the endpoint's limit.
    TooLarge,
    /// Silent for 1.5 × its keep-alive (or `mqtt.idle_timeout_s`).
    KeepAlive,
}

impl ProtocolViolation {
    /// Every kind, in the order its counters are registered.
    pub const ALL: [ProtocolViolation; 5] = [
        ProtocolViolation::QoS2,
        ProtocolViolation::PublishNotAllowed,
        ProtocolViolation::Malformed,
        ProtocolViolation::TooLarge,
        ProtocolViolation::KeepAlive,
    ];

    /// The metric label.
    pub const fn code(self) -> &'static str {
        match self {
            ProtocolViolation::QoS2 => "qos2",
            ProtocolViolation::PublishNotAllowed => "publish_not_allowed",
            ProtocolViolation::Malformed => "malformed",
            ProtocolViolation::TooLarge => "too_large",
            ProtocolViolation::KeepAlive => "keep_alive",
        }
    }
}

/// What a subscription filter grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// The meter's own ack topic.
    Acks,
    /// Alert events matching this filter (of the session's tenant).
    Alerts(AlertFilter),
}

/// Alert topics a subscription covers, within one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AlertFilter {
    /// `alerts/{t}/#` or `alerts/{t}/+`.
    Tenant(TenantId),
    /// `alerts/{t}/{meter}`.
    Meter(MeterKey),
}

impl AlertFilter {
    pub fn tenant(&self) -> &TenantId {
        match self {
            AlertFilter::Tenant(t) => t,
            AlertFilter::Meter(k) => &k.tenant,
        }
    }

    pub fn matches(&self, meter: &MeterKey) -> bool {
        match self {
            AlertFilter::Tenant(t) => &meter.tenant == t,
            AlertFilter::Meter(k) => k == meter,
        }
    }
}

/// Most subscription filters one connection may hold.
pub const MAX_SUBSCRIPTIONS: usize = 8;

/// One connection's state after its CONNECT was accepted.
#[derive(Debug)]
pub struct Session {
    pub identity: Identity,
    inflight: usize,
    max_inflight: usize,
    grants: Vec<(String, Grant)>,
}

impl Session {
    pub fn new(identity: Identity, max_inflight: usize) -> Self {
        Self {
            identity,
            inflight: 0,
            max_inflight: max_inflight.max(1),
            grants: Vec::new(),
        }
    }

    pub fn meter(&self) -> Option<&MeterKey> {
        match &self.identity {
            Identity::Meter(key) => Some(key),
            _ => None,
        }
    }

    /// Whether the runner may read another packet: false at the in-flight cap.
    pub fn may_read(&self) -> bool {
        self.inflight < self.max_inflight
    }

    /// Decides what to do with a PUBLISH; a taken one counts as in flight.
    pub fn on_publish(&mut self, topic: &str, qos: QoS, retain: bool) -> PublishVerdict {
        let Identity::Meter(meter) = &self.identity else {
            return PublishVerdict::Close(ProtocolViolation::PublishNotAllowed);
        };
        if qos == QoS::ExactlyOnce {
            return PublishVerdict::Close(ProtocolViolation::QoS2);
        }
        let refused = if !is_own_uplink(topic, meter) {
            Some(Reject::ForbiddenTopic)
        } else if retain {
            Some(Reject::RetainedPublish)
        } else {
            None
        };
        self.inflight += 1;
        PublishVerdict::Take {
            meter: meter.clone(),
            refused,
        }
    }

    /// An uplink of this connection was answered (or abandoned).
    pub fn on_answered(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// Decides each filter of a SUBSCRIBE: what it grants, `None` where refused.
    pub fn on_subscribe<'a>(
        &mut self,
        filters: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Option<Grant>> {
        filters
            .into_iter()
            .map(|filter| match self.grant_for(filter) {
                Some(grant)
                    if self.grants.len() < MAX_SUBSCRIPTIONS
                        || self.grants.iter().any(|(f, _)| f == filter) =>
                {
                    if !self.grants.iter().any(|(f, _)| f == filter) {
                        self.grants.push((filter.to_string(), grant.clone()));
                    }
                    Some(grant)
                }
                _ => None,
            })
            .collect()
    }

    /// Drops the filters of an UNSUBSCRIBE; returns what they had granted.
    pub fn on_unsubscribe<'a>(&mut self, filters: impl IntoIterator<Item = &'a str>) -> Vec<Grant> {
        let mut dropped = Vec::new();
        for filter in filters {
            if let Some(at) = self.grants.iter().position(|(f, _)| f == filter) {
                dropped.push(self.grants.swap_remove(at).1);
            }
        }
        dropped
    }

    /// Whether any remaining filter grants acks.
    pub fn has_ack_grant(&self) -> bool {
        self.grants.iter().any(|(_, g)| *g == Grant::Acks)
    }

    fn grant_for(&self, filter: &str) -> Option<Grant> {
        match &self.identity {
            Identity::Meter(meter) => {
                if is_own_ack(filter, meter) {
                    Some(Grant::Acks)
                } else if filter == meterflow_model::topic::alert_topic(meter) {
                    Some(Grant::Alerts(AlertFilter::Meter(meter.clone())))
                } else {
                    None
                }
            }
            Identity::Integration { tenant, .. } => {
                let rest = filter
                    .strip_prefix("alerts/")?
                    .strip_prefix(tenant.as_str())?;
                match rest.strip_prefix('/')? {
                    "#" | "+" => Some(Grant::Alerts(AlertFilter::Tenant(tenant.clone()))),
                    meter if is_valid_id(meter.as_bytes()) => {
                        let key = MeterKey::new(
                            tenant.clone(),
                            meterflow_model::MeterId::try_from(meter).ok()?,
                        );
                        Some(Grant::Alerts(AlertFilter::Meter(key)))
                    }
                    _ => None,
                }
            }
            Identity::Probe => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, TenantConfig};
    use std::sync::Arc;

    fn authenticator() -> Authenticator {
        let config = Config {
            tenants: vec![
                TenantConfig {
                    id: "acme".into(),
                    mqtt_password: Some("acme-password-0123".into()),
                    integration_password: Some("acme-integration-0123".into()),
                    ..TenantConfig::default()
                },
                TenantConfig {
                    id: "bravo".into(),
                    meter_secret: Some("bravo-meter-secret-0123456789".into()),
                    meters: Some(vec!["b1".into(), "b2".into()]),
                    ..TenantConfig::default()
                },
            ],
            ..Config::default()
        };
        Authenticator::new(
            Arc::new(Tenants::from_config(&config)),
            "probe-secret".into(),
        )
    }

    fn login<'a>(client_id: &'a str, username: &'a str, password: &'a str) -> Login<'a> {
        Login {
            client_id,
            username: Some(username),
            password: Some(password.as_bytes()),
            has_will: false,
        }
    }

    fn key(id: &str) -> MeterKey {
        parse_client_id(id).unwrap()
    }

    #[test]
    fn a_meter_logs_in_only_as_itself() {
        let auth = authenticator();
        assert_eq!(
            auth.authenticate(&login("acme.m1", "acme", "acme-password-0123")),
            Ok(Identity::Meter(key("acme.m1")))
        );
        assert_eq!(
            auth.authenticate(&login("acme.m1", "acme", "wrong")),
            Err(ConnectRefusal::Credentials)
        );
        assert_eq!(
            auth.authenticate(&login("bravo.b1", "acme", "acme-password-0123")),
            Err(ConnectRefusal::Credentials),
            "another tenant's password"
        );
        let b1 = meterflow_model::credentials::meter_password(
            "bravo-meter-secret-0123456789",
            &key("bravo.b1").tenant,
            &key("bravo.b1").meter,
        );
        assert_eq!(
            auth.authenticate(&login("bravo.b1", "bravo", &b1)),
            Ok(Identity::Meter(key("bravo.b1")))
        );
        assert_eq!(
            auth.authenticate(&login("bravo.b2", "bravo", &b1)),
            Err(ConnectRefusal::Credentials),
            "b1's derived password does not open b2"
        );
        assert_eq!(
            auth.authenticate(&login("bravo.b3", "bravo", &b1)),
            Err(ConnectRefusal::ClientId),
            "not in the registry"
        );
        for bad in ["acme", "acme.m+", "acme/m1", "nobody.m1", "", "acme.m1.x"] {
            assert_eq!(
                auth.authenticate(&login(bad, "acme", "acme-password-0123")),
                Err(ConnectRefusal::ClientId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn wills_are_refused_and_the_probe_needs_its_secret() {
        let auth = authenticator();
        let mut with_will = login("acme.m1", "acme", "acme-password-0123");
        with_will.has_will = true;
        assert_eq!(auth.authenticate(&with_will), Err(ConnectRefusal::Will));
        assert_eq!(
            auth.authenticate(&login("x", PROBE_USER, "probe-secret")),
            Ok(Identity::Probe)
        );
        assert_eq!(
            auth.authenticate(&login("x", PROBE_USER, "guess")),
            Err(ConnectRefusal::Credentials)
        );
    }

    #[test]
    fn integrations_log_in_with_their_own_credential() {
        let auth = authenticator();
        assert_eq!(
            auth.authenticate(&login("erp-1", "acme:integration", "acme-integration-0123")),
            Ok(Identity::Integration {
                tenant: key("acme.x").tenant,
                client_id: "erp-1".into()
            })
        );
        assert_eq!(
            auth.authenticate(&login("erp-1", "acme:integration", "acme-password-0123")),
            Err(ConnectRefusal::Credentials),
            "the meters' password is not the integration's"
        );
        assert_eq!(
            auth.authenticate(&login("erp-1", "bravo:integration", "")),
            Err(ConnectRefusal::Credentials),
            "a tenant without an integration password has no integrations"
        );
    }

    #[test]
    fn a_meter_publishes_only_to_its_own_uplink_topic() {
        let mut session = Session::new(Identity::Meter(key("acme.m1")), 2);
        let m1 = key("acme.m1");
        assert_eq!(
            session.on_publish("meters/acme/m1/up", QoS::AtLeastOnce, false),
            PublishVerdict::Take {
                meter: m1.clone(),
                refused: None
            }
        );
        for topic in [
            "meters/acme/m2/up",
            "meters/bravo/m1/up",
            "meters/acme/m1/ack",
            "alerts/acme/m1",
        ] {
            let mut session = Session::new(Identity::Meter(m1.clone()), 2);
            assert_eq!(
                session.on_publish(topic, QoS::AtMostOnce, false),
                PublishVerdict::Take {
                    meter: m1.clone(),
                    refused: Some(Reject::ForbiddenTopic)
                },
                "{topic}"
            );
        }
        assert_eq!(
            session.on_publish("meters/acme/m1/up", QoS::AtLeastOnce, true),
            PublishVerdict::Take {
                meter: m1.clone(),
                refused: Some(Reject::RetainedPublish)
            }
        );
        assert!(!session.may_read(), "two in flight is the cap");
        session.on_answered();
        assert!(session.may_read());
        assert_eq!(
            session.on_publish("meters/acme/m1/up", QoS::ExactlyOnce, false),
            PublishVerdict::Close(ProtocolViolation::QoS2)
        );
        let mut integration = Session::new(
            Identity::Integration {
                tenant: m1.tenant.clone(),
                client_id: "erp".into(),
            },
            2,
        );
        assert_eq!(
            integration.on_publish("meters/acme/m1/up", QoS::AtLeastOnce, false),
            PublishVerdict::Close(ProtocolViolation::PublishNotAllowed)
        );
    }

    #[test]
    fn subscriptions_are_limited_to_what_is_ones_own() {
        let m1 = key("acme.m1");
        let mut session = Session::new(Identity::Meter(m1.clone()), 2);
        let granted = session.on_subscribe([
            "meters/acme/m1/ack",
            "alerts/acme/m1",
            "#",
            "meters/#",
            "meters/+/+/ack",
            "meters/acme/m2/ack",
            "alerts/acme/#",
            "alerts/bravo/m1",
            "$SYS/#",
        ]);
        let codes: Vec<bool> = granted.iter().map(Option::is_some).collect();
        assert_eq!(
            codes,
            [true, true, false, false, false, false, false, false, false]
        );
        assert!(session.has_ack_grant());
        assert_eq!(
            session.on_unsubscribe(["meters/acme/m1/ack"]),
            vec![Grant::Acks]
        );
        assert!(!session.has_ack_grant());

        let mut integration = Session::new(
            Identity::Integration {
                tenant: m1.tenant.clone(),
                client_id: "erp".into(),
            },
            2,
        );
        let granted = integration.on_subscribe([
            "alerts/acme/#",
            "alerts/acme/m7",
            "alerts/bravo/#",
            "alerts/#",
            "meters/acme/m1/ack",
            "meters/acme/m1/up",
        ]);
        let codes: Vec<bool> = granted.iter().map(Option::is_some).collect();
        assert_eq!(codes, [true, true, false, false, false, false]);
    }

    #[test]
    fn metric_labels_are_unique_and_every_outcome_is_listed() {
        let codes: std::collections::HashSet<_> =
            ConnectOutcome::ALL.iter().map(|o| o.code()).collect();
        assert_eq!(codes.len(), ConnectOutcome::ALL.len());
        for (i, outcome) in ConnectOutcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index(), i);
        }
        let kinds: std::collections::HashSet<_> =
            ProtocolViolation::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(kinds.len(), ProtocolViolation::ALL.len());
    }

    #[test]
    fn subscriptions_per_connection_are_capped() {
        let mut integration = Session::new(
            Identity::Integration {
                tenant: key("acme.x").tenant,
                client_id: "erp".into(),
            },
            2,
        );
        let filters: Vec<String> = (0..MAX_SUBSCRIPTIONS + 3)
            .map(|i| format!("alerts/acme/m{i}"))
            .collect();
        let granted = integration.on_subscribe(filters.iter().map(String::as_str));
        assert_eq!(
            granted.iter().filter(|g| g.is_some()).count(),
            MAX_SUBSCRIPTIONS
        );
        let again = integration.on_subscribe([filters[0].as_str()]);
        assert!(
            again[0].is_some(),
            "re-subscribing to a held filter is fine"
        );
    }
}
