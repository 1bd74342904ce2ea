//! Reads what the benchmark measured from gungraun's machine-readable output
//! (`cargo bench … -- --output-format=json`): one JSON object per line, one line per
//! benchmark. Of each, the gate takes the benchmark's function name (the stage) and
//! Callgrind's total `Ir` (instructions executed, summed over the process's threads;
//! only the benchmarked function is collected, so its setup and other threads count
//! zero): `profiles[tool = "Callgrind"].data.total.metrics.Ir.values.new`.

use anyhow::{Context, bail};
use serde_json::Value;

use crate::gate::Counts;

/// Instruction counts by stage from gungraun's JSON lines. Fails on a line that is
/// not a benchmark summary with a Callgrind `Ir`, and on a stage measured twice
/// (the gate compares one count per stage).
pub(crate) fn instruction_counts(json_lines: &str) -> anyhow::Result<Counts> {
    let mut counts = Counts::new();
    for (index, line) in json_lines.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let number = index + 1;
        let summary: Value = serde_json::from_str(line)
            .with_context(|| format!("line {number} of the benchmark output is not JSON"))?;
        let stage = summary["function_name"]
            .as_str()
            .with_context(|| format!("line {number}: no function_name"))?;
        let ir = callgrind_ir(&summary)
            .with_context(|| format!("line {number} ({stage}): no Callgrind Ir total"))?;
        if counts.insert(stage.to_string(), ir).is_some() {
            bail!(
                "stage {stage} measured twice: give each benchmark function of the gate one #[bench]"
            );
        }
    }
    if counts.is_empty() {
        bail!("the benchmark reported nothing: did it run (see its output above)?");
    }
    Ok(counts)
}

fn callgrind_ir(summary: &Value) -> Option<u64> {
    summary["profiles"]
        .as_array()?
        .iter()
        .find(|profile| profile["tool"] == "Callgrind")?["data"]["total"]["metrics"]["Ir"]["values"]
        ["new"]
        .as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gungraun 0.20 summary line, cut down to the fields the gate reads and a few
    /// it ignores, with `Ir` as given.
    fn line(function: &str, ir: u64) -> String {
        format!(
            r#"{{"baselines":[null,null],"function_name":"{function}","group":"stages","id":"round","kind":"LibraryBenchmark","module_path":"hot_path::stages::{function}","profiles":[{{"data":{{"parts":[],"total":{{"metrics":{{"EstimatedCycles":{{"change":null,"values":{{"new":1128048}}}},"Ir":{{"change":{{"diff_pct":"0","factor":"1"}},"values":{{"new":{ir},"old":825447}}}}}},"regressions":[]}}}},"tool":"Callgrind"}}]}}"#
        )
    }

    #[test]
    fn takes_each_stages_callgrind_instructions() {
        let output = format!(
            "{}\n\n{}\n",
            line("decode_json", 825_447),
            line("store_commit", 8_877_041)
        );
        let counts = instruction_counts(&output).unwrap();
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [
                ("decode_json".to_string(), 825_447),
                ("store_commit".to_string(), 8_877_041)
            ]
        );
    }

    #[test]
    fn refuses_what_it_cannot_judge() {
        let twice = format!("{}\n{}", line("a", 1), line("a", 2));
        let without_ir = line("a", 1).replace(r#""Ir""#, r#""Irx""#);
        let other_tool = line("a", 1).replace("Callgrind", "DHAT");
        for (output, says) in [
            ("", "reported nothing"),
            ("not json", "not JSON"),
            (twice.as_str(), "measured twice"),
            (without_ir.as_str(), "no Callgrind Ir"),
            (other_tool.as_str(), "no Callgrind Ir"),
        ] {
            let error = format!("{:#}", instruction_counts(output).unwrap_err());
            assert!(error.contains(says), "{error:?} should say {says:?}");
        }
    }
}
