//! 1,000 meters × 20 messages × 4 readings through the real broker: every message
//! acked, the store holds exactly the expected readings, and every message received
//! is accounted for in the metrics.

use meterflow_simulator::{SimConfig, run};

use crate::utils::{Meterflow, assert_store_matches, expected_today_l};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_meters_are_stored_exactly_and_acked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut service = Meterflow::start(&data);
    let config = SimConfig {
        meters: 1_000,
        messages_per_meter: 20,
        readings_per_message: 4,
        seed: 7,
        timeout_s: 180,
        ..service.sim_config()
    }
    .resolved_now();
    let report = run(config.clone()).await.expect("simulator runs");
    assert_eq!(report.sent, 20_000, "{report:?}");
    assert_eq!(
        report.acked,
        20_000,
        "every message acked: {report:?}\n{}",
        service.log_tail()
    );
    assert_eq!(report.unacked, 0);

    let metrics = service.metrics();
    metrics.assert_accounted();
    assert_eq!(metrics.messages("stored"), 20_000.0, "{:?}", metrics.0);
    assert_eq!(metrics.messages("dead_letter"), 0.0);
    assert_eq!(
        metrics.value("meterflow_readings_total{outcome=\"stored\"}"),
        80_000.0
    );

    // The API serves the latest state of a meter.
    let key = config.meter_key(17).unwrap();
    let view = service.get_json(&format!(
        "/api/v1/tenants/{}/meters/{}",
        key.tenant, key.meter
    ));
    assert_eq!(view["last_seq"], 20);
    assert_eq!(view["today_l"], expected_today_l(&config, 17));
    assert_eq!(view["quality"], "actual");
    let readings = service.get_json(&format!(
        "/api/v1/tenants/{}/meters/{}/readings",
        key.tenant, key.meter
    ));
    assert_eq!(readings.as_array().unwrap().len(), 80);

    service.stop();
    let states = assert_store_matches(&data, &config);
    for (index, (_, state)) in config.meter_indices().zip(&states) {
        assert_eq!(state.usage.today_l, expected_today_l(&config, index));
    }
}
