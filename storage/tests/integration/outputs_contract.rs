//! The outputs half of the `ReadingStore` contract — `write_outputs`, `bill`, `alerts`,
//! `district_hourly`, `exceptions`, `exception` — as checks over `&dyn ReadingStore`, run against both backends:
//! each check is its own test on a fresh embedded store, and all of them run in turn
//! in one fresh keyspace of a real Cassandra 5 (`scripts/cassandra start`), which is
//! why every check uses tenant names of its own.

use meterflow_model::alert::{AlertEvent, AlertKind, EpisodeState};
use meterflow_model::analytics::{DistrictUsage, Resolution};
use meterflow_model::billing::BillLine;
use meterflow_model::time::DAY_MS;
use meterflow_model::{Decision, ExceptionReason, ExceptionState, Outputs, Quality, ReadException};
use meterflow_storage::ReadingStore;
use meterflow_storage::resilience::RetryConfig;
use meterflow_storage::scylla::{ScyllaConfig, ScyllaStore};
use scylla::client::session::Session;

use crate::servers;
use crate::utils::{
    bill, dead_letter, meter_batch, meter_key, meter_state, open, sealed_batch, stored_reading,
};

/// 2025-11-22T08:00:00Z, an hour start near a real date.
const BASE_HOUR: i64 = 1_763_798_400_000;
const HOUR_MS: i64 = 3_600_000;

fn alert(
    tenant: &str,
    meter: &str,
    kind: AlertKind,
    opened_at: i64,
    state: EpisodeState,
    at: i64,
) -> AlertEvent {
    AlertEvent {
        tenant: tenant.into(),
        meter: meter.into(),
        kind,
        priority: kind.priority(),
        state,
        opened_at,
        at,
        detail: format!("{} {state:?} at {at}", kind.name()),
        revision: AlertEvent::first_revision(at, state),
    }
}

/// An hour row with every field set the way analytics sets it for hour rows; even
/// usages come with a bulk meter's inflow (120 L more), odd ones without.
fn hour(tenant: &str, district: &str, start_ms: i64, usage_l: u64) -> DistrictUsage {
    let mut row = DistrictUsage::new(tenant, district, Resolution::Hour, start_ms);
    row.usage_l = usage_l;
    row.meters = usage_l % 7 + 1;
    row.inflow_l = usage_l.is_multiple_of(2).then_some(usage_l + 120);
    for meter_l in [0, usage_l / 3, usage_l / 2, usage_l] {
        row.meter_hour_sketch.add(meter_l);
    }
    row.refresh_derived();
    row
}

fn outputs(
    bills: Vec<BillLine>,
    alerts: Vec<AlertEvent>,
    districts: Vec<DistrictUsage>,
) -> Outputs {
    Outputs {
        bills,
        alerts,
        districts,
        ..Outputs::default()
    }
}

fn all_alerts(store: &dyn ReadingStore, tenant: &str) -> Vec<AlertEvent> {
    store.alerts(tenant, false, 1_000).unwrap()
}

fn all_hours(store: &dyn ReadingStore, tenant: &str, district: &str) -> Vec<DistrictUsage> {
    store
        .district_hourly(tenant, district, i64::MIN, i64::MAX)
        .unwrap()
}

// ---- the checks -------------------------------------------------------------------

fn bills_round_trip_and_the_latest_line_wins(store: &dyn ReadingStore) {
    let t = "bills-rt";
    let first = bill(t, "2025-11", "m1", 12_345);
    let other_meter = bill(t, "2025-11", "m2", 3);
    store
        .write_outputs(&outputs(
            vec![first.clone(), other_meter.clone()],
            vec![],
            vec![],
        ))
        .unwrap();
    assert_eq!(store.bill(t, "2025-11", "m1").unwrap(), Some(first));
    assert_eq!(store.bill(t, "2025-11", "m2").unwrap(), Some(other_meter));
    assert_eq!(store.bill(t, "2025-10", "m1").unwrap(), None);
    assert_eq!(store.bill(t, "2025-11", "m3").unwrap(), None);

    // A later line replaces the row whole (fewer tiers, final, not estimated).
    let mut closed = bill(t, "2025-11", "m1", 20_000);
    closed.tiers.truncate(1);
    closed.final_ = true;
    closed.estimated = false;
    store
        .write_outputs(&outputs(vec![closed.clone()], vec![], vec![]))
        .unwrap();
    assert_eq!(
        store.bill(t, "2025-11", "m1").unwrap(),
        Some(closed.clone())
    );

    // Within one call, the later line of a meter wins.
    let newer = bill(t, "2025-11", "m1", 30_001);
    store
        .write_outputs(&outputs(vec![closed, newer.clone()], vec![], vec![]))
        .unwrap();
    assert_eq!(store.bill(t, "2025-11", "m1").unwrap(), Some(newer));

    // A bill without tiers round-trips too.
    let mut bare = bill(t, "2025-12", "m1", 0);
    bare.tiers.clear();
    store
        .write_outputs(&outputs(vec![bare.clone()], vec![], vec![]))
        .unwrap();
    assert_eq!(store.bill(t, "2025-12", "m1").unwrap(), Some(bare));
}

fn writing_the_same_outputs_twice_leaves_the_same_rows(store: &dyn ReadingStore) {
    let t = "idem";
    let out = outputs(
        (0..30)
            .map(|i| bill(t, "2025-11", &format!("m{i}"), 1_000 * i))
            .collect(),
        (0..30)
            .map(|i| {
                alert(
                    t,
                    &format!("m{i}"),
                    AlertKind::ALL[i as usize % AlertKind::ALL.len()],
                    BASE_HOUR + i * 7 * HOUR_MS,
                    if i % 3 == 0 {
                        EpisodeState::Cleared
                    } else {
                        EpisodeState::Opened
                    },
                    BASE_HOUR + i * 7 * HOUR_MS + 60_000,
                )
            })
            .collect(),
        (0..60)
            .map(|i| hour(t, "north", BASE_HOUR + i * HOUR_MS, 100 + i as u64))
            .collect(),
    );
    store.write_outputs(&out).unwrap();
    let bills_once: Vec<_> = (0..30)
        .map(|i| store.bill(t, "2025-11", &format!("m{i}")).unwrap())
        .collect();
    let alerts_once = all_alerts(store, t);
    let hours_once = all_hours(store, t, "north");
    assert!(bills_once.iter().all(Option::is_some));
    assert_eq!(alerts_once.len(), 30);
    assert_eq!(hours_once.len(), 60);

    store.write_outputs(&out).unwrap();
    // Every row twice in one call, too.
    let mut doubled = out.clone();
    doubled.bills.extend(out.bills.iter().cloned());
    doubled.alerts.extend(out.alerts.iter().cloned());
    doubled.districts.extend(out.districts.iter().cloned());
    store.write_outputs(&doubled).unwrap();

    let bills_again: Vec<_> = (0..30)
        .map(|i| store.bill(t, "2025-11", &format!("m{i}")).unwrap())
        .collect();
    assert_eq!(bills_again, bills_once);
    assert_eq!(all_alerts(store, t), alerts_once);
    assert_eq!(all_hours(store, t, "north"), hours_once);
    assert_eq!(hours_once, out.districts);
}

fn alert_episodes_keep_their_latest_event(store: &dyn ReadingStore) {
    let t = "latest";
    let opened_at = BASE_HOUR + 5 * 60_000;
    let ev = |state, at| alert(t, "m1", AlertKind::Leak, opened_at, state, at);
    let opened = ev(EpisodeState::Opened, opened_at);
    let updated = ev(EpisodeState::Updated, opened_at + HOUR_MS);
    let cleared = ev(EpisodeState::Cleared, opened_at + 2 * HOUR_MS);

    store
        .write_outputs(&outputs(vec![], vec![opened.clone()], vec![]))
        .unwrap();
    assert_eq!(all_alerts(store, t), std::slice::from_ref(&opened));
    assert_eq!(
        store.alerts(t, true, 10).unwrap(),
        std::slice::from_ref(&opened)
    );

    store
        .write_outputs(&outputs(vec![], vec![updated.clone()], vec![]))
        .unwrap();
    assert_eq!(
        all_alerts(store, t),
        std::slice::from_ref(&updated),
        "one row per episode"
    );

    store
        .write_outputs(&outputs(vec![], vec![cleared.clone()], vec![]))
        .unwrap();
    assert_eq!(all_alerts(store, t), std::slice::from_ref(&cleared));
    assert!(store.alerts(t, true, 10).unwrap().is_empty());

    // Replaying older events (a resent batch) does not reopen the episode.
    store
        .write_outputs(&outputs(
            vec![],
            vec![opened.clone(), updated.clone()],
            vec![],
        ))
        .unwrap();
    assert_eq!(all_alerts(store, t), std::slice::from_ref(&cleared));

    // Within one call, the latest event wins whatever its position; an opened and a
    // cleared event at the same instant leave the episode cleared.
    let second_at = opened_at + 3 * HOUR_MS;
    let ev2 = |state, at| alert(t, "m1", AlertKind::Leak, second_at, state, at);
    let closed_at_once = ev2(EpisodeState::Cleared, second_at);
    store
        .write_outputs(&outputs(
            vec![],
            vec![closed_at_once.clone(), ev2(EpisodeState::Opened, second_at)],
            vec![],
        ))
        .unwrap();
    assert_eq!(all_alerts(store, t), [closed_at_once, cleared.clone()]);

    // A new episode of the same meter and kind is a row of its own.
    let third_at = opened_at + 4 * HOUR_MS;
    let reopened = alert(
        t,
        "m1",
        AlertKind::Leak,
        third_at,
        EpisodeState::Opened,
        third_at,
    );
    store
        .write_outputs(&outputs(vec![], vec![reopened.clone()], vec![]))
        .unwrap();
    assert_eq!(all_alerts(store, t).len(), 3);
    assert_eq!(
        store.alerts(t, true, 10).unwrap(),
        std::slice::from_ref(&reopened)
    );

    // The highest revision is the episode's word, whatever its `at` (alerting folded
    // the window again): the open episode is withdrawn — listed as such, not open —
    // and the first one's clearing moves back an hour.
    let withdrawn = AlertEvent {
        state: EpisodeState::Withdrawn,
        revision: reopened.revision + 1,
        ..reopened
    };
    let cleared_earlier = AlertEvent {
        at: cleared.at - HOUR_MS,
        revision: withdrawn.revision + 1,
        ..cleared.clone()
    };
    store
        .write_outputs(&outputs(
            vec![],
            vec![cleared_earlier.clone(), withdrawn.clone()],
            vec![],
        ))
        .unwrap();
    assert!(store.alerts(t, true, 10).unwrap().is_empty());
    let stored = all_alerts(store, t);
    assert_eq!(stored[0], withdrawn, "revision read back too");
    assert_eq!(stored[2], cleared_earlier);
}

fn alerts_come_newest_first_filtered_and_limited(store: &dyn ReadingStore) {
    let t = "alert-order";
    // Episodes opened over four UTC days, newest last in the input; three of them
    // share an opened_at (ties: meter, then kind name, both descending).
    let tie = BASE_HOUR + DAY_MS;
    let events = vec![
        alert(
            t,
            "m1",
            AlertKind::Leak,
            BASE_HOUR - 2 * DAY_MS,
            EpisodeState::Opened,
            BASE_HOUR - 2 * DAY_MS,
        ),
        alert(
            t,
            "m2",
            AlertKind::Burst,
            BASE_HOUR,
            EpisodeState::Cleared,
            BASE_HOUR + 600_000,
        ),
        alert(
            t,
            "m1",
            AlertKind::Freeze,
            BASE_HOUR + 1,
            EpisodeState::Updated,
            BASE_HOUR + 2,
        ),
        alert(t, "m1", AlertKind::Backflow, tie, EpisodeState::Opened, tie),
        alert(
            t,
            "m1",
            AlertKind::Tamper,
            tie,
            EpisodeState::Cleared,
            tie + 5,
        ),
        alert(
            t,
            "m1-b",
            AlertKind::LowBattery,
            tie,
            EpisodeState::Opened,
            tie,
        ),
        alert(
            t,
            "m3",
            AlertKind::NoCommunication,
            BASE_HOUR + 2 * DAY_MS,
            EpisodeState::Opened,
            BASE_HOUR + 2 * DAY_MS,
        ),
    ];
    store
        .write_outputs(&outputs(vec![], events.clone(), vec![]))
        .unwrap();
    let newest_first = vec![
        events[6].clone(),
        events[5].clone(), // m1-b > m1
        events[4].clone(), // tamper > backflow
        events[3].clone(),
        events[2].clone(),
        events[1].clone(),
        events[0].clone(),
    ];
    assert_eq!(all_alerts(store, t), newest_first);
    let open: Vec<_> = newest_first
        .iter()
        .filter(|e| e.state != EpisodeState::Cleared)
        .cloned()
        .collect();
    assert_eq!(store.alerts(t, true, 100).unwrap(), open);
    for limit in 1..=newest_first.len() {
        assert_eq!(
            store.alerts(t, false, limit).unwrap(),
            newest_first[..limit],
            "limit {limit}"
        );
        assert_eq!(
            store.alerts(t, true, limit).unwrap(),
            open[..limit.min(open.len())],
            "open_only, limit {limit}"
        );
    }
    assert!(store.alerts(t, false, 0).unwrap().is_empty());
    assert!(store.alerts(t, true, 0).unwrap().is_empty());
    assert!(store.alerts("alert-none", false, 10).unwrap().is_empty());
}

fn district_hours_come_ascending_within_bounds(store: &dyn ReadingStore) {
    let (t, d) = ("hours", "north");
    // Every 5 hours over three UTC days, written newest first, plus cache-only rows.
    let hours: Vec<_> = (0..15)
        .map(|i| hour(t, d, BASE_HOUR + i * 5 * HOUR_MS, 1_000 + i as u64))
        .collect();
    let mut rows: Vec<_> = hours.iter().rev().cloned().collect();
    rows.push(DistrictUsage::new(
        t,
        d,
        Resolution::Minute,
        BASE_HOUR + 60_000,
    ));
    rows.push(DistrictUsage::new(
        t,
        d,
        Resolution::Day,
        BASE_HOUR - 8 * HOUR_MS,
    ));
    store.write_outputs(&outputs(vec![], vec![], rows)).unwrap();

    assert_eq!(all_hours(store, t, d), hours, "hour rows only, ascending");
    let inflows: Vec<_> = all_hours(store, t, d)[..3]
        .iter()
        .map(|row| row.inflow_l)
        .collect();
    assert_eq!(inflows, [Some(1_120), None, Some(1_122)], "inflow, or none");
    let at = |i: i64| BASE_HOUR + i * 5 * HOUR_MS;
    assert_eq!(
        store.district_hourly(t, d, at(2), at(9)).unwrap(),
        hours[2..9],
        "from inclusive, to exclusive"
    );
    assert_eq!(
        store.district_hourly(t, d, at(2) + 1, at(9) + 1).unwrap(),
        hours[3..10]
    );
    assert_eq!(
        store.district_hourly(t, d, at(14), i64::MAX).unwrap(),
        hours[14..]
    );
    assert!(
        store
            .district_hourly(t, d, at(3), at(3))
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .district_hourly(t, d, at(9), at(3))
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .district_hourly(t, d, at(0) - DAY_MS, at(0))
            .unwrap()
            .is_empty()
    );

    // An hour rewritten later (more meters reported) is replaced whole.
    let mut grown = hour(t, d, at(4), 5_000);
    grown.meter_hour_sketch.add(9_999);
    // Every inflow field is carried, the day-row ones too.
    grown.inflow_night_hour_l = [Some(3), None];
    grown.refresh_derived();
    assert_eq!(grown.inflow_night_flow_lph, Some(3));
    store
        .write_outputs(&outputs(vec![], vec![], vec![grown.clone()]))
        .unwrap();
    assert_eq!(store.district_hourly(t, d, at(4), at(5)).unwrap(), [grown]);

    // A row whose sketch is still empty (the hour just opened) round-trips too.
    let fresh = DistrictUsage::new(t, d, Resolution::Hour, at(20));
    store
        .write_outputs(&outputs(vec![], vec![], vec![fresh.clone()]))
        .unwrap();
    assert_eq!(
        store.district_hourly(t, d, at(20), at(21)).unwrap(),
        [fresh]
    );
}

fn tenants_and_districts_never_see_each_others_rows(store: &dyn ReadingStore) {
    // `iso` is a byte prefix of `iso-2`, `n` of `n-2` and `m` of `m-2`.
    let (a, b) = ("iso", "iso-2");
    store
        .write_outputs(&outputs(
            vec![bill(a, "2025-11", "m", 1), bill(b, "2025-11", "m", 2)],
            vec![
                alert(
                    a,
                    "m",
                    AlertKind::Leak,
                    BASE_HOUR,
                    EpisodeState::Opened,
                    BASE_HOUR,
                ),
                alert(
                    b,
                    "m",
                    AlertKind::Leak,
                    BASE_HOUR,
                    EpisodeState::Opened,
                    BASE_HOUR + 1,
                ),
            ],
            vec![
                hour(a, "n", BASE_HOUR, 10),
                hour(a, "n-2", BASE_HOUR, 20),
                hour(b, "n", BASE_HOUR, 30),
            ],
        ))
        .unwrap();

    assert_eq!(store.bill(a, "2025-11", "m").unwrap().unwrap().usage_l, 1);
    assert_eq!(store.bill(b, "2025-11", "m").unwrap().unwrap().usage_l, 2);
    assert_eq!(store.bill(a, "2025-11", "m-2").unwrap(), None);
    assert_eq!(store.bill("is", "2025-11", "m").unwrap(), None);

    let at = |tenant| -> Vec<i64> { all_alerts(store, tenant).iter().map(|e| e.at).collect() };
    assert_eq!(at(a), [BASE_HOUR]);
    assert_eq!(at(b), [BASE_HOUR + 1]);
    assert!(at("is").is_empty());
    assert!(at("").is_empty());

    let usage = |tenant, district| -> Vec<u64> {
        all_hours(store, tenant, district)
            .iter()
            .map(|h| h.usage_l)
            .collect()
    };
    assert_eq!(usage(a, "n"), [10]);
    assert_eq!(usage(a, "n-2"), [20]);
    assert_eq!(usage(b, "n"), [30]);
    assert!(usage(b, "n-2").is_empty());
    assert!(usage(a, "").is_empty());
}

fn exception(tenant: &str, meter: &str, ts: i64, state: ExceptionState) -> ReadException {
    ReadException {
        tenant: tenant.into(),
        meter: meter.into(),
        ts,
        reg: 9_000,
        reason: ExceptionReason::Regression,
        state,
        received_at: ts + 5,
        decision: (state != ExceptionState::Open).then(|| Decision {
            by: "ana".into(),
            why: "field visit, reader fault".into(),
            at_ms: ts + 60_000,
        }),
    }
}

/// Exceptions are upserted per (meter, ts) — the later word wins, within a call and
/// across calls — and listed in (meter, ts) order, filtered by state and limited.
fn exceptions_upsert_and_filter_by_state(store: &dyn ReadingStore) {
    let t = "exceptions";
    let open = |meter, hour| exception(t, meter, BASE_HOUR + hour * HOUR_MS, ExceptionState::Open);
    let written = Outputs {
        exceptions: vec![open("m2", 1), open("m1", 3), open("m1", 2)],
        ..Outputs::default()
    };
    store.write_outputs(&written).unwrap();
    let rejected = exception(t, "m1", BASE_HOUR + 3 * HOUR_MS, ExceptionState::Rejected);
    store
        .write_outputs(&Outputs {
            exceptions: vec![open("m1", 3), rejected.clone()],
            ..Outputs::default()
        })
        .unwrap();
    let all = store.exceptions(t, None, 10).unwrap();
    assert_eq!(all, [open("m1", 2), rejected.clone(), open("m2", 1)]);
    assert_eq!(
        store.exceptions(t, Some(ExceptionState::Open), 10).unwrap(),
        [open("m1", 2), open("m2", 1)]
    );
    assert_eq!(
        store.exceptions(t, Some(ExceptionState::Open), 1).unwrap(),
        [open("m1", 2)]
    );
    assert_eq!(
        store
            .exceptions(t, Some(ExceptionState::Rejected), 10)
            .unwrap(),
        std::slice::from_ref(&rejected)
    );
    assert_eq!(
        store.exception(t, "m1", rejected.ts).unwrap(),
        Some(rejected)
    );
    assert_eq!(store.exception(t, "m1", BASE_HOUR).unwrap(), None);
    assert!(
        store
            .exceptions("no-such-tenant", None, 10)
            .unwrap()
            .is_empty()
    );
}

fn outputs_without_durable_rows_write_nothing(store: &dyn ReadingStore) {
    let t = "empty";
    store.write_outputs(&Outputs::default()).unwrap();
    store
        .write_outputs(&outputs(
            vec![],
            vec![],
            vec![
                DistrictUsage::new(t, "north", Resolution::Minute, BASE_HOUR),
                DistrictUsage::new(t, "north", Resolution::Day, BASE_HOUR),
            ],
        ))
        .unwrap();
    assert!(all_hours(store, t, "north").is_empty());
    assert!(all_alerts(store, t).is_empty());
    assert_eq!(store.bill(t, "2025-11", "m").unwrap(), None);
    assert!(store.is_ready());
}

/// `commit` makes a group's readings, states, dead letters and durable outputs
/// readable together, and is idempotent like its halves.
fn a_group_commit_stores_readings_and_outputs_together(store: &dyn ReadingStore) {
    let t = "group";
    let key = meter_key(t, "m1");
    let readings = vec![
        stored_reading(BASE_HOUR, 1_000, Quality::Actual),
        stored_reading(BASE_HOUR + HOUR_MS, 1_250, Quality::Actual),
    ];
    let batches = [sealed_batch(
        1,
        vec![meter_batch(
            key.clone(),
            readings.clone(),
            meter_state(2, 250),
        )],
        vec![dead_letter(t, BASE_HOUR, 1)],
    )];
    let derived = outputs(
        vec![bill(t, "2025-11", "m1", 250)],
        vec![alert(
            t,
            "m1",
            AlertKind::Leak,
            BASE_HOUR,
            EpisodeState::Opened,
            BASE_HOUR,
        )],
        vec![hour(t, "north", BASE_HOUR, 250)],
    );
    for _ in 0..2 {
        store.commit(&batches, &derived).unwrap();
        assert_eq!(store.readings(&key, 0, i64::MAX, 10).unwrap(), readings);
        assert_eq!(store.meter_state(&key).unwrap(), Some(meter_state(2, 250)));
        assert_eq!(store.dead_letters(t, 10).unwrap().len(), 1);
        assert_eq!(
            store.bill(t, "2025-11", "m1").unwrap().as_ref(),
            derived.bills.first()
        );
        assert_eq!(all_alerts(store, t), derived.alerts);
        assert_eq!(all_hours(store, t, "north").len(), 1);
    }
    // A group without derived rows stores its readings alone.
    let quiet = meter_key(t, "m2");
    store
        .commit(
            &[sealed_batch(
                2,
                vec![meter_batch(
                    quiet.clone(),
                    readings.clone(),
                    meter_state(1, 0),
                )],
                vec![],
            )],
            &Outputs::default(),
        )
        .unwrap();
    assert_eq!(store.readings(&quiet, 0, i64::MAX, 10).unwrap(), readings);
}

/// One contract check, run against any store.
type Check = fn(&dyn ReadingStore);

/// Every check, by name, in the order the ScyllaDB test runs them.
const CHECKS: &[(&str, Check)] = &[
    (
        "bills_round_trip_and_the_latest_line_wins",
        bills_round_trip_and_the_latest_line_wins,
    ),
    (
        "writing_the_same_outputs_twice_leaves_the_same_rows",
        writing_the_same_outputs_twice_leaves_the_same_rows,
    ),
    (
        "alert_episodes_keep_their_latest_event",
        alert_episodes_keep_their_latest_event,
    ),
    (
        "alerts_come_newest_first_filtered_and_limited",
        alerts_come_newest_first_filtered_and_limited,
    ),
    (
        "district_hours_come_ascending_within_bounds",
        district_hours_come_ascending_within_bounds,
    ),
    (
        "tenants_and_districts_never_see_each_others_rows",
        tenants_and_districts_never_see_each_others_rows,
    ),
    (
        "outputs_without_durable_rows_write_nothing",
        outputs_without_durable_rows_write_nothing,
    ),
    (
        "exceptions_upsert_and_filter_by_state",
        exceptions_upsert_and_filter_by_state,
    ),
    (
        "a_group_commit_stores_readings_and_outputs_together",
        a_group_commit_stores_readings_and_outputs_together,
    ),
];

// ---- embedded -----------------------------------------------------------------------

mod embedded {
    use super::*;

    fn run(check: Check) {
        let dir = tempfile::tempdir().unwrap();
        check(&open(&dir));
    }

    #[test]
    fn embedded_bills_round_trip_and_the_latest_line_wins() {
        run(bills_round_trip_and_the_latest_line_wins);
    }

    #[test]
    fn embedded_writing_the_same_outputs_twice_leaves_the_same_rows() {
        run(writing_the_same_outputs_twice_leaves_the_same_rows);
    }

    #[test]
    fn embedded_alert_episodes_keep_their_latest_event() {
        run(alert_episodes_keep_their_latest_event);
    }

    #[test]
    fn embedded_alerts_come_newest_first_filtered_and_limited() {
        run(alerts_come_newest_first_filtered_and_limited);
    }

    #[test]
    fn embedded_district_hours_come_ascending_within_bounds() {
        run(district_hours_come_ascending_within_bounds);
    }

    #[test]
    fn embedded_tenants_and_districts_never_see_each_others_rows() {
        run(tenants_and_districts_never_see_each_others_rows);
    }

    #[test]
    fn embedded_exceptions_upsert_and_filter_by_state() {
        run(exceptions_upsert_and_filter_by_state);
    }

    #[test]
    fn embedded_outputs_without_durable_rows_write_nothing() {
        run(outputs_without_durable_rows_write_nothing);
    }

    #[test]
    fn embedded_a_group_commit_stores_readings_and_outputs_together() {
        run(a_group_commit_stores_readings_and_outputs_together);
    }

    #[test]
    fn embedded_every_check_passes_in_one_store() {
        // Checks use their own tenants, so they also pass side by side, as in the
        // ScyllaDB run.
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for (_, check) in CHECKS {
            check(&store);
        }
    }

    #[test]
    fn embedded_outputs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let t = "reopen";
        let written = outputs(
            vec![bill(t, "2025-11", "m1", 42)],
            vec![alert(
                t,
                "m1",
                AlertKind::Burst,
                BASE_HOUR,
                EpisodeState::Opened,
                BASE_HOUR,
            )],
            vec![hour(t, "north", BASE_HOUR, 7)],
        );
        {
            let store = open(&dir);
            store.write_outputs(&written).unwrap();
        }
        let store = open(&dir);
        assert_eq!(
            store.bill(t, "2025-11", "m1").unwrap().as_ref(),
            written.bills.first()
        );
        assert_eq!(store.alerts(t, true, 10).unwrap(), written.alerts);
        assert_eq!(all_hours(&store, t, "north"), written.districts);
    }
}

// ---- ScyllaDB (Cassandra 5) ---------------------------------------------------------

/// A driver session of the test's own; drops the test keyspace when it goes out of
/// scope (declare it before the store, so the store closes first).
struct Keyspace {
    runtime: tokio::runtime::Runtime,
    session: Session,
    name: String,
}

impl Keyspace {
    fn connect(contact_point: &str, name: String) -> Keyspace {
        let (runtime, session) = crate::utils::cql_session(contact_point);
        Keyspace {
            runtime,
            session,
            name,
        }
    }

    fn execute(&self, cql: &str) {
        self.runtime
            .block_on(self.session.query_unpaged(cql, ()))
            .unwrap_or_else(|e| panic!("{cql}: {e}"));
    }

    fn rows<R>(&self, cql: &str) -> Vec<R>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let result = self
            .runtime
            .block_on(self.session.query_unpaged(cql, ()))
            .unwrap_or_else(|e| panic!("{cql}: {e}"));
        result
            .into_rows_result()
            .unwrap()
            .rows::<R>()
            .unwrap()
            .collect::<Result<Vec<R>, _>>()
            .unwrap()
    }
}

impl Drop for Keyspace {
    fn drop(&mut self) {
        let cql = format!("DROP KEYSPACE IF EXISTS {}", self.name);
        if let Err(e) = self
            .runtime
            .block_on(self.session.query_unpaged(cql.as_str(), ()))
        {
            eprintln!("could not drop test keyspace {}: {e}", self.name);
        }
    }
}

fn scylla_test_config() -> ScyllaConfig {
    ScyllaConfig {
        // One node: RF 1, and LOCAL_QUORUM of one replica is that replica.
        replication_factor: 1,
        // Small batches, so the 30- and 60-row partitions above span several.
        max_batch_rows: 8,
        retry: RetryConfig {
            max_attempts: 3,
            initial_backoff_ms: 20,
            max_backoff_ms: 200,
        },
        ..ScyllaConfig::default()
    }
}

#[test]
fn scylla_outputs_contract() {
    let Some(cassandra) = servers::cassandra("scylla_outputs_contract") else {
        return;
    };
    let keyspace = Keyspace::connect(&cassandra, servers::unique_name("outputs"));
    let store = ScyllaStore::open(&[cassandra.as_str()], &keyspace.name, scylla_test_config())
        .expect("store opens");
    assert!(store.applied_migrations().unwrap().contains(&2));
    for (name, check) in CHECKS {
        eprintln!("scylla_outputs_contract: {name}");
        check(&store);
    }

    // What landed where: alerts and district hours carry their TTL, bills none; the
    // alert row's write time is its latest event's revision (the clearing moved
    // back, written last: the reopened episode's `at` × 1000, plus 2).
    let ks = &keyspace.name;
    let bills: Vec<(Option<i32>,)> =
        keyspace.rows(&format!("SELECT TTL(currency) FROM {ks}.bills LIMIT 1"));
    assert_eq!(bills, [(None,)]);
    let alerts: Vec<(Option<i32>, Option<i64>, String)> = keyspace.rows(&format!(
        "SELECT TTL(detail), WRITETIME(detail), state FROM {ks}.alerts \
         WHERE tenant = 'latest' AND day = '2025-11-22' AND opened_at = {}",
        BASE_HOUR + 5 * 60_000
    ));
    let (ttl, writetime, state) = &alerts[0];
    let days_400 = 400 * 86_400;
    assert!(
        ttl.is_some_and(|ttl| ttl > days_400 - 3_600 && ttl <= days_400),
        "{ttl:?}"
    );
    assert_eq!(
        *writetime,
        Some((BASE_HOUR + 5 * 60_000 + 4 * HOUR_MS) * 1_000 + 2)
    );
    assert_eq!(state, "cleared");
    let hours: Vec<(Option<i32>,)> = keyspace.rows(&format!(
        "SELECT TTL(usage_l) FROM {ks}.district_hourly \
         WHERE tenant = 'hours' AND district = 'north' AND day = '2025-11-22' LIMIT 1"
    ));
    assert!(
        hours[0].0.is_some_and(|ttl| ttl > days_400 - 3_600),
        "{hours:?}"
    );

    // Migration 2 is recorded like migration 1; if its record is lost, it runs again
    // without touching the tables or their rows.
    assert_eq!(store.applied_migrations().unwrap(), [1, 2, 3, 4, 5]);
    keyspace.execute(&format!(
        "DELETE FROM {ks}.schema_migrations WHERE version = 2"
    ));
    assert_eq!(store.migrate().unwrap(), [2]);
    assert_eq!(store.applied_migrations().unwrap(), [1, 2, 3, 4, 5]);
    assert_eq!(
        store.bill("iso", "2025-11", "m").unwrap().unwrap().usage_l,
        1
    );

    // Migration 3 adds the inflow columns: run again over a table that has them, it
    // leaves them and their values alone.
    let inflow = |store: &ScyllaStore| -> Vec<Option<u64>> {
        all_hours(store, "hours", "north")[..3]
            .iter()
            .map(|row| row.inflow_l)
            .collect()
    };
    assert_eq!(inflow(&store), [Some(1_120), None, Some(1_122)]);
    keyspace.execute(&format!(
        "DELETE FROM {ks}.schema_migrations WHERE version = 3"
    ));
    assert_eq!(store.migrate().unwrap(), [3]);
    assert_eq!(inflow(&store), [Some(1_120), None, Some(1_122)]);
    // A keyspace of the previous release (district_hourly without them, migration
    // 3 not recorded) gains them; its rows read with no inflow.
    for column in ["inflow_l", "inflow_night_hour_l", "inflow_night_flow_lph"] {
        keyspace.execute(&format!("ALTER TABLE {ks}.district_hourly DROP {column}"));
    }
    keyspace.execute(&format!(
        "DELETE FROM {ks}.schema_migrations WHERE version = 3"
    ));
    assert_eq!(store.migrate().unwrap(), [3]);
    drop(store);
    let store = ScyllaStore::open(&[cassandra.as_str()], &keyspace.name, scylla_test_config())
        .expect("store reopens");
    assert_eq!(inflow(&store), [None, None, None]);
    let mut written = hour("hours", "north", BASE_HOUR + 100 * HOUR_MS, 10);
    written.inflow_night_hour_l = [None, Some(2)];
    written.refresh_derived();
    store
        .write_outputs(&outputs(vec![], vec![], vec![written.clone()]))
        .unwrap();
    assert_eq!(
        store
            .district_hourly("hours", "north", written.start_ms, written.start_ms + 1)
            .unwrap(),
        [written]
    );
    drop(store);
}
