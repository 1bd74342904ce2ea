//! Rows no pass makes any more leave the store (issue 10: "every permutation … yields
//! the same stored readings"). A meter reads hourly; 01:00 and 06:00 arrive with
//! nothing between, so VEE fills the gap with estimates at 02:00–05:00. Then the
//! service restarts, and a read at 03:30 arrives late: the gap splits in two, its
//! estimates sit on the grid from 01:00 and from 03:30 (02:00 and 04:30), and the
//! estimates at 03:00, 04:00 and 05:00 are withdrawn. The readings API lists
//! exactly the rows of a meter that sent the same reads in order — before rows
//! were withdrawn, the three stale estimates stayed listed beside them.
//!
//! Time is values: fixed hours of a fixed UTC day.

use std::time::{Duration, Instant};

use crate::utils::{
    Meterflow, register_uplink, restart_configured, send_and_wait_for_ack, start_configured,
};

const HOUR_MS: i64 = 3_600_000;
/// 2026-10-05T00:00:00Z.
const DAY0: i64 = 1_791_158_400_000;

/// `hours` after DAY0, in ms.
fn at(hours: f64) -> i64 {
    DAY0 + (hours * HOUR_MS as f64) as i64
}

/// A stored row as the test compares it: (hours after DAY0, reg, quality, interval).
type Row = (f64, u64, String, Option<u64>);

/// The meter's stored rows, once they are `want`; the last ones seen when that never
/// comes.
async fn rows(service: &Meterflow, meter: &str, want: &[Row]) -> Vec<Row> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = service.get_json(&format!("/api/v1/tenants/demo/meters/{meter}/readings"));
        let seen: Vec<Row> = answer
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    (r["ts"].as_i64().unwrap() - DAY0) as f64 / HOUR_MS as f64,
                    r["reg"].as_u64().unwrap(),
                    r["quality"].as_str().unwrap().to_owned(),
                    r["interval_l"].as_u64(),
                )
            })
            .collect();
        if seen == want || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn row(hours: f64, reg: u64, quality: &str, interval_l: Option<u64>) -> Row {
    (hours, reg, quality.to_owned(), interval_l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimates_a_late_read_re_spreads_are_withdrawn_as_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(dir.path(), "", &[]);
    let (first, gap_end, late) = (
        [(at(0.0), 1_000), (at(1.0), 1_100)],
        [(at(6.0), 1_600)],
        [(at(3.5), 1_350)],
    );
    send_and_wait_for_ack(service.mqtt, "demo", "late", &[register_uplink(1, &first)]).await;
    send_and_wait_for_ack(
        service.mqtt,
        "demo",
        "late",
        &[register_uplink(2, &gap_end)],
    )
    .await;
    // The gap 01:00–06:00 filled on the hourly grid, 100 L an hour.
    let filled = [
        row(0.0, 1_000, "actual", None),
        row(1.0, 1_100, "actual", Some(100)),
        row(2.0, 1_200, "estimated", Some(100)),
        row(3.0, 1_300, "estimated", Some(100)),
        row(4.0, 1_400, "estimated", Some(100)),
        row(5.0, 1_500, "estimated", Some(100)),
        row(6.0, 1_600, "actual", Some(100)),
    ];
    assert_eq!(rows(&service, "late", &filled).await, filled);

    let service = restart_configured(service, dir.path());
    send_and_wait_for_ack(service.mqtt, "demo", "late", &[register_uplink(3, &late)]).await;
    let in_order_reads = [first[0], first[1], late[0], gap_end[0]];
    send_and_wait_for_ack(
        service.mqtt,
        "demo",
        "in-order",
        &[register_uplink(1, &in_order_reads)],
    )
    .await;
    // 01:00–03:30: 250 L, one estimate an hour in; 03:30–06:00 the same.
    let split = [
        row(0.0, 1_000, "actual", None),
        row(1.0, 1_100, "actual", Some(100)),
        row(2.0, 1_200, "estimated", Some(100)),
        row(3.5, 1_350, "actual", Some(150)),
        row(4.5, 1_450, "estimated", Some(100)),
        row(6.0, 1_600, "actual", Some(150)),
    ];
    assert_eq!(rows(&service, "in-order", &split).await, split);
    assert_eq!(rows(&service, "late", &split).await, split);
}
