//! `meterflow-bench mqtt-floor`: what the MQTT endpoint alone costs on this machine,
//! so that the service's CPU per message can be read against the part no pipeline
//! behind an endpoint avoids — the kernel's TCP work and MQTT framing for each QoS 1
//! publish and its PUBACK.
//!
//! The endpoint is Mosquitto with no subscriber: it reads each publish, answers its
//! PUBACK and discards it (no persistence, nothing routed). The load is the
//! simulator's `burst24` shape — [`METERS`] meters, 24 fifteen-minute reads a JSON
//! message — at fixed open-loop rates, each for `secs` seconds, with
//! `--no-ack-topic`, so a PUBACK settles a message (here it means only "received").
//! Each rate starts a fresh broker.
//!
//! Reported per rate: msgs/s achieved, the broker's CPU µs per message and per
//! reading, the generator's CPU µs per message, and PUBACK latency at the meters.
//! CPU is `/proc/<pid>/stat` over the simulator's whole run (its connects and
//! disconnects included, a few hundred milliseconds of a run of `secs`). One JSON
//! line per run goes to `bench/results/mqtt-floor.jsonl`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meterflow_simulator::LatencySummary;
use serde::Serialize;

use crate::loadgen::{self, SimFleet, SimSettings};
use crate::procfs;
use crate::record;
use crate::targets::{self, Peer, PeerOptions, Target, TargetKind};

/// Meters of the `burst24` scenario.
const METERS: usize = 1_000;
/// Readings per message of the `burst24` scenario.
const READINGS_PER_MESSAGE: usize = 24;
/// How often the generator's CPU is read while it runs (its `/proc` entry is gone
/// once it is reaped).
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// What `mqtt-floor` is asked to do.
pub(crate) struct FloorSettings {
    pub mosquitto: PathBuf,
    pub sim: PathBuf,
    /// Offered msgs/s, one measurement each, in this order.
    pub rates: Vec<f64>,
    /// Paced seconds at each rate.
    pub secs: f64,
}

/// One rate's figures.
#[derive(Debug, Serialize)]
struct RateFigures {
    offered_msgs_per_s: f64,
    achieved_msgs_per_s: f64,
    acked: u64,
    unacked: u64,
    broker_cpu_us_per_msg: f64,
    broker_cpu_us_per_reading: f64,
    generator_cpu_us_per_msg: f64,
    puback_ms: LatencySummary,
}

/// One JSON line of `mqtt-floor.jsonl`.
#[derive(Debug, Serialize)]
struct FloorRecord {
    #[serde(flatten)]
    run: record::RunHeader,
    meters: usize,
    readings_per_message: usize,
    rates: Vec<RateFigures>,
}

/// Measures every rate of `settings` and records them under `results`.
pub(crate) fn run(settings: &FloorSettings, results: &Path) -> anyhow::Result<()> {
    let mut machine = record::Machine::probe(targets::raise_open_file_limit(), true);
    let logs = tempfile::tempdir()?;
    let mut rates = Vec::with_capacity(settings.rates.len());
    for &rate in &settings.rates {
        let figures = measure(settings, rate, logs.path())?;
        println!(
            "{rate:>8.0} msgs/s offered: {:>8.0} achieved, broker {:>5.2} µs/msg = {:.3} µs/reading, generator {:>5.2} µs/msg, PUBACK p50 / p99 {:.1} / {:.1} ms",
            figures.achieved_msgs_per_s,
            figures.broker_cpu_us_per_msg,
            figures.broker_cpu_us_per_reading,
            figures.generator_cpu_us_per_msg,
            figures.puback_ms.p50,
            figures.puback_ms.p99,
        );
        rates.push(figures);
    }
    machine.loadavg_end = record::loadavg();
    record::append(
        results,
        "mqtt-floor",
        &FloorRecord {
            run: record::RunHeader::now("mqtt-floor", machine),
            meters: METERS,
            readings_per_message: READINGS_PER_MESSAGE,
            rates,
        },
    )
}

/// One rate against a fresh broker.
fn measure(settings: &FloorSettings, rate: f64, logs: &Path) -> anyhow::Result<RateFigures> {
    let broker = Target::start_peer(
        &Peer {
            kind: TargetKind::Mosquitto,
            binary: settings.mosquitto.clone(),
        },
        PeerOptions {
            nodelay: true,
            ackers: 0,
        },
    )?;
    let sim = SimSettings {
        mqtt: broker.mqtt,
        meters: METERS,
        first_meter: 0,
        messages_per_meter: loadgen::messages_per_meter(rate, settings.secs, METERS),
        readings_per_message: READINGS_PER_MESSAGE,
        rate: Some(rate),
        window: 8,
        timeout_s: (settings.secs * 3.0).ceil() as u64 + 30,
        ack_timeout_ms: 10_000,
        connect_concurrency: 64,
        binary: false,
        puback_not_durable: false,
        no_ack_topic: true,
    };
    let broker_before = procfs::cpu_seconds(broker.pid()).unwrap_or(0.0);
    let mut fleet = SimFleet::spawn(&settings.sim, std::slice::from_ref(&sim), logs)?;
    while !fleet.finished() {
        fleet.poll_cpu();
        std::thread::sleep(SAMPLE_EVERY);
    }
    let generator_cpu = fleet.cpu_seconds();
    let broker_cpu = procfs::cpu_seconds(broker.pid()).unwrap_or(0.0) - broker_before;
    let outcome = loadgen::merge(&fleet.wait(Duration::from_secs(30))?);
    broker.stop()?;
    let acked = outcome.report.acked;
    let per_message = |cpu_s: f64| cpu_s * 1e6 / acked.max(1) as f64;
    Ok(RateFigures {
        offered_msgs_per_s: rate,
        achieved_msgs_per_s: outcome.report.msgs_per_s,
        acked,
        unacked: outcome.report.unacked,
        broker_cpu_us_per_msg: per_message(broker_cpu),
        broker_cpu_us_per_reading: per_message(broker_cpu) / READINGS_PER_MESSAGE as f64,
        generator_cpu_us_per_msg: per_message(generator_cpu),
        puback_ms: outcome.puback_ms.unwrap_or_default(),
    })
}
