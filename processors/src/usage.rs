//! Per-meter consumption from register deltas (DESIGN §4: usage is the register delta,
//! never a sum of events, so a lost or repeated message cannot change it).
//!
//! For each newly accepted reading, in the order the shard accepted them:
//! - newer than the meter's last reading: its interval is `reg - last.reg`, added to
//!   the day of the reading (a new UTC day starts from that interval alone), and it
//!   becomes the new base;
//! - a register lower than the base (regression, or a meter exchange): no interval is
//!   derived and the reading becomes the new base, so usage restarts from it (VEE will
//!   tell rollover, exchange and suspect reads apart);
//! - not newer than the last reading (late or re-sent with a new seq): stored, but it
//!   changes neither the base nor the day's usage.

use meterflow_model::time::day_of;
use meterflow_model::{MeterBatch, MeterView, Outputs, Quality, SealedBatch, UsageState};

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
    for stored in &mut meter.readings {
        let reading = stored.reading;
        match usage.last {
            None => start_from(usage, stored.reading, stored.quality),
            Some(last) if reading.ts <= last.ts => {}
            Some(last) => match reading.reg.checked_sub(last.reg) {
                Some(delta) => {
                    stored.interval_l = Some(delta);
                    let day = day_of(reading.ts);
                    if day == usage.day {
                        usage.today_l = usage.today_l.saturating_add(delta);
                    } else {
                        usage.day = day;
                        usage.today_l = delta;
                    }
                    usage.last = Some(reading);
                    usage.last_quality = stored.quality;
                }
                None => start_from(usage, reading, stored.quality),
            },
        }
    }
}

fn start_from(usage: &mut UsageState, reading: meterflow_model::Reading, quality: Quality) {
    let day = day_of(reading.ts);
    if day != usage.day {
        usage.day = day;
        usage.today_l = 0;
    }
    usage.last = Some(reading);
    usage.last_quality = quality;
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
    use meterflow_model::time::DAY_MS;
    use meterflow_model::{MeterKey, MeterState, Reading, StoredReading};
    use proptest::prelude::*;

    const DAY0: i64 = 20_000 * DAY_MS;

    fn stored(ts: i64, reg: u64) -> StoredReading {
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

    fn batch(state: MeterState, readings: Vec<StoredReading>) -> SealedBatch {
        SealedBatch {
            meters: vec![MeterBatch {
                key: MeterKey::new("demo".try_into().unwrap(), "m1".try_into().unwrap()),
                readings,
                state,
                messages: 1,
                duplicates: 0,
                first_received_at: None,
            }],
            ..SealedBatch::default()
        }
    }

    fn run(state: MeterState, readings: Vec<StoredReading>) -> (SealedBatch, Outputs) {
        let mut b = batch(state, readings);
        let mut out = Outputs::default();
        UsageProcessor.process(&mut b, &mut out);
        (b, out)
    }

    #[test]
    fn usage_is_the_register_delta_within_a_day() {
        let (b, out) = run(
            MeterState::default(),
            vec![
                stored(DAY0 + 1_000, 100),
                stored(DAY0 + 2_000, 130),
                stored(DAY0 + 3_000, 180),
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
            vec![stored(DAY0 + 1_000, 100), stored(DAY0 + 2_000, 150)],
        );
        let (_, out) = run(
            b.meters[0].state.clone(),
            vec![stored(DAY0 + DAY_MS + 10, 175)],
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
        #[test]
        fn usage_does_not_depend_on_batch_boundaries(
            steps in proptest::collection::vec(0u64..500, 1..60),
            cut in 0usize..60,
        ) {
            let mut reg = 1_000;
            let readings: Vec<_> = steps.iter().enumerate().map(|(i, s)| {
                reg += s;
                stored(DAY0 + (i as i64 + 1) * 60_000, reg)
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
