//! `meterflow-sim`: runs a simulated meter fleet against a broker and reports what
//! was acked. Progress goes to stderr once a second; with `--json` stdout carries
//! exactly one JSON object, the [`meterflow_simulator::Report`]. Exit status: 0 when
//! every message was acked, 1 when some were not, 2 on a usage or config error.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use meterflow_simulator::config::{
    DEFAULT_ACK_TIMEOUT_MS, DEFAULT_CONNECT_CONCURRENCY, DEFAULT_INTERVAL_MS,
    DEFAULT_MESSAGES_PER_METER, DEFAULT_METERS, DEFAULT_MQTT, DEFAULT_READINGS_PER_MESSAGE,
    DEFAULT_SEED, DEFAULT_TENANT, DEFAULT_TIMEOUT_S, DEFAULT_WINDOW,
};
use meterflow_simulator::{FleetCounters, MacKeys, Report, SimConfig};

/// How often the progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Simulates a fleet of water meters publishing readings to meterflow over MQTT.
#[derive(Debug, Parser)]
#[command(name = "meterflow-sim", version)]
struct Args {
    /// Broker address, host:port.
    #[arg(long, env = "METERFLOW_SIM_MQTT", default_value = DEFAULT_MQTT)]
    mqtt: String,
    #[arg(long, default_value = DEFAULT_TENANT)]
    tenant: String,
    /// Meters (MQTT connections) in the fleet.
    #[arg(long, default_value_t = DEFAULT_METERS)]
    meters: usize,
    /// Index of the first meter (ids are m{index:06}); lets several processes split a fleet.
    #[arg(long, default_value_t = 0)]
    first_meter: usize,
    #[arg(long, default_value_t = DEFAULT_MESSAGES_PER_METER)]
    messages_per_meter: u64,
    /// Readings per message, 1..=256.
    #[arg(long, default_value_t = DEFAULT_READINGS_PER_MESSAGE)]
    readings_per_message: usize,
    /// New messages per second across the fleet (default: as fast as acks allow).
    #[arg(long)]
    rate: Option<f64>,
    /// Seed of the generated readings.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Send binary payloads (0x01 + bincode) instead of JSON.
    #[arg(long)]
    binary: bool,
    /// Most unacked messages per meter.
    #[arg(long, default_value_t = DEFAULT_WINDOW)]
    window: usize,
    /// Stop after this many seconds, acked or not.
    #[arg(long = "timeout", value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_S)]
    timeout_s: u64,
    /// Resend a message unacked for this many milliseconds.
    #[arg(long, default_value_t = DEFAULT_ACK_TIMEOUT_MS)]
    ack_timeout_ms: u64,
    /// Milliseconds between readings.
    #[arg(long, default_value_t = DEFAULT_INTERVAL_MS)]
    interval_ms: i64,
    /// Timestamp of the first reading, epoch ms (default: so the last one is just past).
    #[arg(long)]
    start_ts_ms: Option<i64>,
    #[arg(long, env = "METERFLOW_SIM_USERNAME", requires = "password")]
    username: Option<String>,
    #[arg(
        long,
        env = "METERFLOW_SIM_PASSWORD",
        requires = "username",
        hide_env_values = true
    )]
    password: Option<String>,
    /// Sign uplinks with this secret as every meter's MAC key.
    #[arg(
        long,
        env = "METERFLOW_SIM_MAC_KEY",
        hide_env_values = true,
        conflicts_with = "mac_key_per_meter"
    )]
    mac_key: Option<String>,
    /// Sign uplinks with a per-meter MAC key "{SECRET}.{meter}".
    #[arg(long, value_name = "SECRET")]
    mac_key_per_meter: Option<String>,
    /// Connection attempts in flight at once across the fleet.
    #[arg(long, default_value_t = DEFAULT_CONNECT_CONCURRENCY)]
    connect_concurrency: usize,
    /// Let each meter send as soon as it is connected, instead of waiting for the
    /// whole fleet to connect first.
    #[arg(long)]
    no_connect_first: bool,
    /// Print the effective config as JSON and exit.
    #[arg(long)]
    print_config: bool,
}

impl Args {
    fn to_config(&self) -> SimConfig {
        let mac_keys = match (&self.mac_key, &self.mac_key_per_meter) {
            (Some(secret), _) => Some(MacKeys::Shared(secret.clone())),
            (None, Some(secret)) => Some(MacKeys::PerMeter(secret.clone())),
            (None, None) => None,
        };
        SimConfig {
            mqtt: self.mqtt.clone(),
            tenant: self.tenant.clone(),
            meters: self.meters,
            first_meter: self.first_meter,
            messages_per_meter: self.messages_per_meter,
            readings_per_message: self.readings_per_message,
            rate: self.rate,
            window: self.window,
            seed: self.seed,
            binary: self.binary,
            ack_timeout_ms: self.ack_timeout_ms,
            timeout_s: self.timeout_s,
            start_ts_ms: self.start_ts_ms,
            interval_ms: self.interval_ms,
            username: self.username.clone(),
            password: self.password.clone(),
            mac_keys,
            connect_concurrency: self.connect_concurrency,
            connect_first: !self.no_connect_first,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let config = args.to_config();
    if let Err(error) = config.validate() {
        eprintln!("meterflow-sim: {error}");
        return ExitCode::from(2);
    }
    if args.print_config {
        return match serde_json::to_string_pretty(&config) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("meterflow-sim: {error}");
                ExitCode::from(2)
            }
        };
    }
    match simulate(config, args.json) {
        Ok(report) if report.unacked == 0 => ExitCode::SUCCESS,
        Ok(report) => {
            let never_sent = report.messages.saturating_sub(report.sent);
            eprintln!(
                "meterflow-sim: {} of {} messages were not acked before the run ended{}",
                report.unacked,
                report.messages,
                if never_sent > 0 {
                    format!(" ({never_sent} never sent)")
                } else {
                    String::new()
                }
            );
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("meterflow-sim: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn simulate(config: SimConfig, json: bool) -> anyhow::Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let report = runtime.block_on(async {
        let counters = Arc::new(FleetCounters::default());
        let progress = tokio::spawn(print_progress(
            Arc::clone(&counters),
            config.total_messages(),
            config.meters,
        ));
        let stop = async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("meterflow-sim: interrupted, stopping the fleet");
            } else {
                std::future::pending::<()>().await;
            }
        };
        let report = meterflow_simulator::run_with(config, counters, stop).await;
        progress.abort();
        report
    })?;
    if json {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, &report)?;
        writeln!(stdout)?;
        eprint!("{}", summary(&report));
    } else {
        print!("{}", summary(&report));
    }
    Ok(report)
}

async fn print_progress(counters: Arc<FleetCounters>, messages: u64, meters: usize) {
    let started = Instant::now();
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let mut last_acked = 0;
    loop {
        ticks.tick().await;
        let now = counters.snapshot();
        eprintln!(
            "[{:>5.0}s] sent {}/{}  acked {}  resent {}  connected {}/{}  {} msg/s",
            started.elapsed().as_secs_f64(),
            now.sent,
            messages,
            now.acked,
            now.resent,
            now.connected,
            meters,
            now.acked - last_acked,
        );
        last_acked = now.acked;
    }
}

fn summary(report: &Report) -> String {
    let latency = &report.ack_latency_ms;
    format!(
        "meters {}  messages {}  sent {}  acked {}  unacked {}  resent {}\n\
         connect {:.2}s, then send {:.2}s: {:.0} msg/s  {:.0} readings/s\n\
         ack latency ms: p50 {:.2}  p99 {:.2}  max {:.2}\n\
         reconnects {}  connection errors {}  bad acks {}\n",
        report.meters,
        report.messages,
        report.sent,
        report.acked,
        report.unacked,
        report.resent,
        report.connect_s,
        report.elapsed_s,
        report.msgs_per_s,
        report.readings_per_s,
        latency.p50,
        latency.p99,
        latency.max,
        report.reconnects,
        report.connection_errors,
        report.bad_acks,
    )
}
