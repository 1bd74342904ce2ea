//! A shard: every meter hashed to it — their state, their dedupe window, their open
//! batch — owned by one OS thread, so nothing here takes a lock (DESIGN §2).
//!
//! Split the way rumqtt's router and mini-redis's frame parser are:
//! - [`core::ShardCore`] — the shard's logic as a state machine without I/O: it takes
//!   an arrival or a tick, with the time passed in, and answers with what to do next
//!   (read a meter's state, seal the batch); sealing returns the processed batch. Unit
//!   tests drive it directly and deterministically.
//! - [`runner::ShardWorker`] — the thread around it: it owns the queue, the clock,
//!   the store reads that hydrate a meter, the [`Completion`]s of the messages it
//!   took, and the hand-off of sealed batches to the sink.
//!
//! Invariant: a meter's state in a sealed batch reflects exactly the messages in that
//! batch and earlier ones of this shard; the sink makes batches of one shard durable in
//! order, so the watermark it acks is never ahead of the store.

pub mod core;
#[cfg(test)]
mod core_tests;
mod held;
mod runner;
mod warn_limit;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meterflow_model::{Limits, Outputs, SealedBatch};

use crate::dead_letter_limit::DeadLetterRate;
use crate::endpoint::outbox::Completion;

pub use self::runner::ShardWorker;

/// A sealed batch with what the processors made of it, on its way to the sink.
pub struct SinkItem {
    pub batch: SealedBatch,
    pub outputs: Outputs,
    /// When the oldest message of the batch was received (monotonic).
    pub oldest: Option<Instant>,
    /// One per message the batch took (stored, dead-lettered or duplicate): answered
    /// by the sink once the batch is durable.
    pub completions: Vec<Completion>,
}

/// Settings a shard needs.
#[derive(Clone)]
pub struct ShardSettings {
    pub limits: Limits,
    pub batch_readings: usize,
    pub linger: Duration,
    pub resend_window_ms: i64,
    /// How often the processors' timer sweep runs.
    pub sweep_interval: Duration,
    /// How many dead letters one sender may have stored.
    pub dead_letter_rate: DeadLetterRate,
    /// Meters the shard holds in memory at most; the rest wait in the store
    /// ([`held`]).
    pub held_meters: usize,
}

/// The sink's watermark per shard: the number of the shard's last durable batch
/// ([`SealedBatch::number`]). A shard lets a meter rest only once its last batch is
/// durable ([`held`]).
#[derive(Clone)]
pub struct DurableBatches(Arc<[AtomicU64]>);

impl DurableBatches {
    pub fn new(shards: usize) -> Self {
        Self((0..shards).map(|_| AtomicU64::new(0)).collect())
    }

    /// The shard's batch `number` is durable (and every earlier one: the sink makes a
    /// shard's batches durable in order).
    pub fn advance(&self, shard: usize, number: u64) {
        if let Some(durable) = self.0.get(shard) {
            durable.fetch_max(number, Ordering::Release);
        }
    }

    pub fn of(&self, shard: usize) -> u64 {
        self.0
            .get(shard)
            .map_or(0, |durable| durable.load(Ordering::Acquire))
    }
}
