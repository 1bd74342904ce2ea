//! A realistic fleet through the whole service: two tenants with districts, meter
//! sizes and passwords (the simulator's registry is the service's config), every
//! injected scenario and message fault at once, and reconnect storms. The
//! simulator's ground truth says what must come out: every reading stored once, the
//! alerts each meter's scenario raises and no others, a dead letter per malformed
//! payload with its reason, the injected duplicates counted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use meterflow_model::{AlertKind, MeterSize};
use meterflow_simulator::fleet::{TenantFleet, registry};
use meterflow_simulator::{
    FleetCounters, FleetFile, GroundTruth, ScenarioRates, SimConfig, ground_truth, run_fleet,
};

use crate::utils::{Meterflow, assert_store_matches, free_addr};

/// A fleet file: `north` with three districts and a size mix, `south` smaller; each
/// tenant's meters log in with its password (meterflow wants at least 16 characters).
fn fleet_file(rates: ScenarioRates, messages: u64) -> FleetFile {
    FleetFile {
        fleet: SimConfig {
            messages_per_meter: messages,
            readings_per_message: 4,
            scenarios: rates,
            timeout_s: 120,
            ..SimConfig::default()
        },
        tenants: vec![
            TenantFleet {
                tenant: "north".into(),
                meters: 150,
                districts: Some(vec!["n-01".into(), "n-02".into(), "harbour".into()]),
                sizes: Some(
                    [
                        (MeterSize::Dn15, 85),
                        (MeterSize::Dn25, 10),
                        (MeterSize::Dn50, 5),
                    ]
                    .into(),
                ),
                password: Some("north-secret-0123456789".into()),
                ..TenantFleet::default()
            },
            TenantFleet {
                tenant: "south".into(),
                meters: 100,
                districts: Some(vec!["s-01".into()]),
                password: Some("south-secret-0123456789".into()),
                ..TenantFleet::default()
            },
        ],
    }
}

/// Starts meterflow with the fleet's registry (plus `extra` TOML) as its config and
/// returns it with the fleet's parts, aimed at it and resolved.
fn start_fleet(
    dir: &std::path::Path,
    mut file: FleetFile,
    extra: &str,
) -> (Meterflow, Vec<SimConfig>) {
    let mqtt = free_addr();
    file.fleet.mqtt = mqtt.to_string();
    let now = meterflow_simulator::config::now_epoch_ms();
    let parts: Vec<SimConfig> = file
        .parts()
        .unwrap()
        .into_iter()
        .map(|p| p.resolved(now))
        .collect();
    let mut toml = registry(&parts).to_toml();
    toml.push_str(extra);
    let path = dir.join("meterflow.toml");
    std::fs::write(&path, &toml).unwrap();
    let service = Meterflow::start_with(
        &dir.join("data"),
        mqtt,
        free_addr(),
        &["--config", path.to_str().unwrap()],
    );
    (service, parts)
}

/// Stops the service and checks every reading of every part is stored exactly once.
fn stop_and_check_store(mut service: Meterflow, dir: &std::path::Path, parts: &[SimConfig]) {
    service.stop();
    for part in parts {
        assert_store_matches(&dir.join("data"), part);
    }
}

/// Every alert episode the service recorded, as (tenant, meter) → kinds.
fn recorded_alerts(service: &Meterflow) -> BTreeMap<(String, String), BTreeSet<AlertKind>> {
    let mut alerts: BTreeMap<(String, String), BTreeSet<AlertKind>> = BTreeMap::new();
    for tenant in ["north", "south"] {
        let events = service.get_json(&format!(
            "/api/v1/tenants/{tenant}/alerts?state=all&limit=1000"
        ));
        for event in events.as_array().unwrap() {
            let kind: AlertKind = serde_json::from_value(event["kind"].clone()).unwrap();
            let meter = event["meter"].as_str().unwrap().to_owned();
            alerts
                .entry((tenant.to_owned(), meter))
                .or_default()
                .insert(kind);
        }
    }
    alerts
}

fn expected_alerts(truth: &GroundTruth) -> BTreeMap<(String, String), BTreeSet<AlertKind>> {
    truth
        .meters
        .iter()
        .filter(|m| !m.expected_alerts.is_empty())
        .map(|m| {
            let kinds = m.expected_alerts.iter().copied().collect();
            ((m.tenant.clone(), m.meter.clone()), kinds)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_injected_scenario_raises_exactly_its_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let rates = ScenarioRates {
        leak: 6.0,
        burst: 6.0,
        backflow: 6.0,
        tamper: 6.0,
        low_battery: 6.0,
        comms_loss: 6.0,
        rollover: 6.0,
        duplicates: 2.0,
        out_of_order: 5.0,
        malformed: 2.0,
        ..ScenarioRates::default()
    };
    // Silence counts after 4 s here, so comms loss shows within the test.
    let rules = "\n[pipeline]\nsweep_interval_s = 1\n\
        \n[processors.tenants.north.alert_rules]\nno_communication_ms = 4000\n\
        \n[processors.tenants.south.alert_rules]\nno_communication_ms = 4000\n";
    // 40 hourly messages of 15-minute reads: 40 h of data, enough to show a leak.
    let (service, parts) = start_fleet(dir.path(), fleet_file(rates, 40), rules);
    let truth = ground_truth(&parts);
    let totals = &truth.totals;
    // The fleet has every scenario, every fault and healthy meters.
    assert_eq!(totals.scenarios.len(), 7, "{totals:?}");
    assert_eq!(totals.malformed.len(), 3, "{totals:?}");
    assert!(
        totals.duplicates > 0 && totals.out_of_order > 0,
        "{totals:?}"
    );
    assert!(totals.scenarios.values().sum::<u64>() < totals.meters / 2);

    let report = run_fleet(parts.clone(), Default::default(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.messages, totals.messages, "{report:#?}");
    assert_eq!(
        report.acked,
        totals.messages,
        "{report:#?}\n{}",
        service.log_tail()
    );
    assert_eq!(report.duplicates, totals.duplicates);
    assert_eq!(report.out_of_order, totals.out_of_order);
    assert_eq!(report.malformed, totals.malformed.values().sum::<u64>());

    // Alerts: each scenario's own, nothing on a healthy meter. No-communication is
    // expected of comms-loss meters; any meter whose run is over may show it too.
    let expected = expected_alerts(&truth);
    let deadline = Instant::now() + Duration::from_secs(30);
    let recorded = loop {
        let mut recorded = recorded_alerts(&service);
        let comms_lost = expected.iter().all(|(meter, kinds)| {
            !kinds.contains(&AlertKind::NoCommunication)
                || recorded
                    .get(meter)
                    .is_some_and(|k| k.contains(&AlertKind::NoCommunication))
        });
        for (meter, kinds) in &mut recorded {
            let silent_by_design = expected
                .get(meter)
                .is_some_and(|k| k.contains(&AlertKind::NoCommunication));
            if !silent_by_design {
                kinds.remove(&AlertKind::NoCommunication);
            }
        }
        recorded.retain(|_, kinds| !kinds.is_empty());
        if (comms_lost && recorded == expected) || Instant::now() > deadline {
            break recorded;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let missing: Vec<_> = expected
        .iter()
        .filter(|(m, k)| recorded.get(m) != Some(k))
        .collect();
    let unexpected: Vec<_> = recorded
        .iter()
        .filter(|(m, k)| expected.get(m) != Some(k))
        .collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "alerts differ from the ground truth\nexpected but not recorded: {missing:#?}\nrecorded but not expected: {unexpected:#?}"
    );

    // A dead letter per malformed payload, with its reason; duplicates counted.
    let metrics = service.metrics();
    for (reason, sent) in &totals.malformed {
        let key = format!("meterflow_dead_letters_total{{reason=\"{reason}\"}}");
        assert_eq!(metrics.value(&key), *sent as f64, "{key}");
    }
    assert!(metrics.messages("duplicate") >= totals.duplicates as f64);
    metrics.assert_accounted();

    // Every reading stored exactly once, watermarks at each meter's last message.
    stop_and_check_store(service, dir.path(), &parts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storms_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rates = ScenarioRates {
        storm_every_s: 1.5,
        storm_meters: 30.0,
        ..ScenarioRates::default()
    };
    let mut file = fleet_file(rates, 24);
    // Paced so the run outlasts several storms: 6,000 messages at 800/s.
    file.fleet.rate = Some(800.0);
    let (mut service, parts) = start_fleet(dir.path(), file, "");
    let counters = std::sync::Arc::new(FleetCounters::default());
    let report = run_fleet(parts.clone(), counters, std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.unacked, 0, "{report:#?}\n{}", service.log_tail());
    assert!(report.storms >= 3, "{report:#?}");
    assert!(report.storm_disconnects >= 100, "{report:#?}");
    assert!(
        report.reconnects >= report.storm_disconnects / 2,
        "{report:#?}"
    );
    assert!(
        service.is_running(),
        "meterflow died in a storm:\n{}",
        service.log_tail()
    );
    service.metrics().assert_accounted();
    stop_and_check_store(service, dir.path(), &parts);
}
