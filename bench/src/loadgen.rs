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

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meterflow_simulator::{LatencySummary, Report};
use rustix::process::Signal;
use serde::Serialize;

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
    pub(crate) fn wait(mut self, hard_deadline: Duration) -> anyhow::Result<Vec<Report>> {
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
            let report: Report = serde_json::from_str(stdout.trim())
                .with_context(|| format!("meterflow-sim printed no JSON report ({status})"))?;
            reports.push(report);
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

/// One report for a fleet split over several processes (see the module docs for how
/// percentiles are combined).
pub(crate) fn merge(reports: &[Report]) -> Report {
    let Some(first) = reports.first() else {
        return Report::default();
    };
    if reports.len() == 1 {
        return first.clone();
    }
    let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    let max = |f: fn(&Report) -> f64| reports.iter().map(f).fold(0.0, f64::max);
    let acked = sum(|r| r.acked);
    let elapsed_s = max(|r| r.elapsed_s).max(1e-9);
    let readings: f64 = reports.iter().map(|r| r.readings_per_s * r.elapsed_s).sum();
    let weighted_p50 = if acked > 0 {
        reports
            .iter()
            .map(|r| r.ack_latency_ms.p50 * r.acked as f64)
            .sum::<f64>()
            / acked as f64
    } else {
        0.0
    };
    Report {
        meters: reports.iter().map(|r| r.meters).sum(),
        messages: sum(|r| r.messages),
        sent: sum(|r| r.sent),
        acked,
        unacked: sum(|r| r.unacked),
        resent: sum(|r| r.resent),
        msgs_per_s: acked as f64 / elapsed_s,
        readings_per_s: readings / elapsed_s,
        elapsed_s,
        connect_s: max(|r| r.connect_s),
        ack_latency_ms: LatencySummary {
            p50: weighted_p50,
            p99: max(|r| r.ack_latency_ms.p99),
            max: max(|r| r.ack_latency_ms.max),
        },
        reconnects: sum(|r| r.reconnects),
        connection_errors: sum(|r| r.connection_errors),
        bad_acks: sum(|r| r.bad_acks),
        duplicates: sum(|r| r.duplicates),
        out_of_order: sum(|r| r.out_of_order),
        malformed: sum(|r| r.malformed),
        storms: max(|r| r.storms as f64) as u64,
        storm_disconnects: sum(|r| r.storm_disconnects),
        start_ts_ms: first.start_ts_ms,
        stopped_early: reports.iter().any(|r| r.stopped_early),
    }
}

/// The `meterflow-sim` next to the `meterflow` binary unless given.
pub(crate) fn default_sim_binary(meterflow: &Path) -> PathBuf {
    meterflow.with_file_name("meterflow-sim")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn merge_adds_counts_and_bounds_percentiles() {
        let part = |acked, p50, p99, elapsed_s| Report {
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
        };
        let merged = merge(&[part(300, 10.0, 50.0, 2.0), part(100, 20.0, 40.0, 4.0)]);
        assert_eq!(merged.acked, 400);
        assert_eq!(merged.meters, 10);
        assert!((merged.elapsed_s - 4.0).abs() < 1e-9);
        assert!((merged.msgs_per_s - 100.0).abs() < 1e-9);
        assert!((merged.readings_per_s - 2400.0).abs() < 1e-9);
        assert!((merged.ack_latency_ms.p50 - 12.5).abs() < 1e-9);
        assert_eq!(merged.ack_latency_ms.p99, 50.0);
        assert_eq!(merged.ack_latency_ms.max, 100.0);
        assert_eq!(merge(&[]), Report::default());
    }
}
