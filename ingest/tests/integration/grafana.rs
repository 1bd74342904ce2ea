//! The Grafana dashboard and the Prometheus alert rules shipped in the Helm chart query
//! only metrics a real meterflow exports, with labels it really sets.
//!
//! A live meterflow gets a little of every kind of traffic — a simulated fleet (so the
//! histograms have samples), a leak-flagged uplink (an alert) and an undecodable one
//! (a dead letter) — then every `meterflow_*` name in `dashboards/meterflow.json` and
//! `templates/prometheusrule.yaml` must be a series of `/metrics`, and every label a
//! selector or a `by (…)` clause names must be set on that series, except the labels
//! Prometheus adds itself when it scrapes (namespace, pod, …).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use meterflow_simulator::{SimConfig, run};

use crate::utils::{Meterflow, tool};

/// Labels the Prometheus scrape (ServiceMonitor target labels) adds, not meterflow.
const TARGET_LABELS: &[&str] = &[
    "namespace",
    "pod",
    "job",
    "instance",
    "service",
    "container",
    "endpoint",
];

/// How long the leak alert and the dead letter get to show in the metrics: both are
/// counted once their batch is durable, well under a second on loopback.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

fn chart_file(path: &str) -> String {
    let full = format!("{}/../helm/meterflow/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {full}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_rules_query_only_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let service = Meterflow::start(&dir.path().join("data"));

    let config = SimConfig {
        meters: 10,
        messages_per_meter: 5,
        readings_per_message: 4,
        seed: 11,
        timeout_s: 60,
        ..service.sim_config()
    };
    let report = run(config).await.expect("simulator runs");
    assert_eq!(report.unacked, 0, "{report:?}\n{}", service.log_tail());

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let leak = format!(
        r#"{{"v":1,"seq":1,"readings":[{{"ts":{},"reg":5000,"rev":0,"flow":40}}],"flags":["leak"]}}"#,
        now - 60_000
    );
    publish(&service, "leak01", &leak);
    publish(&service, "garbled01", "this is not an uplink");

    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let metrics = service.metrics();
        let alerted =
            metrics.value("meterflow_alerts_total{kind=\"leak\",state=\"opened\"}") >= 1.0;
        let dead = metrics.messages("dead_letter") >= 1.0;
        if alerted && dead {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {SETTLE_TIMEOUT:?}: leak alert counted {alerted}, dead letter counted {dead}\n{}",
            service.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let (status, exposition) = service.get("/metrics");
    assert_eq!(status, 200);
    let live = series_labels(&exposition);

    let distributed_only = distributed_only_metrics();
    let mut problems = Vec::new();
    for file in ["dashboards/meterflow.json", "templates/prometheusrule.yaml"] {
        let text = chart_file(file);
        let queried = queried_metrics(&text);
        assert!(
            queried.len() >= 5,
            "{file}: found only {queried:?}; has the file moved?"
        );
        for (metric, labels) in queried {
            let Some(exported) = live.get(&metric) else {
                if !distributed_only.contains(&metric) {
                    problems.push(format!("{file}: {metric} is not exported"));
                }
                continue;
            };
            for label in labels {
                if !TARGET_LABELS.contains(&label.as_str()) && !exported.contains(&label) {
                    problems.push(format!(
                        "{file}: {metric} has no label {label:?} (it has {exported:?})"
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the chart queries what meterflow does not export:\n  {}\n\nexported series: {:?}",
        problems.join("\n  "),
        live.keys().collect::<Vec<_>>()
    );
}

/// Publishes one raw uplink as meter `meter` of the demo tenant with Debian's client.
fn publish(service: &Meterflow, meter: &str, payload: &str) {
    let status = Command::new(tool("mosquitto_pub"))
        .args(["-h", &service.mqtt.ip().to_string()])
        .args(["-p", &service.mqtt.port().to_string()])
        .args(["-i", &format!("demo.{meter}")])
        .args(["-t", &format!("meters/demo/{meter}/up")])
        .args(["-q", "1", "-m", payload])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub for {meter}: {status}");
}

/// Every series name of a Prometheus text exposition with the label names it carries.
fn series_labels(exposition: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let (name, rest) = line.split_at(name_end);
        if name.is_empty() {
            continue;
        }
        let labels = series.entry(name.to_string()).or_default();
        if let Some(body) = rest.strip_prefix('{') {
            labels.extend(exposition_label_names(body));
        }
    }
    series
}

/// Label names of `k="v",k2="v2"}…`; values may hold escaped quotes, commas, braces.
fn exposition_label_names(body: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let name: String = chars
            .by_ref()
            .take_while(|c| *c != '=' && *c != '}')
            .collect();
        let name = name.trim().trim_start_matches(',').trim();
        if name.is_empty() || chars.next() != Some('"') {
            return names;
        }
        names.push(name.to_string());
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => escaped = false,
            }
        }
    }
}

/// Every `meterflow_*` metric a dashboard or rule file mentions, with the label names
/// its selectors (`metric{label="…"}`) and its expression's `by (…)` clauses use. A
/// `by` clause is attributed to every metric of the same expression line, which is
/// exact for the chart's one-metric expressions and conservative otherwise.
fn queried_metrics(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        // Grafana JSON escapes the quotes of selectors; Helm templates too, inside strings.
        let line = line.replace("\\\"", "\"");
        let grouping = by_labels(&line);
        let bytes = line.as_bytes();
        let mut from = 0;
        while let Some(offset) = line[from..].find("meterflow_") {
            let start = from + offset;
            let preceded = start > 0 && is_name_byte(bytes[start - 1]);
            let end = start
                + line[start..]
                    .bytes()
                    .take_while(|b| is_name_byte(*b))
                    .count();
            from = end;
            if preceded {
                continue;
            }
            let labels = found.entry(line[start..end].to_string()).or_default();
            labels.extend(grouping.iter().cloned());
            if let Some(selector) = line[end..].strip_prefix('{') {
                let selector = &selector[..selector.find('}').unwrap_or(selector.len())];
                labels.extend(selector_label_names(selector));
            }
        }
    }
    found
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
}

/// `a="x", b=~"$v", %s` → `[a, b]` (template placeholders are skipped).
fn selector_label_names(selector: &str) -> Vec<String> {
    selector
        .split(',')
        .filter_map(|matcher| {
            let key = matcher.split(['=', '!']).next()?.trim();
            (matcher.contains('=') && !key.is_empty() && key.bytes().all(is_name_byte))
                .then(|| key.to_string())
        })
        .collect()
}

/// Metrics only distributed mode's endpoints and processors export (named in
/// `ingest/src/kafka/`), which this embedded meterflow cannot show; the distributed
/// tests check those processes serve them.
fn distributed_only_metrics() -> BTreeSet<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/kafka");
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).expect("ingest/src/kafka") {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for quoted in text.split('"').skip(1).step_by(2) {
            if quoted.starts_with("meterflow_") && quoted.bytes().all(is_name_byte) {
                names.insert(quoted.to_string());
            }
        }
    }
    names
}

/// The label names of every `by (…)` clause of a line.
fn by_labels(line: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("by (") {
        let inner = &rest[at + 4..];
        let close = inner.find(')').unwrap_or(inner.len());
        labels.extend(
            inner[..close]
                .split(',')
                .map(str::trim)
                // A Helm template's placeholder (`by (%s)`) names no label itself.
                .filter(|l| !l.is_empty() && !l.starts_with('%'))
                .map(str::to_string),
        );
        rest = &inner[close..];
    }
    labels
}

#[test]
fn the_scanners_read_promql_and_the_exposition_format() {
    let text = r#"{"expr": "sum by (le, kind) (rate(meterflow_x_bucket{namespace=~\"$ns\", outcome=\"shed\"}[5m])) / meterflow_y_total"}
    "expr" (printf "max by (namespace, pod) (meterflow_z{%s}) > 0" $sel)
    not_meterflow_w and meterflow_v"#;
    let found = queried_metrics(text);
    let names: Vec<_> = found.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "meterflow_v",
            "meterflow_x_bucket",
            "meterflow_y_total",
            "meterflow_z"
        ]
    );
    let x: Vec<_> = found["meterflow_x_bucket"]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(x, ["kind", "le", "namespace", "outcome"]);
    let z: Vec<_> = found["meterflow_z"].iter().map(String::as_str).collect();
    assert_eq!(z, ["namespace", "pod"]);

    let live = series_labels(
        "# TYPE a counter\na_total{kind=\"l,e}a\\\"k\",shard=\"1\"} 3\nb 1\nc_bucket{le=\"0.5\"} 2\n",
    );
    let a: Vec<_> = live["a_total"].iter().map(String::as_str).collect();
    assert_eq!(a, ["kind", "shard"]);
    assert!(live["b"].is_empty());
    assert!(live["c_bucket"].contains("le"));
}
