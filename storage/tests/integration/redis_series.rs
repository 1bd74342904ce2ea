//! What dashboards read from Redis directly, beyond single hashes: the district
//! series (one `ZRANGEBYSCORE` per chart), the district index, and the meter index
//! (meter list pages, a district's meters, silent meters). Each test applies outputs
//! through `RedisCache`, then issues the commands `docs/redis-keys.md` shows — raw,
//! as `redis-cli` would — and checks the answers against hand-computed values:
//! rewrites replace a window's point, trimming keeps the documented spans, TTLs are
//! set, and the meter index follows moves and drops meters whose hash expired.

use std::thread;
use std::time::Duration;

use meterflow_model::analytics::Resolution;
use meterflow_model::{MeterView, Outputs};
use meterflow_storage::HotCache;
use meterflow_storage::redis_cache::{RedisCache, RedisConfig};
use redis::Commands;

use crate::cache_contract::{
    DAY, HOUR, MIDNIGHT, MINUTE, district_row, full_outputs, ids, list, view,
};
use crate::redis::Cleanup;
use crate::servers;

/// A cache on its own key prefix with `config`'s settings; the cleanup's connection
/// issues the dashboard's commands. Returns the tenant `acme`'s key start too.
fn cache_on(url: &str, test: &str, config: RedisConfig) -> (RedisCache, Cleanup, String) {
    let (cache, cleanup, prefix) = crate::redis::cache_on(url, test, config);
    (cache, cleanup, format!("{prefix}:{{acme}}"))
}

/// `redis-cli` style: a command from its words, answered as strings.
fn words(raw: &mut Cleanup, command: &[&str]) -> Vec<String> {
    let mut cmd = redis::cmd(command[0]);
    for word in &command[1..] {
        cmd.arg(*word);
    }
    cmd.query(&mut raw.connection)
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

fn number(raw: &mut Cleanup, command: &[&str]) -> i64 {
    let mut cmd = redis::cmd(command[0]);
    for word in &command[1..] {
        cmd.arg(*word);
    }
    cmd.query(&mut raw.connection)
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

fn ttl_near(raw: &mut Cleanup, key: &str, secs: u64) {
    let ttl: i64 = raw.connection.ttl(key).unwrap();
    let secs = secs as i64;
    assert!(
        ttl > secs - 60 && ttl <= secs,
        "{key}: TTL {ttl}, want {secs}"
    );
}

#[test]
fn redis_series_answer_a_chart_with_one_zrangebyscore() {
    let Some(url) = servers::redis("redis_series_chart") else {
        return;
    };
    let (cache, mut raw, t) = cache_on(&url, "series_chart", RedisConfig::default());
    cache.apply(&full_outputs("acme")).unwrap();
    cache.apply(&full_outputs("acme")).unwrap(); // a replay leaves the same points
    let config = RedisConfig::default();

    // 2025-01-15T00:00Z is 1736899200000; minutes 00:10, 00:11 and 00:13 of north.
    let north_min = format!("{t}:series:district:north:min");
    assert_eq!(
        words(
            &mut raw,
            &[
                "ZRANGEBYSCORE",
                &north_min,
                "1736899200000",
                "(1736902800000"
            ]
        ),
        [
            "1736899800000:12:2",
            "1736899860000:7:1",
            "1736899980000:3:1"
        ]
    );
    // Half-open ranges: [00:11, 00:13) holds only 00:11.
    assert_eq!(
        words(
            &mut raw,
            &[
                "ZRANGEBYSCORE",
                &north_min,
                "1736899860000",
                "(1736899980000"
            ]
        ),
        ["1736899860000:7:1"]
    );
    // The newest point, and the points with their scores.
    assert_eq!(
        words(&mut raw, &["ZRANGE", &north_min, "-1", "-1"]),
        ["1736899980000:3:1"]
    );
    assert_eq!(
        words(
            &mut raw,
            &[
                "ZRANGEBYSCORE",
                &north_min,
                "-inf",
                "+inf",
                "WITHSCORES",
                "LIMIT",
                "0",
                "1"
            ]
        ),
        ["1736899800000:12:2", "1736899800000"]
    );
    assert_eq!(
        words(
            &mut raw,
            &[
                "ZRANGEBYSCORE",
                &format!("{t}:series:district:south:min"),
                "1736899200000",
                "(1736902800000"
            ]
        ),
        ["1736899800000:99:9"]
    );
    // Hours carry the percentiles; days the minimum night flow.
    let north_hour = format!("{t}:series:district:north:hour");
    assert_eq!(
        words(
            &mut raw,
            &[
                "ZRANGEBYSCORE",
                &north_hour,
                "1736812800000",
                "(1736899200000"
            ]
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        words(
            &mut raw,
            &[
                "ZRANGEBYSCORE",
                &north_hour,
                "1736812800000",
                "1736899200000"
            ]
        ),
        ["1736899200000:40:2:10:30:30"]
    );
    let north_day = format!("{t}:series:district:north:day");
    assert_eq!(
        words(&mut raw, &["ZRANGEBYSCORE", &north_day, "-inf", "+inf"]),
        ["1736899200000:1850:2:4"]
    );
    // The district index: district → start of its newest window, oldest first.
    let districts = format!("{t}:districts");
    assert_eq!(
        words(&mut raw, &["ZRANGE", &districts, "0", "-1", "WITHSCORES"]),
        ["south", "1736899800000", "north", "1736899980000"]
    );
    assert_eq!(
        words(
            &mut raw,
            &["ZRANGEBYSCORE", &districts, "1736899900000", "+inf"]
        ),
        ["north"]
    );

    ttl_near(&mut raw, &north_min, config.district_minute_ttl_secs);
    ttl_near(&mut raw, &north_hour, config.district_hour_ttl_secs);
    ttl_near(&mut raw, &north_day, config.district_day_ttl_secs);
    ttl_near(&mut raw, &districts, config.district_day_ttl_secs);

    // The series and the hashes agree with what the cache's own reads serve.
    let rows = cache
        .district_usage(
            "acme",
            "north",
            Resolution::Minute,
            MIDNIGHT,
            MIDNIGHT + HOUR,
        )
        .unwrap();
    let from_series: Vec<String> = rows
        .iter()
        .map(|r| format!("{}:{}:{}", r.start_ms, r.usage_l, r.meters))
        .collect();
    assert_eq!(
        words(
            &mut raw,
            &[
                "ZRANGEBYSCORE",
                &north_min,
                "1736899200000",
                "(1736902800000"
            ]
        ),
        from_series
    );
}

#[test]
fn redis_series_rewrite_replaces_a_windows_point() {
    let Some(url) = servers::redis("redis_series_rewrite") else {
        return;
    };
    let (cache, mut raw, t) = cache_on(&url, "series_rewrite", RedisConfig::default());
    cache.apply(&full_outputs("acme")).unwrap();
    let north_min = format!("{t}:series:district:north:min");
    let at_1010 = [
        "ZRANGEBYSCORE",
        &north_min,
        "1736899800000",
        "1736899800000",
    ];
    assert_eq!(words(&mut raw, &at_1010), ["1736899800000:12:2"]);

    // Late reads grew 00:10: its point is replaced, not joined by a second one.
    let minute = |usage_l, meters| {
        district_row(
            "acme",
            "north",
            Resolution::Minute,
            MIDNIGHT + 10 * MINUTE,
            usage_l,
            meters,
        )
    };
    cache
        .apply(&Outputs {
            districts: vec![minute(20, 3)],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(words(&mut raw, &at_1010), ["1736899800000:20:3"]);
    assert_eq!(number(&mut raw, &["ZCARD", &north_min]), 3);
    // Two rewrites of one window in one apply: the later wins.
    cache
        .apply(&Outputs {
            districts: vec![minute(25, 3), minute(31, 4)],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(words(&mut raw, &at_1010), ["1736899800000:31:4"]);
    assert_eq!(number(&mut raw, &["ZCARD", &north_min]), 3);
    // The hash says the same.
    let usage: String = raw
        .connection
        .hget(format!("{t}:district:north:min:202501150010"), "usage_l")
        .unwrap();
    assert_eq!(usage, "31");

    // An hour whose percentiles were unknown gets them: the point is replaced.
    let hour_key = format!("{t}:series:district:north:hour");
    let mut hour = district_row("acme", "north", Resolution::Hour, MIDNIGHT + HOUR, 5, 1);
    cache
        .apply(&Outputs {
            districts: vec![hour.clone()],
            ..Outputs::default()
        })
        .unwrap();
    let at_01 = ["ZRANGEBYSCORE", &hour_key, "1736902800000", "1736902800000"];
    assert_eq!(words(&mut raw, &at_01), ["1736902800000:5:1:::"]);
    hour.meter_hour_sketch.add(5);
    hour.refresh_derived();
    cache
        .apply(&Outputs {
            districts: vec![hour],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(words(&mut raw, &at_01), ["1736902800000:5:1:5:5:5"]);
    assert_eq!(number(&mut raw, &["ZCARD", &hour_key]), 2);
}

#[test]
fn redis_series_keep_the_spans_of_the_window_hashes() {
    let Some(url) = servers::redis("redis_series_spans") else {
        return;
    };
    let (cache, mut raw, t) = cache_on(&url, "series_spans", RedisConfig::default());
    // Two days and ten minutes of minutes, 35 days and five hours of hours, in one
    // apply: the series keep 2 days (2,880 windows) and 35 days (840), the newest.
    let minutes: Vec<_> = (0..2 * 1_440 + 10)
        .map(|i| {
            district_row(
                "acme",
                "north",
                Resolution::Minute,
                MIDNIGHT + i * MINUTE,
                1,
                1,
            )
        })
        .collect();
    let hours: Vec<_> = (0..35 * 24 + 5)
        .map(|i| district_row("acme", "north", Resolution::Hour, MIDNIGHT + i * HOUR, 1, 1))
        .collect();
    cache
        .apply(&Outputs {
            districts: minutes.into_iter().chain(hours).collect(),
            ..Outputs::default()
        })
        .unwrap();
    let north_min = format!("{t}:series:district:north:min");
    let north_hour = format!("{t}:series:district:north:hour");
    assert_eq!(number(&mut raw, &["ZCARD", &north_min]), 2_880);
    assert_eq!(
        words(&mut raw, &["ZRANGE", &north_min, "0", "0"]),
        [format!("{}:1:1", MIDNIGHT + 10 * MINUTE)]
    );
    assert_eq!(number(&mut raw, &["ZCARD", &north_hour]), 840);
    assert_eq!(
        words(&mut raw, &["ZRANGE", &north_hour, "0", "0"]),
        [format!("{}:1:1:::", MIDNIGHT + 5 * HOUR)]
    );
}

#[test]
fn redis_series_and_the_district_index_are_trimmed() {
    let Some(url) = servers::redis("redis_series_trim") else {
        return;
    };
    // Spans follow the TTL settings: 10 minutes of minutes, an hour of days.
    let config = RedisConfig {
        district_minute_ttl_secs: 600,
        district_day_ttl_secs: 3_600,
        ..RedisConfig::default()
    };
    let (cache, mut raw, t) = cache_on(&url, "series_trim", config);
    let minute = |start_min: i64, usage_l| {
        district_row(
            "acme",
            "north",
            Resolution::Minute,
            MIDNIGHT + start_min * MINUTE,
            usage_l,
            1,
        )
    };
    // Thirty minutes written one apply at a time: the series holds the newest ten.
    for i in 0..30 {
        cache
            .apply(&Outputs {
                districts: vec![minute(i, 100 + i as u64)],
                ..Outputs::default()
            })
            .unwrap();
    }
    let north_min = format!("{t}:series:district:north:min");
    let starts = |raw: &mut Cleanup| -> Vec<i64> {
        words(raw, &["ZRANGEBYSCORE", &north_min, "-inf", "+inf"])
            .iter()
            .map(|m| m.split(':').next().unwrap().parse::<i64>().unwrap())
            .map(|start| (start - MIDNIGHT) / MINUTE)
            .collect()
    };
    assert_eq!(starts(&mut raw), (20..30).collect::<Vec<_>>());
    ttl_near(&mut raw, &north_min, 600);
    // A late row older than the span is trimmed at once; one inside replaces its point.
    cache
        .apply(&Outputs {
            districts: vec![minute(5, 1), minute(25, 7)],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(starts(&mut raw), (20..30).collect::<Vec<_>>());
    assert_eq!(
        words(
            &mut raw,
            &[
                "ZRANGEBYSCORE",
                &north_min,
                "1736900700000",
                "1736900700000"
            ]
        ),
        ["1736900700000:7:1"]
    );

    // The district index forgets a district whose newest window (north: 00:29) is
    // the day span (here an hour) or more older than the newest district's.
    let districts = format!("{t}:districts");
    cache
        .apply(&Outputs {
            districts: vec![district_row(
                "acme",
                "south",
                Resolution::Minute,
                MIDNIGHT + 28 * MINUTE + HOUR,
                1,
                1,
            )],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(
        words(&mut raw, &["ZRANGE", &districts, "0", "-1"]),
        ["north", "south"]
    );
    cache
        .apply(&Outputs {
            districts: vec![district_row(
                "acme",
                "south",
                Resolution::Minute,
                MIDNIGHT + 29 * MINUTE + HOUR,
                1,
                1,
            )],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(
        words(&mut raw, &["ZRANGE", &districts, "0", "-1"]),
        ["south"]
    );
    ttl_near(&mut raw, &districts, 3_600);
}

fn meter(meter: &str, district: &str, last_ts: Option<i64>) -> MeterView {
    MeterView {
        district: district.into(),
        last_ts,
        ..view("acme", meter, 10)
    }
}

#[test]
fn redis_meter_index_answers_the_documented_commands() {
    let Some(url) = servers::redis("redis_meter_index") else {
        return;
    };
    let config = RedisConfig::default();
    let (cache, mut raw, t) = cache_on(&url, "meter_index", config.clone());
    cache
        .apply(&Outputs {
            meters: vec![
                MeterView {
                    battery: Some(87),
                    rssi: Some(-97),
                    ..meter("m1", "north", Some(MIDNIGHT + 14 * MINUTE))
                },
                meter("m2", "south", None),
                meter("m3", "north", Some(MIDNIGHT - 2 * DAY)),
                meter("m4", "north2", Some(MIDNIGHT)),
            ],
            ..Outputs::default()
        })
        .unwrap();
    let meters = format!("{t}:meters");
    let by_district = format!("{t}:meters:by_district");
    let last_ts = format!("{t}:meters:last_ts");
    let meters_district = format!("{t}:meters:district");

    // The meter list, two at a time: the next page starts after the last id.
    assert_eq!(
        words(
            &mut raw,
            &["ZRANGEBYLEX", &meters, "-", "+", "LIMIT", "0", "2"]
        ),
        ["m1", "m2"]
    );
    assert_eq!(
        words(
            &mut raw,
            &["ZRANGEBYLEX", &meters, "(m2", "+", "LIMIT", "0", "2"]
        ),
        ["m3", "m4"]
    );
    assert_eq!(
        words(
            &mut raw,
            &["ZRANGEBYLEX", &meters, "(m4", "+", "LIMIT", "0", "2"]
        ),
        Vec::<String>::new()
    );
    assert_eq!(number(&mut raw, &["ZCARD", &meters]), 4);
    // A district's meters (not north2's), and how many there are.
    assert_eq!(
        words(
            &mut raw,
            &[
                "ZRANGEBYLEX",
                &by_district,
                "[north:",
                "(north;",
                "LIMIT",
                "0",
                "50"
            ]
        ),
        ["north:m1", "north:m3"]
    );
    assert_eq!(
        words(
            &mut raw,
            &[
                "ZRANGEBYLEX",
                &by_district,
                "(north:m1",
                "(north;",
                "LIMIT",
                "0",
                "50"
            ]
        ),
        ["north:m3"]
    );
    assert_eq!(
        number(&mut raw, &["ZLEXCOUNT", &by_district, "[north:", "(north;"]),
        2
    );
    // Silent meters: no reading since 2025-01-15T00:00Z (never-read ones first).
    assert_eq!(
        words(
            &mut raw,
            &[
                "ZRANGEBYSCORE",
                &last_ts,
                "-inf",
                "(1736899200000",
                "LIMIT",
                "0",
                "100"
            ]
        ),
        ["m2", "m3"]
    );
    assert_eq!(
        number(&mut raw, &["ZCOUNT", &last_ts, "-inf", "(1736899200000"]),
        2
    );
    assert_eq!(
        words(&mut raw, &["ZRANGE", &last_ts, "0", "-1", "WITHSCORES"]),
        [
            "m2",
            "-inf",
            "m3",
            "1736726400000",
            "m4",
            "1736899200000",
            "m1",
            "1736900040000"
        ]
    );
    assert_eq!(
        words(&mut raw, &["HGET", &meters_district, "m1"]),
        ["north"]
    );
    let m1 = format!("{t}:meter:m1");
    assert_eq!(
        words(
            &mut raw,
            &["HMGET", &m1, "district", "battery", "rssi", "last_ts"]
        ),
        ["north", "87", "-97", "1736900040000"]
    );
    for key in [
        &meters,
        &by_district,
        &last_ts,
        &meters_district,
        &format!("{t}:meters:seen"),
    ] {
        ttl_near(&mut raw, key, config.meter_ttl_secs);
    }

    // m1 moves to south with a message that reported no battery nor signal: its
    // index entries follow, its battery and signal stay.
    cache
        .apply(&Outputs {
            meters: vec![meter("m1", "south", Some(MIDNIGHT + 15 * MINUTE))],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(
        words(
            &mut raw,
            &["HMGET", &m1, "district", "battery", "rssi", "last_ts"]
        ),
        ["south", "87", "-97", "1736900100000"]
    );
    assert_eq!(
        words(
            &mut raw,
            &[
                "ZRANGEBYLEX",
                &by_district,
                "[north:",
                "(north;",
                "LIMIT",
                "0",
                "50"
            ]
        ),
        ["north:m3"]
    );
    assert_eq!(
        words(
            &mut raw,
            &[
                "ZRANGEBYLEX",
                &by_district,
                "[south:",
                "(south;",
                "LIMIT",
                "0",
                "50"
            ]
        ),
        ["south:m1", "south:m2"]
    );
    assert_eq!(number(&mut raw, &["ZCARD", &by_district]), 4);
    let south = cache
        .meters(
            "acme",
            &meterflow_model::MeterQuery {
                district: Some("south".into()),
                ..list(10)
            },
        )
        .unwrap();
    assert_eq!(ids(&south), ["m1", "m2"]);
    assert_eq!(south.meters[0].battery, Some(87));
}

#[test]
fn redis_meter_index_drops_meters_not_written_for_the_meter_ttl() {
    let Some(url) = servers::redis("redis_meter_index_trim") else {
        return;
    };
    let (cache, mut raw, t) = cache_on(
        &url,
        "meter_index_trim",
        RedisConfig {
            meter_ttl_secs: 1,
            ..RedisConfig::default()
        },
    );
    cache
        .apply(&Outputs {
            meters: vec![meter("m1", "north", Some(MIDNIGHT))],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(ids(&cache.meters("acme", &list(10)).unwrap()), ["m1"]);
    // Past the TTL m1's hash has expired; the next apply trims it from the index.
    thread::sleep(Duration::from_millis(1_300));
    cache
        .apply(&Outputs {
            meters: vec![meter("m2", "south", None)],
            ..Outputs::default()
        })
        .unwrap();
    assert_eq!(number(&mut raw, &["EXISTS", &format!("{t}:meter:m1")]), 0);
    for key in ["meters", "meters:last_ts", "meters:seen"] {
        assert_eq!(
            words(&mut raw, &["ZRANGE", &format!("{t}:{key}"), "0", "-1"]),
            ["m2"],
            "{key}"
        );
    }
    assert_eq!(
        words(
            &mut raw,
            &["ZRANGE", &format!("{t}:meters:by_district"), "0", "-1"]
        ),
        ["south:m2"]
    );
    assert_eq!(
        words(&mut raw, &["HKEYS", &format!("{t}:meters:district")]),
        ["m2"]
    );
    assert_eq!(ids(&cache.meters("acme", &list(10)).unwrap()), ["m2"]);
    // And when nothing is written any more, the index keys expire with the hashes.
    thread::sleep(Duration::from_millis(1_300));
    let left: Vec<String> = raw.connection.keys(format!("{t}:meter*")).unwrap();
    assert!(left.is_empty(), "{left:?}");
}
