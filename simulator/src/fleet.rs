//! A fleet file: one run over several tenants, each with its own meters, districts,
//! size mix, credentials and scenario rates, sharing the fleet-wide settings of the
//! `[fleet]` table (any [`SimConfig`] field). [`FleetFile::parts`] turns it into the
//! per-tenant configs [`crate::run_fleet`] runs; [`FleetFile::registry_toml`] writes
//! the meterflow configuration that knows these tenants, sizes and districts.
//!
//! ```toml
//! [fleet]
//! messages_per_meter = 96          # a day of 15-minute reads, hourly bursts
//! readings_per_message = 4
//! rate = 2000.0                    # msgs/s across the whole fleet
//! scenarios = { leak = 1.0, burst = 0.2, duplicates = 0.5 }
//!
//! [[tenants]]
//! tenant = "northwater"
//! meters = 3000
//! districts = ["n-01", "n-02", "n-03"]
//! sizes = { dn15 = 92, dn20 = 6, dn40 = 2 }
//! password = "…"                   # MQTT username = tenant id
//!
//! [[tenants]]
//! tenant = "southwater"
//! meters = 1000
//! meter_secret = "…"               # per-meter passwords derived from it
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use meterflow_model::MeterSize;
use serde::{Deserialize, Serialize};

use crate::config::{MacKeys, SimConfig, meter_id_string};
use crate::error::SimError;
use crate::generator::meter_messages;
use crate::scenario::ScenarioRates;

/// One tenant of a fleet file; unset fields come from `[fleet]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFleet {
    pub tenant: String,
    pub meters: usize,
    #[serde(default)]
    pub first_meter: usize,
    pub districts: Option<Vec<String>>,
    pub sizes: Option<BTreeMap<MeterSize, u32>>,
    /// MQTT password of the tenant (the username is the tenant id).
    pub password: Option<String>,
    /// The tenant's `meter_secret`: each meter logs in as the tenant with its own
    /// derived password (instead of `password`).
    pub meter_secret: Option<String>,
    pub mac_keys: Option<MacKeys>,
    pub scenarios: Option<ScenarioRates>,
}

/// A fleet file (TOML).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// Fleet-wide settings and defaults for every tenant.
    #[serde(default)]
    pub fleet: SimConfig,
    /// The tenants; none: the `[fleet]` table alone is the fleet.
    #[serde(default)]
    pub tenants: Vec<TenantFleet>,
}

impl FleetFile {
    pub fn load(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            SimError::InvalidConfig(vec![format!("cannot read {}: {error}", path.display())])
        })?;
        toml::from_str(&text)
            .map_err(|error| SimError::InvalidConfig(vec![format!("{}: {error}", path.display())]))
    }

    /// One config per tenant, each validated; every problem at once.
    pub fn parts(&self) -> Result<Vec<SimConfig>, SimError> {
        let parts: Vec<SimConfig> = if self.tenants.is_empty() {
            vec![self.fleet.clone()]
        } else {
            self.tenants.iter().map(|t| self.part(t)).collect()
        };
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for part in &parts {
            if !seen.insert(part.tenant.as_str()) {
                problems.push(format!("tenant {:?} is listed twice", part.tenant));
            }
            if let Err(SimError::InvalidConfig(more)) = part.validate() {
                problems.extend(more.into_iter().map(|p| format!("{}: {p}", part.tenant)));
            }
        }
        if problems.is_empty() {
            Ok(parts)
        } else {
            Err(SimError::InvalidConfig(problems))
        }
    }

    fn part(&self, tenant: &TenantFleet) -> SimConfig {
        let mut config = self.fleet.clone();
        config.tenant.clone_from(&tenant.tenant);
        config.meters = tenant.meters;
        config.first_meter = tenant.first_meter;
        if let Some(districts) = &tenant.districts {
            config.districts.clone_from(districts);
        }
        if let Some(sizes) = &tenant.sizes {
            config.sizes.clone_from(sizes);
        }
        // A tenant's own credential replaces whatever login the fleet table set; a
        // tenant with both keeps both, which validation refuses.
        if tenant.password.is_some() || tenant.meter_secret.is_some() {
            config.username = tenant.password.as_ref().map(|_| tenant.tenant.clone());
            config.password.clone_from(&tenant.password);
            config.meter_secret.clone_from(&tenant.meter_secret);
        }
        if let Some(keys) = &tenant.mac_keys {
            config.mac_keys = Some(keys.clone());
        }
        if let Some(scenarios) = &tenant.scenarios {
            config.scenarios = scenarios.clone();
        }
        config
    }
}

/// The part of a meterflow configuration that knows a fleet: its tenants (with
/// their MQTT password or meter secret) and every meter's size and district.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub tenants: Vec<RegistryTenant>,
    pub processors: RegistryProcessors,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryTenant {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt_password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meter_secret: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistryProcessors {
    pub tenants: BTreeMap<String, RegistryMeters>,
}

/// Meter sizes (only those other than the default DN15) and districts of a tenant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryMeters {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meter_sizes: BTreeMap<String, MeterSize>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub districts: BTreeMap<String, String>,
}

/// The registry of the fleet made of `parts`.
pub fn registry(parts: &[SimConfig]) -> Registry {
    let mut registry = Registry::default();
    for part in parts {
        // A meter secret is what meterflow needs for such a tenant; the meters'
        // passwords are derived from it on both sides.
        registry.tenants.push(RegistryTenant {
            id: part.tenant.clone(),
            mqtt_password: part
                .password
                .clone()
                .filter(|_| part.meter_secret.is_none()),
            meter_secret: part.meter_secret.clone(),
        });
        let meters = registry
            .processors
            .tenants
            .entry(part.tenant.clone())
            .or_default();
        for index in part.meter_indices() {
            let generator = meter_messages(part, index);
            let profile = generator.profile();
            let meter = meter_id_string(index);
            if profile.size != MeterSize::default() {
                meters.meter_sizes.insert(meter.clone(), profile.size);
            }
            if let Some(district) = &profile.district {
                meters.districts.insert(meter, district.clone());
            }
        }
    }
    registry
}

impl Registry {
    /// As meterflow configuration TOML, to append to (or use as) a config file.
    pub fn to_toml(&self) -> String {
        // Strings, maps and enums of unit variants always serialise to TOML.
        toml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [fleet]
        messages_per_meter = 24
        readings_per_message = 4
        rate = 100.0
        scenarios = { leak = 5.0 }

        [[tenants]]
        tenant = "north"
        meters = 40
        districts = ["n-01", "n-02"]
        sizes = { dn15 = 80, dn40 = 20 }
        password = "pw"

        [[tenants]]
        tenant = "south"
        meters = 10
        scenarios = { burst = 10.0 }

        [[tenants]]
        tenant = "east"
        meters = 3
        meter_secret = "east-meter-secret-0123456789"
    "#;

    #[test]
    fn tenants_override_the_fleet_table() {
        let file: FleetFile = toml::from_str(FILE).unwrap();
        let parts = file.parts().unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].tenant, "north");
        assert_eq!(parts[0].username.as_deref(), Some("north"));
        assert_eq!(parts[0].scenarios.leak, 5.0);
        assert_eq!(parts[0].rate, Some(100.0));
        assert_eq!(parts[1].districts, Vec::<String>::new());
        assert_eq!(parts[1].scenarios.leak, 0.0);
        assert_eq!(parts[1].scenarios.burst, 10.0);
        assert_eq!(parts[1].messages_per_meter, 24);
        assert_eq!(parts[1].login(&parts[1].meter_key(0).unwrap()), None);
        let east = &parts[2];
        assert_eq!(east.username, None);
        assert_eq!(east.password, None);
        let (user, password) = east.login(&east.meter_key(0).unwrap()).unwrap();
        assert_eq!(user, "east");
        assert_eq!(password.len(), 64);
    }

    #[test]
    fn a_tenant_credential_replaces_the_fleet_login() {
        let file: FleetFile = toml::from_str(
            r#"
            [fleet]
            username = "fleet-user"
            password = "fleet-password"
            [[tenants]]
            tenant = "a"
            meters = 1
            meter_secret = "a-meter-secret-0123456789"
            [[tenants]]
            tenant = "b"
            meters = 1
            [[tenants]]
            tenant = "c"
            meters = 1
            password = "c-password"
            meter_secret = "c-meter-secret-0123456789"
            "#,
        )
        .unwrap();
        let Err(SimError::InvalidConfig(problems)) = file.parts() else {
            panic!("tenant c has two credentials");
        };
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].starts_with("c: meter_secret"), "{problems:#?}");

        let mut file = file;
        file.tenants.pop();
        let parts = file.parts().unwrap();
        assert_eq!(
            (
                parts[0].username.as_deref(),
                parts[0].meter_secret.is_some()
            ),
            (None, true)
        );
        assert_eq!(parts[1].username.as_deref(), Some("fleet-user"));
    }

    #[test]
    fn problems_name_their_tenant() {
        let file: FleetFile = toml::from_str(
            r#"
            [[tenants]]
            tenant = "a"
            meters = 0
            [[tenants]]
            tenant = "a"
            meters = 1
            districts = ["bad district"]
            "#,
        )
        .unwrap();
        let Err(SimError::InvalidConfig(problems)) = file.parts() else {
            panic!("expected problems");
        };
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("listed twice")));
        assert!(toml::from_str::<FleetFile>("[fleet]\nmeterz = 1").is_err());
    }

    #[test]
    fn the_registry_lists_every_district_and_large_meter() {
        let file: FleetFile = toml::from_str(FILE).unwrap();
        let parts = file.parts().unwrap();
        let registry = registry(&parts);
        let north = &registry.processors.tenants["north"];
        assert_eq!(north.districts.len(), 40);
        assert!(!north.meter_sizes.is_empty());
        assert!(north.meter_sizes.values().all(|&s| s == MeterSize::Dn40));
        assert!(registry.processors.tenants["south"].districts.is_empty());
        let text = registry.to_toml();
        let back: Registry = toml::from_str(&text).unwrap();
        assert_eq!(back, registry);
        assert!(text.contains("mqtt_password = \"pw\""), "{text}");
        // A tenant with a meter secret is registered with it, never with a password.
        let east = &registry.tenants[2];
        assert_eq!(
            (east.mqtt_password.as_deref(), east.meter_secret.as_deref()),
            (None, Some("east-meter-secret-0123456789"))
        );
        assert!(
            text.contains("meter_secret = \"east-meter-secret-0123456789\""),
            "{text}"
        );
        assert_eq!(text.matches("mqtt_password").count(), 1, "{text}");
    }
}
