//! The `meterflow` binary: `meterflow` (or `meterflow run`) runs the service on the
//! configuration given (defaults when none); `meterflow config` prints the full
//! default configuration; `meterflow check` validates a configuration file;
//! `meterflow credentials` prints the MQTT logins to provision meters with.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
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

#[derive(clap::Args, Clone, Default)]
struct RunArgs {
    /// TOML configuration file; fields not in it keep their defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// MQTT listen address (overrides mqtt.listen).
    #[arg(long)]
    mqtt: Option<SocketAddr>,
    /// HTTP listen address (overrides http.listen).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Data directory of the embedded store (overrides store.data_dir).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Store: `embedded` or `scylla://HOST:PORT[,HOST:PORT]/KEYSPACE` (overrides store.backend).
    #[arg(long)]
    store: Option<String>,
    /// Hot cache: `memory` or `redis://HOST:PORT` (overrides cache.backend).
    #[arg(long)]
    cache: Option<String>,
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
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("MF_"))
        .collect();
    if let Err(errors) = config.apply_env(&env) {
        bail!("invalid environment overrides:\n  {}", errors.join("\n  "));
    }
    if let Some(mqtt) = args.mqtt {
        config.mqtt.listen = mqtt;
    }
    if let Some(http) = args.http {
        config.http.listen = http;
    }
    if let Some(data) = &args.data {
        config.store.data_dir = data.clone();
    }
    if let Some(store) = &args.store {
        config.store.backend = store.clone();
    }
    if let Some(cache) = &args.cache {
        config.cache.backend = cache.clone();
    }
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

fn run(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("meterflow-io")
        .enable_all()
        .build()?;
    let json_logs = config.log.json;
    runtime.block_on(async {
        let service = Service::start(config).await?;
        // For a person at a console; in JSON mode every stderr line is a JSON object
        // and the "meterflow running" event already carries the addresses.
        if !json_logs {
            let tls = service
                .mqtt_tls_addr
                .map(|addr| format!(", MQTT over TLS on {addr}"))
                .unwrap_or_default();
            eprintln!(
                "meterflow: MQTT on {}{tls}, HTTP on http://{} — Ctrl-C to stop",
                service.mqtt_addr, service.http_addr
            );
        }
        wait_for_signal().await;
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
