//! End-to-end tests of the simulator against a real broker (mosquitto) and a fake
//! service (the acker in `utils`), and against a fake of meterflow's own endpoint
//! (`utils::Endpoint`: PUBACK only once stored, per-meter logins). They fail — never
//! skip — when mosquitto is missing. Run with `cargo test -p meterflow-simulator`
//! (see simulator/README.md).

// The storage crate's helpers for real servers (free ports), shared rather than copied.
#[allow(dead_code)]
#[path = "../../../storage/tests/integration/servers.rs"]
mod server_support;
mod utils;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use meterflow_simulator::{
    CountersSnapshot, FleetCounters, LatencySummary, MacKeys, Report, ScenarioRates, SimConfig,
    run, run_with,
};
use utils::{AckPolicy, Acker, Endpoint, Mosquitto, PubackPolicy};

/// A fleet against mosquitto: its PUBACK only means "received", the acker's ack
/// topic is what says durable.
fn fleet(broker: &Mosquitto, meters: usize, messages: u64, readings: usize) -> SimConfig {
    SimConfig {
        mqtt: broker.addr(),
        puback_durable: false,
        ..endpoint_fleet(&broker.addr(), meters, messages, readings)
    }
}

/// A fleet against a meterflow-like endpoint: PUBACKs are durable.
fn endpoint_fleet(addr: &str, meters: usize, messages: u64, readings: usize) -> SimConfig {
    SimConfig {
        mqtt: addr.to_owned(),
        tenant: "it".into(),
        meters,
        messages_per_meter: messages,
        readings_per_message: readings,
        timeout_s: 15,
        ..SimConfig::default()
    }
    .resolved_now()
}

const METER_SECRET: &str = "it-meter-secret-0123456789";

fn assert_complete(report: &Report, config: &SimConfig) {
    let messages = config.total_messages();
    assert_eq!(report.messages, messages, "{report:#?}");
    assert_eq!(report.sent, messages, "{report:#?}");
    assert_eq!(report.acked, messages, "{report:#?}");
    assert_eq!(report.unacked, 0, "{report:#?}");
    assert!(!report.stopped_early, "{report:#?}");
    assert_eq!(report.start_ts_ms, config.start_ts_ms.unwrap());
    assert!(report.ack_latency_ms.p50 > 0.0, "{report:#?}");
    assert!(report.ack_latency_ms.max >= report.ack_latency_ms.p99);
    assert_eq!(report.bad_acks, 0);
}

/// [`run`], and the fleet's counters at the end.
async fn run_counted(config: SimConfig) -> (Report, CountersSnapshot) {
    let counters = Arc::new(FleetCounters::default());
    let report = run_with(config, Arc::clone(&counters), std::future::pending())
        .await
        .unwrap();
    (report, counters.snapshot())
}

/// Every message settled, and by PUBACKs alone.
fn assert_settled_by_pubacks(report: &Report, config: &SimConfig) {
    let messages = config.total_messages();
    assert_eq!(
        (report.messages, report.sent, report.acked, report.unacked),
        (messages, messages, messages, 0),
        "{report:#?}"
    );
    assert!(!report.stopped_early, "{report:#?}");
    assert_eq!(
        report.ack_latency_ms,
        LatencySummary::default(),
        "{report:#?}"
    );
    assert!(report.puback_latency_ms.p50 > 0.0, "{report:#?}");
    assert!(report.puback_latency_ms.max >= report.puback_latency_ms.p99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_acked_and_stored_exactly() {
    let broker = Mosquitto::start();
    let acker = Acker::start(broker.port(), AckPolicy::All, None).await;
    let config = fleet(&broker, 50, 20, 24);

    let report = run(config.clone()).await.unwrap();

    assert_complete(&report, &config);
    assert!(
        (report.readings_per_s - report.msgs_per_s * 24.0).abs() < 1e-6 * report.readings_per_s
    );
    acker.assert_stored_ground_truth(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_messages_are_resent_until_acked() {
    let broker = Mosquitto::start();
    let keys = MacKeys::PerMeter("it-secret".into());
    let acker = Acker::start(
        broker.port(),
        AckPolicy::LoseEveryThirdOnce,
        Some(keys.clone()),
    )
    .await;
    let config = SimConfig {
        window: 4,
        ack_timeout_ms: 300,
        binary: true,
        mac_keys: Some(keys),
        // Each meter starts as soon as it is connected (the other path of the gate).
        connect_first: false,
        ..fleet(&broker, 20, 12, 4)
    };

    let report = run(config.clone()).await.unwrap();

    assert_complete(&report, &config);
    // Seqs 3, 6, 9 and 12 of every meter were lost once and had to be resent.
    assert!(report.resent >= 20 * 4, "{report:#?}");
    // Their latency includes at least one ack timeout.
    assert!(report.ack_latency_ms.max >= 300.0, "{report:#?}");
    acker.assert_stored_ground_truth(&config);
    let state = acker.state.lock().unwrap();
    assert!(state.meters.values().all(|log| log.lost_once.len() == 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_ride_out_a_broker_restart() {
    let mut broker = Mosquitto::start();
    let port = broker.port();
    let acker = Acker::start(port, AckPolicy::All, None).await;
    // 600 messages at 150/s: about four seconds, so the outage hits mid-run.
    let config = SimConfig {
        rate: Some(150.0),
        ack_timeout_ms: 1_000,
        ..fleet(&broker, 20, 30, 4)
    };
    let run = tokio::spawn(run(config.clone()));

    while acker.received() < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.kill();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let _broker = Mosquitto::start_on(port);

    let report = run.await.unwrap().unwrap();
    assert_complete(&report, &config);
    assert!(report.reconnects >= 1, "{report:#?}");
    assert!(report.connection_errors >= 1, "{report:#?}");
    acker.assert_stored_ground_truth(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_acks_the_run_stops_at_its_deadline() {
    let broker = Mosquitto::start();
    let config = SimConfig {
        timeout_s: 1,
        window: 3,
        ..fleet(&broker, 2, 5, 1)
    };

    let report = run(config).await.unwrap();

    assert_eq!(report.acked, 0);
    assert_eq!(report.sent, 6, "a full window per meter: {report:#?}");
    assert_eq!(report.unacked, 10);
    assert!(report.stopped_early);
    let run_s = report.connect_s + report.elapsed_s;
    assert!((0.9..5.0).contains(&run_s), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_request_ends_the_run_early() {
    let broker = Mosquitto::start();
    let config = fleet(&broker, 3, 5, 1);
    let counters = Arc::new(FleetCounters::default());
    let stop = {
        let counters = Arc::clone(&counters);
        async move {
            // Stop once the fleet is sending: every meter has filled its window.
            while counters.snapshot().sent < 15 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    let report = run_with(config, Arc::clone(&counters), stop).await.unwrap();

    assert!(report.stopped_early);
    assert_eq!((report.sent, report.acked, report.unacked), (15, 0, 15));
    assert!(report.connect_s + report.elapsed_s < 5.0, "{report:#?}");
    assert_eq!(counters.snapshot().connected, 0, "every meter disconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_one_json_report_and_exits_by_outcome() {
    let broker = Mosquitto::start();
    let _acker = Acker::start(broker.port(), AckPolicy::All, None).await;
    let bin = env!("CARGO_BIN_EXE_meterflow-sim");
    let args = |tenant: &str, timeout: &str| {
        let mut command = Command::new(bin);
        command.args([
            "--mqtt",
            &broker.addr(),
            "--tenant",
            tenant,
            "--meters",
            "5",
            "--messages-per-meter",
            "4",
            "--readings-per-message",
            "2",
            "--timeout",
            timeout,
            "--json",
            "--puback-not-durable",
        ]);
        command
    };

    let mut command = args("cli", "15");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: Report = serde_json::from_slice(&output.stdout).expect("stdout is one JSON report");
    assert_eq!((report.acked, report.unacked), (20, 0));

    // Nobody acks the ack topic of another broker: exit code 1 after the deadline.
    drop(_acker);
    let broker2 = Mosquitto::start();
    let output = Command::new(bin)
        .args([
            "--mqtt",
            &broker2.addr(),
            "--meters",
            "1",
            "--timeout",
            "1",
            "--json",
            "--puback-not-durable",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report: Report = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report.unacked > 0);
    assert!(String::from_utf8_lossy(&output.stderr).contains("not acked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_meters_connect_through_the_ramp() {
    let broker = Mosquitto::start();
    let acker = Acker::start(broker.port(), AckPolicy::All, None).await;
    // 500, not thousands: each connection is a file descriptor in this process and
    // in mosquitto, and CI machines often cap both at 1,024.
    let config = SimConfig {
        connect_concurrency: 32,
        ..fleet(&broker, 500, 5, 4)
    };

    let report = run(config.clone()).await.unwrap();

    assert_complete(&report, &config);
    assert_eq!(report.connection_errors, 0, "{report:#?}");
    acker.assert_stored_ground_truth(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_ramp_connects_at_its_rate() {
    let broker = Mosquitto::start();
    let acker = Acker::start(broker.port(), AckPolicy::All, None).await;
    // 300 meters at 200 connections/s: the connect phase lasts about 1.5 s.
    let config = SimConfig {
        connect_rate: Some(200.0),
        ..fleet(&broker, 300, 2, 4)
    };

    let report = run(config.clone()).await.unwrap();

    assert_complete(&report, &config);
    assert!(
        (1.4..4.0).contains(&report.connect_s),
        "connect phase {:.2} s for 300 meters at 200/s",
        report.connect_s
    );
    acker.assert_stored_ground_truth(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubacks_alone_settle_every_message_with_per_meter_logins() {
    let endpoint = Endpoint::start(
        PubackPolicy::Durable(Duration::from_millis(2)),
        Some(METER_SECRET),
    )
    .await;
    let config = SimConfig {
        meter_secret: Some(METER_SECRET.into()),
        ack_topic: false,
        ..endpoint_fleet(&endpoint.addr(), 30, 12, 4)
    };

    let report = run(config.clone()).await.unwrap();

    assert_settled_by_pubacks(&report, &config);
    assert_eq!(report.resent, 0, "{report:#?}");
    assert!(report.puback_latency_ms.p50 >= 2.0, "{report:#?}");
    endpoint.assert_stored_ground_truth(&config);
    let state = endpoint.state.lock().unwrap();
    assert_eq!(
        state.subscriptions, 0,
        "--no-ack-topic subscribes to nothing"
    );
    assert_eq!(state.refused_logins, 0);
    assert_eq!(state.logins.len(), 30);
    assert!(
        state
            .logins
            .values()
            .all(|user| user.as_deref() == Some("it"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_meter_secret_is_refused() {
    let endpoint = Endpoint::start(PubackPolicy::Durable(Duration::ZERO), Some(METER_SECRET)).await;
    let config = SimConfig {
        meter_secret: Some("not-the-meter-secret-0123".into()),
        timeout_s: 2,
        ..endpoint_fleet(&endpoint.addr(), 2, 2, 1)
    };

    let report = run(config).await.unwrap();

    assert_eq!((report.sent, report.acked), (0, 0), "{report:#?}");
    assert!(report.connection_errors >= 2, "{report:#?}");
    assert!(endpoint.state.lock().unwrap().refused_logins >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_puback_of_a_resent_message_settles_it_once() {
    // Every third seq's first PUBACK takes 800 ms; the meter resends it after 200 ms
    // and the resend's PUBACK (1 ms) settles it; the slow one is then ignored.
    let endpoint = Endpoint::start(
        PubackPolicy::SlowEveryThird(Duration::from_millis(800)),
        None,
    )
    .await;
    let config = SimConfig {
        window: 4,
        ack_timeout_ms: 200,
        ack_topic: false,
        binary: true,
        ..endpoint_fleet(&endpoint.addr(), 10, 12, 2)
    };

    let (report, counters) = run_counted(config.clone()).await;

    assert_settled_by_pubacks(&report, &config);
    assert_eq!(counters.pubacks_unpaired, 0, "{counters:?}");
    assert!(report.resent >= 10 * 4, "{report:#?}");
    assert!(report.puback_latency_ms.max >= 200.0, "{report:#?}");
    endpoint.assert_stored_ground_truth(&config);
    let state = endpoint.state.lock().unwrap();
    assert!(
        state.meters.values().any(|log| log.duplicates > 0),
        "resends arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubacks_pair_with_the_right_message_across_faults_and_reconnects() {
    // Held-back, duplicated and malformed payloads all get PUBACKs of their own, in
    // between those of regular uplinks; every meter loses its connection once with
    // messages in flight, and reconnect storms drop connections wherever rumqttc is.
    // A PUBACK paired with the wrong message would settle one that was never stored.
    let endpoint = Endpoint::start(PubackPolicy::DropConnectionOnce, None).await;
    let config = SimConfig {
        ack_topic: false,
        ack_timeout_ms: 2_000,
        // 600 messages at 300/s: two seconds, so storms every 0.4 s hit mid-run.
        rate: Some(300.0),
        scenarios: ScenarioRates {
            duplicates: 10.0,
            out_of_order: 10.0,
            malformed: 10.0,
            storm_every_s: 0.4,
            storm_meters: 30.0,
            ..ScenarioRates::default()
        },
        ..endpoint_fleet(&endpoint.addr(), 20, 30, 2)
    };

    let (report, counters) = run_counted(config.clone()).await;

    assert_settled_by_pubacks(&report, &config);
    assert_eq!(counters.pubacks_unpaired, 0, "{counters:?}");
    assert!(report.reconnects >= 20, "{report:#?}");
    assert!(
        report.storms >= 2 && report.storm_disconnects > 0,
        "{report:#?}"
    );
    assert!(
        report.duplicates > 0 && report.out_of_order > 0 && report.malformed > 0,
        "{report:#?}"
    );
    endpoint.assert_stored_ground_truth(&config);
    let state = endpoint.state.lock().unwrap();
    assert_eq!(state.dropped.len(), 20);
    // A malformed payload is not kept for resending: those queued when a connection
    // dropped are gone.
    assert!(
        (1..=report.malformed).contains(&state.rejected),
        "{} of {} malformed payloads arrived",
        state.rejected,
        report.malformed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_acknowledgements_each_message_is_settled_once() {
    // The endpoint publishes the watermark at once and PUBACKs 30 ms later: the ack
    // topic settles everything first, and no late PUBACK counts a message twice
    // (`acked` would exceed `messages`).
    let endpoint = Endpoint::start(PubackPolicy::Durable(Duration::from_millis(30)), None).await;
    let config = endpoint_fleet(&endpoint.addr(), 20, 10, 4);

    let report = run(config.clone()).await.unwrap();

    assert_complete(&report, &config);
    assert!(report.ack_latency_ms.p50 < 30.0, "{report:#?}");
    endpoint.assert_stored_ground_truth(&config);
    assert_eq!(endpoint.state.lock().unwrap().subscriptions, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_logs_in_per_meter_and_never_shows_the_secret() {
    let endpoint = Endpoint::start(
        PubackPolicy::Durable(Duration::from_millis(1)),
        Some(METER_SECRET),
    )
    .await;
    let bin = env!("CARGO_BIN_EXE_meterflow-sim");
    let mut command = Command::new(bin);
    command
        .args([
            "--mqtt",
            &endpoint.addr(),
            "--tenant",
            "cli",
            "--meters",
            "4",
        ])
        .args(["--messages-per-meter", "3", "--timeout", "15", "--json"])
        .arg("--no-ack-topic")
        .env("METERFLOW_SIM_METER_SECRET", METER_SECRET)
        .env("RUST_LOG", "debug");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: Report = serde_json::from_slice(&output.stdout).expect("stdout is one JSON report");
    assert_eq!((report.acked, report.unacked), (12, 0));
    assert!(report.puback_latency_ms.p50 > 0.0, "{report:#?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("puback latency ms"), "{stderr}");
    let password = meterflow_model::credentials::meter_password(
        METER_SECRET,
        &"cli".try_into().unwrap(),
        &"m000000".try_into().unwrap(),
    );
    for text in [&stderr, &String::from_utf8_lossy(&output.stdout)] {
        assert!(!text.contains(METER_SECRET), "the secret leaked: {text}");
        assert!(!text.contains(&password), "a password leaked: {text}");
    }
    assert_eq!(endpoint.state.lock().unwrap().subscriptions, 0);

    // Help shows the variable, not its value; the registry carries the secret.
    let help = Command::new(bin)
        .arg("--help")
        .env("METERFLOW_SIM_METER_SECRET", METER_SECRET)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("METERFLOW_SIM_METER_SECRET"), "{help}");
    assert!(!help.contains(METER_SECRET), "{help}");
    let registry = Command::new(bin)
        .args(["--tenant", "cli", "--meters", "2", "--print-registry"])
        .env("METERFLOW_SIM_METER_SECRET", METER_SECRET)
        .output()
        .unwrap();
    let registry = String::from_utf8_lossy(&registry.stdout);
    assert!(
        registry.contains(&format!("meter_secret = \"{METER_SECRET}\"")),
        "{registry}"
    );
    assert!(!registry.contains("mqtt_password"), "{registry}");

    // --meter-secret and --password do not go together; nor do the two ack switches.
    for args in [
        &["--meter-secret", "s", "--username", "u", "--password", "p"][..],
        &["--no-ack-topic", "--puback-not-durable"][..],
    ] {
        let output = Command::new(bin).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    }
}
