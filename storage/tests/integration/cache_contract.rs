//! One contract for both hot caches: the same outputs applied (twice) to the
//! in-process `MemoryCache` and to `RedisCache` on a real Redis must read back the
//! same — views, summaries, district rows, top consumers, open and recent alerts —
//! with tenants isolated. The fixtures here also feed the Redis-only tests
//! (`redis.rs`).

use meterflow_model::alert::{AlertEvent, AlertKind, EpisodeState};
use meterflow_model::analytics::{DistrictUsage, Resolution, TopEntry, UsageSketch};
use meterflow_model::billing::BillLine;
use meterflow_model::{MeterView, Outputs, Quality, TenantSummary, TopConsumers};
use meterflow_storage::HotCache;
use meterflow_storage::memory_cache::MemoryCache;
use meterflow_storage::redis_cache::{RedisCache, RedisConfig};

use crate::redis::Cleanup;
use crate::servers;
use crate::utils::meter_key;

/// 2025-01-15T00:00Z.
pub(crate) const MIDNIGHT: i64 = 1_736_899_200_000;
pub(crate) const MINUTE: i64 = 60_000;
pub(crate) const HOUR: i64 = 3_600_000;
pub(crate) const DAY: i64 = 24 * HOUR;

pub(crate) fn view(tenant: &str, meter: &str, today_l: u64) -> MeterView {
    MeterView {
        tenant: tenant.into(),
        meter: meter.into(),
        last_seq: Some(41),
        last_ts: Some(MIDNIGHT + 14 * MINUTE),
        reg: Some(123_456),
        rev: Some(2),
        flow: Some(35),
        temp: Some(125),
        today_l,
        quality: Quality::Actual,
        district: "default".into(),
        battery: None,
        rssi: None,
    }
}

pub(crate) fn bill(
    tenant: &str,
    meter: &str,
    period: &str,
    usage_l: u64,
    final_: bool,
) -> BillLine {
    BillLine {
        tenant: tenant.into(),
        meter: meter.into(),
        period: period.into(),
        currency: "EUR".into(),
        usage_l,
        tiers: Vec::new(),
        fixed_cents: 800,
        amount_cents: 800 + usage_l * 150 / 1000,
        estimated: false,
        final_,
    }
}

pub(crate) fn alert(
    tenant: &str,
    meter: &str,
    kind: AlertKind,
    state: EpisodeState,
    at: i64,
) -> AlertEvent {
    AlertEvent {
        tenant: tenant.into(),
        meter: meter.into(),
        kind,
        priority: kind.priority(),
        state,
        opened_at: MIDNIGHT + MINUTE,
        at,
        detail: format!("{} on {meter}: \"test\"", kind.name()),
    }
}

pub(crate) fn district_row(
    tenant: &str,
    district: &str,
    resolution: Resolution,
    start_ms: i64,
    usage_l: u64,
    meters: u64,
) -> DistrictUsage {
    DistrictUsage {
        usage_l,
        meters,
        ..DistrictUsage::new(tenant, district, resolution, start_ms)
    }
}

/// What a cache returns for a row: the row without its merge-only sketch.
pub(crate) fn as_cached(row: &DistrictUsage) -> DistrictUsage {
    DistrictUsage {
        meter_hour_sketch: UsageSketch::default(),
        ..row.clone()
    }
}

pub(crate) fn top_list(tenant: &str, day: &str, entries: &[(&str, u64)]) -> TopConsumers {
    TopConsumers {
        tenant: tenant.into(),
        day: day.into(),
        day_start_ms: MIDNIGHT,
        limit: 10,
        entries: entries
            .iter()
            .map(|(meter, usage_l)| TopEntry {
                meter: (*meter).into(),
                usage_l: *usage_l,
            })
            .collect(),
    }
}

pub(crate) fn summary(tenant: &str, usage_today_l: u64, updated_at: i64) -> TenantSummary {
    TenantSummary {
        tenant: tenant.into(),
        day: "2025-01-15".into(),
        usage_today_l,
        meters_reporting: 2,
        alerts_open: 0,
        updated_at,
    }
}

/// A minute's district rows: north at 00:10, 00:11 and 00:13 (no 00:12), south at
/// 00:10.
pub(crate) fn minute_rows(tenant: &str) -> Vec<DistrictUsage> {
    vec![
        district_row(
            tenant,
            "north",
            Resolution::Minute,
            MIDNIGHT + 10 * MINUTE,
            12,
            2,
        ),
        district_row(
            tenant,
            "north",
            Resolution::Minute,
            MIDNIGHT + 11 * MINUTE,
            7,
            1,
        ),
        district_row(
            tenant,
            "north",
            Resolution::Minute,
            MIDNIGHT + 13 * MINUTE,
            3,
            1,
        ),
        district_row(
            tenant,
            "south",
            Resolution::Minute,
            MIDNIGHT + 10 * MINUTE,
            99,
            9,
        ),
    ]
}

/// North's 00:00 hour with percentiles from a sketch.
pub(crate) fn hour_row(tenant: &str) -> DistrictUsage {
    let mut row = district_row(tenant, "north", Resolution::Hour, MIDNIGHT, 40, 2);
    row.meter_hour_sketch.add(10);
    row.meter_hour_sketch.add(30);
    row.refresh_derived();
    row
}

/// North's day with night hours.
pub(crate) fn day_row(tenant: &str) -> DistrictUsage {
    let mut row = district_row(tenant, "north", Resolution::Day, MIDNIGHT, 1_850, 2);
    row.night_hour_l = [Some(6), Some(4)];
    row.refresh_derived();
    row
}

/// Everything processors emit, for one tenant: two meters, their bills (with last
/// month's final one), four alert steps (one episode opened and cleared at once),
/// district rows of every resolution, a top list with a tie, a summary.
pub(crate) fn full_outputs(tenant: &str) -> Outputs {
    let mut districts = minute_rows(tenant);
    districts.push(hour_row(tenant));
    districts.push(day_row(tenant));
    Outputs {
        meters: vec![view(tenant, "m1", 900), view(tenant, "m2", 900)],
        bills: vec![
            bill(tenant, "m1", "2025-01", 5_000, false),
            bill(tenant, "m1", "2024-12", 9_000, true),
            bill(tenant, "m2", "2025-01", 700, false),
        ],
        alerts: vec![
            alert(
                tenant,
                "m1",
                AlertKind::Leak,
                EpisodeState::Opened,
                MIDNIGHT + MINUTE,
            ),
            alert(
                tenant,
                "m1",
                AlertKind::Burst,
                EpisodeState::Opened,
                MIDNIGHT + 2 * MINUTE,
            ),
            alert(
                tenant,
                "m2",
                AlertKind::LowBattery,
                EpisodeState::Opened,
                MIDNIGHT + 3 * MINUTE,
            ),
            alert(
                tenant,
                "m2",
                AlertKind::Freeze,
                EpisodeState::Opened,
                MIDNIGHT + 4 * MINUTE,
            ),
            alert(
                tenant,
                "m2",
                AlertKind::Freeze,
                EpisodeState::Cleared,
                MIDNIGHT + 5 * MINUTE,
            ),
        ],
        districts,
        top: vec![top_list(
            tenant,
            "2025-01-15",
            &[("m2", 900), ("m1", 900), ("m3", 50)],
        )],
        summaries: vec![summary(tenant, 1_850, MIDNIGHT + 15 * MINUTE)],
    }
}

/// The contract, on a cache that holds nothing of tenants `acme` and `other`.
pub(crate) fn check_contract(cache: &dyn HotCache) {
    let outputs = full_outputs("acme");
    cache.apply(&outputs).unwrap();
    cache.apply(&outputs).unwrap(); // absolute values: a replay reads the same

    // Meters.
    assert_eq!(
        cache.meter(&meter_key("acme", "m1")).unwrap(),
        Some(view("acme", "m1", 900))
    );
    assert_eq!(cache.meter(&meter_key("acme", "m9")).unwrap(), None);

    // Summary: alerts_open counts the open episodes (leak, burst, low battery).
    let expected_summary = TenantSummary {
        alerts_open: 3,
        ..summary("acme", 1_850, MIDNIGHT + 15 * MINUTE)
    };
    assert_eq!(
        cache.summary("acme").unwrap(),
        Some(expected_summary.clone())
    );

    // District rows: ascending, missing windows skipped, [from, to) respected.
    let minutes = cache
        .district_usage(
            "acme",
            "north",
            Resolution::Minute,
            MIDNIGHT,
            MIDNIGHT + HOUR,
        )
        .unwrap();
    let north_minutes: Vec<_> = minute_rows("acme")[..3].iter().map(as_cached).collect();
    assert_eq!(minutes, north_minutes);
    let cut = cache
        .district_usage(
            "acme",
            "north",
            Resolution::Minute,
            MIDNIGHT + 10 * MINUTE + 1,
            MIDNIGHT + 13 * MINUTE,
        )
        .unwrap();
    assert_eq!(cut, vec![as_cached(&minute_rows("acme")[1])]);
    // A window longer than a day of minutes is cut to its newest day.
    let long = cache
        .district_usage(
            "acme",
            "north",
            Resolution::Minute,
            MIDNIGHT - DAY,
            MIDNIGHT + DAY + 12 * MINUTE,
        )
        .unwrap();
    assert_eq!(long, vec![as_cached(&minute_rows("acme")[2])]);
    let hours = cache
        .district_usage(
            "acme",
            "north",
            Resolution::Hour,
            MIDNIGHT - HOUR,
            MIDNIGHT + HOUR,
        )
        .unwrap();
    assert_eq!(hours, vec![as_cached(&hour_row("acme"))]);
    assert_eq!(hours[0].p50_l, Some(10));
    let days = cache
        .district_usage(
            "acme",
            "north",
            Resolution::Day,
            MIDNIGHT - DAY,
            MIDNIGHT + DAY,
        )
        .unwrap();
    assert_eq!(days, vec![as_cached(&day_row("acme"))]);
    assert_eq!(days[0].night_flow_lph, Some(4));
    assert!(
        cache
            .district_usage(
                "acme",
                "east",
                Resolution::Minute,
                MIDNIGHT,
                MIDNIGHT + HOUR
            )
            .unwrap()
            .is_empty()
    );
    assert!(
        cache
            .district_usage(
                "acme",
                "north",
                Resolution::Minute,
                MIDNIGHT + HOUR,
                MIDNIGHT
            )
            .unwrap()
            .is_empty()
    );

    // Top consumers: largest first, ties by meter id, cut to the limit.
    let top = |limit| cache.top_consumers("acme", "2025-01-15", limit).unwrap();
    let entry = |meter: &str, usage_l| TopEntry {
        meter: meter.into(),
        usage_l,
    };
    assert_eq!(
        top(10),
        vec![entry("m1", 900), entry("m2", 900), entry("m3", 50)]
    );
    assert_eq!(top(1), vec![entry("m1", 900)]);
    assert!(top(0).is_empty());
    assert!(
        cache
            .top_consumers("acme", "2025-01-16", 10)
            .unwrap()
            .is_empty()
    );
    assert!(cache.top_consumers("acme", "15.01.2025", 10).is_err());

    // Open alerts: highest priority first (burst is critical, leak high, low
    // battery low); the cleared freeze episode is gone.
    let open: Vec<_> = cache
        .open_alerts("acme")
        .unwrap()
        .into_iter()
        .map(|a| (a.meter, a.kind))
        .collect();
    assert_eq!(
        open,
        vec![
            ("m1".to_owned(), AlertKind::Burst),
            ("m1".to_owned(), AlertKind::Leak),
            ("m2".to_owned(), AlertKind::LowBattery),
        ]
    );
    assert_eq!(cache.open_alerts("acme").unwrap()[0], outputs.alerts[1]);
    // Recent alerts: newest first (the replay appended the same steps again).
    let recent = cache.recent_alerts("acme", 2).unwrap();
    assert_eq!(
        recent,
        vec![outputs.alerts[4].clone(), outputs.alerts[3].clone()]
    );
    assert_eq!(cache.recent_alerts("acme", 100).unwrap().len(), 10);
    assert!(cache.recent_alerts("acme", 0).unwrap().is_empty());

    // Later steps: the leak clears, the burst is updated. Counts follow, also in the
    // summary, which this apply does not carry.
    let mut burst = alert(
        "acme",
        "m1",
        AlertKind::Burst,
        EpisodeState::Updated,
        MIDNIGHT + 20 * MINUTE,
    );
    burst.detail = "still bursting".into();
    cache
        .apply(&Outputs {
            alerts: vec![
                alert(
                    "acme",
                    "m1",
                    AlertKind::Leak,
                    EpisodeState::Cleared,
                    MIDNIGHT + 20 * MINUTE,
                ),
                burst.clone(),
            ],
            ..Outputs::default()
        })
        .unwrap();
    let open = cache.open_alerts("acme").unwrap();
    assert_eq!(open.len(), 2);
    assert_eq!(open[0], burst);
    assert_eq!(cache.summary("acme").unwrap().unwrap().alerts_open, 2);

    // A shorter top list replaces the day's list; it does not merge into it.
    cache
        .apply(&Outputs {
            top: vec![top_list("acme", "2025-01-15", &[("m3", 2_000)])],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(top(10), vec![entry("m3", 2_000)]);

    // Tenants are isolated: `other` sees none of it, and its own writes under the
    // same meter and district names leave `acme` alone.
    assert_eq!(cache.meter(&meter_key("other", "m1")).unwrap(), None);
    assert_eq!(cache.summary("other").unwrap(), None);
    assert!(cache.open_alerts("other").unwrap().is_empty());
    assert!(cache.recent_alerts("other", 10).unwrap().is_empty());
    assert!(
        cache
            .top_consumers("other", "2025-01-15", 10)
            .unwrap()
            .is_empty()
    );
    assert!(
        cache
            .district_usage(
                "other",
                "north",
                Resolution::Minute,
                MIDNIGHT,
                MIDNIGHT + HOUR
            )
            .unwrap()
            .is_empty()
    );
    cache
        .apply(&Outputs {
            meters: vec![view("other", "m1", 1)],
            districts: vec![district_row(
                "other",
                "north",
                Resolution::Minute,
                MIDNIGHT + 10 * MINUTE,
                1,
                1,
            )],
            summaries: vec![summary("other", 1, MIDNIGHT)],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(
        cache.meter(&meter_key("acme", "m1")).unwrap(),
        Some(view("acme", "m1", 900))
    );
    assert_eq!(
        cache
            .district_usage(
                "acme",
                "north",
                Resolution::Minute,
                MIDNIGHT,
                MIDNIGHT + HOUR
            )
            .unwrap(),
        north_minutes
    );
    assert_eq!(cache.summary("other").unwrap().unwrap().alerts_open, 0);
    assert_eq!(cache.summary("acme").unwrap().unwrap().usage_today_l, 1_850);

    // Names that are not ids are neither written nor readable.
    cache
        .apply(&Outputs {
            meters: vec![view("bad}tenant", "m1", 1)],
            districts: vec![district_row(
                "acme",
                "no:rth",
                Resolution::Minute,
                MIDNIGHT,
                1,
                1,
            )],
            ..Outputs::default()
        })
        .unwrap();
    assert!(
        cache
            .district_usage(
                "acme",
                "no:rth",
                Resolution::Minute,
                MIDNIGHT,
                MIDNIGHT + HOUR
            )
            .unwrap()
            .is_empty()
    );
    assert_eq!(cache.summary("bad}tenant").unwrap(), None);
}

#[test]
fn memory_cache_keeps_the_cache_contract() {
    check_contract(&MemoryCache::new());
}

#[test]
fn redis_cache_keeps_the_cache_contract() {
    let Some(url) = servers::redis("redis_cache_contract") else {
        return;
    };
    let prefix = servers::unique_name("contract");
    let _cleanup = Cleanup::new(&url, &prefix);
    let cache = RedisCache::open(
        &url,
        RedisConfig {
            key_prefix: prefix.clone(),
            ..RedisConfig::default()
        },
    )
    .unwrap();
    check_contract(&cache);
}
