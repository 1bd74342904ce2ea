//! Readings per second on one core, per processor and for the whole chain, on a
//! realistic sealed batch: 4,096 hourly readings over 1,000 meters (4–5 each, as a
//! shard seals them), every meter warmed up with a day of history so VEE, billing,
//! alerting and analytics do their steady-state work.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use meterflow_model::{
    MeterBatch, MeterKey, MeterState, Outputs, ProcessorsConfig, Quality, Reading, SealedBatch,
    StoredReading,
};
use meterflow_processors::alerting::AlertingProcessor;
use meterflow_processors::analytics::AnalyticsProcessor;
use meterflow_processors::billing::BillingProcessor;
use meterflow_processors::vee::VeeProcessor;
use meterflow_processors::{Processor, ProcessorChain, TenantDirectory};

const METERS: usize = 1_000;
const READINGS: usize = 4_096;
const HOUR: i64 = 3_600_000;
/// 2025-01-15T00:00Z.
const START: i64 = 1_736_899_200_000;

fn reading(ts: i64, reg: u64) -> StoredReading {
    StoredReading {
        reading: Reading {
            ts,
            reg,
            rev: 0,
            flow: 40,
            temp: Some(95),
        },
        seq: 1,
        received_at: ts,
        quality: Quality::Actual,
        interval_l: None,
    }
}

/// Litres of meter `m` in hour `h`: varied, never implausible.
fn litres(m: usize, h: usize) -> u64 {
    ((m * 31 + h * 17) % 60) as u64
}

/// Hours `from..to` of every meter, spread so the batch holds `READINGS` readings.
fn batch(states: &[MeterState], from: usize) -> SealedBatch {
    let meters = (0..METERS)
        .map(|m| {
            let count = READINGS / METERS + usize::from(m < READINGS % METERS);
            let mut reg = 1_000_000 + (0..from).map(|h| litres(m, h)).sum::<u64>();
            let readings = (from..from + count)
                .map(|h| {
                    reg += litres(m, h);
                    reading(START + (h as i64 + 1) * HOUR, reg)
                })
                .collect();
            MeterBatch {
                replaced: Vec::new(),
                key: MeterKey::new(
                    "bench".try_into().unwrap(),
                    format!("m{m:05}").as_str().try_into().unwrap(),
                ),
                readings,
                state: states[m].clone(),
                messages: 1,
                sent_readings: count as u32,
                duplicates: 0,
                first_received_at: None,
                statuses: Vec::new(),
                orders: Vec::new(),
            }
        })
        .collect();
    SealedBatch {
        meters,
        now_ms: START + (from as i64 + 5) * HOUR,
        ..SealedBatch::default()
    }
}

/// Meter states after a day of readings, and a realistic batch that follows it.
fn warm_batch() -> SealedBatch {
    let mut chain = ProcessorChain::standard();
    let mut states = vec![MeterState::default(); METERS];
    for day_hour in (0..24).step_by(READINGS / METERS) {
        let mut warm = batch(&states, day_hour);
        chain.process(&mut warm, &mut Outputs::default());
        states = warm.meters.into_iter().map(|m| m.state).collect();
    }
    batch(&states, 24)
}

fn bench(c: &mut Criterion) {
    let directory = TenantDirectory::resolve(&ProcessorsConfig::default()).unwrap();
    let raw = warm_batch();
    let mut validated = raw.clone();
    VeeProcessor::new(directory.clone()).process(&mut validated, &mut Outputs::default());

    let mut group = c.benchmark_group("processors");
    group.throughput(Throughput::Elements(READINGS as u64));
    let mut run = |name: &str, input: &SealedBatch, processor: &mut dyn Processor| {
        let mut out = Outputs::default();
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || input.clone(),
                |batch| {
                    out.clear();
                    processor.process(batch, &mut out);
                    black_box(&out);
                },
                BatchSize::LargeInput,
            )
        });
    };
    run("vee", &raw, &mut VeeProcessor::new(directory.clone()));
    run(
        "usage",
        &validated,
        &mut meterflow_processors::usage::UsageProcessor::with_directory(directory.clone()),
    );
    run(
        "billing",
        &validated,
        &mut BillingProcessor::with_directory(directory.clone()),
    );
    run(
        "alerting",
        &validated,
        &mut AlertingProcessor::with_directory(directory.clone()),
    );
    run(
        "analytics",
        &validated,
        &mut AnalyticsProcessor::with_directory(directory.clone()),
    );
    let mut chain = ProcessorChain::standard();
    let mut out = Outputs::default();
    group.bench_function("chain", |b| {
        b.iter_batched_ref(
            || raw.clone(),
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
