//! Bad input becomes dead letters with their own reasons — of the meter that really
//! sent it, PUBACKed once durable — or, where it cannot name a configured meter or
//! breaks MQTT itself, never gets in: the CONNECT is refused or the connection is
//! closed. The service keeps running and nothing else is lost.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use meterflow_model::{Reading, Uplink, codec};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS};

use crate::utils::{Meterflow, dead_letter_triples, packet, push_str};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn uplink(seq: u64, readings: usize, ts_end: i64) -> Uplink {
    let readings = (0..readings as i64)
        .map(|i| Reading {
            ts: ts_end - (readings as i64 - i) * 60_000,
            reg: 1_000 + i as u64,
            rev: 0,
            flow: 0,
            temp: None,
        })
        .collect();
    Uplink::new(seq, readings)
}

/// Publishes QoS 0 on a topic that is not valid UTF-8 — something no MQTT library
/// lets one do — over a hand-made MQTT 3.1.1 session of meter `demo.raw`. Returns the
/// CONNACK's bytes and whether the service then closed the connection.
fn publish_raw_topic(addr: SocketAddr, topic: &[u8], payload: &[u8]) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut body = Vec::new();
    push_str(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    push_str(&mut body, b"demo.raw");
    stream.write_all(&packet(0x10, &body)).unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).unwrap();
    let mut body = Vec::new();
    push_str(&mut body, topic);
    body.extend_from_slice(payload);
    let _ = stream.write_all(&packet(0x30, &body));
    // Closed: end of stream (or a reset), not a read timeout and not more packets.
    let mut rest = [0u8; 64];
    let closed = match stream.read(&mut rest) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    (connack.to_vec(), closed)
}

fn options(mqtt: SocketAddr, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, mqtt.ip().to_string(), mqtt.port());
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    options
}

/// Publishes one QoS 1 message as `client_id` on its own connection and returns once
/// it is PUBACKed.
async fn publish_until_puback(mqtt: SocketAddr, client_id: &str, topic: &str, payload: Vec<u8>) {
    let (client, mut events) = AsyncClient::new(options(mqtt, client_id), 8);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(polled) = tokio::time::timeout(left, events.poll()).await else {
            panic!("no PUBACK for {client_id} on {topic}");
        };
        match polled {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                let _ = client.disconnect().await;
                return;
            }
            Ok(_) => {}
            Err(e) => panic!("{client_id}: mqtt connection stays up: {e}"),
        }
    }
}

/// What the service answers a CONNECT of `client_id` that then tries to publish.
async fn connect_refusal(mqtt: SocketAddr, client_id: &str, topic: &str) -> ConnectReturnCode {
    let (client, mut events) = AsyncClient::new(options(mqtt, client_id), 8);
    client
        .publish(topic, QoS::AtLeastOnce, false, b"{}".to_vec())
        .await
        .unwrap();
    loop {
        let Ok(polled) = tokio::time::timeout(Duration::from_secs(10), events.poll()).await else {
            panic!("{client_id}: no CONNACK");
        };
        match polled {
            Err(ConnectionError::ConnectionRefused(code)) => return code,
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                panic!("{client_id} was let in: {ack:?}")
            }
            Ok(_) => {}
            Err(e) => panic!("{client_id}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_input_is_dead_lettered_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let service = Meterflow::start(&dir.path().join("data"));
    let now = now_ms();
    let good = codec::encode_json(&uplink(1, 4, now - 60_000));

    // Payloads that break the uplink contract, each sent by the meter whose topic it
    // is: its PUBACK comes once its dead letter is durable.
    let mut oversized = good.clone();
    oversized.truncate(oversized.len() - 1);
    oversized.extend_from_slice(format!(",\"pad\":\"{}\"}}", "x".repeat(70 * 1024)).as_bytes());
    let payload_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad1", br#"{"v":1,"seq":"#.to_vec(), "malformed"),
        ("bad2", b"\x02binary-ish".to_vec(), "unknown_format"),
        (
            "bad3",
            codec::encode_json(&uplink(1, 257, now - 60_000)),
            "too_many_readings",
        ),
        ("bad4", oversized, "payload_too_large"),
        (
            "bad5",
            codec::encode_binary(&uplink(1, 2, now + 3_600_000)),
            "clock_skew",
        ),
    ];
    for (meter, payload, _) in &payload_cases {
        let topic = format!("meters/demo/{meter}/up");
        publish_until_puback(
            service.mqtt,
            &format!("demo.{meter}"),
            &topic,
            payload.clone(),
        )
        .await;
    }
    // PUBACK means durable: the dead letters are there without waiting.
    let letters = service.get_json("/api/v1/tenants/demo/dead-letters?limit=50");
    let by_topic: BTreeMap<String, serde_json::Value> = letters
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["topic"].as_str().unwrap().to_string(), d.clone()))
        .collect();
    for (meter, _, reason) in &payload_cases {
        let topic = format!("meters/demo/{meter}/up");
        let letter = by_topic
            .get(&topic)
            .unwrap_or_else(|| panic!("no dead letter for {topic} after its PUBACK: {letters}"));
        assert_eq!(letter["reason"], *reason, "{letter}");
    }
    let skewed = &by_topic["meters/demo/bad5/up"];
    assert_eq!(skewed["correlation_id"], "demo/bad5/1");

    // Meter `good` publishes where it may not: another meter's topic (`victim`, which
    // has never sent anything), another tenant's,
    // a topic with an invalid id, its own ack topic (a forged ack), and a retained
    // uplink. Each is a dead letter of `good` itself, PUBACKed; then its real uplink
    // is acked as seq 1 and nothing it forged reaches anyone.
    let (client, mut events) = AsyncClient::new(options(service.mqtt, "demo.good"), 64);
    client
        .subscribe("meters/demo/good/ack", QoS::AtMostOnce)
        .await
        .unwrap();
    let forbidden = [
        ("meters/demo/victim/up", good.clone()),
        ("meters/nosuch/m1/up", good.clone()),
        ("meters/demo/bad.6/up", good.clone()),
        ("meters/demo/good/ack", br#"{"seq":99}"#.to_vec()),
    ];
    for (topic, payload) in &forbidden {
        client
            .publish(*topic, QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
    }
    client
        .publish("meters/demo/good/up", QoS::AtLeastOnce, true, good.clone())
        .await
        .unwrap();

    // A topic that is not UTF-8 breaks MQTT (3.1.1 §1.5.3): the connection that sent it
    // is closed and it never reaches the pipeline; nobody else notices.
    let (connack, closed) = publish_raw_topic(service.mqtt, b"meters/demo/\xff\xfe/up", &good);
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "demo.raw is accepted");
    assert!(closed, "a non-UTF-8 topic closes the connection");

    // Client ids that name no configured meter cannot connect, so their uplinks are
    // not dead letters anywhere: an unknown tenant, an invalid meter id.
    for (client_id, topic) in [
        ("nosuch.m1", "meters/nosuch/m1/up"),
        ("demo.bad.6", "meters/demo/bad.6/up"),
    ] {
        assert_eq!(
            connect_refusal(service.mqtt, client_id, topic).await,
            ConnectReturnCode::BadClientId,
            "{client_id}"
        );
    }

    client
        .publish("meters/demo/good/up", QoS::AtLeastOnce, false, good)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut acks, mut pubacks) = (Vec::new(), 0);
    while acks.is_empty() || pubacks < forbidden.len() + 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(polled) = tokio::time::timeout(left, events.poll()).await else {
            panic!("demo.good: acks {acks:?}, {pubacks} PUBACKs so far");
        };
        match polled {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                acks.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => pubacks += 1,
            Ok(_) => {}
            Err(e) => panic!("mqtt connection of demo.good stays up: {e}"),
        }
    }
    assert_eq!(
        acks,
        [r#"{"seq":1}"#],
        "the real uplink's ack, no forged one"
    );
    let readings = service.get_json("/api/v1/tenants/demo/meters/good/readings");
    assert_eq!(readings.as_array().unwrap().len(), 4);
    // Nothing of `victim` came from good's publish on its topic.
    assert_eq!(service.get("/api/v1/tenants/demo/meters/victim").0, 404);
    let victim = service.get_json("/api/v1/tenants/demo/meters/victim/readings");
    assert_eq!(victim.as_array().unwrap().len(), 0, "{victim}");

    let letters = service.get_json("/api/v1/tenants/demo/dead-letters?limit=50");
    let of_good: Vec<(String, String, String)> = dead_letter_triples(&letters)
        .into_iter()
        .filter(|(_, _, correlation_id)| correlation_id == "demo/good/-")
        .collect();
    let mut expected: Vec<(String, String, String)> = forbidden
        .iter()
        .map(|(topic, _)| {
            (
                topic.to_string(),
                "forbidden_topic".into(),
                "demo/good/-".into(),
            )
        })
        .collect();
    expected.push((
        "meters/demo/good/up".into(),
        "retained_publish".into(),
        "demo/good/-".into(),
    ));
    let (mut got, mut want) = (of_good.clone(), expected);
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "good's dead letters, all in its own tenant: {letters}"
    );

    let metrics = service.metrics();
    let dead = |reason: &str| {
        metrics.value(&format!(
            "meterflow_dead_letters_total{{reason=\"{reason}\"}}"
        ))
    };
    for (_, _, reason) in &payload_cases {
        assert_eq!(dead(reason), 1.0, "{reason}");
    }
    assert_eq!(dead("forbidden_topic"), forbidden.len() as f64);
    assert_eq!(dead("retained_publish"), 1.0);
    for reason in ["unknown_tenant", "bad_topic", "bad_id"] {
        assert_eq!(dead(reason), 0.0, "{reason} no longer arises from MQTT");
    }
    assert_eq!(
        metrics.value("meterflow_mqtt_refused_total{what=\"publish\"}"),
        forbidden.len() as f64 + 1.0
    );
    assert_eq!(
        metrics.value("meterflow_mqtt_connects_total{outcome=\"client_id\"}"),
        2.0
    );
    assert_eq!(
        metrics.value("meterflow_mqtt_protocol_violations_total{kind=\"malformed\"}"),
        1.0
    );
    let bad = payload_cases.len() + forbidden.len() + 1;
    assert_eq!(metrics.messages("dead_letter"), bad as f64);
    assert_eq!(
        metrics.received(),
        bad as f64 + 1.0,
        "the bad uplinks and the good one; the non-UTF-8 publish never got in"
    );
    assert_eq!(
        metrics.value("meterflow_pubacks_total"),
        bad as f64 + 1.0,
        "every QoS 1 uplink taken was PUBACKed"
    );
    metrics.assert_accounted();
    assert_eq!(service.get("/readyz").0, 200, "still serving");
}
