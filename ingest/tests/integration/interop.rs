//! Clients nobody here wrote — Debian's mosquitto_pub, mosquitto_sub and mosquitto_rr —
//! against meterflow's own MQTT endpoint: a QoS 1 publish that returns is stored, a
//! meter that subscribes to its ack topic on its own connection gets `{"seq":N}` (over
//! MQTT 5 and 3.1.1), and nobody else may listen on that topic.

use std::process::{Command, Output};

use crate::utils::{Meterflow, tool};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("run a mosquitto client");
    assert!(
        output.status.success(),
        "{command:?}: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn mosquitto_clients_send_an_uplink_and_get_the_ack() {
    let (publish, subscribe, request) = (
        tool("mosquitto_pub"),
        tool("mosquitto_sub"),
        tool("mosquitto_rr"),
    );
    let dir = tempfile::tempdir().unwrap();
    let service = Meterflow::start(&dir.path().join("data"));
    let (host, port) = (
        service.mqtt.ip().to_string(),
        service.mqtt.port().to_string(),
    );
    let ts = now_ms() - 60_000;
    let payload = format!(
        r#"{{"v":1,"seq":1,"readings":[{{"ts":{ts},"reg":123456,"rev":0,"flow":12,"temp":125}}],"battery":87,"rssi":-97}}"#
    );

    // PUBACK means durable: once `mosquitto_pub -q 1` has returned (it waits for the
    // PUBACK), the reading is stored — read back at once, no waiting.
    run(Command::new(&publish).args([
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
    ]));
    let readings = service.get_json("/api/v1/tenants/demo/meters/interop1/readings");
    assert_eq!(
        readings.as_array().unwrap().len(),
        1,
        "stored before the PUBACK: {readings}\n{}",
        service.log_tail()
    );
    assert_eq!(readings[0]["reg"], 123456);
    assert_eq!(readings[0]["ts"], ts);
    assert_eq!(readings[0]["temp"], 125);
    assert_eq!(readings[0]["seq"], 1);
    assert_eq!(service.metrics().value("meterflow_pubacks_total"), 1.0);

    // A meter that subscribes to its own ack topic on the connection it publishes on
    // gets the watermark: mosquitto_rr subscribes to `-e`, then publishes to `-t` and
    // prints the first message on `-e` — by default over MQTT 5, and over 3.1.1.
    for (meter, version) in [("interop2", None), ("interop3", Some("311"))] {
        let client_id = format!("demo.{meter}");
        let (up, ack) = (
            format!("meters/demo/{meter}/up"),
            format!("meters/demo/{meter}/ack"),
        );
        let mut command = Command::new(&request);
        command.args(["-h", &host, "-p", &port, "-i", &client_id, "-q", "1"]);
        command.args(["-t", &up, "-e", &ack, "-W", "20", "-m", &payload]);
        if let Some(version) = version {
            command.args(["-V", version]);
        }
        let output = run(&mut command);
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            r#"{"seq":1}"#,
            "ack for {meter} (MQTT {version:?}):\n{}",
            service.log_tail()
        );
        let readings = service.get_json(&format!("/api/v1/tenants/demo/meters/{meter}/readings"));
        assert_eq!(readings[0]["reg"], 123456, "{meter}: {readings}");
    }

    // A meter's ack topic is its own: another client id (even of the same tenant) is
    // refused the subscription (SUBACK 0x80), and mosquitto_sub says so and receives
    // nothing.
    let output = run(Command::new(&subscribe).args([
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
        "10",
    ]));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("All subscription requests were denied"),
        "{output:?}"
    );
    assert!(output.stdout.is_empty(), "{output:?}");
    assert_eq!(
        service
            .metrics()
            .value("meterflow_mqtt_refused_total{what=\"subscribe\"}"),
        1.0
    );
}
