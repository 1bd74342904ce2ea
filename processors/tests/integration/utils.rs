//! A small pipeline around the processor chain, as the shard worker drives it: each
//! meter's state goes into the batch, comes back after the chain and is kept.

use std::collections::{BTreeMap, HashMap};

use meterflow_model::codec::binary::{decode_record, encode_record};
use meterflow_model::{
    DeviceStatus, MeterBatch, MeterKey, MeterState, Outputs, ProcessorsConfig, Quality, Reading,
    RegisterOrder, SealedBatch, StoredReading,
};
use meterflow_processors::ProcessorChain;

pub(crate) const HOUR: i64 = 3_600_000;
pub(crate) const DAY: i64 = 24 * HOUR;

pub(crate) fn key(tenant: &str, meter: &str) -> MeterKey {
    MeterKey::new(tenant.try_into().unwrap(), meter.try_into().unwrap())
}

pub(crate) fn reading(ts: i64, reg: u64) -> StoredReading {
    StoredReading {
        reading: Reading {
            ts,
            reg,
            rev: 0,
            flow: 0,
            temp: None,
        },
        seq: 1,
        received_at: ts,
        quality: Quality::Actual,
        interval_l: None,
    }
}

/// One meter's message worth of input.
pub(crate) struct Input {
    pub(crate) key: MeterKey,
    pub(crate) readings: Vec<StoredReading>,
    pub(crate) status: Option<DeviceStatus>,
}

impl Input {
    pub(crate) fn readings(key: &MeterKey, readings: Vec<StoredReading>) -> Self {
        Self {
            key: key.clone(),
            readings,
            status: None,
        }
    }
}

pub(crate) struct Pipeline {
    pub(crate) chain: ProcessorChain,
    pub(crate) states: HashMap<MeterKey, MeterState>,
    /// Operators' orders going with the next batch (see [`Pipeline::order`]).
    orders: Vec<(MeterKey, RegisterOrder)>,
}

impl Pipeline {
    pub(crate) fn new(config: ProcessorsConfig) -> Self {
        Self {
            chain: ProcessorChain::for_tenants(config).unwrap(),
            states: HashMap::new(),
            orders: Vec::new(),
        }
    }

    /// Sends `order` about `key`'s register with the next batch, as a shard takes an
    /// operator's order into its open batch.
    pub(crate) fn order(&mut self, key: &MeterKey, order: RegisterOrder) {
        self.orders.push((key.clone(), order));
    }

    /// Seals `inputs` into one batch at `now_ms`, runs the chain, keeps the states.
    pub(crate) fn feed(&mut self, now_ms: i64, inputs: Vec<Input>) -> (SealedBatch, Outputs) {
        let mut meters: Vec<MeterBatch> = Vec::new();
        let orders = std::mem::take(&mut self.orders);
        let ordered = orders
            .iter()
            .map(|(key, _)| Input::readings(key, Vec::new()));
        for input in inputs.into_iter().chain(ordered) {
            match meters.iter_mut().find(|m| m.key == input.key) {
                Some(meter) => {
                    meter.readings.extend(input.readings);
                    meter.statuses.extend(input.status);
                }
                None => meters.push(MeterBatch {
                    replaced: Vec::new(),
                    state: self.states.get(&input.key).cloned().unwrap_or_default(),
                    key: input.key,
                    sent_readings: input.readings.len() as u32,
                    readings: input.readings,
                    messages: 1,
                    duplicates: 0,
                    first_received_at: None,
                    statuses: input.status.into_iter().collect(),
                    orders: Vec::new(),
                }),
            }
        }
        for (key, order) in orders {
            if let Some(meter) = meters.iter_mut().find(|m| m.key == key) {
                meter.orders.push(order);
            }
        }
        let mut batch = SealedBatch {
            meters,
            now_ms,
            ..SealedBatch::default()
        };
        let mut out = Outputs::default();
        self.chain.process(&mut batch, &mut out);
        for meter in &batch.meters {
            self.states.insert(meter.key.clone(), meter.state.clone());
        }
        (batch, out)
    }

    pub(crate) fn sweep(&mut self, now_ms: i64) -> Outputs {
        let mut out = Outputs::default();
        self.chain.sweep(now_ms, self.states.iter_mut(), &mut out);
        out
    }

    /// When the chain's sweep could next act on `meter` ([`ProcessorChain::sweep_due`]),
    /// checked against the sweep itself: a sweep a millisecond before changes nothing
    /// of the meter and raises nothing (its state is compared through its record).
    pub(crate) fn sweep_due(&mut self, meter: &MeterKey) -> Option<i64> {
        let state = &self.states[meter];
        let due = self.chain.sweep_due(meter, state)?;
        let before = encode_record(state);
        let out = self.sweep(due - 1);
        assert!(
            out.alerts.is_empty() && out.bills.is_empty(),
            "the sweep acted before {due}: {out:?}"
        );
        assert_eq!(
            encode_record(&self.states[meter]),
            before,
            "the sweep changed the state before {due}"
        );
        Some(due)
    }
}

/// Restarts `pipeline` as a process restart does for `meter` (when it has a state):
/// the state goes through its record codec (what it does not persist is lost), a
/// fresh chain takes over, and the meter is rehydrated from exactly the rows
/// `stored` so far after its settled point, as a shard reads them from the store
/// (ascending `ts`, one per `ts`, the last written). Returns the state before and
/// the rehydrated one, which the new pipeline holds, both less analytics' ledger
/// (the process's own; a rehydrated one is rebuilt from the rows).
pub(crate) fn restart(
    pipeline: &mut Pipeline,
    meter: &MeterKey,
    stored: &BTreeMap<i64, StoredReading>,
) -> Option<(MeterState, MeterState)> {
    restart_configured(pipeline, ProcessorsConfig::default(), meter, stored)
}

/// [`restart`] into a chain for `config`.
pub(crate) fn restart_configured(
    pipeline: &mut Pipeline,
    config: ProcessorsConfig,
    meter: &MeterKey,
    stored: &BTreeMap<i64, StoredReading>,
) -> Option<(MeterState, MeterState)> {
    let mut before = pipeline.states.get(meter).cloned()?;
    // Analytics' ledger lives in the process, as its windows do.
    before.analytics.ledger = Default::default();
    let mut state: MeterState = decode_record(&encode_record(&before)).unwrap();
    let after_settled = state.vee.settled_ts().map_or(i64::MIN, |ts| ts + 1);
    let rows = stored.range(after_settled..).map(|(_, row)| *row).collect();
    *pipeline = Pipeline::new(config);
    pipeline.chain.rehydrate(meter, &mut state, rows);
    pipeline.states.insert(meter.clone(), state.clone());
    state.analytics.ledger = Default::default();
    Some((before, state))
}
