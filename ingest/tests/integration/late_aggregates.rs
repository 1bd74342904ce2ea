//! District figures follow late reads through the service (issue 10, case 6): when a
//! gap's real reads arrive after the read that closed it, the hours they fall in get
//! the real litres, and so do their meters reporting and percentiles — not only
//! their litres.
//!
//! Time is values: fixed hours of a fixed UTC day, kept open by hour and day
//! retentions longer than its age.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meterflow_model::Uplink;
use serde_json::Value;

use crate::utils::{
    Meterflow, as_sketched, register_uplink, send_and_wait_for_ack, start_configured,
};

const HOUR_MS: i64 = 3_600_000;
/// 2026-10-05T00:00:00Z.
const DAY0: i64 = 1_791_158_400_000;

const CONFIG: &str = "[pipeline]\nsweep_interval_s = 1\n\n\
    [processors.analytics]\nflush_interval_ms = 1000\n\
    hour_retention_ms = 315360000000\nday_retention_ms = 315360000000\n\n\
    [processors.tenants.demo.districts]\nm0 = \"north\"\nm1 = \"north\"\n";

/// One message of reads at `(hour, register)`.
fn uplink(seq: u64, reads: &[(i64, u64)]) -> Uplink {
    let reads: Vec<(i64, u64)> = reads
        .iter()
        .map(|(hour, reg)| (DAY0 + hour * HOUR_MS, *reg))
        .collect();
    register_uplink(seq, &reads)
}

/// The north's hours 10:00–13:00 as (litres, meters, p50, p90), once the 11:00 hour
/// holds `litres_at_11`; the last ones seen when that never comes.
type Hour = (u64, u64, Option<u64>, Option<u64>);
async fn north_hours(service: &Meterflow, litres_at_11: u64) -> BTreeMap<i64, Hour> {
    let path = format!(
        "/api/v1/tenants/demo/districts/north/usage?resolution=hour&from={}&to={}",
        DAY0 + 10 * HOUR_MS,
        DAY0 + 14 * HOUR_MS
    );
    let figures = |row: &Value| -> (i64, Hour) {
        let litres = |field: &str| row[field].as_u64();
        let hour = (row["start_ms"].as_i64().unwrap() - DAY0) / HOUR_MS;
        let meters = litres("meters").unwrap();
        (
            hour,
            (
                litres("usage_l").unwrap(),
                meters,
                litres("p50_l"),
                litres("p90_l"),
            ),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = service.get_json(&path);
        let hours: BTreeMap<i64, Hour> = rows.as_array().unwrap().iter().map(figures).collect();
        let settled = hours.get(&11).is_some_and(|h| h.0 == litres_at_11);
        if settled || Instant::now() > deadline {
            return hours;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The north's 10:00–13:00 hours when its two meters used these litres in them:
/// their sum and 2 meters; for the hours both finished (all but the last), of the
/// two values the lower as p50 and the higher as p90 (nearest rank).
fn expected(m0: [u64; 4], m1: [u64; 4]) -> BTreeMap<i64, Hour> {
    (0..4)
        .map(|i| {
            let finished = i < 3;
            let (low, high) = (m0[i].min(m1[i]), m0[i].max(m1[i]));
            let p = |litres| as_sketched(litres).filter(|_| finished);
            (10 + i as i64, (m0[i] + m1[i], 2, p(low), p(high)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_reads_move_the_hours_percentiles_as_well_as_their_litres() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(dir.path(), CONFIG, &[]);
    // m1 uses 40 L every hour. m0 reads 1,000 L at 10:00 and 1,260 L at 14:00: VEE
    // estimates 65 L for each hour between. Its real 11:00–13:00 reads come later:
    // its hours used 10, 115, 65 and 70 L. An hour enters the percentiles once a
    // meter reports in a later one (10:00–12:00; 13:00 is running for both).
    let m1: Vec<(i64, u64)> = (10..=14).map(|h| (h, 500 + 40 * (h as u64 - 10))).collect();
    send_and_wait_for_ack(service.mqtt, "demo", "m1", &[uplink(1, &m1)]).await;
    let gap = uplink(1, &[(10, 1_000), (14, 1_260)]);
    send_and_wait_for_ack(service.mqtt, "demo", "m0", &[gap]).await;
    assert_eq!(
        north_hours(&service, 105).await,
        expected([65; 4], [40; 4]),
        "on the estimates"
    );

    let late = uplink(2, &[(11, 1_010), (12, 1_125), (13, 1_190)]);
    send_and_wait_for_ack(service.mqtt, "demo", "m0", &[late]).await;
    assert_eq!(
        north_hours(&service, 155).await,
        expected([10, 115, 65, 70], [40; 4]),
        "after the late reads"
    );
}
