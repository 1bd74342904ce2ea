//! What sealing a batch costs, on a batch as a shard seals it: 4,096 readings over
//! 1,024 meters (4 fifteen-minute reads each, from the simulator's ground truth),
//! every meter warmed up with a day of history.
//!
//! The whole seal (`ShardCore::seal`, `ingest/src/shard/core.rs`) is measured in
//! instructions by the performance gate (`benches/hot_path.rs`, `shard_seal`). Here,
//! in wall time, with public types only:
//! - `state_clone` — cloning each meter's `MeterState`, which `seal` does once per
//!   meter (moved into the batch, cloned back after the processors);
//! - `chain` — `ProcessorChain::standard().process`, the bulk of sealing (VEE, usage,
//!   billing, alerting, analytics). `processors/benches/processors.rs` breaks this
//!   down per processor on hourly reads.
//!
//! Throughput is in readings.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use meterflow_model::{
    MeterBatch, MeterKey, MeterState, Outputs, Quality, SealedBatch, StoredReading, Uplink,
};
use meterflow_processors::ProcessorChain;
use meterflow_simulator::{MeterMessages, SimConfig, meter_messages};

const METERS: usize = 1_024;
const READINGS_PER_METER: usize = 4;
/// Messages per meter: a day of warm-up (24 h × 4 reads ÷ 4 per message) and one more.
const MESSAGES: u64 = 25;

struct Fleet {
    keys: Vec<MeterKey>,
    generators: Vec<MeterMessages>,
    states: Vec<MeterState>,
}

impl Fleet {
    fn new() -> Fleet {
        let config = SimConfig {
            meters: METERS,
            readings_per_message: READINGS_PER_METER,
            messages_per_meter: MESSAGES,
            start_ts_ms: Some(1_763_800_000_000),
            ..SimConfig::default()
        };
        Fleet {
            keys: (0..METERS).map(|m| config.meter_key(m).unwrap()).collect(),
            generators: (0..METERS).map(|m| meter_messages(&config, m)).collect(),
            states: vec![MeterState::default(); METERS],
        }
    }

    /// The next message of every meter as one sealed batch.
    fn next_batch(&mut self) -> SealedBatch {
        let mut uplink = Uplink::new(0, Vec::new());
        let mut now_ms = 0;
        let meters = (0..METERS)
            .map(|m| {
                assert!(self.generators[m].fill_next(&mut uplink).is_some());
                let received_at = uplink.readings.last().map_or(0, |r| r.ts) + 1_000;
                now_ms = now_ms.max(received_at);
                MeterBatch {
                    replaced: Vec::new(),
                    key: self.keys[m].clone(),
                    readings: uplink
                        .readings
                        .iter()
                        .map(|reading| StoredReading {
                            reading: *reading,
                            seq: uplink.seq,
                            received_at,
                            quality: Quality::Actual,
                            interval_l: None,
                        })
                        .collect(),
                    state: self.states[m].clone(),
                    messages: 1,
                    sent_readings: uplink.readings.len() as u32,
                    duplicates: 0,
                    first_received_at: Some(received_at),
                    statuses: Vec::new(),
                    orders: Vec::new(),
                }
            })
            .collect();
        SealedBatch {
            meters,
            now_ms,
            ..SealedBatch::default()
        }
    }

    fn keep_states(&mut self, batch: SealedBatch) {
        for (state, meter) in self.states.iter_mut().zip(batch.meters) {
            *state = meter.state;
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut fleet = Fleet::new();
    let mut chain = ProcessorChain::standard();
    for _ in 1..MESSAGES {
        let mut warm = fleet.next_batch();
        chain.process(&mut warm, &mut Outputs::default());
        fleet.keep_states(warm);
    }
    let batch = fleet.next_batch();
    assert_eq!(batch.reading_count(), METERS * READINGS_PER_METER);

    let mut group = c.benchmark_group("seal_4096_readings");
    group.throughput(Throughput::Elements(batch.reading_count() as u64));
    group.bench_function("state_clone", |b| {
        b.iter(|| {
            let states: Vec<MeterState> = fleet.states.to_vec();
            black_box(states)
        })
    });
    let mut out = Outputs::default();
    group.bench_function("chain", |b| {
        b.iter_batched_ref(
            || batch.clone(),
            |batch| {
                out.clear();
                chain.process(batch, &mut out);
                black_box(&out);
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
