//! What writing meter views to a real Redis costs: `RedisCache::apply` of one chunk
//! of views (1,000 meters of one tenant, the script chunk of `storage/src/redis_cache/
//! apply.rs`) — the views' hashes with their version gate and the meter index.
//! Each iteration writes the same 1,000 meters with a greater version, so the keys
//! stay bounded (prefix `mfbench`, a 7-day TTL as in service).
//!
//! Needs a Redis at `MF_REDIS_URL` (default `redis://127.0.0.1:6390`, the one
//! `scripts/redis start` runs) and fails when there is none. Throughput is in views.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use meterflow_model::{MeterView, Outputs, Quality};
use meterflow_storage::HotCache;
use meterflow_storage::redis_cache::{RedisCache, RedisConfig};

const VIEWS: usize = 1_000;

fn view(meter: usize, version: i64) -> MeterView {
    MeterView {
        tenant: "acme".into(),
        meter: format!("m{meter:06}"),
        last_seq: Some(41),
        last_ts: Some(1_736_899_200_000),
        reg: Some(1_000),
        rev: Some(0),
        flow: Some(12),
        temp: None,
        today_l: 300,
        quality: Quality::Actual,
        district: "north".into(),
        battery: None,
        rssi: None,
        version,
    }
}

fn apply_views(c: &mut Criterion) {
    let url = std::env::var("MF_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6390".into());
    let config = RedisConfig {
        key_prefix: "mfbench".into(),
        ..RedisConfig::default()
    };
    let cache = RedisCache::open(&url, config).expect("a Redis at MF_REDIS_URL");
    cache
        .ping()
        .unwrap_or_else(|e| panic!("no Redis at {url} (scripts/redis start): {e}"));
    let mut version = 1_736_899_200_000_000;
    let mut group = c.benchmark_group("redis_apply");
    group.throughput(Throughput::Elements(VIEWS as u64));
    group.bench_function("views_1000", |b| {
        b.iter_batched(
            || {
                version += 1;
                Outputs {
                    meters: (0..VIEWS).map(|m| view(m, version)).collect(),
                    ..Outputs::default()
                }
            },
            |outputs| cache.apply(black_box(&outputs)).unwrap(),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, apply_views);
criterion_main!(benches);
