//! `rumqttd-peer`: a bare rumqttd 0.20 broker on one loopback port, configured as
//! meterflow's embedded broker was before meterflow's own endpoint replaced it
//! (ARCHITECTURE departure 3), for the bench's peer baseline beside Mosquitto.
//!
//! ```sh
//! rumqttd-peer --listen 127.0.0.1:18830 [--max-connections 30000] [--nagle]
//! ```
//!
//! The settings are those of the retired `ingest/src/broker.rs` with its defaults:
//! router `max_connections` 30,000, commit logs of 32 MiB × 8 segments, 200
//! outgoing packets per connection, a one-segment 1 KiB log per ack filter (acks are
//! cumulative), connection timeout 10 s, payloads up to twice meterflow's default
//! payload limit plus 1 KiB, 100 in flight, dynamic filters. No authentication, no
//! metrics. Its log goes to stderr at `--log` (default `warn` with rumqttd's
//! per-publish ERROR-level span in `rumqttd::router::routing` off, as meterflow had
//! it: formatting that span cost ~7 % of the broker's CPU).
//!
//! rumqttd never sets `TCP_NODELAY` on the sockets it accepts and has no option for
//! it. Linux copies the option from a listening socket to the sockets it accepts, so
//! unless `--nagle` this binary sets it on rumqttd's listener once it listens, as
//! meterflow did (the same as Mosquitto's `set_tcp_nodelay true` in the bench). It
//! prints one line, `listening on ADDR (TCP_NODELAY …)`, then runs until killed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use meterflow_model::limits::DEFAULT_MAX_PAYLOAD_BYTES;
use meterflow_model::topic::ACK_FILTER;
use rustix::net::{getsockname, sockopt};
use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

/// A bare rumqttd broker with meterflow's former embedded-broker settings.
#[derive(Debug, Parser)]
#[command(name = "rumqttd-peer")]
struct Args {
    /// Where to listen (loopback only in the bench).
    #[arg(long)]
    listen: SocketAddr,
    /// rumqttd's router connection limit (meterflow's former `mqtt.max_connections`).
    #[arg(long, default_value_t = 30_000)]
    max_connections: usize,
    /// Leave Nagle on (rumqttd's own behaviour).
    #[arg(long)]
    nagle: bool,
    /// `tracing` filter of rumqttd's log (stderr).
    #[arg(long, default_value = "warn,rumqttd::router::routing=off")]
    log: String,
}

/// meterflow's former `mqtt.segment_bytes` and `mqtt.max_segments` defaults.
const SEGMENT_BYTES: usize = 32 * 1024 * 1024;
const MAX_SEGMENTS: usize = 8;
/// rumqttd's smallest commit-log segment (smaller panics): one per ack filter.
const ACK_LOG_BYTES: usize = 1024;
/// meterflow's former `mqtt.connect_timeout_s` default, in ms.
const CONNECTION_TIMEOUT_MS: u64 = 10_000;
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

fn config(args: &Args) -> anyhow::Result<rumqttd::Config> {
    // rumqttd's config types keep some fields private: built as its TOML would be.
    let value = serde_json::json!({
        "id": 0,
        "router": {
            "max_connections": args.max_connections,
            "max_outgoing_packet_count": 200,
            "max_segment_size": SEGMENT_BYTES,
            "max_segment_count": MAX_SEGMENTS,
            "custom_segment": {
                (ACK_FILTER): { "max_segment_size": ACK_LOG_BYTES, "max_segment_count": 1 },
            },
        },
        "v4": { "1": {
            "name": "mqtt-v4",
            "listen": args.listen.to_string(),
            "next_connection_delay_ms": 0,
            "connections": {
                "connection_timeout_ms": CONNECTION_TIMEOUT_MS,
                "max_payload_size": DEFAULT_MAX_PAYLOAD_BYTES * 2 + 1024,
                "max_inflight_count": 100,
                "dynamic_filters": true,
            },
        }},
    });
    serde_json::from_value(value).context("building rumqttd's configuration")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log)?)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // rumqttd only logs a bind error from its own thread: find out here instead.
    drop(TcpListener::bind(args.listen).with_context(|| format!("{} is not free", args.listen))?);
    let mut broker = rumqttd::Broker::new(config(&args)?);
    let server = std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || broker.start().map_err(|e| e.to_string()))?;
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    while TcpStream::connect_timeout(&args.listen, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline || server.is_finished() {
            bail!("rumqttd did not start listening on {}", args.listen);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let nodelay = if args.nagle {
        "off (--nagle)".to_owned()
    } else {
        match set_nodelay_on_listener(args.listen) {
            Ok(()) => "on".to_owned(),
            Err(error) => format!("NOT set: {error}"),
        }
    };
    println!("listening on {} (TCP_NODELAY {nodelay})", args.listen);
    match server.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => bail!("rumqttd stopped: {error}"),
        Err(_) => bail!("rumqttd panicked"),
    }
}

/// Sets `TCP_NODELAY` on this process's socket listening on `addr`: finds it among
/// `/proc/self/fd` and duplicates it with `pidfd_getfd` (safe code, Linux ≥ 5.6).
fn set_nodelay_on_listener(addr: SocketAddr) -> std::io::Result<()> {
    let me = pidfd_open(getpid(), PidfdFlags::empty())?;
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if !is_socket {
            continue;
        }
        let Ok(socket): Result<OwnedFd, _> = pidfd_getfd(&me, fd, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let listening = sockopt::socket_acceptconn(&socket).unwrap_or(false);
        let local = getsockname(&socket)
            .ok()
            .and_then(|a| SocketAddr::try_from(a).ok());
        if listening && local == Some(addr) {
            sockopt::set_tcp_nodelay(&socket, true)?;
            return Ok(());
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no socket of this process listens on {addr}"),
    ))
}
