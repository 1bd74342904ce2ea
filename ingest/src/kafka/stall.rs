//! Stall watch for the log clients: librdkafka's statistics (every
//! [`STATS_INTERVAL_MS`]) say whether a client is doing its job — a consumer steady in
//! its group, a producer appending what it holds — and a client that has not been for
//! its patience, by statistics that keep coming, is replaced with a fresh one. After a
//! broker outage, librdkafka 2.12 can leave a client waiting for good on a connection
//! that never comes up again (seen here under CPU load: a consumer out of its group
//! with nothing assigned, a producer that appended nothing more); a new client
//! connects afresh.
//!
//! The decision is kept apart from the clients: [`StallWatch`] only takes the times it
//! is told.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often librdkafka reports statistics to the log clients.
pub(super) const STATS_INTERVAL_MS: &str = "5000";

/// Statistics come every 5 s; ones older than this mean the client was not polled
/// (a consumer thread blocked on full shard queues), which says nothing of its health.
const FRESH_STATS: Duration = Duration::from_secs(15);

/// When statistics last came, and last showed the client healthy.
#[derive(Clone, Copy, Debug)]
pub(super) struct StallWatch {
    stats_at: Instant,
    healthy_at: Instant,
}

impl StallWatch {
    /// A client just made: healthy as of `now`.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            stats_at: now,
            healthy_at: now,
        }
    }

    /// New statistics at `now`.
    pub(super) fn observed(&mut self, now: Instant, healthy: bool) {
        self.stats_at = now;
        if healthy {
            self.healthy_at = now;
        }
    }

    /// How long the client has been unhealthy, when fresh statistics say it has been
    /// for at least `patience`.
    pub(super) fn stalled_for(&self, now: Instant, patience: Duration) -> Option<Duration> {
        let stalled = now.duration_since(self.healthy_at);
        (now.duration_since(self.stats_at) < FRESH_STATS && stalled >= patience).then_some(stalled)
    }
}

/// A [`StallWatch`] shared by a client's statistics callback and its watchdog.
#[derive(Clone, Debug)]
pub(super) struct SharedWatch(Arc<Mutex<StallWatch>>);

impl SharedWatch {
    pub(super) fn new() -> Self {
        Self(Arc::new(Mutex::new(StallWatch::new(Instant::now()))))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, StallWatch> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh client takes over: healthy as of now.
    pub(super) fn restart(&self) {
        *self.lock() = StallWatch::new(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_stalled_only_when_fresh_statistics_keep_showing_it_unhealthy() {
        let t0 = Instant::now();
        let patience = Duration::from_secs(60);
        let mut watch = StallWatch::new(t0);
        let at = |s| t0 + Duration::from_secs(s);
        for s in (5..=55).step_by(5) {
            watch.observed(at(s), false);
            assert_eq!(watch.stalled_for(at(s), patience), None, "{s} s only");
        }
        watch.observed(at(60), false);
        assert_eq!(
            watch.stalled_for(at(60), patience),
            Some(Duration::from_secs(60))
        );
        // Healthy again: fine.
        watch.observed(at(65), true);
        assert_eq!(watch.stalled_for(at(65), patience), None);
        // The client was not polled: stale statistics say nothing, however long.
        let quiet = StallWatch::new(t0);
        assert_eq!(quiet.stalled_for(at(300), patience), None);
    }
}
