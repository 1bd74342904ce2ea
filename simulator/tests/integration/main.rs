//! End-to-end tests of the simulator against a real broker (mosquitto) and a fake
//! service (the acker in `utils`). They fail — never skip — when mosquitto is
//! missing. Run with `cargo test -p meterflow-simulator` (see simulator/README.md).

mod utils;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use meterflow_simulator::{FleetCounters, MacKeys, Report, SimConfig, run, run_with};
use utils::{AckPolicy, Acker, Mosquitto};

fn fleet(broker: &Mosquitto, meters: usize, messages: u64, readings: usize) -> SimConfig {
    SimConfig {
        mqtt: broker.addr(),
        tenant: "it".into(),
        meters,
        messages_per_meter: messages,
        readings_per_message: readings,
        timeout_s: 15,
        ..SimConfig::default()
    }
    .resolved_now()
}

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
