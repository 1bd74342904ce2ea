//! The systems under test, as child processes the harness owns: `meterflow` (the
//! release binary, with a fresh data directory and free loopback ports) and the peer
//! baselines — Debian's `mosquitto`, and `rumqttd-peer` (this crate's bare rumqttd
//! 0.20 with the settings meterflow's embedded broker had) — each with the
//! [`PeerAcker`] subscribed to it.
//!
//! Every target lives in its own temporary directory (config, data, log), removed
//! when the target is dropped; the process is stopped with SIGTERM (meterflow then
//! seals and stores what is in flight) and killed if it has not exited within
//! [`STOP_GRACE`]. Only processes started here are ever signalled, by pid.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;

use crate::http;
use crate::peer_acker::PeerAcker;
use crate::prom::Scrape;

/// How long a target gets to become ready: meterflow opens its store and binds two
/// listeners in well under a second; the slack absorbs a busy shared machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping target gets before SIGKILL: meterflow drains its queues into
/// one last durable write, which takes well under a second after a bench step.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// Timeout of one `/metrics` or `/readyz` request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// The uplink filter (DESIGN §3).
pub(crate) const UPLINK_FILTER: &str = "meters/+/+/up";
/// Shared-subscription group of several peer ackers.
const SHARE_GROUP: &str = "meterflow-bench";

/// Which system a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TargetKind {
    Meterflow,
    Mosquitto,
    Rumqttd,
}

impl TargetKind {
    /// The peers, in the order a run measures them.
    pub(crate) const PEERS: [TargetKind; 2] = [TargetKind::Mosquitto, TargetKind::Rumqttd];

    pub(crate) fn name(self) -> &'static str {
        match self {
            TargetKind::Meterflow => "meterflow",
            TargetKind::Mosquitto => "mosquitto",
            TargetKind::Rumqttd => "rumqttd",
        }
    }

    /// A peer by name (`--peers mosquitto,rumqttd`).
    pub(crate) fn peer(name: &str) -> Option<TargetKind> {
        Self::PEERS.into_iter().find(|k| k.name() == name.trim())
    }
}

/// A peer baseline and the binary that runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) kind: TargetKind,
    pub(crate) binary: PathBuf,
}

/// How the peers are run (the same for every peer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerOptions {
    /// `TCP_NODELAY` on the broker's accepted sockets (default: on, as meterflow).
    pub(crate) nodelay: bool,
    /// Acker connections (1: the specified single subscriber; 0: none, the broker
    /// alone, as `mqtt-floor` measures it).
    pub(crate) ackers: usize,
}

/// How to start meterflow.
#[derive(Clone, Debug, Default)]
pub(crate) struct MeterflowOptions {
    pub(crate) binary: PathBuf,
    /// TOML put in the config file (sections and keys of `meterflow config`).
    pub(crate) config_toml: String,
    /// Extra `run` arguments (e.g. `--store scylla://…`).
    pub(crate) extra_args: Vec<String>,
}

/// A running system under test.
pub(crate) struct Target {
    pub(crate) kind: TargetKind,
    pub(crate) mqtt: SocketAddr,
    /// meterflow's HTTP address (`None` for the peer).
    pub(crate) http: Option<SocketAddr>,
    /// The peer's ackers (empty for meterflow).
    pub(crate) ackers: Vec<PeerAcker>,
    child: Child,
    log: PathBuf,
    // Dropped last: the process must be gone before its directory is removed.
    dir: TempDir,
}

/// A loopback port nobody listens on right now. The port is released before the
/// target binds it, so another process could take it in between; on loopback of a
/// bench machine that race is rare and shows as a clear bind error.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Target {
    pub(crate) fn start_meterflow(options: &MeterflowOptions) -> anyhow::Result<Target> {
        if !options.binary.is_file() {
            bail!(
                "no meterflow binary at {}: build it with `cargo build --release --bin meterflow --bin meterflow-sim` or pass --meterflow PATH",
                options.binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("meterflow-bench-")
            .tempdir()?;
        let mqtt = loopback(free_port()?);
        let http_addr = loopback(free_port()?);
        let config = dir.path().join("meterflow.toml");
        std::fs::write(&config, &options.config_toml)?;
        let log = dir.path().join("meterflow.log");
        let mut command = Command::new(&options.binary);
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--mqtt")
            .arg(mqtt.to_string())
            .arg("--http")
            .arg(http_addr.to_string())
            .arg("--data")
            .arg(dir.path().join("data"))
            .args(&options.extra_args);
        let child = spawn_logged(&mut command, &log)?;
        let mut target = Target {
            kind: TargetKind::Meterflow,
            mqtt,
            http: Some(http_addr),
            ackers: Vec::new(),
            child,
            log,
            dir,
        };
        target.wait_ready()?;
        Ok(target)
    }

    /// Starts a peer broker (with `TCP_NODELAY` on its accepted sockets when
    /// `options.nodelay`) and its ackers: one subscriber with contiguous watermarks
    /// (the peer as specified), or `options.ackers > 1` sharing a `$share/…`
    /// subscription, each acking the highest seq it saw (see [`PeerAcker`]).
    pub(crate) fn start_peer(peer: &Peer, options: PeerOptions) -> anyhow::Result<Target> {
        let name = peer.kind.name();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-bench-"))
            .tempdir()?;
        let mqtt = loopback(free_port()?);
        let log = dir.path().join(format!("{name}.log"));
        let mut command = Command::new(&peer.binary);
        let hint = match peer.kind {
            TargetKind::Mosquitto => {
                let config = dir.path().join("mosquitto.conf");
                std::fs::write(&config, mosquitto_config(mqtt.port(), options.nodelay))?;
                command.arg("-c").arg(&config);
                "install it with `apt-get install mosquitto`, or pass --mosquitto PATH, --peers or --no-peer"
            }
            TargetKind::Rumqttd => {
                command.arg("--listen").arg(mqtt.to_string());
                if !options.nodelay {
                    command.arg("--nagle");
                }
                "build it with `cargo build --release -p meterflow-bench`, or pass --rumqttd PATH, --peers or --no-peer"
            }
            TargetKind::Meterflow => bail!("meterflow is not a peer"),
        };
        let child = spawn_logged(&mut command, &log)
            .with_context(|| format!("starting {} ({hint})", peer.binary.display()))?;
        let mut target = Target {
            kind: peer.kind,
            mqtt,
            http: None,
            ackers: Vec::new(),
            child,
            log,
            dir,
        };
        target.wait_ready()?;
        let ackers = options.ackers;
        for index in 0..ackers {
            target.ackers.push(if ackers == 1 {
                PeerAcker::start(mqtt, UPLINK_FILTER, index, true)?
            } else {
                PeerAcker::start(
                    mqtt,
                    &format!("$share/{SHARE_GROUP}/{UPLINK_FILTER}"),
                    index,
                    false,
                )?
            });
        }
        Ok(target)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of the target's log, for error messages.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited during start-up ({status}); log {}:\n{}",
                    self.kind.name(),
                    self.log.display(),
                    self.log_tail(20)
                );
            }
            let ready = match (self.kind, self.http) {
                (_, Some(http_addr)) => {
                    matches!(http::get(http_addr, "/readyz", HTTP_TIMEOUT), Ok((200, _)))
                }
                // It says so once its listener has TCP_NODELAY (or it was told not to).
                (TargetKind::Rumqttd, None) => {
                    std::fs::read_to_string(&self.log).is_ok_and(|log| log.contains("listening on"))
                }
                (_, None) => TcpStream::connect_timeout(&self.mqtt, HTTP_TIMEOUT).is_ok(),
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready within {READY_TIMEOUT:?}; log:\n{}",
                    self.kind.name(),
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// meterflow's `/metrics` (`None` for the peer, which has none).
    pub(crate) fn scrape(&self) -> anyhow::Result<Option<Scrape>> {
        let Some(http_addr) = self.http else {
            return Ok(None);
        };
        let (status, body) = http::get(http_addr, "/metrics", HTTP_TIMEOUT)?;
        if status != 200 {
            bail!("GET /metrics answered {status}");
        }
        Ok(Some(Scrape::parse(&body)?))
    }

    /// Whether the process is still running.
    pub(crate) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]. Returns the target's data
    /// directory size in bytes before it is removed (what the store wrote).
    pub(crate) fn stop(mut self) -> anyhow::Result<u64> {
        for acker in self.ackers.drain(..) {
            acker.stop()?;
        }
        terminate(&mut self.child, Signal::TERM, STOP_GRACE);
        Ok(dir_size(&self.dir.path().join("data")))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            terminate(&mut self.child, Signal::TERM, STOP_GRACE);
        }
    }
}

/// Sends `signal` to a child the harness started and waits up to `grace` for it to
/// exit; kills it after that. Reaps it either way.
pub(crate) fn terminate(child: &mut Child, signal: Signal, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `signal` without waiting (the caller reaps).
pub(crate) fn signal(child: &Child, signal: Signal) {
    if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
}

fn spawn_logged(command: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let out = File::create(log)?;
    let err = out.try_clone()?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("spawning {:?}", command.get_program()))
}

/// Mosquitto as a bare, memory-only broker on one loopback port. Its defaults are
/// kept except where they would make it drop messages the acker or the meters are
/// owed: `max_queued_messages 0` (no cap: with the default 1,000, QoS 0 deliveries to
/// a busy subscriber are silently dropped) and no connection cap. `nodelay` sets
/// `set_tcp_nodelay true`, as meterflow's endpoint and the rumqttd peer do.
pub(crate) fn mosquitto_config(port: u16, nodelay: bool) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "# written by meterflow-bench: the peer baseline");
    let _ = writeln!(text, "listener {port} 127.0.0.1");
    for line in [
        "allow_anonymous true",
        "persistence false",
        "max_queued_messages 0",
        "max_connections -1",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "connection_messages false",
    ] {
        let _ = writeln!(text, "{line}");
    }
    if nodelay {
        let _ = writeln!(text, "set_tcp_nodelay true");
    }
    text
}

/// Bytes under `path`, recursively (0 when missing).
pub(crate) fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Raises this process's soft open-file limit to its hard limit, so the simulator
/// processes and the targets it spawns inherit it. Returns the limit now in force.
pub(crate) fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return hard;
        }
    }
    limit.current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_config_listens_on_loopback_only() {
        let text = mosquitto_config(18830, false);
        assert!(text.contains("listener 18830 127.0.0.1\n"));
        assert!(text.contains("max_queued_messages 0\n"));
        assert!(!text.contains("0.0.0.0"));
        assert!(!text.contains("nodelay"));
        assert!(mosquitto_config(18830, true).contains("set_tcp_nodelay true\n"));
    }

    #[test]
    fn free_ports_are_loopback_and_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }

    #[test]
    fn dir_size_counts_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x"), [0u8; 10]).unwrap();
        std::fs::write(dir.path().join("y"), [0u8; 5]).unwrap();
        assert_eq!(dir_size(dir.path()), 15);
        assert_eq!(dir_size(&dir.path().join("missing")), 0);
    }
}
