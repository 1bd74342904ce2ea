//! The tenants in force, in the form the hot path needs: lookups by id, meter keys
//! decoded once, and the per-tenant rules (registry, MAC requirement, API token).
//! Built from [`crate::config::Config`] at start and shared read-only.

use std::collections::{HashMap, HashSet};

use meterflow_model::{MeterId, MeterKey, Reject, TenantId, Uplink, credentials, mac};
use subtle::ConstantTimeEq;

use crate::config::Config;

pub struct Tenant {
    pub id: TenantId,
    /// The password every meter of the tenant logs in with (the simpler, weaker mode).
    mqtt_password: Option<String>,
    /// The secret each meter's own password is derived from (`model::credentials`).
    meter_secret: Option<String>,
    /// The password integrations (alert subscribers) log in with.
    integration_password: Option<String>,
    pub api_token: Option<String>,
    meter_keys: HashMap<MeterId, Vec<u8>>,
    require_mac: bool,
    registry: Option<HashSet<MeterId>>,
}

impl Tenant {
    /// Whether `meter` may send for this tenant.
    pub fn admits(&self, meter: &MeterId) -> Result<(), Reject> {
        match &self.registry {
            Some(known) if !known.contains(meter) => Err(Reject::UnknownMeter),
            _ => Ok(()),
        }
    }

    /// Whether the tenant's meters must log in (it has meter credentials of some kind).
    pub fn requires_login(&self) -> bool {
        self.mqtt_password.is_some() || self.meter_secret.is_some()
    }

    /// Checks a meter's MQTT password: the one derived for it from the tenant's
    /// `meter_secret`, or else the tenant-wide password.
    pub fn check_meter_password(&self, meter: &MeterId, password: &[u8]) -> bool {
        match (&self.meter_secret, &self.mqtt_password) {
            (Some(secret), _) => {
                credentials::verify_meter_password(secret, &self.id, meter, password)
            }
            (None, Some(expected)) => constant_time_eq(expected.as_bytes(), password),
            (None, None) => false,
        }
    }

    /// Checks an integration's password.
    pub fn check_integration_password(&self, password: &[u8]) -> bool {
        self.integration_password
            .as_ref()
            .is_some_and(|expected| constant_time_eq(expected.as_bytes(), password))
    }

    /// Checks the uplink's MAC where the meter has a key or the tenant requires one.
    pub fn check_mac(&self, meter: &MeterId, uplink: &Uplink) -> Result<(), Reject> {
        match self.meter_keys.get(meter) {
            Some(key) if mac::verify(key, uplink) => Ok(()),
            Some(_) => Err(Reject::BadMac),
            None if self.require_mac => Err(Reject::BadMac),
            None => Ok(()),
        }
    }
}

/// Every configured tenant by id.
pub struct Tenants {
    by_id: HashMap<Box<[u8]>, Tenant>,
}

impl Tenants {
    /// Builds the registry from a validated configuration.
    pub fn from_config(config: &Config) -> Tenants {
        let by_id = config
            .effective_tenants()
            .into_iter()
            .filter_map(|t| {
                let id = TenantId::try_from(t.id.as_str()).ok()?;
                let meter_keys = t
                    .meter_keys
                    .iter()
                    .filter_map(|(m, k)| {
                        Some((MeterId::try_from(m.as_str()).ok()?, hex::decode(k).ok()?))
                    })
                    .collect();
                let registry = t.meters.as_ref().map(|ms| {
                    ms.iter()
                        .filter_map(|m| MeterId::try_from(m.as_str()).ok())
                        .collect()
                });
                let tenant = Tenant {
                    id,
                    mqtt_password: t.mqtt_password.clone(),
                    meter_secret: t.meter_secret.clone(),
                    integration_password: t.integration_password.clone(),
                    api_token: t.api_token.clone(),
                    meter_keys,
                    require_mac: t.require_mac,
                    registry,
                };
                Some((t.id.into_bytes().into_boxed_slice(), tenant))
            })
            .collect();
        Tenants { by_id }
    }

    /// Looks a tenant up by the raw id from a topic or URL.
    pub fn get(&self, raw_id: &[u8]) -> Option<&Tenant> {
        self.by_id.get(raw_id)
    }

    /// `meter`'s tenant, when it is configured and admits the meter.
    pub fn admit(&self, meter: &MeterKey) -> Result<&Tenant, Reject> {
        let tenant = self
            .get(meter.tenant.as_str().as_bytes())
            .ok_or(Reject::UnknownTenant)?;
        tenant.admits(&meter.meter)?;
        Ok(tenant)
    }
}

/// Compares secrets without leaking where they differ through timing (`subtle`,
/// the constant-time primitive under `hmac`; only the length can show).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TenantConfig;

    fn tenants() -> Tenants {
        let config = Config {
            tenants: vec![
                TenantConfig {
                    id: "acme".into(),
                    mqtt_password: Some("s3cret-s3cret-s3cret".into()),
                    meters: Some(vec!["m1".into()]),
                    ..TenantConfig::default()
                },
                TenantConfig {
                    id: "bravo".into(),
                    meter_secret: Some("bravo-secret-bravo-secret".into()),
                    mqtt_password: Some("ignored-when-a-secret-is-set".into()),
                    ..TenantConfig::default()
                },
            ],
            ..Config::default()
        };
        Tenants::from_config(&config)
    }

    #[test]
    fn meter_passwords_follow_the_tenant_mode() {
        let t = tenants();
        let acme = t.get(b"acme").unwrap();
        let m1 = MeterId::try_from("m1").unwrap();
        assert!(acme.requires_login());
        assert!(acme.check_meter_password(&m1, b"s3cret-s3cret-s3cret"));
        assert!(!acme.check_meter_password(&m1, b"s3cret"));
        assert_eq!(
            acme.admits(&MeterId::try_from("m2").unwrap()),
            Err(Reject::UnknownMeter)
        );
        let bravo = t.get(b"bravo").unwrap();
        let derived = credentials::meter_password("bravo-secret-bravo-secret", &bravo.id, &m1);
        assert!(bravo.check_meter_password(&m1, derived.as_bytes()));
        assert!(
            !bravo.check_meter_password(&m1, b"ignored-when-a-secret-is-set"),
            "with a meter_secret the tenant-wide password opens nothing"
        );
        assert!(!bravo.check_integration_password(b""));
    }
}
