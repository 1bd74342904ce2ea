//! The performance gate's benchmark: the hot path of one shard, stage by stage, in
//! instructions counted by Callgrind (through gungraun), so a regression points at the
//! stage that caused it. `scripts/perf-gate` runs it and compares each stage with
//! `bench/perf-baseline.json` (see "Performance gate" in `bench/README.md`).
//!
//! The input is fixed: a fleet of [`METERS`] meters from the simulator's ground truth
//! (its default seed, a fixed start time, per-meter MAC keys the tenant is configured
//! with), each sending one message of [`READINGS_PER_MESSAGE`] fifteen-minute reads per
//! round. Every `received_at` and every batch's `now_ms` is derived from the readings'
//! timestamps and the shard's monotonic clock is pinned to one instant: every run
//! measures the same work.
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
//! - `shard_admit` — the service's own shard core (`ShardCore::admit`, from
//!   `ingest/src/shard/core.rs`) taking the round's 64 binary uplinks into its open
//!   batch: tenant rules, size, decode, MAC, contract checks, the dedupe window,
//!   readings and device status. It includes `decode_binary` and `mac_verify`'s work;
//!   the rest is the shard's own;
//! - `shard_seal` — `ShardCore::seal` of that batch: each meter's state moved into it,
//!   the standard processor chain (VEE, usage, billing, alerting, analytics, warmed by
//!   the history) run on it, the states taken back;
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use gungraun::{library_benchmark, library_benchmark_group, main};
use meterflow_ingest::config::Config;
use meterflow_ingest::metrics::PipelineMetrics;
use meterflow_ingest::shard::ShardSettings;
use meterflow_ingest::shard::core::{Arrival, Now, Sealed, ShardCore, Step, WindowRows};
use meterflow_ingest::tenants::Tenants;
use meterflow_model::codec::{decode, encode_binary, encode_json};
use meterflow_model::{MeterKey, MeterState, Outputs, SealedBatch, Uplink, mac};
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

/// The fleet's tenant as a service configures it: every meter has its MAC key, so
/// the shard verifies every uplink, as a tenant with `meter_keys` does.
fn tenant_config() -> Config {
    let tenant = SimConfig::default().tenant;
    let secret = MacKeys::PerMeter(MAC_SECRET.to_string());
    let mut toml = format!("[[tenants]]\nid = \"{tenant}\"\n[tenants.meter_keys]\n");
    for m in 0..METERS {
        let meter = meter_id_string(m);
        toml += &format!("{meter} = \"{}\"\n", hex::encode(secret.key_for(&meter)));
    }
    Config::from_toml(&toml).expect("a valid tenant config")
}

/// The service's shard core for the fleet, with its clock pinned: every arrival is
/// received at one instant (the linger and rate limits never come into play) and
/// every batch is sealed at its round's `received_at`.
struct Shard {
    core: ShardCore,
    keys: Vec<MeterKey>,
    at: Instant,
}

impl Shard {
    fn new() -> Shard {
        let config = tenant_config();
        let settings = ShardSettings {
            limits: config.limits.clone(),
            batch_readings: usize::MAX,
            linger: Duration::from_secs(3_600),
            resend_window_ms: 600_000,
            sweep_interval: Duration::from_secs(3_600),
            dead_letter_rate: config.pipeline.dead_letter_rate(),
            held_meters: config.pipeline.held_meters_per_shard(),
        };
        let at = Instant::now();
        let fleet = SimConfig::default();
        Shard {
            core: ShardCore::new(
                0,
                settings,
                Arc::new(Tenants::from_config(&config)),
                ProcessorChain::standard(),
                PipelineMetrics::register(),
                at,
            ),
            keys: (0..METERS).map(|m| fleet.meter_key(m).unwrap()).collect(),
            at,
        }
    }

    /// Every meter's message of `round` into the open batch, in the binary wire form,
    /// each meter's state hydrated (empty) the first time the core asks for it.
    fn admit_round(&mut self, round: &Round) {
        for ((key, uplink), payload) in self.keys.iter().zip(&round.uplinks).zip(&round.binary) {
            let arrival = Arrival {
                identity: key,
                topic: &[],
                payload,
                refused: None,
                received_at: received_at(uplink),
                received: self.at,
                order: None,
            };
            while let Step::NeedsState(key) = self.core.admit(&arrival, self.at) {
                self.core
                    .hydrated(key, MeterState::default(), WindowRows::default());
            }
        }
    }

    /// Seals the round's batch: the processors run on it.
    fn seal(&mut self, round: &Round) -> Sealed {
        let wall_ms = round
            .uplinks
            .iter()
            .map(received_at)
            .max()
            .unwrap_or(START_TS_MS);
        let sealed = self.core.seal(Now {
            instant: self.at,
            wall_ms,
        });
        let sealed = sealed.expect("a round holds every meter's message");
        assert!(
            sealed.batch.dead_letters.is_empty(),
            "valid, signed uplinks"
        );
        sealed
    }
}

/// Per-meter MAC keys, as the tenant config holds them.
fn mac_keys() -> Vec<Vec<u8>> {
    let secret = MacKeys::PerMeter(MAC_SECRET.to_string());
    (0..METERS)
        .map(|m| secret.key_for(&meter_id_string(m)))
        .collect()
}

fn verify_macs(keys: &[Vec<u8>], uplinks: &[Uplink]) -> bool {
    uplinks
        .iter()
        .zip(keys)
        .all(|(uplink, key)| mac::verify(key, uplink))
}

/// Every round through the shard (admitted, sealed, processed), handing each sealed
/// batch to `sealed`.
fn replay(rounds: &[Round], shard: &mut Shard, mut sealed: impl FnMut(Sealed)) {
    for round in rounds {
        shard.admit_round(round);
        sealed(shard.seal(round));
    }
}

fn last_round_payloads(binary: bool) -> Vec<Vec<u8>> {
    let last = rounds().pop().expect("ROUNDS > 0");
    if binary { last.binary } else { last.json }
}

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

fn mac_input() -> (Vec<Vec<u8>>, Vec<Uplink>) {
    let last = rounds().pop().expect("ROUNDS > 0");
    (mac_keys(), last.uplinks)
}

#[library_benchmark]
#[bench::round(mac_input())]
fn mac_verify(input: (Vec<Vec<u8>>, Vec<Uplink>)) -> (Vec<Vec<u8>>, Vec<Uplink>) {
    assert!(verify_macs(&input.0, black_box(&input.1)));
    input
}

/// The shard after the history, and the round still to come.
fn admit_input() -> (Shard, Round) {
    let mut rounds = rounds();
    let round = rounds.pop().expect("ROUNDS > 0");
    let mut shard = Shard::new();
    replay(&rounds, &mut shard, |_| {});
    (shard, round)
}

#[library_benchmark]
#[bench::round(admit_input())]
fn shard_admit(mut input: (Shard, Round)) -> (Shard, Round) {
    input.0.admit_round(black_box(&input.1));
    input
}

/// The shard after the history with the last round admitted, not yet sealed.
fn seal_input() -> (Shard, Round) {
    let (mut shard, round) = admit_input();
    shard.admit_round(&round);
    (shard, round)
}

#[library_benchmark]
#[bench::round(seal_input())]
fn shard_seal(mut input: (Shard, Round)) -> (Shard, Sealed) {
    let sealed = input.0.seal(black_box(&input.1));
    (input.0, black_box(sealed))
}

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
    let mut shard = Shard::new();
    let mut rollup = DistrictRollup::new(1);
    let mut groups: Vec<SinkGroup> = Vec::new();
    replay(&rounds(), &mut shard, |sealed| {
        let Sealed {
            batch, mut outputs, ..
        } = sealed;
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
        shard_seal,
        store_commit,
        cache_apply
    ]
);

main!(library_benchmark_groups = stages);
