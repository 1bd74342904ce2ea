//! Months without reads and prorated fixed charges (DESIGN §4, "A billing period
//! without reads gets an estimated bill, trued up later; fixed charges are
//! prorated"; the metering analyst's issue 10, case 5): scenarios with hand-computed
//! bills in America/Chicago, across the end of daylight saving time.

use std::collections::BTreeMap;

use meterflow_model::{
    BillLine, MeterKey, ProcessorsConfig, Tariff, TariffTier, TenantId, TenantProcessing,
};

use crate::utils::{DAY, Input, Pipeline, key, reading};

/// 2025-10-30T12:00 in Chicago (CDT, UTC−5): the new meter's first read.
const OCT_30_NOON: i64 = 1_761_843_600_000;
/// 2025-11-01T00:00 CDT: November starts.
const NOV_START: i64 = 1_761_973_200_000;
/// 2025-12-01T00:00 CST (UTC−6; DST ended on Nov 2, so November has 721 hours).
const DEC_START: i64 = 1_764_568_800_000;
/// 2025-12-01T12:00 CST: the read after the month of silence, 769 hours after the first.
const DEC_1_NOON: i64 = 1_764_612_000_000;
/// Litres an hour the meter turns, reads on the line: 40 L/h.
const RATE: u64 = 40;
const REG_OCT_30: u64 = 1_000_000;
/// 1,000,000 + 769 h × 40 L.
const REG_DEC_1: u64 = 1_030_760;

fn chicago_config() -> ProcessorsConfig {
    let tariff = Tariff {
        currency: "USD".into(),
        minor_units: 2,
        fixed_charge: 1_000,
        tiers: vec![
            TariffTier {
                up_to_m3: Some(10),
                price_per_m3: 200,
            },
            TariffTier {
                up_to_m3: Some(30),
                price_per_m3: 300,
            },
            TariffTier {
                up_to_m3: None,
                price_per_m3: 500,
            },
        ],
        time_zone: "America/Chicago".into(),
        ..Tariff::default()
    };
    ProcessorsConfig {
        tenants: BTreeMap::from([(
            TenantId::try_from("prairie").unwrap(),
            TenantProcessing {
                tariff,
                ..TenantProcessing::default()
            },
        )]),
        ..ProcessorsConfig::default()
    }
}

/// (usage, fixed, amount, estimated, final) of a line.
type Terms = (u64, u64, u64, bool, bool);

fn terms(bill: &BillLine) -> Terms {
    (
        bill.usage_l,
        bill.fixed_cents,
        bill.amount_cents,
        bill.estimated,
        bill.final_,
    )
}

/// The lines of one output by period; a period billed twice in one output must be
/// billed the same.
fn by_period(bills: &[BillLine]) -> BTreeMap<String, Terms> {
    let mut lines = BTreeMap::new();
    for bill in bills {
        let previous = lines.insert(bill.period.clone(), terms(bill));
        assert!(previous.is_none_or(|p| p == terms(bill)), "{bills:?}");
    }
    lines
}

fn send(
    pipeline: &mut Pipeline,
    meter: &MeterKey,
    now: i64,
    reads: &[(i64, u64)],
) -> Vec<BillLine> {
    let readings = reads.iter().map(|(ts, reg)| reading(*ts, *reg)).collect();
    pipeline
        .feed(now, vec![Input::readings(meter, readings)])
        .1
        .bills
}

/// Reads on Oct 30 and Dec 1 only, sent as they are taken.
fn october_and_december() -> (Pipeline, MeterKey, Vec<BillLine>) {
    let mut pipeline = Pipeline::new(chicago_config());
    let meter = key("prairie", "m-500");
    let mut bills = send(
        &mut pipeline,
        &meter,
        OCT_30_NOON,
        &[(OCT_30_NOON, REG_OCT_30)],
    );
    bills.extend(send(
        &mut pipeline,
        &meter,
        DEC_1_NOON,
        &[(DEC_1_NOON, REG_DEC_1)],
    ));
    (pipeline, meter, bills)
}

// October, the meter's first month, from its first read: no usage before it; fixed
// 10.00 × 2 of 31 local days (Oct 30, Oct 31) = 0.645… → 0.65.
// Usage to C(Nov 1 00:00) = 36 h × 40 = 1,440 L, interpolated across a month: estimated.
// 1.440 m³ × 2.00 = 2.88 + 0.65 = 3.53.
const OCTOBER: Terms = (1_440, 65, 353, true, false);
// November, no read: C(Dec 1 00:00) − C(Nov 1 00:00) = 721 h × 40 = 28,840 L, estimated.
// 10 m³ × 2.00 + 18.840 m³ × 3.00 = 20.00 + 56.52, + 10.00 fixed = 86.52.
const NOVEMBER: Terms = (28_840, 1_000, 8_652, true, false);
// December so far: C(Dec 1 00:00) = 1,030,280 to the 12:00 read: 480 L, its start
// interpolated across the gap. 0.48 × 2.00 = 0.96 + 10.00.
const DECEMBER: Terms = (480, 1_000, 1_096, true, false);

#[test]
fn case_5_a_month_without_reads_gets_an_estimated_bill() {
    let (mut pipeline, meter, bills) = october_and_december();
    assert_eq!(by_period(&bills[..1])["2025-10"], (0, 65, 65, false, false));
    let lines = by_period(&bills[1..]);
    assert_eq!(lines["2025-10"], OCTOBER);
    assert_eq!(lines["2025-11"], NOVEMBER);
    assert_eq!(lines["2025-12"], DECEMBER);
    // Each litre once: October, November and December add up to the registers' delta.
    assert_eq!(1_440 + 28_840 + 480, REG_DEC_1 - REG_OCT_30);
    // A late window (3 days) after December starts, October and November go final
    // together: a late read in November would have changed both.
    assert_eq!(pipeline.sweep_due(&meter), Some(DEC_START + 3 * DAY));
    let out = pipeline.sweep(DEC_START + 3 * DAY - 1);
    assert!(out.bills.is_empty(), "{:?}", out.bills);
    let out = pipeline.sweep(DEC_START + 3 * DAY);
    let finals = by_period(&out.bills);
    let close =
        |(usage, fixed, amount, estimated, _): Terms| (usage, fixed, amount, estimated, true);
    assert_eq!(finals.len(), 2, "{finals:?}");
    assert_eq!(finals["2025-10"], close(OCTOBER));
    assert_eq!(finals["2025-11"], close(NOVEMBER));
    // A November read arriving after that changes no bill of November.
    let late = send(
        &mut pipeline,
        &meter,
        DEC_START + 4 * DAY,
        &[(NOV_START + 14 * DAY, 1_015_000)],
    );
    assert!(late.iter().all(|b| b.period != "2025-11"), "{late:?}");
}

#[test]
fn case_5_real_november_reads_true_the_estimate_up() {
    let (mut pipeline, meter, _) = october_and_december();
    // The meter's logged reads at November's two local midnights arrive late: it
    // used 29,000 L in November, not the 28,840 L the straight line gave.
    let late = [(NOV_START, REG_OCT_30 + 36 * RATE), (DEC_START, 1_030_440)];
    let bills = send(&mut pipeline, &meter, DEC_1_NOON + DAY, &late);
    let lines = by_period(&bills);
    // 10 m³ × 2.00 + 19 m³ × 3.00 + 10.00 = 87.00; both boundaries are reads.
    assert_eq!(lines["2025-11"], (29_000, 1_000, 8_700, false, false));
    // December from its 00:00 read: 320 L, 0.64 + 10.00, no longer estimated.
    assert_eq!(lines["2025-12"], (320, 1_000, 1_064, false, false));
    // October's stretch closed on Nov 4 (service time): no running line; its
    // usage is unchanged (the Nov 1 read is on the line), and it is billed final
    // when its reads settle.
    assert!(!lines.contains_key("2025-10"), "{lines:?}");
    // A read on Dec 5 settles December's first reads: October goes final, trued up
    // (no longer estimated); November is final a late window after December starts.
    let dec_5 = DEC_1_NOON + 4 * DAY;
    let bills = send(
        &mut pipeline,
        &meter,
        dec_5,
        &[(dec_5, REG_DEC_1 + 96 * RATE)],
    );
    let lines = by_period(&bills);
    assert_eq!(lines["2025-10"], (1_440, 65, 353, false, true));
    assert_eq!(lines["2025-11"], (29_000, 1_000, 8_700, false, true));
    // 320 + 96 h × 40 = 4,160 L: 8.32 + 10.00.
    assert_eq!(lines["2025-12"], (4_160, 1_000, 1_832, false, false));
}

#[test]
fn the_first_month_is_prorated_from_the_local_day_of_the_first_read() {
    let mut pipeline = Pipeline::new(chicago_config());
    let meter = key("prairie", "m-501");
    // 2025-11-30T23:30 CST is already Dec 1 in UTC: one local day of November's 30.
    let ts = DEC_START - 30 * 60_000;
    let bills = send(&mut pipeline, &meter, ts, &[(ts, 5_000)]);
    // 10.00 × 1/30 = 0.333… → 0.33.
    assert_eq!(by_period(&bills)["2025-11"], (0, 33, 33, false, false));
    // A read a day later: November stays prorated; December, with a read before it,
    // is charged in full.
    let bills = send(
        &mut pipeline,
        &meter,
        ts + DAY,
        &[(ts + DAY, 5_000 + 24 * RATE)],
    );
    let lines = by_period(&bills);
    assert_eq!(lines["2025-11"].1, 33);
    assert_eq!(lines["2025-12"].1, 1_000);
}

#[test]
fn a_silence_of_years_bills_at_most_the_24_months_before_it_ends() {
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let meter = key("demo", "m-silent");
    // 2020-01-15T00:00Z, then 2025-01-15T00:00Z: 59 months without a read between.
    let (first, last) = (1_579_046_400_000, 1_736_899_200_000);
    send(&mut pipeline, &meter, first, &[(first, 1_000)]);
    let bills = send(
        &mut pipeline,
        &meter,
        last,
        &[(last, 1_000 + 1_827 * 24 * 10)],
    );
    let lines = by_period(&bills);
    let skipped: Vec<_> = lines
        .iter()
        .filter(|(period, _)| !["2020-01", "2025-01"].contains(&period.as_str()))
        .collect();
    assert_eq!(skipped.len(), 24, "{lines:?}");
    assert_eq!(skipped[0].0, "2023-01");
    assert_eq!(skipped[23].0, "2024-12");
    // December 2024 (31 days at 10 L/h): 7,440 L, estimated, full fixed charge; final
    // at once, as the read that ends the silence is more than a late window into
    // January.
    assert_eq!(*skipped[23].1, (7_440, 800, 800 + 1_116, true, true));
}

/// A month whose reads are all suspect after the meter's newest billable read is
/// billed as a month without reads, whatever order the decisions came in. The meter
/// turns 40 L an hour from Oct 30 noon; on Nov 1 at 06:00 and 07:00 CDT it reports
/// registers no meter of its size can reach in a few hours (a jump of 9,000,000 L),
/// so November has no billable read. Its line: the full fixed charge, no litres
/// (nothing is known of November's use until a read after it is accepted), marked
/// estimated — billed, not silently left out.
///
/// The same reads with the jump first accepted — an operator accepts the 06:00 read,
/// then withdraws that decision by rejecting it (a later order on the same read
/// replaces the earlier) — bill November from the accepted reads first, then the
/// same line as in order. Before, that month kept its accepted-reads line, which
/// the data in order never makes (the orders property found it).
#[test]
fn a_month_of_only_suspect_reads_is_billed_as_one_without_reads() {
    use meterflow_model::{Decision, OrderAction, RegisterOrder};
    // Nov 1 06:00 and 07:00 CDT (UTC−5).
    let (six, seven) = (NOV_START + 6 * 3_600_000, NOV_START + 7 * 3_600_000);
    let jump = |ts: i64| REG_OCT_30 + 9_000_000 + ((ts - OCT_30_NOON) / 3_600_000) as u64 * RATE;
    // Oct 30 noon to Nov 1 00:00: 36 h × 40 = 1,440 L, October's fixed 0.65.
    let october = (OCT_30_NOON, REG_OCT_30);
    let last_october = (NOV_START - 3_600_000, REG_OCT_30 + 35 * RATE);
    // November: C held at the last October read (1,400 L into the meter) to the
    // month's end: 0 L; 10.00 fixed; estimated.
    const HELD_NOVEMBER: Terms = (0, 1_000, 1_000, true, false);

    let mut pipeline = Pipeline::new(chicago_config());
    let meter = key("prairie", "m-501");
    send(&mut pipeline, &meter, OCT_30_NOON, &[october, last_october]);
    let bills = send(
        &mut pipeline,
        &meter,
        seven,
        &[(six, jump(six)), (seven, jump(seven))],
    );
    assert_eq!(by_period(&bills).get("2025-11"), Some(&HELD_NOVEMBER));

    // The other way round: the 06:00 read accepted first, so November is billed
    // from the read and the one after it; then rejected.
    let order = |action| RegisterOrder {
        ts: six,
        action,
        decision: Decision {
            by: "ana".into(),
            why: "scenario".into(),
            at_ms: seven,
        },
        exception: None,
    };
    let mut pipeline = Pipeline::new(chicago_config());
    send(&mut pipeline, &meter, OCT_30_NOON, &[october, last_october]);
    pipeline.order(&meter, order(OrderAction::Accept));
    let accepted = send(
        &mut pipeline,
        &meter,
        seven,
        &[(six, jump(six)), (seven, jump(seven))],
    );
    let november = by_period(&accepted)["2025-11"];
    // Most of the jump falls in November (C interpolated at its start): 7,714,566 L.
    assert_eq!(november.0, 7_714_566, "accepted: {november:?}");
    pipeline.order(&meter, order(OrderAction::Reject));
    let rejected = send(&mut pipeline, &meter, seven, &[]);
    assert_eq!(by_period(&rejected).get("2025-11"), Some(&HELD_NOVEMBER));
}
