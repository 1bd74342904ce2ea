//! Distributed mode's events topic (`kafka.events_topic`), with the real processes and
//! servers of `distributed.rs`: a processor has no connection, so what it learns once
//! the store has a group — each meter's durable watermark, alert events — reaches the
//! meters and integrations connected to an endpoint through the log.
//!
//! What they prove: meters that settle messages by the ack topic alone (PUBACK taken to
//! mean only "received", as from a plain broker) get every message acked, each reading
//! stored once; an alert a processor raises reaches a stock MQTT client (Debian's
//! `mosquitto_sub`) subscribed to its tenant's alerts on the endpoint.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use meterflow_model::Reading;
use meterflow_model::uplink::{DeviceFlag, Uplink};
use meterflow_simulator::{SimConfig, run};

use crate::distributed::{Cluster, DRAIN_TIMEOUT, assert_stored_once, fleet};
use crate::utils::{send_and_wait_for_ack, tool};

/// The demo tenant's integration password (alerts subscriptions).
const INTEGRATION_PASSWORD: &str = "demo-integration-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_settling_by_the_ack_topic_alone_get_every_message_acked_and_stored_once() {
    let Some(cluster) = Cluster::new("dist_acktopic") else {
        return;
    };
    let processor = cluster.start("processor", "p1");
    let endpoint = cluster.start("endpoint", "e1");
    let config = SimConfig {
        puback_durable: false,
        ack_topic: true,
        ack_timeout_ms: 5_000,
        ..fleet(endpoint.mqtt.to_string(), 400.0, 41)
    };
    let report = run(config.clone()).await.unwrap();
    assert_eq!(
        report.acked,
        6_000,
        "{report:?}\n{}\n{}",
        endpoint.log_tail(),
        processor.log_tail()
    );
    assert_eq!(report.bad_acks, 0, "{report:?}");
    cluster.wait_stored(&config, DRAIN_TIMEOUT).await;
    assert_stored_once(&[&processor], 6_000.0).await;

    // The watermarks went processor → log → endpoint → meters, and none was lost.
    let (sent, delivered) = (processor.metrics(), endpoint.metrics());
    assert!(sent.value("meterflow_log_events_appended_total") > 0.0);
    assert_eq!(sent.value("meterflow_log_events_dropped_total"), 0.0);
    assert!(delivered.value("meterflow_log_events_consumed_total") > 0.0);
    assert!(delivered.value("meterflow_acks_published_total") > 0.0);
    assert_eq!(delivered.value("meterflow_log_unreadable_total"), 0.0);
}

/// Debian's `mosquitto_sub -v -d`, line-buffered, its output lines on a channel; killed
/// when dropped.
struct Subscriber {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Subscriber {
    fn start(mqtt: std::net::SocketAddr, username: &str, password: &str, filter: &str) -> Self {
        let mut child = Command::new(tool("stdbuf"))
            .arg("-oL")
            .arg(tool("mosquitto_sub"))
            .args(["-h", &mqtt.ip().to_string(), "-p", &mqtt.port().to_string()])
            .args(["-i", "erp-1", "-u", username, "-P", password])
            .args(["-t", filter, "-v", "-d", "-W", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Subscriber {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (from now) that satisfies `wanted`, within `within`.
    fn wait_for(&mut self, what: &str, within: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no {what} within {within:?}; lines: {:#?}", self.seen),
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_raised_by_a_processor_reaches_an_integration_on_the_endpoint() {
    let Some(cluster) = Cluster::new("dist_alerts") else {
        return;
    };
    let mut toml = std::fs::read_to_string(&cluster.config).unwrap();
    toml.push_str(&format!(
        "\n[[tenants]]\nid = \"demo\"\nintegration_password = \"{INTEGRATION_PASSWORD}\"\n"
    ));
    std::fs::write(&cluster.config, toml).unwrap();
    let processor = cluster.start("processor", "p1");
    let endpoint = cluster.start("endpoint", "e1");
    let mut erp = Subscriber::start(
        endpoint.mqtt,
        "demo:integration",
        INTEGRATION_PASSWORD,
        "alerts/demo/#",
    );
    let suback = erp.wait_for("the SUBACK", Duration::from_secs(30), |l| {
        l.starts_with("Subscribed")
    });
    assert_eq!(suback, "Subscribed (mid: 1): 0");

    // A meter reports a leak; its ack (the watermark, through the events topic too)
    // says it is stored.
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 60_000;
    let mut uplink = Uplink::new(
        1,
        vec![Reading {
            ts,
            reg: 1_000,
            rev: 0,
            flow: 0,
            temp: None,
        }],
    );
    uplink.flags.insert(DeviceFlag::Leak);
    let acks = send_and_wait_for_ack(endpoint.mqtt, "demo", "leaky1", &[uplink]).await;
    assert_eq!(acks.last().map(String::as_str), Some(r#"{"seq":1}"#));

    let line = erp.wait_for("the leak alert", Duration::from_secs(30), |l| {
        l.starts_with("alerts/demo/leaky1 ")
    });
    let alert: serde_json::Value = serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
    assert_eq!(alert["tenant"], "demo", "{alert}");
    assert_eq!(alert["meter"], "leaky1", "{alert}");
    assert_eq!(alert["kind"], "leak", "{alert}");
    assert_eq!(alert["state"], "opened", "{alert}");
    assert!(
        processor
            .metrics()
            .value("meterflow_log_events_appended_total")
            >= 2.0,
        "the watermark and the alert"
    );
    assert_eq!(
        endpoint
            .metrics()
            .value("meterflow_notifications_total{outcome=\"published\"}"),
        1.0
    );
}
