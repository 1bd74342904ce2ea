//! Bad input becomes dead letters with their own reasons; the service keeps running
//! and nothing else is lost.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use meterflow_model::{Reading, Uplink, codec};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::utils::Meterflow;

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

/// Appends an MQTT "remaining length" varint.
fn push_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

/// Publishes QoS 0 on a topic that is not valid UTF-8 — something no MQTT library
/// lets one do — over a hand-made MQTT 3.1.1 session.
fn publish_raw_topic(addr: std::net::SocketAddr, topic: &[u8], payload: &[u8]) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let client_id = b"demo.raw";
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        0x02,
        0,
        60,
        0,
        client_id.len() as u8,
    ];
    body.extend_from_slice(client_id);
    let mut connect = vec![0x10];
    push_len(&mut connect, body.len());
    connect.extend(body);
    stream.write_all(&connect).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut body = vec![0, topic.len() as u8];
    body.extend_from_slice(topic);
    body.extend_from_slice(payload);
    let mut publish = vec![0x30];
    push_len(&mut publish, body.len());
    publish.extend(body);
    let _ = stream.write_all(&publish);
    std::thread::sleep(Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_input_is_dead_lettered_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let service = Meterflow::start(&dir.path().join("data"));
    let mut options = MqttOptions::new(
        "demo.good",
        service.mqtt.ip().to_string(),
        service.mqtt.port(),
    );
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut events) = AsyncClient::new(options, 64);
    client
        .subscribe("meters/demo/good/ack", QoS::AtMostOnce)
        .await
        .unwrap();

    let now = now_ms();
    let good = codec::encode_json(&uplink(1, 4, now - 60_000));
    let mut oversized = codec::encode_json(&uplink(1, 4, now - 60_000));
    oversized.truncate(oversized.len() - 1);
    oversized.extend_from_slice(format!(",\"pad\":\"{}\"}}", "x".repeat(70 * 1024)).as_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("meters/demo/bad1/up", br#"{"v":1,"seq":"#.to_vec()),
        ("meters/demo/bad2/up", b"\x02binary-ish".to_vec()),
        ("meters/nosuch/m1/up", good.clone()),
        (
            "meters/demo/bad3/up",
            codec::encode_json(&uplink(1, 257, now - 60_000)),
        ),
        ("meters/demo/bad4/up", oversized),
        (
            "meters/demo/bad5/up",
            codec::encode_binary(&uplink(1, 2, now + 3_600_000)),
        ),
        ("meters/demo/bad.6/up", good.clone()),
    ];
    for (topic, payload) in cases {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    publish_raw_topic(service.mqtt, b"meters/demo/\xff\xfe/up", &good);
    client
        .publish("meters/demo/good/up", QoS::AtLeastOnce, false, good)
        .await
        .unwrap();

    // The good uplink is acked despite everything before it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ack = loop {
        let event = tokio::time::timeout(deadline - Instant::now(), events.poll())
            .await
            .expect("an ack for the good uplink")
            .expect("mqtt connection stays up");
        if let Event::Incoming(Packet::Publish(p)) = event {
            break String::from_utf8_lossy(&p.payload).into_owned();
        }
    };
    assert_eq!(ack, r#"{"seq":1}"#);
    let readings = service.get_json("/api/v1/tenants/demo/meters/good/readings");
    assert_eq!(readings.as_array().unwrap().len(), 4);

    // Every rejected uplink of the demo tenant is a dead letter with its reason.
    let expected: BTreeSet<&str> = [
        "malformed",
        "unknown_format",
        "too_many_readings",
        "payload_too_large",
        "clock_skew",
    ]
    .into();
    let deadline = Instant::now() + Duration::from_secs(10);
    let reasons: BTreeSet<String> = loop {
        let letters = service.get_json("/api/v1/tenants/demo/dead-letters?limit=50");
        let reasons: BTreeSet<String> = letters
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["reason"].as_str().unwrap().to_string())
            .collect();
        if expected.iter().all(|r| reasons.contains(*r)) || Instant::now() > deadline {
            break reasons;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expected: BTreeSet<String> = expected.into_iter().map(String::from).collect();
    assert!(
        expected.is_subset(&reasons),
        "dead-letter reasons {reasons:?}, expected {expected:?}"
    );
    let letters = service.get_json("/api/v1/tenants/demo/dead-letters?limit=50");
    let skewed = letters
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["reason"] == "clock_skew")
        .unwrap();
    assert_eq!(skewed["correlation_id"], "demo/bad5/1");
    assert_eq!(skewed["topic"], "meters/demo/bad5/up");

    // Those whose topic names no usable tenant are counted by reason.
    let metrics = service.metrics();
    assert_eq!(
        metrics.value("meterflow_dead_letters_total{reason=\"unknown_tenant\"}"),
        1.0
    );
    assert_eq!(
        metrics.value("meterflow_dead_letters_total{reason=\"bad_id\"}"),
        1.0
    );
    // A topic that is not UTF-8 is refused by the broker itself (rumqttd's router
    // checks topics before any subscriber sees them), so it never reaches the
    // pipeline; the topic parser's own handling of such bytes is unit-tested.
    assert_eq!(metrics.messages("dead_letter"), 7.0);
    assert_eq!(
        metrics.received(),
        8.0,
        "seven bad uplinks and the good one"
    );
    metrics.assert_accounted();
    assert_eq!(service.get("/readyz").0, 200, "still serving");
}
