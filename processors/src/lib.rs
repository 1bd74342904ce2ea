//! Processors: synchronous state machines fed sealed batches of readings (DESIGN §2,
//! CONVENTIONS §2). A processor does no I/O, spawns nothing and never reads a clock —
//! time arrives inside the batch (`SealedBatch::now_ms`) or as the sweep's `now_ms` —
//! so the same input always gives the same outputs and the runtime (`ingest`) owns
//! every thread and channel.
//!
//! Each shard worker owns one [`ProcessorChain`]; a processor's state is therefore per
//! shard, and a meter's state travels in its [`MeterBatch`] so that it is persisted with
//! the readings it reflects. Each processor owns one field of `MeterState`.
//!
//! The standard chain, in order:
//! 1. [`vee::VeeProcessor`] — quality, intervals, estimates, rollover and exchange;
//! 2. [`usage::UsageProcessor`] — the meter view (latest read, litres today);
//! 3. [`billing::BillingProcessor`] — running bills per tenant-local month;
//! 4. [`alerting::AlertingProcessor`] — alert episodes from flags and interval rules;
//! 5. [`analytics::AnalyticsProcessor`] — district usage, night flow, percentiles, top
//!    consumers, as mergeable per-shard partials.
//!
//! A meter's state is persisted without what can be rebuilt from its stored rows (VEE's
//! window of raw reads, billing's open reads, alerting's window rows): when the runtime hydrates a meter it
//! reads those rows and [`ProcessorChain::rehydrate`] rebuilds the rest.
//!
//! Around the chain: [`notify::NotificationPolicy`] decides which alert events to
//! deliver now and which later (rate limits, priorities, coalescing), and
//! [`analytics::DistrictRollup`] merges the shards' analytics partials.
//!
//! [`MeterBatch`]: meterflow_model::MeterBatch

pub mod alerting;
pub mod analytics;
pub mod billing;
mod by_time;
pub mod calendar;
pub mod notify;
pub mod tenants;
pub mod usage;
pub mod vee;

#[cfg(test)]
mod testing;

use meterflow_model::{
    MeterKey, MeterState, Outputs, ProcessorsConfig, SealedBatch, StoredReading,
};

pub use tenants::{ProcessorsConfigError, TenantDirectory};

/// One stage of the fan-out.
pub trait Processor: Send {
    /// A short stable name, for metrics and logs.
    fn name(&self) -> &'static str;

    /// Folds a sealed batch into the processor's state. May annotate the batch's
    /// readings (interval, quality), add rows (estimates) and change each meter's
    /// persisted state; appends what dashboards should see to `out`.
    fn process(&mut self, batch: &mut SealedBatch, out: &mut Outputs);

    /// Time-driven work on one meter that no reading triggers (no-communication
    /// alerts, final bills). Returns whether the meter's state changed, so that it is
    /// persisted.
    fn sweep_meter(
        &mut self,
        _now_ms: i64,
        _key: &MeterKey,
        _state: &mut MeterState,
        _out: &mut Outputs,
    ) -> bool {
        false
    }

    /// The earliest time (ms since the epoch) at which [`Self::sweep_meter`] could do
    /// anything for this meter while its state stays as it is; `None` when no time
    /// would. A shard lets a meter rest out of memory until then
    /// (`ingest::shard::held`), so it must not say later than the sweep would act.
    fn sweep_due(&mut self, _key: &MeterKey, _state: &MeterState) -> Option<i64> {
        None
    }

    /// Time-driven work on the processor's own state (flushing aggregates).
    fn tick(&mut self, _now_ms: i64, _out: &mut Outputs) {}

    /// The process stops: emits what the processor holds for a later time-driven
    /// output (analytics' windows not flushed yet), which the meters' persisted
    /// states say was counted and no later run would emit.
    fn finish(&mut self, _now_ms: i64, _out: &mut Outputs) {}

    /// Rebuilds what the processor keeps of a meter without persisting it, once the
    /// meter's state has been read back from the store ([`ProcessorChain::rehydrate`]).
    /// `rows` are what the processors before it left of the meter's stored rows; a
    /// processor may replace them for the ones after it. Counts nothing and emits
    /// nothing: every row was processed when it was first stored. Processors that
    /// persist all they keep (the default) do nothing.
    fn rehydrate(
        &mut self,
        _key: &MeterKey,
        _state: &mut MeterState,
        _rows: &mut Vec<StoredReading>,
    ) {
    }
}

/// The processors a shard runs, in order, on every sealed batch.
pub struct ProcessorChain {
    processors: Vec<Box<dyn Processor>>,
}

impl ProcessorChain {
    pub fn new(processors: Vec<Box<dyn Processor>>) -> Self {
        Self { processors }
    }

    /// The standard chain with default settings for every tenant (tests, demos).
    pub fn standard() -> Self {
        Self::for_tenants(ProcessorsConfig::default()).expect("the default configuration is valid")
    }

    /// The standard chain for a configuration; refuses it with every problem found.
    pub fn for_tenants(config: ProcessorsConfig) -> Result<Self, ProcessorsConfigError> {
        let directory = TenantDirectory::resolve(&config)?;
        Ok(Self::new(vec![
            Box::new(vee::VeeProcessor::new(directory.clone())),
            Box::new(usage::UsageProcessor::with_directory(directory.clone())),
            Box::new(billing::BillingProcessor::with_directory(directory.clone())),
            Box::new(alerting::AlertingProcessor::with_directory(
                directory.clone(),
            )),
            Box::new(analytics::AnalyticsProcessor::with_directory(directory)),
        ]))
    }

    pub fn process(&mut self, batch: &mut SealedBatch, out: &mut Outputs) {
        for processor in &mut self.processors {
            processor.process(batch, out);
        }
    }

    /// Rebuilds the unpersisted part of a meter's state just read from the store
    /// (`meter_state` keeps VEE's settled pass and billing's periods, not the late
    /// window): `rows` are the meter's stored rows after VEE's settled point
    /// ([`MeterState::vee`]`.settled_ts()`), ascending `ts`, one per `ts`, as the
    /// runtime read them (processors do no I/O). VEE puts the window's reads back and
    /// re-runs its pass over them ([`vee::rebuild_window`]), billing rebuilds its open
    /// reads from the rows VEE makes, alerting its window of rows and the fold over
    /// it; usage and analytics persist all they keep and are left alone, so nothing
    /// is counted twice and nothing is emitted.
    /// Call it once per hydration, also with no rows: it sets VEE's newest pass.
    pub fn rehydrate(&mut self, key: &MeterKey, state: &mut MeterState, rows: Vec<StoredReading>) {
        let mut rows = rows;
        for processor in &mut self.processors {
            processor.rehydrate(key, state, &mut rows);
        }
    }

    /// Every processor's [`Processor::finish`]: the process stops.
    pub fn finish(&mut self, now_ms: i64, out: &mut Outputs) {
        for processor in &mut self.processors {
            processor.finish(now_ms, out);
        }
    }

    /// Runs the time-driven work: every processor's [`Processor::sweep_meter`] on
    /// every meter, then its [`Processor::tick`]. Returns the meters whose state
    /// changed: persist them with the next batch.
    pub fn sweep<'a>(
        &mut self,
        now_ms: i64,
        states: impl Iterator<Item = (&'a MeterKey, &'a mut MeterState)>,
        out: &mut Outputs,
    ) -> Vec<MeterKey> {
        let mut changed = Vec::new();
        for (key, state) in states {
            if self.sweep_meter(now_ms, key, state, out) {
                changed.push(key.clone());
            }
        }
        self.tick(now_ms, out);
        changed
    }

    /// Every processor's [`Processor::sweep_meter`] on one meter (a meter read back
    /// from the store because its sweep is due). Returns whether its state changed.
    pub fn sweep_meter(
        &mut self,
        now_ms: i64,
        key: &MeterKey,
        state: &mut MeterState,
        out: &mut Outputs,
    ) -> bool {
        let mut any = false;
        for processor in &mut self.processors {
            any |= processor.sweep_meter(now_ms, key, state, out);
        }
        any
    }

    /// When the sweep could next act on a meter whose state stays as it is: the
    /// earliest of the processors' [`Processor::sweep_due`]; `None` when never.
    pub fn sweep_due(&mut self, key: &MeterKey, state: &MeterState) -> Option<i64> {
        self.processors
            .iter_mut()
            .filter_map(|processor| processor.sweep_due(key, state))
            .min()
    }

    /// Every processor's [`Processor::tick`]: their own time-driven work (analytics'
    /// flush), cheap enough to run every second.
    pub fn tick(&mut self, now_ms: i64, out: &mut Outputs) {
        for processor in &mut self.processors {
            processor.tick(now_ms, out);
        }
    }
}
