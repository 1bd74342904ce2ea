//! Scenario files: `bench/scenarios/{name}.toml`, each pairing a simulator config with
//! a meterflow config (CONVENTIONS §10), so a new case is a new file, not new code.
//!
//! Two kinds:
//! - `throughput` — `[sim]` (fleet and payload), `[sweep]` (the open-loop ladder) and
//!   `[meterflow]` (config file text and extra `run` arguments); optional
//!   `requires_flag` (skip unless `meterflow run --help` lists it) and
//!   `requires_cassandra` (skip unless `scripts/cassandra status` succeeds);
//! - `connections` — `[connections]` (how many, how fast) and `[[variants]]` (the
//!   meterflow configs to measure).
//!
//! Unknown fields are refused, so a typo fails loudly instead of silently running
//! the default.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub(crate) enum ScenarioFile {
    Throughput(ThroughputFile),
    Connections(ConnectionsFile),
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ThroughputFile {
    pub(crate) description: String,
    #[serde(default)]
    pub(crate) requires_flag: Option<String>,
    #[serde(default)]
    pub(crate) requires_cassandra: bool,
    pub(crate) sim: SimSection,
    pub(crate) sweep: SweepSection,
    #[serde(default)]
    pub(crate) meterflow: MeterflowSection,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SimSection {
    pub(crate) meters: usize,
    pub(crate) readings_per_message: usize,
    pub(crate) closed_loop_messages_per_meter: u64,
    #[serde(default)]
    pub(crate) binary: bool,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SweepSection {
    pub(crate) step_secs: f64,
    pub(crate) start_fraction: f64,
    pub(crate) growth: f64,
    pub(crate) max_steps: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MeterflowSection {
    #[serde(default)]
    pub(crate) args: Vec<String>,
    /// The meterflow config file's text.
    #[serde(default)]
    pub(crate) config: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConnectionsFile {
    pub(crate) description: String,
    pub(crate) connections: ConnectionsSection,
    pub(crate) variants: Vec<Variant>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConnectionsSection {
    /// 0: the open-file limit less headroom.
    pub(crate) requested: usize,
    pub(crate) per_proc: usize,
    pub(crate) connect_rate: f64,
    pub(crate) hold_secs: f64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Variant {
    pub(crate) label: String,
    #[serde(default)]
    pub(crate) config: String,
}

impl ScenarioFile {
    pub(crate) fn parse(text: &str) -> Result<ScenarioFile, String> {
        let file: ScenarioFile = toml::from_str(text).map_err(|e| e.to_string())?;
        file.validate()?;
        Ok(file)
    }

    pub(crate) fn load(path: &Path) -> anyhow::Result<ScenarioFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("scenario {}: {e}", path.display()))
    }

    fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        match self {
            ScenarioFile::Throughput(t) => {
                if t.sim.meters == 0 {
                    problems.push("sim.meters must be at least 1");
                }
                if !(1..=256).contains(&t.sim.readings_per_message) {
                    problems.push("sim.readings_per_message must be 1..=256 (the wire limit)");
                }
                if t.sim.closed_loop_messages_per_meter == 0 {
                    problems.push("sim.closed_loop_messages_per_meter must be at least 1");
                }
                if !(t.sweep.step_secs > 0.0 && t.sweep.step_secs <= 60.0) {
                    problems.push("sweep.step_secs must be in (0, 60]: steps are bounded");
                }
                if t.sweep.growth.is_nan() || t.sweep.growth <= 1.0 {
                    problems.push("sweep.growth must be above 1");
                }
                if t.sweep.start_fraction.is_nan() || t.sweep.start_fraction <= 0.0 {
                    problems.push("sweep.start_fraction must be positive");
                }
                if t.sweep.max_steps == 0 || t.sweep.max_steps > 20 {
                    problems.push("sweep.max_steps must be 1..=20: sweeps are bounded");
                }
            }
            ScenarioFile::Connections(c) => {
                if c.connections.per_proc == 0 {
                    problems.push("connections.per_proc must be at least 1");
                }
                if c.connections.connect_rate.is_nan() || c.connections.connect_rate <= 0.0 {
                    problems.push("connections.connect_rate must be positive");
                }
                if !(c.connections.hold_secs > 0.0 && c.connections.hold_secs <= 120.0) {
                    problems.push("connections.hold_secs must be in (0, 120]");
                }
                if c.variants.is_empty() {
                    problems.push("connections needs at least one [[variants]]");
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        for name in ["single", "burst24", "cassandra", "connections"] {
            let file = ScenarioFile::load(&dir.join(format!("{name}.toml"))).unwrap();
            match (name, file) {
                ("connections", ScenarioFile::Connections(c)) => assert!(!c.variants.is_empty()),
                ("cassandra", ScenarioFile::Throughput(t)) => {
                    assert_eq!(t.requires_flag.as_deref(), Some("--store"));
                    assert!(t.requires_cassandra);
                }
                ("burst24", ScenarioFile::Throughput(t)) => {
                    assert_eq!(t.sim.readings_per_message, 24)
                }
                ("single", ScenarioFile::Throughput(t)) => {
                    assert_eq!(t.sim.readings_per_message, 1)
                }
                (name, other) => panic!("{name}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn typos_and_unbounded_sweeps_are_refused() {
        let base = r#"
            description = "x"
            kind = "throughput"
            [sim]
            meters = 10
            readings_per_message = 1
            closed_loop_messages_per_meter = 1
            [sweep]
            step_secs = 1.0
            start_fraction = 0.3
            growth = 1.5
            max_steps = 3
        "#;
        assert!(ScenarioFile::parse(base).is_ok());
        assert!(ScenarioFile::parse(&base.replace("meters = 10", "meterz = 10")).is_err());
        let error = ScenarioFile::parse(
            &base
                .replace("max_steps = 3", "max_steps = 500")
                .replace("growth = 1.5", "growth = 1.0"),
        )
        .unwrap_err();
        assert!(
            error.contains("max_steps") && error.contains("growth"),
            "{error}"
        );
        assert!(ScenarioFile::parse("kind = \"other\"").is_err());
    }
}
