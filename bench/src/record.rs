//! Results as data: one JSON object per run appended to
//! `bench/results/{scenario}.jsonl`, each with when (UTC, RFC 3339), which commit
//! (`git rev-parse --short HEAD`, plus whether the tree had uncommitted changes),
//! on what machine (cores, memory, CPU model, kernel, load average before and after —
//! the machine is shared, and the load average says how busy it was), the settings,
//! the measurements, the peer's and the ratios.
//!
//! Files are append-only; [`crate::readme`] summarises the latest line of each.
//! Only read-only git commands are run (`--no-optional-locks`, so not even the
//! index is refreshed).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::connections::{ConnectionsRun, ConnectionsSettings};
use crate::loadgen::SimFeatures;
use crate::procfs;
use crate::sustain::Criteria;
use crate::sweep::{Ratios, SweepSettings, TargetSweep};

/// The machine a run was measured on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) mem_total_mib: u64,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    /// `/proc/loadavg` when the scenario started and ended.
    pub(crate) loadavg_start: String,
    pub(crate) loadavg_end: String,
    pub(crate) open_file_limit: u64,
    /// Other engineers' builds ran on the same cores during the measurement.
    pub(crate) shared: bool,
}

impl Machine {
    pub(crate) fn probe(open_file_limit: u64, shared: bool) -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_total_mib: procfs::parse_status_kib(&meminfo, "MemTotal").unwrap_or(0) / 1024,
            cpu_model: read("/proc/cpuinfo")
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
            open_file_limit,
            shared,
        }
    }
}

/// The first three fields of `/proc/loadavg` (1, 5 and 15-minute averages).
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_ascii_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which code was measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Revision {
    pub(crate) commit: String,
    /// The working tree had uncommitted changes to tracked files.
    pub(crate) dirty: bool,
}

impl Revision {
    pub(crate) fn probe(workspace: &Path) -> Revision {
        let git = |args: &[&str]| {
            Command::new("git")
                .arg("--no-optional-locks")
                .arg("-C")
                .arg(workspace)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        Revision {
            commit: git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()),
        }
    }
}

/// Which meterflow binary was measured (others rebuild it while they work).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct BinaryInfo {
    pub(crate) path: String,
    /// Modification time, RFC 3339 UTC.
    pub(crate) modified: String,
    pub(crate) bytes: u64,
}

impl BinaryInfo {
    pub(crate) fn probe(path: &Path) -> Option<BinaryInfo> {
        let meta = std::fs::metadata(path).ok()?;
        let modified = meta
            .modified()
            .ok()?
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_secs();
        Some(BinaryInfo {
            path: path.display().to_string(),
            modified: rfc3339(modified),
            bytes: meta.len(),
        })
    }
}

/// A throughput scenario's run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ThroughputRecord {
    pub(crate) scenario: String,
    pub(crate) timestamp: String,
    pub(crate) revision: Revision,
    #[serde(default)]
    pub(crate) binary: Option<BinaryInfo>,
    pub(crate) machine: Machine,
    pub(crate) settings: SweepSettings,
    pub(crate) criteria: Criteria,
    /// How the peers were set up, in words.
    pub(crate) peer_setup: String,
    /// The simulator's acknowledgement flags (`None` in records from before).
    #[serde(default)]
    pub(crate) sim_features: Option<SimFeatures>,
    pub(crate) meterflow: TargetSweep,
    /// The peer baselines, in the order they ran.
    #[serde(default)]
    pub(crate) peers: Vec<TargetSweep>,
    /// meterflow ÷ each peer.
    #[serde(default)]
    pub(crate) peer_ratios: Vec<Ratios>,
    /// The one peer (Mosquitto) of records from before there were several; read,
    /// never written.
    #[serde(default, skip_serializing)]
    pub(crate) peer: Option<TargetSweep>,
    #[serde(default, skip_serializing)]
    pub(crate) ratios: Option<Ratios>,
    /// The plot written for this run, relative to `bench/`.
    pub(crate) plot: Option<String>,
    pub(crate) notes: Vec<String>,
}

impl ThroughputRecord {
    /// The peers' sweeps, old records' single peer included.
    pub(crate) fn all_peers(&self) -> impl Iterator<Item = &TargetSweep> {
        self.peers.iter().chain(self.peer.as_ref())
    }

    /// meterflow ÷ each peer, old records' single ratio included (its peer named).
    pub(crate) fn all_ratios(&self) -> Vec<Ratios> {
        let mut all = self.peer_ratios.clone();
        if let Some(old) = &self.ratios {
            all.push(Ratios {
                peer: self
                    .peer
                    .as_ref()
                    .map_or_else(|| "mosquitto".to_owned(), |p| p.target.clone()),
                ..old.clone()
            });
        }
        all
    }
}

impl Default for SweepSettings {
    fn default() -> Self {
        SweepSettings {
            readings_per_message: 1,
            meters: 1000,
            closed_loop_messages_per_meter: 100,
            step_secs: 6.0,
            start_fraction: 0.3,
            growth: 1.5,
            max_steps: 8,
            sim_procs: 1,
            binary_payloads: false,
        }
    }
}

/// The `connections` scenario's run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ConnectionsRecord {
    pub(crate) scenario: String,
    pub(crate) timestamp: String,
    pub(crate) revision: Revision,
    #[serde(default)]
    pub(crate) binary: Option<BinaryInfo>,
    pub(crate) machine: Machine,
    pub(crate) settings: Option<ConnectionsSettings>,
    pub(crate) runs: Vec<ConnectionsRun>,
    pub(crate) notes: Vec<String>,
}

/// What a one-off measurement's record begins with (flattened into it): which
/// measurement, when, of which code, on which machine.
#[derive(Debug, Serialize)]
pub(crate) struct RunHeader {
    pub(crate) scenario: &'static str,
    pub(crate) timestamp: String,
    pub(crate) revision: Revision,
    pub(crate) machine: Machine,
}

impl RunHeader {
    /// The header of `scenario` measured now on `machine` (its end load average
    /// filled in by the caller), from this workspace's code.
    pub(crate) fn now(scenario: &'static str, machine: Machine) -> RunHeader {
        RunHeader {
            scenario,
            timestamp: now_rfc3339(),
            revision: Revision::probe(&crate::workspace_dir()),
            machine,
        }
    }
}

/// Appends one JSON line to `{dir}/{scenario}.jsonl`.
pub(crate) fn append<T: Serialize>(dir: &Path, scenario: &str, record: &T) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut line = serde_json::to_string(record)?;
    line.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{scenario}.jsonl")))?;
    file.write_all(line.as_bytes())?;
    Ok(())
}

/// The last record of `{dir}/{scenario}.jsonl` that parses as `T`.
pub(crate) fn latest<T: DeserializeOwned>(dir: &Path, scenario: &str) -> Option<T> {
    let text = std::fs::read_to_string(dir.join(format!("{scenario}.jsonl"))).ok()?;
    text.lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-11-23T12:36:27Z`).
pub(crate) fn rfc3339(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

pub(crate) fn now_rfc3339() -> String {
    rfc3339(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_437_387), "2026-11-23T12:36:27Z");
    }

    #[test]
    fn records_append_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = ConnectionsRecord {
            scenario: "connections".into(),
            timestamp: "t1".into(),
            ..ConnectionsRecord::default()
        };
        let second = ConnectionsRecord {
            timestamp: "t2".into(),
            ..first.clone()
        };
        append(dir.path(), "connections", &first).unwrap();
        append(dir.path(), "connections", &second).unwrap();
        let text = std::fs::read_to_string(dir.path().join("connections.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 2);
        let newest: ConnectionsRecord = latest(dir.path(), "connections").unwrap();
        assert_eq!(newest.timestamp, "t2");
        assert!(latest::<ConnectionsRecord>(dir.path(), "missing").is_none());
    }

    #[test]
    fn records_from_before_several_peers_still_read() {
        // The shape of a record with one peer (fields trimmed to what changed).
        let old = serde_json::json!({
            "scenario": "single", "timestamp": "t", "revision": {"commit": "abc", "dirty": false},
            "machine": Machine::default(), "settings": SweepSettings::default(),
            "criteria": Criteria::default(), "peer_setup": "mosquitto",
            "meterflow": TargetSweep { target: "meterflow".into(), ..TargetSweep::default() },
            "peer": TargetSweep { target: "mosquitto".into(), ..TargetSweep::default() },
            "ratios": Ratios { sustainable_msgs_per_s: Some(2.0), ..Ratios::default() },
            "plot": null, "notes": [],
        });
        let record: ThroughputRecord = serde_json::from_value(old).unwrap();
        assert_eq!(record.all_peers().count(), 1);
        let ratios = record.all_ratios();
        assert_eq!(ratios.len(), 1);
        assert_eq!(ratios[0].peer, "mosquitto");
        // New records write the lists only.
        let json = serde_json::to_value(&record).unwrap();
        assert!(json.get("peer").is_none() && json.get("ratios").is_none());
        assert_eq!(json["peers"], serde_json::json!([]));
    }

    #[test]
    fn machine_and_revision_probe_without_failing() {
        let machine = Machine::probe(1024, true);
        assert!(machine.nproc >= 1);
        assert!(machine.mem_total_mib > 0);
        assert_eq!(machine.loadavg_start.split(' ').count(), 3);
        let revision = Revision::probe(Path::new(env!("CARGO_MANIFEST_DIR")));
        assert!(!revision.commit.is_empty());
        let binary = BinaryInfo::probe(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("Cargo.toml")
                .as_path(),
        )
        .unwrap();
        assert!(binary.bytes > 0 && binary.modified.ends_with('Z'));
        assert!(BinaryInfo::probe(Path::new("/nonexistent")).is_none());
    }
}
