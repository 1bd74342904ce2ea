//! Analytics scenarios and the merge properties.

use std::collections::BTreeMap;

use meterflow_model::processing::AnalyticsSettings;
use meterflow_model::{
    DistrictUsage, MeterBatch, Outputs, ProcessorsConfig, Resolution, SealedBatch, StoredReading,
    TenantId, TenantProcessing, TopConsumers, UsageSketch,
};
use meterflow_processors::analytics::{AnalyticsPartial, AnalyticsProcessor, DistrictRollup};
use meterflow_processors::vee::VeeProcessor;
use meterflow_processors::{Processor, TenantDirectory};
use proptest::prelude::*;

use crate::utils::{HOUR, Input, Pipeline, key, reading, restart_configured};

/// 2025-01-15T00:00Z, a Wednesday.
const MIDNIGHT: i64 = 1_736_899_200_000;

fn config() -> ProcessorsConfig {
    let districts = BTreeMap::from([
        ("m0".try_into().unwrap(), "north".to_string()),
        ("m1".try_into().unwrap(), "north".to_string()),
        ("m2".try_into().unwrap(), "south".to_string()),
    ]);
    // b0 measures what flows into the north.
    let bulk_meters = BTreeMap::from([("b0".try_into().unwrap(), "north".to_string())]);
    ProcessorsConfig {
        tenants: BTreeMap::from([(
            TenantId::try_from("acme").unwrap(),
            TenantProcessing {
                districts,
                bulk_meters,
                ..TenantProcessing::default()
            },
        )]),
        // The scenarios read what a flush publishes; a flush interval keeps it in
        // one place (by default every batch publishes what it changed instead:
        // `shard_rows_are_published_with_every_batch`).
        analytics: AnalyticsSettings {
            top_n: 3,
            flush_interval_ms: 5_000,
            ..AnalyticsSettings::default()
        },
        ..ProcessorsConfig::default()
    }
}

/// Runs VEE then analytics (one shard) over hourly reads of `meters`, each a list of
/// litres per hour from midnight.
fn shard(meters: &[(&str, Vec<u64>)]) -> AnalyticsProcessor {
    let directory = TenantDirectory::resolve(&config()).unwrap();
    let mut vee = VeeProcessor::new(directory.clone());
    let mut analytics = AnalyticsProcessor::with_directory(directory);
    let mut batch = SealedBatch::default();
    for (meter, litres) in meters {
        let mut reg = 1_000;
        let mut readings = vec![reading(MIDNIGHT, reg)];
        for (h, l) in litres.iter().enumerate() {
            reg += l;
            readings.push(reading(MIDNIGHT + (h as i64 + 1) * HOUR, reg));
        }
        batch.meters.push(MeterBatch {
            sent_readings: readings.len() as u32,
            readings,
            messages: 1,
            ..MeterBatch::empty(key("acme", meter))
        });
    }
    let mut out = Outputs::default();
    vee.process(&mut batch, &mut out);
    analytics.process(&mut batch, &mut out);
    analytics
}

#[test]
fn district_hours_night_flow_percentiles_and_top_consumers() {
    // m0 and m1 in "north", m2 in "south"; 6 hours from midnight.
    let mut one = shard(&[
        ("m0", vec![10, 10, 4, 6, 30, 30]),
        ("m1", vec![0, 0, 2, 1, 50, 70]),
        ("m2", vec![5, 5, 5, 5, 5, 5]),
    ]);
    let mut out = Outputs::default();
    one.flush(MIDNIGHT + 6 * HOUR, &mut out);
    let row = |district: &str, resolution, start| {
        out.districts
            .iter()
            .find(|r| r.district == district && r.resolution == resolution && r.start_ms == start)
            .unwrap_or_else(|| panic!("{district} {resolution:?} {start}"))
    };
    // The read at 03:00 measured 02:00–03:00: north used 4 + 2 L then.
    let two_am = row("north", Resolution::Hour, MIDNIGHT + 2 * HOUR);
    assert_eq!((two_am.usage_l, two_am.meters), (6, 2));
    let day = row("north", Resolution::Day, MIDNIGHT);
    assert_eq!((day.usage_l, day.meters), (213, 2));
    // Night hours (UTC tenant): 02:00 → 6 L, 03:00 → 7 L; minimum 6 L/h.
    assert_eq!(day.night_hour_l, [Some(6), Some(7)]);
    assert_eq!(day.night_flow_lph, Some(6));
    // Per-meter hourly usage of 00:00 in the north: m0 10 L, m1 0 L.
    let midnight_hour = row("north", Resolution::Hour, MIDNIGHT);
    assert_eq!(midnight_hour.meter_hour_sketch.count(), 2);
    assert_eq!(
        (midnight_hour.p50_l, midnight_hour.p99_l),
        (Some(0), Some(10))
    );
    let minute = row("south", Resolution::Minute, MIDNIGHT + HOUR - 60_000);
    assert_eq!((minute.usage_l, minute.meters), (5, 1));
    let top = &out.top[0];
    let entries: Vec<_> = top
        .entries
        .iter()
        .map(|e| (e.meter.as_str(), e.usage_l))
        .collect();
    assert_eq!(entries, vec![("m1", 123), ("m0", 90), ("m2", 30)]);
    assert_eq!(top.day, "2025-01-15");
}

/// The row of `district` at `resolution` and `start` among `out`'s districts.
fn row_of<'a>(
    out: &'a Outputs,
    district: &str,
    resolution: Resolution,
    start: i64,
) -> &'a meterflow_model::DistrictUsage {
    out.districts
        .iter()
        .find(|r| r.district == district && r.resolution == resolution && r.start_ms == start)
        .unwrap_or_else(|| panic!("{district} {resolution:?} {start}"))
}

#[test]
fn a_bulk_meter_is_the_districts_inflow_and_no_customer() {
    // b0 feeds the north: the customers' use plus 5 L/h lost.
    let mut one = shard(&[
        ("m0", vec![10, 10, 4, 6]),
        ("m1", vec![0, 0, 2, 1]),
        ("b0", vec![15, 15, 11, 12]),
    ]);
    let mut out = Outputs::default();
    one.flush(MIDNIGHT + 4 * HOUR, &mut out);
    let day = row_of(&out, "north", Resolution::Day, MIDNIGHT);
    // Customers only: usage, meters, night flow.
    assert_eq!((day.usage_l, day.meters), (33, 2));
    assert_eq!(day.night_flow_lph, Some(6));
    assert_eq!(day.inflow_l, Some(53));
    // Inflow at 02:00 and 03:00 (the reads at 03:00 and 04:00): 11 and 12 L.
    assert_eq!(day.inflow_night_hour_l, [Some(11), Some(12)]);
    assert_eq!(day.inflow_night_flow_lph, Some(11));
    for (h, inflow) in [(0, 15), (1, 15), (2, 11), (3, 12)] {
        let hour = row_of(&out, "north", Resolution::Hour, MIDNIGHT + h * HOUR);
        assert_eq!(hour.inflow_l, Some(inflow), "hour {h}");
        assert_eq!(hour.meters, 2, "hour {h}");
        assert_eq!(hour.inflow_night_flow_lph, None, "hour {h}");
    }
    // The midnight hour's percentiles are over m0 and m1 only (10 L and 0 L).
    let midnight_hour = row_of(&out, "north", Resolution::Hour, MIDNIGHT);
    assert_eq!(midnight_hour.meter_hour_sketch.count(), 2);
    assert_eq!(midnight_hour.p99_l, Some(10));
    let minute = row_of(&out, "north", Resolution::Minute, MIDNIGHT + HOUR - 60_000);
    assert_eq!(
        (minute.usage_l, minute.meters, minute.inflow_l),
        (10, 2, Some(15))
    );
    // Not a top consumer, though it used the most.
    assert!(out.top[0].entries.iter().all(|e| e.meter != "b0"));
    // A district without bulk meters has no inflow.
    let south = shard(&[("m2", vec![5, 5])]);
    let mut out = Outputs::default();
    let mut south = south;
    south.flush(MIDNIGHT + 2 * HOUR, &mut out);
    assert_eq!(
        row_of(&out, "south", Resolution::Day, MIDNIGHT).inflow_l,
        None
    );
}

#[test]
fn inflow_of_shards_merges_into_the_districts_balance() {
    let mut customers = shard(&[("m0", vec![10, 20, 30, 40])]);
    let mut bulk = shard(&[("b0", vec![12, 22, 31, 41])]);
    let mut rollup = DistrictRollup::new(2);
    let mut out = Outputs::default();
    customers.flush(MIDNIGHT + 4 * HOUR, &mut out);
    rollup.absorb(0, MIDNIGHT + 4 * HOUR, &mut out);
    let mut out = Outputs::default();
    bulk.flush(MIDNIGHT + 4 * HOUR, &mut out);
    rollup.absorb(1, MIDNIGHT + 4 * HOUR, &mut out);
    let day = row_of(&out, "north", Resolution::Day, MIDNIGHT);
    assert_eq!((day.usage_l, day.meters, day.inflow_l), (100, 1, Some(106)));
    assert_eq!(day.night_flow_lph, Some(30));
    assert_eq!(day.inflow_night_flow_lph, Some(31));
    // The summary counts customers only.
    assert_eq!(out.summaries[0].usage_today_l, 100);
    assert_eq!(out.summaries[0].meters_reporting, 1);
}

#[test]
fn shard_rows_roll_up_into_district_totals() {
    let mut a = shard(&[("m0", vec![10, 20])]);
    let mut b = shard(&[("m1", vec![1, 2])]);
    let mut rollup = DistrictRollup::new(2);
    let total = |out: &Outputs| {
        out.districts
            .iter()
            .find(|r| r.resolution == Resolution::Day)
            .map(|r| (r.usage_l, r.meters))
    };
    let mut out_a = Outputs::default();
    a.flush(MIDNIGHT + 2 * HOUR, &mut out_a);
    rollup.absorb(0, MIDNIGHT + 2 * HOUR, &mut out_a);
    assert_eq!(total(&out_a), Some((30, 1)));
    let mut out_b = Outputs::default();
    b.flush(MIDNIGHT + 2 * HOUR, &mut out_b);
    rollup.absorb(1, MIDNIGHT + 2 * HOUR, &mut out_b);
    assert_eq!(total(&out_b), Some((33, 2)));
    // A shard re-flushing its (absolute) partial does not double count.
    let mut again = out_a.clone();
    rollup.absorb(0, MIDNIGHT + 2 * HOUR, &mut again);
    assert_eq!(total(&again), Some((33, 2)));
}

fn partial_of(meters: &[(String, Vec<u64>)]) -> AnalyticsPartial {
    let named: Vec<_> = meters
        .iter()
        .map(|(m, l)| (m.as_str(), l.clone()))
        .collect();
    shard(&named).partial().clone()
}

fn meters_strategy(prefix: &'static str) -> impl Strategy<Value = Vec<(String, Vec<u64>)>> {
    proptest::collection::vec(proptest::collection::vec(0u64..500, 0..30), 0..4).prop_map(
        move |meters| {
            meters
                .into_iter()
                .enumerate()
                .map(|(i, litres)| (format!("{prefix}{i}"), litres))
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Merging per-shard partials is associative and order-free, and equals
    /// computing over all meters at once (`b0`, when drawn, is north's bulk meter:
    /// inflow merges like usage).
    #[test]
    fn merging_partials_is_associative_and_order_free(
        a in meters_strategy("a"),
        b in meters_strategy("m"),
        c in meters_strategy("b"),
    ) {
        let (pa, pb, pc) = (partial_of(&a), partial_of(&b), partial_of(&c));
        let merged = |parts: [&AnalyticsPartial; 3]| {
            let mut acc = parts[0].clone();
            acc.merge(parts[1]);
            acc.merge(parts[2]);
            acc.snapshot()
        };
        let left = {
            let mut ab = pa.clone();
            ab.merge(&pb);
            ab.merge(&pc);
            ab.snapshot()
        };
        let right = {
            let mut bc = pb.clone();
            bc.merge(&pc);
            let mut acc = pa.clone();
            acc.merge(&bc);
            acc.snapshot()
        };
        prop_assert_eq!(&left, &right);
        prop_assert_eq!(&left, &merged([&pc, &pa, &pb]));
        prop_assert_eq!(&left, &merged([&pb, &pc, &pa]));
        let all: Vec<_> = a.iter().chain(&b).chain(&c).cloned().collect();
        prop_assert_eq!(&left, &partial_of(&all).snapshot());
    }
}

/// The north's rows after feeding `batches` of (meter, hour, register) reads, each
/// batch at 15:00, and a flush at 16:00.
fn north_rows(batches: &[Vec<(&str, i64, u64)>]) -> Vec<DistrictUsage> {
    let mut pipeline = Pipeline::new(config());
    for batch in batches {
        let inputs = batch
            .iter()
            .map(|(meter, hour, reg)| {
                let read = reading(MIDNIGHT + hour * HOUR, *reg);
                Input::readings(&key("acme", meter), vec![read])
            })
            .collect();
        pipeline.feed(MIDNIGHT + 15 * HOUR, inputs);
    }
    let out = pipeline.sweep(MIDNIGHT + 16 * HOUR);
    out.districts
        .into_iter()
        .filter(|r| r.district == "north")
        .collect()
}

/// The north's hour rows (start → litres) and day total after feeding `batches` of
/// m0's (hour, register) reads, each batch at 15:00, and a flush at 16:00.
fn north_after(batches: &[&[(i64, u64)]]) -> (BTreeMap<i64, u64>, u64) {
    let batches: Vec<Vec<_>> = batches
        .iter()
        .map(|batch| {
            batch
                .iter()
                .map(|(hour, reg)| ("m0", *hour, *reg))
                .collect()
        })
        .collect();
    let north = north_rows(&batches);
    let hours = north
        .iter()
        .filter(|r| r.resolution == Resolution::Hour)
        .map(|r| ((r.start_ms - MIDNIGHT) / HOUR, r.usage_l))
        .collect();
    let day = north
        .iter()
        .filter(|r| r.resolution == Resolution::Day)
        .map(|r| r.usage_l)
        .sum();
    (hours, day)
}

#[test]
fn case_6_late_reads_replace_a_gaps_estimates_in_the_district_hours() {
    // m0 reads 1,000 L at 10:00 and 1,260 L at 14:00: VEE fills 11:00–13:00 with
    // estimates, 65 L an hour. The real reads of 11:00 (1,010), 12:00 (1,125) and
    // 13:00 (1,190) arrive afterwards: the hours ending then used 10, 115, 65 and
    // 70 L. Before, the district hours kept the estimates (65 L shown for the 11:00
    // hour, 115 L true).
    let reads = [
        (10, 1_000),
        (11, 1_010),
        (12, 1_125),
        (13, 1_190),
        (14, 1_260),
    ];
    let truth = BTreeMap::from([(10, 10), (11, 115), (12, 65), (13, 70)]);
    assert_eq!(north_after(&[&reads]), (truth.clone(), 260), "in order");
    let gap_first = [&[reads[0], reads[4]][..], &reads[1..4]];
    let estimated = north_after(&gap_first[..1]);
    assert_eq!(
        estimated,
        (
            BTreeMap::from([(10, 65), (11, 65), (12, 65), (13, 65)]),
            260
        )
    );
    assert_eq!(north_after(&gap_first), (truth.clone(), 260), "late reads");
    // One at a time, newest first.
    let one_by_one: Vec<&[(i64, u64)]> = [4, 0, 2, 3, 1]
        .iter()
        .map(|i| std::slice::from_ref(&reads[*i]))
        .collect();
    assert_eq!(north_after(&one_by_one), (truth, 260), "one by one");
}

/// What a sketch shows for one value: its bucket's representative (within 1 %).
fn as_sketched(litres: u64) -> Option<u64> {
    let mut sketch = UsageSketch::default();
    sketch.add(litres);
    sketch.quantile(0.5)
}

#[test]
fn case_6_late_reads_reach_the_hours_percentiles_and_meters() {
    // m0 as above: 1,000 L at 10:00 and 1,260 L at 14:00 first (65 L an hour
    // estimated in between), the real 11:00–13:00 reads later: its hours used 10,
    // 115, 65 and 70 L. m1 uses 40 L every hour. An hour enters the percentiles once
    // a meter reports in a later one: 10:00–12:00 here, the 13:00 hour is still
    // running for both. Nearest rank of two values: p50 the lower, p90 the higher.
    let m0 = [
        (10, 1_000),
        (11, 1_010),
        (12, 1_125),
        (13, 1_190),
        (14, 1_260),
    ];
    let m1: Vec<_> = (10..=14)
        .map(|h| ("m1", h, 500 + 40 * (h - 10) as u64))
        .collect();
    let first: Vec<_> = [m0[0], m0[4]]
        .iter()
        .map(|(h, reg)| ("m0", *h, *reg))
        .chain(m1)
        .collect();
    let late: Vec<_> = m0[1..4].iter().map(|(h, reg)| ("m0", *h, *reg)).collect();
    let hours = |rows: Vec<DistrictUsage>| -> BTreeMap<i64, (u64, u64, Option<u64>, Option<u64>)> {
        rows.into_iter()
            .filter(|r| r.resolution == Resolution::Hour)
            .map(|r| {
                (
                    (r.start_ms - MIDNIGHT) / HOUR,
                    (r.usage_l, r.meters, r.p50_l, r.p90_l),
                )
            })
            .collect()
    };
    let (forty, sixty_five) = (as_sketched(40), as_sketched(65));
    assert_eq!(
        hours(north_rows(std::slice::from_ref(&first))),
        BTreeMap::from([
            (10, (105, 2, forty, sixty_five)),
            (11, (105, 2, forty, sixty_five)),
            (12, (105, 2, forty, sixty_five)),
            (13, (105, 2, None, None)),
        ]),
        "estimated"
    );
    assert_eq!(
        hours(north_rows(&[first, late])),
        BTreeMap::from([
            (10, (50, 2, as_sketched(10), forty)),
            (11, (155, 2, forty, as_sketched(115))),
            (12, (105, 2, forty, sixty_five)),
            (13, (110, 2, None, None)),
        ]),
        "after the late reads"
    );
}

#[test]
fn case_6_after_a_restart_late_reads_take_back_what_the_earlier_process_counted() {
    // m0 and m1 as above: the gap's estimates (65 L an hour) are counted and
    // published by one process, m0's real reads arrive after a restart. The new
    // process holds nothing of those hours: what the 10:00 hour loses (55 L, and
    // m0's 65 L value in its percentiles) it takes back from the published rows its
    // rollup was seeded with; the ledger it rebuilt from m0's rows says what m0 had
    // put in. Before, it could only add: the 10:00 hour kept 65 L, and the day read
    // 315 L instead of 260.
    let m0 = key("acme", "m0");
    let read = |hour: i64, reg: u64| reading(MIDNIGHT + hour * HOUR, reg);
    let m1_reads = (10..=14)
        .map(|h| read(h, 500 + 40 * (h as u64 - 10)))
        .collect();
    let mut pipeline = Pipeline::new(config());
    let (sealed, _) = pipeline.feed(
        MIDNIGHT + 15 * HOUR,
        vec![
            Input::readings(&m0, vec![read(10, 1_000), read(14, 1_260)]),
            Input::readings(&key("acme", "m1"), m1_reads),
        ],
    );
    let stored: BTreeMap<i64, StoredReading> = sealed
        .meters
        .iter()
        .filter(|meter| meter.key == m0)
        .flat_map(|meter| &meter.readings)
        .map(|row| (row.reading.ts, *row))
        .collect();
    let mut earlier = DistrictRollup::new(1);
    let mut published = pipeline.sweep(MIDNIGHT + 16 * HOUR);
    earlier.absorb(0, MIDNIGHT + 16 * HOUR, &mut published);

    restart_configured(&mut pipeline, config(), &m0, &stored);
    let late = vec![read(11, 1_010), read(12, 1_125), read(13, 1_190)];
    pipeline.feed(MIDNIGHT + 17 * HOUR, vec![Input::readings(&m0, late)]);
    let mut out = pipeline.sweep(MIDNIGHT + 18 * HOUR);
    absorb_after_a_restart(&published, &mut out, MIDNIGHT + 18 * HOUR);
    // What readers see: the rows published before, each replaced by the one
    // published after the restart, if any (the 12:00 hour did not change).
    type Figures = (u64, u64, Option<u64>, Option<u64>);
    let north = |resolution| -> BTreeMap<i64, Figures> {
        published
            .districts
            .iter()
            .chain(&out.districts)
            .filter(|r| r.district == "north" && r.resolution == resolution)
            .map(|r| {
                let hour = (r.start_ms - MIDNIGHT) / HOUR;
                (hour, (r.usage_l, r.meters, r.p50_l, r.p90_l))
            })
            .collect()
    };
    let (forty, sixty_five) = (as_sketched(40), as_sketched(65));
    assert_eq!(
        north(Resolution::Hour),
        BTreeMap::from([
            (10, (50, 2, as_sketched(10), forty)),
            (11, (155, 2, forty, as_sketched(115))),
            (12, (105, 2, forty, sixty_five)),
            (13, (110, 2, None, None)),
        ])
    );
    assert_eq!(north(Resolution::Day)[&0].0, 420);
}

/// A day's top list across a restart, when a late read moves litres out of the day:
/// one process counts m0's gap 22:00–02:00 (400 L) as estimates, 200 L of them on
/// the 15th, and publishes its top list; after a restart the real reads arrive
/// (23:00 1,010, 00:00 1,020), so the 15th holds 20 L of m0. The new process's figure
/// for m0 is its whole day total and replaces the published one. Before, lists were
/// merged by the greater figure per meter, and the 15th kept 200 L (found by the
/// restarts property once it compared top lists).
#[test]
fn case_6_after_a_restart_a_days_top_list_follows_litres_moved_out_of_it() {
    let m0 = key("acme", "m0");
    let read = |hour: i64, reg: u64| reading(MIDNIGHT + hour * HOUR, reg);
    let mut pipeline = Pipeline::new(config());
    let (sealed, _) = pipeline.feed(
        MIDNIGHT + 27 * HOUR,
        vec![Input::readings(&m0, vec![read(22, 1_000), read(26, 1_400)])],
    );
    let stored: BTreeMap<i64, StoredReading> = sealed.meters[0]
        .readings
        .iter()
        .map(|row| (row.reading.ts, *row))
        .collect();
    let mut earlier = DistrictRollup::new(1);
    let mut published = pipeline.sweep(MIDNIGHT + 28 * HOUR);
    earlier.absorb(0, MIDNIGHT + 28 * HOUR, &mut published);
    let fifteenth = |out: &Outputs| -> Option<u64> {
        out.top
            .iter()
            .find(|list| list.day_start_ms == MIDNIGHT)
            .and_then(|list| list.entries.iter().find(|e| e.meter == "m0"))
            .map(|e| e.usage_l)
    };
    assert_eq!(fifteenth(&published), Some(200));

    restart_configured(&mut pipeline, config(), &m0, &stored);
    let late = vec![read(23, 1_010), read(24, 1_020)];
    pipeline.feed(MIDNIGHT + 29 * HOUR, vec![Input::readings(&m0, late)]);
    let mut out = pipeline.sweep(MIDNIGHT + 30 * HOUR);
    absorb_after_a_restart(&published, &mut out, MIDNIGHT + 30 * HOUR);
    assert_eq!(fifteenth(&out), Some(20));
}

/// A restarted process's rollup absorbs `out`, seeded (as the sink seeds it from the
/// store) with what the earlier process `published` of the windows and days it had
/// not seen.
fn absorb_after_a_restart(published: &Outputs, out: &mut Outputs, now_ms: i64) {
    let mut rollup = DistrictRollup::new(1);
    let (unseen, unseen_tops) = rollup.unseen(out);
    let seeds = unseen
        .iter()
        .filter_map(|row| published.districts.iter().find(|p| p.same_window(row)))
        .cloned()
        .collect();
    let top_seeds = unseen_tops
        .iter()
        .filter_map(|top| {
            let day = |p: &&TopConsumers| p.day_start_ms == top.day_start_ms;
            published.top.iter().find(day)
        })
        .cloned()
        .collect();
    rollup.seed(seeds, top_seeds);
    rollup.absorb(0, now_ms, out);
}

/// By default (`flush_interval_ms` 0) a batch publishes the windows it changed with
/// it, each as the shard's total so far — so what the sink stores with the batch is
/// current — and a batch that changes none publishes none. Rolled up, the rows
/// published batch by batch end where one flush after all of them does.
#[test]
fn shard_rows_are_published_with_every_batch() {
    let hourly = |meter: &str, from_hour: i64, registers: &[u64]| {
        let readings = registers
            .iter()
            .enumerate()
            .map(|(i, reg)| reading(MIDNIGHT + (from_hour + i as i64) * HOUR, *reg))
            .collect();
        Input::readings(&key("acme", meter), readings)
    };
    let batches = || {
        [
            vec![hourly("m0", 0, &[1_000, 1_010, 1_030])],
            vec![hourly("m1", 0, &[500, 504]), hourly("m0", 3, &[1_060])],
            // A resend: nothing changes.
            vec![hourly("m0", 3, &[1_060])],
        ]
    };
    let mut every_batch = config();
    every_batch.analytics.flush_interval_ms = 0;
    let mut pipeline = Pipeline::new(every_batch);
    let mut rollup = DistrictRollup::new(1);
    let mut published: BTreeMap<(String, Resolution, i64), DistrictUsage> = BTreeMap::new();
    let mut rows_per_batch = Vec::new();
    for (i, inputs) in batches().into_iter().enumerate() {
        let (_, mut out) = pipeline.feed(i as i64, inputs);
        rows_per_batch.push(out.districts.len());
        if i == 0 {
            let north_hours: Vec<u64> = out
                .districts
                .iter()
                .filter(|r| r.district == "north" && r.resolution == Resolution::Hour)
                .map(|r| r.usage_l)
                .collect();
            assert_eq!(north_hours, [10, 20], "the first batch's hours, with it");
        }
        rollup.absorb(0, i as i64, &mut out);
        for row in out.districts {
            published.insert((row.district.clone(), row.resolution, row.start_ms), row);
        }
    }
    assert_eq!(rows_per_batch[2], 0, "a batch that changes nothing");

    let mut at_once = Pipeline::new(config());
    for (i, inputs) in batches().into_iter().enumerate() {
        at_once.feed(i as i64, inputs);
    }
    let mut flushed = Outputs::default();
    at_once.chain.finish(10, &mut flushed);
    DistrictRollup::new(1).absorb(0, 10, &mut flushed);
    let flushed: BTreeMap<_, _> = flushed
        .districts
        .into_iter()
        .map(|row| ((row.district.clone(), row.resolution, row.start_ms), row))
        .collect();
    assert_eq!(published, flushed);
    let north_day = &published[&("north".to_string(), Resolution::Day, MIDNIGHT)];
    assert_eq!((north_day.usage_l, north_day.meters), (64, 2));
}
