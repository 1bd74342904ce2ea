//! CSV for integrators: a token-protected tenant's readings and bill as CSV (by
//! `Accept: text/csv` and by `?format=csv`) hold exactly what the JSON answers hold;
//! errors stay JSON (401 without the token, 406 for an Accept that allows neither).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::utils::{Meterflow, api_get, free_addr, tool};

const TOKEN: &str = "csv-test-token-0123456789";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// RFC 4180 records (quoted fields may hold commas, doubled quotes and line breaks).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => assert_eq!(chars.next(), Some('\n'), "CRLF line ends"),
            (false, '\n') => panic!("a bare LF ends a record: {text:?}"),
            (false, c) => field.push(c),
        }
        if !quoted && c == '\r' {
            record.push(std::mem::take(&mut field));
            records.push(std::mem::take(&mut record));
        }
    }
    assert!(
        field.is_empty() && record.is_empty(),
        "the last record ends in CRLF"
    );
    records
}

/// A JSON value as its CSV cell: numbers and booleans as written, strings bare,
/// an absent field empty.
fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `date -u` of an epoch-ms instant, as ISO 8601 with milliseconds.
fn iso_by_date(ts_ms: i64) -> String {
    let out = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}", ts_ms.div_euclid(1000)),
            "+%Y-%m-%dT%H:%M:%S",
        ])
        .output()
        .unwrap();
    let seconds = String::from_utf8(out.stdout).unwrap();
    format!("{}.{:03}Z", seconds.trim(), ts_ms.rem_euclid(1000))
}

/// `yyyy-mm` (UTC, the default tariff's zone) of an instant.
fn period_of(ts_ms: i64) -> String {
    iso_by_date(ts_ms)[..7].to_string()
}

fn start() -> (tempfile::TempDir, Meterflow) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meterflow.toml");
    std::fs::write(
        &config,
        format!("[[tenants]]\nid = \"acme\"\napi_token = \"{TOKEN}\"\n"),
    )
    .unwrap();
    let service = Meterflow::start_with(
        &dir.path().join("data"),
        free_addr(),
        free_addr(),
        &["--config", config.to_str().unwrap()],
    );
    (dir, service)
}

/// Sends `uplinks` (JSON payloads) with `mosquitto_pub -q 1`, which returns once stored.
fn publish(service: &Meterflow, meter: &str, payloads: &[String]) {
    let publish = tool("mosquitto_pub");
    for payload in payloads {
        let output = Command::new(&publish)
            .args(["-h", &service.mqtt.ip().to_string()])
            .args(["-p", &service.mqtt.port().to_string()])
            .args(["-i", &format!("acme.{meter}"), "-u", "acme", "-q", "1"])
            .args(["-t", &format!("meters/acme/{meter}/up"), "-m", payload])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "mosquitto_pub: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            service.log_tail()
        );
    }
}

/// Six readings 10 minutes apart ending a minute ago (two uplinks of three; every
/// other one without a temperature), from register 40,000 at 7 L a reading.
fn six_readings() -> (Vec<String>, i64) {
    let first = now_ms() - 51 * 60_000;
    let reading = |i: i64| {
        let temp = if i % 2 == 0 { ",\"temp\":118" } else { "" };
        format!(
            r#"{{"ts":{},"reg":{},"rev":0,"flow":42{temp}}}"#,
            first + i * 600_000,
            40_000 + 7 * i
        )
    };
    let uplink = |seq: i64, from: i64| {
        let readings: Vec<String> = (from..from + 3).map(reading).collect();
        format!(
            r#"{{"v":1,"seq":{seq},"readings":[{}]}}"#,
            readings.join(",")
        )
    };
    (vec![uplink(1, 0), uplink(2, 3)], first + 5 * 600_000)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

#[test]
fn readings_as_csv_hold_what_the_json_holds() {
    let (_dir, service) = start();
    let (payloads, _) = six_readings();
    publish(&service, "m1", &payloads);
    let path = "/api/v1/tenants/acme/meters/m1/readings";
    let auth = bearer();
    let json = api_get(&service, path, &[("Authorization", &auth)]);
    assert_eq!(json.status, 200, "{}", json.body);
    assert!(json.content_type.starts_with("application/json"));
    let json: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    let json = json.as_array().unwrap();
    assert_eq!(json.len(), 6, "{json:?}");

    let by_accept = api_get(
        &service,
        path,
        &[("Authorization", &auth), ("Accept", "text/csv")],
    );
    let by_query = api_get(
        &service,
        &format!("{path}?format=csv"),
        &[("Authorization", &auth)],
    );
    for answer in [&by_accept, &by_query] {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.content_type, "text/csv; charset=utf-8");
        assert_eq!(
            answer.disposition,
            "attachment; filename=\"acme-m1-readings.csv\""
        );
    }
    assert_eq!(by_accept.body, by_query.body);

    let records = parse_csv(&by_accept.body);
    let (head, rows) = records.split_first().unwrap();
    let expected_head = [
        "ts",
        "ts_iso",
        "reg",
        "rev",
        "flow",
        "temp",
        "quality",
        "interval_l",
        "seq",
        "received_at",
    ];
    assert_eq!(head, &expected_head);
    assert_eq!(rows.len(), json.len(), "one row per reading");
    for (row, reading) in rows.iter().zip(json) {
        for (column, value) in head.iter().zip(row) {
            let expected = match column.as_str() {
                "ts_iso" => iso_by_date(reading["ts"].as_i64().unwrap()),
                name => cell(&reading[name]),
            };
            assert_eq!(value, &expected, "{column} of {reading}");
        }
    }
    // Absent fields are empty cells, not "null".
    assert!(rows.iter().any(|r| r[5].is_empty()), "{rows:?}");
    assert!(rows.iter().any(|r| r[5] == "118"), "{rows:?}");
    assert!(
        rows.iter().any(|r| r[7] == "7"),
        "interval litres: {rows:?}"
    );

    // A range narrows the CSV as it narrows the JSON.
    let from = json[2]["ts"].as_i64().unwrap();
    let narrowed = api_get(
        &service,
        &format!("{path}?format=csv&from={from}"),
        &[("Authorization", &auth)],
    );
    assert_eq!(parse_csv(&narrowed.body).len(), 1 + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bill_as_csv_has_the_json_bills_totals() {
    let (_dir, service) = start();
    let (payloads, last_ts) = six_readings();
    publish(&service, "m2", &payloads);
    let period = period_of(last_ts);
    let path = format!("/api/v1/tenants/acme/bills/{period}/m2");
    let auth = bearer();
    let deadline = Instant::now() + Duration::from_secs(15);
    let bill = loop {
        let answer = api_get(&service, &path, &[("Authorization", &auth)]);
        if answer.status == 200 {
            break serde_json::from_str::<serde_json::Value>(&answer.body).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no bill: {} {}\n{}",
            answer.status,
            answer.body,
            service.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let csv = api_get(
        &service,
        &path,
        &[("Authorization", &auth), ("Accept", "text/csv")],
    );
    assert_eq!(csv.status, 200, "{}", csv.body);
    assert_eq!(csv.content_type, "text/csv; charset=utf-8");
    assert_eq!(
        csv.disposition,
        format!("attachment; filename=\"acme-m2-{period}-bill.csv\"")
    );
    let records = parse_csv(&csv.body);
    let (head, rows) = records.split_first().unwrap();
    let col = |row: &[String], name: &str| -> String {
        let i = head.iter().position(|h| h == name).expect(name);
        row[i].clone()
    };
    let tiers = bill["tiers"].as_array().unwrap();
    assert_eq!(rows.len(), tiers.len() + 1, "a row per tier and the total");
    for (i, (row, tier)) in rows.iter().zip(tiers).enumerate() {
        assert_eq!(col(row, "row"), "tier");
        assert_eq!(col(row, "tier"), (i + 1).to_string());
        for field in ["usage_l", "price_per_m3", "amount_cents"] {
            assert_eq!(col(row, field), cell(&tier[field]), "{field} of {tier}");
        }
    }
    let total = rows.last().unwrap();
    assert_eq!(col(total, "row"), "total");
    for field in [
        "tenant",
        "meter",
        "period",
        "currency",
        "usage_l",
        "fixed_cents",
        "amount_cents",
        "estimated",
        "final",
    ] {
        assert_eq!(col(total, field), cell(&bill[field]), "{field} of {bill}");
    }

    let by_query = api_get(
        &service,
        &format!("{path}?format=csv"),
        &[("Authorization", &auth)],
    );
    assert_eq!(by_query.status, 200);
    assert_eq!(by_query.body, csv.body);
}

#[test]
fn errors_stay_json_and_a_format_nobody_speaks_is_406() {
    let (_dir, service) = start();
    let readings = "/api/v1/tenants/acme/meters/m3/readings";
    let bill = "/api/v1/tenants/acme/bills/2026-10/m3";
    let auth = bearer();
    for path in [readings, bill] {
        // Without the token: 401, as JSON, whatever format was asked for.
        for (query, accept) in [("", "text/csv"), ("?format=csv", "*/*")] {
            let answer = api_get(&service, &format!("{path}{query}"), &[("Accept", accept)]);
            assert_eq!(answer.status, 401, "{path}{query}: {}", answer.body);
            assert!(answer.content_type.starts_with("application/json"));
            let error: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
            assert!(error["error"].as_str().unwrap().contains("Bearer"));
        }
        let answer = api_get(
            &service,
            path,
            &[("Authorization", &auth), ("Accept", "application/xml")],
        );
        assert_eq!(answer.status, 406, "{path}: {}", answer.body);
        assert!(answer.content_type.starts_with("application/json"));
        let error: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert!(error["error"].as_str().unwrap().contains("text/csv"));
        let answer = api_get(
            &service,
            &format!("{path}?format=xml"),
            &[("Authorization", &auth)],
        );
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
    }
    // No Accept and */* stay JSON.
    for headers in [vec![], vec![("Accept", "*/*")]] {
        let mut headers = headers;
        headers.push(("Authorization", auth.as_str()));
        let answer = api_get(&service, readings, &headers);
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.content_type.starts_with("application/json"));
        assert_eq!(answer.body, "[]");
    }
}
