//! Rate limit for a repeating WARN (a shard's dead letters): at most one per period,
//! counting those held back, so a junk flood cannot flood the log.

use std::time::{Duration, Instant};

/// At most one WARN per `every`; the time is passed in.
pub(crate) struct WarnLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(how many were held back since the last WARN)` if one may be logged at
    /// `now`; `None` (and counted) if not.
    pub(crate) fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warn_per_window_with_the_count_held_back() {
        let start = Instant::now();
        let mut limit = WarnLimit::new(Duration::from_secs(1));
        assert_eq!(limit.admit(start), Some(0));
        for ms in [1, 10, 500, 999] {
            assert_eq!(limit.admit(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(limit.admit(start + Duration::from_millis(1_000)), Some(4));
        assert_eq!(limit.admit(start + Duration::from_millis(1_001)), None);
        assert_eq!(limit.admit(start + Duration::from_secs(5)), Some(1));
        assert_eq!(limit.admit(start + Duration::from_secs(7)), Some(0));
    }
}
