//! The HTTP server's socket limits against hostile clients (`[http]`): slowloris
//! sockets are closed after `header_timeout_s`, connections over `max_connections` are
//! refused at once, and meanwhile `/healthz` answers and MQTT uplinks are stored. Also
//! the API's one JSON error shape for axum's own rejections and its handlers' errors,
//! which quote a caller's input back cut short. Loopback only; every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::utils::{Meterflow, start_configured, tool};

/// Slack on every timing bound: the machine is shared with benchmarks.
const SLACK: Duration = Duration::from_secs(8);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `mosquitto_pub -q 1` of one reading for `demo/{meter}`; panics unless the PUBACK came.
fn publish_one(mqtt: SocketAddr, meter: &str) {
    let payload = format!(
        r#"{{"v":1,"seq":1,"readings":[{{"ts":{},"reg":1000,"rev":0,"flow":0}}],"flags":[]}}"#,
        now_ms() - 60_000
    );
    let output = Command::new(tool("timeout"))
        .args(["-k", "5", "30"])
        .arg(tool("mosquitto_pub"))
        .args(["-h", &mqtt.ip().to_string(), "-p", &mqtt.port().to_string()])
        .args(["-i", &format!("demo.{meter}"), "-q", "1"])
        .args(["-t", &format!("meters/demo/{meter}/up"), "-m", &payload])
        .output()
        .expect("run mosquitto_pub");
    assert!(
        output.status.success(),
        "mosquitto_pub: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The meter's stored readings, once the API can be reached.
fn stored_readings(service: &Meterflow, meter: &str) -> usize {
    let path = format!("/api/v1/tenants/demo/meters/{meter}/readings");
    let deadline = Instant::now() + SLACK;
    loop {
        let (status, body) = service.get(&path);
        if status == 200 {
            return serde_json::from_str::<serde_json::Value>(&body)
                .unwrap()
                .as_array()
                .unwrap()
                .len();
        }
        assert!(Instant::now() < deadline, "GET {path}: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One request on a fresh connection (`Connection: close`); returns the status, the
/// content type and the body.
fn raw(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

fn get_raw(addr: SocketAddr, path: &str) -> (u16, String, String) {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: meterflow\r\nConnection: close\r\n\r\n"),
    )
}

fn assert_json_error(answer: &(u16, String, String), status: u16, what: &str) -> String {
    let (got, content_type, body) = answer;
    assert_eq!(*got, status, "{what}: {body}");
    assert!(
        content_type.starts_with("application/json"),
        "{what}: content type {content_type:?}, body {body}"
    );
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    let message = json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {json}"));
    assert!(!message.is_empty(), "{what}");
    assert_eq!(json.as_object().unwrap().len(), 1, "{what}: {json}");
    message.to_string()
}

/// A slowloris client until `stop`: connects, sends a request line and then a header a
/// byte every 100 ms, never finishing it; when the server closes the socket, records
/// how long it lived and starts over.
async fn slowloris(http: SocketAddr, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut lifetimes = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = tokio::net::TcpStream::connect(http).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let opened = Instant::now();
        let (mut reader, mut writer) = stream.into_split();
        let trickle = async {
            let request = b"GET /healthz HTTP/1.1\r\nHost: meterflow\r\nX-Slow: ";
            for byte in request.iter().chain(std::iter::repeat(&b'a')) {
                if writer.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let closed = async {
            let mut buf = [0u8; 512];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::select! {
            _ = closed => {}
            _ = trickle => {}
            _ = async {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            } => return lifetimes,
        }
        lifetimes.push(opened.elapsed());
    }
    lifetimes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(
        dir.path(),
        "[http]\nheader_timeout_s = 2\nidle_timeout_s = 30\n",
        &[],
    );
    let header_timeout = Duration::from_secs(2);
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (0..200)
        .map(|_| tokio::spawn(slowloris(service.http, stop.clone())))
        .collect();
    // Let every attacker connect and start trickling.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // During the attack: /healthz answers, and an MQTT uplink is stored.
    let service = Arc::new(service);
    let during = service.clone();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let (status, body) = during.get("/healthz");
        assert_eq!(
            (status, body.as_str()),
            (200, "ok"),
            "/healthz under attack"
        );
        assert!(
            started.elapsed() < SLACK,
            "/healthz took {:?}",
            started.elapsed()
        );
        publish_one(during.mqtt, "slow1");
        assert_eq!(stored_readings(&during, "slow1"), 1);
    })
    .await
    .unwrap();
    // Long enough for every attacker to have been cut off at least once.
    tokio::time::sleep(header_timeout * 2).await;
    stop.store(true, Ordering::Relaxed);
    let mut lifetimes = Vec::new();
    for attacker in attackers {
        lifetimes.extend(
            tokio::time::timeout(SLACK, attacker)
                .await
                .expect("attackers stop")
                .unwrap(),
        );
    }
    assert!(
        lifetimes.len() >= 200,
        "only {} slowloris sockets were closed by the server:\n{}",
        lifetimes.len(),
        service.log_tail()
    );
    let longest = lifetimes.iter().max().unwrap();
    let shortest = lifetimes.iter().min().unwrap();
    assert!(
        *longest < header_timeout + SLACK,
        "a slowloris socket stayed open {longest:?}"
    );
    // Cut off by the timeout, not refused: each trickled for about header_timeout_s.
    assert!(
        *shortest >= header_timeout - Duration::from_millis(500),
        "a slowloris socket was closed after only {shortest:?}"
    );
    let (status, _) = service.get("/healthz");
    assert_eq!(status, 200);
}

#[test]
fn connections_over_the_cap_are_refused_and_healthz_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(
        dir.path(),
        "[http]\nmax_connections = 50\nheader_timeout_s = 3\nidle_timeout_s = 30\n",
        &[],
    );
    // The readiness probe's own connections may still be closing: wait until they have.
    std::thread::sleep(Duration::from_millis(500));
    // 50 idle sockets take every slot; the 70 after them are refused at once.
    let mut idle: Vec<TcpStream> = (0..120)
        .map(|_| TcpStream::connect(service.http).unwrap())
        .collect();
    let opened = Instant::now();
    // Refusals are immediate; well before header_timeout_s, what is still open is held.
    std::thread::sleep(Duration::from_millis(1000));
    let mut refused = 0;
    let mut held = Vec::new();
    for mut stream in idle.drain(..) {
        stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            // Refused: a 503 (with the JSON error) or a bare close.
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(
                    n == 0 || text.starts_with("HTTP/1.1 503"),
                    "over the cap: {text}"
                );
                refused += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held.push(stream),
            Err(_) => refused += 1,
        }
    }
    assert!(
        opened.elapsed() < Duration::from_secs(3),
        "too slow to tell"
    );
    assert!(
        (70..=72).contains(&refused) && held.len() + refused == 120,
        "{refused} refused, {} held (cap 50)",
        held.len()
    );

    // MQTT is unaffected while the slots are taken.
    publish_one(service.mqtt, "fd1");

    // A fresh client gets /healthz once the idle sockets time out (header_timeout_s).
    let answered = loop {
        let (status, _, body) = get_raw(service.http, "/healthz");
        if status == 200 {
            assert_eq!(body, "ok");
            break opened.elapsed();
        }
        assert!(
            status == 503 || status == 0,
            "/healthz while the cap is reached: {status} {body}"
        );
        assert!(
            opened.elapsed() < Duration::from_secs(3) + SLACK,
            "/healthz still refused after {:?}:\n{}",
            opened.elapsed(),
            service.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(answered < Duration::from_secs(3) + SLACK);
    // The held sockets were closed by the server, not left open.
    for mut stream in held {
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("an idle socket over header_timeout_s is still open: {other:?}"),
        }
    }
    assert_eq!(stored_readings(&service, "fd1"), 1);
    let metrics = service.metrics();
    assert!(
        metrics.value("meterflow_http_connections_refused_total") >= 70.0,
        "refusals counted: {:?}",
        metrics.value("meterflow_http_connections_refused_total")
    );
}

#[test]
fn a_kept_alive_connection_waiting_for_its_next_request_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(
        dir.path(),
        "[http]\nheader_timeout_s = 2\nidle_timeout_s = 30\n",
        &[],
    );
    let mut stream = TcpStream::connect(service.http).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: meterflow\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2) + SLACK))
        .unwrap();
    let answered = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the kept-alive socket is still open: {e}"),
        }
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(answered.elapsed() >= Duration::from_millis(1500));
}

#[test]
fn rejections_have_the_json_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(dir.path(), "", &[]);
    let http = service.http;
    let readings = "/api/v1/tenants/demo/meters/m1/readings";
    let message = assert_json_error(
        &get_raw(http, &format!("{readings}?from=yesterday")),
        400,
        "from=yesterday",
    );
    assert!(message.contains("from"), "{message}");
    let message = assert_json_error(
        &get_raw(http, &format!("{readings}?limit=abc")),
        400,
        "limit=abc",
    );
    assert!(message.contains("limit"), "{message}");
    assert_json_error(
        &get_raw(http, "/api/v1/tenants/demo/dead-letters?limit=-1"),
        400,
        "limit=-1",
    );
    assert_json_error(
        &get_raw(http, "/api/v1/tenants/demo/alerts?limit=1e3"),
        400,
        "limit=1e3",
    );
    // The handlers' own errors keep their shape.
    assert_json_error(
        &get_raw(http, "/api/v1/tenants/demo/alerts?state=closed"),
        400,
        "state=closed",
    );
    assert_json_error(&get_raw(http, "/api/v1/nothing-here"), 404, "unknown path");
    // A period that names no month is a bad request, not a bill that is not there yet.
    for period in ["2026-13", "2026-00", "2026-1x"] {
        let message = assert_json_error(
            &get_raw(http, &format!("/api/v1/tenants/demo/bills/{period}/m1")),
            400,
            period,
        );
        assert!(message.contains("yyyy-mm"), "{message}");
    }
    // What a caller sent is quoted back cut short, not echoed whole.
    let long = "t".repeat(4000);
    for (path, status, what) in [
        (
            format!("/api/v1/tenants/{long}/meters/m1"),
            404,
            "a long tenant",
        ),
        (
            format!("/api/v1/tenants/demo/meters/{long}"),
            400,
            "a long meter id",
        ),
        (format!("/api/v1/{long}"), 404, "a long unknown path"),
    ] {
        let message = assert_json_error(&get_raw(http, &path), status, what);
        assert!(message.contains("ttt\"…"), "{what}: {message}");
        assert!(message.len() < 300, "{what}: {} bytes", message.len());
    }
    assert_json_error(
        &raw(
            http,
            "DELETE /healthz HTTP/1.1\r\nHost: meterflow\r\nConnection: close\r\n\r\n",
        ),
        405,
        "DELETE",
    );
    assert_json_error(
        &raw(
            http,
            &format!(
                "POST {readings} HTTP/1.1\r\nHost: meterflow\r\nConnection: close\r\n\
                 Content-Length: 1000000\r\n\r\n"
            ),
        ),
        413,
        "a large body",
    );
    // Successes are untouched.
    let (status, content_type, body) = get_raw(http, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(!content_type.starts_with("application/json"));
}
