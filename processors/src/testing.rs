//! Helpers for the unit tests of this crate.

use meterflow_model::time::DAY_MS;
use meterflow_model::{
    MeterBatch, MeterKey, MeterState, ProcessorsConfig, Reading, SealedBatch, StoredReading,
};

use crate::{ProcessorChain, TenantDirectory, usage, vee};

/// A UTC midnight (2024-10-04) far from any edge.
pub(crate) const DAY0: i64 = 20_000 * DAY_MS;

pub(crate) fn key(meter: &str) -> MeterKey {
    MeterKey::new("demo".try_into().unwrap(), meter.try_into().unwrap())
}

pub(crate) fn stored(ts: i64, reg: u64) -> StoredReading {
    StoredReading::actual(Reading::register(ts, reg), 1, ts)
}

pub(crate) fn meter_batch(
    meter: &str,
    state: MeterState,
    readings: Vec<StoredReading>,
) -> MeterBatch {
    MeterBatch {
        replaced: Vec::new(),
        key: key(meter),
        sent_readings: readings.len() as u32,
        readings,
        state,
        messages: 1,
        duplicates: 0,
        first_received_at: None,
        statuses: Vec::new(),
        orders: Vec::new(),
    }
}

pub(crate) fn batch_of(state: MeterState, readings: Vec<StoredReading>) -> SealedBatch {
    SealedBatch {
        meters: vec![meter_batch("m1", state, readings)],
        ..SealedBatch::default()
    }
}

pub(crate) fn directory() -> std::sync::Arc<TenantDirectory> {
    TenantDirectory::resolve(&ProcessorsConfig::default()).unwrap()
}

pub(crate) fn chain_vee_usage() -> ProcessorChain {
    ProcessorChain::new(vec![
        Box::new(vee::VeeProcessor::new(directory())),
        Box::new(usage::UsageProcessor::with_directory(directory())),
    ])
}
