//! The performance gate's benchmark: the hot path of one shard, stage by stage, in
//! instructions counted by Callgrind (through gungraun), so a regression points at the
//! stage that caused it. `scripts/perf-gate` runs it and compares each stage with
//! `bench/perf-baseline.json` (see "Performance gate" in `bench/README.md`).
//!
//! The input is fixed: a fleet of [`METERS`] meters from the simulator's ground truth
//! (its default seed, a fixed start time, per-meter MAC keys), each sending one
//! message of [`READINGS_PER_MESSAGE`] fifteen-minute reads per round. Every
//! `received_at` and every batch's `now_ms` is derived from the readings' timestamps:
//! nothing reads a clock, so every run measures the same work.
//!
//! Stages, each measured on the last round after [`WARM_UP_ROUNDS`] rounds (a day) of
//! history have gone through the shard, the processors and the store:
//! - `decode_json`, `decode_binary` — `codec::decode` of the round's 64 payloads in each
//!   wire form;
//! - `mac_verify` — `mac::verify` of the round's uplinks (what a tenant's `check_mac`
//!   runs in the shard): HMAC-SHA256 over the binary form. Its own stage because it
//!   is 90 % of the shard's per-uplink work and would hide the rest. Under Callgrind
//!   `sha2` takes its portable code path (valgrind's CPU reports no SHA extensions),
//!   so this counts more instructions than a CPU with SHA-NI executes;
//! - `shard_admit` — the rest of what the shard does per decoded uplink, with the
//!   public functions it calls: payload size check, `check_uplink`, the meter's dedupe
//!   window (`SeqWindow::admit`), then the readings and device status into a
//!   `SealedBatch` carrying each meter's state. The shard's own `accept`/`admit`/`seal`
//!   (`ingest/src/shard.rs`) are private, so their composition is restated here in
//!   [`ShardFleet::admit_round`] with the shard's types and constructors;
//! - `processors_chain` — `ProcessorChain::standard().process` on that batch (VEE,
//!   usage, billing, alerting, analytics), with chain state warmed by the history;
//! - `store_commit` — `EmbeddedStore::commit` of one sink group ([`GROUP_ROUNDS`]
//!   sealed batches, 1,024 readings, with the outputs derived from them after the
//!   district rollup, as `ingest/src/sink.rs` commits a group) into a temporary store
//!   that already holds the history. The journal's fsync is a system call: its wait
//!   is not counted, the work around it is;
//! - `cache_apply` — `MemoryCache::apply` of that group's outputs (the in-process hot
//!   cache, as the sink's cache writer applies a group once it is durable) to a cache
//!   holding the history's. The cache writer's own merging of pending updates is
//!   private to ingest and not measured.
//!
//! Fixtures are built in each benchmark's setup, which Callgrind does not count; each
//! stage returns its input so that dropping it is not counted either.
//!
//! `cargo bench -p meterflow-bench --bench hot_path` (needs valgrind and the
//! `gungraun-runner` binary of the pinned gungraun version; `scripts/perf-gate`
//! installs both).

use std::hint::black_box;

use gungraun::{library_benchmark, library_benchmark_group, main};
use meterflow_model::check::{check_payload_size, check_uplink};
use meterflow_model::codec::{decode, encode_binary, encode_json};
use meterflow_model::{
    Admission, DeviceStatus, Limits, MeterBatch, MeterKey, MeterState, Outputs, SealedBatch,
    StoredReading, Uplink, mac,
};
use meterflow_processors::ProcessorChain;
use meterflow_processors::analytics::DistrictRollup;
use meterflow_simulator::{MacKeys, SimConfig, meter_id_string, meter_messages};
use meterflow_storage::embedded::EmbeddedStore;
use meterflow_storage::memory_cache::MemoryCache;
use meterflow_storage::{HotCache, ReadingStore};
use tempfile::TempDir;

/// Meters in the shard's batch: enough that per-meter work dominates per-batch
/// overhead, few enough that Callgrind (about 50× slower than native) runs every
/// stage's setup in seconds.
const METERS: usize = 64;
/// Readings per message: an hourly message of fifteen-minute reads.
const READINGS_PER_MESSAGE: usize = 4;
/// Rounds before the measured one: a day of hourly messages, so VEE, billing,
/// alerting and analytics work on meters with history, as in steady state.
const WARM_UP_ROUNDS: usize = 24;
/// Sealed batches per sink group: the measured group commits the last four rounds
/// (1,024 readings), and the history goes into the store in groups of the same size.
const GROUP_ROUNDS: usize = 4;
/// Every round, the measured one included (a whole number of groups).
const ROUNDS: usize = WARM_UP_ROUNDS + GROUP_ROUNDS;
/// The first reading's timestamp (2025-11-22T08:26:40Z): fixed, so every run decodes,
/// checks and bills the same instants.
const START_TS_MS: i64 = 1_763_800_000_000;
/// How long after its newest reading a message is received.
const RECEIVE_DELAY_MS: i64 = 1_000;
/// Per-meter MAC keys (`"{secret}.{meter}"`), as a tenant with `meter_keys` has.
const MAC_SECRET: &str = "perf-gate";

const _: () = assert!(ROUNDS.is_multiple_of(GROUP_ROUNDS));

/// One round as it arrives: every meter's message, in both wire forms.
struct Round {
    uplinks: Vec<Uplink>,
    json: Vec<Vec<u8>>,
    binary: Vec<Vec<u8>>,
}

/// Every round of the fleet, from the simulator's ground truth.
fn rounds() -> Vec<Round> {
    let config = SimConfig {
        meters: METERS,
        readings_per_message: READINGS_PER_MESSAGE,
        messages_per_meter: ROUNDS as u64,
        start_ts_ms: Some(START_TS_MS),
        mac_keys: Some(MacKeys::PerMeter(MAC_SECRET.to_string())),
        ..SimConfig::default()
    };
    let mut generators: Vec<_> = (0..METERS).map(|m| meter_messages(&config, m)).collect();
    (0..ROUNDS)
        .map(|_| {
            let uplinks: Vec<Uplink> = generators
                .iter_mut()
                .map(|generator| {
                    let mut uplink = Uplink::new(0, Vec::new());
                    assert!(generator.fill_next(&mut uplink).is_some());
                    uplink
                })
                .collect();
            Round {
                json: uplinks.iter().map(encode_json).collect(),
                binary: uplinks.iter().map(encode_binary).collect(),
                uplinks,
            }
        })
        .collect()
}

/// When the shard receives `uplink`.
fn received_at(uplink: &Uplink) -> i64 {
    uplink.readings.last().map_or(START_TS_MS, |r| r.ts) + RECEIVE_DELAY_MS
}

/// What one shard keeps per meter between batches.
struct ShardFleet {
    keys: Vec<MeterKey>,
    mac_keys: Vec<Vec<u8>>,
    states: Vec<MeterState>,
    limits: Limits,
    sealed: u64,
}

impl ShardFleet {
    fn new() -> ShardFleet {
        let tenant = SimConfig::default();
        let secret = MacKeys::PerMeter(MAC_SECRET.to_string());
        ShardFleet {
            keys: (0..METERS).map(|m| tenant.meter_key(m).unwrap()).collect(),
            mac_keys: (0..METERS)
                .map(|m| secret.key_for(&meter_id_string(m)))
                .collect(),
            states: vec![MeterState::default(); METERS],
            limits: Limits::default(),
            sealed: 0,
        }
    }

    /// Whether every uplink of a round carries its meter's MAC.
    fn verify_macs(&self, uplinks: &[Uplink]) -> bool {
        uplinks
            .iter()
            .zip(&self.mac_keys)
            .all(|(uplink, key)| mac::verify(key, uplink))
    }

    /// Takes one round of decoded uplinks (with their payload sizes) through the
    /// shard's per-uplink checks (but the MAC, [`ShardFleet::verify_macs`]) and dedupe
    /// windows, and seals it as one batch carrying each meter's state. Every uplink of
    /// the fixture is valid and new.
    fn admit_round(&mut self, uplinks: &[Uplink], payload_sizes: &[usize]) -> SealedBatch {
        let mut skipped = Vec::new();
        let mut now_ms = i64::MIN;
        let meters = uplinks
            .iter()
            .zip(payload_sizes)
            .enumerate()
            .map(|(m, (uplink, &size))| {
                let received_at = received_at(uplink);
                now_ms = now_ms.max(received_at);
                check_payload_size(size, &self.limits).expect("the fixture fits the limits");
                check_uplink(uplink, &self.limits, received_at).expect("valid uplinks");
                let state = &mut self.states[m];
                let admission = state.seq.admit(uplink.seq, received_at, &mut skipped);
                assert_eq!(admission, Admission::New, "no resends in the fixture");
                MeterBatch {
                    key: self.keys[m].clone(),
                    readings: uplink
                        .readings
                        .iter()
                        .map(|reading| StoredReading::actual(*reading, uplink.seq, received_at))
                        .collect(),
                    state: state.clone(),
                    messages: 1,
                    duplicates: 0,
                    first_received_at: Some(received_at),
                    statuses: uplink
                        .readings
                        .last()
                        .map(|newest| DeviceStatus {
                            ts: newest.ts,
                            received_at,
                            flags: uplink.flags,
                            battery: uplink.battery,
                            rssi: uplink.rssi,
                        })
                        .into_iter()
                        .collect(),
                }
            })
            .collect();
        self.sealed += 1;
        SealedBatch {
            now_ms,
            shard: 0,
            number: self.sealed,
            meters,
            dead_letters: Vec::new(),
        }
    }

    /// Takes back the meters' states after the processors ran, as the shard does.
    fn keep_states(&mut self, batch: &SealedBatch) {
        for (state, meter) in self.states.iter_mut().zip(&batch.meters) {
            state.clone_from(&meter.state);
        }
    }
}

/// The payload sizes of a round in one wire form.
fn sizes(payloads: &[Vec<u8>]) -> Vec<usize> {
    payloads.iter().map(Vec::len).collect()
}

/// The shard and its processors after `rounds`, each round admitted and processed.
/// Calls `sealed` with every processed batch and its outputs.
fn replay(
    rounds: &[Round],
    fleet: &mut ShardFleet,
    chain: &mut ProcessorChain,
    mut sealed: impl FnMut(SealedBatch, Outputs),
) {
    for round in rounds {
        assert!(fleet.verify_macs(&round.uplinks), "signed by the simulator");
        let mut batch = fleet.admit_round(&round.uplinks, &sizes(&round.json));
        let mut outputs = Outputs::default();
        chain.process(&mut batch, &mut outputs);
        fleet.keep_states(&batch);
        sealed(batch, outputs);
    }
}

/// The measured round's payloads.
fn last_round_payloads(binary: bool) -> Vec<Vec<u8>> {
    let last = rounds().pop().expect("ROUNDS > 0");
    if binary { last.binary } else { last.json }
}

/// Decodes every payload (whatever its wire form), returning them with the uplinks.
fn decode_all(payloads: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Uplink>) {
    let uplinks = payloads
        .iter()
        .map(|payload| decode(black_box(payload)).unwrap())
        .collect();
    (payloads, black_box(uplinks))
}

#[library_benchmark]
#[bench::round(last_round_payloads(false))]
fn decode_json(payloads: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Uplink>) {
    decode_all(payloads)
}

#[library_benchmark]
#[bench::round(last_round_payloads(true))]
fn decode_binary(payloads: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Uplink>) {
    decode_all(payloads)
}

/// The shard's meters and the measured round's uplinks.
fn mac_input() -> (ShardFleet, Vec<Uplink>) {
    let last = rounds().pop().expect("ROUNDS > 0");
    (ShardFleet::new(), last.uplinks)
}

#[library_benchmark]
#[bench::round(mac_input())]
fn mac_verify(input: (ShardFleet, Vec<Uplink>)) -> (ShardFleet, Vec<Uplink>) {
    assert!(input.0.verify_macs(black_box(&input.1)));
    input
}

/// The shard after the history, and the measured round.
struct AdmitInput {
    fleet: ShardFleet,
    round: Round,
    payload_sizes: Vec<usize>,
}

fn admit_input() -> AdmitInput {
    let mut rounds = rounds();
    let round = rounds.pop().expect("ROUNDS > 0");
    let mut fleet = ShardFleet::new();
    replay(
        &rounds,
        &mut fleet,
        &mut ProcessorChain::standard(),
        |_, _| {},
    );
    AdmitInput {
        fleet,
        payload_sizes: sizes(&round.json),
        round,
    }
}

#[library_benchmark]
#[bench::round(admit_input())]
fn shard_admit(mut input: AdmitInput) -> (AdmitInput, SealedBatch) {
    let batch = input
        .fleet
        .admit_round(black_box(&input.round.uplinks), &input.payload_sizes);
    (input, black_box(batch))
}

/// The warmed processors, the measured round's sealed batch and an empty output.
struct ChainInput {
    chain: ProcessorChain,
    batch: SealedBatch,
    outputs: Outputs,
}

fn chain_input() -> ChainInput {
    let mut rounds = rounds();
    let round = rounds.pop().expect("ROUNDS > 0");
    let mut fleet = ShardFleet::new();
    let mut chain = ProcessorChain::standard();
    replay(&rounds, &mut fleet, &mut chain, |_, _| {});
    let batch = fleet.admit_round(&round.uplinks, &sizes(&round.json));
    ChainInput {
        chain,
        batch,
        outputs: Outputs::default(),
    }
}

#[library_benchmark]
#[bench::round(chain_input())]
fn processors_chain(mut input: ChainInput) -> ChainInput {
    input
        .chain
        .process(black_box(&mut input.batch), &mut input.outputs);
    input
}

/// A store holding the history and the last group, ready to commit, as the sink has it.
struct CommitInput {
    store: EmbeddedStore,
    batches: Vec<SealedBatch>,
    outputs: Outputs,
    /// Removed after the store is dropped (fields drop in declaration order).
    _dir: TempDir,
}

/// One sink group: its sealed batches and their outputs, merged.
type SinkGroup = (Vec<SealedBatch>, Outputs);

/// Every round through the shard and the processors, gathered as the sink gathers
/// them: groups of [`GROUP_ROUNDS`] batches whose outputs went through the district
/// rollup and were merged. The last group is the measured one.
fn sink_groups() -> Vec<SinkGroup> {
    let mut fleet = ShardFleet::new();
    let mut chain = ProcessorChain::standard();
    let mut rollup = DistrictRollup::new(1);
    let mut groups: Vec<SinkGroup> = Vec::new();
    replay(&rounds(), &mut fleet, &mut chain, |batch, mut outputs| {
        rollup.absorb(batch.shard, batch.now_ms, &mut outputs);
        match groups.last_mut() {
            Some((batches, group)) if batches.len() < GROUP_ROUNDS => {
                batches.push(batch);
                group.append(&mut outputs);
            }
            _ => groups.push((vec![batch], outputs)),
        }
    });
    groups
}

fn commit_input() -> CommitInput {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store")).unwrap();
    let mut groups = sink_groups();
    let (batches, outputs) = groups.pop().expect("ROUNDS > 0");
    for (history, history_outputs) in &groups {
        store.commit(history, history_outputs).unwrap();
    }
    CommitInput {
        store,
        batches,
        outputs,
        _dir: dir,
    }
}

#[library_benchmark]
#[bench::group(commit_input())]
fn store_commit(input: CommitInput) -> CommitInput {
    input
        .store
        .commit(black_box(&input.batches), black_box(&input.outputs))
        .unwrap();
    input
}

/// The in-process hot cache holding the history's outputs, and the last group's.
fn cache_input() -> (MemoryCache, Outputs) {
    let mut groups = sink_groups();
    let (_, outputs) = groups.pop().expect("ROUNDS > 0");
    let cache = MemoryCache::new();
    for (_, history) in &groups {
        cache.apply(history).unwrap();
    }
    (cache, outputs)
}

#[library_benchmark]
#[bench::group(cache_input())]
fn cache_apply(input: (MemoryCache, Outputs)) -> (MemoryCache, Outputs) {
    input.0.apply(black_box(&input.1)).unwrap();
    input
}

library_benchmark_group!(
    name = stages,
    benchmarks = [
        decode_json,
        decode_binary,
        mac_verify,
        shard_admit,
        processors_chain,
        store_commit,
        cache_apply
    ]
);

main!(library_benchmark_groups = stages);
