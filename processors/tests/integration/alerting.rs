//! Alerting scenarios and the one-open-episode property.

use std::collections::{BTreeMap, HashMap};

use meterflow_model::{
    AlertEvent, AlertKind, DeviceFlag, DeviceStatus, EpisodeState, Flags, MeterId, Priority,
    ProcessorsConfig, StoredReading, TenantId,
};
use proptest::prelude::*;

use crate::register_order::keep_episodes;
use crate::utils::{DAY, HOUR, Input, Pipeline, key, reading};

const START: i64 = 1_735_689_600_000; // 2025-01-01T00:00Z

fn events_of(out: &[AlertEvent], kind: AlertKind) -> Vec<EpisodeState> {
    out.iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.state)
        .collect()
}

/// Hourly reads from `from` with the given litres per hour; returns the reads and
/// the register after them.
fn hourly(from: i64, reg: u64, litres: &[u64]) -> (Vec<StoredReading>, u64) {
    let mut reg = reg;
    let reads = litres
        .iter()
        .enumerate()
        .map(|(i, l)| {
            reg += l;
            reading(from + (i as i64 + 1) * HOUR, reg)
        })
        .collect();
    (reads, reg)
}

#[test]
fn continuous_flow_raises_one_leak_that_clears_when_flow_stops() {
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let meter = key("demo", "leaky");
    let mut events = Vec::new();
    pipeline.feed(
        0,
        vec![Input::readings(&meter, vec![reading(START, 1_000)])],
    );
    // Two days of a dripping tap: 12 L every hour, sent a few hours at a time.
    let (reads, reg) = hourly(START, 1_000, &[12; 48]);
    for chunk in reads.chunks(5) {
        let (_, out) = pipeline.feed(0, vec![Input::readings(&meter, chunk.to_vec())]);
        events.extend(out.alerts);
    }
    let leak = events_of(&events, AlertKind::Leak);
    assert_eq!(leak[0], EpisodeState::Opened);
    assert_eq!(
        leak.iter().filter(|s| **s == EpisodeState::Opened).count(),
        1
    );
    assert!(!leak.contains(&EpisodeState::Cleared));
    let opened = events.iter().find(|e| e.kind == AlertKind::Leak).unwrap();
    assert_eq!(
        opened.at,
        START + 24 * HOUR,
        "after 24 h without a zero-flow hour"
    );
    assert_eq!(opened.priority, Priority::High);
    // The tap is fixed: two quiet hours.
    let (reads, _) = hourly(START + 48 * HOUR, reg, &[0, 0]);
    let (_, out) = pipeline.feed(0, vec![Input::readings(&meter, reads)]);
    assert_eq!(
        events_of(&out.alerts, AlertKind::Leak),
        vec![EpisodeState::Cleared]
    );
    assert!(!pipeline.states[&meter].alerts.is_open(AlertKind::Leak));
}

/// "False leaks from gaps": 10 h of hourly reads with flow, a comms outage
/// until hour 40 (the register grew 300 L meanwhile), then a normal day with quiet
/// nights. Before the rule needed evidence, the 30 h interval (or the estimates VEE
/// fills it with) read as continuous flow and opened a leak at hour 40.
#[test]
fn an_outage_never_opens_a_leak() {
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let meter = key("demo", "outage");
    let mut events = Vec::new();
    let (_, out) = pipeline.feed(
        0,
        vec![Input::readings(&meter, vec![reading(START, 1_000)])],
    );
    events.extend(out.alerts);
    let (before, reg) = hourly(START, 1_000, &[12; 10]);
    let (_, out) = pipeline.feed(0, vec![Input::readings(&meter, before)]);
    events.extend(out.alerts);
    // Back at hour 40 with 300 L more; then 24 hours with 6 quiet ones.
    let back = reading(START + 40 * HOUR, reg + 300);
    let (_, out) = pipeline.feed(0, vec![Input::readings(&meter, vec![back])]);
    events.extend(out.alerts);
    let day = [
        0, 0, 0, 0, 0, 0, 20, 40, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 40, 60, 30, 20, 10, 5,
    ];
    let (after, _) = hourly(START + 40 * HOUR, reg + 300, &day);
    let (_, out) = pipeline.feed(0, vec![Input::readings(&meter, after)]);
    events.extend(out.alerts);
    assert_eq!(events_of(&events, AlertKind::Leak), vec![], "{events:#?}");
}

/// "An outage keeps a leak open": a leak opened at hour 24 of dripping (re-announced
/// at 48); the meter goes silent for 30 h. VEE fills hours 49–77 with estimates,
/// which are no evidence: the rule is released at the first one (hour 49) and the
/// window restarts at the last (77). The drip seen again for 24 h of actual reads
/// re-opens it at hour 101 — not earlier.
#[test]
fn an_outage_releases_a_leak_and_evidence_reopens_it() {
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let meter = key("demo", "drip");
    let mut events = Vec::new();
    pipeline.feed(
        0,
        vec![Input::readings(&meter, vec![reading(START, 1_000)])],
    );
    let (reads, reg) = hourly(START, 1_000, &[12; 48]);
    let (_, out) = pipeline.feed(0, vec![Input::readings(&meter, reads)]);
    events.extend(out.alerts);
    let back_at = START + 78 * HOUR;
    let (_, out) = pipeline.feed(
        0,
        vec![Input::readings(&meter, vec![reading(back_at, reg + 40)])],
    );
    events.extend(out.alerts);
    let (reads, _) = hourly(back_at, reg + 40, &[12; 30]);
    let (_, out) = pipeline.feed(0, vec![Input::readings(&meter, reads)]);
    events.extend(out.alerts);
    let leak: Vec<(EpisodeState, i64)> = events
        .iter()
        .filter(|e| e.kind == AlertKind::Leak)
        .map(|e| (e.state, (e.at - START) / HOUR))
        .collect();
    assert_eq!(
        leak,
        vec![
            (EpisodeState::Opened, 24),
            (EpisodeState::Updated, 48),
            (EpisodeState::Cleared, 49),
            (EpisodeState::Opened, 101),
        ]
    );
}

/// A district's bulk (inflow) meter never stops flowing: the consumption rules (leak,
/// burst, no consumption) are not for it, while a customer with the same flow gets
/// its leak.
#[test]
fn a_bulk_meter_raises_no_consumption_alerts() {
    let mut config = ProcessorsConfig::default();
    let mut demo = config.defaults.clone();
    demo.bulk_meters
        .insert(MeterId::try_from("inlet").unwrap(), "north".to_string());
    config
        .tenants
        .insert(TenantId::try_from("demo").unwrap(), demo);
    let mut pipeline = Pipeline::new(config);
    let (inlet, customer) = (key("demo", "inlet"), key("demo", "tap"));
    let first = |meter| Input::readings(meter, vec![reading(START, 1_000)]);
    pipeline.feed(0, vec![first(&inlet), first(&customer)]);
    let (reads, _) = hourly(START, 1_000, &[12; 48]);
    let mut events = Vec::new();
    for chunk in reads.chunks(6) {
        let inputs = vec![
            Input::readings(&inlet, chunk.to_vec()),
            Input::readings(&customer, chunk.to_vec()),
        ];
        events.extend(pipeline.feed(0, inputs).1.alerts);
    }
    let leaks: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == AlertKind::Leak && e.state == EpisodeState::Opened)
        .map(|e| e.meter.as_str())
        .collect();
    assert_eq!(leaks, ["tap"]);
    assert!(events.iter().all(|e| e.meter != "inlet"), "{events:?}");
}

#[test]
fn a_burst_raises_a_critical_alert() {
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let meter = key("demo", "burst");
    let quarter = HOUR / 4;
    // 15-minute reads: normal, then 700 L per quarter hour (2,800 L/h).
    let regs = [5_000u64, 5_010, 5_710, 6_410, 7_110];
    let reads = regs
        .iter()
        .enumerate()
        .map(|(i, r)| reading(START + i as i64 * quarter, *r))
        .collect();
    let (_, out) = pipeline.feed(0, vec![Input::readings(&meter, reads)]);
    let burst: Vec<_> = out
        .alerts
        .iter()
        .filter(|e| e.kind == AlertKind::Burst)
        .collect();
    assert_eq!(burst.len(), 1);
    assert_eq!(burst[0].state, EpisodeState::Opened);
    assert_eq!(burst[0].priority, Priority::Critical);
    // Two intervals at burst flow make the 30 minutes.
    assert_eq!(burst[0].at, START + 3 * quarter);
}

#[test]
fn a_silent_meter_raises_no_communication_on_the_sweep() {
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let meter = key("demo", "quiet");
    pipeline.feed(0, vec![Input::readings(&meter, vec![reading(START, 100)])]);
    assert!(pipeline.sweep(START + 71 * HOUR).alerts.is_empty());
    assert_eq!(pipeline.sweep_due(&meter), Some(START + 72 * HOUR));
    let out = pipeline.sweep(START + 72 * HOUR);
    assert_eq!(
        events_of(&out.alerts, AlertKind::NoCommunication),
        vec![EpisodeState::Opened]
    );
    // Then again each update interval (a day by default) while the meter stays silent.
    let update = pipeline
        .sweep_due(&meter)
        .expect("an open episode is updated");
    assert!(update > START + 73 * HOUR);
    assert_eq!(
        events_of(&pipeline.sweep(update).alerts, AlertKind::NoCommunication),
        vec![EpisodeState::Updated]
    );
    assert!(
        pipeline.sweep(START + 73 * HOUR).alerts.is_empty(),
        "one episode, not one per sweep"
    );
    let mut back = reading(START + 74 * HOUR, 150);
    back.received_at = START + 74 * HOUR;
    let (_, out) = pipeline.feed(0, vec![Input::readings(&meter, vec![back])]);
    assert_eq!(
        events_of(&out.alerts, AlertKind::NoCommunication),
        vec![EpisodeState::Cleared]
    );
}

fn status(ts: i64, battery: u8, flags: &[DeviceFlag]) -> DeviceStatus {
    DeviceStatus {
        ts,
        seq: 0,
        received_at: ts,
        flags: flags.iter().copied().collect::<Flags>(),
        battery: Some(battery),
        rssi: Some(-90),
    }
}

#[test]
fn freeze_and_low_battery_come_from_the_status_and_the_water() {
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let meter = key("demo", "cold");
    let input = |ts, battery, flags: &[DeviceFlag], temp| {
        let mut r = reading(ts, 100);
        r.reading.temp = temp;
        Input {
            key: meter.clone(),
            readings: vec![r],
            status: Some(status(ts, battery, flags)),
        }
    };
    let (_, out) = pipeline.feed(0, vec![input(START, 8, &[DeviceFlag::Freeze], Some(35))]);
    assert_eq!(
        events_of(&out.alerts, AlertKind::LowBattery),
        vec![EpisodeState::Opened]
    );
    assert_eq!(
        events_of(&out.alerts, AlertKind::Freeze),
        vec![EpisodeState::Opened]
    );
    // 1.5 °C water confirms the freeze; battery 12 % is inside the hysteresis band.
    let (_, out) = pipeline.feed(
        0,
        vec![input(START + HOUR, 12, &[DeviceFlag::Freeze], Some(15))],
    );
    assert_eq!(
        events_of(&out.alerts, AlertKind::Freeze),
        vec![EpisodeState::Updated]
    );
    assert!(events_of(&out.alerts, AlertKind::LowBattery).is_empty());
    // Flag lowered but water still at 1.5 °C: the rule keeps the episode open.
    let (_, out) = pipeline.feed(0, vec![input(START + 2 * HOUR, 20, &[], Some(15))]);
    assert!(events_of(&out.alerts, AlertKind::Freeze).is_empty());
    assert_eq!(
        events_of(&out.alerts, AlertKind::LowBattery),
        vec![EpisodeState::Cleared]
    );
    let (_, out) = pipeline.feed(0, vec![input(START + 3 * HOUR, 20, &[], Some(60))]);
    assert_eq!(
        events_of(&out.alerts, AlertKind::Freeze),
        vec![EpisodeState::Cleared]
    );
}

#[test]
fn tamper_flags_open_critical_episodes() {
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let meter = key("demo", "t");
    let flags = [
        DeviceFlag::Tamper,
        DeviceFlag::Magnetic,
        DeviceFlag::CutCable,
    ];
    let (_, out) = pipeline.feed(
        0,
        vec![Input {
            key: meter.clone(),
            readings: vec![reading(START, 1)],
            status: Some(status(START, 90, &flags)),
        }],
    );
    let kinds: Vec<_> = out.alerts.iter().map(|e| (e.kind, e.priority)).collect();
    assert_eq!(
        kinds,
        vec![
            (AlertKind::Tamper, Priority::Critical),
            (AlertKind::Magnetic, Priority::Critical),
            (AlertKind::CutCable, Priority::Critical)
        ]
    );
}

/// One step of a random meter history.
#[derive(Clone, Debug)]
enum Step {
    Hour {
        litres: u64,
        reverse: u64,
        temp: Option<i16>,
    },
    Status {
        battery: u8,
        flags: u32,
    },
    Silence {
        hours: i64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (prop_oneof![Just(0u64), 1u64..50, 1_500u64..3_000], prop_oneof![Just(0u64), 0u64..30], proptest::option::of(-10i16..80))
            .prop_map(|(litres, reverse, temp)| Step::Hour { litres, reverse, temp }),
        1 => (0u8..=100, 0u32..1024).prop_map(|(battery, flags)| Step::Status { battery, flags }),
        1 => (1i64..100).prop_map(|hours| Step::Silence { hours }),
    ]
}

proptest! {
    /// Whatever happens, a (meter, kind) never has two open episodes, every step is
    /// of an episode that opened, and the episodes the stores would hold open are
    /// the state's. (In reading order, VEE's estimates for a gap land before a status
    /// sent during it, so episodes can be withdrawn here too.)
    #[test]
    fn an_episode_is_never_open_twice(
        steps in proptest::collection::vec(step(), 1..200),
        cuts in proptest::collection::vec(1usize..10, 1..10),
    ) {
        let mut pipeline = Pipeline::new(ProcessorsConfig::default());
        let meter = key("demo", "p");
        let (mut ts, mut reg, mut rev) = (START, 10_000u64, 0u64);
        // The latest step of each episode (kind, opened_at), as the stores keep it.
        let mut episodes: HashMap<(AlertKind, i64), EpisodeState> = HashMap::new();
        let mut inputs = Vec::new();
        let mut cut = cuts.iter().cycle();
        let mut check = |alerts: &[AlertEvent], state: &meterflow_model::MeterState| -> Result<(), TestCaseError> {
            for e in alerts {
                let known = episodes.contains_key(&(e.kind, e.opened_at));
                prop_assert!(e.state == EpisodeState::Opened || known, "{:?} {:?} of an unknown episode", e.kind, e.state);
                episodes.insert((e.kind, e.opened_at), e.state);
            }
            let mut open: Vec<_> = episodes.iter().filter(|(_, s)| s.is_open()).map(|((kind, _), _)| *kind).collect();
            open.sort();
            let mut kinds: Vec<_> = state.alerts.open().map(|a| a.kind).collect();
            kinds.sort();
            prop_assert_eq!(&open, &kinds, "stored open episodes against the state's");
            kinds.dedup();
            prop_assert_eq!(kinds.len(), open.len(), "two open episodes of a kind");
            Ok(())
        };
        for step in steps {
            match step {
                Step::Hour { litres, reverse, temp } => {
                    ts += HOUR;
                    reg += litres;
                    rev += reverse;
                    let mut r = reading(ts, reg);
                    r.reading.rev = rev;
                    r.reading.temp = temp;
                    inputs.push(Input::readings(&meter, vec![r]));
                }
                Step::Status { battery, flags } => {
                    let mut s = status(ts, battery, &[]);
                    s.flags = Flags::from_bits(flags).unwrap();
                    inputs.push(Input { key: meter.clone(), readings: vec![], status: Some(s) });
                }
                Step::Silence { hours } => {
                    ts += hours * HOUR;
                    let out = pipeline.sweep(ts + DAY);
                    check(&out.alerts, &pipeline.states.get(&meter).cloned().unwrap_or_default())?;
                }
            }
            if inputs.len() >= *cut.next().unwrap() {
                let (batch, out) = pipeline.feed(ts, std::mem::take(&mut inputs));
                check(&out.alerts, &batch.meters[0].state)?;
            }
        }
    }
}

/// The device flags this module's rules never raise: only statuses open them.
const DEVICE_ONLY: [(DeviceFlag, AlertKind); 3] = [
    (DeviceFlag::Tamper, AlertKind::Tamper),
    (DeviceFlag::Magnetic, AlertKind::Magnetic),
    (DeviceFlag::CutCable, AlertKind::CutCable),
];

/// One message: a reading and the status it carried; its seq grows with its time,
/// as a device numbers its messages.
fn message(meter: &meterflow_model::MeterKey, ts: i64, flags: &[DeviceFlag]) -> Input {
    Input {
        key: meter.clone(),
        readings: vec![reading(ts, 1_000)],
        status: Some(DeviceStatus {
            seq: ((ts - START) / HOUR) as u64,
            ..status(ts, 90, flags)
        }),
    }
}

fn steps_of(events: &[AlertEvent], kind: AlertKind) -> Vec<(EpisodeState, i64)> {
    events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| (e.state, (e.at - START) / HOUR))
        .collect()
}

/// "Device flags are lost inside a batch": a tamper-flagged message and a newer clean
/// one sealed in the same batch, in either arrival order, open the episode at the
/// flag and clear it at the clean message — as two batches would.
#[test]
fn a_flag_counts_whatever_else_its_batch_holds() {
    for clean_first in [false, true] {
        let mut pipeline = Pipeline::new(ProcessorsConfig::default());
        let meter = key("demo", "tamper");
        let flagged = message(&meter, START + HOUR, &[DeviceFlag::Tamper]);
        let clean = message(&meter, START + 2 * HOUR, &[]);
        let inputs = if clean_first {
            vec![clean, flagged]
        } else {
            vec![flagged, clean]
        };
        let (_, out) = pipeline.feed(0, inputs);
        assert_eq!(
            steps_of(&out.alerts, AlertKind::Tamper),
            vec![(EpisodeState::Opened, 1), (EpisodeState::Cleared, 2)],
            "clean first: {clean_first}"
        );
    }
}

/// "Episodes stuck open": a flagged message at hour 2, then an older clean one
/// (hour 1, late), then a newer clean one (hour 3). The late clean message is older
/// news and changes nothing; hour 3 clears the episode; the next flag (hour 4) opens
/// a new one — there is never more than one open.
#[test]
fn a_late_clean_message_neither_clears_nor_strands_an_episode() {
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let meter = key("demo", "stuck");
    let mut events = Vec::new();
    for (hour, flags) in [
        (2, &[DeviceFlag::Tamper][..]),
        (1, &[][..]),
        (3, &[][..]),
        (4, &[DeviceFlag::Tamper][..]),
    ] {
        let (_, out) = pipeline.feed(0, vec![message(&meter, START + hour * HOUR, flags)]);
        events.extend(out.alerts);
    }
    assert_eq!(
        steps_of(&events, AlertKind::Tamper),
        vec![
            (EpisodeState::Opened, 2),
            (EpisodeState::Cleared, 3),
            (EpisodeState::Opened, 4),
        ]
    );
    let open: Vec<_> = pipeline.states[&meter]
        .alerts
        .open()
        .map(|a| a.opened_at)
        .collect();
    assert_eq!(open, vec![START + 4 * HOUR]);
}

/// A flag raised only by a message that arrives after a newer clean one still gets
/// its episode: opened at the flag, cleared at the newer clean message.
#[test]
fn a_late_flag_still_counts() {
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let meter = key("demo", "late");
    let (_, first) = pipeline.feed(0, vec![message(&meter, START + 5 * HOUR, &[])]);
    assert!(first.alerts.is_empty());
    let (_, out) = pipeline.feed(
        0,
        vec![message(&meter, START + 2 * HOUR, &[DeviceFlag::Magnetic])],
    );
    assert_eq!(
        steps_of(&out.alerts, AlertKind::Magnetic),
        vec![(EpisodeState::Opened, 2), (EpisodeState::Cleared, 5)]
    );
    assert!(pipeline.states[&meter].alerts.open().next().is_none());
}

/// A meter's message history for the status properties: hours apart and flag sets
/// over the device-only flags.
fn status_history() -> impl Strategy<Value = Vec<(i64, Vec<DeviceFlag>)>> {
    proptest::collection::vec(
        (
            1i64..30,
            proptest::sample::subsequence(DEVICE_ONLY.map(|(f, _)| f).to_vec(), 0..=3),
        ),
        1..40,
    )
    .prop_map(|steps| {
        let mut hour = 0;
        steps
            .into_iter()
            .map(|(gap, flags)| {
                hour += gap;
                (hour, flags)
            })
            .collect()
    })
}

/// Feeds `messages` in batches of the given sizes (cycled); returns every event.
fn feed_in_batches(
    pipeline: &mut Pipeline,
    meter: &meterflow_model::MeterKey,
    messages: &[(i64, Vec<DeviceFlag>)],
    sizes: &[usize],
) -> Vec<AlertEvent> {
    let mut events = Vec::new();
    let mut rest = messages;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at((*size).min(rest.len()));
        let inputs = now
            .iter()
            .map(|(hour, flags)| message(meter, START + hour * HOUR, flags))
            .collect();
        events.extend(pipeline.feed(0, inputs).1.alerts);
        rest = later;
    }
    events
}

proptest! {
    /// In order, how messages are batched never changes the alert events: a flag in
    /// any message counts, whatever else its batch holds.
    #[test]
    fn device_alerts_do_not_depend_on_batching(
        messages in status_history(),
        sizes in proptest::collection::vec(1usize..8, 1..6),
    ) {
        let meter = key("demo", "b");
        let one_by_one = feed_in_batches(&mut Pipeline::new(ProcessorsConfig::default()), &meter, &messages, &[1]);
        let batched = feed_in_batches(&mut Pipeline::new(ProcessorsConfig::default()), &meter, &messages, &sizes);
        prop_assert_eq!(one_by_one, batched);
    }

    /// In any arrival order and batching: every flag raised in some message lies
    /// within an episode of its kind, every episode clears no earlier than it opened,
    /// at most one is open per kind, and at the end exactly the flags of the newest
    /// message are open.
    #[test]
    fn device_flags_count_in_any_arrival_order(
        messages in status_history(),
        order in Just(()).prop_perturb(|_, mut rng| rng.next_u64()),
        sizes in proptest::collection::vec(1usize..8, 1..6),
    ) {
        let mut shuffled = messages.clone();
        // A seeded Fisher–Yates, so a failing case replays from proptest's seed.
        let mut state = order;
        for i in (1..shuffled.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (state >> 33) as usize % (i + 1));
        }
        let meter = key("demo", "o");
        let mut pipeline = Pipeline::new(ProcessorsConfig::default());
        let events = feed_in_batches(&mut pipeline, &meter, &shuffled, &sizes);
        let newest = messages.last().expect("at least one message");
        for (flag, kind) in DEVICE_ONLY {
            // Episodes of this kind: opened_at → when cleared (None: open).
            let mut episodes: HashMap<i64, Option<i64>> = HashMap::new();
            for e in events.iter().filter(|e| e.kind == kind) {
                if e.state == EpisodeState::Withdrawn {
                    episodes.remove(&e.opened_at);
                    continue;
                }
                let end = (e.state == EpisodeState::Cleared).then_some(e.at);
                episodes.insert(e.opened_at, end);
            }
            prop_assert!(episodes.values().filter(|end| end.is_none()).count() <= 1);
            for (hour, flags) in &messages {
                let ts = START + hour * HOUR;
                if flags.contains(&flag) {
                    prop_assert!(
                        episodes.iter().any(|(opened, end)| *opened <= ts && end.is_none_or(|end| ts <= end)),
                        "{kind:?} raised at hour {hour} is in no episode: {events:#?}"
                    );
                }
            }
            for e in events.iter().filter(|e| e.kind == kind) {
                prop_assert!(e.at >= e.opened_at, "{e:?}");
            }
            prop_assert_eq!(
                pipeline.states[&meter].alerts.is_open(kind),
                newest.1.contains(&flag),
                "{:?} at the end", kind
            );
        }
    }
}

/// "Late data never changes what the in-order stream gives", for device flags: a
/// tamper flag at 02:00 and 06:00, clean at 04:00 and 08:00. In order: episodes
/// 02:00–04:00 and 06:00–08:00. Arriving 08:00, 02:00, 06:00, then 04:00 last: the
/// flags first make one episode 02:00–08:00; the clean 04:00 status splits it as in
/// order (the first clears at 04:00, 06:00 opens the second).
#[test]
fn a_late_clean_status_between_two_flags_splits_the_episode_as_in_order() {
    let meter = key("demo", "split");
    let history = [
        (2, &[DeviceFlag::Tamper][..]),
        (4, &[][..]),
        (6, &[DeviceFlag::Tamper][..]),
        (8, &[][..]),
    ];
    let episodes = |order: &[usize]| {
        let mut pipeline = Pipeline::new(ProcessorsConfig::default());
        let mut kept = BTreeMap::new();
        for &i in order {
            let (hour, flags) = history[i];
            let (_, out) = pipeline.feed(0, vec![message(&meter, START + hour * HOUR, flags)]);
            keep_episodes(&mut kept, &out.alerts);
        }
        kept
    };
    let at = |hour: i64| START + hour * HOUR;
    let in_order = episodes(&[0, 1, 2, 3]);
    assert_eq!(
        in_order,
        BTreeMap::from([
            ((AlertKind::Tamper, at(2)), Some(at(4))),
            ((AlertKind::Tamper, at(6)), Some(at(8))),
        ])
    );
    assert_eq!(
        episodes(&[3, 0, 2]),
        BTreeMap::from([((AlertKind::Tamper, at(2)), Some(at(8)))])
    );
    assert_eq!(episodes(&[3, 0, 2, 1]), in_order);
}

/// A device whose flags change with every message, all stamped with one old read's
/// time (a fault, or a hostile client): one status per time is kept, the one of the
/// greatest seq, so its window stays small. Its episode ends as that status says.
#[test]
fn flags_flapping_on_one_read_keep_one_status() {
    let mut pipeline = Pipeline::new(ProcessorsConfig::default());
    let meter = key("demo", "flap");
    let flapping = |seq: u64| {
        let flags: &[DeviceFlag] = if seq.is_multiple_of(2) {
            &[DeviceFlag::Tamper]
        } else {
            &[]
        };
        let mut input = message(&meter, START + HOUR, flags);
        input.status.as_mut().unwrap().seq = seq;
        input
    };
    for seq in 0..2_000 {
        pipeline.feed(0, vec![flapping(seq)]);
    }
    let alerts = &pipeline.states[&meter].alerts;
    assert_eq!(alerts.statuses.len(), 1);
    assert!(
        !alerts.is_open(AlertKind::Tamper),
        "the newest status is clean"
    );
    // An older message's word about that time changes nothing; a newer one's does.
    pipeline.feed(0, vec![flapping(1_000)]);
    assert!(!pipeline.states[&meter].alerts.is_open(AlertKind::Tamper));
    pipeline.feed(0, vec![flapping(2_000)]);
    assert!(pipeline.states[&meter].alerts.is_open(AlertKind::Tamper));
}
