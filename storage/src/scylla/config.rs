//! Settings of the ScyllaDB backend (the `[storage.scylla]` table of the service
//! config, once the lead wires it). Every field has a default; [`ScyllaConfig::validate`]
//! reports every problem at once.
//!
//! Some settings only take effect when the schema is first created (replication,
//! the readings table's default TTL and compaction window): migrations run once per
//! keyspace. Changing them later needs an `ALTER KEYSPACE` / `ALTER TABLE` by hand
//! (plus a repair after a replication change). The `*_ttl_days` settings are also
//! bound on every insert, so new writes follow the current value.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::resilience::{BreakerConfig, RetryConfig};

/// Cassandra and ScyllaDB refuse TTLs above 20 years.
const MAX_TTL_DAYS: u32 = 20 * 365;

/// Rows per unlogged batch above which ScyllaDB's default `batch_size_warn_threshold`
/// (128 KiB) could be approached; a reading row is ~100 bytes on the wire.
const MAX_BATCH_ROWS_LIMIT: usize = 1_000;

/// The consistency level of every statement (reads and writes alike, so a read sees
/// every write the store acknowledged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Consistency {
    One,
    Two,
    Three,
    Quorum,
    All,
    /// The default (DESIGN §6.1): a majority of the replicas in the local datacenter.
    /// With RF 3 a write survives one node down; with RF 1 (a single-node test
    /// cluster) the quorum is that one node, so tests run at the production level.
    #[default]
    LocalQuorum,
    EachQuorum,
    LocalOne,
}

impl Consistency {
    /// Whether the level only counts replicas of the coordinator's datacenter.
    pub(crate) fn is_local(self) -> bool {
        matches!(self, Consistency::LocalQuorum | Consistency::LocalOne)
    }

    pub(crate) fn to_driver(self) -> ::scylla::statement::Consistency {
        use ::scylla::statement::Consistency as C;
        match self {
            Consistency::One => C::One,
            Consistency::Two => C::Two,
            Consistency::Three => C::Three,
            Consistency::Quorum => C::Quorum,
            Consistency::All => C::All,
            Consistency::LocalQuorum => C::LocalQuorum,
            Consistency::EachQuorum => C::EachQuorum,
            Consistency::LocalOne => C::LocalOne,
        }
    }
}

/// How the ScyllaDB (or Cassandra) backend talks to the cluster and shapes its schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScyllaConfig {
    /// Replicas of every row, per datacenter, used when meterflow creates the
    /// keyspace. Default 3 (DESIGN §9): LOCAL_QUORUM then tolerates one node down.
    /// Capped at creation by the nodes the driver sees in the datacenter (the local
    /// one if set, else the smallest): on a single-node development cluster the
    /// keyspace gets RF 1 (an INFO log says so; LOCAL_QUORUM of RF 1 is that one
    /// node). An existing keyspace keeps its replication; if `consistency` can never
    /// be met with it on the nodes the cluster has (say RF 3 on one node at
    /// LOCAL_QUORUM), opening fails at once with the `ALTER KEYSPACE` to run instead
    /// of waiting forever.
    pub replication_factor: u8,
    /// The datacenter this service runs next to. When set, the keyspace is created
    /// as `NetworkTopologyStrategy {'<dc>': replication_factor}` and the driver
    /// prefers that datacenter's nodes; when unset (default), the keyspace uses the
    /// `'replication_factor'` shorthand (every datacenter gets that many replicas) and
    /// the driver has no preference: fine for one datacenter.
    pub local_datacenter: Option<String>,
    /// Consistency of reads and writes (default LOCAL_QUORUM). Checked at open
    /// against the keyspace's replication and the cluster's nodes: a level that can
    /// never be met (e.g. THREE on one node) fails at once, naming this setting.
    pub consistency: Consistency,
    /// User for password authentication (none by default). In Kubernetes it comes
    /// from the Secret through `MF_SCYLLA_USERNAME` rather than the config file.
    pub username: Option<String>,
    /// Password for `username` (`MF_SCYLLA_PASSWORD`).
    pub password: Option<String>,
    /// Days a reading is kept (default 400: a full year of interval data for billing
    /// disputes and year-on-year comparisons, plus a month of slack; hourly and
    /// billing aggregates are the long-term record). Also sets the TWCS window: about
    /// 30 windows over the TTL, as TWCS guidance asks (see `schema`).
    pub readings_ttl_days: u32,
    /// Days a dead letter is kept (default 30: long enough to notice, diagnose and
    /// fix a misbehaving meter fleet; they are diagnostics, not records).
    pub dead_letters_ttl_days: u32,
    /// Days an alert episode is kept after its latest event (default 400: a year of
    /// episode history for the utility's annual reports and for telling a recurring
    /// leak from a new one, plus a month of slack). An episode still open is rewritten
    /// at each update, which restarts its TTL.
    pub alerts_ttl_days: u32,
    /// Days an hourly district row is kept (default 400: year-on-year comparison of
    /// district demand and night flow, like the readings it is derived from). Bills
    /// have no TTL: they are records, deleted only by the utility's own retention.
    pub district_hourly_ttl_days: u32,
    /// Statements in flight at once per store (default 32). Each is a single-partition
    /// write or read; at ~1 ms per statement on a LAN, 32 in flight allow ~30k
    /// statements/s, more than a 2-core node can apply, so the cluster stays the
    /// bottleneck without a deep server-side queue that would turn into timeouts.
    /// Raise it with the cluster's core count.
    pub max_in_flight: usize,
    /// Readings per unlogged batch (default 100). Batches only ever hold rows of one
    /// partition (one meter-day); 100 rows ≈ 10 KB, far below every batch-size
    /// threshold, and a meter's sealed batch rarely holds more (bursts are 4–96).
    pub max_batch_rows: usize,
    /// Client-side timeout of one statement, ms (default 5000: above the servers'
    /// own 2 s write timeout, so the server's answer arrives first).
    pub request_timeout_ms: u64,
    /// Timeout of one connection attempt, ms (default 5000).
    pub connect_timeout_ms: u64,
    /// How a failed operation on the store is retried — by its caller: the store
    /// sends every statement once. The sink paces its retries of a group commit with
    /// these delays, and reports the store as failing after `max_attempts` tries
    /// (it never gives a commit up); the service paces its start-up connection
    /// attempts with them.
    pub retry: RetryConfig,
    /// The breaker in front of the whole store.
    pub breaker: BreakerConfig,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            replication_factor: 3,
            local_datacenter: None,
            consistency: Consistency::default(),
            username: None,
            password: None,
            readings_ttl_days: 400,
            dead_letters_ttl_days: 30,
            alerts_ttl_days: 400,
            district_hourly_ttl_days: 400,
            max_in_flight: 32,
            max_batch_rows: 100,
            request_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

impl ScyllaConfig {
    /// Every problem with the values, each phrased as what to change.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.replication_factor == 0 {
            problems.push("scylla.replication_factor must be at least 1".to_owned());
        }
        if let Some(dc) = &self.local_datacenter {
            let well_formed = !dc.is_empty()
                && dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !well_formed {
                problems.push(format!(
                    "scylla.local_datacenter {dc:?} must be a datacenter name ([A-Za-z0-9_.-]+)"
                ));
            }
        }
        for (name, days) in [
            ("readings_ttl_days", self.readings_ttl_days),
            ("dead_letters_ttl_days", self.dead_letters_ttl_days),
            ("alerts_ttl_days", self.alerts_ttl_days),
            ("district_hourly_ttl_days", self.district_hourly_ttl_days),
        ] {
            if !(1..=MAX_TTL_DAYS).contains(&days) {
                problems.push(format!(
                    "scylla.{name} must be between 1 and {MAX_TTL_DAYS} (20 years, the CQL limit), not {days}"
                ));
            }
        }
        if self.max_in_flight == 0 {
            problems.push("scylla.max_in_flight must be at least 1".to_owned());
        }
        if !(1..=MAX_BATCH_ROWS_LIMIT).contains(&self.max_batch_rows) {
            problems.push(format!(
                "scylla.max_batch_rows must be between 1 and {MAX_BATCH_ROWS_LIMIT}, not {}",
                self.max_batch_rows
            ));
        }
        if self.request_timeout_ms == 0 {
            problems.push("scylla.request_timeout_ms must be at least 1".to_owned());
        }
        if self.connect_timeout_ms == 0 {
            problems.push("scylla.connect_timeout_ms must be at least 1".to_owned());
        }
        problems.extend(self.retry.problems("scylla.retry"));
        problems.extend(self.breaker.problems("scylla.breaker"));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    pub(crate) fn readings_ttl_secs(&self) -> i32 {
        ttl_secs(self.readings_ttl_days)
    }

    pub(crate) fn dead_letters_ttl_secs(&self) -> i32 {
        ttl_secs(self.dead_letters_ttl_days)
    }

    pub(crate) fn alerts_ttl_secs(&self) -> i32 {
        ttl_secs(self.alerts_ttl_days)
    }

    pub(crate) fn district_hourly_ttl_secs(&self) -> i32 {
        ttl_secs(self.district_hourly_ttl_days)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// Seconds in `days`, as CQL's `int` TTL; `validate` keeps `days` within 20 years, so
/// this never saturates for a validated config.
fn ttl_secs(days: u32) -> i32 {
    i32::try_from(u64::from(days) * 86_400).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let config = ScyllaConfig::default();
        config.validate().unwrap();
        let text = toml::to_string(&config).unwrap();
        assert!(text.contains("consistency = \"LOCAL_QUORUM\""), "{text}");
        let back: ScyllaConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn partial_tables_take_defaults_and_unknown_fields_are_refused() {
        let config: ScyllaConfig =
            toml::from_str("replication_factor = 1\n[retry]\nmax_attempts = 2\n").unwrap();
        assert_eq!(config.replication_factor, 1);
        assert_eq!(config.retry.max_attempts, 2);
        assert_eq!(config.retry.initial_backoff_ms, 50);
        assert_eq!(config.readings_ttl_days, 400);
        assert!(toml::from_str::<ScyllaConfig>("replicaton_factor = 1").is_err());
        assert!(toml::from_str::<ScyllaConfig>("[breaker]\nthreshold = 1").is_err());
    }

    #[test]
    fn validation_reports_every_problem() {
        let config = ScyllaConfig {
            replication_factor: 0,
            local_datacenter: Some("dc1'; DROP".into()),
            readings_ttl_days: 0,
            dead_letters_ttl_days: 100_000,
            max_in_flight: 0,
            max_batch_rows: 0,
            retry: RetryConfig {
                max_attempts: 0,
                ..RetryConfig::default()
            },
            ..ScyllaConfig::default()
        };
        let problems = config.validate().unwrap_err();
        assert_eq!(problems.len(), 7, "{problems:#?}");
    }

    #[test]
    fn ttl_seconds() {
        let config = ScyllaConfig::default();
        assert_eq!(config.readings_ttl_secs(), 400 * 86_400);
        assert_eq!(config.alerts_ttl_secs(), 400 * 86_400);
        assert_eq!(config.district_hourly_ttl_secs(), 400 * 86_400);
        assert_eq!(ttl_secs(MAX_TTL_DAYS), 630_720_000);
    }
}
