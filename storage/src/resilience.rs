//! Retry pacing and a circuit breaker for the network backends (ScyllaDB store, Redis
//! cache), DESIGN §6.6: "storage and cache calls retry with exponential backoff and
//! jitter behind a circuit breaker".
//!
//! Who retries what — exactly one layer per call path, so attempts never multiply:
//!
//! | call | retried by | how long |
//! |---|---|---|
//! | store group commit (readings, states, outputs) | the sink (`ingest/src/sink.rs`), the whole commit | forever, transient errors only: acks wait, backpressure builds |
//! | connecting to ScyllaDB at start | `ingest/src/backends.rs`, the whole open | forever, transient errors only |
//! | store reads (HTTP, hydration) | nobody here: HTTP answers 503, a shard waits for its meter's state | — |
//! | one ScyllaDB statement | nobody: the store sends each once and the driver's retry policy is off | — |
//! | one Redis call (apply, reads) | the cache, the whole call, inside [`guarded`] | `cache.redis.retry.max_attempts` |
//!
//! - [`RetryConfig::backoff`] turns the configured values into backon's
//!   [`ExponentialBuilder`]: exponential growth, capped, with "equal jitter" (half of
//!   each delay fixed, half random) so that many writers that failed together do not
//!   retry together, yet every retry still waits. The sink's, start-up's and the
//!   Redis cache's retries are backon retries built from it.
//! - Only errors that say the backend is unreachable or overloaded are retried
//!   ([`StoreError::is_transient`](crate::StoreError::is_transient), the Redis
//!   cache's classification); a rejected statement or an unreadable row is an answer:
//!   it is not retried, and it does not open the breaker.
//! - [`CircuitBreaker`] stops calling a backend that keeps failing. It is *closed*
//!   (calls pass) until `failure_threshold` consecutive operations failed, then *open*
//!   (calls fail at once, without touching the network) for `cool_down_ms`, then
//!   *half-open*: exactly one probe call passes; its success closes the breaker, its
//!   failure opens it for another cool-down. A caller asks for a [`BreakerPermit`] and
//!   reports the outcome on it; a permit dropped without a verdict (a cancelled call)
//!   releases the probe slot without judging the backend.
//! - [`guarded`] combines both for a whole operation: one permit, retries inside it,
//!   one verdict (the Redis cache). The ScyllaDB store takes a permit per operation
//!   and does not retry: its caller does.
//!
//! Time: the breaker reads [`Instant::now`], and has `*_at` variants that take the
//! instant, so unit tests drive it without sleeping; retries take their sleep function
//! from the caller (tokio's, a thread's, or a test's that only records).

use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use serde::{Deserialize, Serialize};

/// Growth factor between consecutive backoff delays: the usual doubling.
const BACKOFF_MULTIPLIER: f32 = 2.0;

/// How often one operation is tried and how long to wait between tries (the keys
/// `store.scylla.retry` and `cache.redis.retry`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries per operation, the first one included (1 = no retry). Default 4: with the
    /// default delays a transient failure (a node restarting, a leader change, a
    /// dropped connection) gets ~0.2-0.35 s to heal before it is reported: a Redis
    /// call then fails to its caller; the sink, which never gives a group commit up,
    /// reports the store as failing (`/readyz` 503, an error log) and keeps retrying.
    pub max_attempts: u32,
    /// Delay before the first retry, ms (default 50: long enough for a reconnect on a
    /// LAN, short enough not to be felt in a batch's latency).
    pub initial_backoff_ms: u64,
    /// Cap on any one delay, ms (default 2000: beyond that the breaker, not the
    /// retry loop, should be what holds callers back).
    pub max_backoff_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff_ms: 50,
            max_backoff_ms: 2_000,
        }
    }
}

impl RetryConfig {
    /// backon's backoff for these values: retry `n` (0 = the first) waits a delay
    /// drawn uniformly from `[d/2, d]`, `d = min(max_backoff, initial_backoff × 2^n)`
    /// ("equal jitter": half fixed, half random), at most `max_attempts - 1` times.
    ///
    /// backon's jitter adds a uniform fraction of a delay to it (`d → [d, 2d)`), so the
    /// builder starts from half the configured delays. A caller that must not give up
    /// (the sink) lifts the limit with `.without_max_times()`.
    pub fn backoff(&self) -> ExponentialBuilder {
        let initial = self.initial_backoff_ms.max(1);
        let max = self.max_backoff_ms.max(initial);
        ExponentialBuilder::new()
            .with_jitter()
            .with_factor(BACKOFF_MULTIPLIER)
            .with_min_delay(Duration::from_millis(initial) / 2)
            .with_max_delay(Duration::from_millis(max) / 2)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
    }

    /// Every problem with the values, each phrased as what to change.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_attempts == 0 {
            problems.push(format!("{prefix}.max_attempts must be at least 1"));
        }
        if self.initial_backoff_ms == 0 {
            problems.push(format!("{prefix}.initial_backoff_ms must be at least 1"));
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            problems.push(format!(
                "{prefix}.max_backoff_ms ({}) must not be below initial_backoff_ms ({})",
                self.max_backoff_ms, self.initial_backoff_ms
            ));
        }
        problems
    }
}

/// When the breaker opens and how long it stays open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failed operations that open the breaker: for Redis a call after its
    /// retries; for the ScyllaDB store one attempt (its caller retries), so with the
    /// sink's default delays five failures take ~0.4-0.75 s. Default 5: one or two
    /// failures happen in healthy clusters (a node restart); five in a row mean the
    /// backend is down.
    pub failure_threshold: u32,
    /// How long the breaker stays open before one probe is let through, ms. Default
    /// 5000: a restarting node or a failed-over Redis is usually back within seconds,
    /// and one probe every 5 s costs a down backend nothing.
    pub cool_down_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down_ms: 5_000,
        }
    }
}

impl BreakerConfig {
    /// Every problem with the values, each phrased as what to change.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.failure_threshold == 0 {
            problems.push(format!("{prefix}.failure_threshold must be at least 1"));
        }
        if self.cool_down_ms == 0 {
            problems.push(format!("{prefix}.cool_down_ms must be at least 1"));
        }
        problems
    }
}

/// What the breaker does with the next call; exported as a metric by the lead's
/// metrics module (see [`BreakerState::as_gauge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls fail at once until the cool-down ends.
    Open,
    /// The cool-down ended: one probe call passes (or is in flight).
    HalfOpen,
}

impl BreakerState {
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// 0 closed, 1 open, 2 half-open: the value of a `*_breaker_state` gauge.
    pub const fn as_gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call refused by an open breaker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "circuit breaker `{name}` is open after {failures} consecutive failures; next probe in {}ms",
    retry_in.as_millis()
)]
pub struct BreakerOpen {
    pub name: &'static str,
    pub failures: u32,
    /// Time left until a probe is let through (zero while another probe is in flight).
    pub retry_in: Duration,
}

#[derive(Debug)]
enum Phase {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
        failures: u32,
    },
    HalfOpen {
        probe_in_flight: bool,
        failures: u32,
    },
}

/// A circuit breaker shared by every call to one backend. Cheap: one uncontended
/// mutex per operation (operations are batches, not rows).
#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    config: BreakerConfig,
    phase: Mutex<Phase>,
}

impl CircuitBreaker {
    /// `name` appears in errors and logs (`"scylla"`, `"redis"`).
    pub fn new(name: &'static str, config: BreakerConfig) -> Self {
        Self {
            name,
            config,
            phase: Mutex::new(Phase::Closed {
                consecutive_failures: 0,
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state, for metrics and `/readyz`.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to make one call now.
    pub fn acquire(&self) -> Result<BreakerPermit<'_>, BreakerOpen> {
        self.acquire_at(Instant::now())
    }

    /// [`Self::acquire`] at a given instant.
    pub fn acquire_at(&self, now: Instant) -> Result<BreakerPermit<'_>, BreakerOpen> {
        let mut phase = self.lock();
        let probe = match *phase {
            Phase::Closed { .. } => false,
            Phase::Open { until, failures } if now >= until => {
                tracing::info!(breaker = self.name, "circuit half-open: probing");
                *phase = Phase::HalfOpen {
                    probe_in_flight: true,
                    failures,
                };
                true
            }
            Phase::Open { until, failures } => {
                return Err(self.refusal(failures, until.saturating_duration_since(now)));
            }
            Phase::HalfOpen {
                probe_in_flight: true,
                failures,
            } => return Err(self.refusal(failures, Duration::ZERO)),
            Phase::HalfOpen {
                probe_in_flight: false,
                failures,
            } => {
                *phase = Phase::HalfOpen {
                    probe_in_flight: true,
                    failures,
                };
                true
            }
        };
        Ok(BreakerPermit {
            breaker: self,
            probe,
            settled: false,
        })
    }

    fn refusal(&self, failures: u32, retry_in: Duration) -> BreakerOpen {
        BreakerOpen {
            name: self.name,
            failures,
            retry_in,
        }
    }

    fn record_success(&self) {
        let mut phase = self.lock();
        if !matches!(*phase, Phase::Closed { .. }) {
            tracing::info!(breaker = self.name, "circuit closed: backend answers again");
        }
        *phase = Phase::Closed {
            consecutive_failures: 0,
        };
    }

    fn record_failure(&self, now: Instant) {
        let cool_down = Duration::from_millis(self.config.cool_down_ms);
        let mut phase = self.lock();
        *phase = match *phase {
            Phase::Closed {
                consecutive_failures,
            } => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= self.config.failure_threshold {
                    tracing::warn!(
                        breaker = self.name,
                        failures,
                        cool_down_ms = self.config.cool_down_ms,
                        "circuit opened: calls fail fast until the cool-down ends"
                    );
                    Phase::Open {
                        until: now + cool_down,
                        failures,
                    }
                } else {
                    Phase::Closed {
                        consecutive_failures: failures,
                    }
                }
            }
            Phase::HalfOpen { failures, .. } => {
                tracing::warn!(breaker = self.name, "circuit re-opened: the probe failed");
                Phase::Open {
                    until: now + cool_down,
                    failures: failures.saturating_add(1),
                }
            }
            // A call admitted before the breaker opened failed late: the breaker is
            // already open, keep its cool-down.
            Phase::Open { until, failures } => Phase::Open {
                until,
                failures: failures.saturating_add(1),
            },
        };
    }

    fn release_probe(&self) {
        let mut phase = self.lock();
        if let Phase::HalfOpen { failures, .. } = *phase {
            *phase = Phase::HalfOpen {
                probe_in_flight: false,
                failures,
            };
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        // The phase is always valid, even if a thread panicked while holding the lock.
        self.phase
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Leave to make one call; report how it went with [`Self::succeeded`] or
/// [`Self::failed`]. Dropping it unsettled (a cancelled call) judges nothing.
#[must_use = "report the outcome with succeeded() or failed()"]
#[derive(Debug)]
pub struct BreakerPermit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl BreakerPermit<'_> {
    /// The backend answered (even if the answer was an error that is not about
    /// availability).
    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.record_success();
    }

    /// The backend was unreachable or overloaded (after the retries the operation
    /// makes, if any).
    pub fn failed(self) {
        self.failed_at(Instant::now());
    }

    /// [`Self::failed`] at a given instant.
    pub fn failed_at(mut self, now: Instant) {
        self.settled = true;
        self.breaker.record_failure(now);
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.release_probe();
        }
    }
}

/// Why a [`guarded`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum Guarded<E> {
    /// The breaker refused the call; nothing was sent.
    #[error(transparent)]
    Open(BreakerOpen),
    /// The call ran (with retries) and failed.
    #[error(transparent)]
    Failed(E),
}

/// One idempotent operation behind `breaker`, retried per `config` ([`RetryConfig::backoff`])
/// while `is_transient` says its error may go away, sleeping on tokio's timer. A
/// transient final error counts as a breaker failure, anything else (success or a
/// non-transient error) as the backend answering.
pub async fn guarded<T, E, Fut>(
    breaker: &CircuitBreaker,
    config: &RetryConfig,
    is_transient: impl Fn(&E) -> bool,
    op: impl FnMut() -> Fut,
) -> Result<T, Guarded<E>>
where
    Fut: Future<Output = Result<T, E>>,
    E: fmt::Display,
{
    let permit = breaker.acquire().map_err(Guarded::Open)?;
    let attempt = op
        .retry(config.backoff())
        .sleep(tokio::time::sleep)
        .when(&is_transient)
        .notify(|error, delay| {
            tracing::debug!(
                breaker = breaker.name(),
                delay_ms = delay.as_millis() as u64,
                "transient error, retrying: {error}"
            );
        });
    match attempt.await {
        Ok(value) => {
            permit.succeeded();
            Ok(value)
        }
        Err(error) => {
            if is_transient(&error) {
                permit.failed();
            } else {
                permit.succeeded();
            }
            Err(Guarded::Failed(error))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use backon::{BackoffBuilder, BlockingRetryable};

    use super::*;
    use crate::StoreError;

    fn breaker(threshold: u32, cool_down_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            BreakerConfig {
                failure_threshold: threshold,
                cool_down_ms,
            },
        )
    }

    /// The delays `config` sleeps, retry after retry (seeded jitter).
    fn delays(config: &RetryConfig, seed: u64) -> Vec<Duration> {
        config.backoff().with_jitter_seed(seed).build().collect()
    }

    #[test]
    fn backoff_grows_is_capped_and_keeps_half_fixed() {
        let config = RetryConfig {
            max_attempts: 31,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
        };
        for seed in 0..200 {
            let delays = delays(&config, seed);
            assert_eq!(delays.len(), 30, "max_attempts - 1 retries");
            let ms = |retry: usize| delays[retry].as_millis();
            assert!((50..=100).contains(&ms(0)), "{}", ms(0));
            assert!((100..=200).contains(&ms(1)), "{}", ms(1));
            assert!((500..=1_000).contains(&ms(29)), "{}", ms(29));
        }
        // Without a limit (the sink) the delays stay capped forever.
        let mut endless = config.backoff().without_max_times().build();
        assert!(endless.nth(10_000).unwrap() <= Duration::from_millis(1_000));
    }

    #[test]
    fn backoff_is_jittered() {
        let config = RetryConfig {
            max_attempts: 5,
            ..RetryConfig::default()
        };
        let fourth: std::collections::HashSet<_> =
            (0..50).map(|seed| delays(&config, seed)[3]).collect();
        assert!(fourth.len() > 10, "{fourth:?}");
    }

    #[test]
    fn one_attempt_means_no_retry() {
        let config = RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        };
        assert!(delays(&config, 1).is_empty());
    }

    /// Runs `op` as the sink does (blocking, transient store errors only), with a
    /// sleeper that records instead of sleeping; returns the outcome and the sleeps.
    fn retried<T>(
        config: &RetryConfig,
        op: impl FnMut() -> Result<T, StoreError>,
    ) -> (Result<T, StoreError>, Vec<Duration>) {
        let slept = std::sync::Arc::new(Mutex::new(Vec::new()));
        let record = slept.clone();
        let result = BlockingRetryable::retry(op, config.backoff())
            .sleep(move |delay| record.lock().unwrap().push(delay))
            .when(StoreError::is_transient)
            .call();
        let slept = slept.lock().unwrap().clone();
        (result, slept)
    }

    #[test]
    fn only_transient_errors_are_retried_up_to_the_limit() {
        let config = RetryConfig {
            max_attempts: 3,
            initial_backoff_ms: 10,
            max_backoff_ms: 40,
        };
        let calls = AtomicU32::new(0);
        let (result, slept) = retried(&config, || {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(StoreError::Config("rejected".into()))
        });
        assert!(matches!(result, Err(StoreError::Config(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a rejection is an answer");
        assert!(slept.is_empty());

        calls.store(0, Ordering::SeqCst);
        let (result, slept) = retried(&config, || {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(StoreError::Unavailable("down".into()))
        });
        assert!(matches!(result, Err(StoreError::Unavailable(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 3, "max_attempts tries");
        assert_eq!(slept.len(), 2);
        assert!(slept[0] >= Duration::from_millis(5) && slept[0] <= Duration::from_millis(10));
        assert!(slept[1] >= Duration::from_millis(10) && slept[1] <= Duration::from_millis(20));

        calls.store(0, Ordering::SeqCst);
        let (result, _) = retried(&config, || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n < 3 {
                Err(StoreError::Unavailable("flaky".into()))
            } else {
                Ok(n)
            }
        });
        assert_eq!(result.unwrap(), 3, "a transient error that heals in time");

        // A transient error after a permanent one is never reached: the first
        // non-transient error ends the retries.
        calls.store(0, Ordering::SeqCst);
        let (result, _) = retried(&config, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(if n == 0 {
                StoreError::Unavailable("blip".into())
            } else {
                StoreError::Corrupt("bad row".into())
            })
        });
        assert!(matches!(result, Err(StoreError::Corrupt(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_only() {
        let b = breaker(3, 1_000);
        let t0 = Instant::now();
        b.acquire_at(t0).unwrap().failed_at(t0);
        b.acquire_at(t0).unwrap().failed_at(t0);
        // A success in between resets the count.
        b.acquire_at(t0).unwrap().succeeded();
        b.acquire_at(t0).unwrap().failed_at(t0);
        b.acquire_at(t0).unwrap().failed_at(t0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.acquire_at(t0).unwrap().failed_at(t0);
        assert_eq!(b.state(), BreakerState::Open);
        let refused = b.acquire_at(t0).unwrap_err();
        assert_eq!(refused.failures, 3);
        assert_eq!(refused.retry_in, Duration::from_millis(1_000));
    }

    #[test]
    fn half_open_lets_one_probe_through() {
        let b = breaker(1, 1_000);
        let t0 = Instant::now();
        b.acquire_at(t0).unwrap().failed_at(t0);
        let later = t0 + Duration::from_millis(1_000);
        let probe = b.acquire_at(later).unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.acquire_at(later).is_err(), "second caller while probing");
        probe.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.acquire_at(later).is_ok());
    }

    #[test]
    fn failed_probe_reopens_for_another_cool_down() {
        let b = breaker(1, 1_000);
        let t0 = Instant::now();
        b.acquire_at(t0).unwrap().failed_at(t0);
        let t1 = t0 + Duration::from_millis(1_500);
        b.acquire_at(t1).unwrap().failed_at(t1);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.acquire_at(t1 + Duration::from_millis(999)).is_err());
        assert!(b.acquire_at(t1 + Duration::from_millis(1_000)).is_ok());
    }

    #[test]
    fn a_dropped_probe_frees_the_slot() {
        let b = breaker(1, 10);
        let t0 = Instant::now();
        b.acquire_at(t0).unwrap().failed_at(t0);
        let t1 = t0 + Duration::from_millis(10);
        drop(b.acquire_at(t1).unwrap());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.acquire_at(t1).is_ok(), "the next caller probes");
    }

    #[tokio::test(start_paused = true)]
    async fn guarded_retries_inside_one_permit() {
        let b = breaker(1, 60_000);
        let config = RetryConfig {
            max_attempts: 3,
            initial_backoff_ms: 10,
            max_backoff_ms: 10,
        };
        let calls = AtomicU32::new(0);
        let r: Result<u32, _> = guarded(
            &b,
            &config,
            |e: &&str| *e == "down",
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 3 { Err("down") } else { Ok(n) }
            },
        )
        .await;
        assert!(matches!(r, Ok(3)));
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "failed attempts inside one operation are not breaker failures"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn guarded_counts_only_transient_failures() {
        let b = breaker(2, 60_000);
        let config = RetryConfig {
            max_attempts: 1,
            ..RetryConfig::default()
        };
        let transient = |e: &&str| *e == "down";
        for _ in 0..5 {
            let r: Result<(), _> =
                guarded(&b, &config, transient, || async { Err("rejected") }).await;
            assert!(matches!(r, Err(Guarded::Failed("rejected"))));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        for _ in 0..2 {
            let r: Result<(), _> = guarded(&b, &config, transient, || async { Err("down") }).await;
            assert!(matches!(r, Err(Guarded::Failed("down"))));
        }
        assert_eq!(b.state(), BreakerState::Open);
        let r: Result<(), _> = guarded(&b, &config, transient, || async { Ok(()) }).await;
        assert!(matches!(r, Err(Guarded::Open(_))));
    }
}
