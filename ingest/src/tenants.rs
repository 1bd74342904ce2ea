//! The tenants in force, in the form the hot path needs: lookups by id, meter keys
//! decoded once, and the per-tenant rules (registry, MAC requirement, API token).
//! Built from [`crate::config::Config`] at start and shared read-only.

use std::collections::{HashMap, HashSet};

use meterflow_model::{MeterId, Reject, TenantId, Uplink, mac};

use crate::config::Config;

pub struct Tenant {
    pub id: TenantId,
    pub mqtt_password: Option<String>,
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

    /// Checks MQTT credentials: client id `{tenant}.{meter}`, username = tenant id,
    /// password = the tenant's. Client ids that are not of that shape (including any
    /// with `+ # / $`, which break rumqttd) are refused.
    pub fn check_login(&self, client_id: &str, username: &str, password: &str) -> bool {
        let Ok(key) = meterflow_model::topic::parse_client_id(client_id) else {
            return false;
        };
        let Some(tenant) = self.get(key.tenant.as_str().as_bytes()) else {
            return false;
        };
        if tenant.admits(&key.meter).is_err() || username != key.tenant.as_str() {
            return false;
        }
        match &tenant.mqtt_password {
            Some(expected) => constant_time_eq(expected.as_bytes(), password.as_bytes()),
            None => false,
        }
    }
}

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TenantConfig;

    fn tenants() -> Tenants {
        let config = Config {
            tenants: vec![TenantConfig {
                id: "acme".into(),
                mqtt_password: Some("s3cret".into()),
                meters: Some(vec!["m1".into()]),
                ..TenantConfig::default()
            }],
            ..Config::default()
        };
        Tenants::from_config(&config)
    }

    #[test]
    fn login_needs_matching_client_id_username_and_password() {
        let t = tenants();
        assert!(t.check_login("acme.m1", "acme", "s3cret"));
        assert!(!t.check_login("acme.m1", "acme", "wrong"));
        assert!(!t.check_login("acme.m1", "other", "s3cret"));
        assert!(
            !t.check_login("acme.m2", "acme", "s3cret"),
            "not in the registry"
        );
        assert!(!t.check_login("acme.m+", "acme", "s3cret"));
        assert!(!t.check_login("acme/m1", "acme", "s3cret"));
    }
}
