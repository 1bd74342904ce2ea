//! The service configuration: one TOML file, every field defaulted so that `meterflow`
//! with no file runs on a laptop (DESIGN §8): broker on 127.0.0.1:1883, embedded store
//! in `./data`, in-process cache, HTTP on 127.0.0.1:8080, and the built-in `demo`
//! tenant that accepts anonymous meters on loopback only.
//!
//! Layers, later wins: defaults → the TOML file → overrides, each a command-line
//! flag or its `MF_*` environment variable (clap's `env`, in `main.rs`; the flag
//! wins). [`Config::validate`] reports every problem at once, each with what to do.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use meterflow_model::Limits;
use meterflow_model::ids::is_valid_id;
use meterflow_model::processing::ProcessorsConfig;
use meterflow_storage::embedded::background::LOWEST_PRIORITY_NICE;
use meterflow_storage::embedded::retention::Retention;
use meterflow_storage::redis_cache::RedisConfig;
use meterflow_storage::scylla::ScyllaConfig;
use serde::{Deserialize, Serialize};

use crate::dead_letter_limit::{DEAD_LETTER_SOURCES, DeadLetterRate};
pub use crate::kafka::config::{KafkaConfig, Mode};

/// Listen address of the embedded broker: the MQTT port on loopback.
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1883";
/// Listen address of the HTTP API, metrics and dashboard.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// Shortest password, secret or token accepted: 16 characters (128 bits as hex).
pub const MIN_SECRET_CHARS: usize = 16;
/// The tenant every fresh install has, for trying meterflow out.
pub const DEMO_TENANT: &str = "demo";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// What this process runs: `embedded` (everything, the default), or in distributed
    /// mode (DESIGN §9) an `endpoint` or a `processor` replica around a Kafka log, or
    /// both in one process (`combined`, for small clusters).
    pub mode: Mode,
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub pipeline: PipelineConfig,
    pub limits: Limits,
    /// Tariffs, VEE and alert rules, notification limits, meter sizes and districts,
    /// per tenant with defaults (see `model/src/processing.rs`).
    pub processors: ProcessorsConfig,
    pub log: LogConfig,
    /// The uplink log of distributed mode (unused in `embedded` mode).
    pub kafka: KafkaConfig,
    /// Utilities served by this instance. Empty means just the built-in `demo`.
    pub tenants: Vec<TenantConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Where the meter endpoint listens for plain MQTT 3.1.1 (and where the readiness
    /// probe connects). With TLS for the field, keep this on loopback.
    pub listen: SocketAddr,
    /// A TLS listener beside the plain one (`[mqtt.tls]`), when set.
    pub tls: Option<TlsConfig>,
    /// Most MQTT connections at once. Lowered at start to fit the process's open-file
    /// limit (less a reserve for the store, HTTP and logs), so the endpoint refuses
    /// with a CONNACK "server unavailable" before the OS refuses with silence.
    pub max_connections: usize,
    /// Seconds a new connection has to complete its TLS handshake and send CONNECT.
    pub connect_timeout_s: u16,
    /// Uplinks one connection may have waiting for durability. At the cap the
    /// endpoint stops reading that socket, so backpressure reaches the meter through
    /// TCP. A meter sends one message at a time or a small window; 32 covers gateways.
    pub max_inflight: usize,
    /// Seconds a connection that asked for no keep-alive may stay silent. Hourly
    /// reporters fit under the default (65 minutes).
    pub idle_timeout_s: u64,
    /// New connections taken per second (a token bucket with a second's burst):
    /// reconnect storms are spread out instead of starving established meters.
    pub connection_rate: u32,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_MQTT_LISTEN.parse().expect("valid default"),
            tls: None,
            max_connections: 100_000,
            connect_timeout_s: 10,
            max_inflight: 32,
            idle_timeout_s: 3_900,
            connection_rate: 5_000,
        }
    }
}

/// The endpoint's TLS listener (rustls).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Where the TLS listener listens, e.g. `0.0.0.0:8883`.
    pub listen: SocketAddr,
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where the API, `/metrics`, `/healthz` and `/readyz` listen.
    pub listen: SocketAddr,
    /// Most HTTP connections open at once; one more is answered 503 and closed at
    /// once, so idle or hostile clients cannot take the descriptors that MQTT sessions
    /// and `/healthz` need. The default, 256, fits (with the store's files) in the 512
    /// descriptors the MQTT endpoint leaves free under the open-file limit, and is far
    /// above what dashboards, scrapers and API clients hold (a few connections each).
    pub max_connections: usize,
    /// Seconds a client has to send a request's line and headers, counted from the
    /// connection's start or from the end of the previous answer: a kept-alive
    /// connection waiting for its next request is closed after this too.
    pub header_timeout_s: u64,
    /// Seconds a connection may go without a byte moving either way (a client that
    /// stopped reading its answer, a stalled body) before it is closed.
    pub idle_timeout_s: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_HTTP_LISTEN.parse().expect("valid default"),
            max_connections: 256,
            header_timeout_s: 10,
            idle_timeout_s: 60,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Where readings go: `embedded` (fjall in `data_dir`, the default on one
    /// machine) or `scylla://HOST:PORT[,HOST:PORT…]/KEYSPACE` (ScyllaDB or Apache
    /// Cassandra; the keyspace is created if missing).
    pub backend: String,
    /// Directory of the embedded store (created if missing).
    pub data_dir: PathBuf,
    /// Days the embedded store keeps a dead letter, by the time it was received; `0`
    /// keeps them forever. Two weeks is time enough to look into a misbehaving meter;
    /// junk older than that only takes disk. (ScyllaDB: `scylla.dead_letters_ttl_days`.)
    pub dead_letter_retention_days: u32,
    /// Days the embedded store keeps a reading, by its timestamp; `0` keeps them
    /// forever. 400, as ScyllaDB's `scylla.readings_ttl_days`: a year of history for
    /// year-over-year comparisons plus a month of margin.
    pub readings_retention_days: u32,
    /// Days the embedded store keeps an hour row of district usage, by the hour's
    /// start; `0` keeps them forever. 400, as `scylla.district_hourly_ttl_days`.
    pub district_hourly_retention_days: u32,
    /// Nice value (0–19) of the embedded store's background threads, which flush
    /// and compact tables: 19 runs them on the CPU the pipeline leaves idle, so their
    /// bursts do not delay acks; 0 runs them as the pipeline's own threads (for a
    /// machine that runs at its peak for hours, where compaction must keep pace).
    /// On Linux; elsewhere unused.
    pub background_nice: u8,
    /// ScyllaDB settings (replication, consistency, TTLs, in-flight bound, retries,
    /// breaker), used with a `scylla://` backend.
    pub scylla: ScyllaConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: "embedded".into(),
            data_dir: PathBuf::from("data"),
            dead_letter_retention_days: 14,
            readings_retention_days: 400,
            district_hourly_retention_days: 400,
            background_nice: 19,
            scylla: ScyllaConfig::default(),
        }
    }
}

/// A parsed `store.backend`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    Embedded,
    Scylla {
        contact_points: Vec<String>,
        keyspace: String,
    },
}

/// Longest retention accepted, in days (100 years): longer is a typo; `0` keeps rows
/// forever.
const MAX_RETENTION_DAYS: u32 = 36_500;

impl StoreConfig {
    /// The embedded store's retention periods.
    pub fn retention(&self) -> Retention {
        Retention {
            readings_days: self.readings_retention_days,
            dead_letters_days: self.dead_letter_retention_days,
            district_hourly_days: self.district_hourly_retention_days,
        }
    }

    /// Problems with the retention settings.
    fn retention_problems(&self) -> Vec<String> {
        [
            ("dead_letter_retention_days", self.dead_letter_retention_days),
            ("readings_retention_days", self.readings_retention_days),
            ("district_hourly_retention_days", self.district_hourly_retention_days),
        ]
        .into_iter()
        .filter(|(_, days)| *days > MAX_RETENTION_DAYS)
        .map(|(name, days)| {
            format!(
                "store.{name} must be at most {MAX_RETENTION_DAYS} (100 years), not {days}; use 0 to keep rows forever"
            )
        })
        .collect()
    }

    pub fn parse_backend(&self) -> Result<StoreBackend, String> {
        if self.backend == "embedded" {
            return Ok(StoreBackend::Embedded);
        }
        let Some(rest) = self.backend.strip_prefix("scylla://") else {
            return Err(format!(
                "store.backend {:?}: use \"embedded\" or \"scylla://HOST:PORT[,HOST:PORT]/KEYSPACE\"",
                self.backend
            ));
        };
        let (hosts, keyspace) = rest.split_once('/').ok_or_else(|| {
            format!(
                "store.backend {:?}: the keyspace is missing (…/KEYSPACE)",
                self.backend
            )
        })?;
        let contact_points: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(String::from)
            .collect();
        if contact_points.is_empty() || contact_points.iter().any(|h| !h.contains(':')) {
            return Err(format!(
                "store.backend {:?}: give contact points as HOST:PORT",
                self.backend
            ));
        }
        Ok(StoreBackend::Scylla {
            contact_points,
            keyspace: keyspace.to_string(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Where dashboards' hot data goes: `memory` (in-process, served over HTTP),
    /// `redis://HOST:PORT[/DB]` or a Redis Cluster,
    /// `redis+cluster://HOST:PORT[,HOST:PORT…]` (the key contract in docs/redis-keys.md).
    pub backend: String,
    /// Redis settings (key prefix, TTLs, timeouts, retries, breaker).
    pub redis: RedisConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            backend: "memory".into(),
            redis: RedisConfig::default(),
        }
    }
}

/// `url` with any userinfo (`user:password@`) replaced by `***@`, for logs: a Redis or
/// webhook URL may carry a password, and in Kubernetes that is a Secret's value.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// A parsed `cache.backend`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheBackend {
    Memory,
    Redis { url: String },
}

impl CacheConfig {
    pub fn parse_backend(&self) -> Result<CacheBackend, String> {
        match self.backend.as_str() {
            "memory" => Ok(CacheBackend::Memory),
            url if ["redis://", "rediss://", "redis+cluster://"]
                .iter()
                .any(|scheme| url.starts_with(scheme)) =>
            {
                Ok(CacheBackend::Redis {
                    url: url.to_string(),
                })
            }
            other => Err(format!(
                "cache.backend {other:?}: use \"memory\", \"redis://HOST:PORT\" or \
                 \"redis+cluster://HOST:PORT[,HOST:PORT…]\""
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Shard workers; 0 means one per CPU core. A meter always maps to one shard.
    pub shards: usize,
    /// Uplinks queued per shard between the endpoint and the worker; a full queue
    /// blocks the connections feeding it (TCP backpressure to the meters). At ~200 bytes
    /// an uplink, 16,384 is ~3 MiB per shard: enough to ride out a sealed batch being
    /// handed to the sink, small enough to bound memory.
    pub shard_queue: usize,
    /// A batch seals when it holds this many readings: large enough that one fsync
    /// carries thousands of readings, small enough that a batch is a few MiB.
    pub batch_readings: usize,
    /// …or when the shard's queue is empty (nothing else is coming, so a PUBACK need
    /// not wait), and at the latest when the batch has been open this long: the bound
    /// under steady load, when the queue never empties. 20 ms keeps PUBACKs prompt; at
    /// heavy load batches fill long before.
    pub linger_ms: u64,
    /// Sealed batches waiting for the store, across shards. When full, shard workers
    /// block: that is the backpressure that reaches the meters as slower acks.
    pub sink_queue: usize,
    /// A gap in a meter's seqs not filled within this many seconds is skipped
    /// (DESIGN §3: default 10 min).
    pub resend_window_s: u64,
    /// How often each shard runs the processors' timer sweep over its meters
    /// (no-communication alerts, bill closing). The shortest rule it drives is hours
    /// long, so a minute is plenty. (Analytics' flush on a quiet shard is checked
    /// every second.)
    pub sweep_interval_s: u64,
    /// Meters the shards hold in memory at most, across shards (a soft limit, applied
    /// every second). A held meter keeps its late window — ~24 KiB for a fifteen-minute
    /// meter with 72 h of reads, more at shorter intervals — so 50,000 is ~1.2 GiB. Past
    /// it the least recently active meters rest in the store: read back on their next
    /// uplink, or by the timer sweep when a rule is due on them
    /// (`meterflow_shard_meters`). Set it above the meters one process serves to
    /// never read a meter back.
    pub held_meters: usize,
    /// Dead letters one sender (tenant and meter of its session) may have stored at
    /// once; more are dropped and counted (`meterflow_dead_letters_dropped_total`),
    /// still answered. 20 shows every distinct fault a meter can make at once.
    pub dead_letter_burst: u32,
    /// Dead letters per second one sender may have stored in the long run: one a
    /// second is ~1 MiB an hour of junk at most per sender, and far more than a
    /// faulty but well-meant meter sends.
    pub dead_letter_refill_per_s: u32,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            shard_queue: 16_384,
            batch_readings: 4_096,
            linger_ms: 20,
            sink_queue: 16,
            resend_window_s: 600,
            sweep_interval_s: 60,
            held_meters: 50_000,
            dead_letter_burst: 20,
            dead_letter_refill_per_s: 1,
        }
    }
}

impl PipelineConfig {
    /// The per-sender dead-letter limit of each shard.
    pub fn dead_letter_rate(&self) -> DeadLetterRate {
        DeadLetterRate {
            burst: self.dead_letter_burst,
            refill_per_s: self.dead_letter_refill_per_s,
            capacity: DEAD_LETTER_SOURCES,
        }
    }

    /// Meters each shard holds at most: `held_meters` split over the shards.
    pub fn held_meters_per_shard(&self) -> usize {
        self.held_meters.div_ceil(self.shard_count())
    }

    /// Shard count with `0` resolved to the number of cores.
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            self.shards
        }
    }
}

/// The default `log.level`: meterflow's targets (`meterflow`, `meterflow_*`) at INFO,
/// everything else at WARN (fjall and lsm_tree say a lot at INFO when opening).
pub const DEFAULT_LOG_FILTER: &str = "warn,meterflow=info";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter. The default, `warn,meterflow=info`, logs meterflow's own
    /// events from INFO and other libraries' (the store's, drivers') from WARN; e.g.
    /// `info` for everything, or `warn,meterflow=info,meterflow_ingest::endpoint=debug`.
    pub level: String,
    /// One JSON object per line instead of human-readable text.
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: DEFAULT_LOG_FILTER.into(),
            json: false,
        }
    }
}

/// One utility.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Tenant id, `[A-Za-z0-9_-]{1,64}`.
    pub id: String,
    /// MQTT password for this tenant's meters (username = tenant id, client id =
    /// `{tenant}.{meter}`). Without one the tenant's meters connect anonymously, which
    /// is allowed only while MQTT listens on loopback.
    pub mqtt_password: Option<String>,
    /// Per-meter MQTT passwords: each meter's password is derived from this secret and
    /// its id (`meterflow credentials` prints them), so meterflow stores no per-meter
    /// secrets and a meter cannot log in as another. Takes precedence over
    /// `mqtt_password`.
    pub meter_secret: Option<String>,
    /// Password of the tenant's integrations: they log in with username
    /// `{tenant}:integration` and may subscribe to `alerts/{tenant}/#`.
    pub integration_password: Option<String>,
    /// Bearer token for this tenant's HTTP API. Required when HTTP listens beyond
    /// loopback.
    pub api_token: Option<String>,
    /// Per-meter MAC keys, hex. A meter listed here must sign its uplinks.
    pub meter_keys: BTreeMap<String, String>,
    /// When true, every meter of the tenant must sign (a meter without a key is
    /// dead-lettered `bad_mac`).
    pub require_mac: bool,
    /// When set, only these meters are accepted (others: `unknown_meter`).
    pub meters: Option<Vec<String>>,
    /// Alert notifications are POSTed here as JSON (retried with backoff), when set.
    pub webhook_url: Option<String>,
}

impl Config {
    /// The tenants in force: the configured ones, or the built-in `demo`.
    pub fn effective_tenants(&self) -> Vec<TenantConfig> {
        if self.tenants.is_empty() {
            vec![TenantConfig {
                id: DEMO_TENANT.into(),
                ..TenantConfig::default()
            }]
        } else {
            self.tenants.clone()
        }
    }

    /// Reads a TOML file over the defaults.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The full default configuration as TOML (what `meterflow config` prints).
    pub fn default_toml() -> String {
        let mut text = String::from(
            "# meterflow configuration: every field shown with its default.\n\
             # Environment overrides: MF_MQTT_LISTEN, MF_HTTP_LISTEN, MF_DATA_DIR, MF_STORE,\n\
             # MF_CACHE, MF_SCYLLA_USERNAME, MF_SCYLLA_PASSWORD, MF_SHARDS, MF_LOG_LEVEL,\n\
             # MF_LOG_JSON, MF_MODE, MF_KAFKA_BROKERS, MF_STORE_BACKGROUND_NICE.\n\
             # Tenants: add [[tenants]] tables (see README).\n\n",
        );
        text.push_str(&toml::to_string_pretty(&Config::default()).expect("default serialises"));
        text
    }

    /// What distributed mode needs: the Kafka support compiled in, a valid `[kafka]`,
    /// and a store and cache that every replica shares (an embedded store or an
    /// in-process cache would split a meter's state and the dashboards' data).
    fn distributed_problems(&self) -> Vec<String> {
        if self.mode == Mode::Embedded {
            return Vec::new();
        }
        let mode = self.mode.as_str();
        let mut errors = Vec::new();
        if !cfg!(feature = "kafka") {
            errors.push(format!(
                "mode = {mode:?} needs Kafka support, which this build lacks: build with \
                 `--features kafka` (the release image and the Helm chart have it)"
            ));
        }
        errors.extend(self.kafka.problems());
        if self.store.parse_backend() == Ok(StoreBackend::Embedded) {
            errors.push(format!(
                "mode = {mode:?} needs a store every replica shares: set store.backend to \
                 scylla://HOST:PORT/KEYSPACE"
            ));
        }
        if self.cache.parse_backend() == Ok(CacheBackend::Memory) {
            errors.push(format!(
                "mode = {mode:?} needs a cache every replica shares: set cache.backend to a Redis URL"
            ));
        }
        errors
    }

    /// Checks the whole configuration and returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let tenants = self.effective_tenants();
        let mut seen = std::collections::HashSet::new();
        for t in &tenants {
            if !is_valid_id(t.id.as_bytes()) {
                errors.push(format!(
                    "tenants: id {:?} is not a valid id (use 1-64 of A-Z a-z 0-9 _ -)",
                    t.id
                ));
            }
            if !seen.insert(t.id.as_str()) {
                errors.push(format!("tenants: id {:?} is configured twice", t.id));
            }
            for (meter, key) in &t.meter_keys {
                if !is_valid_id(meter.as_bytes()) {
                    errors.push(format!(
                        "tenants.{}.meter_keys: {meter:?} is not a valid meter id",
                        t.id
                    ));
                }
                if hex::decode(key).map(|k| k.len() < 16).unwrap_or(true) {
                    errors.push(format!(
                        "tenants.{}.meter_keys.{meter}: the key must be hex, at least 16 bytes (32 hex digits)",
                        t.id
                    ));
                }
            }
            for meter in t.meters.iter().flatten() {
                if !is_valid_id(meter.as_bytes()) {
                    errors.push(format!(
                        "tenants.{}.meters: {meter:?} is not a valid meter id",
                        t.id
                    ));
                }
            }
            if !self.http.listen.ip().is_loopback() && t.api_token.is_none() {
                errors.push(format!(
                    "tenants.{}: http.listen {} is beyond loopback, so the tenant needs an api_token",
                    t.id, self.http.listen
                ));
            }
        }
        let exposed = !self.mqtt.listen.ip().is_loopback()
            || self
                .mqtt
                .tls
                .as_ref()
                .is_some_and(|tls| !tls.listen.ip().is_loopback());
        for t in &tenants {
            if exposed && t.mqtt_password.is_none() && t.meter_secret.is_none() {
                errors.push(format!(
                    "MQTT listens beyond loopback but tenant {:?} has neither mqtt_password nor \
                     meter_secret: anonymous meters are allowed on loopback only — set one, or \
                     listen on 127.0.0.1",
                    t.id
                ));
            }
            for (name, secret) in [
                ("mqtt_password", &t.mqtt_password),
                ("meter_secret", &t.meter_secret),
                ("integration_password", &t.integration_password),
                ("api_token", &t.api_token),
            ] {
                if secret
                    .as_ref()
                    .is_some_and(|s| s.chars().count() < MIN_SECRET_CHARS)
                {
                    errors.push(format!(
                        "tenants.{}.{name}: at least {MIN_SECRET_CHARS} characters (e.g. `openssl rand -hex 16`)",
                        t.id
                    ));
                }
            }
        }
        if let Some(tls) = &self.mqtt.tls {
            for (name, path) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if !path.is_file() {
                    errors.push(format!(
                        "mqtt.tls.{name} {}: no such file (a PEM file is needed)",
                        path.display()
                    ));
                }
            }
            if tls.listen == self.mqtt.listen || tls.listen == self.http.listen {
                errors.push(format!(
                    "mqtt.tls.listen {} is already in use by another listener",
                    tls.listen
                ));
            }
        }
        if let Err(e) = self.store.parse_backend() {
            errors.push(e);
        }
        if let Err(e) = self.cache.parse_backend() {
            errors.push(e);
        }
        errors.extend(self.distributed_problems());
        if let Err(problems) = self.store.scylla.validate() {
            errors.extend(problems.into_iter().map(|p| format!("store.{p}")));
        }
        if let Err(problems) = self.cache.redis.validate() {
            errors.extend(problems.into_iter().map(|p| format!("cache.{p}")));
        }
        if self.mqtt.listen == self.http.listen {
            errors.push(format!(
                "mqtt.listen and http.listen are both {}",
                self.mqtt.listen
            ));
        }
        let p = &self.pipeline;
        for (name, value) in [
            ("pipeline.shard_queue", p.shard_queue),
            ("pipeline.batch_readings", p.batch_readings),
            ("pipeline.sink_queue", p.sink_queue),
            ("pipeline.held_meters", p.held_meters),
            ("mqtt.max_connections", self.mqtt.max_connections),
            ("http.max_connections", self.http.max_connections),
            (
                "http.header_timeout_s",
                usize::try_from(self.http.header_timeout_s).unwrap_or(usize::MAX),
            ),
            (
                "http.idle_timeout_s",
                usize::try_from(self.http.idle_timeout_s).unwrap_or(usize::MAX),
            ),
            ("mqtt.max_inflight", self.mqtt.max_inflight),
            ("mqtt.connection_rate", self.mqtt.connection_rate as usize),
            (
                "mqtt.connect_timeout_s",
                usize::from(self.mqtt.connect_timeout_s),
            ),
        ] {
            if value == 0 {
                errors.push(format!("{name} must be at least 1"));
            }
        }
        for (name, value) in [
            ("http.header_timeout_s", self.http.header_timeout_s),
            ("http.idle_timeout_s", self.http.idle_timeout_s),
        ] {
            if value > 86_400 {
                errors.push(format!("{name} must be at most 86400 (a day)"));
            }
        }
        if p.sweep_interval_s == 0 {
            errors.push("pipeline.sweep_interval_s must be at least 1".into());
        }
        for (name, value) in [
            ("pipeline.dead_letter_burst", p.dead_letter_burst),
            (
                "pipeline.dead_letter_refill_per_s",
                p.dead_letter_refill_per_s,
            ),
        ] {
            if value == 0 {
                errors.push(format!(
                    "{name} must be at least 1 (dead letters of a sender would never be stored)"
                ));
            }
        }
        errors.extend(self.store.retention_problems());
        if i32::from(self.store.background_nice) > LOWEST_PRIORITY_NICE {
            errors.push(format!(
                "store.background_nice must be at most {LOWEST_PRIORITY_NICE}, not {}",
                self.store.background_nice
            ));
        }
        for t in &tenants {
            if let Some(url) = &t.webhook_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                errors.push(format!(
                    "tenants.{}.webhook_url {url:?} must be an http:// or https:// URL",
                    t.id
                ));
            }
        }
        if let Err(e) = meterflow_processors::ProcessorChain::for_tenants(self.processors.clone()) {
            errors.extend(e.problems.into_iter().map(|p| format!("processors: {p}")));
        }
        if p.shards > 1024 {
            errors.push("pipeline.shards must be at most 1024".into());
        }
        let l = &self.limits;
        if l.max_payload_bytes == 0 || l.max_payload_bytes > 1024 * 1024 {
            errors.push("limits.max_payload_bytes must be between 1 and 1048576".into());
        }
        if l.max_readings == 0 {
            errors.push("limits.max_readings must be at least 1".into());
        }
        if l.max_clock_skew_ms < 0 {
            errors.push("limits.max_clock_skew_ms must not be negative".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            errors.push(format!("log.level {:?}: {e}", self.log.level));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_default_parses_back_to_the_default() {
        assert_eq!(
            Config::from_toml(&Config::default_toml()),
            Ok(Config::default())
        );
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn backends_parse() {
        let mut c = Config::default();
        assert_eq!(c.store.parse_backend(), Ok(StoreBackend::Embedded));
        c.store.backend = "scylla://10.0.0.1:9042,10.0.0.2:9042/meterflow".into();
        assert_eq!(
            c.store.parse_backend(),
            Ok(StoreBackend::Scylla {
                contact_points: vec!["10.0.0.1:9042".into(), "10.0.0.2:9042".into()],
                keyspace: "meterflow".into()
            })
        );
        c.store.backend = "scylla://10.0.0.1".into();
        assert!(c.store.parse_backend().is_err());
        c.cache.backend = "redis://127.0.0.1:6379".into();
        assert!(matches!(
            c.cache.parse_backend(),
            Ok(CacheBackend::Redis { .. })
        ));
        c.cache.backend = "redis+cluster://10.0.0.1:7001,10.0.0.2:7001".into();
        assert!(matches!(
            c.cache.parse_backend(),
            Ok(CacheBackend::Redis { .. })
        ));
        c.cache.backend = "memcached://x".into();
        assert!(
            c.validate()
                .unwrap_err()
                .iter()
                .any(|e| e.starts_with("cache.backend"))
        );
    }

    #[test]
    fn urls_lose_their_credentials_in_logs() {
        assert_eq!(
            redacted_url("redis://default:s3cret@cache:6379/0"),
            "redis://***@cache:6379/0"
        );
        assert_eq!(
            redacted_url("redis://:p@ss@cache:6379"),
            "redis://***@cache:6379"
        );
        assert_eq!(redacted_url("redis://cache:6379/0"), "redis://cache:6379/0");
        assert_eq!(
            redacted_url("redis+cluster://app:s3cret@r1:7001,r2:7001,r3:7001"),
            "redis+cluster://***@r1:7001,r2:7001,r3:7001"
        );
        assert_eq!(
            redacted_url("redis+cluster://r1:7001,r2:7001"),
            "redis+cluster://r1:7001,r2:7001"
        );
        assert_eq!(redacted_url("memory"), "memory");
        assert_eq!(
            redacted_url("https://hooks.example/a@b"),
            "https://hooks.example/a@b",
            "an @ in the path is not userinfo"
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        let c = Config {
            tenants: vec![TenantConfig {
                id: "acme".into(),
                api_token: Some(String::new()),
                mqtt_password: Some("short".into()),
                ..TenantConfig::default()
            }],
            ..Config::default()
        };
        let errors = c.validate().unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains("tenants.acme.api_token")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("tenants.acme.mqtt_password")),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Config::from_toml("[mqtt]\nlisen = \"0.0.0.0:1\"\n").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn anonymous_mqtt_beyond_loopback_is_refused() {
        let mut c = Config::default();
        c.mqtt.listen = "0.0.0.0:1883".parse().unwrap();
        let errors = c.validate().unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("anonymous meters are allowed on loopback only"))
        );
    }

    #[test]
    fn validation_reports_every_error_at_once() {
        let mut c = Config::default();
        c.pipeline.batch_readings = 0;
        c.pipeline.sink_queue = 0;
        c.tenants = vec![TenantConfig {
            id: "bad id".into(),
            ..TenantConfig::default()
        }];
        assert_eq!(c.validate().unwrap_err().len(), 3);
    }

    #[test]
    fn http_limits_default_parse_and_are_validated() {
        let c: Config = toml::from_str("[http]\nmax_connections = 50\n").unwrap();
        assert_eq!(c.http.max_connections, 50);
        assert_eq!(c.http.header_timeout_s, 10);
        assert_eq!(c.http.idle_timeout_s, 60);
        let mut c = Config::default();
        c.http.max_connections = 0;
        c.http.header_timeout_s = 0;
        c.http.idle_timeout_s = 100_000;
        let errors = c.validate().unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("http.max_connections")));
        assert!(errors.iter().any(|e| e.contains("http.header_timeout_s")));
        assert!(errors.iter().any(|e| e.contains("http.idle_timeout_s")));
    }

    #[test]
    fn retention_and_dead_letter_rate_parse_and_are_validated() {
        let c = Config::from_toml(
            "[store]\nreadings_retention_days = 0\ndead_letter_retention_days = 3\n\
             [pipeline]\ndead_letter_burst = 5\n",
        )
        .unwrap();
        let retention = c.store.retention();
        assert_eq!(
            (
                retention.readings_days,
                retention.dead_letters_days,
                retention.district_hourly_days
            ),
            (0, 3, 400),
            "0 keeps readings forever; the others default"
        );
        let rate = c.pipeline.dead_letter_rate();
        assert_eq!((rate.burst, rate.refill_per_s), (5, 1));
        assert!(c.validate().is_ok());

        let negative = Config::from_toml("[store]\ndead_letter_retention_days = -1\n");
        assert!(
            negative.unwrap_err().contains("dead_letter_retention_days"),
            "a negative retention names its field"
        );
        let mut c = Config::default();
        c.store.readings_retention_days = 40_000;
        c.pipeline.dead_letter_burst = 0;
        c.pipeline.dead_letter_refill_per_s = 0;
        c.store.background_nice = 20;
        let errors = c.validate().unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        let has = |text: &str| errors.iter().any(|e| e.contains(text));
        assert!(has("store.readings_retention_days must be at most 36500"));
        assert!(has("use 0 to keep rows forever"));
        assert!(has("pipeline.dead_letter_burst"));
        assert!(has("pipeline.dead_letter_refill_per_s"));
        assert!(has("store.background_nice must be at most 19, not 20"));
        let printed = Config::default_toml();
        for key in [
            "dead_letter_retention_days = 14",
            "readings_retention_days = 400",
            "district_hourly_retention_days = 400",
            "background_nice = 19",
            "dead_letter_burst = 20",
            "dead_letter_refill_per_s = 1",
        ] {
            assert!(printed.contains(key), "{key} not in `meterflow config`");
        }
    }
}
