//! Timing policies shared by the meter tasks: the fleet-wide send schedule
//! ([`Pacer`]) and the reconnect backoff ([`Backoff`]). No I/O and no sleeping here —
//! they only compute instants and delays.
//!
//! The pacer is an open-loop schedule: new message number `k` of the fleet is due at
//! `start + k / rate`, whoever sends it; `start` is the first claim, so connecting
//! the fleet does not eat into the schedule. Meters claim slots with one atomic
//! `fetch_add` (no lock) and only when their window has room, so at most one claim per
//! meter is outstanding. A fleet that falls behind (an outage, a full window) sends
//! the overdue slots at once and catches up, as a schedule-driven load test must:
//! waiting instead would hide the service's slowness (coordinated omission).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::SmallRng;

/// Fleet-wide schedule of new messages.
#[derive(Debug)]
pub(crate) struct Pacer {
    /// Set by the first claim.
    start: OnceLock<Instant>,
    /// Nanoseconds between consecutive slots (1e9 / rate).
    period_ns: f64,
    next_slot: AtomicU64,
}

impl Pacer {
    pub(crate) fn new(rate_per_s: f64) -> Self {
        Self {
            start: OnceLock::new(),
            period_ns: 1e9 / rate_per_s,
            next_slot: AtomicU64::new(0),
        }
    }

    /// Claims the next slot and returns when it is due.
    pub(crate) fn claim(&self, now: Instant) -> Instant {
        let start = *self.start.get_or_init(|| now);
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        // f64 keeps 1 ns precision up to ~104 days of schedule: plenty.
        start + Duration::from_nanos((slot as f64 * self.period_ns) as u64)
    }
}

/// Shortest reconnect delay: a broker restart takes at least this long, and it keeps
/// a refused meter from spinning.
pub(crate) const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay: bounds how long a meter stays away after the broker is
/// back, while 1,000 meters retrying still make only ~200 attempts per second.
pub(crate) const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Exponential backoff with "equal jitter": the delay is uniform in
/// `[base/2, base]`, and `base` doubles from [`RECONNECT_MIN`] to [`RECONNECT_MAX`].
/// The jitter spreads a fleet that lost the broker at the same instant.
#[derive(Debug)]
pub(crate) struct Backoff {
    base: Duration,
    rng: SmallRng,
}

impl Backoff {
    pub(crate) fn new(rng: SmallRng) -> Self {
        Self {
            base: RECONNECT_MIN,
            rng,
        }
    }

    /// The delay before the next attempt; the following one will be longer.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let half = self.base / 2;
        let jitter = self.rng.random_range(0..=half.as_millis() as u64);
        let delay = half + Duration::from_millis(jitter);
        self.base = (self.base * 2).min(RECONNECT_MAX);
        delay
    }

    /// After a successful connection the next failure starts short again.
    pub(crate) fn reset(&mut self) {
        self.base = RECONNECT_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn slots_follow_the_rate() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(7);
        let pacer = Pacer::new(1000.0);
        assert_eq!(pacer.claim(t0), t0);
        // The schedule started at the first claim, whoever claims next.
        assert_eq!(pacer.claim(later), t0 + Duration::from_millis(1));
        for _ in 0..998 {
            pacer.claim(later);
        }
        assert_eq!(pacer.claim(later), t0 + Duration::from_secs(1));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(SmallRng::seed_from_u64(1));
        let mut base = RECONNECT_MIN;
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(delay >= base / 2 && delay <= base, "{delay:?} vs {base:?}");
            base = (base * 2).min(RECONNECT_MAX);
        }
        assert!(backoff.next_delay() >= RECONNECT_MAX / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= RECONNECT_MIN);
    }
}
