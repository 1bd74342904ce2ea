//! What a utility's billing office, leak team and integrations see, through the whole
//! pipeline: a household's hand-computed bill, a leak episode that opens once and
//! clears, a burst delivered to Redis, MQTT and a webhook, a silent meter caught by
//! the timer sweep, and a burst episode withdrawn when a late read shows it did not
//! happen.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use meterflow_model::Uplink;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};

use crate::server_support;
use crate::utils::{
    assert_no_communication_opens, hourly_uplinks, report_once, send_and_wait_for_ack,
    start_configured,
};

const HOUR_MS: i64 = 3_600_000;
/// The demo tenant's integration password in the burst test (16 characters at least).
const INTEGRATION_PASSWORD: &str = "erp-integration-0123456789";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Polls `f` until it returns `Some`, or fails after `within`.
async fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_household_month_gets_the_hand_computed_bill() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(dir.path(), "", &[]);
    // October 2026 (UTC, the default tariff's zone), hourly, 15 L every hour: from
    // 2026-10-01T00:00Z to 2026-11-01T00:00Z is 31 × 24 = 744 hours.
    let october_start = 1_790_812_800_000; // 2026-10-01T00:00:00Z
    let uplinks = hourly_uplinks(1, october_start, 50_000, 15, 745, 24);
    send_and_wait_for_ack(service.mqtt, "demo", "house1", &uplinks).await;

    // Usage 744 h × 15 L = 11,160 L = 11.16 m³. Default tariff: 8.00 fixed, 1.50/m³
    // up to 10 m³, 2.50/m³ to 30 m³: 800 + 10 × 150 + 1.16 × 250 = 800 + 1500 + 290
    // = 2590 cents.
    let bill = eventually(Duration::from_secs(10), "the October bill", || {
        let (status, body) = service.get("/api/v1/tenants/demo/bills/2026-10/house1");
        (status == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).unwrap())
    })
    .await;
    assert_eq!(bill["usage_l"], 11_160, "{bill}");
    assert_eq!(bill["fixed_cents"], 800);
    assert_eq!(bill["amount_cents"], 2_590, "{bill}");
    let tiers: u64 = bill["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["amount_cents"].as_u64().unwrap())
        .sum();
    assert_eq!(tiers + 800, 2_590, "tiers add up to the total: {bill}");
    assert_eq!(
        bill["final"], true,
        "October closed more than three days ago"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_flow_raises_one_leak_alert_that_clears_when_flow_stops() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(dir.path(), "", &[]);
    let start = (now_ms() / HOUR_MS - 40) * HOUR_MS;
    // 30 hours of never-zero flow, then 6 hours of none.
    let mut uplinks = hourly_uplinks(1, start, 10_000, 20, 30, 6);
    uplinks.extend(hourly_uplinks(
        6,
        start + 30 * HOUR_MS,
        10_000 + 20 * 29,
        0,
        6,
        6,
    ));
    send_and_wait_for_ack(service.mqtt, "demo", "leaky", &uplinks).await;

    let episodes = eventually(Duration::from_secs(10), "the leak episode", || {
        let all = service.get_json("/api/v1/tenants/demo/alerts?state=all");
        let leaks: Vec<_> = all
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "leak")
            .cloned()
            .collect();
        (!leaks.is_empty() && leaks.iter().all(|a| a["state"] == "cleared")).then_some(leaks)
    })
    .await;
    assert_eq!(episodes.len(), 1, "exactly one leak episode: {episodes:?}");
    assert_eq!(episodes[0]["meter"], "leaky");
    let open = service.get_json("/api/v1/tenants/demo/alerts?state=open");
    assert!(
        open.as_array().unwrap().iter().all(|a| a["kind"] != "leak"),
        "cleared: {open}"
    );
}

/// A one-request-at-a-time HTTP server that hands every POST body to the test.
fn webhook_receiver() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_redis_mqtt_and_the_webhook_first() {
    let test = "processing_burst";
    let Some(redis) = server_support::redis(test) else {
        return;
    };
    let prefix = server_support::unique_name("burst");
    let (hook_url, hooks) = webhook_receiver();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[cache.redis]\nkey_prefix = \"{prefix}\"\n\n[[tenants]]\nid = \"demo\"\nwebhook_url = \"{hook_url}\"\n\
         integration_password = \"{INTEGRATION_PASSWORD}\"\n"
    );
    let service = start_configured(dir.path(), &toml, &["--cache", &redis]);

    // An integration of the tenant listening on its alert topics: its own login
    // (`{tenant}:integration` and the tenant's integration_password), any client id.
    let mut options = MqttOptions::new(
        "erp-alerts",
        service.mqtt.ip().to_string(),
        service.mqtt.port(),
    );
    options.set_credentials("demo:integration", INTEGRATION_PASSWORD);
    let (client, mut events) = AsyncClient::new(options, 16);
    client
        .subscribe("alerts/demo/#", QoS::AtMostOnce)
        .await
        .unwrap();
    // Granted before the burst is sent, so the alert cannot race the subscription.
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("a SUBACK for the integration")
            .expect("the integration connects");
        if let Event::Incoming(Packet::SubAck(ack)) = event {
            assert_eq!(
                ack.return_codes,
                [SubscribeReasonCode::Success(QoS::AtMostOnce)],
                "the integration may subscribe to its tenant's alerts"
            );
            break;
        }
    }
    let (alert_tx, mut alert_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                let _ = alert_tx.send((p.topic, String::from_utf8_lossy(&p.payload).into_owned()));
            }
        }
    });

    // A main breaks: 2,400 L/h for an hour in 15-minute reads (threshold 1,500 L/h
    // for 30 minutes).
    let start = now_ms() - 2 * HOUR_MS;
    let readings: Vec<meterflow_model::Reading> = (0..5)
        .map(|i| meterflow_model::Reading {
            ts: start + i * 900_000,
            reg: 1_000 + 600 * i as u64,
            rev: 0,
            flow: 2_400,
            temp: Some(110),
        })
        .collect();
    send_and_wait_for_ack(service.mqtt, "demo", "main1", &[Uplink::new(1, readings)]).await;

    let (topic, on_mqtt) = tokio::time::timeout(Duration::from_secs(15), alert_rx.recv())
        .await
        .expect("alert on MQTT")
        .unwrap();
    assert_eq!(topic, "alerts/demo/main1");
    let on_mqtt: serde_json::Value = serde_json::from_str(&on_mqtt).unwrap();
    assert_eq!(on_mqtt["kind"], "burst", "{on_mqtt}");
    assert_eq!(
        on_mqtt["priority"], "critical",
        "burst goes first: {on_mqtt}"
    );
    let on_hook: serde_json::Value = serde_json::from_str(
        &hooks
            .recv_timeout(Duration::from_secs(15))
            .expect("webhook delivery"),
    )
    .unwrap();
    assert_eq!(on_hook["kind"], "burst");
    assert_eq!(on_hook["meter"], "main1");

    let mut redis_conn = redis::Client::open(redis.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let stream_key = format!("{prefix}:{{demo}}:alerts");
    let entries: Vec<(String, Vec<(String, String)>)> =
        eventually(Duration::from_secs(10), "the Redis stream entry", || {
            let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&stream_key)
                .arg("-")
                .arg("+")
                .query(&mut redis_conn)
                .ok()?;
            let flat: Vec<(String, Vec<(String, String)>)> = entries
                .ids
                .into_iter()
                .map(|id| {
                    let fields = id
                        .map
                        .into_iter()
                        .filter_map(|(k, v)| Some((k, redis::from_redis_value::<String>(v).ok()?)))
                        .collect();
                    (id.id, fields)
                })
                .collect();
            (!flat.is_empty()).then_some(flat)
        })
        .await;
    assert!(
        entries
            .iter()
            .any(|(_, fields)| fields.iter().any(|(k, v)| k == "kind" && v == "burst")),
        "burst in {stream_key}: {entries:?}"
    );
}

/// A rule that opens no-communication after 3 s instead of 72 h, swept every second.
const QUICK_NO_COMMUNICATION: &str = "[pipeline]\nsweep_interval_s = 1\n\n[processors.defaults.alert_rules]\nno_communication_ms = 3000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_meter_is_caught_by_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(dir.path(), QUICK_NO_COMMUNICATION, &[]);
    report_once(service.mqtt, "quiet1").await;
    assert_no_communication_opens(&service, "quiet1", Duration::from_secs(20)).await;
}

/// A meter that fell silent before a restart is still caught: the restarted service
/// never hears from it, yet its shard hydrates it from the store's list of meters
/// (`ingest/src/dormant.rs`) and the sweep opens the episode. The first run's rule is
/// the default 72 h, so nothing can open before the restart; the second run's is 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_silent_since_before_a_restart_is_caught_by_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = start_configured(dir.path(), "[pipeline]\nsweep_interval_s = 1\n", &[]);
    report_once(service.mqtt, "quiet2").await;
    service.stop();
    drop(service);

    let service = start_configured(dir.path(), QUICK_NO_COMMUNICATION, &[]);
    assert_no_communication_opens(&service, "quiet2", Duration::from_secs(20)).await;
}

/// A fleet larger than `pipeline.held_meters` (one a shard here): the meters over it
/// rest in the store once their batch is durable (`ingest/src/shard/held.rs`). The
/// silence rule still finds every one of them — each is read back when its rule is
/// due — and a resting meter's resends are still known for what they are: read back,
/// its seq window says they are duplicates, and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_over_the_held_limit_rest_in_the_store_and_stay_watched() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[pipeline]\nsweep_interval_s = 1\nheld_meters = 1\n\n[processors.defaults.alert_rules]\nno_communication_ms = 8000\n";
    let service = start_configured(dir.path(), config, &[]);
    let meters = ["rest1", "rest2", "rest3", "rest4"];
    for meter in meters {
        report_once(service.mqtt, meter).await;
    }
    let rested = || service.metrics().value("meterflow_meters_rested_total");
    eventually(Duration::from_secs(30), "meters at rest", || {
        (rested() >= 2.0).then_some(())
    })
    .await;
    for meter in meters {
        assert_no_communication_opens(&service, meter, Duration::from_secs(30)).await;
    }
    // Once their episodes are open, they rest again until the next update (a day).
    let before = rested();
    eventually(Duration::from_secs(30), "meters at rest again", || {
        (rested() > before).then_some(())
    })
    .await;
    for meter in meters {
        report_once(service.mqtt, meter).await;
    }
    let metrics = service.metrics();
    assert_eq!(metrics.messages("stored"), 4.0, "an uplink a meter, once");
    assert_eq!(metrics.messages("duplicate"), 4.0, "every resend known");
    metrics.assert_accounted();
}

/// A leakage engineer's day view: `resolution=day` serves the tenant's local days with
/// the night hours and the minimum night flow. One household, hourly 15 L through
/// yesterday (UTC, the default zone; analytics keeps a day open for late rows for
/// three days, so the day is the one before the service's today, whatever the hour):
/// 24 intervals end in the day (360 L), the 02:00 and 03:00 hours hold 15 L each, so
/// the minimum night flow is 15 L/h.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_district_day_carries_the_night_flow() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        "[pipeline]\nsweep_interval_s = 1\n\n[processors.analytics]\nflush_interval_ms = 1000\n";
    let service = start_configured(dir.path(), config, &[]);
    let day_ms = 24 * HOUR_MS;
    let yesterday = (now_ms().div_euclid(day_ms) - 1) * day_ms;
    let uplinks = hourly_uplinks(1, yesterday, 50_000, 15, 25, 25);
    send_and_wait_for_ack(service.mqtt, "demo", "house1", &uplinks).await;

    let path = format!(
        "/api/v1/tenants/demo/districts/default/usage?resolution=day&from={yesterday}&to={}",
        yesterday + day_ms
    );
    let row = eventually(Duration::from_secs(20), "the day row", || {
        let rows: serde_json::Value = serde_json::from_str(&service.get(&path).1).unwrap();
        rows.as_array()
            .and_then(|rows| rows.first().cloned())
            .filter(|row| row["usage_l"] == 360)
    })
    .await;
    assert_eq!(row["start_ms"], yesterday, "{row}");
    assert_eq!(row["meters"], 1, "{row}");
    assert_eq!(row["night_hour_l"], serde_json::json!([15, 15]), "{row}");
    assert_eq!(row["night_flow_lph"], 15, "{row}");
    let (status, body) = service.get(&path.replace("resolution=day", "resolution=week"));
    assert_eq!(status, 400, "{body}");
    // The summary names the zone those days are counted in.
    let summary = service.get_json("/api/v1/tenants/demo/summary");
    assert_eq!(summary["time_zone"], "UTC", "{summary}");
    assert!(summary["day"].is_string(), "{summary}");
}

/// Issue 10, case 7, through the service: alert episodes follow the reads in reading
/// time, whatever order they arrive in. A household's hour to 03:00 used 2,900 L
/// (after 100 L to 02:00): in order, a burst opens at 03:00 and clears at 04:00. Its
/// 02:00 read arrives last, in a later message: until then VEE spreads 3,000 L over
/// 01:00–03:00 as two estimated hours of 1,500 L/h, which open a burst at 02:00.
/// When the read lands, that episode is withdrawn (stored as such, not open) and
/// the in-order one is stored. Time is values: fixed hours of a fixed UTC day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_opened_on_estimates_is_withdrawn_when_the_late_read_lands() {
    /// 2026-10-05T00:00:00Z.
    const DAY0: i64 = 1_791_158_400_000;
    let at = |hour: i64| DAY0 + hour * HOUR_MS;
    let read = |hour: i64, reg: u64| meterflow_model::Reading {
        ts: at(hour),
        reg,
        rev: 0,
        flow: 0,
        temp: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(dir.path(), "", &[]);
    let bursts = |service: &crate::utils::Meterflow| -> Vec<(i64, String, i64)> {
        let all = service.get_json("/api/v1/tenants/demo/alerts?state=all");
        let mut found: Vec<_> = all
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == "burst" && a["meter"] == "late1")
            .map(|a| {
                (
                    (a["opened_at"].as_i64().unwrap() - DAY0) / HOUR_MS,
                    a["state"].as_str().unwrap().to_string(),
                    (a["at"].as_i64().unwrap() - DAY0) / HOUR_MS,
                )
            })
            .collect();
        found.sort();
        found
    };

    let without_02 = Uplink::new(
        1,
        vec![
            read(0, 50_000),
            read(1, 50_020),
            read(3, 53_020),
            read(4, 53_040),
            read(5, 53_060),
        ],
    );
    send_and_wait_for_ack(service.mqtt, "demo", "late1", &[without_02]).await;
    assert_eq!(bursts(&service), vec![(2, "cleared".to_string(), 4)]);

    let late = Uplink::new(2, vec![read(2, 50_120)]);
    send_and_wait_for_ack(service.mqtt, "demo", "late1", &[late]).await;
    assert_eq!(
        bursts(&service),
        vec![
            (2, "withdrawn".to_string(), 2),
            (3, "cleared".to_string(), 4)
        ]
    );
    let open = service.get_json("/api/v1/tenants/demo/alerts?state=open");
    assert!(
        open.as_array()
            .unwrap()
            .iter()
            .all(|a| a["kind"] != "burst"),
        "no burst open: {open}"
    );
}
