//! The committed baseline, `bench/perf-baseline.json`: the instruction count of every
//! stage of the gate's benchmark when it was last recorded, and the toolchain that
//! recorded it. Instruction counts depend on the compiler, on valgrind and on the
//! harness, so a different toolchain is reported next to the table: its counts are
//! not comparable, and the baseline is re-recorded in the change that moves it.
//!
//! Format (pretty JSON, keys sorted, so a re-recorded baseline diffs line by line):
//! `{"about": "...", "recorded_with": {"rustc", "valgrind", "gungraun"},
//! "instructions": {"<stage>": <Ir>, ...}}`.

use serde::{Deserialize, Serialize};

use crate::gate::Counts;

/// What the `about` field says, so the file explains itself where it is read.
const ABOUT: &str = "Callgrind instruction counts (Ir) per hot-path stage of bench/benches/hot_path.rs, \
     compared by scripts/perf-gate; re-record with `scripts/perf-gate --update-baseline` \
     (see 'Performance gate' in bench/README.md)";

/// The versions a baseline was recorded with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Toolchain {
    /// `rustc --version`.
    pub(crate) rustc: String,
    /// `valgrind --version`.
    pub(crate) valgrind: String,
    /// The gungraun (and gungraun-runner) version pinned in bench/Cargo.toml.
    pub(crate) gungraun: String,
}

impl Toolchain {
    /// One line per version that differs from `recorded`'s, naming both.
    pub(crate) fn differences(&self, recorded: &Toolchain) -> Vec<String> {
        [
            ("rustc", &recorded.rustc, &self.rustc),
            ("valgrind", &recorded.valgrind, &self.valgrind),
            ("gungraun", &recorded.gungraun, &self.gungraun),
        ]
        .into_iter()
        .filter(|(_, then, now)| then != now)
        .map(|(tool, then, now)| {
            format!("{tool}: baseline recorded with {then:?}, this run {now:?}")
        })
        .collect()
    }
}

/// `bench/perf-baseline.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Baseline {
    about: String,
    pub(crate) recorded_with: Toolchain,
    pub(crate) instructions: Counts,
}

impl Baseline {
    pub(crate) fn new(recorded_with: Toolchain, instructions: Counts) -> Baseline {
        Baseline {
            about: ABOUT.to_string(),
            recorded_with,
            instructions,
        }
    }

    pub(crate) fn parse(text: &str) -> serde_json::Result<Baseline> {
        serde_json::from_str(text)
    }

    /// The file's text: pretty JSON and a final newline.
    pub(crate) fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("plain data serialises");
        text.push('\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toolchain() -> Toolchain {
        Toolchain {
            rustc: "rustc 1.95.0 (59807616e 2026-04-14)".into(),
            valgrind: "valgrind-3.19.0".into(),
            gungraun: "0.20.0".into(),
        }
    }

    #[test]
    fn a_baseline_reads_back_as_written() {
        let counts: Counts = [("decode_json".to_string(), 825_447)].into();
        let baseline = Baseline::new(toolchain(), counts);
        let text = baseline.to_text();
        assert!(text.ends_with("}\n"));
        assert!(text.contains("\"decode_json\": 825447"), "{text}");
        assert_eq!(Baseline::parse(&text).unwrap(), baseline);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = Baseline::new(toolchain(), Counts::new())
            .to_text()
            .replace("\"instructions\"", "\"tolerance\": 5, \"instructions\"");
        assert!(Baseline::parse(&text).is_err());
    }

    #[test]
    fn only_changed_versions_are_reported() {
        assert!(toolchain().differences(&toolchain()).is_empty());
        let newer = Toolchain {
            valgrind: "valgrind-3.24.0".into(),
            ..toolchain()
        };
        assert_eq!(
            newer.differences(&toolchain()),
            [r#"valgrind: baseline recorded with "valgrind-3.19.0", this run "valgrind-3.24.0""#]
        );
    }
}
