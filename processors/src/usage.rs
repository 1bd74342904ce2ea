//! Per-meter consumption for the meter view (DESIGN §4: usage is the register delta,
//! never a sum of events, so a lost or repeated message cannot change it). Runs after
//! [`crate::vee`] and adds up the intervals VEE derived from register deltas.
//!
//! The meter's day is the day of its newest row, whatever its quality — the tenant's
//! local day containing `ts − 1 ms`, the same rule as the district and tenant
//! figures (ARCHITECTURE.md departure 13), so a meter's "today" and its tenant's
//! "today" add up — and `today_l` the litres its counted rows measured in that day.
//! The newest row is the same whatever order the reads arrived in, which the newest
//! *counted* row is not: a read counted at first can turn suspect when an earlier
//! one arrives. For each row of the batch, in order:
//! - a row of a later day than the meter's starts that day at 0 L;
//! - `Suspect`: not counted (stored);
//! - newer than the meter's latest actual reading: its interval is added when it
//!   ends in the meter's day; an `Actual` row becomes the latest reading shown, and
//!   so does a `Recorded` one (an exchange's final read, which may be followed by
//!   no actual read for a while: a later re-emission of it is then a correction,
//!   not new);
//! - not newer (a late read, or a correction VEE re-emitted): not counted again;
//!   what it changes against the row counted before ([`MeterBatch::corrections`])
//!   moves `today_l` when the row belongs to that day (issue 10, case 6).

use std::sync::Arc;

use meterflow_model::{MeterBatch, MeterSize, MeterView, Outputs, Quality, SealedBatch};

use crate::Processor;
use crate::calendar::LocalCalendar;
use crate::tenants::{PerTenant, TenantDirectory};

/// Consumption per meter; all its state lives in each meter's `UsageState`, the
/// processor keeps only each tenant's calendar.
pub struct UsageProcessor {
    calendars: PerTenant<LocalCalendar>,
}

impl UsageProcessor {
    pub fn with_directory(directory: Arc<TenantDirectory>) -> Self {
        Self {
            calendars: PerTenant::new(directory, |entry| entry.calendar.clone()),
        }
    }
}

impl Processor for UsageProcessor {
    fn name(&self) -> &'static str {
        "usage"
    }

    fn process(&mut self, batch: &mut SealedBatch, out: &mut Outputs) {
        for meter in &mut batch.meters {
            let (entry, calendar) = self.calendars.get(&meter.key.tenant);
            fold_meter(meter, calendar);
            let district = entry.settings.district_of(&meter.key.meter);
            let size = entry.settings.meter_size(&meter.key.meter);
            out.meters.push(view_of(meter, district, size));
        }
    }
}

fn fold_meter(meter: &mut MeterBatch, calendar: &mut LocalCalendar) {
    if let Some(last) = meter.state.usage.last {
        for (ts, delta) in meter.corrections(last.ts) {
            let usage = &mut meter.state.usage;
            if calendar.day(ts.saturating_sub(1)).start_ms == usage.day {
                usage.today_l = usage.today_l.saturating_add_signed(delta);
            }
        }
    }
    let usage = &mut meter.state.usage;
    for stored in &meter.readings {
        let reading = stored.reading;
        let day = calendar.day(reading.ts.saturating_sub(1)).start_ms;
        if day > usage.day {
            usage.day = day;
            usage.today_l = 0;
        }
        if stored.quality == Quality::Suspect || usage.last.is_some_and(|l| reading.ts <= l.ts) {
            continue;
        }
        if day == usage.day {
            usage.today_l = usage.today_l.saturating_add(stored.interval_l.unwrap_or(0));
        }
        if matches!(stored.quality, Quality::Actual | Quality::Recorded) {
            usage.last = Some(reading);
            usage.last_quality = stored.quality;
        }
    }
}

/// The meter's view after `meter`; battery and signal are those of the batch's newest
/// message, `None` when it reported none (caches keep the last reported value).
fn view_of(meter: &MeterBatch, district: &str, configured_size: MeterSize) -> MeterView {
    let newest = meter.newest_status();
    MeterView {
        battery: newest.and_then(|s| s.battery),
        rssi: newest.and_then(|s| s.rssi),
        ..MeterView::of_state(&meter.key, &meter.state, district, configured_size)
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
    fn today_is_the_tenant_s_local_day() {
        use meterflow_model::ProcessorsConfig;
        let mut config = ProcessorsConfig::default();
        let mut chicago = config.defaults.clone();
        chicago.tariff.time_zone = "America/Chicago".into();
        let tenant = crate::testing::key("m1").tenant;
        config.tenants.insert(tenant, chicago);
        let directory = crate::tenants::TenantDirectory::resolve(&config).unwrap();
        let mut chain = crate::ProcessorChain::new(vec![
            Box::new(crate::vee::VeeProcessor::new(directory.clone())),
            Box::new(UsageProcessor::with_directory(directory)),
        ]);
        // DAY0 is a UTC midnight in October: 19:00 the day before in Chicago (CDT,
        // UTC−5). Reads at 18:40, 19:00 and 19:20 Chicago time: all one local day,
        // across UTC midnight. Then 05:00 UTC = 00:00 Chicago: the interval ending
        // exactly at local midnight still belongs to the day before (ts − 1 ms).
        let mut run = |state: MeterState, readings| {
            let mut b = batch_of(state, readings);
            let mut out = Outputs::default();
            chain.process(&mut b, &mut out);
            (b, out)
        };
        let (b, out) = run(
            MeterState::default(),
            vec![
                stored(DAY0 - 1_200_000, 100),
                stored(DAY0, 130),
                stored(DAY0 + 1_200_000, 180),
            ],
        );
        assert_eq!(
            out.meters[0].today_l, 80,
            "UTC midnight is not a local day's end"
        );
        let (b, out) = run(
            b.meters[0].state.clone(),
            vec![stored(DAY0 + 5 * 3_600_000, 200)],
        );
        assert_eq!(
            out.meters[0].today_l, 100,
            "the interval ending at local midnight"
        );
        let (_, out) = run(
            b.meters[0].state.clone(),
            vec![stored(DAY0 + 5 * 3_600_000 + 600_000, 210)],
        );
        assert_eq!(
            out.meters[0].today_l, 10,
            "the new local day starts from its first interval"
        );
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
