//! The validation-exceptions work queue and field work orders through the whole
//! service: suspect reads published over MQTT become open exceptions; an operator's
//! decision (`accept`, `reject`) or a recorded exchange, posted to the API, re-decides
//! the meter's reads in its shard, and the stored readings and the bill follow —
//! hand-computed litres. Bad decisions get clear errors.
//!
//! Time is values: fixed hours of a fixed UTC day (the default tariff's zone).

use meterflow_model::Uplink;
use serde_json::{Value, json};

use crate::utils::{Meterflow, api_post, register_uplink, send_and_wait_for_ack, start_configured};

const HOUR_MS: i64 = 3_600_000;
/// 2026-10-05T00:00:00Z.
const DAY0: i64 = 1_791_158_400_000;

fn hourly(seq: u64, from_hour: i64, regs: &[u64]) -> Uplink {
    let reads: Vec<(i64, u64)> = regs
        .iter()
        .enumerate()
        .map(|(i, reg)| (DAY0 + (from_hour + i as i64) * HOUR_MS, *reg))
        .collect();
    register_uplink(seq, &reads)
}

fn get_json(service: &Meterflow, path: &str) -> Value {
    let (status, body) = service.get(path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// (meter, hour, reason, state) of a list of exceptions.
fn cases(list: &Value) -> Vec<(String, i64, String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["meter"].as_str().unwrap().to_string(),
                (e["ts"].as_i64().unwrap() - DAY0) / HOUR_MS,
                e["reason"].as_str().unwrap().to_string(),
                e["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// (hour, quality, interval) of a meter's stored rows.
fn rows(service: &Meterflow, meter: &str) -> Vec<(i64, String, Option<i64>)> {
    let path = format!(
        "/api/v1/tenants/demo/meters/{meter}/readings?from={DAY0}&to={}",
        DAY0 + 24 * HOUR_MS
    );
    get_json(service, &path)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (r["ts"].as_i64().unwrap() - DAY0) / HOUR_MS,
                r["quality"].as_str().unwrap().to_string(),
                r["interval_l"].as_i64(),
            )
        })
        .collect()
}

fn billed_l(service: &Meterflow, meter: &str) -> i64 {
    let bill = get_json(
        service,
        &format!("/api/v1/tenants/demo/bills/2026-10/{meter}"),
    );
    bill["usage_l"].as_i64().unwrap()
}

fn case(meter: &str, hour: i64, reason: &str, state: &str) -> (String, i64, String, String) {
    (meter.into(), hour, reason.into(), state.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_recorded_exchanges_re_decide_reads_and_bills() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(dir.path(), "", &[]);
    // m1: 49,900 L in an hour is beyond a DN15's 3,125 L/h (a jump), and the read
    // after it may be an exchange's second read.
    let m1 = hourly(1, 0, &[10_000, 10_100, 60_000, 60_100]);
    send_and_wait_for_ack(service.mqtt, "demo", "m1", &[m1]).await;
    // m3: a register that went backwards.
    let m3 = hourly(1, 0, &[5_000_000, 2_500]);
    send_and_wait_for_ack(service.mqtt, "demo", "m3", &[m3]).await;
    let open = get_json(&service, "/api/v1/tenants/demo/exceptions?state=open");
    assert_eq!(
        cases(&open),
        vec![
            case("m1", 2, "implausible_jump", "open"),
            case("m1", 3, "unconfirmed_exchange", "open"),
            case("m3", 1, "regression", "open"),
        ]
    );
    assert_eq!(
        billed_l(&service, "m1"),
        100,
        "suspect reads are not billed"
    );

    // Accepted as actual (the meter is bigger than its configured size): billed.
    let ts = DAY0 + 2 * HOUR_MS;
    let path = format!("/api/v1/tenants/demo/meters/m1/exceptions/{ts}");
    let answer = api_post(
        &service,
        &path,
        &json!({"action": "accept", "by": "ana", "why": "DN40 fitted, size not updated"}),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let decided = answer.json();
    assert_eq!(decided["state"], "accepted");
    assert_eq!(decided["decision"]["by"], "ana");
    assert_eq!(
        rows(&service, "m1"),
        vec![
            (0, "actual".into(), None),
            (1, "actual".into(), Some(100)),
            (2, "actual".into(), Some(49_900)),
            (3, "actual".into(), Some(100)),
        ]
    );
    assert_eq!(billed_l(&service, "m1"), 50_100);
    let all = get_json(&service, "/api/v1/tenants/demo/exceptions?state=all");
    assert!(cases(&all).contains(&case("m1", 3, "unconfirmed_exchange", "resolved")));

    // A regression cannot be accepted; rejecting it records who and why.
    let ts = DAY0 + HOUR_MS;
    let path = format!("/api/v1/tenants/demo/meters/m3/exceptions/{ts}");
    let refused = api_post(&service, &path, &json!({"action": "accept", "by": "ana"}));
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("regression"), "{}", refused.body);
    let anonymous = api_post(&service, &path, &json!({"action": "reject", "by": " "}));
    assert_eq!(anonymous.status, 400, "{}", anonymous.body);
    let unknown = api_post(
        &service,
        "/api/v1/tenants/demo/meters/m3/exceptions/12345",
        &json!({"action": "reject", "by": "ana"}),
    );
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let rejected = api_post(
        &service,
        &path,
        &json!({"action": "reject", "by": "ana", "why": "reader fault"}),
    );
    assert_eq!(rejected.status, 200, "{}", rejected.body);
    assert_eq!(rejected.json()["state"], "rejected");
    assert_eq!(rejected.json()["decision"]["why"], "reader fault");
    let open = get_json(&service, "/api/v1/tenants/demo/exceptions");
    assert_eq!(cases(&open), vec![], "nothing left open");

    // m2: the work order of an exchange at 01:30 (the old register read 5,000,180
    // when removed; the new one 2,500 when fitted), recorded before the new meter's
    // reads arrive: they are actual from the first one, the final read is a
    // `recorded` row, and the bill and the day's usage run across.
    let m2 = hourly(1, 0, &[5_000_000, 5_000_100]);
    send_and_wait_for_ack(service.mqtt, "demo", "m2", &[m2]).await;
    let exchange = json!({
        "at": DAY0 + HOUR_MS + HOUR_MS / 2,
        "final_read_l": 5_000_180,
        "initial_read_l": 2_500,
        "by": "field crew 4",
        "why": "work order 7781",
    });
    let recorded = api_post(
        &service,
        "/api/v1/tenants/demo/meters/m2/exchanges",
        &exchange,
    );
    assert_eq!(recorded.status, 200, "{}", recorded.body);
    let m2 = hourly(2, 2, &[2_520, 2_600]);
    send_and_wait_for_ack(service.mqtt, "demo", "m2", &[m2]).await;
    assert_eq!(
        rows(&service, "m2")[2..],
        [
            (1, "recorded".into(), Some(80)),
            (2, "actual".into(), Some(20)),
            (3, "actual".into(), Some(80))
        ]
    );
    assert_eq!(billed_l(&service, "m2"), 280);
    let view = get_json(&service, "/api/v1/tenants/demo/meters/m2");
    assert_eq!(view["today_l"], 280, "{view}");
    assert_eq!(
        view["quality"], "actual",
        "the newest read, not the final one"
    );
    let open = get_json(&service, "/api/v1/tenants/demo/exceptions");
    assert_eq!(cases(&open), vec![]);
    // A body that is not a work order is refused, saying what is expected.
    let bad = api_post(
        &service,
        "/api/v1/tenants/demo/meters/m2/exchanges",
        &json!({"at": 1, "initial_read_l": 0, "by": "ana", "extra": 1}),
    );
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.body.contains("unknown field `extra`"), "{}", bad.body);
}

/// A work order that fits a larger meter: from the exchange on, the new meter's reads
/// are judged by its size (a DN40 measures what a DN15 cannot) and its period's fixed
/// charge is split by day between the two sizes' charges — hand-computed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_exchange_to_another_size_judges_reads_and_charges_by_that_size() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[processors.tenants.demo.tariff]\nfixed_charge = 1000\n\n\
                  [processors.tenants.demo.tariff.fixed_charge_by_size]\ndn40 = 3100\n";
    let service = start_configured(dir.path(), config, &[]);
    // A DN15 (the default size) from 2026-10-05, the first day of its first period.
    send_and_wait_for_ack(
        service.mqtt,
        "demo",
        "m4",
        &[hourly(1, 0, &[10_000, 10_100])],
    )
    .await;
    let at = DAY0 + 2 * 24 * HOUR_MS + HOUR_MS + HOUR_MS / 2; // 2026-10-07T01:30Z
    let exchange = |size: &str| {
        json!({
            "at": at,
            "final_read_l": 10_200,
            "initial_read_l": 0,
            "size": size,
            "by": "field crew 2",
            "why": "work order 9120: DN40 for the new bakery",
        })
    };
    let path = "/api/v1/tenants/demo/meters/m4/exchanges";
    let unknown = api_post(&service, path, &exchange("dn17"));
    assert_eq!(unknown.status, 422, "{}", unknown.body);
    assert!(
        unknown.body.contains("dn40"),
        "names the sizes: {}",
        unknown.body
    );
    let recorded = api_post(&service, path, &exchange("dn40"));
    assert_eq!(recorded.status, 200, "{}", recorded.body);
    assert_eq!(recorded.json()["size"], "dn40");
    // The work order is on record in the work queue's history, with who and why.
    let records = get_json(
        &service,
        "/api/v1/tenants/demo/exceptions?state=exchange_confirmed",
    );
    let record = records
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["meter"] == "m4" && e["ts"] == at)
        .unwrap_or_else(|| panic!("no record of the work order: {records}"));
    assert_eq!(record["reason"], "recorded_exchange", "{record}");
    assert_eq!(record["reg"], 0, "the new register's initial read");
    assert_eq!(record["decision"]["by"], "field crew 2", "{record}");
    // The month is billed again at once (no read has moved): the new size's charge
    // from the exchange's day on.
    let bill = get_json(&service, "/api/v1/tenants/demo/bills/2026-10/m4");
    assert_eq!(
        (bill["usage_l"].as_i64(), bill["fixed_cents"].as_i64()),
        (Some(100), Some(2_565)),
        "{bill}"
    );
    // 10,000 L in the new meter's first half hour, 15,000 L in the hour after: at
    // most 10,010 and 20,010 L for a DN40 (Q4 20,000 L/h + 10 L slack), far beyond a
    // DN15's 3,125 L/h.
    send_and_wait_for_ack(
        service.mqtt,
        "demo",
        "m4",
        &[hourly(2, 48 + 2, &[10_000, 25_000])],
    )
    .await;
    let day2 = DAY0 + 2 * 24 * HOUR_MS;
    let rows = get_json(
        &service,
        &format!(
            "/api/v1/tenants/demo/meters/m4/readings?from={}&to={}",
            day2 + 2 * HOUR_MS,
            day2 + 4 * HOUR_MS
        ),
    );
    let rows: Vec<(String, i64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let quality = r["quality"].as_str().unwrap().to_string();
            (quality, r["interval_l"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("actual".to_string(), 10_000),
            ("actual".to_string(), 15_000)
        ]
    );
    let view = get_json(&service, "/api/v1/tenants/demo/meters/m4");
    assert_eq!(
        view["size"], "dn40",
        "the meter view shows the size: {view}"
    );
    let bill = get_json(&service, "/api/v1/tenants/demo/bills/2026-10/m4");
    // 200 L of the old register up to its final read, 25,000 L of the new one.
    assert_eq!(bill["usage_l"], 25_200, "{bill}");
    // In service from the 5th: the 5th and 6th at 10.00, the 7th to the 31st at
    // 31.00, of 31 days: (2 × 1,000 + 25 × 3,100) / 31 = 2,564.5… → 2,565 (a DN15
    // all along: 27 × 1,000 / 31 → 871).
    assert_eq!(bill["fixed_cents"], 2_565, "{bill}");
    let open = get_json(&service, "/api/v1/tenants/demo/exceptions");
    assert_eq!(cases(&open), vec![]);
}
