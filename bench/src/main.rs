//! `meterflow-bench`: end-to-end scenarios against a real `meterflow` process and
//! peer baselines (Mosquitto and rumqttd, each with a counting acker), driven by
//! `meterflow-sim`.
//!
//! ```sh
//! cargo build --release --bin meterflow --bin meterflow-sim
//! cargo build --release -p meterflow-bench                  # the harness and rumqttd-peer
//! cargo run --release -p meterflow-bench -- single        # or burst24, connections, cassandra, all
//! cargo run --release -p meterflow-bench -- single --quick  # seconds, for development
//! cargo run --release -p meterflow-bench -- path/to/case.toml
//! ```
//!
//! Scenarios are files (`bench/scenarios/*.toml`, see [`scenario`]): a simulator config
//! paired with a meterflow config. Results go to `bench/results/{scenario}.jsonl` (one
//! JSON line per run), the plot to `bench/results/{scenario}.svg`, and a summary of the
//! latest runs into the marked section of `bench/README.md`.
//!
//! Modules: [`scenario`] (scenario files), [`procfs`] (CPU/RSS/connections from
//! /proc), [`prom`] (Prometheus text), [`http`] (a tiny GET), [`mqtt_wire`] +
//! [`peer_acker`] (the peers' subscriber), [`targets`] (meterflow and the peer
//! brokers' processes; the rumqttd peer is `src/bin/rumqttd-peer.rs`), [`loadgen`] (simulator
//! processes), [`sustain`] (the sustainability rule), [`sweep`] (throughput
//! scenarios), [`connections`] (the connections scenario), [`record`] (JSON lines),
//! [`readme`] (the README summary) and [`plot`] (the plot, with plotters).
//!
//! Everything runs on 127.0.0.1, every load is bounded in messages and time, and
//! every process the harness starts is stopped by pid when it is done.

mod connections;
mod cql_ceiling;
mod distributed;
mod http;
mod loadgen;
mod mqtt_floor;
mod mqtt_wire;
mod peer_acker;
mod plot;
mod procfs;
mod prom;
mod readme;
mod record;
mod scenario;
mod sustain;
mod sweep;
mod targets;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use clap::Parser;
use plotters::style::RGBColor;

use crate::connections::ConnectionsSettings;
use crate::loadgen::SimFeatures;
use crate::record::{BinaryInfo, ConnectionsRecord, Machine, Revision, ThroughputRecord};
use crate::scenario::{ConnectionsFile, ScenarioFile, ThroughputFile};
use crate::sustain::Criteria;
use crate::sweep::{Env, SweepSettings};
use crate::targets::{MeterflowOptions, Peer, PeerOptions, TargetKind};

/// Descriptors kept free below the hard limit in the `connections` scenario: the
/// target's own files (store, listeners, HTTP) and the harness's scrapes. Above
/// meterflow's own reserve (512: it caps `mqtt.max_connections` at the limit less
/// that), so every system is asked for the same number of meters and can hold them.
const FD_HEADROOM: usize = 600;
/// The scenarios `all` runs, in order.
const ALL: [&str; 4] = ["single", "burst24", "connections", "cassandra"];

/// End-to-end benchmarks of meterflow against Mosquitto and rumqttd baselines.
#[derive(Debug, Parser)]
#[command(name = "meterflow-bench")]
struct Args {
    /// A scenario of bench/scenarios (single, burst24, connections, cassandra), a path
    /// to a scenario .toml, `all`, `readme` (only re-render the README summary), or
    /// `cql-ceiling` (the CQL server's own write ceiling for the readings table, no
    /// meterflow in the path; see src/cql_ceiling.rs), `mqtt-floor` (what a bare MQTT
    /// endpoint costs here: Mosquitto with no subscriber under burst24's load; see
    /// src/mqtt_floor.rs), or `distributed` (embedded vs distributed mode on
    /// Cassandra, Redis and Kafka; see src/distributed.rs).
    scenario: String,
    /// `mqtt-floor`: the offered rates, msgs/s, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "12000,23000,40000")]
    floor_rates: Vec<f64>,
    /// `mqtt-floor`: paced seconds at each rate.
    #[arg(long, default_value_t = 20.0)]
    floor_secs: f64,
    /// `cql-ceiling`: the CQL node.
    #[arg(long, default_value = "127.0.0.1:9042")]
    cql_node: String,
    /// `distributed`: messages per meter of the closed loop.
    #[arg(long, default_value_t = 40)]
    dist_messages: u64,
    /// `distributed`: seconds of the open loop at half the closed loop's rate.
    #[arg(long, default_value_t = 20.0)]
    dist_half_secs: f64,
    /// `cql-ceiling`: rows per write shape.
    #[arg(long, default_value_t = 480_000)]
    cql_rows: usize,
    /// `cql-ceiling`: requests in flight.
    #[arg(long, default_value_t = 64)]
    cql_concurrency: usize,
    /// `cql-ceiling`: the most seconds per write shape.
    #[arg(long, default_value_t = 60.0)]
    cql_secs: f64,
    /// The meterflow binary (default: target/release/meterflow of this workspace).
    #[arg(long)]
    meterflow: Option<PathBuf>,
    /// The meterflow-sim binary (default: next to meterflow).
    #[arg(long)]
    sim: Option<PathBuf>,
    /// The mosquitto binary (default: $MOSQUITTO_BIN, /usr/sbin/mosquitto, or PATH).
    #[arg(long)]
    mosquitto: Option<PathBuf>,
    /// The rumqttd peer binary (default: `rumqttd-peer` next to this harness; built
    /// by `cargo build --release -p meterflow-bench`).
    #[arg(long)]
    rumqttd: Option<PathBuf>,
    /// The peer baselines, comma-separated, in the order they run.
    #[arg(long, value_delimiter = ',', default_value = "mosquitto,rumqttd")]
    peers: Vec<String>,
    /// Skip the peer baselines (the same as an empty --peers).
    #[arg(long)]
    no_peer: bool,
    /// Run the peers with Nagle on (default: TCP_NODELAY on their accepted sockets, as
    /// meterflow's endpoint sets).
    #[arg(long)]
    peer_nagle: bool,
    /// Peer acker connections: 1 (default) is the single counting subscriber; more
    /// share a $share subscription and ack the highest seq seen.
    #[arg(long, default_value_t = 1)]
    peer_ackers: usize,
    /// Override the scenario's meters (throughput scenarios).
    #[arg(long)]
    meters: Option<usize>,
    /// Override the paced seconds of each open-loop step.
    #[arg(long)]
    step_secs: Option<f64>,
    /// Override the most open-loop steps per system.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Override the rate growth per step.
    #[arg(long)]
    growth: Option<f64>,
    /// Override the first offered rate, as a fraction of meterflow's closed-loop rate.
    #[arg(long)]
    start_fraction: Option<f64>,
    /// Simulator processes per throughput step (1 keeps latency percentiles exact).
    #[arg(long, default_value_t = 1)]
    sim_procs: usize,
    /// Binary (0x01 + bincode) uplinks instead of the scenario's choice.
    #[arg(long)]
    binary: bool,
    /// meterflow's meters rely on PUBACKs alone and do not subscribe to the ack topic
    /// (`meterflow-sim --no-ack-topic`; the peers always need the ack topic).
    #[arg(long)]
    no_ack_topic: bool,
    /// Override the meters `connections` connects (default: the open-file limit less headroom).
    #[arg(long)]
    connections: Option<usize>,
    /// Override the meters per simulator process in `connections`.
    #[arg(long)]
    connections_per_proc: Option<usize>,
    /// Override the connection ramp of `connections`, per second.
    #[arg(long)]
    connect_rate: Option<f64>,
    /// Override the seconds at the peak in `connections`.
    #[arg(long)]
    hold_secs: Option<f64>,
    /// Measure only the first meterflow variant of `connections`.
    #[arg(long)]
    no_variants: bool,
    /// Tiny, seconds-long runs for developing the harness (recorded as `{scenario}-quick`).
    #[arg(long)]
    quick: bool,
    /// Scenario files directory (default: bench/scenarios).
    #[arg(long)]
    scenarios: Option<PathBuf>,
    /// Results directory (default: bench/results).
    #[arg(long)]
    results: Option<PathBuf>,
    /// Do not rewrite the summary in bench/README.md.
    #[arg(long)]
    no_readme: bool,
    /// The machine was not shared with other work during the run.
    #[arg(long)]
    dedicated: bool,
}

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn workspace_dir() -> PathBuf {
    bench_dir()
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where cargo puts release binaries: `$CARGO_TARGET_DIR/release` when set (as when
/// the harness runs under `cargo run`), else this workspace's `target/release`.
fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_dir().join("target"), PathBuf::from)
        .join("release")
}

/// The peers asked for, with their binaries (an error names what is missing).
fn find_peers(args: &Args) -> anyhow::Result<Vec<Peer>> {
    if args.no_peer {
        return Ok(Vec::new());
    }
    let mut peers = Vec::new();
    for name in args.peers.iter().filter(|n| !n.trim().is_empty()) {
        let kind = TargetKind::peer(name)
            .with_context(|| format!("unknown peer {name:?} (known: mosquitto, rumqttd)"))?;
        let binary = match kind {
            TargetKind::Mosquitto => find_mosquitto(args.mosquitto.as_deref()).context(
                "mosquitto not found: install it (`apt-get install mosquitto`), pass --mosquitto PATH, --peers rumqttd or --no-peer",
            )?,
            _ => {
                let path = args.rumqttd.clone().unwrap_or_else(|| {
                    std::env::current_exe()
                        .ok()
                        .and_then(|exe| exe.parent().map(Path::to_path_buf))
                        .unwrap_or_else(release_dir)
                        .join("rumqttd-peer")
                });
                if !path.is_file() {
                    anyhow::bail!(
                        "no rumqttd peer at {}: build it with `cargo build --release -p meterflow-bench`, or pass --rumqttd PATH, --peers mosquitto or --no-peer",
                        path.display()
                    );
                }
                path
            }
        };
        if !peers.iter().any(|p: &Peer| p.kind == kind) {
            peers.push(Peer { kind, binary });
        }
    }
    Ok(peers)
}

fn find_mosquitto(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("MOSQUITTO_BIN") {
        return Some(PathBuf::from(path));
    }
    let mut candidates = vec![
        PathBuf::from("/usr/sbin/mosquitto"),
        PathBuf::from("/usr/local/sbin/mosquitto"),
    ];
    if let Some(paths) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&paths).map(|p| p.join("mosquitto")));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Newest modification time of the Rust sources meterflow is built from.
fn newest_source(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_source(&path)
        } else if path.extension().is_some_and(|e| e == "rs") {
            entry.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(time);
    }
    newest
}

/// A note when the meterflow binary is older than its sources (others edit them).
fn staleness_note(binary: &Path) -> Option<String> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let workspace = workspace_dir();
    let newest = ["ingest", "model", "processors", "storage", "simulator"]
        .iter()
        .filter_map(|c| newest_source(&workspace.join(c).join("src")))
        .max()?;
    (newest > built).then(|| {
        "the meterflow binary is older than some workspace sources (others are editing them); \
         the numbers are for the binary as built"
            .to_owned()
    })
}

impl Args {
    /// The meterflow binary and the simulator to run: `--meterflow` (else the
    /// release build's) and `--sim` (else the one beside that meterflow).
    fn binaries(&self) -> (PathBuf, PathBuf) {
        let meterflow = self
            .meterflow
            .clone()
            .unwrap_or_else(|| release_dir().join("meterflow"));
        let sim = self
            .sim
            .clone()
            .unwrap_or_else(|| loadgen::default_sim_binary(&meterflow));
        (meterflow, sim)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meterflow-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let results = args
        .results
        .clone()
        .unwrap_or_else(|| bench_dir().join("results"));
    if args.scenario == "cql-ceiling" {
        return cql_ceiling::run(
            &cql_ceiling::CeilingSettings {
                node: args.cql_node.clone(),
                rows: args.cql_rows,
                concurrency: args.cql_concurrency,
                max_secs: args.cql_secs,
            },
            &results,
        );
    }
    if args.scenario == "mqtt-floor" {
        let (_, sim) = args.binaries();
        return mqtt_floor::run(
            &mqtt_floor::FloorSettings {
                mosquitto: find_mosquitto(args.mosquitto.as_deref()).context(
                    "mosquitto not found: install it (`apt-get install mosquitto`) or pass --mosquitto PATH",
                )?,
                sim,
                rates: args.floor_rates.clone(),
                secs: args.floor_secs,
            },
            &results,
        );
    }
    if args.scenario == "distributed" {
        let (meterflow, sim) = args.binaries();
        return distributed::run(
            &distributed::DistributedSettings {
                sim,
                meterflow,
                meters: args.meters.unwrap_or(1_000),
                messages_per_meter: args.dist_messages,
                readings_per_message: 24,
                half_rate_secs: args.dist_half_secs,
            },
            &results,
        );
    }
    if args.scenario == "readme" {
        // Only redraw the plots and the README summary from the recorded results.
        for name in ["single", "burst24", "cassandra"] {
            if let Some(record) = record::latest::<ThroughputRecord>(&results, name) {
                write_plot(&results, &record)?;
            }
        }
        return update_readme(&results);
    }
    let open_files = targets::raise_open_file_limit();
    let (meterflow_bin, sim) = args.binaries();
    let peers = find_peers(args)?;
    let sim_features = SimFeatures::probe(&sim);
    if args.no_ack_topic && !sim_features.no_ack_topic {
        anyhow::bail!(
            "--no-ack-topic: {} has no --no-ack-topic flag",
            sim.display()
        );
    }
    let scenarios_dir = args
        .scenarios
        .clone()
        .unwrap_or_else(|| bench_dir().join("scenarios"));
    let run_dir = tempfile::Builder::new()
        .prefix("meterflow-bench-run-")
        .tempdir()?;
    let env = Env {
        meterflow: MeterflowOptions {
            binary: meterflow_bin.clone(),
            config_toml: String::new(),
            extra_args: Vec::new(),
        },
        sim,
        sim_features,
        meterflow_no_ack_topic: args.no_ack_topic,
        peers,
        peer_options: PeerOptions {
            nodelay: !args.peer_nagle,
            ackers: args.peer_ackers.max(1),
        },
        log_dir: run_dir.path().to_path_buf(),
        criteria: Criteria::default(),
    };
    let mut notes = Vec::new();
    if !args.dedicated {
        notes.push(
            "machine shared with other engineers' builds during the run: absolute numbers are pessimistic and noisy; compare ratios within one run".to_owned(),
        );
    }
    if let Some(note) = staleness_note(&meterflow_bin) {
        println!("note: {note}");
        notes.push(note);
    }
    if args.quick {
        notes.push("quick mode (development): tiny steps, not a measurement".to_owned());
    }
    if !env.peers.is_empty() && !env.sim_features.puback_not_durable {
        notes.push(
            "this meterflow-sim has no --puback-not-durable: against the peers it settles messages by the acker's ack only, as before PUBACK latency existed".to_owned(),
        );
    }
    if args.no_ack_topic {
        notes.push(
            "meterflow's meters did not subscribe to the ack topic (--no-ack-topic): PUBACKs alone settled their messages".to_owned(),
        );
    }
    println!(
        "meterflow-bench: {} with {}, sim {} ({:?}), peers {}, open files {open_files}",
        args.scenario,
        meterflow_bin.display(),
        env.sim.display(),
        env.sim_features,
        if env.peers.is_empty() {
            "none".to_owned()
        } else {
            env.peers
                .iter()
                .map(|p| format!("{} ({})", p.kind.name(), p.binary.display()))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );

    let names: Vec<String> = if args.scenario == "all" {
        ALL.iter().map(|s| (*s).to_owned()).collect()
    } else {
        vec![args.scenario.clone()]
    };
    for name in names {
        let (path, scenario) = if name.ends_with(".toml") {
            let path = PathBuf::from(&name);
            let stem = path
                .file_stem()
                .map_or_else(|| "custom".to_owned(), |s| s.to_string_lossy().into_owned());
            (path, stem)
        } else {
            (scenarios_dir.join(format!("{name}.toml")), name.clone())
        };
        let recorded_as = if args.quick {
            format!("{scenario}-quick")
        } else {
            scenario.clone()
        };
        match ScenarioFile::load(&path)? {
            ScenarioFile::Throughput(file) => {
                if let Some(reason) = throughput_unavailable(&file, &meterflow_bin) {
                    println!("skipping {scenario}: {reason}");
                    continue;
                }
                let env = Env {
                    meterflow: MeterflowOptions {
                        config_toml: file.meterflow.config.clone(),
                        extra_args: file.meterflow.args.clone(),
                        ..env.meterflow.clone()
                    },
                    ..env.clone()
                };
                throughput(
                    args,
                    &env,
                    &recorded_as,
                    &file,
                    &notes,
                    &results,
                    open_files,
                )?;
            }
            ScenarioFile::Connections(file) => {
                connections(
                    args,
                    &env,
                    &recorded_as,
                    &file,
                    &notes,
                    &results,
                    open_files,
                )?;
            }
        }
        if !args.no_readme && !args.quick {
            update_readme(&results)?;
        }
    }
    println!(
        "meterflow-bench: done in {:.0} s; results in {}",
        started.elapsed().as_secs_f64(),
        results.display()
    );
    Ok(())
}

/// Why a throughput scenario cannot run here, if it cannot.
fn throughput_unavailable(file: &ThroughputFile, meterflow: &Path) -> Option<String> {
    if let Some(flag) = &file.requires_flag
        && !sweep::meterflow_has_flag(meterflow, flag)
    {
        return Some(format!(
            "`{} run --help` does not list {flag} (not in this build of meterflow yet)",
            meterflow.display()
        ));
    }
    if file.requires_cassandra {
        let script = workspace_dir().join("scripts/cassandra");
        let running = std::process::Command::new(&script)
            .arg("status")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !running {
            return Some(format!(
                "Cassandra is not answering CQL on 127.0.0.1:9042 (start it with `{} start`)",
                script.display()
            ));
        }
    }
    None
}

fn throughput(
    args: &Args,
    env: &Env,
    scenario: &str,
    file: &ThroughputFile,
    notes: &[String],
    results: &Path,
    open_files: u64,
) -> anyhow::Result<()> {
    let mut machine = Machine::probe(open_files, !args.dedicated);
    let revision = Revision::probe(&workspace_dir());
    let readings_per_message = file.sim.readings_per_message;
    let meters = args.meters.unwrap_or(file.sim.meters);
    let settings = SweepSettings {
        readings_per_message,
        meters: if args.quick { meters.min(200) } else { meters },
        closed_loop_messages_per_meter: if args.quick {
            file.sim.closed_loop_messages_per_meter.min(10)
        } else {
            file.sim.closed_loop_messages_per_meter
        },
        step_secs: if args.quick {
            2.0
        } else {
            args.step_secs.unwrap_or(file.sweep.step_secs)
        },
        start_fraction: args.start_fraction.unwrap_or(file.sweep.start_fraction),
        growth: args.growth.unwrap_or(file.sweep.growth),
        max_steps: if args.quick {
            2
        } else {
            args.max_steps.unwrap_or(file.sweep.max_steps)
        },
        sim_procs: args.sim_procs,
        binary_payloads: args.binary || file.sim.binary,
    };
    println!("== {scenario} ({}): {settings:?}", file.description);
    let (meterflow, peers) = sweep::run_scenario(env, &settings)?;
    machine.loadavg_end = record::loadavg();
    let peer_ratios: Vec<_> = peers.iter().map(|p| sweep::ratios(&meterflow, p)).collect();

    let mut notes = notes.to_vec();
    for sweep in std::iter::once(&meterflow).chain(&peers) {
        if let Some(best) = &sweep.best {
            let total = best.cpu_pct + best.generator_cpu_pct;
            if total > 170.0 {
                notes.push(format!(
                    "at {}'s best step it ({:.0}%) and the generator ({:.0}%) used ~{total:.0}% of the 2 cores: the machine, not only {}, was the limit",
                    sweep.target, best.cpu_pct, best.generator_cpu_pct, sweep.target
                ));
            }
        }
    }
    let record = ThroughputRecord {
        scenario: scenario.to_owned(),
        timestamp: record::now_rfc3339(),
        revision,
        binary: BinaryInfo::probe(&env.meterflow.binary),
        machine,
        settings,
        criteria: env.criteria,
        peer_setup: peer_setup(env),
        sim_features: Some(env.sim_features),
        meterflow,
        peers,
        peer_ratios,
        peer: None,
        ratios: None,
        plot: Some(format!("results/{scenario}.svg")),
        notes,
    };
    record::append(results, scenario, &record)?;
    write_plot(results, &record)?;
    for r in &record.peer_ratios {
        println!(
            "== {scenario}: meterflow ÷ {}: sustainable ×{:.2}, closed loop ×{:.2}, ack p99 at common rate ×{:.2}, at half rate ×{:.2}, CPU µs/msg ×{:.2} (at half rate ×{:.2})",
            r.peer,
            r.sustainable_msgs_per_s.unwrap_or(f64::NAN),
            r.closed_loop_msgs_per_s.unwrap_or(f64::NAN),
            r.ack_p99_at_common_rate.unwrap_or(f64::NAN),
            r.ack_p99_at_half_rate.unwrap_or(f64::NAN),
            r.cpu_us_per_msg_at_common_rate.unwrap_or(f64::NAN),
            r.cpu_us_per_msg_at_half_rate.unwrap_or(f64::NAN),
        );
    }
    Ok(())
}

/// How the peers were set up, in words (for the record).
fn peer_setup(env: &Env) -> String {
    if env.peers.is_empty() {
        return "no peers".to_owned();
    }
    let nodelay = if env.peer_options.nodelay {
        "TCP_NODELAY on accepted sockets"
    } else {
        "Nagle on"
    };
    let brokers: Vec<&str> = env
        .peers
        .iter()
        .map(|p| match p.kind {
            TargetKind::Mosquitto => {
                "mosquitto 2.x, memory only (persistence false, max_queued_messages 0)"
            }
            _ => {
                "rumqttd 0.20 (bench/src/bin/rumqttd-peer.rs: meterflow's former embedded-broker settings — max_connections 30000, segments 32 MiB × 8, 1 KiB ack-filter logs, max_outgoing_packet_count 200, dynamic filters)"
            }
        })
        .collect();
    format!(
        "{}; {nodelay}; each with {} raw-MQTT subscriber(s) on meters/+/+/up at QoS 0 that answer every uplink with {{\"seq\":W}} (contiguous watermark) at QoS 0 and store nothing{}",
        brokers.join("; "),
        env.peer_options.ackers,
        if env.sim_features.puback_not_durable {
            "; meters run with --puback-not-durable (the broker's PUBACK settles nothing)"
        } else {
            ""
        }
    )
}

fn connections(
    args: &Args,
    env: &Env,
    scenario: &str,
    file: &ConnectionsFile,
    notes: &[String],
    results: &Path,
    open_files: u64,
) -> anyhow::Result<()> {
    let mut machine = Machine::probe(open_files, !args.dedicated);
    let revision = Revision::probe(&workspace_dir());
    let limit = usize::try_from(open_files)
        .unwrap_or(usize::MAX)
        .saturating_sub(FD_HEADROOM);
    let requested = match args.connections.unwrap_or(file.connections.requested) {
        0 => limit,
        n => n.min(limit),
    };
    let settings = ConnectionsSettings {
        requested: if args.quick {
            requested.min(2000)
        } else {
            requested
        },
        per_proc: args
            .connections_per_proc
            .unwrap_or(file.connections.per_proc),
        connect_rate: args.connect_rate.unwrap_or(file.connections.connect_rate),
        hold_secs: if args.quick {
            2.0
        } else {
            args.hold_secs.unwrap_or(file.connections.hold_secs)
        },
    };
    println!("== {scenario} ({}): {settings:?}", file.description);
    let variants = if args.no_variants || args.quick {
        &file.variants[..1]
    } else {
        &file.variants[..]
    };
    let mut runs = Vec::new();
    for variant in variants {
        let options = MeterflowOptions {
            config_toml: variant.config.clone(),
            ..env.meterflow.clone()
        };
        runs.push(connections::run(
            env,
            TargetKind::Meterflow,
            &variant.label,
            &options,
            &settings,
        )?);
    }
    for peer in &env.peers {
        let label = match peer.kind {
            TargetKind::Mosquitto => "memory only",
            _ => "meterflow's former embedded-broker settings",
        };
        runs.push(connections::run(
            env,
            peer.kind,
            label,
            &env.meterflow,
            &settings,
        )?);
    }
    machine.loadavg_end = record::loadavg();
    let mut notes = notes.to_vec();
    notes.push(format!(
        "connections are capped by the open-file limit ({open_files} per process, for the target and each simulator process); {FD_HEADROOM} descriptors are kept free for the target's own files"
    ));
    notes.push(
        "every meter connects from 127.0.0.1 (rumqttc binds to a device, not to a source address); the ephemeral port range (28,232 ports) is above the descriptor limit, so it does not bind".to_owned(),
    );
    notes.push(format!(
        "the peers ran with {} acker connection(s) each, as in the throughput scenarios; they are in the peers' RSS",
        env.peer_options.ackers
    ));
    let record = ConnectionsRecord {
        scenario: scenario.to_owned(),
        timestamp: record::now_rfc3339(),
        revision,
        binary: BinaryInfo::probe(&env.meterflow.binary),
        machine,
        settings: Some(settings),
        runs,
        notes,
    };
    record::append(results, scenario, &record).context("writing the connections record")?;
    Ok(())
}

/// `results/{scenario}.svg` for a throughput record (a pure function of the record,
/// so `meterflow-bench readme` can redraw it).
fn write_plot(results: &Path, record: &ThroughputRecord) -> anyhow::Result<()> {
    const PEER_COLORS: [RGBColor; 3] = [
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x94, 0x67, 0xbd),
    ];
    let mut series = vec![sweep::series(&record.meterflow, RGBColor(0x1f, 0x77, 0xb4))];
    for (peer, color) in record.all_peers().zip(PEER_COLORS.iter().cycle()) {
        series.push(sweep::series(peer, *color));
    }
    let subtitle = format!(
        "{} meters, {} reading(s)/msg, {} · commit {}{} · load avg {} → {}{}",
        record.settings.meters,
        record.settings.readings_per_message,
        record.timestamp,
        record.revision.commit,
        if record.revision.dirty { "+" } else { "" },
        record.machine.loadavg_start,
        record.machine.loadavg_end,
        if record.machine.shared {
            " · shared machine"
        } else {
            ""
        },
    );
    std::fs::create_dir_all(results)?;
    std::fs::write(
        results.join(format!("{}.svg", record.scenario)),
        plot::plot(
            &format!(
                "{} — {}: throughput and ack p99 against offered rate",
                std::iter::once("meterflow")
                    .chain(record.all_peers().map(|p| p.target.as_str()))
                    .collect::<Vec<_>>()
                    .join(" vs "),
                record.scenario
            ),
            &subtitle,
            &series,
        ),
    )?;
    Ok(())
}

fn update_readme(results: &Path) -> anyhow::Result<()> {
    let throughput: Vec<ThroughputRecord> = ["single", "burst24", "cassandra"]
        .iter()
        .filter_map(|s| record::latest(results, s))
        .collect();
    let connections: Option<ConnectionsRecord> = record::latest(results, "connections");
    if throughput.is_empty() && connections.is_none() {
        return Ok(());
    }
    let path = bench_dir().join("README.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = readme::replace_section(&old, &readme::render(&throughput, connections.as_ref()));
    if new != old {
        std::fs::write(&path, new)?;
    }
    Ok(())
}
