//! Which `reading_days` index rows this process wrote lately, so that a meter's next
//! batches within the same UTC day do not upsert the same index row again: with one
//! message a batch, that upsert was one of the three statements a message cost the
//! server (the readings batch, the index row, the state row).
//!
//! Skipping a rewrite must not let the index row expire before a reading it points
//! to. Every reading is written with the readings TTL counted from its write; the
//! index row is written with that TTL plus [`DayIndexTtl::refresh`], and rewritten by
//! the first write of its day that comes `refresh` or more after the last one this
//! process made. So a reading written while the rewrite was skipped expires no later
//! than the index row. Where the readings TTL leaves no room under CQL's 20-year
//! limit, `refresh` is zero and every write upserts the index, as before.
//!
//! What this process remembers is a hint, not a record: another processor (after an
//! ownership change), a restart or a full memory each only cost an upsert more.
//! Memory is bounded: at most [`CAPACITY`] meters; when it is full, the
//! meters with nothing fresh are dropped, and if none is, all of them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meterflow_model::MeterKey;

/// How long an index row written by this process stands for the later writes of its
/// day, when the readings TTL leaves room for it.
pub(crate) const REFRESH: Duration = Duration::from_secs(3_600);

/// Meters remembered at most: about 20 MB (~200 bytes a meter with its days).
pub(crate) const CAPACITY: usize = 100_000;

/// CQL's largest TTL, 20 years in seconds.
const CQL_MAX_TTL_SECS: i32 = 630_720_000;

/// The TTL of a `reading_days` row and how long its write stands, for a readings
/// TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DayIndexTtl {
    pub(crate) ttl_secs: i32,
    pub(crate) refresh: Duration,
}

impl DayIndexTtl {
    pub(crate) fn for_readings(readings_ttl_secs: i32) -> Self {
        let room = CQL_MAX_TTL_SECS.saturating_sub(readings_ttl_secs).max(0);
        let slack = i32::try_from(REFRESH.as_secs()).map_or(room, |refresh| refresh.min(room));
        Self {
            ttl_secs: readings_ttl_secs.saturating_add(slack),
            refresh: Duration::from_secs(u64::try_from(slack).unwrap_or(0)),
        }
    }
}

/// The (meter, UTC day) index rows written lately, with when.
#[derive(Debug)]
pub(crate) struct RecentDays {
    written: HashMap<MeterKey, Vec<(i64, Instant)>>,
    refresh: Duration,
    capacity: usize,
}

impl RecentDays {
    pub(crate) fn new(refresh: Duration, capacity: usize) -> Self {
        Self {
            written: HashMap::new(),
            refresh,
            capacity,
        }
    }

    /// Whether a write of `key`'s readings on `day` at `now` must upsert the day's
    /// index row.
    pub(crate) fn needs_write(&self, key: &MeterKey, day: i64, now: Instant) -> bool {
        !self.written.get(key).is_some_and(|days| {
            days.iter()
                .any(|&(written_day, at)| written_day == day && fresh(at, now, self.refresh))
        })
    }

    /// Records that `key`'s index rows of `days` were written (acknowledged) at `now`.
    pub(crate) fn wrote(&mut self, key: &MeterKey, days: &[i64], now: Instant) {
        if days.is_empty() || self.refresh.is_zero() {
            return;
        }
        if !self.written.contains_key(key) && self.written.len() >= self.capacity {
            self.make_room(now);
        }
        let refresh = self.refresh;
        let entry = self.written.entry(key.clone()).or_default();
        entry.retain(|&(day, at)| !days.contains(&day) && fresh(at, now, refresh));
        entry.extend(days.iter().map(|&day| (day, now)));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.written.len()
    }

    fn make_room(&mut self, now: Instant) {
        let refresh = self.refresh;
        self.written
            .retain(|_, days| days.iter().any(|&(_, at)| fresh(at, now, refresh)));
        if self.written.len() >= self.capacity {
            self.written.clear();
        }
    }
}

/// Whether a write made `at` still stands at `now`.
fn fresh(at: Instant, now: Instant, refresh: Duration) -> bool {
    now.saturating_duration_since(at) < refresh
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(meter: &str) -> MeterKey {
        MeterKey::new("acme".try_into().unwrap(), meter.try_into().unwrap())
    }

    #[test]
    fn a_day_is_indexed_again_only_once_its_write_is_older_than_the_refresh() {
        let start = Instant::now();
        let mut recent = RecentDays::new(Duration::from_secs(60), 10);
        let m1 = key("m1");
        assert!(recent.needs_write(&m1, 5, start));
        recent.wrote(&m1, &[5], start);
        assert!(!recent.needs_write(&m1, 5, start + Duration::from_secs(59)));
        assert!(recent.needs_write(&m1, 6, start), "another day");
        assert!(recent.needs_write(&key("m2"), 5, start), "another meter");
        assert!(recent.needs_write(&m1, 5, start + Duration::from_secs(60)));
        recent.wrote(&m1, &[5, 6], start + Duration::from_secs(60));
        assert!(!recent.needs_write(&m1, 5, start + Duration::from_secs(61)));
        assert!(!recent.needs_write(&m1, 6, start + Duration::from_secs(61)));
    }

    #[test]
    fn a_zero_refresh_indexes_every_write_and_remembers_nothing() {
        let now = Instant::now();
        let mut recent = RecentDays::new(Duration::ZERO, 10);
        recent.wrote(&key("m1"), &[5], now);
        assert!(recent.needs_write(&key("m1"), 5, now));
        assert_eq!(recent.len(), 0);
    }

    proptest! {
        /// Against a model that remembers every write: a write is skipped only when
        /// the same meter's same day was written less than `refresh` before, and the
        /// memory never holds more than its capacity.
        #[test]
        fn a_write_is_skipped_only_within_the_refresh_of_an_earlier_one(
            steps in prop::collection::vec((0..6usize, 0..3i64, 0..40u64, any::<bool>()), 1..200),
            capacity in 1..5usize,
        ) {
            let refresh = Duration::from_secs(30);
            let mut recent = RecentDays::new(refresh, capacity);
            let mut last_written: HashMap<(usize, i64), Instant> = HashMap::new();
            let mut now = Instant::now();
            for (meter, day, advance, write) in steps {
                now += Duration::from_secs(advance);
                let skip = !recent.needs_write(&key(&format!("m{meter}")), day, now);
                if skip {
                    let at = last_written.get(&(meter, day));
                    prop_assert!(at.is_some_and(|&at| now - at < refresh));
                }
                if write && !skip {
                    recent.wrote(&key(&format!("m{meter}")), &[day], now);
                    last_written.insert((meter, day), now);
                }
                prop_assert!(recent.len() <= capacity);
            }
        }
    }

    #[test]
    fn memory_stays_within_its_capacity_dropping_stale_meters_first() {
        let start = Instant::now();
        let refresh = Duration::from_secs(60);
        let mut recent = RecentDays::new(refresh, 3);
        recent.wrote(&key("old"), &[1], start);
        let later = start + refresh;
        for meter in ["a", "b"] {
            recent.wrote(&key(meter), &[1], later);
        }
        recent.wrote(&key("c"), &[1], later);
        assert_eq!(recent.len(), 3, "the stale meter made room");
        assert!(!recent.needs_write(&key("a"), 1, later));
        for n in 0..10 {
            recent.wrote(&key(&format!("n{n}")), &[1], later);
            assert!(recent.len() <= 3);
        }
    }

    #[test]
    fn the_index_outlives_its_readings_by_the_refresh_within_cqls_limit() {
        let year = 365 * 86_400;
        assert_eq!(
            DayIndexTtl::for_readings(400 * 86_400),
            DayIndexTtl {
                ttl_secs: 400 * 86_400 + 3_600,
                refresh: REFRESH,
            }
        );
        let near_limit = DayIndexTtl::for_readings(CQL_MAX_TTL_SECS - 60);
        assert_eq!(near_limit.ttl_secs, CQL_MAX_TTL_SECS);
        assert_eq!(near_limit.refresh, Duration::from_secs(60));
        let at_limit = DayIndexTtl::for_readings(20 * year);
        assert_eq!(at_limit.ttl_secs, CQL_MAX_TTL_SECS);
        assert_eq!(at_limit.refresh, Duration::ZERO);
    }
}
