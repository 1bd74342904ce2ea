//! What writing to a real Redis costs: `RedisCache::apply` of
//! - one chunk of views (1,000 meters of one tenant, the script chunk of
//!   `storage/src/redis_cache/apply.rs`) — the views' hashes with their version gate
//!   and the meter index. Each iteration writes the same 1,000 meters with a greater
//!   version, so the keys stay bounded (prefix `mfbench`, a 7-day TTL as in service);
//! - one analytics flush of a tenant with 100 districts (a minute, an hour and a day
//!   row each, the day's top list and the summary: 302 aggregates), written as
//!   totals (one process, embedded mode) and as one contributor's shares merged with
//!   another's (distributed mode, `storage/src/redis_cache/shares.rs`).
//!
//! Needs a Redis at `MF_REDIS_URL` (default `redis://127.0.0.1:6390`, the one
//! `scripts/redis start` runs) and fails when there is none. Throughput is in views.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use meterflow_model::analytics::{DistrictUsage, Resolution, TopConsumers, TopEntry};
use meterflow_model::{MeterView, Outputs, Quality, TenantSummary};
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
        size: None,
        battery: None,
        rssi: None,
        version,
    }
}

const DISTRICTS: usize = 100;

/// A cache on `MF_REDIS_URL` with the bench's key prefix; panics without a Redis.
fn cache() -> RedisCache {
    let url = std::env::var("MF_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6390".into());
    let config = RedisConfig {
        key_prefix: "mfbench".into(),
        ..RedisConfig::default()
    };
    let cache = RedisCache::open(&url, config).expect("a Redis at MF_REDIS_URL");
    cache
        .ping()
        .unwrap_or_else(|e| panic!("no Redis at {url} (scripts/redis start): {e}"));
    cache
}

/// One flush of a tenant's aggregates: every district's minute, hour and day row
/// (`usage_l` litres each), the day's top list and the summary.
fn flush(usage_l: u64) -> Outputs {
    let start = 1_736_899_200_000;
    let row = |district: usize, resolution| {
        let mut row = DistrictUsage {
            usage_l,
            meters: 40,
            ..DistrictUsage::new("acme", &format!("d{district:03}"), resolution, start)
        };
        (1..=40).for_each(|m| row.meter_hour_sketch.add(m * 7));
        row.refresh_derived();
        row
    };
    Outputs {
        districts: (0..DISTRICTS)
            .flat_map(|d| {
                [Resolution::Minute, Resolution::Hour, Resolution::Day].map(|r| row(d, r))
            })
            .collect(),
        top: vec![TopConsumers {
            tenant: "acme".into(),
            day: "2025-01-15".into(),
            day_start_ms: start,
            limit: 10,
            changed: Vec::new(),
            entries: (0..10)
                .map(|m| TopEntry {
                    meter: format!("m{m:06}"),
                    usage_l: usage_l + m,
                })
                .collect(),
        }],
        summaries: vec![TenantSummary {
            tenant: "acme".into(),
            day: "2025-01-15".into(),
            usage_today_l: usage_l,
            meters_reporting: 4_000,
            alerts_open: 0,
            updated_at: start,
        }],
        ..Outputs::default()
    }
}

fn apply_aggregates(c: &mut Criterion) {
    let totals = cache();
    let shares = cache().with_contributor("bench-a");
    // Another processor's shares of the same windows, so each merge has two.
    cache()
        .with_contributor("bench-b")
        .apply(&flush(5))
        .unwrap();
    let mut usage_l = 0;
    let mut group = c.benchmark_group("redis_apply");
    group.throughput(Throughput::Elements(3 * DISTRICTS as u64 + 2));
    for (name, cache) in [("flush_totals", &totals), ("flush_shares", &shares)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    usage_l += 1;
                    flush(usage_l)
                },
                |outputs| cache.apply(black_box(&outputs)).unwrap(),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn apply_views(c: &mut Criterion) {
    let cache = cache();
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

criterion_group!(benches, apply_views, apply_aggregates);
criterion_main!(benches);
