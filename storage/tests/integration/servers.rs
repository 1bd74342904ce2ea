//! The real servers the ScyllaDB and Redis tests talk to (DESIGN §10: no mocks), and
//! a TCP proxy that lets a test cut a backend off and bring it back.
//!
//! Targets: `MF_CASSANDRA` (default `127.0.0.1:9042`, started by
//! `scripts/cassandra start`), `MF_REDIS` (default `redis://127.0.0.1:6390`,
//! `scripts/redis start`) and `MF_REDIS_CLUSTER` (default
//! `redis+cluster://127.0.0.1:7001`, the 3-node cluster of `scripts/redis-cluster
//! start`). A test whose server is unreachable fails and says which script to run,
//! unless `MF_SKIP_SERVER_TESTS=1`: then it prints that it was skipped and passes.
//!
//! `redis.rs`'s `redis_and_cluster!` runs one Redis test body against both Redis
//! targets. (The ingest crate's tests include this file too.)

use std::collections::hash_map::RandomState;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

const DEFAULT_CASSANDRA: &str = "127.0.0.1:9042";
const DEFAULT_REDIS: &str = "redis://127.0.0.1:6390";
const DEFAULT_REDIS_CLUSTER: &str = "redis+cluster://127.0.0.1:7001";
const DEFAULT_KAFKA: &str = "127.0.0.1:9092";
/// The scheme `RedisCache` takes for a Redis Cluster.
const CLUSTER_SCHEME: &str = "redis+cluster://";
/// How long the reachability check waits: a local server accepts at once.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the proxy's accept loop checks whether it was stopped.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

fn skipped(test: &str, server: &str) -> bool {
    if std::env::var("MF_SKIP_SERVER_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped {test}: needs {server}, and MF_SKIP_SERVER_TESTS=1");
        true
    } else {
        false
    }
}

fn resolve(addr: &str) -> SocketAddr {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve {addr:?} (check MF_CASSANDRA / MF_REDIS)"))
}

fn require(server: &str, addr: &str, script: &str, variable: &str) {
    if TcpStream::connect_timeout(&resolve(addr), PROBE_TIMEOUT).is_err() {
        panic!(
            "{server} is not reachable at {addr}: start it with `{script} start` \
             (or point {variable} at one, or set MF_SKIP_SERVER_TESTS=1 to skip the server tests)"
        );
    }
}

/// The Cassandra contact point (`host:port`), or `None` if server tests are skipped.
pub(crate) fn cassandra(test: &str) -> Option<String> {
    if skipped(test, "Cassandra") {
        return None;
    }
    let addr = std::env::var("MF_CASSANDRA").unwrap_or_else(|_| DEFAULT_CASSANDRA.into());
    require("Cassandra", &addr, "scripts/cassandra", "MF_CASSANDRA");
    Some(addr)
}

/// The Redis URL, or `None` if server tests are skipped.
pub(crate) fn redis(test: &str) -> Option<String> {
    if skipped(test, "Redis") {
        return None;
    }
    let url = std::env::var("MF_REDIS").unwrap_or_else(|_| DEFAULT_REDIS.into());
    require("Redis", &redis_host_port(&url), "scripts/redis", "MF_REDIS");
    Some(url)
}

/// Kafka's bootstrap address (`MF_KAFKA`, `scripts/kafka start`), or `None` if server
/// tests are skipped. Only ingest's distributed-mode tests use it.
#[allow(dead_code)]
pub(crate) fn kafka(test: &str) -> Option<String> {
    if skipped(test, "Kafka") {
        return None;
    }
    let addr = std::env::var("MF_KAFKA").unwrap_or_else(|_| DEFAULT_KAFKA.into());
    require("Kafka", &addr, "scripts/kafka", "MF_KAFKA");
    Some(addr)
}

/// The Redis Cluster URL (`redis+cluster://…`), or `None` if server tests are skipped.
pub(crate) fn redis_cluster(test: &str) -> Option<String> {
    if skipped(test, "the Redis Cluster") {
        return None;
    }
    let url = std::env::var("MF_REDIS_CLUSTER").unwrap_or_else(|_| DEFAULT_REDIS_CLUSTER.into());
    assert!(
        url.starts_with(CLUSTER_SCHEME),
        "MF_REDIS_CLUSTER {url:?} must be a {CLUSTER_SCHEME}HOST:PORT[,HOST:PORT…] URL"
    );
    require(
        "The Redis Cluster",
        &redis_host_port(&url),
        "scripts/redis-cluster",
        "MF_REDIS_CLUSTER",
    );
    Some(url)
}

/// The node URLs (`redis://[user:pass@]host:port`) of a `redis+cluster://` URL, for
/// a test's own cluster client; `None` for any other URL.
pub(crate) fn redis_cluster_seeds(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix(CLUSTER_SCHEME)?;
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), rest),
    };
    Some(
        hosts
            .split(',')
            .map(|host| format!("redis://{credentials}{host}"))
            .collect(),
    )
}

/// `host:port` of a `redis://[user:pass@]host:port[/db]` URL, or of the first seed of
/// a `redis+cluster://[user:pass@]host:port[,host:port…]` URL.
pub(crate) fn redis_host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let host_port = rest.split(['/', ',']).next().unwrap_or(rest);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    }
}

/// A name unique to this test process and call: keyspaces and key prefixes, so tests
/// (and concurrent test runs) never share data. Lowercase, digits and `_`.
pub(crate) fn unique_name(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("mft_{test}_{}_{n}_{nanos:x}", std::process::id())
}

/// A free loopback port for a server a test starts, outside the kernel's ephemeral
/// range: a port from that range, released after the probe, can be taken by any
/// outgoing connection of the tests running beside it before the server binds it
/// (which then fails to start). Ports outside it are only ever bound on purpose; the
/// test servers' fixed ports (`scripts/`) are all below 20,000, so the ports tried
/// are those from 20,000 up to the range (Linux's default: 32,768), or above it when
/// it starts lower. Without room either side, any free port.
pub(crate) fn free_port() -> u16 {
    let range: Vec<u32> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let (low, high) = match range[..] {
        [low, high] => (low, high),
        _ => (32_768, 60_999),
    };
    let outside = if low >= 21_000 {
        Some((20_000, low))
    } else if high <= 64_535 {
        Some((high + 1, 65_536))
    } else {
        None
    };
    let Some((from, to)) = outside else {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        return listener.local_addr().expect("local addr").port();
    };
    for _ in 0..1_000 {
        // std's per-process random keys, fresh for every hasher: a random candidate.
        let random = std::hash::BuildHasher::hash_one(&RandomState::new(), ());
        let port = (u64::from(from) + random % u64::from(to - from)) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("local addr").port();
        }
    }
    panic!("no free port in {from}..{to} after 1,000 tries")
}

/// A port nothing listens on (probed, then released).
pub(crate) fn closed_port() -> u16 {
    free_port()
}

/// Forwards `127.0.0.1:<port>` to a target until stopped. Stopping closes the port
/// and every forwarded connection, as a crashed server would.
pub(crate) struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts forwarding `127.0.0.1:port` to `target`; with port 0, a [`free_port`]
    /// (outside the ephemeral range, so that a proxy stopped and started again on the
    /// same port, as an outage test does, finds it still free).
    pub(crate) fn start(port: u16, target: &str) -> io::Result<Proxy> {
        let port = if port == 0 { free_port() } else { port };
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let target = resolve(target);
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let stop = Arc::clone(&stop);
            let connections = Arc::clone(&connections);
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => forward(client, target, &connections),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            thread::sleep(ACCEPT_POLL)
                        }
                        Err(_) => thread::sleep(ACCEPT_POLL),
                    }
                }
                // The listener drops here: the port is closed.
            })
        };
        Ok(Proxy {
            port,
            stop,
            connections,
            acceptor: Some(acceptor),
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Closes the port and cuts every forwarded connection.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let connections = std::mem::take(&mut *self.connections.lock().unwrap());
        for stream in connections {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn forward(client: TcpStream, target: SocketAddr, connections: &Mutex<Vec<TcpStream>>) {
    let Ok(server) = TcpStream::connect_timeout(&target, PROBE_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nonblocking(false);
    let (Ok(client_out), Ok(server_out), Ok(client_keep), Ok(server_keep)) = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    ) else {
        return;
    };
    connections
        .lock()
        .unwrap()
        .extend([client_keep, server_keep]);
    pipe(client, server_out);
    pipe(server, client_out);
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
