//! Whether a processor may still write as the owner of its partitions, as far as it
//! can tell from inside. The group coordinator gives a member's partitions to another
//! once it has heard no heartbeat from it for a session (`session.timeout.ms`), and the
//! new owner replays them from the last committed offset. A process frozen that long —
//! stopped (SIGSTOP), its VM paused, its host swapping — wakes holding uplinks its
//! partitions' new owner has counted meanwhile: writing them (the drain of its revoked
//! partitions, or the group its sink had in hand) would count them twice in its
//! aggregate shares, which no per-meter version fences (docs/distributed.md).
//!
//! [`Lease`] is the decision as a plain state machine: it is shown the instants the
//! process ran at — a ticker thread every [`TICK`], and the sink right before each
//! store write and when idle — and lapses for good at the first gap longer than its tolerance: the
//! session less a heartbeat interval (the last heartbeat before a freeze may be that
//! old) and [`MARGIN`]. [`OwnershipLease`] shares it between the ticker and the sink;
//! a sink that finds it lapsed writes nothing more, and the process restarts in place
//! ([`crate::restart`]) between two groups (a group already written is answered and
//! cached first): its in-memory aggregates hold what it will not write, and a fresh
//! run hydrates from the store like one after `kill -9`. A lapse with nothing held
//! restarts it too: one rule, and a run whose partitions were all taken is no loss.
//!
//! What it cannot see: a freeze inside a store write (between its statements; a
//! ScyllaDB group write waits for the cluster several times, so under load that is
//! common), a
//! member evicted without a freeze (cut off from the brokers but not from the store),
//! whose drain races its partitions' next owner, and a host suspended to memory (the
//! monotonic clock it reads stops too).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// How often the ticker shows the lease the process is running.
pub const TICK: Duration = Duration::from_millis(100);
/// Slack kept below the session, for a ticker that runs late on a busy machine.
pub const MARGIN: Duration = Duration::from_secs(1);
/// The shortest tolerance, whatever the session.
const MIN_TOLERANCE: Duration = Duration::from_secs(1);
/// librdkafka's defaults, when `[kafka.properties]` does not set them.
const DEFAULT_SESSION_MS: u64 = 45_000;
const DEFAULT_HEARTBEAT_MS: u64 = 3_000;

/// How long the process may go without running before its partitions may be
/// another's: from the consumer's `session.timeout.ms` and `heartbeat.interval.ms`
/// (librdkafka's defaults when unset or unreadable).
pub fn tolerance(properties: &BTreeMap<String, String>) -> Duration {
    let millis = |name: &str, default: u64| {
        properties
            .get(name)
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(default)
    };
    let session = Duration::from_millis(millis("session.timeout.ms", DEFAULT_SESSION_MS));
    let heartbeat = Duration::from_millis(millis("heartbeat.interval.ms", DEFAULT_HEARTBEAT_MS));
    session
        .saturating_sub(heartbeat)
        .saturating_sub(MARGIN)
        .max(MIN_TOLERANCE)
}

/// The lease lapsed: the process did not run for `frozen_for`, longer than
/// `tolerance`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lapsed {
    pub frozen_for: Duration,
    pub tolerance: Duration,
}

impl std::fmt::Display for Lapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this processor did not run for {:.1} s, longer than its group session allows ({:.1} s): its partitions may be another's now",
            self.frozen_for.as_secs_f64(),
            self.tolerance.as_secs_f64()
        )
    }
}

/// The decision: the last instant the process was seen running, and whether a gap
/// has ever been too long.
#[derive(Clone, Copy, Debug)]
pub struct Lease {
    tolerance: Duration,
    seen_at: Instant,
    lapsed: Option<Lapsed>,
}

impl Lease {
    /// A lease held as of `now`.
    pub fn new(tolerance: Duration, now: Instant) -> Self {
        Self {
            tolerance,
            seen_at: now,
            lapsed: None,
        }
    }

    /// The process runs at `now`: whether the lease still holds. Once lapsed, it
    /// stays lapsed.
    pub fn running_at(&mut self, now: Instant) -> Result<(), Lapsed> {
        if let Some(lapsed) = self.lapsed {
            return Err(lapsed);
        }
        let gap = now.saturating_duration_since(self.seen_at);
        if gap > self.tolerance {
            let lapsed = Lapsed {
                frozen_for: gap,
                tolerance: self.tolerance,
            };
            self.lapsed = Some(lapsed);
            return Err(lapsed);
        }
        self.seen_at = self.seen_at.max(now);
        Ok(())
    }
}

/// A [`Lease`] shared by its ticker thread and the sink.
pub struct OwnershipLease {
    lease: Mutex<Lease>,
}

impl OwnershipLease {
    /// A lease held from now, with a ticker thread (`ownership-lease`) that shows it
    /// the process running every [`TICK`] until the lease lapses.
    pub fn start(tolerance: Duration) -> std::io::Result<Arc<Self>> {
        let shared = Arc::new(Self {
            lease: Mutex::new(Lease::new(tolerance, Instant::now())),
        });
        let ticker = shared.clone();
        thread::Builder::new()
            .name("ownership-lease".into())
            .spawn(move || {
                while ticker.holds().is_ok() {
                    thread::sleep(TICK);
                }
            })?;
        Ok(shared)
    }

    /// Whether the lease still holds, now.
    pub fn holds(&self) -> Result<(), Lapsed> {
        let now = Instant::now();
        self.lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .running_at(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tolerance_is_the_session_less_a_heartbeat_and_the_margin() {
        let properties = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(tolerance(&properties(&[])), Duration::from_secs(41));
        assert_eq!(
            tolerance(&properties(&[
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "1000")
            ])),
            Duration::from_secs(4)
        );
        assert_eq!(
            tolerance(&properties(&[("session.timeout.ms", "1500")])),
            MIN_TOLERANCE,
            "never below the floor"
        );
        assert_eq!(
            tolerance(&properties(&[("session.timeout.ms", "soon")])),
            Duration::from_secs(41),
            "unreadable: librdkafka's default"
        );
    }

    #[test]
    fn a_process_that_keeps_running_holds_its_lease() {
        let start = Instant::now();
        let mut lease = Lease::new(Duration::from_secs(4), start);
        for step in 1..=100 {
            assert!(
                lease
                    .running_at(start + Duration::from_millis(step * 900))
                    .is_ok()
            );
        }
        // An instant seen late (another thread's clock read, taken before the last
        // tick) is no gap.
        assert!(lease.running_at(start).is_ok());
    }

    #[test]
    fn a_gap_longer_than_the_tolerance_lapses_the_lease_for_good() {
        let start = Instant::now();
        let mut lease = Lease::new(Duration::from_secs(4), start);
        assert!(lease.running_at(start + Duration::from_secs(4)).is_ok());
        let woke = start + Duration::from_secs(12);
        let lapsed = Lapsed {
            frozen_for: Duration::from_secs(8),
            tolerance: Duration::from_secs(4),
        };
        assert_eq!(lease.running_at(woke), Err(lapsed));
        // Whoever looks next — the ticker, then the sink — finds it lapsed.
        assert_eq!(
            lease.running_at(woke + Duration::from_millis(100)),
            Err(lapsed)
        );
        assert_eq!(lease.running_at(woke + TICK * 2), Err(lapsed));
        assert!(lapsed.to_string().contains("did not run for 8.0 s"));
    }
}
