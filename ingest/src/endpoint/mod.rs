//! The meter endpoint: meterflow's own MQTT (3.1.1 and 5) front door (DESIGN §2, §3, §7),
//! built for one job — take uplinks from authenticated meters, make them durable,
//! acknowledge them. It replaced the embedded rumqttd broker (see `ARCHITECTURE.md`
//! for the measured reasons).
//!
//! - [`session`]: the protocol decisions (authentication, ACLs, in-flight cap), pure;
//! - [`wire`]: packets in and out, MQTT 3.1.1 or 5 (rumqttc's `mqttbytes` codecs);
//! - [`connection`]: the runner of one connection around its session;
//! - [`handoff`]: the seam to the shard workers — [`Inbound`] uplinks with the identity
//!   their session authenticated and a [`Completion`] that answers the meter;
//! - [`outbox`]: what reaches a connection from outside (PUBACKs once durable, the ack
//!   watermark, alert events, takeover);
//! - [`registry`]: live sessions (takeover after authentication) and alert subscribers;
//! - [`probe`]: the readiness probe, a real CONNECT/CONNACK round trip;
//! - [`tls`]: the optional TLS listener's configuration (rustls).
//!
//! This file runs the listeners. Every socket-facing limit is bounded: connections
//! (below the descriptor limit; over it a CONNECT is answered "server unavailable" —
//! by a few bounded refusal slots, beyond which a socket is closed at once), the
//! connection rate (token bucket), the TLS handshake and CONNECT deadline, packet size,
//! keep-alive, in-flight uplinks per connection. An accept error (out of descriptors)
//! backs off instead of spinning. Each connection is its own task: a panic in one
//! cannot take the others down.
//!
//! [`Inbound`]: handoff::Inbound
//! [`Completion`]: outbox::Completion

pub mod connection;
pub mod handoff;
pub mod outbox;
pub mod probe;
pub mod registry;
pub mod session;
pub mod tls;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::config::Config;
use crate::metrics::EndpointMetrics;
use crate::tenants::Tenants;
use connection::ConnectionLimits;
use handoff::Handoff;
use registry::Registry;
use session::{Authenticator, ConnectOutcome};

/// Descriptors kept free of MQTT connections: the store's files, HTTP connections,
/// logs and the refusal slots.
const RESERVED_FDS: u64 = 512;
/// Connections over the cap (or the rate) answered with a CONNACK refusal at once;
/// more than this are closed without one, so refusing costs bounded resources.
const REFUSAL_SLOTS: usize = 64;
/// How long a refused connection gets to send its CONNECT.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest pause after an accept error such as EMFILE.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What every connection task shares.
pub struct EndpointShared {
    pub auth: Authenticator,
    pub handoff: Handoff,
    pub registry: Arc<Registry>,
    pub metrics: EndpointMetrics,
    pub limits: ConnectionLimits,
}

/// The running endpoint.
pub struct Endpoint {
    /// The plain listener's address (what the readiness probe connects to).
    pub listen: SocketAddr,
    pub tls_listen: Option<SocketAddr>,
    /// Live sessions and alert subscribers (the notifier publishes through it).
    pub registry: Arc<Registry>,
    /// The probe's password, known only to this process.
    pub probe_secret: String,
    /// Effective connection cap (after the descriptor limit).
    pub max_connections: usize,
}

/// Binds the listeners and starts accepting on the current tokio runtime.
pub async fn start(
    config: &Config,
    tenants: Arc<Tenants>,
    handoff: Handoff,
    metrics: EndpointMetrics,
) -> anyhow::Result<Endpoint> {
    let m = &config.mqtt;
    let listener = TcpListener::bind(m.listen).await.with_context(|| {
        format!(
            "mqtt.listen {} is not free (another meterflow or MQTT broker running?)",
            m.listen
        )
    })?;
    let listen = listener.local_addr()?;
    let tls = match &m.tls {
        Some(tls) => {
            let acceptor = tls::acceptor(tls)?;
            let listener = TcpListener::bind(tls.listen)
                .await
                .with_context(|| format!("mqtt.tls.listen {} is not free", tls.listen))?;
            Some((listener, acceptor))
        }
        None => None,
    };
    let tls_listen = tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    let max_connections = connection_cap(m.max_connections);
    let probe_secret = hex::encode(rand::random::<[u8; 16]>());
    let registry = Arc::new(Registry::default());
    let shared = Arc::new(EndpointShared {
        auth: Authenticator::new(tenants, probe_secret.clone()),
        handoff,
        registry: registry.clone(),
        metrics,
        limits: ConnectionLimits {
            connect_timeout: Duration::from_secs(u64::from(m.connect_timeout_s)),
            max_inflight: m.max_inflight,
            max_packet_bytes: max_packet_bytes(config),
            idle_timeout: Duration::from_secs(m.idle_timeout_s),
        },
    });
    let gate = Arc::new(Gate {
        slots: Arc::new(Semaphore::new(max_connections)),
        refusals: Arc::new(Semaphore::new(REFUSAL_SLOTS)),
        rate: std::sync::Mutex::new(ConnectionRate::new(m.connection_rate, Instant::now())),
    });
    tokio::spawn(accept_loop(listener, None, shared.clone(), gate.clone()));
    if let Some((listener, acceptor)) = tls {
        tokio::spawn(accept_loop(listener, Some(acceptor), shared, gate));
    }
    Ok(Endpoint {
        listen,
        tls_listen,
        registry,
        probe_secret,
        max_connections,
    })
}

/// The largest packet read: payloads up to twice the payload limit still reach the
/// pipeline and become `payload_too_large` dead letters; larger packets close the
/// connection.
fn max_packet_bytes(config: &Config) -> usize {
    config.limits.max_payload_bytes * 2 + 1024
}

/// `configured`, lowered to fit the open-file limit less [`RESERVED_FDS`]. The soft
/// limit is first raised to the hard one (containers often start at a soft 1,024
/// with a far higher hard limit).
fn connection_cap(configured: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limits = getrlimit(Resource::Nofile);
    if limits.current < limits.maximum {
        let raised = rustix::process::Rlimit {
            current: limits.maximum,
            maximum: limits.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limits = getrlimit(Resource::Nofile);
        }
    }
    let limit = limits.current.unwrap_or(u64::MAX);
    let fit = usize::try_from(limit.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX);
    if fit < configured {
        info!(
            configured,
            open_file_limit = limit,
            effective = fit,
            "mqtt.max_connections lowered to fit the open-file limit (raise `ulimit -Hn` for more)"
        );
    }
    configured.min(fit)
}

/// Admission of new connections: the cap, the rate and the refusal slots.
struct Gate {
    slots: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    rate: std::sync::Mutex<ConnectionRate>,
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<EndpointShared>,
    gate: Arc<Gate>,
) {
    let mut backoff = ACCEPT_BACKOFF_FIRST;
    loop {
        let (socket, _peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_FIRST;
                accepted
            }
            Err(error) => {
                shared.metrics.accept_errors.increment(1);
                if backoff == ACCEPT_BACKOFF_FIRST {
                    warn!(%error, "mqtt accept failed (out of descriptors?); backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let within_rate = gate
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(Instant::now());
        let slot = if within_rate {
            gate.slots.clone().try_acquire_owned().ok()
        } else {
            None
        };
        match slot {
            Some(slot) => match &tls {
                None => {
                    tokio::spawn(serve_plain(socket, shared.clone(), slot));
                }
                Some(acceptor) => {
                    tokio::spawn(serve_tls(socket, acceptor.clone(), shared.clone(), slot));
                }
            },
            None => {
                shared.metrics.connect(if within_rate {
                    ConnectOutcome::Capacity
                } else {
                    ConnectOutcome::Rate
                });
                if let Ok(refusal) = gate.refusals.clone().try_acquire_owned() {
                    tokio::spawn(refuse(socket, tls.clone(), shared.clone(), refusal));
                }
            }
        }
    }
}

/// Runs one admitted plain connection; its slot is freed and the gauge lowered when it
/// ends, however it ends (a panic unwinds through the guard too). Plain and TLS
/// connections are separate tasks: a task is as large as its future's largest state,
/// and a TLS handshake's state (several KiB) would otherwise be paid by every meter.
async fn serve_plain(socket: TcpStream, shared: Arc<EndpointShared>, slot: OwnedSemaphorePermit) {
    let _open = OpenConnection::new(slot, &shared.metrics);
    connection::serve(socket, shared).await;
}

/// Runs one admitted TLS connection: the handshake under the CONNECT deadline, then
/// the session.
async fn serve_tls(
    socket: TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<EndpointShared>,
    slot: OwnedSemaphorePermit,
) {
    let _open = OpenConnection::new(slot, &shared.metrics);
    let deadline = shared.limits.connect_timeout;
    match tokio::time::timeout(deadline, acceptor.accept(socket)).await {
        Ok(Ok(stream)) => connection::serve(stream, shared).await,
        _ => shared.metrics.connect(ConnectOutcome::Tls),
    }
}

/// One open connection: its slot and its share of the connections gauge.
struct OpenConnection {
    _slot: OwnedSemaphorePermit,
    gauge: metrics::Gauge,
}

impl OpenConnection {
    fn new(slot: OwnedSemaphorePermit, metrics: &EndpointMetrics) -> Self {
        metrics.connections.increment(1.0);
        Self {
            _slot: slot,
            gauge: metrics.connections.clone(),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// Answers a connection over the cap or the rate with CONNACK "server unavailable".
async fn refuse(
    socket: TcpStream,
    tls: Option<TlsAcceptor>,
    shared: Arc<EndpointShared>,
    _refusal: OwnedSemaphorePermit,
) {
    let work = async {
        match tls {
            None => refuse_on(socket, &shared).await,
            Some(acceptor) => {
                if let Ok(stream) = acceptor.accept(socket).await {
                    refuse_on(stream, &shared).await;
                }
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, work).await;
}

async fn refuse_on<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, shared: &EndpointShared) {
    let mut buf = bytes::BytesMut::new();
    let limits = &shared.limits;
    if let Ok((wire, _)) =
        connection::read_connect(&mut stream, &mut buf, limits.max_packet_bytes).await
    {
        let mut out = bytes::BytesMut::new();
        wire.connack(
            wire::ConnectAnswer::ServerUnavailable,
            (limits.max_inflight, limits.max_packet_bytes),
            &mut out,
        );
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    }
}

/// A token bucket over new connections: `per_second` tokens a second, as many held at
/// most. Pure: time comes in.
#[derive(Debug)]
pub struct ConnectionRate {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl ConnectionRate {
    pub fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            tokens: per_second,
            at: now,
        }
    }

    /// Takes a token if one is there.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_allows_a_burst_then_refills_with_time() {
        let start = Instant::now();
        let mut rate = ConnectionRate::new(10, start);
        assert_eq!((0..20).filter(|_| rate.allow(start)).count(), 10);
        assert!(!rate.allow(start + Duration::from_millis(50)));
        assert!(rate.allow(start + Duration::from_millis(150)));
        let later = start + Duration::from_secs(60);
        assert_eq!(
            (0..20).filter(|_| rate.allow(later)).count(),
            10,
            "never more than a second's worth"
        );
    }

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        let cap = connection_cap(usize::MAX);
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        assert!((cap as u64) < limit.max(RESERVED_FDS + 2));
        assert_eq!(connection_cap(3), 3);
    }
}
