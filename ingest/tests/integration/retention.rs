//! Junk from one meter cannot fill the store: a real meterflow takes a flood of
//! invalid uplinks from one connection, answers every one, stores at most the sender's
//! dead-letter rate of them and counts the rest by reason — while a well-behaved meter
//! on another connection is served as usual. And a store's expired rows are gone once
//! meterflow has started on it (the sweep's rules are tested in the storage crate, with
//! injected time).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meterflow_model::{DeadLetter, Reading, Reject, SealedBatch, Uplink, codec};
use meterflow_storage::ReadingStore;
use meterflow_storage::embedded::EmbeddedStore;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::utils::{Meterflow, dead_letter_triples, disk_usage};

/// Junk uplinks the flooding meter sends.
const FLOOD: usize = 2_000;
/// `pipeline.dead_letter_burst` and `dead_letter_refill_per_s` defaults.
const BURST: u64 = 20;
const REFILL_PER_S: u64 = 1;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Publishes `payloads` QoS 1 as `client_id` on one connection, as fast as the
/// endpoint takes them, and returns once every one is PUBACKed.
async fn publish_all(mqtt: SocketAddr, client_id: &str, payloads: Vec<Vec<u8>>) {
    let meter = client_id.split_once('.').unwrap().1;
    let topic = format!("meters/demo/{meter}/up");
    let mut options = MqttOptions::new(client_id, mqtt.ip().to_string(), mqtt.port());
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut events) = AsyncClient::new(options, 64);
    let count = payloads.len();
    let publisher = tokio::spawn(async move {
        for payload in payloads {
            client
                .publish(&topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        client
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pubacks = 0;
    while pubacks < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(polled) = tokio::time::timeout(left, events.poll()).await else {
            panic!("{client_id}: {pubacks} of {count} PUBACKs");
        };
        match polled {
            Ok(Event::Incoming(Packet::PubAck(_))) => pubacks += 1,
            Ok(_) => {}
            Err(e) => panic!("{client_id}: mqtt connection stays up: {e}"),
        }
    }
    let client = publisher.await.unwrap();
    let _ = client.disconnect().await;
}

/// Uplinks 1..=n of a meter, two readings each, a minute apart and in the past.
fn good_uplinks(n: u64) -> Vec<Vec<u8>> {
    let start = now_ms() - 3_600_000;
    (1..=n)
        .map(|seq| {
            let ts = start + seq as i64 * 120_000;
            let reading = |ts: i64, reg: u64| Reading {
                ts,
                reg,
                rev: 0,
                flow: 0,
                temp: None,
            };
            let uplink = Uplink::new(
                seq,
                vec![reading(ts, seq * 10), reading(ts + 60_000, seq * 10 + 5)],
            );
            codec::encode_json(&uplink)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_flood_from_one_meter_stores_at_most_its_dead_letter_rate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let service = Meterflow::start(&data);
    let bytes_before = disk_usage(&data);

    // ~1 KiB of junk each: every one is a `malformed` dead letter of demo.junk.
    let junk: Vec<Vec<u8>> = (0..FLOOD)
        .map(|i| format!("{{\"v\":1,\"seq\":{i},\"pad\":\"{}", "x".repeat(1_000)).into_bytes())
        .collect();
    // The well-behaved meter: good uplinks and one broken one of its own.
    let mut good = good_uplinks(10);
    good.insert(5, b"{\"v\":1,\"seq\":".to_vec());

    let started = Instant::now();
    let (_, ()) = tokio::join!(
        publish_all(service.mqtt, "demo.junk", junk),
        publish_all(service.mqtt, "demo.good", good),
    );
    let elapsed = started.elapsed();

    let letters = service.get_json("/api/v1/tenants/demo/dead-letters?limit=10000");
    let triples = dead_letter_triples(&letters);
    let of = |meter: &str| {
        let correlation = format!("demo/{meter}/-");
        triples.iter().filter(|(_, _, c)| *c == correlation).count() as u64
    };
    let junk_stored = of("junk");
    let bound = BURST + REFILL_PER_S * elapsed.as_secs_f64().ceil() as u64;
    assert!(
        (BURST..=bound).contains(&junk_stored),
        "{junk_stored} junk dead letters stored in {elapsed:?}: the burst at least, at most {bound}"
    );
    assert_eq!(of("good"), 1, "the good meter's own dead letter is stored");
    let readings = service.get_json("/api/v1/tenants/demo/meters/good/readings");
    assert_eq!(readings.as_array().unwrap().len(), 20, "{readings}");

    let metrics = service.metrics();
    let dropped = (FLOOD as u64 - junk_stored) as f64;
    assert_eq!(
        metrics.value("meterflow_dead_letters_dropped_total{reason=\"malformed\"}"),
        dropped
    );
    assert_eq!(metrics.messages("dead_letter_dropped"), dropped);
    assert_eq!(
        metrics.value("meterflow_dead_letters_total{reason=\"malformed\"}"),
        (junk_stored + 1) as f64
    );
    let sent = (FLOOD + 11) as f64;
    assert_eq!(metrics.received(), sent);
    assert_eq!(
        metrics.value("meterflow_pubacks_total"),
        sent,
        "every uplink answered, stored or not"
    );
    metrics.assert_accounted();

    // Stored whole, the flood takes ~2.2 MB of journal (~1.1 KiB a dead letter); at
    // its rate, a few dozen KiB.
    let grown = disk_usage(&data).saturating_sub(bytes_before);
    assert!(
        grown < 512 * 1024,
        "the data directory grew by {grown} bytes"
    );
    assert_eq!(service.get("/readyz").0, 200, "still serving");
}

fn dead_letter(received_at: i64, id: u64) -> DeadLetter {
    DeadLetter {
        tenant: "demo".into(),
        received_at,
        id,
        topic: "meters/demo/m1/up".into(),
        payload: b"{".to_vec(),
        reason: Reject::Malformed,
        correlation_id: format!("demo/m1/{id}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_dead_letters_are_gone_once_meterflow_has_started() {
    const DAY_MS: i64 = 86_400_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let now = now_ms();
    {
        // Written before meterflow runs: one past the default 14 days, one inside.
        let store = EmbeddedStore::open(&data).unwrap();
        let letters = vec![
            dead_letter(now - 15 * DAY_MS, 1),
            dead_letter(now - 13 * DAY_MS, 2),
        ];
        store
            .write(&[SealedBatch {
                shard: 0,
                number: 1,
                meters: Vec::new(),
                dead_letters: letters,
                now_ms: now,
            }])
            .unwrap();
    }
    let service = Meterflow::start(&data);
    // The first sweep runs on its own thread as the store opens.
    let expired = "meterflow_store_expired_rows_total{table=\"dead_letters\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    while service.metrics().value(expired) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no sweep: {:?}",
            service.metrics().0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = service.metrics();
    assert_eq!(metrics.value(expired), 1.0);
    assert_eq!(
        metrics.value("meterflow_store_expired_rows_total{table=\"readings\"}"),
        0.0
    );
    let letters = service.get_json("/api/v1/tenants/demo/dead-letters?limit=10");
    let ids: Vec<&str> = letters
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["correlation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["demo/m1/2"], "{letters}");
}
