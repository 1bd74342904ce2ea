//! Failures of the log that repeat by the thousand while it is away (every uplink or
//! event handed over fails the same way): each is counted in a metric, and only the
//! 1st, 2nd, 4th, 8th… is worth a log line, so an outage cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;

/// A failure counter that says which failures to log.
pub(super) struct Failures {
    counter: Counter,
    seen: AtomicU64,
}

impl Failures {
    pub(super) fn new(counter: Counter) -> Failures {
        Failures {
            counter,
            seen: AtomicU64::new(0),
        }
    }

    /// Counts one failure; `Some(total so far)` when it should be logged.
    pub(super) fn record(&self) -> Option<u64> {
        self.counter.increment(1);
        let total = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        total.is_power_of_two().then_some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_and_then_every_power_of_two_is_logged() {
        let failures = Failures::new(Counter::noop());
        let logged: Vec<u64> = (0..100).filter_map(|_| failures.record()).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64]);
    }
}
