//! District figures across a restart: an hour (and a day) that began before meterflow
//! restarted and ends after it must hold the litres of both sides — the restarted
//! process writes the window's total, never only what it saw itself (before the
//! rollup was seeded with what the earlier run published, the hour below read 100 L
//! and 0 meters after the restart instead of 250 L and 2) — the stopping process
//! publishes what it counted since its last flush, and a killed one loses nothing
//! it acked (the hours are stored with the batches that counted them).
//!
//! Time is values: one fixed UTC hour, kept open by hour and day retentions longer
//! than its age.

use std::time::{Duration, Instant};

use meterflow_model::{Reading, Uplink};
use serde_json::Value;

use crate::utils::{
    Meterflow, as_sketched, kill9_and_restart_configured, register_uplink, restart_configured,
    send_and_wait_for_ack, start_configured,
};

const HOUR_MS: i64 = 3_600_000;
/// 2026-10-05T10:00:00Z.
const TEN: i64 = 1_791_194_400_000;
const QUARTER_MS: i64 = 15 * 60_000;

const CONFIG: &str = "[pipeline]\nsweep_interval_s = 1\n\n\
    [processors.analytics]\nflush_interval_ms = 1000\n\
    hour_retention_ms = 315360000000\nday_retention_ms = 315360000000\n\n\
    [processors.tenants.demo.districts]\nc1 = \"harbour\"\nc2 = \"harbour\"\n";

/// Reads of `meter` at the quarters `quarters` after 10:00, each 50 L after the one
/// before (the register starts at 1,000 at 10:00).
fn quarters(seq: u64, quarters: std::ops::RangeInclusive<i64>) -> Uplink {
    let readings = quarters
        .map(|q| Reading {
            ts: TEN + q * QUARTER_MS,
            reg: 1_000 + 50 * q as u64,
            rev: 0,
            flow: 0,
            temp: None,
        })
        .collect();
    Uplink::new(seq, readings)
}

/// The harbour's row at `resolution` (`hour`: 10:00, from the store; `day`: the
/// day, from the cache), once its litres are `litres`; the last row seen when that
/// never comes.
async fn harbour(service: &Meterflow, resolution: &str, litres: u64) -> Value {
    let (from, to) = match resolution {
        "hour" => (TEN, TEN + HOUR_MS),
        _ => (TEN - 10 * HOUR_MS, TEN + 14 * HOUR_MS),
    };
    let path = format!(
        "/api/v1/tenants/demo/districts/harbour/usage?resolution={resolution}&from={from}&to={to}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = service.get_json(&path);
        if rows[0]["usage_l"] == litres || Instant::now() > deadline {
            return rows[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `(usage_l, meters)` of a row.
fn litres_and_meters(row: &Value) -> (Value, Value) {
    (row["usage_l"].clone(), row["meters"].clone())
}

/// Starts meterflow in `dir` with `config`, then the harbour's meters use 150 L in
/// the 10:00 hour: c1 10:00–10:30 (100 L), c2 10:00–10:15 (50 L), both acked.
async fn harbour_uses_150(dir: &std::path::Path, config: &str) -> Meterflow {
    let service = start_configured(dir, config, &[]);
    send_and_wait_for_ack(service.mqtt, "demo", "c1", &[quarters(1, 0..=2)]).await;
    send_and_wait_for_ack(service.mqtt, "demo", "c2", &[quarters(1, 0..=1)]).await;
    service
}

/// After a restart: c1 10:30–11:00 (100 L more); c2 sends nothing. The hour and the
/// day hold both sides, 250 L of two meters; the day comes from the in-process
/// cache, which the restart emptied: rebuilt from the store's hours, then counted on.
async fn c1_counts_on(service: &Meterflow) {
    send_and_wait_for_ack(service.mqtt, "demo", "c1", &[quarters(2, 3..=4)]).await;
    let both = (250.into(), 2.into());
    let hour = harbour(service, "hour", 250).await;
    assert_eq!(litres_and_meters(&hour), both, "the 10:00 hour: {hour}");
    let day = harbour(service, "day", 250).await;
    assert_eq!(litres_and_meters(&day), both, "the day: {day}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_across_a_restart_keeps_the_litres_counted_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let service = harbour_uses_150(dir.path(), CONFIG).await;
    let two = (150.into(), 2.into());
    assert_eq!(
        litres_and_meters(&harbour(&service, "hour", 150).await),
        two
    );
    assert_eq!(litres_and_meters(&harbour(&service, "day", 150).await), two);

    let service = restart_configured(service, dir.path());
    c1_counts_on(&service).await;
}

/// A graceful stop publishes what the districts counted since the last flush: with a
/// flush interval longer than the test, the hour holds the litres after a restart
/// only because the stopping process flushed them. (Before, a stop lost up to a
/// flush interval of district counts: the meters' states said they were counted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_publishes_what_was_not_flushed_yet() {
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("flush_interval_ms = 1000", "flush_interval_ms = 3600000");
    let service = harbour_uses_150(dir.path(), &config).await;
    let service = restart_configured(service, dir.path());
    let hour = harbour(&service, "hour", 150).await;
    assert_eq!(
        litres_and_meters(&hour),
        (150.into(), 2.into()),
        "the 10:00 hour: {hour}"
    );
}

/// A process killed without stopping (`kill -9`) loses no district figure: with the
/// default flush (with every batch) the hour's row is stored in the same commit as
/// the meter states that counted it, so once the meters are acked the hour holds
/// their litres, and the day (the in-process cache is gone) is rebuilt from the
/// hours. (With a flush interval, a kill before the flush lost the 150 L: the
/// meters' states said they were counted, and the hour showed 100 L in the end.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_after_the_acks_loses_no_district_figure() {
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("flush_interval_ms = 1000\n", "");
    // Killed right after the acks.
    let service = harbour_uses_150(dir.path(), &config).await;
    let service = kill9_and_restart_configured(service, dir.path());
    let hour = harbour(&service, "hour", 150).await;
    assert_eq!(
        litres_and_meters(&hour),
        (150.into(), 2.into()),
        "the 10:00 hour: {hour}"
    );
    c1_counts_on(&service).await;
}

/// A late read after a restart moves litres between hours the earlier run counted:
/// the restarted process takes them back from what that run published. c1 reads
/// 1,000 L at 10:00 and 1,300 L at 12:00: VEE estimates 1,150 at 11:00, so each
/// hour shows 150 L. After the restart its real 11:00 read (1,050) arrives: the
/// 10:00 hour used 50 L and the 11:00 hour 250 L, and the 10:00 hour's percentiles
/// (c1 finished it) show 50. (Before, the 10:00 hour kept its 150 L — a process
/// could only add to a window it held nothing of — and the day read 400 L.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_read_after_a_restart_takes_back_what_the_earlier_run_counted() {
    let hourly = |seq: u64, reads: &[(i64, u64)]| {
        let reads: Vec<(i64, u64)> = reads
            .iter()
            .map(|(hour, reg)| (TEN + (hour - 10) * HOUR_MS, *reg))
            .collect();
        register_uplink(seq, &reads)
    };
    let dir = tempfile::tempdir().unwrap();
    let service = start_configured(dir.path(), CONFIG, &[]);
    let gap = hourly(1, &[(10, 1_000), (12, 1_300)]);
    send_and_wait_for_ack(service.mqtt, "demo", "c1", &[gap]).await;
    assert_eq!(harbour(&service, "hour", 150).await["usage_l"], 150);

    let service = restart_configured(service, dir.path());
    let late = hourly(2, &[(11, 1_050)]);
    send_and_wait_for_ack(service.mqtt, "demo", "c1", &[late]).await;
    let hour = harbour(&service, "hour", 50).await;
    assert_eq!(
        litres_and_meters(&hour),
        (50.into(), 1.into()),
        "the 10:00 hour: {hour}"
    );
    assert_eq!(hour["p50_l"].as_u64(), as_sketched(50), "{hour}");
    let day = harbour(&service, "day", 300).await;
    assert_eq!(day["usage_l"], 300, "the day: {day}");
}
