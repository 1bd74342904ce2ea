//! The shard core driven directly: arrivals and ticks with the time passed in, no
//! threads, no store, no clock.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meterflow_model::topic::parse_client_id;
use std::collections::BTreeMap;

use meterflow_model::alert::AlertKind;
use meterflow_model::codec::binary::{decode_record, encode_record};
use meterflow_model::vee::MAX_WINDOW_READS;
use meterflow_model::{
    BillLine, Decision, ExceptionState, MeterKey, MeterState, OrderAction, ProcessorsConfig,
    Quality, Reading, RegisterOrder, Reject, Resolution, StoredReading, Uplink, codec, mac,
};
use meterflow_processors::ProcessorChain;
use proptest::prelude::*;

use super::ShardSettings;
use super::core::{Arrival, Now, Sealed, ShardCore, Step, WINDOW_ROWS_PAGE, WindowRows};
use crate::config::Config;
use crate::dead_letter_limit::DeadLetterRate;
use crate::metrics::PipelineMetrics;
use crate::tenants::Tenants;

/// 2026-03-02T00:00:00Z: every reading and `received_at` is counted from here.
const T0_MS: i64 = 1_772_409_600_000;
const LINGER: Duration = Duration::from_millis(20);
const RESEND_WINDOW_MS: i64 = 60_000;
const DEAD_LETTER_BURST: u32 = 3;
/// MAC key of `signed.m1`, hex.
const MAC_KEY_HEX: &str = "00112233445566778899aabbccddeeff";

const CONFIG: &str = r#"
[[tenants]]
id = "plain"

[[tenants]]
id = "signed"
require_mac = true
[tenants.meter_keys]
m1 = "00112233445566778899aabbccddeeff"
"#;

/// A shard core and the instant its clock started at.
struct Harness {
    core: ShardCore,
    start: Instant,
}

impl Harness {
    fn new(batch_readings: usize) -> Harness {
        Harness::with_burst(batch_readings, DEAD_LETTER_BURST)
    }

    fn with_burst(batch_readings: usize, dead_letter_burst: u32) -> Harness {
        Harness::with_chain(
            batch_readings,
            dead_letter_burst,
            ProcessorChain::standard(),
        )
    }

    /// A harness whose analytics flush every `interval_ms` of batch time.
    fn flushing_every(interval_ms: i64) -> Harness {
        let mut config = ProcessorsConfig::default();
        config.analytics.flush_interval_ms = interval_ms;
        let chain = ProcessorChain::for_tenants(config).expect("a valid configuration");
        Harness::with_chain(1_000, DEAD_LETTER_BURST, chain)
    }

    fn with_chain(
        batch_readings: usize,
        dead_letter_burst: u32,
        processors: ProcessorChain,
    ) -> Harness {
        Harness::build(batch_readings, dead_letter_burst, processors, usize::MAX)
    }

    /// A harness whose shard holds at most `held_meters` meters.
    fn holding(held_meters: usize) -> Harness {
        Harness::build(
            1_000,
            DEAD_LETTER_BURST,
            ProcessorChain::standard(),
            held_meters,
        )
    }

    fn build(
        batch_readings: usize,
        dead_letter_burst: u32,
        processors: ProcessorChain,
        held_meters: usize,
    ) -> Harness {
        let config = Config::from_toml(CONFIG).expect("test config");
        let settings = ShardSettings {
            limits: config.limits.clone(),
            batch_readings,
            linger: LINGER,
            resend_window_ms: RESEND_WINDOW_MS,
            sweep_interval: Duration::from_secs(60),
            dead_letter_rate: DeadLetterRate {
                burst: dead_letter_burst,
                refill_per_s: 1,
                capacity: 16,
            },
            held_meters,
        };
        let start = Instant::now();
        let core = ShardCore::new(
            0,
            settings,
            Arc::new(Tenants::from_config(&config)),
            processors,
            PipelineMetrics::register(),
            start,
        );
        Harness { core, start }
    }

    /// The time `ms` after the start, on both clocks.
    fn at(&self, ms: u64) -> Now {
        Now {
            instant: self.start + Duration::from_millis(ms),
            wall_ms: T0_MS + ms as i64,
        }
    }

    /// Offers `payload` from `meter` at `ms`, hydrating a never-seen meter (default
    /// state) when asked. Returns how many times the core asked for a state.
    fn offer(&mut self, meter: &MeterKey, payload: &[u8], ms: u64) -> usize {
        self.offer_with(meter, payload, None, ms)
    }

    fn offer_with(
        &mut self,
        meter: &MeterKey,
        payload: &[u8],
        refused: Option<Reject>,
        ms: u64,
    ) -> usize {
        let now = self.at(ms);
        let arrival = Arrival {
            identity: meter,
            topic: b"meters/test",
            payload,
            refused,
            received_at: now.wall_ms,
            received: now.instant,
            order: None,
        };
        let mut asked = 0;
        while let Step::NeedsState(key) = self.core.admit(&arrival, now.instant) {
            assert_eq!(&key, meter, "asks for the sender's state");
            asked += 1;
            assert!(asked < 2, "asks once, then takes it");
            self.core
                .hydrated(key, MeterState::default(), WindowRows::default());
        }
        asked
    }

    fn seal(&mut self, ms: u64) -> Sealed {
        let now = self.at(ms);
        self.core.seal(now).expect("something to seal")
    }
}

fn key(client_id: &str) -> MeterKey {
    parse_client_id(client_id).expect("valid client id")
}

/// An uplink of `n` readings, the newest 1 s before T0 + `seq` minutes.
fn uplink(seq: u64, n: usize) -> Uplink {
    let newest = T0_MS + seq as i64 * 60_000 - 1_000;
    let readings = (0..n)
        .map(|i| Reading {
            ts: newest - (n - 1 - i) as i64 * 900_000,
            reg: 1_000 + seq * 10 + i as u64,
            rev: 0,
            flow: 0,
            temp: None,
        })
        .collect();
    Uplink::new(seq, readings)
}

fn json(seq: u64, n: usize) -> Vec<u8> {
    codec::encode_json(&uplink(seq, n))
}

#[test]
fn a_meter_is_hydrated_once_then_its_readings_join_the_batch() {
    let mut shard = Harness::new(1_000);
    let m1 = key("plain.m1");
    assert_eq!(shard.offer(&m1, &json(1, 2), 0), 1);
    assert_eq!(
        shard.offer(&m1, &json(2, 3), 1),
        0,
        "state kept in the shard"
    );
    let sealed = shard.seal(2);
    let batch = &sealed.batch;
    assert_eq!(batch.meters.len(), 1);
    assert_eq!(batch.meters[0].messages, 2);
    assert_eq!(batch.meters[0].readings.len(), 5);
    assert_eq!(batch.meters[0].state.seq.watermark(), Some(2));
    assert_eq!(batch.now_ms, T0_MS + 2);
    assert_eq!(sealed.oldest, Some(shard.start));
    assert!(batch.dead_letters.is_empty());
    assert_eq!(
        shard.offer(&m1, &json(3, 1), 3),
        0,
        "state survives the seal"
    );
}

#[test]
fn a_state_read_from_the_store_decides_what_is_a_duplicate() {
    let mut shard = Harness::new(1_000);
    let m1 = key("plain.m1");
    let mut stored = MeterState::default();
    stored.seq.admit(1, T0_MS, &mut Vec::new());
    stored.seq.admit(2, T0_MS, &mut Vec::new());
    let arrival_payload = json(2, 1);
    let now = shard.at(0);
    let arrival = Arrival {
        identity: &m1,
        topic: b"t",
        payload: &arrival_payload,
        refused: None,
        received_at: now.wall_ms,
        received: now.instant,
        order: None,
    };
    assert_eq!(
        shard.core.admit(&arrival, now.instant),
        Step::NeedsState(m1.clone())
    );
    assert!(shard.core.seal(now).is_none(), "asking changed nothing");
    let rows = WindowRows::after_settled(&stored);
    shard.core.hydrated(m1.clone(), stored, rows);
    assert_eq!(shard.core.admit(&arrival, now.instant), Step::Taken);
    let sealed = shard.seal(1);
    let meter = &sealed.batch.meters[0];
    assert_eq!((meter.messages, meter.duplicates), (0, 1));
    assert!(meter.readings.is_empty(), "a resend is not stored again");
}

/// A meter's stored rows as a store keeps them: one per `ts`, the last written.
type StoredRows = BTreeMap<i64, StoredReading>;

/// Hourly reads at `T0 - hours_before[i]` hours, registers `regs[i]`, as one JSON
/// uplink with seq `seq`.
fn hourly_json(seq: u64, reads: &[(i64, u64)]) -> Vec<u8> {
    const HOUR_MS: i64 = 3_600_000;
    let readings = reads
        .iter()
        .map(|(hours_before, reg)| Reading {
            ts: T0_MS - hours_before * HOUR_MS,
            reg: *reg,
            rev: 0,
            flow: 0,
            temp: None,
        })
        .collect();
    codec::encode_json(&Uplink::new(seq, readings))
}

/// Offers `payload` from `meter` at `ms`, calling `hydrate` each time the core asks
/// for a state, as a runner reads the store. Returns how many times it asked.
fn offer_hydrating(
    shard: &mut Harness,
    meter: &MeterKey,
    payload: &[u8],
    ms: u64,
    mut hydrate: impl FnMut(&mut ShardCore, MeterKey),
) -> usize {
    let now = shard.at(ms);
    let arrival = Arrival {
        identity: meter,
        topic: b"t",
        payload,
        refused: None,
        received_at: now.wall_ms,
        received: now.instant,
        order: None,
    };
    let mut asked = 0;
    while let Step::NeedsState(key) = shard.core.admit(&arrival, now.instant) {
        hydrate(&mut shard.core, key);
        asked += 1;
    }
    asked
}

/// What a runner reads back of a meter: the state `persisted` (through its record,
/// as the store keeps it) and the rows after its settled point, page by page:
/// `page(from)` is the stored rows from `from` on, ascending.
fn read_back<'a, I>(persisted: &MeterState, page: impl Fn(i64) -> I) -> (MeterState, WindowRows)
where
    I: Iterator<Item = &'a StoredReading>,
{
    let state: MeterState = decode_record(&encode_record(persisted)).unwrap();
    let mut rows = WindowRows::after_settled(&state);
    while let Some(from) = rows.next_page() {
        rows.take_page(page(from).take(WINDOW_ROWS_PAGE).copied().collect());
    }
    (state, rows)
}

/// Offers `payload` from `meter` at `ms`, hydrating the meter, when asked, as a
/// runner does from a store holding `persisted` and `stored`: page by page.
fn offer_from_store(
    shard: &mut Harness,
    meter: &MeterKey,
    payload: &[u8],
    ms: u64,
    persisted: Option<&MeterState>,
    stored: &StoredRows,
) {
    offer_hydrating(shard, meter, payload, ms, |core, key| match persisted {
        Some(state) => {
            let (state, rows) = read_back(state, |from| stored.range(from..).map(|(_, row)| row));
            core.hydrated(key, state, rows);
        }
        None => core.hydrated(key, MeterState::default(), WindowRows::default()),
    });
}

/// Seals and keeps what a store would: the rows, and the last bill per period.
fn seal_into(
    shard: &mut Harness,
    ms: u64,
    stored: &mut StoredRows,
    bills: &mut BTreeMap<String, BillLine>,
) -> MeterState {
    let sealed = shard.seal(ms);
    let meter = &sealed.batch.meters[0];
    for row in &meter.readings {
        stored.insert(row.reading.ts, *row);
    }
    for bill in sealed.outputs.bills {
        bills.insert(bill.period.clone(), bill);
    }
    meter.state.clone()
}

#[test]
fn a_meter_hydrated_with_its_stored_rows_continues_as_if_never_persisted() {
    let m1 = key("plain.m1");
    // A gap between 8 h and 5 h before T0 (two estimates), then a late read in it
    // and a new read: after a restart (state through the record codec, the window
    // rebuilt from the rows), the rows and bills are those of no restart.
    let first = hourly_json(1, &[(10, 1_000), (9, 1_100), (6, 1_400), (5, 1_500)]);
    let late = hourly_json(2, &[(7, 1_250)]);
    let next = hourly_json(3, &[(4, 1_600)]);

    let mut steady = Harness::new(1_000);
    let (mut steady_rows, mut steady_bills) = (StoredRows::new(), BTreeMap::new());
    offer_from_store(&mut steady, &m1, &first, 0, None, &steady_rows);
    let persisted = seal_into(&mut steady, 1, &mut steady_rows, &mut steady_bills);
    assert!(
        !steady.core.meter_state(&m1).unwrap().vee.window.is_empty(),
        "the reads are in the window"
    );
    assert!(
        persisted.vee.window.is_empty(),
        "the batch carries no window"
    );
    assert!(
        steady_rows
            .values()
            .any(|r| r.quality == Quality::Estimated),
        "the gap has estimates"
    );
    let (mut rows, mut bills) = (steady_rows.clone(), steady_bills.clone());
    for (payload, ms) in [(&late, 2), (&next, 4)] {
        offer_from_store(&mut steady, &m1, payload, ms, None, &steady_rows);
        seal_into(&mut steady, ms + 1, &mut steady_rows, &mut steady_bills);
    }

    let mut restarted = Harness::new(1_000);
    offer_from_store(&mut restarted, &m1, &late, 2, Some(&persisted), &rows);
    seal_into(&mut restarted, 3, &mut rows, &mut bills);
    let state = restarted.core.meter_state(&m1).unwrap().clone();
    assert_eq!(rows[&(T0_MS - 7 * 3_600_000)].quality, Quality::Actual);
    // 1,250 L at 7 h before T0, 1,100 L at 9 h, the estimate at 8 h re-spread.
    assert_eq!(rows[&(T0_MS - 7 * 3_600_000)].interval_l, Some(75));
    assert_eq!(
        state.vee.window.len(),
        5,
        "the rebuilt window and the late read"
    );
    offer_from_store(&mut restarted, &m1, &next, 4, None, &rows);
    seal_into(&mut restarted, 5, &mut rows, &mut bills);
    assert_eq!(rows, steady_rows);
    assert_eq!(bills, steady_bills);
}

#[test]
fn window_rows_keep_reads_the_state_accepted_page_by_page() {
    let mut state = MeterState::default();
    state.seq.admit(5, T0_MS, &mut Vec::new());
    let mut rows = WindowRows::after_settled(&state);
    assert_eq!(
        rows.next_page(),
        Some(i64::MIN),
        "nothing settled: every row"
    );
    let row = |ts: i64, seq: u64, quality: Quality| StoredReading {
        quality,
        ..StoredReading::actual(
            Reading {
                ts,
                reg: 1,
                rev: 0,
                flow: 0,
                temp: None,
            },
            seq,
            T0_MS,
        )
    };
    // A full page: read on from after its last row.
    let page = (0..WINDOW_ROWS_PAGE as i64)
        .map(|i| row(i, 5, Quality::Estimated))
        .collect();
    rows.take_page(page);
    assert_eq!(rows.next_page(), Some(WINDOW_ROWS_PAGE as i64));
    let newest = 3 * WINDOW_ROWS_PAGE as i64;
    let mut page: Vec<_> = (WINDOW_ROWS_PAGE as i64..newest)
        .step_by(4)
        .map(|ts| row(ts, 4, Quality::Actual))
        .collect();
    page.push(row(newest, 6, Quality::Suspect));
    rows.take_page(page);
    assert_eq!(rows.next_page(), None, "a short page is the last");
    // Estimates and rows of a seq the state never accepted are left out; at most a
    // window's worth is kept, the newest.
    let m1 = key("plain.m1");
    let mut shard = Harness::new(1_000);
    shard.core.hydrated(m1.clone(), state, rows);
    assert!(
        shard.core.seal(shard.at(0)).is_none(),
        "hydrating emits nothing"
    );
    assert_eq!(shard.offer(&m1, &json(5, 1), 1), 0, "hydrated");
    let sealed = shard.seal(2);
    let meter = &sealed.batch.meters[0];
    assert_eq!(meter.duplicates, 1);
    let window: Vec<i64> = shard
        .core
        .meter_state(&m1)
        .unwrap()
        .vee
        .window
        .iter()
        .map(|r| r.reading.ts)
        .collect();
    let oldest_kept = newest - 4 * MAX_WINDOW_READS as i64;
    assert_eq!(window, (oldest_kept..newest).step_by(4).collect::<Vec<_>>());
}

#[test]
fn junk_and_forgeries_are_dead_lettered_without_a_state_read() {
    let mut shard = Harness::new(1_000);
    let signed = key("signed.m1");
    assert_eq!(shard.offer(&signed, b"{not json", 0), 0);
    assert_eq!(shard.offer(&signed, &json(1, 1), 1), 0, "unsigned: bad MAC");
    assert_eq!(shard.offer(&key("nobody.m1"), &json(1, 1), 2), 0);
    let sealed = shard.seal(3);
    let reasons: Vec<_> = sealed.batch.dead_letters.iter().map(|d| d.reason).collect();
    assert_eq!(
        reasons,
        [Reject::Malformed, Reject::BadMac, Reject::UnknownTenant]
    );
    assert!(sealed.batch.meters.is_empty(), "no window moved");
    assert_eq!(sealed.batch.dead_letters[1].correlation_id, "signed/m1/1");
    assert_eq!(sealed.batch.dead_letters[0].correlation_id, "signed/m1/-");
}

#[test]
fn a_signed_uplink_is_taken() {
    let mut shard = Harness::new(1_000);
    let signed = key("signed.m1");
    let mut up = uplink(1, 2);
    mac::sign(&hex::decode(MAC_KEY_HEX).unwrap(), &mut up);
    assert_eq!(shard.offer(&signed, &codec::encode_json(&up), 0), 1);
    let sealed = shard.seal(1);
    assert!(sealed.batch.dead_letters.is_empty());
    assert_eq!(sealed.batch.meters[0].readings.len(), 2);
}

#[test]
fn a_contract_breach_moves_the_window_and_its_resend_is_a_duplicate() {
    let mut shard = Harness::new(1_000);
    let m1 = key("plain.m1");
    let mut future = uplink(1, 1);
    future.readings[0].ts = T0_MS + 86_400_000;
    let payload = codec::encode_json(&future);
    shard.offer(&m1, &payload, 0);
    shard.offer(&m1, &payload, 1);
    let sealed = shard.seal(2);
    assert_eq!(sealed.batch.dead_letters.len(), 1, "stored once");
    assert_eq!(sealed.batch.dead_letters[0].reason, Reject::ClockSkew);
    let meter = &sealed.batch.meters[0];
    assert_eq!(meter.state.seq.watermark(), Some(1), "acked past it");
    assert_eq!((meter.messages, meter.duplicates), (0, 1));
    assert!(meter.readings.is_empty());
}

#[test]
fn a_refused_publish_is_a_dead_letter_with_the_endpoints_reason() {
    let mut shard = Harness::new(1_000);
    let m1 = key("plain.m1");
    assert_eq!(
        shard.offer_with(&m1, &json(1, 1), Some(Reject::ForbiddenTopic), 0),
        0
    );
    let sealed = shard.seal(1);
    assert_eq!(sealed.batch.dead_letters[0].reason, Reject::ForbiddenTopic);
    assert!(sealed.batch.meters.is_empty());
}

#[test]
fn dead_letters_over_the_senders_rate_are_answered_not_stored() {
    let mut shard = Harness::new(1_000);
    let m1 = key("plain.m1");
    for i in 0..10 {
        shard.offer(&m1, b"junk", i);
    }
    let sealed = shard.seal(10);
    assert_eq!(sealed.batch.dead_letters.len(), DEAD_LETTER_BURST as usize);
    // Only dropped dead letters: still sealed, so their arrivals are answered.
    shard.offer(&m1, b"junk", 11);
    let sealed = shard.seal(12);
    assert!(sealed.batch.dead_letters.is_empty() && sealed.batch.meters.is_empty());
    assert!(shard.core.seal(shard.at(13)).is_none(), "then nothing left");
}

#[test]
fn a_batch_is_full_at_its_readings_and_lingers_from_when_it_opened() {
    let mut shard = Harness::new(4);
    let m1 = key("plain.m1");
    assert_eq!(shard.core.deadline(), shard.at(1_000).instant, "gap sweep");
    shard.offer(&m1, &json(1, 3), 5);
    assert!(!shard.core.is_full());
    assert_eq!(shard.core.deadline(), shard.at(25).instant);
    assert!(!shard.core.linger_elapsed(shard.at(24).instant));
    assert!(shard.core.linger_elapsed(shard.at(25).instant));
    shard.offer(&m1, &json(2, 1), 6);
    assert!(shard.core.is_full());
    shard.seal(7);
    assert!(!shard.core.linger_elapsed(shard.at(1_000).instant));
}

#[test]
fn an_unfilled_gap_is_skipped_after_the_resend_window() {
    let mut shard = Harness::new(1_000);
    let m1 = key("plain.m1");
    shard.offer(&m1, &json(1, 1), 0);
    shard.offer(&m1, &json(3, 1), 1);
    let sealed = shard.seal(2);
    assert_eq!(sealed.batch.meters[0].state.seq.watermark(), Some(1));
    assert!(!shard.core.tick(shard.at(999)), "not due yet");
    assert!(shard.core.tick(shard.at(1_000)));
    assert!(
        shard.core.seal(shard.at(1_001)).is_none(),
        "gap still young"
    );
    let late = RESEND_WINDOW_MS as u64 + 1_000;
    assert!(shard.core.tick(shard.at(late)));
    let sealed = shard.seal(late + 1);
    assert_eq!(sealed.batch.meters[0].state.seq.watermark(), Some(3));
    assert!(sealed.batch.meters[0].readings.is_empty());
}

/// What a proptest does to the shard next.
#[derive(Clone, Debug)]
enum Op {
    /// A valid uplink of `readings` readings from meter `meter` with `seq`.
    Uplink {
        meter: u8,
        seq: u64,
        readings: usize,
    },
    /// Bytes that are not an uplink.
    Junk(Vec<u8>),
    /// The clock moves on by `ms`, and the core is ticked.
    Tick {
        ms: u64,
    },
    Seal,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 1u64..40, 1usize..5)
            .prop_map(|(meter, seq, readings)| Op::Uplink { meter, seq, readings }),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Junk),
        2 => (1u64..40_000).prop_map(|ms| Op::Tick { ms }),
        2 => Just(Op::Seal),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever arrives, in whatever order, with resends, junk and sweeps between:
    /// every arrival is sealed into a batch (so it is answered), counted exactly once
    /// as stored, duplicate or dead letter; a meter never has more messages stored
    /// than distinct seqs it sent (a resend is never new again — rows VEE re-emits
    /// for a late read keep their seq, so stored rows are not the measure); and a
    /// meter's watermark never moves back.
    #[test]
    fn every_arrival_is_sealed_and_counted_once(ops in proptest::collection::vec(op(), 1..120)) {
        let mut shard = Harness::with_burst(8, 10_000);
        let meters: Vec<MeterKey> = (0..4).map(|m| key(&format!("plain.m{m}"))).collect();
        let mut ms = 0;
        let (mut offered, mut counted) = (0, 0);
        let mut sent: Vec<HashSet<u64>> = vec![HashSet::new(); meters.len()];
        let mut stored = vec![0usize; meters.len()];
        let mut watermarks = vec![None; meters.len()];
        let mut collect = |sealed: Sealed, counted: &mut usize| {
            *counted += sealed.batch.dead_letters.len();
            for meter in &sealed.batch.meters {
                *counted += (meter.messages + meter.duplicates) as usize;
                let m = meters.iter().position(|k| *k == meter.key).expect("a known meter");
                let watermark = meter.state.seq.watermark();
                prop_assert!(watermark >= watermarks[m], "watermark moved back");
                watermarks[m] = watermark;
                stored[m] += meter.messages as usize;
            }
            Ok(())
        };
        for op in ops {
            ms += 1;
            match op {
                Op::Uplink { meter, seq, readings } => {
                    let payload = codec::encode_json(&uplink(seq, readings));
                    shard.offer(&meters[usize::from(meter)], &payload, ms);
                    sent[usize::from(meter)].insert(seq);
                    offered += 1;
                }
                Op::Junk(bytes) => {
                    shard.offer(&meters[0], &bytes, ms);
                    offered += 1;
                }
                Op::Tick { ms: step } => {
                    ms += step;
                    shard.core.tick(shard.at(ms));
                }
                Op::Seal => {
                    if let Some(sealed) = shard.core.seal(shard.at(ms)) {
                        collect(sealed, &mut counted)?;
                    }
                }
            }
        }
        if let Some(sealed) = shard.core.seal(shard.at(ms + 1)) {
            collect(sealed, &mut counted)?;
        }
        prop_assert_eq!(counted, offered);
        for (m, seqs) in sent.iter().enumerate() {
            prop_assert!(stored[m] <= seqs.len(), "m{} stored {} messages of {} seqs", m, stored[m], seqs.len());
        }
        prop_assert!(shard.core.seal(shard.at(ms + 2)).is_none());
    }
}

#[test]
fn a_late_read_counts_once_though_its_neighbours_rows_are_re_emitted() {
    let m1 = key("plain.m1");
    let first = hourly_json(1, &[(10, 1_000), (9, 1_100), (6, 1_400), (5, 1_500)]);
    let late = hourly_json(2, &[(7, 1_250)]);
    let mut shard = Harness::new(1_000);
    shard.offer(&m1, &first, 0);
    let sealed = shard.seal(1);
    assert_eq!(sealed.batch.meters[0].sent_readings, 4);
    shard.offer(&m1, &late, 2);
    let sealed = shard.seal(3);
    let meter = &sealed.batch.meters[0];
    assert!(
        meter.readings.len() > 1,
        "VEE re-decided the gap's rows: {:?}",
        meter.readings
    );
    assert_eq!(meter.sent_readings, 1, "one reading was sent");
}

#[test]
fn a_forgotten_meter_is_hydrated_again_and_others_are_kept() {
    let (m1, m2) = (key("plain.m1"), key("plain.m2"));
    let mut shard = Harness::new(1_000);
    assert_eq!(shard.offer(&m1, &json(1, 1), 0), 1);
    assert_eq!(shard.offer(&m2, &json(1, 1), 0), 1);
    shard.seal(1);
    shard.core.forget(&|meter: &MeterKey| meter == &m1);
    assert_eq!(
        shard.offer(&m1, &json(2, 1), 2),
        1,
        "read from the store again"
    );
    assert_eq!(shard.offer(&m2, &json(2, 1), 2), 0, "still cached");
}

/// An operator's order about `meter`'s register at `ts`, offered at `ms` (hydrating a
/// never-seen meter with the default state when asked).
fn order(shard: &mut Harness, meter: &MeterKey, ts: i64, action: OrderAction, ms: u64) -> Step {
    let now = shard.at(ms);
    let order = RegisterOrder {
        ts,
        action,
        decision: Decision {
            by: "ana".into(),
            why: "test".into(),
            at_ms: now.wall_ms,
        },
        exception: None,
    };
    let arrival = Arrival {
        identity: meter,
        topic: b"",
        payload: b"",
        refused: None,
        received_at: now.wall_ms,
        received: now.instant,
        order: Some(&order),
    };
    loop {
        match shard.core.admit(&arrival, now.instant) {
            Step::NeedsState(key) => {
                shard
                    .core
                    .hydrated(key, MeterState::default(), WindowRows::default())
            }
            step => return step,
        }
    }
}

#[test]
fn an_order_joins_the_batch_only_when_vee_can_follow_it() {
    let mut shard = Harness::new(1_000);
    let m1 = key("plain.m1");
    // A meter that never sent a read has nothing to decide, but takes an exchange.
    let refused = order(&mut shard, &m1, T0_MS, OrderAction::Reject, 0);
    assert!(
        matches!(&refused, Step::Refused(why) if why.contains("no read")),
        "{refused:?}"
    );
    assert_eq!(
        order(
            &mut shard,
            &m1,
            T0_MS,
            OrderAction::Exchange {
                final_reg: None,
                initial_reg: 0,
                size: None,
            },
            0
        ),
        Step::Taken
    );
    let unknown = key("nobody.m1");
    assert!(matches!(
        order(&mut shard, &unknown, T0_MS, OrderAction::Reject, 0),
        Step::Refused(_)
    ));
    // Once its reads are in the window (VEE ran on them at a seal), a read order is
    // taken, and sealed with the batch for VEE.
    shard.offer(&m1, &hourly_json(1, &[(2, 1_000), (1, 900_000)]), 1);
    shard.seal(1);
    assert_eq!(
        order(&mut shard, &m1, T0_MS - 3_600_000, OrderAction::Accept, 2),
        Step::Taken
    );
    let sealed = shard.seal(3);
    let meter = &sealed.batch.meters[0];
    assert_eq!(
        meter.state.vee.orders.len(),
        2,
        "VEE took them into the state"
    );
    let accepted = sealed
        .outputs
        .exceptions
        .iter()
        .find(|e| e.ts == T0_MS - 3_600_000)
        .expect("the decided exception");
    assert_eq!(accepted.state, ExceptionState::Accepted);
}

/// A meter's state version depends on what the meter took in (uplinks with their
/// endpoint receive times, as the log carries them), not on when or by whom it was
/// processed: a stalled former owner and the new owner folding the same log reach
/// the same version at the same point, resends do not move it, and the owner
/// further along has the greater one — what lets a shared store drop the former
/// owner's late write (`storage/src/scylla/write_order.rs`).
#[test]
fn a_meters_version_follows_what_it_took_in_not_who_processed_it() {
    let m1 = key("plain.m1");
    // (seq, received at ms after T0)
    let log = [(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)];
    let take = |shard: &mut Harness, part: &[(u64, u64)], resend_at: u64| {
        for &(seq, ms) in part {
            shard.offer(&m1, &json(seq, 1), ms);
            // The same uplink again, received later: a duplicate.
            shard.offer(&m1, &json(seq, 1), resend_at);
        }
        shard.seal(resend_at).batch.meters[0].state.clone()
    };

    let mut stalled = Harness::new(1_000);
    let stale = take(&mut stalled, &log[..3], 35);
    assert!(
        stale.version >= (T0_MS + 30) * 1_000,
        "near the receive time, in µs"
    );

    let mut owner = Harness::new(1_000);
    let same_point = take(&mut owner, &log[..3], 5_000);
    assert_eq!(same_point.version, stale.version);
    let further = take(&mut owner, &log[3..], 6_000);
    assert!(further.version > stale.version);

    // A third owner hydrating the stalled one's stored state gets there too.
    let mut next = Harness::new(1_000);
    next.core
        .hydrated(m1.clone(), stale.persisted(), WindowRows::default());
    assert_eq!(take(&mut next, &log[3..], 9_000).version, further.version);
}

#[test]
fn a_stopping_shard_seals_its_batch_then_what_analytics_has_not_flushed() {
    let mut shard = Harness::flushing_every(5_000);
    let m1 = key("plain.m1");
    // Three reads a litre apart: two litres counted, in windows not flushed yet
    // (the first batch only sets the flush boundary).
    shard.offer(&m1, &json(1, 3), 0);
    let sealed = shard.core.finish(shard.at(1));
    assert_eq!(
        sealed.len(),
        2,
        "the open batch, then the processors' outputs"
    );
    assert_eq!(sealed[0].batch.meters.len(), 1);
    assert!(
        sealed[0].outputs.districts.is_empty(),
        "nothing flushed before"
    );
    assert!(sealed[1].batch.meters.is_empty());
    // The reads straddle midnight: a litre on each day.
    let days: Vec<(u64, u64)> = sealed[1]
        .outputs
        .districts
        .iter()
        .filter(|row| row.resolution == Resolution::Day)
        .map(|row| (row.usage_l, row.meters))
        .collect();
    assert_eq!(days, vec![(1, 1), (1, 1)]);
    assert!(
        shard.core.finish(shard.at(2)).is_empty(),
        "nothing held after"
    );
}

#[test]
fn a_batch_publishes_the_district_windows_it_changed_with_it() {
    let mut shard = Harness::new(1_000);
    let m1 = key("plain.m1");
    shard.offer(&m1, &json(1, 3), 0);
    let first = shard.seal(1);
    let windows = |sealed: &Sealed| {
        let mut rows: Vec<(Resolution, u64)> = sealed
            .outputs
            .districts
            .iter()
            .map(|row| (row.resolution, row.usage_l))
            .collect();
        rows.sort();
        rows
    };
    // Three reads, the first measuring no interval: a litre on each side of midnight.
    assert_eq!(
        windows(&first),
        [
            (Resolution::Minute, 1),
            (Resolution::Minute, 1),
            (Resolution::Hour, 1),
            (Resolution::Hour, 1),
            (Resolution::Day, 1),
            (Resolution::Day, 1),
        ],
        "the first batch's windows go out with it, not at a flush boundary"
    );
    assert!(!first.outputs.top.is_empty());
    // A batch that changes nothing publishes nothing again.
    shard.offer(&m1, &json(1, 3), 2);
    assert!(shard.seal(3).outputs.districts.is_empty(), "a duplicate");
}

#[test]
fn a_quiet_shard_publishes_its_districts_at_the_flush_interval_not_the_meter_sweep() {
    let mut shard = Harness::flushing_every(5_000);
    let m1 = key("plain.m1");
    shard.offer(&m1, &json(1, 3), 0);
    let first = shard.seal(1);
    assert!(
        first.outputs.districts.is_empty(),
        "the first batch sets the boundary"
    );
    // Nothing arrives; the flush boundary (5 s) passes long before the meters' sweep
    // (60 s here): the once-a-second tick flushes.
    shard.core.tick(shard.at(6_000));
    let flushed = shard.seal(6_001);
    assert!(flushed.batch.meters.is_empty());
    let days = flushed
        .outputs
        .districts
        .iter()
        .filter(|row| row.resolution == Resolution::Day)
        .count();
    assert_eq!(days, 2, "the litre on each side of midnight");
}

/// After a restart a shard holds no meter; the stored ones it is handed
/// (`crate::dormant`) are hydrated, and the timer sweep then covers them as if they
/// had been heard from since start: a meter silent for four days opens its
/// no-communication episode though it sent nothing to this run.
#[test]
fn a_stored_meter_never_heard_from_since_start_is_swept_once_hydrated() {
    let (silent, heard, gone) = (key("plain.m1"), key("plain.m2"), key("gone.m1"));
    let mut shard = Harness::new(1_000);
    assert_eq!(shard.offer(&heard, &json(1, 1), 0), 1);
    assert!(shard.core.wants_dormant(&silent));
    assert!(!shard.core.wants_dormant(&heard), "already held");
    assert!(
        !shard.core.wants_dormant(&gone),
        "a tenant no longer served"
    );

    let mut state = MeterState::default();
    state.alerts.last_seen_at = Some(T0_MS - 4 * 86_400_000);
    shard
        .core
        .hydrated(silent.clone(), state, WindowRows::default());
    assert!(!shard.core.wants_dormant(&silent), "held once hydrated");

    shard.core.tick(shard.at(61_000));
    let sealed = shard.seal(61_001);
    let opened: Vec<(&str, AlertKind)> = sealed
        .outputs
        .alerts
        .iter()
        .map(|a| (a.meter.as_str(), a.kind))
        .collect();
    assert_eq!(opened, vec![("m1", AlertKind::NoCommunication)]);
    assert_eq!(
        shard.offer(&silent, &json(2, 1), 61_002),
        0,
        "its state is held: no second read"
    );
}

/// What a store keeps of a shard's sealed batches, for several meters: each meter's
/// persisted state and rows, the last line per meter and bill period, and every alert
/// event (sorted: two shards sweep their meters in their own order).
#[derive(Default)]
struct FleetStore {
    states: BTreeMap<String, Vec<u8>>,
    rows: BTreeMap<(String, i64), StoredReading>,
    bills: BTreeMap<(String, String), BillLine>,
    alerts: Vec<String>,
}

impl FleetStore {
    fn keep(&mut self, sealed: Option<Sealed>) {
        let Some(sealed) = sealed else { return };
        for meter in &sealed.batch.meters {
            let name = meter.key.meter.to_string();
            self.states
                .insert(name.clone(), encode_record(&meter.state));
            for row in &meter.readings {
                self.rows.insert((name.clone(), row.reading.ts), *row);
            }
        }
        for bill in sealed.outputs.bills {
            self.bills
                .insert((bill.meter.clone(), bill.period.clone()), bill);
        }
        self.alerts
            .extend(sealed.outputs.alerts.iter().map(|a| format!("{a:?}")));
        self.alerts.sort();
    }

    /// What a runner reads back of `key`: its state (the default for a meter never
    /// stored), then its rows after the settled point, page by page.
    fn read_back(&self, key: &MeterKey) -> (MeterState, WindowRows) {
        let name = key.meter.to_string();
        let state: MeterState = self
            .states
            .get(&name)
            .map(|record| decode_record(record).unwrap())
            .unwrap_or_default();
        read_back(&state, |from| {
            self.rows
                .range((name.clone(), from)..=(name.clone(), i64::MAX))
                .map(|(_, row)| row)
        })
    }
}

/// A shard holding all its meters, and one holding one at a time, each writing to its
/// own store; the second lets the others rest once their batch is durable (right
/// after each seal here) and reads them back on their next uplink, or when their
/// timer rules are due. Returns how many times each read a meter back.
fn run_fleet(shard: &mut Harness, store: &mut FleetStore, rests: bool) -> usize {
    const HOUR_MS: u64 = 3_600_000;
    const QUARTER_MS: u64 = 900_000;
    let meters: Vec<MeterKey> = (1..=4).map(|i| key(&format!("plain.m{i}"))).collect();
    let mut reads = 0;
    // Twelve hours of fifteen-minute reads, an hour's a message; m2's read at 03:15
    // comes two hours late (VEE estimated it meanwhile).
    for hour in 0..12u64 {
        for (i, meter) in meters.iter().enumerate() {
            let readings: Vec<Reading> = (0..4u64)
                .map(|q| hour * 4 + q)
                .filter(|&n| !(i == 1 && n == 13 && hour == 3))
                .chain((i == 1 && hour == 5).then_some(13))
                .map(|n| Reading {
                    ts: T0_MS + (n * QUARTER_MS) as i64,
                    reg: 1_000 + n * (10 + i as u64),
                    rev: 0,
                    flow: 0,
                    temp: None,
                })
                .collect();
            let payload = codec::encode_json(&Uplink::new(hour + 1, readings));
            let ms = (hour + 1) * HOUR_MS + i as u64;
            reads += offer_hydrating(shard, meter, &payload, ms, |core, key| {
                let (state, rows) = store.read_back(&key);
                core.hydrated(key, state, rows);
            });
        }
        let now = shard.at((hour + 1) * HOUR_MS + 100);
        let sealed = shard.core.seal(now);
        let number = sealed.as_ref().map_or(0, |s| s.batch.number);
        store.keep(sealed);
        if rests {
            shard.core.rest(number, now);
        }
    }
    // Then silence, a sweep a minute, until the no-communication rule (72 h) fired.
    let mut sealed_up_to = 0;
    for minute in 0..(74 * 60) {
        let now = shard.at(13 * HOUR_MS + minute * 60_000);
        if shard.core.tick(now) && rests {
            shard.core.rest(sealed_up_to, now);
        }
        while let Some(key) = shard.core.next_waking() {
            let (state, rows) = store.read_back(&key);
            shard.core.woken(key, state, rows, now);
            reads += 1;
        }
        if let Some(sealed) = shard.core.seal(now) {
            sealed_up_to = sealed.batch.number;
            store.keep(Some(sealed));
        }
    }
    reads
}

/// Resting changes nothing a store keeps: the rows, the persisted states, the bills
/// and the alert events (the no-communication episodes of all four meters included)
/// are those of a shard that held every meter.
#[test]
fn a_meter_that_rests_in_the_store_continues_as_if_always_held() {
    let (mut held, mut resting) = (Harness::new(1_000), Harness::holding(1));
    let (mut all, mut one) = (FleetStore::default(), FleetStore::default());
    assert_eq!(
        run_fleet(&mut held, &mut all, false),
        4,
        "each meter read once"
    );
    let reads = run_fleet(&mut resting, &mut one, true);
    // Four at first sight; then each hour the three that rested after the hour
    // before; then the three resting when the silence rule fell due.
    assert_eq!(reads, 4 + 3 * 11 + 3, "the resting meters were read back");
    assert_eq!(one.rows, all.rows);
    assert_eq!(one.states, all.states);
    assert_eq!(one.bills, all.bills);
    assert_eq!(one.alerts, all.alerts);
    let silent = all
        .alerts
        .iter()
        .filter(|a| a.contains("NoCommunication") && a.contains("Opened"))
        .count();
    assert_eq!(silent, 4, "{:?}", all.alerts);
    assert_eq!(
        resting.core.meter_counts(),
        (1, 3),
        "at rest again until their episodes' next update"
    );
}

/// A shard holding one meter, after `plain.m1` and `plain.m2` reported once each
/// and their batch was sealed (its number last).
fn two_meters_holding_one() -> (Harness, MeterKey, MeterKey, u64) {
    let mut shard = Harness::holding(1);
    let (m1, m2) = (key("plain.m1"), key("plain.m2"));
    shard.offer(&m1, &json(1, 1), 0);
    shard.offer(&m2, &json(1, 1), 1);
    let sealed = shard.seal(2).batch.number;
    (shard, m1, m2, sealed)
}

/// A meter rests only once its last batch is durable and it is not in the open batch.
#[test]
fn a_meter_rests_only_once_its_last_batch_is_durable() {
    let (mut shard, m1, m2, sealed) = two_meters_holding_one();
    shard.core.rest(sealed - 1, shard.at(3));
    assert_eq!(shard.core.meter_counts(), (2, 0), "not durable yet");
    shard.offer(&m1, &json(2, 1), 4);
    shard.core.rest(sealed, shard.at(5));
    assert_eq!(shard.core.meter_counts(), (1, 1), "m1 is in the open batch");
    assert_eq!(shard.offer(&m1, &json(3, 1), 6), 0, "m1 still held");
    assert_eq!(shard.offer(&m2, &json(2, 1), 7), 1, "m2 is read back");
    assert_eq!(shard.core.meter_counts(), (2, 0));
}

/// A processor gives up a partition: its resting meters are forgotten with the held
/// ones, so the shard neither wakes nor sweeps them once their rule is due.
#[test]
fn a_resting_meter_given_up_is_not_woken() {
    let (mut shard, _, _, sealed) = two_meters_holding_one();
    shard.core.rest(sealed, shard.at(3));
    assert_eq!(shard.core.meter_counts(), (1, 1));
    shard.core.forget(&|_| true);
    assert_eq!(shard.core.meter_counts(), (0, 0));
    // Past the default 72-h silence rule: nothing to wake, nothing swept.
    let later = 73 * 3_600_000;
    shard.core.tick(shard.at(later));
    assert!(shard.core.next_waking().is_none());
    assert!(shard.core.seal(shard.at(later + 1)).is_none());
}
