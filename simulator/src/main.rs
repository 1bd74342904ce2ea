//! `meterflow-sim`: runs a simulated meter fleet against a broker and reports what
//! was acked. Progress goes to stderr (a bar on a terminal, a line every few seconds
//! otherwise); with `--json` stdout carries exactly one JSON object, the
//! [`meterflow_simulator::Report`]. `--ground-truth FILE` writes what every meter
//! sends and which alerts it should raise; `--print-registry` prints the meterflow
//! configuration that knows the fleet. Exit status: 0 when every message was acked,
//! 1 when some were not, 2 on a usage or config error.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use meterflow_model::MeterSize;
use meterflow_simulator::config::{
    DEFAULT_ACK_TIMEOUT_MS, DEFAULT_CONNECT_CONCURRENCY, DEFAULT_INTERVAL_MS,
    DEFAULT_MESSAGES_PER_METER, DEFAULT_METERS, DEFAULT_MQTT, DEFAULT_READINGS_PER_MESSAGE,
    DEFAULT_SEED, DEFAULT_TENANT, DEFAULT_TIMEOUT_S, DEFAULT_WINDOW,
};
use meterflow_simulator::fleet::registry;
use meterflow_simulator::{
    FleetCounters, FleetFile, MacKeys, Report, ScenarioRates, SimConfig, ground_truth,
};

/// How often the progress bar is refreshed on a terminal.
const PROGRESS_TICK: Duration = Duration::from_millis(250);
/// How often a progress line is printed when stderr is not a terminal (logs).
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(5);

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
    /// The tenant's meter_secret: every meter logs in with username = tenant id and
    /// its own password derived from SECRET (HMAC-SHA256 of "{tenant}.{meter}").
    #[arg(
        long,
        value_name = "SECRET",
        env = "METERFLOW_SIM_METER_SECRET",
        hide_env_values = true,
        conflicts_with_all = ["username", "password"]
    )]
    meter_secret: Option<String>,
    /// Do not subscribe to the ack topic: meters rely on PUBACKs alone, as a standard
    /// MQTT device does (meterflow PUBACKs a QoS 1 uplink once it is durable).
    #[arg(long, conflicts_with = "puback_not_durable")]
    no_ack_topic: bool,
    /// The broker's PUBACK only means "received" (a plain broker, e.g. mosquitto, with
    /// something else acking on the ack topic): only ack-topic acks settle messages.
    #[arg(long)]
    puback_not_durable: bool,
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
    /// Ramp: first connections per second across the fleet (default: as fast as
    /// --connect-concurrency allows).
    #[arg(long)]
    connect_rate: Option<f64>,
    /// Let each meter send as soon as it is connected, instead of waiting for the
    /// whole fleet to connect first.
    #[arg(long)]
    no_connect_first: bool,
    /// District metered areas to spread the meters over, comma-separated.
    #[arg(long, value_delimiter = ',')]
    districts: Vec<String>,
    /// Meter size mix as weights, e.g. dn15=90,dn20=8,dn40=2 (default: all dn15).
    #[arg(long, value_parser = parse_sizes)]
    sizes: Option<BTreeMap<MeterSize, u32>>,
    /// Injected scenarios, percent of meters (leak, burst, backflow, tamper,
    /// low_battery, comms_loss, rollover) or of messages (duplicates, out_of_order,
    /// malformed), and reconnect storms (storm_every_s, storm_meters), e.g.
    /// "leak=1,burst=0.5,duplicates=2,storm_every_s=10,storm_meters=20".
    #[arg(long)]
    scenarios: Option<ScenarioRates>,
    /// A fleet file (TOML: [fleet] settings and [[tenants]]); it replaces the
    /// fleet-shaping flags above.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "tenant", "meters", "first_meter", "messages_per_meter", "readings_per_message",
        "rate", "districts", "sizes", "scenarios", "username", "password", "meter_secret",
    ])]
    fleet: Option<PathBuf>,
    /// Write the ground truth (per meter: readings, usage, faults, expected alerts)
    /// to this file as JSON.
    #[arg(long, value_name = "FILE")]
    ground_truth: Option<PathBuf>,
    /// Print the meterflow configuration (tenants, meter sizes, districts) that
    /// knows this fleet, and exit.
    #[arg(long)]
    print_registry: bool,
    /// Print the effective config as JSON and exit.
    #[arg(long)]
    print_config: bool,
}

fn parse_sizes(text: &str) -> Result<BTreeMap<MeterSize, u32>, String> {
    let mut sizes = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (size, weight) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not size=weight (e.g. dn20=8)"))?;
        let size: MeterSize = serde_json::from_value(serde_json::json!(size.trim()))
            .map_err(|_| format!("{size:?} is not a meter size (dn15, dn20, … dn150)"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| format!("{pair:?}: the weight must be a whole number"))?;
        sizes.insert(size, weight);
    }
    Ok(sizes)
}

impl Args {
    /// The fleet's parts: the fleet file's tenants, or one part from the flags.
    fn to_parts(&self) -> anyhow::Result<Vec<SimConfig>> {
        let Some(path) = &self.fleet else {
            let config = self.to_config();
            config.validate()?;
            return Ok(vec![config]);
        };
        let mut file = FleetFile::load(path)?;
        // The broker and the output-side settings may still come from the flags.
        if self.mqtt != DEFAULT_MQTT {
            file.fleet.mqtt.clone_from(&self.mqtt);
        }
        // So may what settles a message: it is about the broker, not the fleet.
        if self.no_ack_topic {
            file.fleet.ack_topic = false;
        }
        if self.puback_not_durable {
            file.fleet.puback_durable = false;
        }
        Ok(file.parts()?)
    }

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
            meter_secret: self.meter_secret.clone(),
            ack_topic: !self.no_ack_topic,
            puback_durable: !self.puback_not_durable,
            mac_keys,
            connect_concurrency: self.connect_concurrency,
            connect_rate: self.connect_rate,
            connect_first: !self.no_connect_first,
            districts: self.districts.clone(),
            sizes: self.sizes.clone().unwrap_or_default(),
            scenarios: self.scenarios.clone().unwrap_or_default(),
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
    let parts = match args.to_parts() {
        Ok(parts) => parts,
        Err(error) => {
            eprintln!("meterflow-sim: {error:#}");
            return ExitCode::from(2);
        }
    };
    // One clock reading for every part, the ground truth and the run.
    let now_ms = meterflow_simulator::config::now_epoch_ms();
    let parts: Vec<SimConfig> = parts.into_iter().map(|p| p.resolved(now_ms)).collect();
    if args.print_config {
        return print_json(&parts);
    }
    if args.print_registry {
        print!("{}", registry(&parts).to_toml());
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &args.ground_truth
        && let Err(error) = write_ground_truth(path, &parts)
    {
        eprintln!("meterflow-sim: {error:#}");
        return ExitCode::from(2);
    }
    match simulate(parts, args.json) {
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

/// One config as an object, several (a fleet file) as an array.
fn print_json(parts: &[SimConfig]) -> ExitCode {
    let json = match parts {
        [single] => serde_json::to_string_pretty(single),
        _ => serde_json::to_string_pretty(parts),
    };
    match json {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("meterflow-sim: {error}");
            ExitCode::from(2)
        }
    }
}

fn write_ground_truth(path: &std::path::Path, parts: &[SimConfig]) -> anyhow::Result<()> {
    let truth = ground_truth(parts);
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    serde_json::to_writer(&mut out, &truth)?;
    writeln!(out)?;
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    let totals = &truth.totals;
    eprintln!(
        "ground truth: {} meters, {} messages, {} readings, {} L; scenarios {:?}; expected alerts {:?} -> {}",
        totals.meters,
        totals.messages,
        totals.readings,
        totals.usage_l,
        totals.scenarios,
        totals.expected_alerts,
        path.display()
    );
    Ok(())
}

fn simulate(parts: Vec<SimConfig>, json: bool) -> anyhow::Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let meters = parts.iter().map(|p| p.meters).sum();
    let messages = parts.iter().map(SimConfig::total_messages).sum();
    let report = runtime.block_on(async {
        let counters = Arc::new(FleetCounters::default());
        let progress = tokio::spawn(show_progress(Arc::clone(&counters), messages, meters));
        let stop = async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("meterflow-sim: interrupted, stopping the fleet");
            } else {
                std::future::pending::<()>().await;
            }
        };
        let report = meterflow_simulator::run_fleet(parts, counters, stop).await;
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

/// A progress bar on a terminal; a plain line every few seconds in a log.
async fn show_progress(counters: Arc<FleetCounters>, messages: u64, meters: usize) {
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        indicatif::ProgressBar::new(messages)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} acked, eta {eta}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let every = if terminal {
        PROGRESS_TICK
    } else {
        PROGRESS_LINE_EVERY
    };
    let started = Instant::now();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let (mut last_acked, mut last_at) = (0, Instant::now());
    loop {
        ticks.tick().await;
        let now = counters.snapshot();
        let rate = (now.acked - last_acked) as f64 / last_at.elapsed().as_secs_f64().max(1e-3);
        (last_acked, last_at) = (now.acked, Instant::now());
        let status = format!(
            "{rate:.0} msg/s  sent {}  resent {}  connected {}/{meters}",
            now.sent, now.resent, now.connected,
        );
        if terminal {
            bar.set_position(now.acked);
            bar.set_message(status);
        } else {
            eprintln!(
                "[{:>5.0}s] acked {}/{messages}  {status}",
                started.elapsed().as_secs_f64(),
                now.acked,
            );
        }
    }
}

fn summary(report: &Report) -> String {
    let latency = &report.ack_latency_ms;
    let puback = &report.puback_latency_ms;
    format!(
        "meters {}  messages {}  sent {}  acked {}  unacked {}  resent {}\n\
         connect {:.2}s, then send {:.2}s: {:.0} msg/s  {:.0} readings/s\n\
         ack latency ms: p50 {:.2}  p99 {:.2}  max {:.2}\n\
         puback latency ms: p50 {:.2}  p99 {:.2}  max {:.2}\n\
         reconnects {}  connection errors {}  bad acks {}\n\
         injected: duplicates {}  out-of-order {}  malformed {}  storms {} ({} disconnects)\n",
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
        puback.p50,
        puback.p99,
        puback.max,
        report.reconnects,
        report.connection_errors,
        report.bad_acks,
        report.duplicates,
        report.out_of_order,
        report.malformed,
        report.storms,
        report.storm_disconnects,
    )
}
