//! Starting and stopping a real `meterflow` process, reading its HTTP API and metrics,
//! and the simulator's ground truth.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meterflow_model::{MeterKey, MeterState, StoredReading, Uplink};
use meterflow_simulator::{SimConfig, meter_messages};
use meterflow_storage::ReadingStore;
use meterflow_storage::embedded::EmbeddedStore;

/// How long a fresh meterflow gets to become ready (a first start on ScyllaDB
/// creates the keyspace and tables, which a loaded test machine can take long over).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A free loopback address for a service a test starts
/// ([`server_support::free_port`]).
pub(crate) fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::server_support::free_port()))
}

/// A meterflow process.
pub(crate) struct Meterflow {
    child: Option<Child>,
    pub(crate) mqtt: SocketAddr,
    pub(crate) http: SocketAddr,
    log: PathBuf,
}

impl Meterflow {
    /// Starts meterflow on fresh ports with its data in `data`.
    pub(crate) fn start(data: &Path) -> Meterflow {
        Self::start_on(data, free_addr(), free_addr())
    }

    /// Starts meterflow on the given ports (to restart "the same" service).
    pub(crate) fn start_on(data: &Path, mqtt: SocketAddr, http: SocketAddr) -> Meterflow {
        Self::start_with(data, mqtt, http, &[])
    }

    /// Starts meterflow with extra command-line arguments (e.g. `--store`, `--config`).
    pub(crate) fn start_with(
        data: &Path,
        mqtt: SocketAddr,
        http: SocketAddr,
        extra: &[&str],
    ) -> Meterflow {
        Self::start_env(data, mqtt, http, extra, &[])
    }

    /// Like [`Meterflow::start_with`], with environment variables set (`Some`) or
    /// removed (`None`) for the process.
    pub(crate) fn start_env(
        data: &Path,
        mqtt: SocketAddr,
        http: SocketAddr,
        extra: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> Meterflow {
        let log = data.with_extension(format!(
            "{}.log",
            Instant::now().elapsed().as_nanos() ^ u128::from(http.port())
        ));
        let stderr = File::create(&log).expect("create the log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_meterflow"));
        command
            .args([
                "run",
                "--mqtt",
                &mqtt.to_string(),
                "--http",
                &http.to_string(),
                "--data",
            ])
            .arg(data)
            .args(extra)
            .env("MF_SHARDS", "2")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let child = command.spawn().expect("start the meterflow binary");
        let mut service = Meterflow {
            child: Some(child),
            mqtt,
            http,
            log,
        };
        service.wait_ready();
        service
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Resident memory of the process, bytes.
    pub(crate) fn rss_bytes(&self) -> u64 {
        self.status_field("VmRSS")
            .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// A field of the process's `/proc/<pid>/status`, trimmed (`None` when absent).
    pub(crate) fn status_field(&self, field: &str) -> Option<String> {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name == field).then(|| value.trim().to_string())
        })
    }

    /// Waits until the process answers `/readyz` (after it started, or restarted in
    /// place), failing if it exits.
    pub(crate) fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "meterflow exited early ({status}):\n{}",
                    self.log_without_frames()
                );
            }
            if self.get("/readyz").0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "meterflow not ready after {READY_TIMEOUT:?}:\n{}",
            self.log_tail()
        );
    }

    /// Everything the process wrote to stderr so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The last 40 lines of the log that are not frames of a backtrace: what a
    /// process that exited with an error said, which a long backtrace would push out
    /// of [`log_tail`](Self::log_tail).
    pub(crate) fn log_without_frames(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let frame = |line: &&str| {
            let line = line.trim_start();
            line.starts_with("at ")
                || line
                    .split_once(": ")
                    .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        };
        let lines: Vec<_> = text.lines().filter(|l| !frame(l)).collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `kill -9`: no chance to flush anything.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL meterflow");
            child.wait().unwrap();
        }
    }

    /// Sends the process `signal` (`STOP`, `CONT`, `TERM`) with kill(1).
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGTERM and wait: meterflow seals and stores what it holds.
    pub(crate) fn stop(&mut self) {
        if self.child.is_some() {
            self.signal("TERM");
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(
                        status.success(),
                        "meterflow exited with {status}:\n{}",
                        self.log_tail()
                    );
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "meterflow did not stop on SIGTERM:\n{}",
                    self.log_tail()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// GET a path; returns the status and the body.
    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        match agent.get(&format!("http://{}{path}", self.http)).call() {
            Ok(mut response) => (
                response.status().as_u16(),
                response.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    }

    pub(crate) fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The Prometheus metrics, `name{labels}` → value.
    pub(crate) fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200);
        Metrics(
            body.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// A simulator config aimed at this service. Resolve it (`resolved_now`) after
    /// setting the fleet's size: the first reading's timestamp depends on it.
    pub(crate) fn sim_config(&self) -> SimConfig {
        SimConfig {
            mqtt: self.mqtt.to_string(),
            ..SimConfig::default()
        }
    }
}

impl Drop for Meterflow {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub(crate) struct Metrics(pub(crate) HashMap<String, f64>);

impl Metrics {
    pub(crate) fn value(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    pub(crate) fn messages(&self, outcome: &str) -> f64 {
        self.value(&format!(
            "meterflow_messages_total{{outcome=\"{outcome}\"}}"
        ))
    }

    pub(crate) fn received(&self) -> f64 {
        self.value("meterflow_messages_received_total")
    }

    /// received = stored + dead_letter + duplicate + shed (DESIGN §6.4).
    pub(crate) fn assert_accounted(&self) {
        let outcomes: f64 = [
            "stored",
            "dead_letter",
            "dead_letter_dropped",
            "duplicate",
            "shed",
        ]
        .iter()
        .map(|o| self.messages(o))
        .sum();
        assert_eq!(
            self.received(),
            outcomes,
            "received must equal the sum of outcomes: {:?}",
            self.0
        );
    }
}

/// Every message a simulated meter sends, in seq order.
pub(crate) fn ground_truth(config: &SimConfig, meter_index: usize) -> Vec<Uplink> {
    let mut messages = meter_messages(config, meter_index);
    let mut out = Vec::new();
    let mut uplink = Uplink::new(0, Vec::new());
    while messages.fill_next(&mut uplink).is_some() {
        out.push(uplink.clone());
    }
    out
}

/// Checks the store holds exactly the simulated readings of every meter of `config`
/// (count and values) and returns each meter's persisted state.
pub(crate) fn assert_store_matches(data: &Path, config: &SimConfig) -> Vec<(MeterKey, MeterState)> {
    let store = EmbeddedStore::open(data).expect("open the store after meterflow stopped");
    let mut states = Vec::new();
    for index in config.meter_indices() {
        let key = config.meter_key(index).unwrap();
        let expected: Vec<(u64, meterflow_model::Reading)> = ground_truth(config, index)
            .into_iter()
            .flat_map(|u| u.readings.into_iter().map(move |r| (u.seq, r)))
            .collect();
        let stored: Vec<StoredReading> = store
            .readings(&key, i64::MIN, i64::MAX, usize::MAX)
            .unwrap();
        let got: Vec<(u64, meterflow_model::Reading)> =
            stored.iter().map(|s| (s.seq, s.reading)).collect();
        if got.len() != expected.len() {
            let missing: Vec<_> = expected.iter().filter(|e| !got.contains(e)).collect();
            let extra: Vec<_> = got.iter().filter(|g| !expected.contains(g)).collect();
            panic!(
                "{key}: {} readings stored, {} sent\nsent but not stored: {missing:?}\nstored but not sent: {extra:?}",
                got.len(),
                expected.len()
            );
        }
        assert_eq!(got, expected, "readings of {key}");
        let state = store
            .meter_state(&key)
            .unwrap()
            .expect("meter state persisted");
        let messages = meter_messages(config, index).remaining();
        assert_eq!(state.seq.watermark(), Some(messages), "watermark of {key}");
        states.push((key, state));
    }
    states
}

/// Today's usage as the usage processor defines it: the register delta over the
/// readings of the newest reading's UTC day.
pub(crate) fn expected_today_l(config: &SimConfig, meter_index: usize) -> u64 {
    let readings: Vec<_> = ground_truth(config, meter_index)
        .into_iter()
        .flat_map(|u| u.readings)
        .collect();
    // An interval's litres belong to the day containing `ts − 1 ms` (the demo tenant's
    // local day is the UTC day).
    let day_of_interval = |ts: i64| meterflow_model::time::day_of(ts - 1);
    let last = readings.last().unwrap();
    let day = day_of_interval(last.ts);
    let base = readings
        .iter()
        .rev()
        .find(|r| day_of_interval(r.ts) < day)
        .unwrap_or(&readings[0]);
    last.reg - base.reg
}

/// Path of a command-line tool the test needs; fails loudly when it is missing.
pub(crate) fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: run the README's test command (scripts/test), which installs mosquitto-clients")
    })
}

/// Publishes `uplinks` (JSON) for one meter over a real MQTT connection and waits
/// until the ack for the last one arrives; returns every ack payload seen.
pub(crate) async fn send_and_wait_for_ack(
    mqtt: SocketAddr,
    tenant: &str,
    meter: &str,
    uplinks: &[Uplink],
) -> Vec<String> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(
        format!("{tenant}.{meter}"),
        mqtt.ip().to_string(),
        mqtt.port(),
    );
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut events) = AsyncClient::new(options, uplinks.len() + 16);
    client
        .subscribe(format!("meters/{tenant}/{meter}/ack"), QoS::AtMostOnce)
        .await
        .unwrap();
    for uplink in uplinks {
        let payload = meterflow_model::codec::encode_json(uplink);
        client
            .publish(
                format!("meters/{tenant}/{meter}/up"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }
    let last = uplinks.last().map_or(0, |u| u.seq);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut acks = Vec::new();
    loop {
        let Ok(polled) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            events.poll(),
        )
        .await
        else {
            panic!("no ack for {tenant}/{meter} seq {last}; acks so far {acks:?}");
        };
        let event = polled.expect("mqtt connection stays up");
        if let Event::Incoming(Packet::Publish(p)) = event {
            let ack = String::from_utf8_lossy(&p.payload).into_owned();
            let seq = meterflow_model::ack::decode(&p.payload);
            acks.push(ack);
            if seq >= Some(last) {
                let _ = client.disconnect().await;
                return acks;
            }
        }
    }
}

/// What a district hour's percentiles show for one value: its sketch bucket's
/// representative (within 1 %).
pub(crate) fn as_sketched(litres: u64) -> Option<u64> {
    let mut sketch = meterflow_model::UsageSketch::default();
    sketch.add(litres);
    sketch.quantile(0.5)
}

/// One message of register reads at `(ts, register)`, nothing else measured.
pub(crate) fn register_uplink(seq: u64, reads: &[(i64, u64)]) -> Uplink {
    let readings = reads
        .iter()
        .map(|(ts, reg)| meterflow_model::Reading {
            ts: *ts,
            reg: *reg,
            rev: 0,
            flow: 0,
            temp: None,
        })
        .collect();
    Uplink::new(seq, readings)
}

/// Hourly readings `first_ts, first_ts + 1 h, …` (`count` of them) with a constant
/// flow of `lph` litres per hour from register `reg0`, in messages of `per_message`.
pub(crate) fn hourly_uplinks(
    first_seq: u64,
    first_ts: i64,
    reg0: u64,
    lph: u64,
    count: usize,
    per_message: usize,
) -> Vec<Uplink> {
    let readings: Vec<meterflow_model::Reading> = (0..count)
        .map(|i| meterflow_model::Reading {
            ts: first_ts + i as i64 * 3_600_000,
            reg: reg0 + lph * i as u64,
            rev: 0,
            flow: lph as u32,
            temp: Some(120),
        })
        .collect();
    readings
        .chunks(per_message)
        .enumerate()
        .map(|(i, chunk)| Uplink::new(first_seq + i as u64, chunk.to_vec()))
        .collect()
}

/// Runs a fleet in the background; its live counters show progress.
pub(crate) fn spawn_fleet(
    config: &SimConfig,
) -> (
    tokio::task::JoinHandle<Result<meterflow_simulator::Report, meterflow_simulator::SimError>>,
    std::sync::Arc<meterflow_simulator::FleetCounters>,
) {
    let counters = std::sync::Arc::new(meterflow_simulator::FleetCounters::default());
    let fleet = tokio::spawn(meterflow_simulator::run_with(
        config.clone(),
        counters.clone(),
        std::future::pending(),
    ));
    (fleet, counters)
}

/// Waits until the fleet has `acked` messages acked (within `within`).
pub(crate) async fn wait_for_acks(
    counters: &meterflow_simulator::FleetCounters,
    acked: u64,
    within: Duration,
    service: &Meterflow,
) {
    let deadline = Instant::now() + within;
    while counters.snapshot().acked < acked {
        assert!(
            Instant::now() < deadline,
            "fewer than {acked} acks in {within:?}:\n{}",
            service.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------
// Raw MQTT 3.1.1, written by hand for the traffic no library would send (bad input,
// attacks); everything well-formed goes through real clients.

/// Appends an MQTT "remaining length" varint.
pub(crate) fn push_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

/// Appends a length-prefixed MQTT string (or binary).
pub(crate) fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A packet: its first byte, the remaining length, the body.
pub(crate) fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    push_len(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// `(topic, reason, correlation_id)` of each dead letter in an API answer.
/// Bytes allocated on disk to the files under `dir`, recursively — not their apparent
/// size: fjall preallocates its journal as a sparse file, which only takes disk as it
/// is written.
pub(crate) fn disk_usage(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                disk_usage(&entry.path())
            } else {
                // st_blocks counts 512-byte units whatever the filesystem's block size.
                meta.blocks() * 512
            }
        })
        .sum()
}

pub(crate) fn dead_letter_triples(letters: &serde_json::Value) -> Vec<(String, String, String)> {
    letters
        .as_array()
        .expect("a list of dead letters")
        .iter()
        .map(|d| {
            let field = |name: &str| d[name].as_str().unwrap_or_default().to_string();
            (field("topic"), field("reason"), field("correlation_id"))
        })
        .collect()
}

/// An HTTP answer: status, content type and disposition headers, body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) disposition: String,
    pub(crate) body: String,
}

impl Answer {
    /// The content type without its parameters (`text/csv; charset=utf-8` → `text/csv`).
    pub(crate) fn media_type(&self) -> &str {
        self.content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

fn api_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// A GET of `path` (with its query) with `headers`; any status is an answer.
pub(crate) fn api_get(service: &Meterflow, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = api_agent().get(&format!("http://{}{path}", service.http));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(request.call().expect("the HTTP API answers"))
}

/// A POST of the JSON `body` to `path`; any status is an answer.
pub(crate) fn api_post(service: &Meterflow, path: &str, body: &serde_json::Value) -> Answer {
    let request = api_agent()
        .post(&format!("http://{}{path}", service.http))
        .header("Content-Type", "application/json");
    answer(
        request
            .send(body.to_string())
            .expect("the HTTP API answers"),
    )
}

fn answer(mut response: ureq::http::Response<ureq::Body>) -> Answer {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (content_type, disposition) = (header("content-type"), header("content-disposition"));
    Answer {
        status: response.status().as_u16(),
        content_type,
        disposition,
        body: response.body_mut().read_to_string().unwrap(),
    }
}

/// Asks `path` of `service` until `ready` holds for its JSON answer (200), for at
/// most `within`: derived data lands a flush or a log hop after the ack.
pub(crate) async fn json_where(
    service: &Meterflow,
    path: &str,
    within: Duration,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (status, body) = service.get(path);
        if status == 200 {
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
            if ready(&answer) {
                return answer;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "GET {path} never got there: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts meterflow on fresh ports with `toml` as its config file (data beside it) and
/// `extra` arguments.
/// Stops a service [`start_configured`] in `dir` (SIGTERM) and starts it again on the
/// same ports, data and configuration.
pub(crate) fn restart_configured(mut service: Meterflow, dir: &Path) -> Meterflow {
    service.stop();
    start_again_configured(service, dir)
}

/// Kills a service [`start_configured`] in `dir` (SIGKILL: nothing flushed, nothing
/// stopped in order) and starts it again on the same ports, data and configuration.
pub(crate) fn kill9_and_restart_configured(mut service: Meterflow, dir: &Path) -> Meterflow {
    service.kill9();
    start_again_configured(service, dir)
}

fn start_again_configured(service: Meterflow, dir: &Path) -> Meterflow {
    let (mqtt, http) = (service.mqtt, service.http);
    drop(service);
    let config = dir.join("meterflow.toml");
    Meterflow::start_with(
        &dir.join("data"),
        mqtt,
        http,
        &["--config", config.to_str().unwrap()],
    )
}

pub(crate) fn start_configured(dir: &Path, toml: &str, extra: &[&str]) -> Meterflow {
    let config = dir.join("meterflow.toml");
    std::fs::write(&config, toml).unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    Meterflow::start_with(&dir.join("data"), free_addr(), free_addr(), &args)
}

/// One uplink from `meter` of tenant `demo` (three hourly reads, the newest three hours
/// old), acked.
pub(crate) async fn report_once(mqtt: SocketAddr, meter: &str) {
    let start = meterflow_ingest::clock::now_ms() - 3 * 3_600_000;
    send_and_wait_for_ack(mqtt, "demo", meter, &hourly_uplinks(1, start, 100, 5, 3, 3)).await;
}

/// Waits until `meter` of tenant `demo` has an open no-communication episode on
/// `service` (within `within`), and checks its step; fails with the service's log.
pub(crate) async fn assert_no_communication_opens(
    service: &Meterflow,
    meter: &str,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let open = service.get_json("/api/v1/tenants/demo/alerts?state=open");
        let alert = open
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == "no_communication" && a["meter"] == meter)
            .cloned();
        if let Some(alert) = alert {
            assert_eq!(alert["state"], "opened", "{alert}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no no-communication episode for {meter}: {open}\n{}",
            service.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
