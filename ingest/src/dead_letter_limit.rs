//! Per-source rate limit for dead letters: one token bucket per sender identity (the
//! tenant and meter its session authenticated as), so one misbehaving meter cannot
//! fill the store with junk. Pure: time comes in as a value.
//!
//! A bucket holds at most `burst` tokens and gains `refill_per_s` a second; a dead
//! letter is stored when its source's bucket has a whole token, and counted as dropped
//! otherwise. Over any span of `t` seconds, a source therefore gets at most
//! `burst + refill_per_s × t` dead letters stored. Tokens are kept in thousandths and
//! refilled per whole millisecond (the unspent remainder carries over), so the bound
//! holds exactly.
//!
//! Memory is bounded: at most `capacity` buckets. A source seen for the first time
//! while the table is full first makes room by forgetting buckets that have refilled
//! completely (indistinguishable from a new one); if none has, its dead letter is
//! dropped — shed and counted, never an unbounded table (CONVENTIONS §7). That scan
//! runs at most once per [`PRUNE_EVERY`], so a flood of new sources costs one pass a
//! second, not one per message.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meterflow_model::MeterKey;

/// Sources each shard tracks at once. A bucket costs ~100 bytes (key, tokens, time),
/// so 4,096 per shard is ~400 KiB; a source's bucket is forgotten once it has
/// refilled, so only senders dead-lettered within the last `burst / refill_per_s`
/// seconds (20 s by default) hold one — thousands of junk senders at once before a
/// new one is shed.
pub const DEAD_LETTER_SOURCES: usize = 4_096;

/// Thousandths of a token per token.
const MILLI: u64 = 1_000;

/// Least time between two scans for full buckets when the table is full.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// The limit's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadLetterRate {
    /// Dead letters a source may have stored at once after a quiet spell.
    pub burst: u32,
    /// Dead letters per second a source may have stored in the long run.
    pub refill_per_s: u32,
    /// Sources tracked at once (per shard).
    pub capacity: usize,
}

/// Whether a dead letter may be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Store,
    /// Its source is over its rate.
    OverRate,
    /// Too many sources are over their rate to track one more.
    TableFull,
}

struct Bucket {
    milli_tokens: u64,
    /// When `milli_tokens` was last brought up to date (whole milliseconds only).
    at: Instant,
}

impl Bucket {
    /// Adds the tokens earned since `at`, up to `cap`.
    fn refill(&mut self, now: Instant, refill_per_s: u32, cap: u64) {
        let elapsed_ms = now.saturating_duration_since(self.at).as_millis();
        // `refill_per_s` tokens a second are `refill_per_s` thousandths a millisecond.
        let earned = elapsed_ms.saturating_mul(u128::from(refill_per_s));
        let earned = u64::try_from(earned).unwrap_or(u64::MAX);
        self.milli_tokens = self.milli_tokens.saturating_add(earned).min(cap);
        let whole = Duration::from_millis(u64::try_from(elapsed_ms).unwrap_or(u64::MAX));
        self.at = self.at.checked_add(whole).unwrap_or(now);
    }
}

/// The buckets of one shard's sources.
pub struct DeadLetterLimit {
    rate: DeadLetterRate,
    buckets: HashMap<MeterKey, Bucket>,
    last_prune: Option<Instant>,
}

impl DeadLetterLimit {
    pub fn new(rate: DeadLetterRate) -> Self {
        Self {
            rate,
            buckets: HashMap::new(),
            last_prune: None,
        }
    }

    fn cap(&self) -> u64 {
        u64::from(self.rate.burst) * MILLI
    }

    /// Whether a dead letter of `source` at `now` may be stored; takes a token if so.
    pub fn admit(&mut self, source: &MeterKey, now: Instant) -> Admit {
        let (cap, refill_per_s) = (self.cap(), self.rate.refill_per_s);
        if !self.buckets.contains_key(source) {
            if self.buckets.len() >= self.rate.capacity && !self.prune(now) {
                return Admit::TableFull;
            }
            self.buckets.insert(
                source.clone(),
                Bucket {
                    milli_tokens: cap,
                    at: now,
                },
            );
        }
        let bucket = self.buckets.get_mut(source).expect("inserted above");
        bucket.refill(now, refill_per_s, cap);
        if bucket.milli_tokens >= MILLI {
            bucket.milli_tokens -= MILLI;
            Admit::Store
        } else {
            Admit::OverRate
        }
    }

    /// Forgets the buckets that are full again at `now`; true if that made room. Scans
    /// at most once per [`PRUNE_EVERY`].
    fn prune(&mut self, now: Instant) -> bool {
        if self
            .last_prune
            .is_some_and(|last| now.saturating_duration_since(last) < PRUNE_EVERY)
        {
            return false;
        }
        self.last_prune = Some(now);
        let (cap, refill_per_s) = (self.cap(), self.rate.refill_per_s);
        self.buckets.retain(|_, bucket| {
            bucket.refill(now, refill_per_s, cap);
            bucket.milli_tokens < cap
        });
        self.buckets.len() < self.rate.capacity
    }

    /// Sources tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_model::{MeterId, TenantId};
    use proptest::prelude::*;

    fn source(meter: &str) -> MeterKey {
        MeterKey::new(
            TenantId::try_from("t1").unwrap(),
            MeterId::try_from(meter).unwrap(),
        )
    }

    fn rate(burst: u32, refill_per_s: u32, capacity: usize) -> DeadLetterRate {
        DeadLetterRate {
            burst,
            refill_per_s,
            capacity,
        }
    }

    #[test]
    fn a_burst_then_the_refill_rate() {
        let start = Instant::now();
        let mut limit = DeadLetterLimit::new(rate(3, 2, 16));
        let m1 = source("m1");
        for _ in 0..3 {
            assert_eq!(limit.admit(&m1, start), Admit::Store);
        }
        assert_eq!(limit.admit(&m1, start), Admit::OverRate);
        // Half a token after 250 ms, one after 500 ms.
        assert_eq!(
            limit.admit(&m1, start + Duration::from_millis(250)),
            Admit::OverRate
        );
        assert_eq!(
            limit.admit(&m1, start + Duration::from_millis(500)),
            Admit::Store
        );
        assert_eq!(
            limit.admit(&m1, start + Duration::from_millis(500)),
            Admit::OverRate
        );
        // Another source has its own bucket.
        assert_eq!(limit.admit(&source("m2"), start), Admit::Store);
        // A long quiet spell refills up to the burst, not beyond.
        let later = start + Duration::from_secs(3_600);
        for _ in 0..3 {
            assert_eq!(limit.admit(&m1, later), Admit::Store);
        }
        assert_eq!(limit.admit(&m1, later), Admit::OverRate);
    }

    #[test]
    fn sub_millisecond_time_is_not_lost() {
        // 1 token/s reached in steps of 0.4 ms: 2,500 steps make one second.
        let start = Instant::now();
        let mut limit = DeadLetterLimit::new(rate(1, 1, 4));
        let m1 = source("m1");
        assert_eq!(limit.admit(&m1, start), Admit::Store);
        let mut stored = 0;
        for step in 1..=2_500u64 {
            if limit.admit(&m1, start + Duration::from_micros(400 * step)) == Admit::Store {
                stored += 1;
            }
        }
        assert_eq!(stored, 1);
    }

    #[test]
    fn a_full_table_forgets_refilled_buckets_and_sheds_otherwise() {
        let start = Instant::now();
        let mut limit = DeadLetterLimit::new(rate(2, 1, 2));
        // m1 spends its burst; m2 spends one token.
        assert_eq!(limit.admit(&source("m1"), start), Admit::Store);
        assert_eq!(limit.admit(&source("m1"), start), Admit::Store);
        assert_eq!(limit.admit(&source("m2"), start), Admit::Store);
        // No bucket is full: a third source is shed.
        assert_eq!(limit.admit(&source("m3"), start), Admit::TableFull);
        assert_eq!(limit.tracked(), 2);
        // After 1.5 s m2 is full again (forgotten), m1 is not (kept).
        let later = start + Duration::from_millis(1_500);
        assert_eq!(limit.admit(&source("m3"), later), Admit::Store);
        assert_eq!(limit.tracked(), 2);
        // The table is full again and the last scan was under a second ago.
        let soon = later + Duration::from_millis(900);
        assert_eq!(limit.admit(&source("m4"), soon), Admit::TableFull);
    }

    proptest! {
        /// Whatever the timing, a source never gets more than
        /// `burst + refill_per_s × elapsed` dead letters stored, and always gets its
        /// burst at first.
        #[test]
        fn never_more_than_burst_plus_rate_times_elapsed(
            burst in 1u32..50,
            refill_per_s in 1u32..20,
            steps in proptest::collection::vec((0u64..3_000_000, 0usize..3), 1..400),
        ) {
            let start = Instant::now();
            let mut limit = DeadLetterLimit::new(rate(burst, refill_per_s, 2));
            let sources = [source("m0"), source("m1"), source("m2")];
            let mut stored = [0u64; 3];
            let mut elapsed_us = 0u64;
            for (step_us, who) in steps {
                elapsed_us += step_us;
                let now = start + Duration::from_micros(elapsed_us);
                if limit.admit(&sources[who], now) == Admit::Store {
                    stored[who] += 1;
                }
                let bound = u64::from(burst)
                    + u64::from(refill_per_s) * elapsed_us / 1_000_000;
                prop_assert!(stored[who] <= bound, "{} stored > bound {}", stored[who], bound);
                prop_assert!(limit.tracked() <= 2);
            }
        }

        #[test]
        fn the_burst_is_admitted_at_once(burst in 1u32..100) {
            let now = Instant::now();
            let mut limit = DeadLetterLimit::new(rate(burst, 1, 1));
            let m1 = source("m1");
            for _ in 0..burst {
                prop_assert_eq!(limit.admit(&m1, now), Admit::Store);
            }
            prop_assert_eq!(limit.admit(&m1, now), Admit::OverRate);
        }
    }
}
