//! `kill -9` while meters are sending, restart on the same data: the meters resend,
//! every message ends up acked, every reading is stored exactly once, and usage is not
//! counted twice (state is hydrated from `meter_state`).

use std::time::Duration;

use meterflow_simulator::SimConfig;

use crate::utils::{Meterflow, assert_store_matches, expected_today_l, spawn_fleet, wait_for_acks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut service = Meterflow::start(&data);
    let config = SimConfig {
        meters: 200,
        messages_per_meter: 30,
        readings_per_message: 4,
        // Paced so that the crash lands mid-run (6,000 messages at 1,000/s).
        rate: Some(1_000.0),
        ack_timeout_ms: 2_000,
        seed: 11,
        timeout_s: 120,
        ..service.sim_config()
    }
    .resolved_now();
    let (fleet, counters) = spawn_fleet(&config);

    // Crash once some, but not all, messages are acked.
    wait_for_acks(&counters, 1_000, Duration::from_secs(30), &service).await;
    let (mqtt, http) = (service.mqtt, service.http);
    service.kill9();
    let acked_at_crash = counters.snapshot().acked;
    assert!(acked_at_crash < 6_000, "the crash must land mid-run");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut service = Meterflow::start_on(&data, mqtt, http);

    let report = fleet.await.unwrap().expect("simulator runs");
    assert_eq!(
        report.acked,
        6_000,
        "every message acked after the restart: {report:?}\n{}",
        service.log_tail()
    );
    assert_eq!(report.unacked, 0);
    assert!(
        report.reconnects > 0,
        "the meters had to reconnect: {report:?}"
    );

    let metrics = service.metrics();
    metrics.assert_accounted();
    // What the first process stored before the crash is not stored again.
    assert!(
        metrics.messages("stored") <= 6_000.0 - acked_at_crash as f64,
        "{}",
        metrics.messages("stored")
    );

    service.stop();
    let states = assert_store_matches(&data, &config);
    for (index, (key, state)) in config.meter_indices().zip(&states) {
        assert_eq!(
            state.usage.today_l,
            expected_today_l(&config, index),
            "usage of {key}"
        );
    }
}
