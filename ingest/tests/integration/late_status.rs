//! Device flags in reading time through the service (issue 10: "device status is per
//! message; episodes are ordered by the event's reading time"). A meter's tamper
//! flag is up at 02:00 and 06:00, down at 04:00 and 08:00 (one message each). They
//! arrive 08:00, 02:00, 06:00 — then the service restarts — then 04:00 (seqs 1–4: a
//! meter sending a backlog out of reading order). The stored episodes are the in-order ones, 02:00–04:00 and 06:00–08:00:
//! the late clean status, kept across the restart with its neighbours, splits the
//! one episode the first three made (02:00–08:00). Before every status of the late
//! window was kept, a late clean status changed nothing and 02:00–08:00 stayed.
//!
//! Time is values: fixed hours of a fixed UTC day.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meterflow_model::{DeviceFlag, Uplink};

use crate::utils::{
    Meterflow, register_uplink, restart_configured, send_and_wait_for_ack, start_configured,
};

const HOUR_MS: i64 = 3_600_000;
/// 2026-10-05T00:00:00Z.
const DAY0: i64 = 1_791_158_400_000;

/// The message of `hour`: its read, and the tamper flag when `tamper`.
fn message(seq: u64, hour: i64, tamper: bool) -> Uplink {
    let mut uplink = register_uplink(seq, &[(DAY0 + hour * HOUR_MS, 1_000 + 10 * hour as u64)]);
    if tamper {
        uplink.flags.insert(DeviceFlag::Tamper);
    }
    uplink
}

/// The meter's tamper episodes as stored, opened_at → cleared at (hours of the day;
/// None while open), once they are `want`; the last ones seen when that never comes.
async fn tamper_episodes(
    service: &Meterflow,
    want: &BTreeMap<i64, Option<i64>>,
) -> BTreeMap<i64, Option<i64>> {
    let hour = |ms: i64| (ms - DAY0) / HOUR_MS;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = service.get_json("/api/v1/tenants/demo/alerts?state=all&meter=t1");
        let seen: BTreeMap<i64, Option<i64>> = answer
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "tamper" && e["state"] != "withdrawn")
            .map(|e| {
                let opened = hour(e["opened_at"].as_i64().unwrap());
                let cleared = (e["state"] == "cleared").then(|| hour(e["at"].as_i64().unwrap()));
                (opened, cleared)
            })
            .collect();
        if &seen == want || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_clean_status_splits_an_episode_as_in_order_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(dir.path(), "", &[]);
    let first = [
        message(1, 8, false),
        message(2, 2, true),
        message(3, 6, true),
    ];
    for uplink in first {
        send_and_wait_for_ack(service.mqtt, "demo", "t1", &[uplink]).await;
    }
    let merged = BTreeMap::from([(2, Some(8))]);
    assert_eq!(tamper_episodes(&service, &merged).await, merged);

    let service = restart_configured(service, dir.path());
    send_and_wait_for_ack(service.mqtt, "demo", "t1", &[message(4, 4, false)]).await;
    let in_order = BTreeMap::from([(2, Some(4)), (6, Some(8))]);
    assert_eq!(tamper_episodes(&service, &in_order).await, in_order);
}
