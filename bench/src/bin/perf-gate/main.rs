//! `perf-gate`: the performance gate's checker. Reads what `bench/benches/hot_path.rs`
//! measured (gungraun's JSON lines, see [`summary`]), compares every stage's
//! instruction count with the committed baseline ([`baseline`]) by the rule in
//! [`gate`], prints the table and exits non-zero when a stage regressed beyond the
//! tolerance (or the baseline and the benchmark disagree on the stages).
//! With `--update-baseline` it writes this run's counts as the new baseline instead.
//!
//! Run by `scripts/perf-gate`, which first runs the benchmark:
//!
//! ```sh
//! cargo bench -p meterflow-bench --bench hot_path -- --output-format=json > measured.jsonl
//! cargo run --profile bench -p meterflow-bench --bin perf-gate -- --measured measured.jsonl
//! ```

mod baseline;
mod gate;
mod summary;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Context;
use clap::Parser;

use crate::baseline::{Baseline, Toolchain};

/// How far above its baseline a stage may go, in percent, before the gate fails.
/// Callgrind counts instructions, not time, so the same binary on the same input
/// gives nearly the same count: over ten runs of one build the decodes and the MAC
/// did not move at all, the chain, the store commit and the cache apply moved by
/// 0.3–0.5 % and the shard's admit (the smallest stage, ~104k instructions) by 1.2 %,
/// 2.7 % across rebuilds of unchanged code — most likely allocator paths that depend
/// on the heap the setup left, whose processors use randomly seeded hash maps. 5 % is
/// about twice the worst of that, with room for glibc's CPU-specific memory routines
/// when CI runs on another CPU; the cost is that a regression under 5 % of a stage
/// passes (one extra `MeterState` clone per meter in the chain is +2.2 %).
const TOLERANCE_PCT: f64 = 5.0;

/// Compares the hot-path benchmark with the committed baseline.
#[derive(Debug, Parser)]
#[command(name = "perf-gate")]
struct Args {
    /// gungraun's output of the benchmark (`-- --output-format=json`), one JSON
    /// object per line.
    #[arg(long)]
    measured: PathBuf,
    /// The committed baseline.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/perf-baseline.json"))]
    baseline: PathBuf,
    /// Percent above the baseline a stage may go before the gate fails.
    #[arg(long, default_value_t = TOLERANCE_PCT)]
    tolerance: f64,
    /// The gungraun version the benchmark ran with (bench/Cargo.toml's pin).
    #[arg(long)]
    gungraun: String,
    /// Write this run's counts as the baseline instead of judging them.
    #[arg(long)]
    update_baseline: bool,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(passed) if passed => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("perf-gate: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Whether the gate passed (an update always does).
fn run(args: &Args) -> anyhow::Result<bool> {
    let measured = std::fs::read_to_string(&args.measured)
        .with_context(|| format!("reading {}", args.measured.display()))?;
    let measured = summary::instruction_counts(&measured)?;
    let toolchain = Toolchain {
        rustc: version_of("rustc")?,
        valgrind: version_of("valgrind")?,
        gungraun: args.gungraun.clone(),
    };
    let previous = match std::fs::read_to_string(&args.baseline) {
        Ok(text) => Some(
            Baseline::parse(&text)
                .with_context(|| format!("{} is not a baseline", args.baseline.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.update_baseline => None,
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "reading {} (record one with scripts/perf-gate --update-baseline)",
                    args.baseline.display()
                )
            });
        }
    };
    let old_counts = previous
        .as_ref()
        .map(|b| b.instructions.clone())
        .unwrap_or_default();
    let report = gate::compare(&old_counts, &measured, args.tolerance);
    print!("{}", report.render());
    if let Some(previous) = &previous {
        for difference in toolchain.differences(&previous.recorded_with) {
            println!("note: {difference}; counts are only comparable within one toolchain");
        }
    }
    if args.update_baseline {
        std::fs::write(&args.baseline, Baseline::new(toolchain, measured).to_text())
            .with_context(|| format!("writing {}", args.baseline.display()))?;
        println!("baseline written to {}", args.baseline.display());
        return Ok(true);
    }
    if report.passed() {
        println!("performance gate passed");
        if report.improved() {
            println!(
                "a stage is faster than its baseline by more than the tolerance: record the gain with scripts/perf-gate --update-baseline"
            );
        }
    } else {
        println!(
            "performance gate FAILED: a stage regressed by more than {}% or the stages changed; \
             find the cause (callgrind profiles under $CARGO_TARGET_DIR/gungraun), or, when the cost is intended, \
             re-record with scripts/perf-gate --update-baseline in the same commit",
            args.tolerance
        );
    }
    Ok(report.passed())
}

/// The first line of `<tool> --version`.
fn version_of(tool: &str) -> anyhow::Result<String> {
    let output = Command::new(tool)
        .arg("--version")
        .output()
        .with_context(|| format!("running {tool} --version"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}
