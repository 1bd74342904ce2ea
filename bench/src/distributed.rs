//! `meterflow-bench distributed`: embedded vs distributed mode on this machine, the
//! same fleet, the same backends (Cassandra from `scripts/cassandra`, Redis from
//! `scripts/redis`; Kafka from `scripts/kafka` for the distributed variant):
//!
//! - `embedded`: one `meterflow run` on Cassandra and Redis;
//! - `distributed`: one `--mode processor` and one `--mode endpoint` around a fresh
//!   Kafka topic of 4 partitions.
//!
//! Each variant gets a closed loop (every meter sends as fast as its PUBACKs come
//! back) and then an open loop at half the closed loop's stored rate, each on fresh
//! meters. Figures per loop: messages and readings stored per second (until the last
//! one is in the store, not only PUBACKed — in distributed mode PUBACK means "in the
//! log"), PUBACK p50/p99 (the simulator's), publish → stored p99 (the pipeline's
//! `meterflow_publish_to_durable_seconds`, from the endpoint's receipt), the largest
//! consumer lag seen (appended − consumed, sampled every 200 ms), and CPU per message
//! and per reading of the meterflow processes, and of Kafka and Cassandra. One JSON line
//! per run goes to `bench/results/distributed.jsonl`.
//!
//! The machine has two cores shared by every process here (simulator, meterflow,
//! Kafka, Cassandra, Redis): the figures compare the two modes on one box; they are not
//! what either does on its own hardware.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::loadgen::{self, SimFleet, SimSettings};
use crate::procfs;
use crate::prom::Histogram;
use crate::record;
use crate::targets::{MeterflowOptions, Target};

/// Partitions of the bench's topic: more than the one processor needs, as a
/// deployment would have.
const PARTITIONS: u32 = 4;
/// How long the pipeline gets, after the last PUBACK, to store everything.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
const STORED: &str = "meterflow_messages_total";
const E2E: &str = "meterflow_publish_to_durable_seconds";

/// What `distributed` is asked to do.
pub(crate) struct DistributedSettings {
    pub meterflow: PathBuf,
    pub sim: PathBuf,
    pub meters: usize,
    pub messages_per_meter: u64,
    pub readings_per_message: usize,
    pub half_rate_secs: f64,
}

#[derive(Debug, Serialize)]
struct Record {
    #[serde(flatten)]
    run: record::RunHeader,
    meters: usize,
    readings_per_message: usize,
    partitions: u32,
    variants: Vec<VariantFigures>,
}

#[derive(Debug, Serialize)]
struct VariantFigures {
    variant: &'static str,
    closed_loop: LoopFigures,
    half_rate: LoopFigures,
}

#[derive(Debug, Serialize)]
struct LoopFigures {
    messages: u64,
    /// Open loop: the rate asked for (messages/s); closed loop: none.
    offered_msgs_per_s: Option<f64>,
    /// Messages stored per second, from the first publish to the last store write.
    stored_msgs_per_s: f64,
    stored_readings_per_s: f64,
    puback_p50_ms: f64,
    puback_p99_ms: f64,
    publish_to_stored_p99_ms: Option<f64>,
    max_consumer_lag: f64,
    meterflow_cpu_us_per_message: f64,
    meterflow_cpu_us_per_reading: f64,
    kafka_cpu_us_per_message: Option<f64>,
    cassandra_cpu_us_per_message: Option<f64>,
}

/// The processes of one variant.
struct Variant {
    name: &'static str,
    /// Where meters connect.
    endpoint: usize,
    /// The processes that store (the pipeline's metrics).
    stores: usize,
    targets: Vec<Target>,
}

impl Variant {
    fn start(
        name: &'static str,
        settings: &DistributedSettings,
        run: &str,
    ) -> anyhow::Result<Variant> {
        let keyspace = format!("mf_bench_{name}_{run}");
        let config = format!(
            "[log]\nlevel = \"info\"\n[store]\nbackend = \"scylla://127.0.0.1:9042/{keyspace}\"\n\
             [store.scylla]\nreplication_factor = 1\n[cache]\nbackend = \"redis://127.0.0.1:6390\"\n\
             [cache.redis]\nkey_prefix = \"{keyspace}\"\n\
             [kafka]\ntopic = \"{keyspace}\"\npartitions = {PARTITIONS}\ngroup_id = \"{keyspace}\"\n"
        );
        let options = |mode: &str| MeterflowOptions {
            binary: settings.meterflow.clone(),
            config_toml: config.clone(),
            extra_args: vec!["--mode".into(), mode.into()],
        };
        Ok(match name {
            "embedded" => Variant {
                name,
                endpoint: 0,
                stores: 0,
                targets: vec![Target::start_meterflow(&options("embedded"))?],
            },
            _ => {
                // The processor first: it applies the schema the endpoint then reads.
                let processor = Target::start_meterflow(&options("processor"))
                    .context("starting the processor (a meterflow built with --features meterflow-ingest/kafka?)")?;
                let endpoint = Target::start_meterflow(&options("endpoint"))?;
                Variant {
                    name,
                    endpoint: 1,
                    stores: 0,
                    targets: vec![processor, endpoint],
                }
            }
        })
    }

    /// Messages stored so far, and the publish → stored histogram.
    fn stored(&self) -> anyhow::Result<(f64, Histogram)> {
        let scrape = self.targets[self.stores]
            .scrape()?
            .context("the processor serves metrics")?;
        Ok((
            scrape.sum(STORED, &[("outcome", "stored")]),
            scrape.histogram(E2E).unwrap_or_default(),
        ))
    }

    /// Uplinks appended to the log and not yet read from it (0 in embedded mode).
    fn lag(&self) -> f64 {
        if self.targets.len() < 2 {
            return 0.0;
        }
        let read = |target: &Target, name: &str| {
            target
                .scrape()
                .ok()
                .flatten()
                .map_or(0.0, |s| s.sum(name, &[]))
        };
        read(&self.targets[self.endpoint], "meterflow_log_appended_total")
            - read(&self.targets[self.stores], "meterflow_log_consumed_total")
    }

    fn cpu_seconds(&self) -> f64 {
        self.targets
            .iter()
            .filter_map(|t| procfs::cpu_seconds(t.pid()))
            .sum()
    }

    /// One loop of the fleet `sim` against this variant.
    fn measure(
        &self,
        sim: &SimSettings,
        binary: &Path,
        logs: &Path,
    ) -> anyhow::Result<LoopFigures> {
        let kafka = procfs::script_server_pid("kafka", "MF_KAFKA_PORT", 9092);
        let cassandra = procfs::script_server_pid("cassandra", "MF_CASSANDRA_PORT", 9042);
        let server_cpu = |pid: Option<u32>| pid.and_then(procfs::cpu_seconds);
        let (stored_before, e2e_before) = self.stored()?;
        let cpu_before = self.cpu_seconds();
        let (kafka_before, cassandra_before) = (server_cpu(kafka), server_cpu(cassandra));
        let mut fleet = SimFleet::spawn(binary, std::slice::from_ref(sim), logs)?;
        let started = fleet.started;
        let mut max_lag: f64 = 0.0;
        while !fleet.finished() {
            fleet.poll_cpu();
            max_lag = max_lag.max(self.lag());
            std::thread::sleep(SAMPLE_EVERY);
        }
        let outcome = loadgen::merge(&fleet.wait(Duration::from_secs(30))?);
        let messages = outcome.report.acked;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let (stored_after, e2e_after) = loop {
            max_lag = max_lag.max(self.lag());
            let (stored, e2e) = self.stored()?;
            if stored - stored_before >= messages as f64 {
                break (stored, e2e);
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: {} of {messages} messages stored {DRAIN_TIMEOUT:?} after the last PUBACK",
                    self.name,
                    stored - stored_before
                );
            }
            std::thread::sleep(SAMPLE_EVERY);
        };
        let elapsed = started.elapsed().as_secs_f64();
        let per_message = |seconds: f64| seconds * 1e6 / messages.max(1) as f64;
        let cpu = self.cpu_seconds() - cpu_before;
        let readings = (messages as usize * sim.readings_per_message) as f64;
        let delta =
            |before: Option<f64>, pid: Option<u32>| Some(per_message(server_cpu(pid)? - before?));
        let puback = outcome.puback_ms.unwrap_or_default();
        Ok(LoopFigures {
            messages,
            offered_msgs_per_s: sim.rate,
            stored_msgs_per_s: (stored_after - stored_before) / elapsed,
            stored_readings_per_s: readings / elapsed,
            puback_p50_ms: puback.p50,
            puback_p99_ms: puback.p99,
            publish_to_stored_p99_ms: e2e_after
                .since(Some(&e2e_before))
                .quantile(0.99)
                .map(|s| s * 1e3),
            max_consumer_lag: max_lag,
            meterflow_cpu_us_per_message: per_message(cpu),
            meterflow_cpu_us_per_reading: cpu * 1e6 / readings.max(1.0),
            kafka_cpu_us_per_message: delta(kafka_before, kafka),
            cassandra_cpu_us_per_message: delta(cassandra_before, cassandra),
        })
    }
}

/// Runs both variants and records them under `results`.
pub(crate) fn run(settings: &DistributedSettings, results: &Path) -> anyhow::Result<()> {
    for (script, what) in [
        ("cassandra", "Cassandra"),
        ("redis", "Redis"),
        ("kafka", "Kafka"),
    ] {
        let path = crate::workspace_dir().join("scripts").join(script);
        let up = std::process::Command::new(&path)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success());
        if !up {
            bail!(
                "{what} is not running: start it with `{} start`",
                path.display()
            );
        }
    }
    let logs = tempfile::Builder::new()
        .prefix("meterflow-bench-dist-")
        .tempdir()?;
    let run = record::now_rfc3339()
        .chars()
        .filter(char::is_ascii_digit)
        .collect::<String>();
    let mut machine = record::Machine::probe(crate::targets::raise_open_file_limit(), true);
    let mut variants = Vec::new();
    for name in ["embedded", "distributed"] {
        let variant = Variant::start(name, settings, &run)?;
        let mqtt = variant.targets[variant.endpoint].mqtt;
        let closed = SimSettings {
            mqtt,
            meters: settings.meters,
            first_meter: 0,
            messages_per_meter: settings.messages_per_meter,
            readings_per_message: settings.readings_per_message,
            rate: None,
            window: 8,
            timeout_s: 300,
            ack_timeout_ms: 10_000,
            connect_concurrency: 64,
            binary: false,
            puback_not_durable: false,
            no_ack_topic: true,
        };
        println!(
            "== {name}: closed loop, {} meters × {} messages",
            settings.meters, settings.messages_per_meter
        );
        let closed_loop = variant.measure(&closed, &settings.sim, logs.path())?;
        println!("   {closed_loop:?}");
        let rate = closed_loop.stored_msgs_per_s / 2.0;
        let half = SimSettings {
            first_meter: settings.meters,
            messages_per_meter: ((rate * settings.half_rate_secs) / settings.meters as f64)
                .ceil()
                .max(1.0) as u64,
            rate: Some(rate),
            ..closed
        };
        println!("== {name}: open loop at {rate:.0} msgs/s");
        let half_rate = variant.measure(&half, &settings.sim, logs.path())?;
        println!("   {half_rate:?}");
        for target in variant.targets {
            target.stop()?;
        }
        variants.push(VariantFigures {
            variant: name,
            closed_loop,
            half_rate,
        });
    }
    machine.loadavg_end = record::loadavg();
    let record = Record {
        run: record::RunHeader::now("distributed", machine),
        meters: settings.meters,
        readings_per_message: settings.readings_per_message,
        partitions: PARTITIONS,
        variants,
    };
    record::append(results, "distributed", &record)?;
    println!("{}", serde_json::to_string_pretty(&record)?);
    Ok(())
}
