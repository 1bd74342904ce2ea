//! Processors: synchronous state machines fed sealed batches of readings (DESIGN §2,
//! CONVENTIONS §2). A processor does no I/O, spawns nothing and never reads a clock —
//! time arrives inside the batch — so the same batch always gives the same outputs and
//! the runtime (`ingest`) owns every thread and channel.
//!
//! Each shard worker owns one [`ProcessorChain`]; a processor's state is therefore per
//! shard, and a meter's state travels in its [`MeterBatch`] so that it is persisted with
//! the readings it reflects.
//!
//! Today's chain: [`usage::UsageProcessor`] (per-meter consumption from register
//! deltas). Billing, alerting, analytics and VEE plug into the same trait.
//!
//! [`MeterBatch`]: meterflow_model::MeterBatch

pub mod usage;

use meterflow_model::{Outputs, SealedBatch};

/// One stage of the fan-out.
pub trait Processor: Send {
    /// A short stable name, for metrics and logs.
    fn name(&self) -> &'static str;

    /// Folds a sealed batch into the processor's state. May annotate the batch's
    /// readings (interval, quality) and each meter's persisted state; appends what
    /// dashboards should see to `out`.
    fn process(&mut self, batch: &mut SealedBatch, out: &mut Outputs);
}

/// The processors a shard runs, in order, on every sealed batch.
pub struct ProcessorChain {
    processors: Vec<Box<dyn Processor>>,
}

impl ProcessorChain {
    pub fn new(processors: Vec<Box<dyn Processor>>) -> Self {
        Self { processors }
    }

    /// The chain every shard runs by default.
    pub fn standard() -> Self {
        Self::new(vec![Box::new(usage::UsageProcessor)])
    }

    pub fn process(&mut self, batch: &mut SealedBatch, out: &mut Outputs) {
        for processor in &mut self.processors {
            processor.process(batch, out);
        }
    }
}
