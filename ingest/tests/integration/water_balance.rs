//! A district's water balance through the whole pipeline: three customer meters and
//! the bulk meter that feeds their district, published over MQTT with hand-computed
//! hourly use, the bulk meter measuring the customers' sum plus a known leak; the
//! balance endpoint must return exactly those litres, the leak as non-revenue water,
//! the hand-computed percentages, the inflow's minimum night flow and its trend.
//!
//! Time is values: two fixed UTC days (the default tariff's zone), kept open for the
//! test by day and hour retentions longer than their age.

use std::time::Duration;

use meterflow_model::{Reading, Uplink};
use serde_json::{Value, json};

use crate::utils::{json_where, send_and_wait_for_ack, start_configured};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// 2026-10-05T00:00:00Z, a Monday: the first of the two days.
const DAY0: i64 = 1_791_158_400_000;
/// What leaks between the bulk meter and the customers, L/h: 120 on day 0, then the
/// leak grows to 144 on day 1 (+24 L/h per day, the night flow trend).
const LEAK_LPH: [u64; 2] = [120, 144];

/// Litres a customer uses in the hour starting at `hour` (local hour of the day).
fn customer_lph(meter: &str, hour: u64) -> u64 {
    match meter {
        // A household: 50 L/h at night (before 06:00 and from 22:00), 200 L/h by day.
        "c1" if !(6..22).contains(&hour) => 50,
        "c1" => 200,
        // A shop with a constant 120 L/h.
        "c2" => 120,
        // A flat: 300 L/h at 07-09 and 18-20, 20 L/h otherwise.
        "c3" if [7, 8, 18, 19].contains(&hour) => 300,
        "c3" => 20,
        _ => unreachable!("no meter {meter}"),
    }
}

/// Litres the bulk meter measures in hour `h` (0..48 from DAY0): the customers' sum
/// plus the day's leak.
fn inflow_lph(h: u64) -> u64 {
    let customers: u64 = ["c1", "c2", "c3"]
        .iter()
        .map(|m| customer_lph(m, h % 24))
        .sum();
    customers + LEAK_LPH[(h / 24) as usize]
}

/// Hourly reads from DAY0 00:00 to DAY0 + 48 h (49 reads: 48 intervals), the
/// register growing by `lph(h)` in hour `h`, in messages of a day.
fn uplinks(lph: impl Fn(u64) -> u64) -> Vec<Uplink> {
    let mut reg = 10_000;
    let readings: Vec<Reading> = (0..=48u64)
        .map(|h| {
            if h > 0 {
                reg += lph(h - 1);
            }
            Reading {
                ts: DAY0 + h as i64 * HOUR_MS,
                reg,
                rev: 0,
                flow: 0,
                temp: None,
            }
        })
        .collect();
    readings
        .chunks(25)
        .enumerate()
        .map(|(i, chunk)| Uplink::new(i as u64 + 1, chunk.to_vec()))
        .collect()
}

/// Flushes run every second: the balance has its figures within this.
const FLUSHED_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn water_balance_of_a_bulk_meter_is_the_customers_sum_plus_the_leak() {
    let dir = tempfile::tempdir().unwrap();
    // Ten years of day and hour retention keep the fixed days open however old.
    let config = "[pipeline]\nsweep_interval_s = 1\n\n\
                  [processors.analytics]\nflush_interval_ms = 1000\n\
                  hour_retention_ms = 315360000000\nday_retention_ms = 315360000000\n\n\
                  [processors.tenants.demo.districts]\nc1 = \"harbour\"\nc2 = \"harbour\"\nc3 = \"harbour\"\n\n\
                  [processors.tenants.demo.bulk_meters]\nb1 = \"harbour\"\n\n\
                  [processors.tenants.demo.meter_sizes]\nb1 = \"dn100\"\n";
    let service = start_configured(dir.path(), config, &[]);
    for meter in ["c1", "c2", "c3"] {
        send_and_wait_for_ack(
            service.mqtt,
            "demo",
            meter,
            &uplinks(|h| customer_lph(meter, h % 24)),
        )
        .await;
    }
    send_and_wait_for_ack(service.mqtt, "demo", "b1", &uplinks(inflow_lph)).await;

    // Per day, hand-computed:
    // - customers: c1 8 h × 50 + 16 h × 200 = 3,600 L; c2 24 × 120 = 2,880 L;
    //   c3 4 × 300 + 20 × 20 = 1,600 L; together 8,080 L;
    // - inflow: 8,080 + 24 × 120 = 10,960 L (day 0), 8,080 + 24 × 144 = 11,536 L (day 1);
    // - NRW: 2,880 L = 26.28 % of 10,960; 3,456 L = 29.96 % of 11,536;
    // - the customers use 50 + 120 + 20 = 190 L in each of the 02:00 and 03:00 hours,
    //   so the inflow's minimum night flow is 190 + 120 = 310 L/h, then 334 L/h:
    //   a trend of +24 L/h per day.
    let days_path = format!(
        "/api/v1/tenants/demo/districts/harbour/balance?resolution=day&from={DAY0}&to={}",
        DAY0 + 2 * DAY_MS
    );
    let days = json_where(&service, &days_path, FLUSHED_WITHIN, |b| {
        b["windows"].as_array().is_some_and(|w| {
            w.len() == 2 && w[1]["inflow_l"] == 11_536 && w[1]["consumption_l"] == 8_080
        })
    })
    .await;
    assert_eq!(
        days,
        json!({
            "tenant": "demo",
            "district": "harbour",
            "resolution": "day",
            "night_flow_trend_lph_per_day": 24.0,
            "windows": [
                {"start": DAY0, "inflow_l": 10_960, "consumption_l": 8_080, "nrw_l": 2_880,
                 "nrw_pct": 26.28, "night_flow_lph": 310},
                {"start": DAY0 + DAY_MS, "inflow_l": 11_536, "consumption_l": 8_080,
                 "nrw_l": 3_456, "nrw_pct": 29.96, "night_flow_lph": 334},
            ],
        })
    );
    // The bulk meter is no customer: the district's usage counts three meters and
    // the customers' night flow.
    let usage = service.get_json(&format!(
        "/api/v1/tenants/demo/districts/harbour/usage?resolution=day&from={DAY0}&to={}",
        DAY0 + DAY_MS
    ));
    assert_eq!(
        (
            &usage[0]["usage_l"],
            &usage[0]["meters"],
            &usage[0]["night_flow_lph"]
        ),
        (&json!(8_080), &json!(3), &json!(190)),
        "{usage}"
    );

    // Hours, from the store: 02:00 of day 0 (190 + 120 L in, 190 L used: 38.71 %)
    // and 07:00 of day 1 (200 + 120 + 300 = 620 L used, 764 L in: 18.85 %).
    let hours_path = |hour: i64| {
        format!(
            "/api/v1/tenants/demo/districts/harbour/balance?resolution=hour&from={}&to={}",
            DAY0 + hour * HOUR_MS,
            DAY0 + (hour + 1) * HOUR_MS
        )
    };
    let has_inflow = |b: &Value| b["windows"][0]["inflow_l"].is_u64();
    let night = json_where(&service, &hours_path(2), FLUSHED_WITHIN, has_inflow).await;
    assert_eq!(
        night,
        json!({
            "tenant": "demo", "district": "harbour", "resolution": "hour",
            "night_flow_trend_lph_per_day": null,
            "windows": [{"start": DAY0 + 2 * HOUR_MS, "inflow_l": 310, "consumption_l": 190,
                         "nrw_l": 120, "nrw_pct": 38.71, "night_flow_lph": null}],
        })
    );
    let morning = json_where(&service, &hours_path(31), FLUSHED_WITHIN, has_inflow).await;
    assert_eq!(
        morning["windows"],
        json!([{"start": DAY0 + 31 * HOUR_MS, "inflow_l": 764, "consumption_l": 620,
                "nrw_l": 144, "nrw_pct": 18.85, "night_flow_lph": null}])
    );

    // Bad resolutions and ranges are 400s that say what to do.
    let base = "/api/v1/tenants/demo/districts/harbour/balance";
    let (status, body) = service.get(&format!("{base}?resolution=minute"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("resolution"), "{body}");
    let (status, body) = service.get(&format!("{base}?from={DAY0}&to={DAY0}"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("must be before"), "{body}");
}
