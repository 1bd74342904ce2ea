//! What an operator sees: a healthy start, a small fleet and a SIGTERM shutdown log
//! nothing at WARN or ERROR, no ANSI colour when stderr is a file, only JSON objects
//! with `MF_LOG_JSON=1`; and `/metrics` carries build info, the process metrics and
//! the breaker state gauges.

use std::path::Path;

use meterflow_simulator::{SimConfig, run};

use crate::utils::{Meterflow, free_addr};

/// Starts meterflow with the log settings left at their defaults (apart from
/// `extra_env`), sends it a small fleet, stops it with SIGTERM and returns everything
/// it wrote to stderr.
async fn healthy_run(dir: &Path, extra_env: &[(&str, &str)]) -> String {
    let mut env: Vec<(&str, Option<&str>)> = vec![("MF_LOG_LEVEL", None), ("MF_LOG_JSON", None)];
    env.extend(extra_env.iter().map(|(name, value)| (*name, Some(*value))));
    let mut service = Meterflow::start_env(&dir.join("data"), free_addr(), free_addr(), &[], &env);
    let config = SimConfig {
        mqtt: service.mqtt.to_string(),
        meters: 20,
        messages_per_meter: 5,
        readings_per_message: 4,
        seed: 5,
        timeout_s: 60,
        ..SimConfig::default()
    }
    .resolved_now();
    let report = run(config).await.expect("simulator runs");
    assert_eq!(
        (report.acked, report.unacked),
        (100, 0),
        "{report:?}\n{}",
        service.log_text()
    );
    service.stop();
    let text = service.log_text();
    assert!(
        text.contains("meterflow stopped"),
        "the shutdown was not logged:\n{text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_run_logs_no_warnings_and_no_colour_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = healthy_run(dir.path(), &[]).await;
    assert!(
        !text.contains('\x1b'),
        "ANSI escapes in a log file:\n{text}"
    );
    for line in text.lines() {
        // `2026-12-04T07:34:12.078064Z  INFO target: message`
        let level = line.split_whitespace().nth(1).unwrap_or("");
        assert!(
            level != "WARN" && level != "ERROR",
            "a healthy run logged {level}: {line}\n\n{text}"
        );
    }
    // The store's own INFO chatter (fjall, lsm_tree) is filtered out by default.
    assert!(
        !text.contains("fjall") && !text.contains("lsm_tree"),
        "third-party INFO lines by default:\n{text}"
    );
    assert!(text.contains("meterflow running"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_objects_on_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = healthy_run(dir.path(), &[("MF_LOG_JSON", "1")]).await;
    let mut messages = Vec::new();
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n\n{text}"));
        let level = value["level"].as_str().unwrap_or_default();
        assert!(
            value.is_object() && !level.is_empty(),
            "not a log event: {line}"
        );
        assert!(
            level != "WARN" && level != "ERROR",
            "a healthy run logged {level}: {line}\n\n{text}"
        );
        messages.push(
            value["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    assert!(
        messages.iter().any(|m| m == "meterflow running"),
        "{messages:?}"
    );
}

#[test]
fn metrics_carry_build_info_process_metrics_and_breaker_states() {
    let dir = tempfile::tempdir().unwrap();
    let service = Meterflow::start(&dir.path().join("data"));
    let (status, text) = service.get("/metrics");
    assert_eq!(status, 200);
    let metrics = service.metrics();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        metrics.value(&format!("meterflow_build_info{{version=\"{version}\"}}")),
        1.0,
        "{text}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(metrics.value(name) > 0.0, "{name} missing or 0:\n{text}");
    }
    assert!(
        metrics.0.contains_key("process_cpu_seconds_total"),
        "{text}"
    );
    assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = metrics.value("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "start time {started}, now {now}"
    );
    // Closed breakers (the embedded store and memory cache have none: 0).
    for name in [
        "meterflow_store_breaker_state",
        "meterflow_cache_breaker_state",
        "meterflow_store_breaker_open",
        "meterflow_cache_breaker_open",
    ] {
        assert_eq!(metrics.0.get(name), Some(&0.0), "{name}:\n{text}");
    }
    assert!(
        text.contains("# HELP meterflow_store_breaker_open Deprecated"),
        "{text}"
    );
}
