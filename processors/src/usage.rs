//! Per-meter consumption for the meter view (DESIGN §4: usage is the register delta,
//! never a sum of events, so a lost or repeated message cannot change it). Runs after
//! [`crate::vee`] and adds up the intervals VEE derived from register deltas.
//!
//! For each row of the batch, in order:
//! - `Suspect`: ignored (stored, never counted);
//! - newer than the meter's latest actual reading: its interval is added to the UTC
//!   day of the row (a new day starts from that interval alone); an `Actual` row
//!   becomes the latest reading shown;
//! - not newer (a late read, or a correction VEE re-emitted): not counted — VEE's
//!   corrections move litres between rows, they never add any.

use meterflow_model::time::day_of;
use meterflow_model::{MeterBatch, MeterView, Outputs, Quality, SealedBatch};

use crate::Processor;

/// Consumption per meter; all its state lives in each meter's `UsageState`.
pub struct UsageProcessor;

impl Processor for UsageProcessor {
    fn name(&self) -> &'static str {
        "usage"
    }

    fn process(&mut self, batch: &mut SealedBatch, out: &mut Outputs) {
        for meter in &mut batch.meters {
            fold_meter(meter);
            out.meters.push(view_of(meter));
        }
    }
}

fn fold_meter(meter: &mut MeterBatch) {
    let usage = &mut meter.state.usage;
    for stored in &meter.readings {
        let reading = stored.reading;
        if stored.quality == Quality::Suspect || usage.last.is_some_and(|l| reading.ts <= l.ts) {
            continue;
        }
        let day = day_of(reading.ts);
        if day != usage.day {
            usage.day = day;
            usage.today_l = 0;
        }
        usage.today_l = usage.today_l.saturating_add(stored.interval_l.unwrap_or(0));
        if stored.quality == Quality::Actual {
            usage.last = Some(reading);
            usage.last_quality = stored.quality;
        }
    }
}

fn view_of(meter: &MeterBatch) -> MeterView {
    let usage = &meter.state.usage;
    MeterView {
        tenant: meter.key.tenant.to_string(),
        meter: meter.key.meter.to_string(),
        last_seq: meter.state.seq.watermark(),
        last_ts: usage.last.map(|r| r.ts),
        reg: usage.last.map(|r| r.reg),
        rev: usage.last.map(|r| r.rev),
        flow: usage.last.map(|r| r.flow),
        temp: usage.last.and_then(|r| r.temp),
        today_l: usage.today_l,
        quality: usage.last_quality,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{DAY0, batch_of, chain_vee_usage, stored};
    use meterflow_model::MeterState;
    use meterflow_model::time::DAY_MS;
    use proptest::prelude::*;

    fn run(
        state: MeterState,
        readings: Vec<meterflow_model::StoredReading>,
    ) -> (SealedBatch, Outputs) {
        let mut b = batch_of(state, readings);
        let mut out = Outputs::default();
        chain_vee_usage().process(&mut b, &mut out);
        (b, out)
    }

    #[test]
    fn usage_is_the_register_delta_within_a_day() {
        let (b, out) = run(
            MeterState::default(),
            vec![
                stored(DAY0 + 600_000, 100),
                stored(DAY0 + 1_200_000, 130),
                stored(DAY0 + 1_800_000, 180),
            ],
        );
        assert_eq!(out.meters[0].today_l, 80);
        assert_eq!(out.meters[0].reg, Some(180));
        let intervals: Vec<_> = b.meters[0].readings.iter().map(|r| r.interval_l).collect();
        assert_eq!(intervals, vec![None, Some(30), Some(50)]);
    }

    #[test]
    fn a_new_day_starts_from_its_first_interval() {
        let (b, _) = run(
            MeterState::default(),
            vec![
                stored(DAY0 + DAY_MS - 1_200_000, 100),
                stored(DAY0 + DAY_MS - 600_000, 150),
            ],
        );
        let (_, out) = run(
            b.meters[0].state.clone(),
            vec![stored(DAY0 + DAY_MS + 600_000, 175)],
        );
        assert_eq!(out.meters[0].today_l, 25);
    }

    #[test]
    fn late_readings_change_nothing() {
        let (b, _) = run(MeterState::default(), vec![stored(DAY0 + 5_000, 500)]);
        let (b2, out) = run(b.meters[0].state.clone(), vec![stored(DAY0 + 1_000, 400)]);
        assert_eq!(out.meters[0].reg, Some(500));
        assert_eq!(b2.meters[0].readings[0].interval_l, None);
    }

    proptest! {
        /// Splitting the same ascending readings into batches differently never
        /// changes the day's usage: usage is a register delta, not a sum of messages.
        /// (15-minute reads of at most 500 L: plausible for a DN15 meter.)
        #[test]
        fn usage_does_not_depend_on_batch_boundaries(
            steps in proptest::collection::vec(0u64..500, 1..60),
            cut in 0usize..60,
        ) {
            let mut reg = 1_000;
            let readings: Vec<_> = steps.iter().enumerate().map(|(i, s)| {
                reg += s;
                stored(DAY0 + (i as i64 + 1) * 900_000, reg)
            }).collect();
            let (_, whole) = run(MeterState::default(), readings.clone());
            let cut = cut.min(readings.len());
            let (first, _) = run(MeterState::default(), readings[..cut].to_vec());
            let (_, split) = run(first.meters[0].state.clone(), readings[cut..].to_vec());
            prop_assert_eq!(whole.meters[0].today_l, split.meters[0].today_l);
            prop_assert_eq!(whole.meters[0].today_l, reg - 1_000 - steps[0]);
        }
    }
}
