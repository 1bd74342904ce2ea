//! The `meterflow` binary: `meterflow` (or `meterflow run`) runs the service on the
//! configuration given (defaults when none); `meterflow config` prints the full
//! default configuration; `meterflow check` validates a configuration file;
//! `meterflow credentials` prints the MQTT logins to provision meters with.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand};
use meterflow_ingest::config::Mode;
use meterflow_ingest::{Config, Service};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "meterflow",
    version,
    about = "Water-meter telemetry: MQTT in, durable readings, acks back"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Run(RunArgs),
    /// Print the full default configuration as TOML.
    Config,
    /// Validate a configuration file (and environment) and report every problem.
    Check(RunArgs),
    /// Print the MQTT login of meters of a tenant with a `meter_secret` (client id,
    /// username, derived password; one line each), for provisioning.
    Credentials(CredentialsArgs),
}

#[derive(clap::Args)]
struct CredentialsArgs {
    #[command(flatten)]
    config: RunArgs,
    /// The tenant (its `meter_secret` comes from the configuration).
    #[arg(long)]
    tenant: String,
    /// Meter ids; several may be given, or a file of ids with `--meters-file`.
    #[arg(long = "meter", num_args = 1..)]
    meters: Vec<String>,
    /// A file with one meter id per line.
    #[arg(long)]
    meters_file: Option<PathBuf>,
}

/// Overrides of the configuration file, each from a flag or its `MF_*` environment
/// variable (the flag wins); layers, later wins: defaults → file → these.
#[derive(clap::Args, Clone, Default)]
struct RunArgs {
    /// TOML configuration file; fields not in it keep their defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// What this process runs: embedded (everything), or in distributed mode an
    /// endpoint, a processor replica, or both meeting through Kafka (combined; overrides
    /// mode).
    #[arg(long, env = "MF_MODE", value_enum)]
    mode: Option<Mode>,
    /// Kafka bootstrap brokers, host:port[,host:port] (overrides kafka.brokers).
    #[arg(long, env = "MF_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// MQTT listen address (overrides mqtt.listen).
    #[arg(long, env = "MF_MQTT_LISTEN")]
    mqtt: Option<SocketAddr>,
    /// HTTP listen address (overrides http.listen).
    #[arg(long, env = "MF_HTTP_LISTEN")]
    http: Option<SocketAddr>,
    /// Data directory of the embedded store (overrides store.data_dir).
    #[arg(long, env = "MF_DATA_DIR")]
    data: Option<PathBuf>,
    /// Store: `embedded` or `scylla://HOST:PORT[,HOST:PORT]/KEYSPACE` (overrides store.backend).
    #[arg(long, env = "MF_STORE")]
    store: Option<String>,
    /// Hot cache: `memory` or `redis://[USER:PASSWORD@]HOST:PORT` (overrides cache.backend).
    #[arg(long, env = "MF_CACHE", hide_env_values = true)]
    cache: Option<String>,
    /// Shard workers, 0 = one per core (overrides pipeline.shards).
    #[arg(long, env = "MF_SHARDS")]
    shards: Option<usize>,
    /// Nice value 0–19 of the embedded store's background threads (overrides
    /// store.background_nice).
    #[arg(long, env = "MF_STORE_BACKGROUND_NICE")]
    store_background_nice: Option<u8>,
    /// ScyllaDB username, empty for none (overrides store.scylla.username).
    #[arg(long, env = "MF_SCYLLA_USERNAME")]
    scylla_username: Option<String>,
    /// ScyllaDB password (overrides store.scylla.password).
    #[arg(long, env = "MF_SCYLLA_PASSWORD", hide_env_values = true)]
    scylla_password: Option<String>,
    /// Log filter, e.g. `warn,meterflow=debug` (overrides log.level).
    #[arg(long, env = "MF_LOG_LEVEL")]
    log_level: Option<String>,
    /// JSON log lines: true/false, 1/0, yes/no (overrides log.json).
    #[arg(long, env = "MF_LOG_JSON", value_parser = BoolishValueParser::new(),
          num_args = 0..=1, default_missing_value = "true")]
    log_json: Option<bool>,
}

impl RunArgs {
    /// Writes every override given into `config`.
    fn apply(&self, config: &mut Config) {
        let non_empty = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
        if let Some(mode) = self.mode {
            config.mode = mode;
        }
        if let Some(brokers) = &self.kafka_brokers {
            config.kafka.brokers = brokers.clone();
        }
        if let Some(mqtt) = self.mqtt {
            config.mqtt.listen = mqtt;
        }
        if let Some(http) = self.http {
            config.http.listen = http;
        }
        if let Some(data) = &self.data {
            config.store.data_dir = data.clone();
        }
        if let Some(store) = &self.store {
            config.store.backend = store.clone();
        }
        if let Some(cache) = &self.cache {
            config.cache.backend = cache.clone();
        }
        if let Some(shards) = self.shards {
            config.pipeline.shards = shards;
        }
        if let Some(nice) = self.store_background_nice {
            config.store.background_nice = nice;
        }
        if let Some(username) = &self.scylla_username {
            config.store.scylla.username = non_empty(username);
        }
        if let Some(password) = &self.scylla_password {
            config.store.scylla.password = non_empty(password);
        }
        if let Some(level) = &self.log_level {
            config.log.level = level.clone();
        }
        if let Some(json) = self.log_json {
            config.log.json = json;
        }
    }
}

fn load(args: &RunArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Config::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    args.apply(&mut config);
    if let Err(errors) = config.validate() {
        bail!("invalid configuration:\n  {}", errors.join("\n  "));
    }
    Ok(config)
}

fn init_logging(config: &Config) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| EnvFilter::new(meterflow_ingest::config::DEFAULT_LOG_FILTER));
    // Colour only for a person at a terminal: files and log collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if config.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process, before the service starts (the
/// flag covers the process's later page faults). mimalloc asks for huge pages on its
/// arenas; each first touch of one then zeroes 2 MiB, and memory it returns to the
/// system splits them, so the pipeline's churn faulted in and zeroed huge pages
/// all the time (`clear_page_erms` ~5 % of the service's CPU in profiles at half
/// rate). Off, peak RSS at 12,000–23,000 msgs/s of `burst24` fell by a quarter and
/// the PUBACK p99 shortened, at the same CPU (bench/README.md, "Huge pages off").
/// Linux only; a refusal is logged and changes nothing else.
fn transparent_huge_pages_off() {
    #[cfg(target_os = "linux")]
    match rustix::thread::disable_transparent_huge_pages(true) {
        Ok(()) => tracing::debug!("transparent huge pages off for this process"),
        Err(error) => tracing::warn!(%error, "cannot turn transparent huge pages off"),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Config) => {
            print!("{}", Config::default_toml());
            Ok(())
        }
        Some(Command::Check(args)) => {
            load(&args)?;
            println!("configuration ok");
            Ok(())
        }
        Some(Command::Credentials(args)) => credentials(&args),
        Some(Command::Run(args)) => run(load(&args)?),
        None => run(load(&cli.run)?),
    }
}

/// Prints `client_id username password` per meter, as meters must log in.
fn credentials(args: &CredentialsArgs) -> anyhow::Result<()> {
    use meterflow_model::{MeterId, TenantId, credentials::meter_password};
    let config = load(&args.config)?;
    let tenant = config
        .effective_tenants()
        .into_iter()
        .find(|t| t.id == args.tenant)
        .with_context(|| format!("tenant {:?} is not configured", args.tenant))?;
    let Some(secret) = tenant.meter_secret.as_deref() else {
        bail!(
            "tenant {:?} has no meter_secret: its meters log in with the tenant's mqtt_password",
            tenant.id
        );
    };
    let tenant_id = TenantId::try_from(tenant.id.as_str())
        .map_err(|e| anyhow::anyhow!("tenant id {:?}: {e}", tenant.id))?;
    let mut meters = args.meters.clone();
    if let Some(file) = &args.meters_file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        meters.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    if meters.is_empty() {
        bail!("name meters with --meter ID… or --meters-file FILE");
    }
    for meter in meters {
        let meter_id = MeterId::try_from(meter.as_str())
            .map_err(|e| anyhow::anyhow!("meter id {meter:?}: {e}"))?;
        println!(
            "{tenant_id}.{meter_id} {tenant_id} {}",
            meter_password(secret, &tenant_id, &meter_id)
        );
    }
    Ok(())
}

/// Worker threads of the process's one tokio runtime: the MQTT endpoint, HTTP, and the
/// ScyllaDB and Redis clients. Their work is socket I/O and framing; the CPU-heavy
/// stages (shards, sink) are OS threads of their own, so two workers keep up and
/// leave the cores to them.
const RUNTIME_WORKER_THREADS: usize = 2;

/// Runs the service on the process's only tokio runtime (threads `meterflow-io`): the
/// store and cache clients are handed its handle and start none of their own.
fn run(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    transparent_huge_pages_off();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_WORKER_THREADS)
        .thread_name("meterflow-io")
        .enable_all()
        .build()?;
    let json_logs = config.log.json;
    let mode = config.mode.as_str();
    runtime.block_on(async {
        let mut service = Service::start(config).await?;
        // For a person at a console; in JSON mode every stderr line is a JSON object
        // and the "meterflow running" event already carries the addresses.
        if !json_logs {
            let mqtt = service
                .mqtt_addr
                .map(|addr| format!("MQTT on {addr}, "))
                .unwrap_or_default();
            let tls = service
                .mqtt_tls_addr
                .map(|addr| format!("MQTT over TLS on {addr}, "))
                .unwrap_or_default();
            eprintln!(
                "meterflow ({mode}): {mqtt}{tls}HTTP on http://{} — Ctrl-C to stop",
                service.http_addr
            );
        }
        let refused = tokio::select! {
            () = wait_for_signal() => None,
            error = service.store_refused() => Some(error),
        };
        if let Some(error) = refused {
            // Nothing more can be made durable; what is unacked is resent by meters to
            // the restarted service.
            bail!("stopped: the store refused a write for good: {error}");
        }
        tracing::info!("stopping: sealing and storing what is in flight");
        tokio::task::spawn_blocking(move || service.shutdown()).await?;
        Ok(())
    })
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Config, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("meterflow").chain(args.iter().copied()))?;
        let mut config = Config::default();
        cli.run.apply(&mut config);
        Ok(config)
    }

    #[test]
    fn overrides_apply_and_bad_values_are_refused() {
        let config = parsed(&[
            "--mqtt",
            "127.0.0.1:1999",
            "--shards",
            "3",
            "--scylla-username",
            "",
            "--log-json",
            "--store-background-nice",
            "0",
        ])
        .unwrap();
        assert_eq!(config.mqtt.listen.port(), 1999);
        assert_eq!(config.pipeline.shards, 3);
        assert_eq!(config.store.scylla.username, None);
        assert!(config.log.json);
        assert_eq!(config.store.background_nice, 0);
        assert!(!parsed(&["--log-json", "no"]).unwrap().log.json);
        let error = parsed(&["--shards", "x"]).unwrap_err().to_string();
        assert!(error.contains("--shards"), "{error}");
        let error = parsed(&["--store-background-nice", "high"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--store-background-nice"), "{error}");
    }

    #[test]
    fn every_override_names_its_environment_variable() {
        use clap::CommandFactory;
        let command = Cli::command();
        let envs: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        for name in [
            "MF_MQTT_LISTEN",
            "MF_HTTP_LISTEN",
            "MF_DATA_DIR",
            "MF_STORE",
            "MF_CACHE",
            "MF_SHARDS",
            "MF_SCYLLA_USERNAME",
            "MF_SCYLLA_PASSWORD",
            "MF_LOG_LEVEL",
            "MF_LOG_JSON",
            "MF_MODE",
            "MF_KAFKA_BROKERS",
            "MF_STORE_BACKGROUND_NICE",
        ] {
            assert!(
                envs.iter().any(|e| e == name),
                "{name} missing from {envs:?}"
            );
            assert!(
                Config::default_toml().contains(name),
                "{name} not in `meterflow config`"
            );
        }
    }
}
