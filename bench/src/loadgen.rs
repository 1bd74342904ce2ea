//! The load: `meterflow-sim` child processes, one JSON [`Report`] each.
//!
//! Why child processes and not the simulator library in-process:
//! - each process has its own open-file budget (the `connections` scenario holds
//!   ~20,000 sockets on the simulator side too, at the 20,000 per-process limit);
//! - the generator's CPU is measured separately from the harness and the peer's
//!   acker (`/proc/<pid>/stat` of each child), so a run can say when the *generator*
//!   was the bottleneck on a shared 2-core machine;
//! - it is the binary operators run, with its exact flags.
//!
//! A fleet split over several processes gives one report per process; [`merge`]
//! adds the counts exactly, but percentiles of separate histograms cannot be merged:
//! the merged p50 is the acked-weighted mean of the p50s (an estimate), the merged
//! p99 and max are the largest of the parts (upper bounds). The throughput scenarios
//! use one process, so their percentiles are exact.
//!
//! PUBACK latency (`puback_latency_ms`, simulators that report it) is read from the
//! report's JSON beside the [`Report`] type, so the harness works with simulators
//! from before and after it. What settles a message is a flag of the simulator
//! ([`SimFeatures`]): against a peer broker, whose PUBACK only means "received", the
//! harness passes `--puback-not-durable` when the simulator has it, so only the
//! acker's ack settles a message, as before.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meterflow_simulator::{LatencySummary, Report};
use rustix::process::Signal;
use serde::{Deserialize, Serialize};

use crate::procfs;
use crate::targets;

/// How long an interrupted simulator gets to disconnect its meters and print its
/// report (it waits up to 1 s per meter for DISCONNECT, concurrently).
const INTERRUPT_GRACE: Duration = Duration::from_secs(15);

/// One simulator process's settings (flags of `meterflow-sim`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct SimSettings {
    pub(crate) mqtt: SocketAddr,
    pub(crate) meters: usize,
    pub(crate) first_meter: usize,
    pub(crate) messages_per_meter: u64,
    pub(crate) readings_per_message: usize,
    /// Open loop (msgs/s across this process's fleet) or closed loop (`None`).
    pub(crate) rate: Option<f64>,
    pub(crate) window: usize,
    pub(crate) timeout_s: u64,
    pub(crate) ack_timeout_ms: u64,
    pub(crate) connect_concurrency: usize,
    pub(crate) binary: bool,
    /// `--puback-not-durable`: only the ack topic settles a message (peer brokers).
    #[serde(default)]
    pub(crate) puback_not_durable: bool,
    /// `--no-ack-topic`: meters do not subscribe to the ack topic; PUBACKs settle.
    #[serde(default)]
    pub(crate) no_ack_topic: bool,
}

/// Which of the flags about acknowledgements this `meterflow-sim` has (its `--help`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SimFeatures {
    pub(crate) puback_not_durable: bool,
    pub(crate) no_ack_topic: bool,
}

impl SimFeatures {
    pub(crate) fn probe(binary: &Path) -> SimFeatures {
        let help = Command::new(binary)
            .arg("--help")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        SimFeatures {
            puback_not_durable: help.contains("--puback-not-durable"),
            no_ack_topic: help.contains("--no-ack-topic"),
        }
    }
}

impl SimSettings {
    pub(crate) fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--json".to_owned(),
            format!("--mqtt={}", self.mqtt),
            format!("--meters={}", self.meters),
            format!("--first-meter={}", self.first_meter),
            format!("--messages-per-meter={}", self.messages_per_meter),
            format!("--readings-per-message={}", self.readings_per_message),
            format!("--window={}", self.window),
            format!("--timeout={}", self.timeout_s),
            format!("--ack-timeout-ms={}", self.ack_timeout_ms),
            format!("--connect-concurrency={}", self.connect_concurrency),
        ];
        if let Some(rate) = self.rate {
            args.push(format!("--rate={rate:.3}"));
        }
        if self.binary {
            args.push("--binary".to_owned());
        }
        if self.puback_not_durable {
            args.push("--puback-not-durable".to_owned());
        }
        if self.no_ack_topic {
            args.push("--no-ack-topic".to_owned());
        }
        args
    }

    /// This fleet split into `parts` processes: meters and rate divided evenly,
    /// meter ranges adjacent.
    pub(crate) fn split(&self, parts: usize) -> Vec<SimSettings> {
        let parts = parts.clamp(1, self.meters.max(1));
        let base = self.meters / parts;
        let extra = self.meters % parts;
        let mut first = self.first_meter;
        (0..parts)
            .map(|i| {
                let meters = base + usize::from(i < extra);
                let part = SimSettings {
                    meters,
                    first_meter: first,
                    rate: self.rate.map(|r| r * meters as f64 / self.meters as f64),
                    ..self.clone()
                };
                first += meters;
                part
            })
            .collect()
    }
}

/// One simulator process's outcome: its report, and its PUBACK latency when it
/// reports one (`None`: a simulator without it, or no message settled by a PUBACK).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SimOutcome {
    pub(crate) report: Report,
    pub(crate) puback_ms: Option<LatencySummary>,
}

impl SimOutcome {
    /// Parses `meterflow-sim --json` output.
    pub(crate) fn parse(json: &str) -> anyhow::Result<SimOutcome> {
        let value: serde_json::Value = serde_json::from_str(json.trim())?;
        let puback_ms = value
            .get("puback_latency_ms")
            .and_then(|v| LatencySummary::deserialize(v).ok())
            .filter(|l| l.max > 0.0);
        Ok(SimOutcome {
            report: Report::deserialize(&value)?,
            puback_ms,
        })
    }
}

/// Running simulator processes.
pub(crate) struct SimFleet {
    children: Vec<Child>,
    /// Latest cumulative CPU seconds seen per child (a child's `/proc` entry is gone
    /// once it is reaped, so this is refreshed by [`SimFleet::poll_cpu`]).
    cpu_s: Vec<f64>,
    pub(crate) started: Instant,
}

impl SimFleet {
    /// Spawns one process per settings entry; stderr (the simulator's progress
    /// lines) goes to `{log_dir}/sim-{first_meter}.log`.
    pub(crate) fn spawn(
        binary: &Path,
        parts: &[SimSettings],
        log_dir: &Path,
    ) -> anyhow::Result<SimFleet> {
        if !binary.is_file() {
            bail!(
                "no meterflow-sim binary at {}: build it with `cargo build --release --bin meterflow --bin meterflow-sim` or pass --sim PATH",
                binary.display()
            );
        }
        let mut children = Vec::with_capacity(parts.len());
        for part in parts {
            let log = std::fs::File::create(log_dir.join(format!("sim-{}.log", part.first_meter)))?;
            let child = Command::new(binary)
                .args(part.args())
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log))
                .spawn()
                .with_context(|| format!("spawning {}", binary.display()))?;
            children.push(child);
        }
        Ok(SimFleet {
            cpu_s: vec![0.0; children.len()],
            children,
            started: Instant::now(),
        })
    }

    /// Refreshes the CPU seconds of the running children.
    pub(crate) fn poll_cpu(&mut self) {
        for (child, cpu) in self.children.iter().zip(&mut self.cpu_s) {
            if let Some(now) = procfs::cpu_seconds(child.id()) {
                *cpu = now;
            }
        }
    }

    /// CPU seconds the generator used (as of the last [`SimFleet::poll_cpu`]).
    pub(crate) fn cpu_seconds(&self) -> f64 {
        self.cpu_s.iter().sum()
    }

    /// Whether every process has exited.
    pub(crate) fn finished(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Asks every process to stop (SIGINT: meters disconnect, each prints its report).
    pub(crate) fn interrupt(&self) {
        for child in &self.children {
            targets::signal(child, Signal::INT);
        }
    }

    /// Waits for every process (killing any still running `hard_deadline` from now)
    /// and returns their reports.
    pub(crate) fn wait(mut self, hard_deadline: Duration) -> anyhow::Result<Vec<SimOutcome>> {
        let deadline = Instant::now() + hard_deadline;
        while !self.finished() && Instant::now() < deadline {
            self.poll_cpu();
            std::thread::sleep(Duration::from_millis(100));
        }
        if !self.finished() {
            self.interrupt();
            let grace = Instant::now() + INTERRUPT_GRACE;
            while !self.finished() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let mut reports = Vec::with_capacity(self.children.len());
        for mut child in self.children.drain(..) {
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
            }
            let status = child.wait()?;
            let mut stdout = String::new();
            if let Some(mut out) = child.stdout.take() {
                out.read_to_string(&mut stdout)?;
            }
            // Exit 0: all acked; 1: some not acked (still a report); else an error.
            if !matches!(status.code(), Some(0 | 1)) && stdout.trim().is_empty() {
                bail!("meterflow-sim failed ({status}); see its log in the run directory");
            }
            let outcome = SimOutcome::parse(&stdout)
                .with_context(|| format!("meterflow-sim printed no JSON report ({status})"))?;
            reports.push(outcome);
        }
        Ok(reports)
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                targets::terminate(child, Signal::INT, INTERRUPT_GRACE);
            }
        }
    }
}

/// One outcome for a fleet split over several processes (see the module docs for
/// how percentiles are combined).
pub(crate) fn merge(outcomes: &[SimOutcome]) -> SimOutcome {
    let Some(first) = outcomes.first() else {
        return SimOutcome::default();
    };
    if outcomes.len() == 1 {
        return first.clone();
    }
    let reports: Vec<&Report> = outcomes.iter().map(|o| &o.report).collect();
    let sum = |f: fn(&Report) -> u64| reports.iter().map(|r| f(r)).sum::<u64>();
    let max = |f: fn(&Report) -> f64| reports.iter().map(|r| f(r)).fold(0.0, f64::max);
    let acked = sum(|r| r.acked);
    let elapsed_s = max(|r| r.elapsed_s).max(1e-9);
    let readings: f64 = reports.iter().map(|r| r.readings_per_s * r.elapsed_s).sum();
    // Field by field over a copy of the first, so fields this harness does not know
    // (a newer simulator's) keep the first part's values.
    let mut report = first.report.clone();
    report.meters = reports.iter().map(|r| r.meters).sum();
    report.messages = sum(|r| r.messages);
    report.sent = sum(|r| r.sent);
    report.acked = acked;
    report.unacked = sum(|r| r.unacked);
    report.resent = sum(|r| r.resent);
    report.msgs_per_s = acked as f64 / elapsed_s;
    report.readings_per_s = readings / elapsed_s;
    report.elapsed_s = elapsed_s;
    report.connect_s = max(|r| r.connect_s);
    report.ack_latency_ms =
        merge_latency(reports.iter().map(|r| (r.ack_latency_ms, r.acked))).unwrap_or_default();
    report.reconnects = sum(|r| r.reconnects);
    report.connection_errors = sum(|r| r.connection_errors);
    report.bad_acks = sum(|r| r.bad_acks);
    report.duplicates = sum(|r| r.duplicates);
    report.out_of_order = sum(|r| r.out_of_order);
    report.malformed = sum(|r| r.malformed);
    report.storms = max(|r| r.storms as f64) as u64;
    report.storm_disconnects = sum(|r| r.storm_disconnects);
    report.stopped_early = reports.iter().any(|r| r.stopped_early);
    SimOutcome {
        report,
        puback_ms: merge_latency(
            outcomes
                .iter()
                .filter_map(|o| Some((o.puback_ms?, o.report.acked))),
        ),
    }
}

/// Latency summaries of several processes as one: p50 weighted by `weight` (an
/// estimate), p99 and max the largest (upper bounds). `None` when there are none.
fn merge_latency(parts: impl Iterator<Item = (LatencySummary, u64)>) -> Option<LatencySummary> {
    let parts: Vec<(LatencySummary, u64)> = parts.collect();
    if parts.is_empty() {
        return None;
    }
    let weight: u64 = parts.iter().map(|p| p.1).sum();
    let p50 = if weight > 0 {
        parts.iter().map(|(l, w)| l.p50 * *w as f64).sum::<f64>() / weight as f64
    } else {
        0.0
    };
    Some(LatencySummary {
        p50,
        p99: parts.iter().map(|p| p.0.p99).fold(0.0, f64::max),
        max: parts.iter().map(|p| p.0.max).fold(0.0, f64::max),
    })
}

/// The `meterflow-sim` next to the `meterflow` binary unless given.
pub(crate) fn default_sim_binary(meterflow: &Path) -> PathBuf {
    meterflow.with_file_name("meterflow-sim")
}

/// Messages each of `meters` sends so that the fleet at `rate` msgs/s runs for
/// `secs` (at least one).
pub(crate) fn messages_per_meter(rate: f64, secs: f64, meters: usize) -> u64 {
    ((rate * secs).ceil() as u64).div_ceil(meters as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_runs_for_its_seconds_across_the_fleet() {
        assert_eq!(messages_per_meter(23_000.0, 20.0, 1_000), 460);
        assert_eq!(messages_per_meter(12_345.0, 1.0, 1_000), 13);
        assert_eq!(messages_per_meter(0.0, 20.0, 1_000), 1);
    }

    fn settings() -> SimSettings {
        SimSettings {
            mqtt: "127.0.0.1:1883".parse().unwrap(),
            meters: 10,
            first_meter: 100,
            messages_per_meter: 5,
            readings_per_message: 24,
            rate: Some(1000.0),
            window: 8,
            timeout_s: 30,
            ack_timeout_ms: 5000,
            connect_concurrency: 64,
            binary: false,
            puback_not_durable: false,
            no_ack_topic: false,
        }
    }

    #[test]
    fn split_divides_meters_and_rate() {
        let parts = settings().split(3);
        assert_eq!(
            parts
                .iter()
                .map(|p| (p.first_meter, p.meters))
                .collect::<Vec<_>>(),
            vec![(100, 4), (104, 3), (107, 3)]
        );
        let rate: f64 = parts.iter().map(|p| p.rate.unwrap()).sum();
        assert!((rate - 1000.0).abs() < 1e-9);
        assert_eq!(settings().split(0).len(), 1);
        assert_eq!(settings().split(50).len(), 10, "never an empty process");
    }

    #[test]
    fn args_carry_every_setting() {
        let args = settings().args();
        assert!(args.contains(&"--rate=1000.000".to_owned()));
        assert!(args.contains(&"--first-meter=100".to_owned()));
        assert!(args.contains(&"--json".to_owned()));
        let closed = SimSettings {
            rate: None,
            binary: true,
            ..settings()
        };
        let args = closed.args();
        assert!(!args.iter().any(|a| a.starts_with("--rate")));
        assert!(args.contains(&"--binary".to_owned()));
        assert!(
            !args
                .iter()
                .any(|a| a.contains("puback") || a.contains("ack-topic"))
        );
        let peer = SimSettings {
            puback_not_durable: true,
            ..settings()
        };
        assert!(peer.args().contains(&"--puback-not-durable".to_owned()));
    }

    #[test]
    fn puback_latency_is_read_when_reported() {
        let full = serde_json::to_string(&Report {
            acked: 5,
            ..Report::default()
        })
        .unwrap();
        // Whether or not this simulator's Report has the field, removing it gives the
        // report of a simulator without it.
        let mut value: serde_json::Value = serde_json::from_str(&full).unwrap();
        value.as_object_mut().unwrap().remove("puback_latency_ms");
        let full = value.to_string();
        let parsed = SimOutcome::parse(&full).unwrap();
        assert_eq!(parsed.report.acked, 5);
        assert_eq!(parsed.puback_ms, None);
        let mut value: serde_json::Value = serde_json::from_str(&full).unwrap();
        value["puback_latency_ms"] = serde_json::json!({"p50": 4.0, "p99": 9.5, "max": 12.0});
        let parsed = SimOutcome::parse(&value.to_string()).unwrap();
        assert_eq!(
            parsed.puback_ms,
            Some(LatencySummary {
                p50: 4.0,
                p99: 9.5,
                max: 12.0
            })
        );
        // An empty histogram (nothing settled by a PUBACK) is no latency.
        value["puback_latency_ms"] = serde_json::json!({"p50": 0.0, "p99": 0.0, "max": 0.0});
        assert_eq!(
            SimOutcome::parse(&value.to_string()).unwrap().puback_ms,
            None
        );
    }

    #[test]
    fn merge_adds_counts_and_bounds_percentiles() {
        let part = |acked, p50, p99, elapsed_s| SimOutcome {
            report: Report {
                meters: 5,
                messages: acked,
                sent: acked,
                acked,
                readings_per_s: acked as f64 * 24.0 / elapsed_s,
                elapsed_s,
                ack_latency_ms: LatencySummary {
                    p50,
                    p99,
                    max: p99 * 2.0,
                },
                ..Report::default()
            },
            puback_ms: (p50 > 15.0).then_some(LatencySummary {
                p50: 1.0,
                p99: 2.0,
                max: 3.0,
            }),
        };
        let merged = merge(&[part(300, 10.0, 50.0, 2.0), part(100, 20.0, 40.0, 4.0)]);
        assert_eq!(
            merged.puback_ms,
            Some(LatencySummary {
                p50: 1.0,
                p99: 2.0,
                max: 3.0
            })
        );
        let merged = merged.report;
        assert_eq!(merged.acked, 400);
        assert_eq!(merged.meters, 10);
        assert!((merged.elapsed_s - 4.0).abs() < 1e-9);
        assert!((merged.msgs_per_s - 100.0).abs() < 1e-9);
        assert!((merged.readings_per_s - 2400.0).abs() < 1e-9);
        assert!((merged.ack_latency_ms.p50 - 12.5).abs() < 1e-9);
        assert_eq!(merged.ack_latency_ms.p99, 50.0);
        assert_eq!(merged.ack_latency_ms.max, 100.0);
        assert_eq!(merge(&[]), SimOutcome::default());
    }
}
