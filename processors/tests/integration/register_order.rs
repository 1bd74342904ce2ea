//! Register decisions in time order, whatever the arrival order (DESIGN §4, "Register
//! events" and "Order independence"; the metering analyst's issue 10, cases 3 and
//! 4): scenarios with hand-computed bills, and a model-based property that compares
//! any late, shuffled, duplicated and re-batched arrival of a meter's messages with
//! the in-order stream.

use std::collections::{BTreeMap, BTreeSet};

use meterflow_model::limits::MIN_PLAUSIBLE_TS_MS;
use meterflow_model::{
    AlertEvent, AlertKind, Decision, DistrictUsage, EpisodeState, MeterSize, OrderAction, Outputs,
    ProcessorsConfig, Quality, Reading, RegisterOrder, Resolution, StoredReading, TopConsumers,
    UsageSketch,
};
use meterflow_processors::analytics::DistrictRollup;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::utils::{DAY, HOUR, Input, Pipeline, key, reading, restart_configured};

/// 2025-01-28T00:00Z: five days of hourly reads cross the January/February boundary.
const START: i64 = 1_738_022_400_000;
/// The default register wraps at 10^8 litres.
const CAPACITY: u64 = 100_000_000;
/// The default late window (`processors.bill_close_after_ms`), in hours.
const LATE_WINDOW_HOURS: i64 = 72;
/// Most reads in one message of the property's arrivals (a day of hourly reads).
const MAX_MESSAGE_READS: usize = 24;

/// One meter's reads as (ts, register).
type Reads = Vec<(i64, u64)>;

/// What a replay leaves behind: the stored row per `ts` (storage upserts by
/// (meter, ts)), the last bill line per period as (usage, estimated, fixed
/// charge), and every district window (minute, hour, day) the meter used litres or
/// reported in, as analytics flushes them at the end: its litres, a day's night
/// hours, meters reporting and an hour's sketch (this meter's hour, once finished).
#[derive(Debug, PartialEq)]
struct Outcome {
    rows: BTreeMap<i64, (Reading, Quality, Option<u64>)>,
    bills: BTreeMap<String, (u64, bool, u64)>,
    districts: BTreeMap<(Resolution, i64), WindowFigures>,
    /// The meter view's day and its litres (`UsageState`) at the end.
    today: (i64, u64),
    /// The meter's entry in each day's top list, as flushed at the end (days it used
    /// litres on).
    top: BTreeMap<i64, u64>,
    /// The alert episodes as the stores keep them (the latest step of each, by
    /// revision): (kind, opened_at) → when cleared (none: open). Withdrawn ones are
    /// not episodes.
    episodes: BTreeMap<(AlertKind, i64), Option<i64>>,
}

/// A district window's figures: litres, night hours' litres, meters reporting, and
/// the hour's sketch.
type WindowFigures = (u64, [u64; 2], u64, UsageSketch);

impl Outcome {
    fn billed(&self, period: &str) -> u64 {
        self.bills[period].0
    }

    fn qualities(&self) -> Vec<Quality> {
        self.rows.values().map(|row| row.1).collect()
    }
}

/// The default settings, with a fixed charge of its own for the larger size that a
/// recorded exchange may fit (so that a size change shows in the bills).
fn sized_tariff() -> ProcessorsConfig {
    let mut config = ProcessorsConfig::default();
    let tariff = &mut config.defaults.tariff;
    tariff.fixed_charge_by_size = [(MeterSize::Dn40, 2_400)].into();
    config
}

/// Feeds one meter's batches (each a list of messages) through the standard chain.
fn replay(batches: &[Vec<Reads>]) -> Outcome {
    replay_restarting(batches, &BTreeSet::new(), &[])
}

/// [`replay`], restarting (`utils::restart`) before each batch whose index is in
/// `restarts`. Checks that the rehydrated state is the one the meter had.
/// `orders` (operators' decisions) go with the batch of their index.
fn replay_restarting(
    batches: &[Vec<Reads>],
    restarts: &BTreeSet<usize>,
    orders: &[(usize, RegisterOrder)],
) -> Outcome {
    let mut pipeline = Pipeline::new(sized_tariff());
    let meter = key("demo", "m");
    let mut outcome = Outcome {
        rows: BTreeMap::new(),
        bills: BTreeMap::new(),
        districts: BTreeMap::new(),
        today: (0, 0),
        top: BTreeMap::new(),
        episodes: BTreeMap::new(),
    };
    let mut stored: BTreeMap<i64, StoredReading> = BTreeMap::new();
    // What each run published of the district windows, as readers see it; a
    // restarted run's rollup is seeded from it, as the sink does.
    let mut published = Published::new();
    for (i, batch) in batches.iter().enumerate() {
        if restarts.contains(&i) && pipeline.states.contains_key(&meter) {
            // A stopping process publishes what it has not flushed.
            let mut out = Outputs::default();
            pipeline.chain.finish(0, &mut out);
            published.absorb(out);
            let (before, state) =
                restart_configured(&mut pipeline, sized_tariff(), &meter, &stored)
                    .expect("a state");
            assert_eq!(state, before, "the rehydrated state before batch {i}");
            published.rollup = DistrictRollup::new(1);
        }
        for (_, order) in orders.iter().filter(|(at, _)| *at == i) {
            pipeline.order(&meter, order.clone());
        }
        let inputs = batch
            .iter()
            .map(|message| {
                let readings = message.iter().map(|(ts, reg)| reading(*ts, *reg)).collect();
                Input::readings(&meter, readings)
            })
            .collect();
        let (sealed, out) = pipeline.feed(0, inputs);
        // As the stores do: the batch's rows are written, the rows it withdraws
        // deleted.
        let meter_batch = &sealed.meters[0];
        for ts in meter_batch.withdrawn() {
            outcome.rows.remove(&ts);
            stored.remove(&ts);
        }
        for row in &meter_batch.readings {
            let value = (row.reading, row.quality, row.interval_l);
            outcome.rows.insert(row.reading.ts, value);
            stored.insert(row.reading.ts, *row);
        }
        for bill in out.bills {
            let terms = (bill.usage_l, bill.estimated, bill.fixed_cents);
            outcome.bills.insert(bill.period, terms);
        }
        keep_episodes(&mut outcome.episodes, &out.alerts);
    }
    let usage = &pipeline.states[&meter].usage;
    outcome.today = (usage.day, usage.today_l);
    // Every window is still open (batches are fed at `now_ms` 0); a tick far later
    // flushes them all.
    let flushed = pipeline.sweep(START + 400 * DAY);
    published.absorb(flushed);
    for list in published.tops.values() {
        if let Some(entry) = list.entries.first().filter(|entry| entry.usage_l > 0) {
            outcome.top.insert(list.day_start_ms, entry.usage_l);
        }
    }
    for row in published.windows.into_values() {
        let figures = (
            row.usage_l,
            row.night_hour_l.map(|l| l.unwrap_or(0)),
            row.meters,
            row.meter_hour_sketch,
        );
        if figures != (0, [0, 0], 0, UsageSketch::default()) {
            outcome
                .districts
                .insert((row.resolution, row.start_ms), figures);
        }
    }
    outcome
}

/// The district windows and day top lists a replay's runs published: each run's
/// flushes through its rollup, seeded with what earlier runs published of a window
/// or day it had not seen (as the sink seeds it from the store).
struct Published {
    rollup: DistrictRollup,
    windows: BTreeMap<(Resolution, i64), DistrictUsage>,
    tops: BTreeMap<i64, TopConsumers>,
}

impl Published {
    fn new() -> Self {
        Self {
            rollup: DistrictRollup::new(1),
            windows: BTreeMap::new(),
            tops: BTreeMap::new(),
        }
    }

    fn absorb(&mut self, mut out: Outputs) {
        let (unseen, unseen_tops) = self.rollup.unseen(&out);
        let seeds = unseen
            .iter()
            .filter_map(|row| self.windows.get(&(row.resolution, row.start_ms)))
            .cloned()
            .collect();
        let top_seeds = unseen_tops
            .iter()
            .filter_map(|top| self.tops.get(&top.day_start_ms))
            .cloned()
            .collect();
        self.rollup.seed(seeds, top_seeds);
        self.rollup.absorb(0, 0, &mut out);
        for row in out.districts {
            self.windows.insert((row.resolution, row.start_ms), row);
        }
        for top in out.top {
            self.tops.insert(top.day_start_ms, top);
        }
    }
}

/// Applies alert events to episodes as the stores keep them: each event is its
/// episode's latest word (events come in revision order); a withdrawn episode is
/// none.
pub(crate) fn keep_episodes(
    episodes: &mut BTreeMap<(AlertKind, i64), Option<i64>>,
    events: &[AlertEvent],
) {
    for event in events {
        let episode = (event.kind, event.opened_at);
        match event.state {
            EpisodeState::Withdrawn => {
                episodes.remove(&episode);
            }
            EpisodeState::Cleared => {
                episodes.insert(episode, Some(event.at));
            }
            EpisodeState::Opened | EpisodeState::Updated => {
                episodes.insert(episode, None);
            }
        }
    }
}

/// `actual` stored exactly the rows and bills of `expected` (the in-order stream).
fn same_rows_and_bills(actual: &Outcome, expected: &Outcome) -> Result<(), TestCaseError> {
    prop_assert_eq!(&actual.rows, &expected.rows);
    prop_assert_eq!(&actual.bills, &expected.bills);
    Ok(())
}

/// `actual` has the district windows of `expected`; says which differ, not all.
fn same_windows(
    actual: &BTreeMap<(Resolution, i64), WindowFigures>,
    expected: &BTreeMap<(Resolution, i64), WindowFigures>,
) -> Result<(), TestCaseError> {
    let keys: BTreeSet<_> = actual.keys().chain(expected.keys()).collect();
    let differ: Vec<_> = keys
        .into_iter()
        .filter(|key| actual.get(key) != expected.get(key))
        .map(|key| (key, actual.get(key), expected.get(key)))
        .collect();
    prop_assert!(
        differ.is_empty(),
        "{} windows differ (window, actual, in order): {:?}",
        differ.len(),
        &differ[..differ.len().min(4)]
    );
    Ok(())
}

/// Hourly reads from `START + 10 h` (still January).
fn hourly(registers: &[u64]) -> Reads {
    registers
        .iter()
        .enumerate()
        .map(|(i, reg)| (START + (10 + i as i64) * HOUR, *reg))
        .collect()
}

/// Every read in one message, one batch.
fn in_order(reads: &Reads) -> Outcome {
    replay(&[vec![reads.clone()]])
}

/// Each group of reads (by index) as its own message and batch, in the order given.
fn arriving(reads: &Reads, groups: &[&[usize]]) -> Outcome {
    let batches: Vec<Vec<Reads>> = groups
        .iter()
        .map(|group| vec![group.iter().map(|i| reads[*i]).collect()])
        .collect();
    replay(&batches)
}

#[test]
fn case_3_the_last_pre_wrap_read_arriving_after_the_wrap_is_billed() {
    // 99,999,900 → 99,999,980 (80 L) → wrap → 50 (20 + 50 = 70 L) → 120 (70 L):
    // 220 L. Replayed with the post-wrap reads first, the pre-wrap ones stored
    // suspect and only 70 L were billed.
    let reads = hourly(&[99_999_900, 99_999_980, 50, 120]);
    let expected = in_order(&reads);
    assert_eq!(expected.billed("2025-01"), 220);
    let late = arriving(&reads, &[&[2, 3], &[1], &[0]]);
    assert_eq!(late.billed("2025-01"), 220);
    assert_eq!(late, expected);
    assert_eq!(late.qualities(), vec![Quality::Actual; 4]);
    let intervals: Vec<_> = late.rows.values().map(|row| row.2).collect();
    assert_eq!(intervals, vec![None, Some(80), Some(70), Some(70)]);
}

#[test]
fn case_3_with_duplicates_and_the_first_read_last() {
    let reads = hourly(&[99_999_900, 99_999_980, 50, 120]);
    let late = arriving(&reads, &[&[3], &[2, 3], &[1, 2], &[0, 1], &[3]]);
    assert_eq!(late, in_order(&reads));
    assert_eq!(late.billed("2025-01"), 220);
}

#[test]
fn case_4_an_exchange_to_a_register_above_the_threshold_is_billed() {
    // The old meter: 5,000,000 → 5,000,100 (100 L). The new one starts at 2,500 —
    // above the 1,000 L threshold — and counts 2,550, 2,600, 2,650 (150 L). It bills
    // from its initial read: 250 L. Before, every read of the new meter was suspect
    // for good and 100 L were billed.
    let reads = hourly(&[5_000_000, 5_000_100, 2_500, 2_550, 2_600, 2_650]);
    let expected = in_order(&reads);
    assert_eq!(expected.billed("2025-01"), 250);
    assert_eq!(expected.qualities(), vec![Quality::Actual; 6]);
    assert_eq!(expected.rows[&reads[2].0].2, Some(0), "bills from 2,500");
    let shuffled = arriving(&reads, &[&[4, 5], &[2], &[0, 3], &[1], &[4]]);
    assert_eq!(shuffled, expected);
}

#[test]
fn case_4_a_refurbished_meter_above_the_old_register_is_billed() {
    // Old 1,900 → 2,000 (100 L); the refurbished replacement reads 350,000 → 350,150
    // (150 L): 250 L, not an implausible jump of 348,000 L.
    let reads = hourly(&[1_900, 2_000, 350_000, 350_050, 350_100, 350_150]);
    let expected = in_order(&reads);
    assert_eq!(expected.billed("2025-01"), 250);
    assert_eq!(expected.qualities(), vec![Quality::Actual; 6]);
    let shuffled = arriving(&reads, &[&[3, 4, 5], &[0], &[2], &[1]]);
    assert_eq!(shuffled, expected);
}

#[test]
fn a_resized_exchange_arriving_after_the_next_month_was_billed_reprices_that_month() {
    // Hourly reads from 20:00 on 31 January into February; a DN40 meter replaces
    // the old one at 21:30, recorded as an exchange whose register starts where the
    // old one's last read stood (1,010), so no read's usage moves with the order.
    // The order comes with the last batch — January's first read, late — after
    // February was billed at the old size's charge (800). It re-billed January only,
    // and February kept 800 where the order known from the start gives 2,400.
    let at = |h: i64| START + (3 * 24 + 20 + h) * HOUR;
    let registers = [1_000, 1_010, 1_020, 1_030, 1_040, 1_050, 1_060, 1_070];
    let reads: Reads = (0..).zip(registers).map(|(h, reg)| (at(h), reg)).collect();
    let exchange = RegisterOrder {
        ts: at(1) + HOUR / 2,
        action: OrderAction::Exchange {
            final_reg: None,
            initial_reg: 1_010,
            size: Some(MeterSize::Dn40),
        },
        decision: Decision {
            by: "ana".into(),
            why: "meter replaced".into(),
            at_ms: 0,
        },
        exception: None,
    };
    let batches = vec![vec![reads[1..].to_vec()], vec![reads[..1].to_vec()]];
    let known = replay_restarting(&batches, &BTreeSet::new(), &[(0, exchange.clone())]);
    assert_eq!(
        known.bills["2025-02"].2, 2_400,
        "February at the DN40 charge"
    );
    let late = replay_restarting(&batches, &BTreeSet::new(), &[(1, exchange)]);
    assert_eq!(late.bills, known.bills);
    assert_eq!(late.rows, known.rows);
}

#[test]
fn a_one_off_glitch_stays_suspect_in_any_order() {
    // 2,500 between 5,000,100 and 5,000,200 is one bad read, not an exchange.
    let reads = hourly(&[5_000_000, 5_000_100, 2_500, 5_000_200, 5_000_300]);
    let expected = in_order(&reads);
    assert_eq!(expected.billed("2025-01"), 300);
    assert_eq!(expected.rows[&reads[2].0].1, Quality::Suspect);
    assert_eq!(arriving(&reads, &[&[2], &[4], &[0, 1], &[3]]), expected);
}

/// A meter's hourly reads: steady usage with zero-flow hours, starting near the
/// register's wrap or anywhere, maybe exchanged (for a register below or above the
/// exchange threshold), with missing hours (gaps), one-off glitches, and maybe an
/// outage of up to 100 days (up to three months without a read, issue 10 case 5)
/// during which the meter keeps counting.
fn stream() -> impl Strategy<Value = Reads> {
    (
        prop_oneof![
            (1u64..8_000).prop_map(|below| CAPACITY - below),
            0u64..50_000_000
        ],
        // Litres an hour: mostly a household's, now and then more than a DN15 can
        // measure but not a DN40 (a size an exchange may record).
        proptest::collection::vec(
            prop_oneof![3 => Just(0u64), 7 => 1u64..400, 1 => 3_200u64..20_000],
            24..120,
        ),
        proptest::option::of((
            any::<Index>(),
            prop_oneof![0u64..1_000, 1_000u64..10_000_000],
        )),
        proptest::collection::vec(any::<Index>(), 0..10),
        proptest::collection::vec((any::<Index>(), 0..CAPACITY), 0..3),
        proptest::option::of((any::<Index>(), 1i64..=100, 0u64..100)),
    )
        .prop_map(|(start, litres, exchange, missing, glitches, outage)| {
            let exchange = exchange.map(|(at, new_start)| (at.index(litres.len()), new_start));
            let outage =
                outage.map(|(at, days, per_hour)| (at.index(litres.len()), days, per_hour));
            let mut reg = start;
            let mut silent_ms = 0;
            let mut reads: Reads = Vec::new();
            for (hour, used) in litres.iter().enumerate() {
                if let Some((_, days, per_hour)) = outage.filter(|(at, ..)| *at == hour) {
                    silent_ms = days * DAY;
                    reg = (reg + days as u64 * 24 * per_hour) % CAPACITY;
                }
                if let Some((_, new_start)) = exchange.filter(|(at, _)| *at == hour) {
                    reg = new_start;
                }
                reads.push((START + hour as i64 * HOUR + silent_ms, reg));
                reg = (reg + used) % CAPACITY;
            }
            for (at, bogus) in glitches {
                let i = at.index(reads.len());
                reads[i].1 = bogus;
            }
            let mut gone: Vec<usize> = missing.iter().map(|at| at.index(reads.len())).collect();
            gone.sort_unstable();
            gone.dedup();
            for i in gone.into_iter().rev() {
                reads.remove(i);
            }
            reads
        })
}

/// How the reads travel: message sizes, each message's delay (hours after its
/// first read, within the late window), duplicated messages, and how many messages
/// each sealed batch takes.
#[derive(Clone, Debug)]
pub(crate) struct Arrival {
    sizes: Vec<usize>,
    delays: Vec<i64>,
    duplicates: Vec<(Index, i64)>,
    batch_sizes: Vec<usize>,
}

/// A message may wait until just before the newest read seen is a late window past
/// its first read: its delay plus the longest message stays within the window.
const MAX_DELAY_HOURS: i64 = LATE_WINDOW_HOURS - MAX_MESSAGE_READS as i64;

pub(crate) fn arrival() -> impl Strategy<Value = Arrival> {
    (
        proptest::collection::vec(1usize..=MAX_MESSAGE_READS, 1..20),
        proptest::collection::vec(0..=MAX_DELAY_HOURS, 1..20),
        proptest::collection::vec((any::<Index>(), 0..=MAX_DELAY_HOURS), 0..6),
        proptest::collection::vec(1usize..4, 1..10),
    )
        .prop_map(|(sizes, delays, duplicates, batch_sizes)| Arrival {
            sizes,
            delays,
            duplicates,
            batch_sizes,
        })
}

/// `reads` cut into consecutive messages of `sizes` (cycled).
fn cut<T: Clone>(reads: &[T], sizes: &[usize]) -> Vec<Vec<T>> {
    let mut messages = Vec::new();
    let mut rest = reads;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at((*size).min(rest.len()));
        messages.push(head.to_vec());
        rest = tail;
    }
    messages
}

impl Arrival {
    /// The batches the meter's reads (`ts` gives a read's time) arrive in.
    pub(crate) fn batches_of<T: Clone>(
        &self,
        reads: &[T],
        ts: impl Fn(&T) -> i64,
    ) -> Vec<Vec<Vec<T>>> {
        let messages = self.messages_of(reads, &ts);
        self.arrival_of(&messages, ts)
    }

    /// The messages the device sends the meter's reads in, in order.
    pub(crate) fn messages_of<T: Clone>(&self, reads: &[T], ts: impl Fn(&T) -> i64) -> Vec<Vec<T>> {
        // A message spans at most a day of reads, so one cut across an outage is
        // two messages.
        cut(reads, &self.sizes)
            .iter()
            .flat_map(|message| {
                message.chunk_by(|a, b| ts(b) - ts(a) < MAX_MESSAGE_READS as i64 * HOUR)
            })
            .map(<[_]>::to_vec)
            .collect()
    }

    /// The batches `messages` arrive in: delayed (so reordered), some duplicated,
    /// several to a batch.
    pub(crate) fn arrival_of<T: Clone>(
        &self,
        messages: &[Vec<T>],
        ts: impl Fn(&T) -> i64,
    ) -> Vec<Vec<Vec<T>>> {
        // Sorted by arrival time: the first read's ts plus the delay.
        let mut timed: Vec<(i64, usize, Vec<T>)> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (
                    ts(&m[0]) + self.delays[i % self.delays.len()] * HOUR,
                    i,
                    m.clone(),
                )
            })
            .collect();
        for (n, (which, delay)) in self.duplicates.iter().enumerate() {
            let copy = &messages[which.index(messages.len())];
            timed.push((
                ts(&copy[0]) + delay * HOUR,
                messages.len() + n,
                copy.clone(),
            ));
        }
        timed.sort_by_key(|(at, i, _)| (*at, *i));
        let mut arrived = timed.into_iter().map(|(_, _, m)| m).peekable();
        let mut batches = Vec::new();
        for size in self.batch_sizes.iter().cycle() {
            if arrived.peek().is_none() {
                break;
            }
            batches.push(arrived.by_ref().take(*size).collect());
        }
        batches
    }

    /// The batches the meter's reads arrive in.
    fn batches(&self, reads: &Reads) -> Vec<Vec<Reads>> {
        self.batches_of(reads, |(ts, _)| *ts)
    }
}

proptest! {
    // 256 generated meters per run (about half a second in a debug build); it
    // passed 30,000 once while being written. An explicit count is not overridden
    // by `PROPTEST_CASES`: edit it to run more. Seeds: proptest draws a fresh random
    // seed each run, so every run explores new streams; `PROPTEST_RNG_SEED=<u64>`
    // replays one, and a failing case is shrunk and saved by proptest's default
    // failure persistence (`processors/tests/proptest-regressions/`), which later
    // runs replay first.
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Model-based: the model is the in-order stream (a day per message, one message
    /// per batch). Any arrival within the late window — messages cut differently,
    /// delayed and so reordered, duplicated, several to a batch — leaves the same
    /// stored row per `ts` (reading, quality, interval) and the same last bill per
    /// period (usage, estimated, fixed charge) as the model — rows the model lacks
    /// included: a batch withdraws the rows VEE made before and no pass makes any
    /// more (estimates of a gap a late read re-spread or turned suspect), and the
    /// replay deletes them as the stores do (`MeterBatch::withdrawn`). The district
    /// windows' litres and the meter view's day are the model's too: analytics and
    /// usage take back what every re-decided row counted before (issue 10, case 6).
    #[test]
    fn any_arrival_within_the_late_window_gives_the_in_order_rows_and_bills(
        reads in stream(),
        arrival in arrival(),
    ) {
        let daily: Vec<Vec<Reads>> = reads.chunks(24).map(|day| vec![day.to_vec()]).collect();
        let expected = replay(&daily);
        let actual = replay(&arrival.batches(&reads));
        same_rows_and_bills(&actual, &expected)?;
        same_windows(&actual.districts, &expected.districts)?;
        prop_assert_eq!(actual.today, expected.today);
        prop_assert_eq!(actual.top, expected.top);
        prop_assert_eq!(actual.episodes, expected.episodes);
    }
}

proptest! {
    // 256 cases per run, seeds as above.
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A restart loses nothing: `meter_state` persists neither VEE's window nor
    /// billing's open reads, and rehydrating the meter from the rows stored so far
    /// gives back the state it had (checked at each restart), so any arrival with
    /// restarts between any of its batches stores the same rows and bills as the
    /// same arrival without them — and publishes the same district windows: each
    /// run's rollup is seeded with what the earlier runs published, and a run
    /// publishes what it had not flushed when it stops.
    #[test]
    fn restarts_anywhere_give_the_rows_and_bills_of_no_restart(
        reads in stream(),
        arrival in arrival(),
        restarts in proptest::collection::vec(any::<Index>(), 1..4),
    ) {
        let batches = arrival.batches(&reads);
        let restarts: BTreeSet<usize> =
            restarts.iter().map(|at| at.index(batches.len())).collect();
        let expected = replay(&batches);
        let actual = replay_restarting(&batches, &restarts, &[]);
        // District windows and day top lists as published: a restarted run's
        // rollup is seeded with what the earlier runs published.
        prop_assert_eq!(actual.rows, expected.rows);
        prop_assert_eq!(actual.bills, expected.bills);
        same_windows(&actual.districts, &expected.districts)?;
        prop_assert_eq!(actual.today, expected.today);
        prop_assert_eq!(actual.episodes, expected.episodes);
        prop_assert_eq!(actual.top, expected.top);
    }
}

/// A meter's first read, at 23:00 on the last day of January, is rejected by an
/// operator an hour later, once February's reads have begun to arrive. January then
/// has no read that counts, and none came before it: it owes nothing. In order (the
/// decision known from the start) its line says so; given late, the January line
/// billed while the read still counted (0 L and a day's fixed charge) is replaced by
/// the same one.
#[test]
fn a_first_read_rejected_late_leaves_its_month_owing_nothing() {
    let first = 1_738_364_400_000; // 2025-01-31T23:00:00Z
    let reads: Reads = (0..40)
        .map(|hour| (first + hour * HOUR, 1_000 + hour as u64 * 100))
        .collect();
    let reject = RegisterOrder {
        ts: first,
        action: OrderAction::Reject,
        decision: Decision {
            by: "ana".into(),
            why: "a bogus first read".into(),
            at_ms: 0,
        },
        exception: None,
    };
    let batches = vec![
        vec![reads[..1].to_vec()],
        vec![reads[1..25].to_vec()],
        vec![reads[25..].to_vec()],
    ];
    let in_order = replay_restarting(&batches, &BTreeSet::new(), &[(0, reject.clone())]);
    let late = replay_restarting(&batches, &BTreeSet::new(), &[(1, reject)]);
    assert_eq!(
        in_order.bills["2025-01"],
        (0, true, 0),
        "{:?}",
        in_order.bills
    );
    // February from its first read, at its first instant: 39 hours × 100 L, the
    // month's whole fixed charge.
    assert_eq!(in_order.bills["2025-02"], (3_800, false, 800));
    assert_eq!(late.bills, in_order.bills);
}

/// Operators' orders about a stream's reads: up to three decisions (accept, reject,
/// confirm an exchange) on reads anywhere, and perhaps a recorded exchange half an
/// hour before a read, to a new register anywhere, perhaps of another size (which
/// moves what the meter can plausibly measure and its fixed charge).
fn orders(reads: &Reads) -> impl Strategy<Value = Vec<RegisterOrder>> + use<> {
    let times: Vec<i64> = reads.iter().map(|(ts, _)| *ts).collect();
    (
        proptest::collection::vec((any::<Index>(), 0u8..3), 0..4),
        proptest::option::of((
            any::<Index>(),
            0..CAPACITY,
            proptest::option::of(0..CAPACITY),
            proptest::option::of(prop_oneof![Just(MeterSize::Dn15), Just(MeterSize::Dn40)]),
        )),
    )
        .prop_map(move |(decisions, exchange)| {
            let decision = Decision {
                by: "ana".into(),
                why: "property".into(),
                at_ms: 0,
            };
            let order = |ts, action| RegisterOrder {
                ts,
                action,
                decision: decision.clone(),
                exception: None,
            };
            let mut orders: Vec<RegisterOrder> = decisions
                .into_iter()
                .map(|(at, action)| {
                    let action = match action {
                        0 => OrderAction::Accept,
                        1 => OrderAction::Reject,
                        _ => OrderAction::ConfirmExchange,
                    };
                    order(times[at.index(times.len())], action)
                })
                .collect();
            if let Some((at, initial_reg, final_reg, size)) = exchange {
                let ts = times[at.index(times.len())] - HOUR / 2;
                orders.push(order(
                    ts,
                    OrderAction::Exchange {
                        final_reg,
                        initial_reg,
                        size,
                    },
                ));
            }
            orders
        })
}

proptest! {
    // 256 cases per run, seeds as above.
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Operators' decisions and recorded exchanges are followed by reading time:
    /// given with any batch while their time is well within the late window —
    /// before or after the reads they are about arrive — any arrival within the
    /// late window leaves the rows and bills the in-order stream gives with the
    /// orders from its start, and restarts anywhere change nothing (the orders are persisted with the
    /// state).
    #[test]
    fn orders_give_the_same_rows_and_bills_in_any_arrival(
        (reads, orders) in stream().prop_flat_map(|reads| {
            let orders = orders(&reads);
            (Just(reads), orders)
        }),
        arrival in arrival(),
        restarts in proptest::collection::vec(any::<Index>(), 0..3),
        deliveries in proptest::collection::vec(any::<Index>(), 1..5),
    ) {
        let daily: Vec<Vec<Reads>> = reads.chunks(24).map(|day| vec![day.to_vec()]).collect();
        let from_the_start: Vec<(usize, RegisterOrder)> =
            orders.iter().map(|order| (0, order.clone())).collect();
        let expected = replay_restarting(&daily, &BTreeSet::new(), &from_the_start);
        let batches = arrival.batches(&reads);
        // The newest read after each batch: an order goes with a batch after which
        // its time is still two days inside the late window.
        let newest_after: Vec<i64> = batches
            .iter()
            .scan(i64::MIN, |newest, batch| {
                let in_batch = batch.iter().flatten().map(|(ts, _)| *ts);
                *newest = in_batch.fold(*newest, i64::max);
                Some(*newest)
            })
            .collect();
        // Orders keep the order they were given in (a later decision on a read
        // replaces an earlier one), so each goes no earlier than the one before.
        let mut last = 0;
        let mut open: Vec<usize> = orders
            .iter()
            .map(|order| {
                let bound = order.ts + (LATE_WINDOW_HOURS - MAX_MESSAGE_READS as i64) * HOUR;
                newest_after.iter().take_while(|newest| **newest < bound).count().max(1)
            })
            .collect();
        for i in (1..open.len()).rev() {
            open[i - 1] = open[i - 1].min(open[i]);
        }
        let orders: Vec<(usize, RegisterOrder)> = orders
            .iter()
            .zip(open)
            .zip(deliveries.iter().cycle())
            .map(|((order, open), at)| {
                last = last.max(at.index(open));
                (last, order.clone())
            })
            .collect();
        let restarts: BTreeSet<usize> =
            restarts.iter().map(|at| at.index(batches.len())).collect();
        let actual = replay_restarting(&batches, &restarts, &orders);
        same_rows_and_bills(&actual, &expected)?;
        prop_assert_eq!(actual.today, expected.today);
    }
}

/// Latest `ts` the property below sends: 2100-01-01. Ingest admits reads from 2000
/// ([`MIN_PLAUSIBLE_TS_MS`]) up to its clock plus a few minutes; wilder timestamps
/// never reach the processors (and analytics' hour arithmetic assumes so).
const LATEST_TS: i64 = 4_102_444_800_000;

proptest! {
    // 256 cases per run, seeds as above.
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// No input makes the chain panic: any registers, any admissible timestamps,
    /// in any order and batching, duplicated.
    #[test]
    fn any_reads_in_any_order_never_panic(
        reads in proptest::collection::vec(
            (
                prop_oneof![MIN_PLAUSIBLE_TS_MS..=LATEST_TS, START..START + 200 * HOUR],
                prop_oneof![any::<u64>(), 0..CAPACITY],
            ),
            1..80,
        ),
        cuts in proptest::collection::vec(1usize..10, 1..10),
    ) {
        // Each message sorted by `ts` (as ingest admits them) and delivered twice.
        let batches: Vec<Vec<Reads>> = cut(&reads, &cuts)
            .into_iter()
            .map(|mut message| {
                message.sort_unstable();
                message.dedup_by_key(|(ts, _)| *ts);
                vec![message.clone(), message]
            })
            .collect();
        replay(&batches);
    }
}
