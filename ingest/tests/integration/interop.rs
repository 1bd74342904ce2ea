//! A client nobody here wrote — Debian's mosquitto_pub / mosquitto_sub — can send a
//! JSON uplink and receive its ack.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::utils::{Meterflow, tool};

#[test]
fn mosquitto_clients_send_an_uplink_and_get_the_ack() {
    let (publish, subscribe) = (tool("mosquitto_pub"), tool("mosquitto_sub"));
    let dir = tempfile::tempdir().unwrap();
    let service = Meterflow::start(&dir.path().join("data"));
    let (host, port) = (
        service.mqtt.ip().to_string(),
        service.mqtt.port().to_string(),
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let ts = now - 60_000;
    let payload = format!(
        r#"{{"v":1,"seq":1,"readings":[{{"ts":{ts},"reg":123456,"rev":0,"flow":12,"temp":125}}],"battery":87,"rssi":-97}}"#
    );
    let listener = Command::new(subscribe)
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-i",
            "demo.interop-sub",
            "-t",
            "meters/demo/interop1/ack",
            "-C",
            "1",
            "-W",
            "20",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new(publish)
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-i",
            "demo.interop1",
            "-q",
            "1",
            "-t",
            "meters/demo/interop1/up",
            "-m",
            &payload,
        ])
        .status()
        .unwrap();
    assert!(status.success());

    let output = listener.wait_with_output().unwrap();
    let ack = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        ack.trim(),
        r#"{"seq":1}"#,
        "ack from meterflow:\n{}",
        service.log_tail()
    );

    let readings = service.get_json("/api/v1/tenants/demo/meters/interop1/readings");
    assert_eq!(readings[0]["reg"], 123456);
    assert_eq!(readings[0]["ts"], ts);
    assert_eq!(readings[0]["temp"], 125);
}
