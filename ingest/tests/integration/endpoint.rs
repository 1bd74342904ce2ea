//! The meter endpoint (`ingest/src/endpoint/`) against clients nobody here wrote —
//! Debian's `mosquitto_pub`/`mosquitto_sub`/`mosquitto_rr`, Python's paho-mqtt, rumqttc —
//! and against hostile raw TCP. Each test runs its own meterflow on free loopback ports.
//!
//! What is pinned here: a QoS 1 PUBACK means durable (for a standard client with no
//! ack-topic subscription, and as a property across `kill -9`); a connection is exactly
//! one meter, authenticated by its own credentials, and can neither read nor write
//! anything but its own topics; every socket-facing limit (connection cap, CONNECT
//! deadline, in-flight cap, packet size) holds against real traffic and costs only the
//! offending connection; TLS and integrations work with stock clients.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use meterflow_model::credentials::meter_password;
use meterflow_model::{MeterId, TenantId};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

use crate::utils::{Meterflow, dead_letter_triples, free_addr, packet, push_len, push_str, tool};

/// acme: per-meter passwords derived from this secret.
const ACME_SECRET: &str = "acme-meter-secret-0123456789";
const ACME_INTEGRATION: &str = "acme-integration-0123456789";
/// bravo: one password for all its meters.
const BRAVO_PASSWORD: &str = "bravo-password-0123456789";
const BRAVO_INTEGRATION: &str = "bravo-integration-0123456789";

/// Longest any single client run may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Two tenants: acme with per-meter passwords, bravo with a tenant-wide one; both with
/// integrations.
fn tenants_toml() -> String {
    format!(
        "[[tenants]]\nid = \"acme\"\nmeter_secret = \"{ACME_SECRET}\"\n\
         integration_password = \"{ACME_INTEGRATION}\"\n\n\
         [[tenants]]\nid = \"bravo\"\nmqtt_password = \"{BRAVO_PASSWORD}\"\n\
         integration_password = \"{BRAVO_INTEGRATION}\"\n"
    )
}

fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("meterflow.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// Starts meterflow with `toml` as its configuration file.
fn start(dir: &Path, toml: &str) -> Meterflow {
    let config = write_config(dir, toml);
    Meterflow::start_with(
        &dir.join("data"),
        free_addr(),
        free_addr(),
        &["--config", config.to_str().unwrap()],
    )
}

/// The derived MQTT password of an acme meter.
fn acme_password(meter: &str) -> String {
    meter_password(
        ACME_SECRET,
        &TenantId::try_from("acme").unwrap(),
        &MeterId::try_from(meter).unwrap(),
    )
}

/// An MQTT login.
#[derive(Clone, Debug)]
struct Cred {
    client_id: String,
    username: Option<String>,
    password: Option<String>,
}

impl Cred {
    fn demo(meter: &str) -> Cred {
        Cred {
            client_id: format!("demo.{meter}"),
            username: None,
            password: None,
        }
    }

    fn acme(meter: &str) -> Cred {
        Cred {
            client_id: format!("acme.{meter}"),
            username: Some("acme".into()),
            password: Some(acme_password(meter)),
        }
    }

    fn bravo(meter: &str) -> Cred {
        Cred {
            client_id: format!("bravo.{meter}"),
            username: Some("bravo".into()),
            password: Some(BRAVO_PASSWORD.into()),
        }
    }

    fn integration(tenant: &str, password: &str, client_id: &str) -> Cred {
        Cred {
            client_id: client_id.into(),
            username: Some(format!("{tenant}:integration")),
            password: Some(password.into()),
        }
    }

    fn with_password(mut self, password: &str) -> Cred {
        self.password = Some(password.into());
        self
    }

    fn options(&self, mqtt: SocketAddr) -> MqttOptions {
        let mut options = MqttOptions::new(&self.client_id, mqtt.ip().to_string(), mqtt.port());
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            options.set_credentials(u, p);
        }
        options
    }
}

/// A JSON uplink with one reading per `(ts, reg)`.
fn uplink(seq: u64, readings: &[(i64, u64)], flags: &[&str]) -> String {
    let readings: Vec<String> = readings
        .iter()
        .map(|(ts, reg)| format!(r#"{{"ts":{ts},"reg":{reg},"rev":0,"flow":0}}"#))
        .collect();
    let flags: Vec<String> = flags.iter().map(|f| format!("\"{f}\"")).collect();
    format!(
        r#"{{"v":1,"seq":{seq},"readings":[{}],"flags":[{}]}}"#,
        readings.join(","),
        flags.join(",")
    )
}

/// The connection arguments of a mosquitto client for `cred` at `addr`.
fn mosquitto_args(addr: SocketAddr, cred: &Cred) -> Vec<String> {
    let mut args = vec![
        "-h".to_string(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
        "-i".into(),
        cred.client_id.clone(),
    ];
    if let Some(username) = &cred.username {
        args.extend(["-u".to_string(), username.clone()]);
    }
    if let Some(password) = &cred.password {
        args.extend(["-P".to_string(), password.clone()]);
    }
    args
}

/// A mosquitto client command (`mosquitto_pub`, `_sub`, `_rr`) for `cred` at `addr`,
/// under coreutils' `timeout` so that no run can hang a test.
fn mosquitto(name: &str, addr: SocketAddr, cred: &Cred) -> Command {
    let mut command = Command::new(tool("timeout"));
    command
        .args(["-k", "5", &CLIENT_TIMEOUT.as_secs().to_string()])
        .arg(tool(name))
        .args(mosquitto_args(addr, cred));
    command
}

/// `mosquitto_pub -q 1`: returns once the PUBACK came (or the client failed).
fn mosquitto_pub(
    addr: SocketAddr,
    cred: &Cred,
    topic: &str,
    payload: &str,
    extra: &[&str],
) -> Output {
    mosquitto("mosquitto_pub", addr, cred)
        .args(["-q", "1", "-t", topic, "-m", payload])
        .args(extra)
        .output()
        .expect("run mosquitto_pub")
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Asserts the client failed and said `expected` on stderr.
fn assert_refused(output: &Output, expected: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && output.status.code() != Some(124) && stderr.contains(expected),
        "{what}: expected a refusal saying {expected:?}; got {}\nstdout: {}\nstderr: {stderr}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
    );
}

/// A Python interpreter with paho-mqtt (Debian's `python3-paho-mqtt` lives beside
/// `/usr/bin/python3`, which a pyenv shim on PATH may hide).
fn paho_python() -> PathBuf {
    let mut candidates = vec![PathBuf::from("/usr/bin/python3")];
    if let Some(paths) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&paths).map(|d| d.join("python3")));
    }
    candidates
        .into_iter()
        .find(|python| {
            python.is_file()
                && Command::new(python)
                    .args(["-c", "import paho.mqtt.client"])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        })
        .expect("no python3 with paho-mqtt: install python3-paho-mqtt (scripts/test does)")
}

/// Publishes `payloads` one by one with paho-mqtt at QoS 1, each after the previous
/// one's PUBACK (`clients/paho_publish.py`).
fn paho_publish(addr: SocketAddr, cred: &Cred, topic: &str, payloads: &[String]) -> Output {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/clients/paho_publish.py");
    Command::new(tool("timeout"))
        .args(["-k", "5", &CLIENT_TIMEOUT.as_secs().to_string()])
        .arg(paho_python())
        .arg(script)
        .args([
            addr.ip().to_string(),
            addr.port().to_string(),
            cred.client_id.clone(),
            cred.username.clone().unwrap_or_else(|| "-".into()),
            cred.password.clone().unwrap_or_else(|| "-".into()),
            topic.to_string(),
        ])
        .args(payloads)
        .output()
        .expect("run paho_publish.py")
}

/// A long-running client whose output lines (stdout and stderr) are collected as
/// they come; killed when dropped.
struct Lines {
    child: Child,
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn spawn(command: &mut Command) -> Lines {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a client");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let out_tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(format!("stderr: {line}"));
            }
        });
        Lines {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// A `mosquitto_sub -d -v` with line-buffered output (so its debug lines, e.g. the
    /// SUBACK, arrive as they happen). It exits by itself after a minute (`-W`), and is
    /// the direct child (stdbuf execs it), so dropping `Lines` ends it.
    fn mosquitto_sub(addr: SocketAddr, cred: &Cred, filters: &[&str]) -> Lines {
        let mut command = Command::new(tool("stdbuf"));
        command
            .arg("-oL")
            .arg(tool("mosquitto_sub"))
            .args(mosquitto_args(addr, cred))
            .args(["-d", "-v", "-W", "60"]);
        for filter in filters {
            command.args(["-t", filter]);
        }
        Lines::spawn(&mut command)
    }

    /// Waits for a line satisfying `wanted`; returns it.
    fn wait_for(&mut self, what: &str, within: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {within:?}; lines so far: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Every line so far.
    fn all(&mut self) -> &[String] {
        while let Ok(line) = self.rx.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The readings the meter's uplinks carried (estimated rows VEE may add excluded).
fn readings(service: &Meterflow, tenant: &str, meter: &str) -> Vec<serde_json::Value> {
    service
        .get_json(&format!(
            "/api/v1/tenants/{tenant}/meters/{meter}/readings?limit=10000"
        ))
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["quality"] != "estimated")
        .cloned()
        .collect()
}

fn connections(service: &Meterflow) -> f64 {
    service.metrics().value("meterflow_mqtt_connections")
}

/// Polls `done` every 20 ms until it holds; panics after `within`.
fn wait_until(service: &Meterflow, what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}\n{}",
            service.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------
// Raw MQTT 3.1.1, written by hand: the traffic no library would send.

/// CONNECT (MQTT 3.1.1, clean session) with the given keep-alive.
fn connect_packet(cred: &Cred, keep_alive: u16) -> Vec<u8> {
    let mut flags = 0x02;
    if cred.username.is_some() {
        flags |= 0x80;
    }
    if cred.password.is_some() {
        flags |= 0x40;
    }
    let mut body = Vec::new();
    push_str(&mut body, b"MQTT");
    body.extend_from_slice(&[4, flags]);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    push_str(&mut body, cred.client_id.as_bytes());
    if let Some(username) = &cred.username {
        push_str(&mut body, username.as_bytes());
    }
    if let Some(password) = &cred.password {
        push_str(&mut body, password.as_bytes());
    }
    packet(0x10, &body)
}

/// PUBLISH at QoS 1 with `pkid`.
fn publish_packet(topic: &str, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    push_str(&mut body, topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

const PINGREQ: [u8; 2] = [0xC0, 0x00];
const PINGRESP: [u8; 2] = [0xD0, 0x00];
const CONNACK_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

/// A connected raw session of `cred` (CONNACK "accepted" read).
fn raw_session(addr: SocketAddr, cred: &Cred) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(&connect_packet(cred, 300)).unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).unwrap();
    assert_eq!(connack, CONNACK_ACCEPTED, "{} accepted", cred.client_id);
    stream
}

/// Whether the session still answers a PINGREQ.
fn pings(stream: &mut TcpStream) -> bool {
    let mut pong = [0u8; 2];
    stream.write_all(&PINGREQ).is_ok() && stream.read_exact(&mut pong).is_ok() && pong == PINGRESP
}

/// Reads (and discards) until the service closes the connection; returns how long
/// that took, or `None` when it was still open after `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(start.elapsed());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

// ---------------------------------------------------------------------------------
// rumqttc helpers.

/// Publishes `payloads` at QoS 1 on one connection and waits for every PUBACK.
async fn publish_all(mqtt: SocketAddr, cred: &Cred, topic: &str, payloads: Vec<String>) {
    let count = payloads.len();
    let (client, mut events) = AsyncClient::new(cred.options(mqtt), count + 8);
    for payload in payloads {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut acked = 0;
    while acked < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(polled) = tokio::time::timeout(left, events.poll()).await else {
            panic!("{}: {acked} of {count} PUBACKs", cred.client_id);
        };
        match polled {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("{}: connection lost: {e}", cred.client_id),
        }
    }
    let _ = client.disconnect().await;
}

// ---------------------------------------------------------------------------------
// Standard clients: a QoS 1 publish returns only once durable.

#[test]
fn a_standard_qos1_publish_returns_only_once_the_reading_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), &tenants_toml());
    let ts = now_ms() - 60_000;

    // mosquitto_pub -q 1 waits for the PUBACK and exits; it never subscribes to the
    // ack topic. The reading is readable the moment it returns: no waiting here.
    let output = mosquitto_pub(
        service.mqtt,
        &Cred::acme("std1"),
        "meters/acme/std1/up",
        &uplink(1, &[(ts, 1_000)], &[]),
        &[],
    );
    assert_success(&output, "mosquitto_pub");
    let got = readings(&service, "acme", "std1");
    assert_eq!(
        got.len(),
        1,
        "stored before the PUBACK: {got:?}\n{}",
        service.log_tail()
    );
    assert_eq!(
        (got[0]["ts"].as_i64(), got[0]["reg"].as_u64()),
        (Some(ts), Some(1_000))
    );
    assert_eq!(got[0]["seq"], 1);

    // paho-mqtt: publish, wait_for_publish, next. Each PUBACK came after the reading
    // was durable, so both are there once the client has exited.
    let payloads = [
        uplink(1, &[(ts - 120_000, 500)], &[]),
        uplink(2, &[(ts - 60_000, 510), (ts, 520)], &[]),
    ];
    let output = paho_publish(
        service.mqtt,
        &Cred::bravo("std2"),
        "meters/bravo/std2/up",
        &payloads,
    );
    assert_success(&output, "paho");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["connected", "puback 1", "puback 2"],
        "{output:?}"
    );
    let got = readings(&service, "bravo", "std2");
    let regs: Vec<u64> = got.iter().map(|r| r["reg"].as_u64().unwrap()).collect();
    assert_eq!(regs, [500, 510, 520], "{got:?}");

    // The same over MQTT 5. mosquitto then ends with a bare DISCONNECT (no reason
    // code), which is a clean goodbye, not a protocol violation.
    let output = mosquitto_pub(
        service.mqtt,
        &Cred::acme("std3"),
        "meters/acme/std3/up",
        &uplink(1, &[(ts, 2_000)], &[]),
        &["-V", "5"],
    );
    assert_success(&output, "mosquitto_pub -V 5");
    assert_eq!(readings(&service, "acme", "std3").len(), 1);

    let metrics = service.metrics();
    assert_eq!(metrics.value("meterflow_pubacks_total"), 4.0);
    assert_eq!(metrics.messages("stored"), 4.0);
    metrics.assert_accounted();
    let violations: Vec<(&String, &f64)> = metrics
        .0
        .iter()
        .filter(|(k, v)| k.starts_with("meterflow_mqtt_protocol_violations_total") && **v > 0.0)
        .collect();
    assert!(
        violations.is_empty(),
        "standard clients break no rule: {violations:?}"
    );
}

// ---------------------------------------------------------------------------------
// PUBACK = durable, as a property across kill -9.

/// What one streaming meter saw: the highest seq handed to its client, and the seqs
/// whose PUBACK arrived.
#[derive(Default)]
struct StreamLog {
    requested: AtomicU64,
    acked: Mutex<BTreeSet<u64>>,
}

/// The uplink of seq `seq` in the kill -9 test: two readings a minute apart, from
/// `base` on, so every seq has its own timestamps.
fn stream_uplink(seq: u64, base: i64) -> String {
    let ts = base + seq as i64 * 120_000;
    uplink(seq, &[(ts, seq * 20), (ts + 60_000, seq * 20 + 10)], &[])
}

/// Streams QoS 1 uplinks 1..=count, four a millisecond (more than a debug build
/// stores, so uplinks are in flight at every moment), over rumqttc until the
/// connection breaks, recording PUBACKs by seq (a packet id maps to the seq of the
/// publish that last used it; rumqttc reuses an id only once it is acknowledged).
async fn stream_until_broken(
    mqtt: SocketAddr,
    meter: String,
    base: i64,
    count: u64,
    log: Arc<StreamLog>,
) {
    let cred = Cred::demo(&meter);
    let topic = format!("meters/demo/{meter}/up");
    let (client, mut events) = AsyncClient::new(cred.options(mqtt), 16);
    let publisher = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            for seq in 1..=count {
                if seq % 4 == 1 {
                    tick.tick().await;
                }
                if client
                    .publish(&topic, QoS::AtLeastOnce, false, stream_uplink(seq, base))
                    .await
                    .is_err()
                {
                    return;
                }
                log.requested.store(seq, Ordering::SeqCst);
            }
        })
    };
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut next_seq = 1;
    loop {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                in_flight.insert(pkid, next_seq);
                next_seq += 1;
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let seq = in_flight
                    .remove(&ack.pkid)
                    .expect("a PUBACK for a publish in flight");
                log.acked.lock().unwrap().insert(seq);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    publisher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pubacked_uplink_survives_kill_9_and_resends_are_stored_once() {
    const METERS: [&str; 2] = ["k1", "k2"];
    const COUNT: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut service = Meterflow::start(&data);
    let base = now_ms() - (COUNT as i64 + 10) * 120_000;

    let logs: Vec<Arc<StreamLog>> = METERS.iter().map(|_| Arc::default()).collect();
    let streams: Vec<_> = METERS
        .iter()
        .zip(&logs)
        .map(|(meter, log)| {
            tokio::spawn(stream_until_broken(
                service.mqtt,
                meter.to_string(),
                base,
                COUNT,
                log.clone(),
            ))
        })
        .collect();
    // kill -9 once every meter has had some uplinks acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    while logs.iter().any(|l| l.acked.lock().unwrap().len() < 100) {
        assert!(
            Instant::now() < deadline,
            "no PUBACKs:\n{}",
            service.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    service.kill9();
    for stream in streams {
        tokio::time::timeout(Duration::from_secs(30), stream)
            .await
            .expect("the streams see the connection break")
            .unwrap();
    }

    let service = Meterflow::start(&data);
    let (mut resent_acked, mut unacked_present, mut unacked_absent, mut resent) = (0, 0, 0, 0);
    for (meter, log) in METERS.iter().zip(&logs) {
        let requested = log.requested.load(Ordering::SeqCst);
        let acked = log.acked.lock().unwrap().clone();
        assert!(
            (acked.len() as u64) < COUNT && requested < COUNT,
            "{meter}: the crash must land mid-stream ({} acked)",
            acked.len()
        );
        let stored: BTreeMap<u64, usize> =
            readings(&service, "demo", meter)
                .iter()
                .fold(BTreeMap::new(), |mut m, r| {
                    *m.entry(r["seq"].as_u64().unwrap()).or_default() += 1;
                    m
                });
        // The property: every PUBACKed uplink is durable, whole.
        for seq in &acked {
            assert_eq!(
                stored.get(seq),
                Some(&2),
                "{meter}: seq {seq} was PUBACKed but is not stored whole"
            );
        }
        assert!(
            stored.keys().all(|seq| *seq <= requested),
            "{meter}: stored seqs beyond those sent: {stored:?}"
        );
        // Resend what was not acknowledged, and every 10th acknowledged uplink too.
        let again: Vec<u64> = (1..=requested)
            .filter(|seq| !acked.contains(seq) || seq % 10 == 0)
            .collect();
        for seq in &again {
            match (acked.contains(seq), stored.contains_key(seq)) {
                (true, _) => resent_acked += 1,
                (false, true) => unacked_present += 1,
                (false, false) => unacked_absent += 1,
            }
        }
        resent += again.len();
        let payloads = again.iter().map(|seq| stream_uplink(*seq, base)).collect();
        publish_all(
            service.mqtt,
            &Cred::demo(meter),
            &format!("meters/demo/{meter}/up"),
            payloads,
        )
        .await;

        // Every reading sent is stored exactly once.
        let got = readings(&service, "demo", meter);
        let expected: Vec<(u64, i64, u64)> = (1..=requested)
            .flat_map(|seq| {
                let ts = base + seq as i64 * 120_000;
                [(seq, ts, seq * 20), (seq, ts + 60_000, seq * 20 + 10)]
            })
            .collect();
        let got: Vec<(u64, i64, u64)> = got
            .iter()
            .map(|r| {
                (
                    r["seq"].as_u64().unwrap(),
                    r["ts"].as_i64().unwrap(),
                    r["reg"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, expected, "{meter}: each reading exactly once");
        let state = service.get_json(&format!("/api/v1/tenants/demo/meters/{meter}"));
        assert_eq!(state["last_seq"], requested, "{meter}: {state}");
    }
    assert!(resent_acked > 0, "some acknowledged uplinks were resent");
    let metrics = service.metrics();
    assert_eq!(metrics.received(), resent as f64);
    assert_eq!(
        metrics.messages("duplicate"),
        (resent_acked + unacked_present) as f64,
        "resent acknowledged uplinks (and unacknowledged but durable ones) are duplicates: \
         {resent_acked} + {unacked_present}"
    );
    assert_eq!(metrics.messages("stored"), unacked_absent as f64);
    assert_eq!(metrics.messages("dead_letter"), 0.0);
    metrics.assert_accounted();
}

// ---------------------------------------------------------------------------------
// Attacks, as regression tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_connect_and_reset_leaves_new_sessions_working() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut service = Meterflow::start(&dir.path().join("data"));
    let addr = service.mqtt;

    // 300 connections at once send CONNECT and reset (SO_LINGER 0): half right away,
    // half once their CONNACK came (a registered session torn down mid-flight).
    // rumqttd 0.20 panicked holding a lock after ~140 of these.
    let storm = (0..300).map(|i| async move {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            return;
        };
        let _ = stream
            .write_all(&connect_packet(&Cred::demo(&format!("storm{i}")), 30))
            .await;
        if i % 2 == 1 {
            let mut connack = [0u8; 4];
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut connack)).await;
        }
        let _ = stream.set_zero_linger();
        drop(stream);
    });
    futures_util::future::join_all(storm).await;

    wait_until(
        &service,
        "every storm connection released",
        Duration::from_secs(10),
        || connections(&service) == 0.0,
    );
    assert!(service.is_running());
    assert_eq!(service.get("/readyz").0, 200, "{}", service.log_tail());
    let ts = now_ms() - 60_000;
    let output = mosquitto_pub(
        service.mqtt,
        &Cred::demo("after-storm"),
        "meters/demo/after-storm/up",
        &uplink(1, &[(ts, 42)], &[]),
        &[],
    );
    assert_success(&output, "mosquitto_pub after the storm");
    assert_eq!(readings(&service, "demo", "after-storm").len(), 1);
}

#[test]
fn at_the_connection_cap_clients_are_refused_until_some_close() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), "[mqtt]\nmax_connections = 20\n");
    // The readiness probe's connection is gone before the cap is filled.
    wait_until(
        &service,
        "no connection open",
        Duration::from_secs(10),
        || connections(&service) == 0.0,
    );
    let mut held: Vec<TcpStream> = (0..20)
        .map(|i| raw_session(service.mqtt, &Cred::demo(&format!("held{i}"))))
        .collect();
    wait_until(
        &service,
        "20 connections open",
        Duration::from_secs(10),
        || connections(&service) == 20.0,
    );

    let ts = now_ms() - 60_000;
    let payload = uplink(1, &[(ts, 7)], &[]);
    let late = Cred::demo("late");
    let output = mosquitto_pub(service.mqtt, &late, "meters/demo/late/up", &payload, &[]);
    assert_refused(
        &output,
        "Connection Refused: broker unavailable",
        "MQTT 3.1.1 over the cap",
    );
    let output = mosquitto_pub(
        service.mqtt,
        &late,
        "meters/demo/late/up",
        &payload,
        &["-V", "5"],
    );
    assert_refused(&output, "Server unavailable", "MQTT 5 over the cap");
    let (status, body) = service.get("/readyz");
    assert_eq!(status, 503, "no new session can be taken: {body}");
    assert!(
        service
            .metrics()
            .value("meterflow_mqtt_connects_total{outcome=\"capacity\"}")
            >= 3.0
    );
    assert!(readings(&service, "demo", "late").is_empty());

    // Five close: their slots come back, and new sessions are taken again.
    held.truncate(15);
    wait_until(
        &service,
        "five slots released",
        Duration::from_secs(10),
        || connections(&service) == 15.0,
    );
    let output = mosquitto_pub(service.mqtt, &late, "meters/demo/late/up", &payload, &[]);
    assert_success(&output, "mosquitto_pub once slots are free");
    assert_eq!(readings(&service, "demo", "late").len(), 1);
    assert_eq!(service.get("/readyz").0, 200);
    for (i, session) in held.iter_mut().enumerate() {
        assert!(pings(session), "held{i} is still served");
    }
}

#[test]
fn subscriptions_beyond_ones_own_topics_are_refused_and_receive_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), &tenants_toml());
    let refused = [
        "#",
        "meters/#",
        "meters/+/+/ack",
        "meters/acme/victim/ack",
        "meters/acme/+/up",
        "alerts/#",
        "alerts/bravo/#",
        "alerts/acme/victim",
    ];
    let mut filters = vec!["meters/acme/spy/ack"];
    filters.extend(refused);
    let mut spy = Lines::mosquitto_sub(service.mqtt, &Cred::acme("spy"), &filters);
    let suback = spy.wait_for("the spy's SUBACK", CLIENT_TIMEOUT, |l| {
        l.starts_with("Subscribed")
    });
    let mut expected = String::from("Subscribed (mid: 1): 0");
    for _ in refused {
        expected.push_str(", 128");
    }
    assert_eq!(suback, expected, "only the spy's own ack topic is granted");

    // Integrations of both tenants, to see that the alerts below really went out.
    let mut acme_erp = Lines::mosquitto_sub(
        service.mqtt,
        &Cred::integration("acme", ACME_INTEGRATION, "erp-acme"),
        &["alerts/acme/#"],
    );
    let mut bravo_erp = Lines::mosquitto_sub(
        service.mqtt,
        &Cred::integration("bravo", BRAVO_INTEGRATION, "erp-bravo"),
        &["alerts/bravo/#"],
    );
    for erp in [&mut acme_erp, &mut bravo_erp] {
        let suback = erp.wait_for("an integration's SUBACK", CLIENT_TIMEOUT, |l| {
            l.starts_with("Subscribed")
        });
        assert_eq!(suback, "Subscribed (mid: 1): 0");
    }

    // Other meters publish (uplinks with a leak flag) and get their acks on their own
    // connections; alerts go to the integrations.
    let ts = now_ms() - 60_000;
    for (cred, meter, tenant) in [
        (Cred::acme("victim"), "victim", "acme"),
        (Cred::bravo("b1"), "b1", "bravo"),
    ] {
        let output = mosquitto("mosquitto_rr", service.mqtt, &cred)
            .args(["-q", "1", "-W", "20"])
            .args(["-t", &format!("meters/{tenant}/{meter}/up")])
            .args(["-e", &format!("meters/{tenant}/{meter}/ack")])
            .args(["-m", &uplink(1, &[(ts, 100)], &["leak"])])
            .output()
            .unwrap();
        assert_success(&output, meter);
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            r#"{"seq":1}"#
        );
    }
    acme_erp.wait_for("acme's alert", CLIENT_TIMEOUT, |l| {
        l.starts_with("alerts/acme/victim ")
    });
    bravo_erp.wait_for("bravo's alert", CLIENT_TIMEOUT, |l| {
        l.starts_with("alerts/bravo/b1 ")
    });

    // The spy saw none of it: no PUBLISH reached it. (Anything wrongly sent to it
    // would have been queued with the integrations' copies; give it a moment to land.)
    std::thread::sleep(Duration::from_millis(300));
    let seen = spy.all().to_vec();
    assert!(
        seen.iter().all(|l| !l.contains("PUBLISH")
            && !l.starts_with("meters/")
            && !l.starts_with("alerts/")),
        "the spy received something: {seen:#?}"
    );
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("DISCONNECT") || l.starts_with("stderr")),
        "{seen:#?}"
    );
    assert_eq!(
        service
            .metrics()
            .value("meterflow_mqtt_refused_total{what=\"subscribe\"}"),
        refused.len() as f64
    );
}

#[test]
fn publishes_to_foreign_topics_are_dead_letters_of_the_sender_and_touch_no_victim() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), &tenants_toml());
    let ts = now_ms() - 10 * 60_000;
    let victim = Cred::acme("victim");
    let output = mosquitto_pub(
        service.mqtt,
        &victim,
        "meters/acme/victim/up",
        &uplink(1, &[(ts, 1_000)], &[]),
        &[],
    );
    assert_success(&output, "victim seq 1");
    let output = mosquitto_pub(
        service.mqtt,
        &Cred::bravo("b1"),
        "meters/bravo/b1/up",
        &uplink(1, &[(ts, 50)], &[]),
        &[],
    );
    assert_success(&output, "b1 seq 1");

    // mallory (with its own valid login) publishes where it may not. Each is PUBACKed
    // once its dead letter is durable, so mosquitto_pub succeeds.
    let mallory = Cred::acme("mallory");
    let forged = uplink(2, &[(ts + 60_000, 999_999)], &[]);
    let attacks: [(&str, &str, &[&str], &str); 6] = [
        ("meters/acme/victim/up", &forged, &[], "forbidden_topic"),
        ("meters/bravo/b1/up", &forged, &[], "forbidden_topic"),
        (
            "meters/acme/victim/ack",
            r#"{"seq":99}"#,
            &[],
            "forbidden_topic",
        ),
        (
            "meters/acme/mallory/ack",
            r#"{"seq":99}"#,
            &[],
            "forbidden_topic",
        ),
        (
            "alerts/acme/victim",
            r#"{"kind":"burst"}"#,
            &[],
            "forbidden_topic",
        ),
        (
            "meters/acme/mallory/up",
            &uplink(1, &[(ts, 5)], &[]),
            &["-r"],
            "retained_publish",
        ),
    ];
    for (topic, payload, extra, _) in &attacks {
        let output = mosquitto_pub(service.mqtt, &mallory, topic, payload, extra);
        assert_success(&output, topic);
    }

    // Dead letters of mallory, in mallory's tenant, with the topics it used.
    let letters = service.get_json("/api/v1/tenants/acme/dead-letters");
    let mut got = dead_letter_triples(&letters);
    let mut want: Vec<(String, String, String)> = attacks
        .iter()
        .map(|(topic, _, _, reason)| {
            (
                topic.to_string(),
                reason.to_string(),
                "acme/mallory/-".to_string(),
            )
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{letters}");
    let bravo_letters = service.get_json("/api/v1/tenants/bravo/dead-letters");
    assert_eq!(
        bravo_letters,
        serde_json::json!([]),
        "nothing lands in the other tenant"
    );

    // No readings, no state for anyone but the real senders; watermarks unmoved.
    assert!(readings(&service, "acme", "mallory").is_empty());
    assert_eq!(service.get("/api/v1/tenants/acme/meters/mallory").0, 404);
    for (tenant, meter, reg) in [("acme", "victim", 1_000), ("bravo", "b1", 50)] {
        let got = readings(&service, tenant, meter);
        assert_eq!(got.len(), 1, "{tenant}/{meter}: {got:?}");
        assert_eq!(got[0]["reg"], reg);
        let state = service.get_json(&format!("/api/v1/tenants/{tenant}/meters/{meter}"));
        assert_eq!(state["last_seq"], 1, "{state}");
    }

    // The victim's real seq 2 is stored and acknowledged, as if nothing happened.
    let output = mosquitto("mosquitto_rr", service.mqtt, &victim)
        .args([
            "-q",
            "1",
            "-W",
            "20",
            "-t",
            "meters/acme/victim/up",
            "-e",
            "meters/acme/victim/ack",
        ])
        .args(["-m", &uplink(2, &[(ts + 60_000, 1_010)], &[])])
        .output()
        .unwrap();
    assert_success(&output, "victim seq 2");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        r#"{"seq":2}"#
    );
    let regs: Vec<u64> = readings(&service, "acme", "victim")
        .iter()
        .map(|r| r["reg"].as_u64().unwrap())
        .collect();
    assert_eq!(regs, [1_000, 1_010]);

    let metrics = service.metrics();
    let dead = |reason: &str| {
        metrics.value(&format!(
            "meterflow_dead_letters_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(dead("forbidden_topic"), 5.0);
    assert_eq!(dead("retained_publish"), 1.0);
    assert_eq!(
        metrics.value("meterflow_mqtt_refused_total{what=\"publish\"}"),
        6.0
    );
    assert_eq!(metrics.messages("stored"), 3.0);
    metrics.assert_accounted();
}

#[test]
fn a_connect_with_a_will_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), &tenants_toml());
    let ts = now_ms() - 60_000;
    let payload = uplink(1, &[(ts, 1)], &[]);
    let will = [
        "--will-topic",
        "meters/acme/w1/up",
        "--will-payload",
        &payload,
    ];
    let output = mosquitto_pub(
        service.mqtt,
        &Cred::acme("w1"),
        "meters/acme/w1/up",
        &payload,
        &will,
    );
    assert_refused(
        &output,
        "Connection Refused: not authorised",
        "a will over MQTT 3.1.1",
    );
    let mut v5 = will.to_vec();
    v5.extend(["-V", "5"]);
    let output = mosquitto_pub(
        service.mqtt,
        &Cred::acme("w1"),
        "meters/acme/w1/up",
        &payload,
        &v5,
    );
    assert_refused(&output, "Not authorized", "a will over MQTT 5");
    assert_eq!(
        service
            .metrics()
            .value("meterflow_mqtt_connects_total{outcome=\"will\"}"),
        2.0
    );
    assert!(readings(&service, "acme", "w1").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_takeover_needs_the_meters_own_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), &tenants_toml());
    let ts = now_ms() - 10 * 60_000;

    // The victim: a rumqttc session of acme.v1, watched for disconnection.
    let victim = Cred::acme("v1");
    let (client, mut events) = AsyncClient::new(victim.options(service.mqtt), 16);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = tokio::spawn(async move {
        loop {
            let event = events.poll().await;
            let broken = event.is_err();
            let _ = tx.send(event.map_err(|e| e.to_string()));
            if broken {
                return;
            }
        }
    });
    loop {
        let event = tokio::time::timeout(CLIENT_TIMEOUT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if let Ok(Event::Incoming(Packet::ConnAck(_))) = event {
            break;
        }
        event.expect("the victim connects");
    }

    // Another meter's valid password (and no password at all) cannot take over acme.v1.
    let topic = "meters/acme/v1/up";
    let forged = uplink(1, &[(ts, 666)], &[]);
    for cred in [
        victim.clone().with_password(&acme_password("a1")),
        Cred {
            password: None,
            ..victim.clone()
        },
    ] {
        let output = mosquitto_pub(service.mqtt, &cred, topic, &forged, &[]);
        assert_refused(
            &output,
            "bad user name or password",
            "takeover with the wrong password",
        );
    }
    // The victim is still connected: its publish is PUBACKed on the same session.
    client
        .publish(topic, QoS::AtLeastOnce, false, uplink(1, &[(ts, 100)], &[]))
        .await
        .unwrap();
    loop {
        let event = tokio::time::timeout(CLIENT_TIMEOUT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        match event {
            Ok(Event::Incoming(Packet::PubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("the victim was disconnected by a failed takeover: {e}"),
        }
    }
    assert_eq!(
        service.metrics().value("meterflow_mqtt_takeovers_total"),
        0.0
    );

    // A second login with the right credentials replaces the first session.
    let output = mosquitto_pub(
        service.mqtt,
        &victim,
        topic,
        &uplink(2, &[(ts + 60_000, 110)], &[]),
        &[],
    );
    assert_success(&output, "the meter's own second login");
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the first session is closed by the takeover")
            .unwrap();
        if event.is_err() {
            break;
        }
    }
    watcher.abort();
    assert_eq!(
        service.metrics().value("meterflow_mqtt_takeovers_total"),
        1.0
    );
    let regs: Vec<u64> = readings(&service, "acme", "v1")
        .iter()
        .map(|r| r["reg"].as_u64().unwrap())
        .collect();
    assert_eq!(regs, [100, 110], "the forged uplink never got in");
}

#[test]
fn silent_clients_are_dropped_at_the_connect_deadline_and_keep_alive() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), "[mqtt]\nconnect_timeout_s = 1\n");
    let mut silent = TcpStream::connect(service.mqtt).unwrap();
    // A slowloris: the first bytes of a CONNECT, then nothing.
    let mut partial = TcpStream::connect(service.mqtt).unwrap();
    partial
        .write_all(&connect_packet(&Cred::demo("slow"), 30)[..5])
        .unwrap();
    // A session that asked for a 1 s keep-alive, then went quiet: closed after 1.5 s.
    let mut quiet = TcpStream::connect(service.mqtt).unwrap();
    quiet
        .write_all(&connect_packet(&Cred::demo("quiet"), 1))
        .unwrap();
    let mut connack = [0u8; 4];
    quiet.read_exact(&mut connack).unwrap();
    assert_eq!(connack, CONNACK_ACCEPTED);
    for (name, stream) in [
        ("silent", &mut silent),
        ("partial", &mut partial),
        ("quiet", &mut quiet),
    ] {
        let closed = closed_within(stream, Duration::from_secs(6))
            .unwrap_or_else(|| panic!("{name}: still open 6 s after a 1 s deadline"));
        assert!(
            closed < Duration::from_secs(5),
            "{name}: closed after {closed:?}"
        );
    }
    let metrics = service.metrics();
    assert_eq!(
        metrics.value("meterflow_mqtt_connects_total{outcome=\"timeout\"}"),
        2.0
    );
    assert_eq!(
        metrics.value("meterflow_mqtt_protocol_violations_total{kind=\"keep_alive\"}"),
        1.0
    );
    wait_until(
        &service,
        "no connection open",
        Duration::from_secs(10),
        || connections(&service) == 0.0,
    );
    assert_eq!(service.get("/readyz").0, 200);
}

#[test]
fn the_service_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), "");
    assert_eq!(
        service.status_field("THP_enabled").as_deref(),
        Some("0"),
        "the binary turns them off before the service starts"
    );
}

#[test]
fn idle_and_unread_connections_cannot_grow_memory_without_bound() {
    const IDLE: usize = 500;
    const MAX_INFLIGHT: f64 = 8.0;
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), "[mqtt]\nmax_inflight = 8\n");
    let ts = now_ms() - 60_000;
    let payload = uplink(1, &[(ts, 1)], &[]);
    // Warm up the pipeline (first batch, first store write) before measuring.
    let output = mosquitto_pub(
        service.mqtt,
        &Cred::demo("warm"),
        "meters/demo/warm/up",
        &payload,
        &[],
    );
    assert_success(&output, "warm-up");
    let before = service.rss_bytes();

    // 500 authenticated meters that then say nothing.
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| raw_session(service.mqtt, &Cred::demo(&format!("idle{i}"))))
        .collect();
    wait_until(
        &service,
        "the idle connections open",
        Duration::from_secs(10),
        || connections(&service) == IDLE as f64,
    );
    let with_idle = service.rss_bytes();
    let per_connection = with_idle.saturating_sub(before) / IDLE as u64;
    // Measured ~8 KiB in a debug build (rumqttd: ~52 KiB); the bound is generous.
    assert!(
        per_connection < 32 * 1024,
        "{per_connection} bytes of RSS per idle connection ({before} → {with_idle})"
    );

    // A meter that publishes QoS 1 as fast as it can and never reads its socket
    // (every publish after the first a duplicate, so the store does not grow).
    let flood = raw_session(service.mqtt, &Cred::demo("flood"));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut stream = flood.try_clone().unwrap();
        let burst: Vec<u8> = (1..=64)
            .flat_map(|pkid| publish_packet("meters/demo/flood/up", pkid, payload.as_bytes()))
            .collect();
        stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // A full socket (the endpoint reads no faster than it answers) is
                // fine; a closed one is not.
                if let Err(e) = stream.write_all(&burst) {
                    return Some(e.kind());
                }
            }
            None
        })
    };
    // For 3 s of flood, the connection never holds more than its in-flight cap of
    // uplinks taken but unanswered. Exactly: received − PUBACKed, with `received` from
    // one scrape and PUBACKed from the next (PUBACKs only grow, so this never
    // overstates what was in flight at the first scrape).
    let mut previous = service.metrics().received();
    let (mut widest, start) = (f64::MIN, Instant::now());
    while start.elapsed() < Duration::from_secs(3) {
        let metrics = service.metrics();
        widest = widest.max(previous - metrics.value("meterflow_pubacks_total"));
        previous = metrics.received();
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let ended = writer.join().unwrap();
    let flooded = service.rss_bytes();
    assert!(
        matches!(
            ended,
            None | Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ),
        "the flooding meter's connection stays open: {ended:?}"
    );
    assert!(service.metrics().received() > 1.0, "the flood was served");
    assert!(
        widest <= MAX_INFLIGHT,
        "{widest} uplinks of one connection in flight (cap {MAX_INFLIGHT})"
    );
    assert!(
        flooded.saturating_sub(with_idle) < 48 * 1024 * 1024,
        "RSS grew {} bytes during the flood ({with_idle} → {flooded})",
        flooded.saturating_sub(with_idle)
    );
    drop(flood);

    // Everyone else is still served.
    for i in [0, IDLE / 2, IDLE - 1] {
        assert!(pings(&mut idle[i]), "idle{i} is still served");
    }
    assert_eq!(service.get("/readyz").0, 200);
}

#[test]
fn garbage_and_oversized_packets_close_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), "");
    let mut bystander = raw_session(service.mqtt, &Cred::demo("bystander"));
    let ts = now_ms() - 60_000;

    let huge_header = {
        // A PUBLISH announcing 200 MB: closed on the header, the body is never awaited.
        let mut p = vec![0x32];
        push_len(&mut p, 200 * 1024 * 1024);
        p.extend_from_slice(b"\x00\x14meters/demo/big1/up\x00\x01");
        p
    };
    let huge_body = publish_packet("meters/demo/big2/up", 1, &vec![b'x'; 200 * 1024]);
    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("garbage before CONNECT", None, vec![0xFF; 64]),
        ("oversized CONNECT", None, {
            let mut p = vec![0x10];
            push_len(&mut p, 100 * 1024 * 1024);
            p.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 4, 2]);
            p
        }),
        ("garbage after CONNECT", Some("junk"), vec![0xFF; 64]),
        ("a 200 MB PUBLISH header", Some("big1"), huge_header),
        ("a 200 KiB PUBLISH", Some("big2"), huge_body),
    ];
    for (what, meter, bytes) in cases {
        let mut stream = match meter {
            Some(meter) => raw_session(service.mqtt, &Cred::demo(meter)),
            None => TcpStream::connect(service.mqtt).unwrap(),
        };
        // The service may close while a large write is still going: that is fine.
        let _ = stream.write_all(&bytes);
        assert!(
            closed_within(&mut stream, Duration::from_secs(5)).is_some(),
            "{what}: the connection stays open"
        );
    }

    // The bystander was not disturbed: it pings and publishes on the same session.
    assert!(pings(&mut bystander));
    bystander
        .write_all(&publish_packet(
            "meters/demo/bystander/up",
            7,
            uplink(1, &[(ts, 3)], &[]).as_bytes(),
        ))
        .unwrap();
    let mut puback = [0u8; 4];
    bystander.read_exact(&mut puback).unwrap();
    assert_eq!(puback, [0x40, 0x02, 0x00, 0x07]);
    assert_eq!(readings(&service, "demo", "bystander").len(), 1);

    let metrics = service.metrics();
    let violations = |kind: &str| {
        metrics.value(&format!(
            "meterflow_mqtt_protocol_violations_total{{kind=\"{kind}\"}}"
        ))
    };
    assert_eq!(violations("too_large"), 2.0);
    assert_eq!(violations("malformed"), 1.0);
    assert_eq!(
        metrics.value("meterflow_mqtt_connects_total{outcome=\"malformed\"}"),
        2.0
    );
    assert_eq!(
        metrics.received(),
        1.0,
        "only the bystander's uplink got in"
    );
    assert!(readings(&service, "demo", "big2").is_empty());
    assert_eq!(service.get("/readyz").0, 200);
}

/// A PUBLISH is read whole however its bytes arrive: split inside its fixed header
/// and its body with pauses between (each piece a socket read of its own), or back to
/// back with the next one in a single write.
#[test]
fn publishes_split_anywhere_or_back_to_back_are_each_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), "");
    let mut session = raw_session(service.mqtt, &Cred::demo("pieces"));
    let base = now_ms() - 5 * 3_600_000;
    let publish = |seq: u64| {
        let reads: Vec<(i64, u64)> = (0..24)
            .map(|i| {
                let n = (seq - 1) * 24 + i;
                (base + n as i64 * 60_000, 1_000 + n * 3)
            })
            .collect();
        publish_packet(
            "meters/demo/pieces/up",
            seq as u16,
            uplink(seq, &reads, &[]).as_bytes(),
        )
    };
    let puback = |pkid: u16| {
        let [hi, lo] = pkid.to_be_bytes();
        [0x40, 0x02, hi, lo]
    };
    let mut answer = [0u8; 4];

    let first = publish(1);
    assert!(
        first.len() > 1_000,
        "a 24-reading uplink, long enough to cut inside its header and its body"
    );
    for piece in [&first[..1], &first[1..3], &first[3..700], &first[700..]] {
        session.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    session.read_exact(&mut answer).unwrap();
    assert_eq!(answer, puback(1), "the publish sent in four pieces");

    let both = [publish(2), publish(3)].concat();
    session.write_all(&both).unwrap();
    for pkid in [2, 3] {
        session.read_exact(&mut answer).unwrap();
        assert_eq!(answer, puback(pkid), "publishes sent back to back");
    }
    assert_eq!(readings(&service, "demo", "pieces").len(), 72);
    assert_eq!(service.metrics().received(), 3.0);
}

// ---------------------------------------------------------------------------------
// Per-meter credentials, TLS, integrations.

#[test]
fn per_meter_passwords_open_only_their_own_meter() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), &tenants_toml());
    let config = dir.path().join("meterflow.toml");

    // `meterflow credentials` prints `client_id username password` per meter: the
    // same as the library derives.
    let output = Command::new(env!("CARGO_BIN_EXE_meterflow"))
        .args(["credentials", "--config", config.to_str().unwrap()])
        .args(["--tenant", "acme", "--meter", "m1", "m2"])
        .output()
        .unwrap();
    assert_success(&output, "meterflow credentials");
    let printed: Vec<Vec<String>> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.split(' ').map(String::from).collect())
        .collect();
    let expected: Vec<Vec<String>> = ["m1", "m2"]
        .iter()
        .map(|m| vec![format!("acme.{m}"), "acme".into(), acme_password(m)])
        .collect();
    assert_eq!(printed, expected);
    let (pw1, pw2) = (&printed[0][2], &printed[1][2]);
    assert_ne!(pw1, pw2);

    let ts = now_ms() - 10 * 60_000;
    let m1 = Cred::acme("m1");
    // m2's password does not open m1; nor does bravo's tenant password, nor a login
    // under another tenant's name.
    for (cred, what) in [
        (m1.clone().with_password(pw2), "m2's password"),
        (
            m1.clone().with_password(BRAVO_PASSWORD),
            "another tenant's password",
        ),
        (
            Cred {
                username: Some("bravo".into()),
                ..m1.clone()
            },
            "another tenant's username",
        ),
    ] {
        let output = mosquitto_pub(
            service.mqtt,
            &cred,
            "meters/acme/m1/up",
            &uplink(1, &[(ts, 9)], &[]),
            &[],
        );
        assert_refused(&output, "bad user name or password", what);
    }
    assert!(readings(&service, "acme", "m1").is_empty());

    // Each meter's own derived password works (hex in either case), with mosquitto
    // and with paho.
    let output = mosquitto_pub(
        service.mqtt,
        &m1,
        "meters/acme/m1/up",
        &uplink(1, &[(ts, 10)], &[]),
        &[],
    );
    assert_success(&output, "m1 with its password");
    let upper = m1.clone().with_password(&pw1.to_uppercase());
    let output = mosquitto_pub(
        service.mqtt,
        &upper,
        "meters/acme/m1/up",
        &uplink(2, &[(ts + 60_000, 11)], &[]),
        &[],
    );
    assert_success(&output, "m1 with its password in upper case");
    let output = paho_publish(
        service.mqtt,
        &Cred::acme("m2"),
        "meters/acme/m2/up",
        &[uplink(1, &[(ts, 20)], &[])],
    );
    assert_success(&output, "paho as m2");
    assert_eq!(readings(&service, "acme", "m1").len(), 2);
    assert_eq!(readings(&service, "acme", "m2").len(), 1);
    assert_eq!(
        service
            .metrics()
            .value("meterflow_mqtt_connects_total{outcome=\"credentials\"}"),
        3.0
    );
}

#[test]
fn tls_clients_are_served_while_silent_handshakes_wait_out_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let output = Command::new(tool("openssl"))
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .args(["-days", "2", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert_success(&output, "openssl req");
    let tls = free_addr();
    let toml = format!(
        "[mqtt]\nconnect_timeout_s = 3\n\n[mqtt.tls]\nlisten = \"{tls}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n{}",
        cert.display(),
        key.display(),
        tenants_toml()
    );
    let service = start(dir.path(), &toml);

    // 20 connections to the TLS port that never send a byte.
    let mut silent: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(tls).unwrap()).collect();
    let opened = Instant::now();

    // Meanwhile a real TLS client is served, its publish acked once durable.
    let ts = now_ms() - 60_000;
    let output = mosquitto_pub(
        tls,
        &Cred::acme("t1"),
        "meters/acme/t1/up",
        &uplink(1, &[(ts, 77)], &[]),
        &["--cafile", cert.to_str().unwrap()],
    );
    assert_success(&output, "mosquitto_pub over TLS");
    assert!(
        opened.elapsed() < Duration::from_secs(3),
        "served before the silent ones timed out"
    );
    let got = readings(&service, "acme", "t1");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["reg"], 77);

    // A plain-MQTT client on the TLS port gets nowhere.
    let output = mosquitto_pub(
        tls,
        &Cred::acme("t2"),
        "meters/acme/t2/up",
        &uplink(1, &[(ts, 78)], &[]),
        &[],
    );
    assert!(!output.status.success(), "{output:?}");
    assert!(readings(&service, "acme", "t2").is_empty());

    // The silent ones are dropped at the handshake deadline.
    for (i, stream) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(8)).is_some(),
            "silent TLS connection {i} still open"
        );
    }
    assert!(
        service
            .metrics()
            .value("meterflow_mqtt_connects_total{outcome=\"tls\"}")
            >= 20.0
    );
    assert_eq!(service.get("/readyz").0, 200);
}

#[test]
fn integrations_receive_their_tenants_alerts_and_only_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), &tenants_toml());
    let mut erp = Lines::mosquitto_sub(
        service.mqtt,
        &Cred::integration("acme", ACME_INTEGRATION, "erp-1"),
        &["alerts/acme/#", "alerts/bravo/#", "meters/acme/+/up"],
    );
    let suback = erp.wait_for("the integration's SUBACK", CLIENT_TIMEOUT, |l| {
        l.starts_with("Subscribed")
    });
    assert_eq!(suback, "Subscribed (mid: 1): 0, 128, 128");
    let mut bravo_erp = Lines::mosquitto_sub(
        service.mqtt,
        &Cred::integration("bravo", BRAVO_INTEGRATION, "erp-1"),
        &["alerts/bravo/#"],
    );
    bravo_erp.wait_for("bravo's SUBACK", CLIENT_TIMEOUT, |l| {
        l.starts_with("Subscribed")
    });

    // A wrong integration password, or a meter's, is refused.
    for password in ["wrong-password-0123456789", &acme_password("a1")] {
        let output = mosquitto(
            "mosquitto_sub",
            service.mqtt,
            &Cred::integration("acme", password, "erp-2"),
        )
        .args(["-t", "alerts/acme/#", "-W", "5"])
        .output()
        .unwrap();
        assert_refused(
            &output,
            "bad user name or password",
            "integration with a wrong password",
        );
    }

    // bravo's leak reaches bravo's integration (and not acme's); then acme's.
    let ts = now_ms() - 60_000;
    let output = mosquitto_pub(
        service.mqtt,
        &Cred::bravo("b1"),
        "meters/bravo/b1/up",
        &uplink(1, &[(ts, 5)], &["leak"]),
        &[],
    );
    assert_success(&output, "bravo's leak");
    bravo_erp.wait_for("bravo's alert", CLIENT_TIMEOUT, |l| {
        l.starts_with("alerts/bravo/b1 ")
    });
    let output = mosquitto_pub(
        service.mqtt,
        &Cred::acme("a1"),
        "meters/acme/a1/up",
        &uplink(1, &[(ts, 5)], &["leak"]),
        &[],
    );
    assert_success(&output, "acme's leak");
    let line = erp.wait_for("acme's alert", CLIENT_TIMEOUT, |l| l.starts_with("alerts/"));
    let (topic, body) = line.split_once(' ').unwrap();
    assert_eq!(topic, "alerts/acme/a1");
    let alert: serde_json::Value = serde_json::from_str(body).unwrap();
    for (field, value) in [
        ("kind", "leak"),
        ("state", "opened"),
        ("tenant", "acme"),
        ("meter", "a1"),
    ] {
        assert_eq!(alert[field], value, "{alert}");
    }
    let received: Vec<&String> = erp
        .all()
        .iter()
        .filter(|l| l.contains("received PUBLISH"))
        .collect();
    assert_eq!(received.len(), 1, "only acme's own alert: {received:?}");

    // An integration only listens: a publish closes its connection.
    let output = mosquitto(
        "mosquitto_pub",
        service.mqtt,
        &Cred::integration("acme", ACME_INTEGRATION, "erp-3"),
    )
    .args([
        "-q",
        "1",
        "-t",
        "meters/acme/a1/up",
        "-m",
        &uplink(2, &[(ts + 1, 6)], &[]),
    ])
    .output()
    .unwrap();
    assert_refused(
        &output,
        "The connection was lost",
        "an integration publishing",
    );
    assert_eq!(readings(&service, "acme", "a1").len(), 1);
    assert_eq!(
        service
            .metrics()
            .value("meterflow_mqtt_protocol_violations_total{kind=\"publish_not_allowed\"}"),
        1.0
    );
}
