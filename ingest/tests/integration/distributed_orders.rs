//! Operators' orders in distributed mode: a decision posted to an endpoint's API
//! travels the uplink log, keyed by the meter, and the meter's processor applies it
//! in order with the meter's data — the exception and the stored readings follow. A
//! processor-only replica takes no orders. Real Kafka, Cassandra and Redis Cluster,
//! as in `distributed.rs`.

use std::time::Duration;

use meterflow_model::{Reading, Uplink};
use serde_json::{Value, json};

use crate::distributed::Cluster;
use crate::utils::{api_post, json_where, send_and_wait_for_ack};

/// How long the log hop and the processor may take.
const APPLIED_WITHIN: Duration = Duration::from_secs(60);

const HOUR_MS: i64 = 3_600_000;
/// 2026-10-05T00:00:00Z.
const DAY0: i64 = 1_791_158_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_posted_to_an_endpoint_is_applied_by_the_meters_processor() {
    let Some(cluster) = Cluster::new("distributed_orders") else {
        return;
    };
    let processor = cluster.start("processor", "p1");
    let endpoint = cluster.start("endpoint", "e1");
    // A jump of 49,900 L in an hour (beyond a DN15's 3,125 L/h), then growth.
    let readings = [10_000u64, 10_100, 60_000, 60_100]
        .iter()
        .enumerate()
        .map(|(h, reg)| Reading {
            ts: DAY0 + h as i64 * HOUR_MS,
            reg: *reg,
            rev: 0,
            flow: 0,
            temp: None,
        })
        .collect();
    send_and_wait_for_ack(endpoint.mqtt, "demo", "m1", &[Uplink::new(1, readings)]).await;
    let jump = DAY0 + 2 * HOUR_MS;
    let is_jump = move |e: &Value| e["meter"] == "m1" && e["ts"] == jump;
    json_where(
        &endpoint,
        "/api/v1/tenants/demo/exceptions",
        APPLIED_WITHIN,
        |list| list.as_array().unwrap().iter().any(is_jump),
    )
    .await;

    let path = format!("/api/v1/tenants/demo/meters/m1/exceptions/{jump}");
    let decision = json!({"action": "accept", "by": "ana", "why": "DN40 fitted"});
    let refused = api_post(&processor, &path, &decision);
    assert_eq!(refused.status, 503, "{}", refused.body);
    let accepted = api_post(&endpoint, &path, &decision);
    assert_eq!(accepted.status, 202, "in the log: {}", accepted.body);

    let decided = json_where(
        &endpoint,
        "/api/v1/tenants/demo/exceptions?state=accepted",
        APPLIED_WITHIN,
        |list| list.as_array().unwrap().iter().any(is_jump),
    )
    .await;
    let decided = decided
        .as_array()
        .unwrap()
        .iter()
        .find(|e| is_jump(e))
        .unwrap();
    assert_eq!(decided["decision"]["by"], "ana");
    let readings_path = format!(
        "/api/v1/tenants/demo/meters/m1/readings?from={jump}&to={}",
        jump + 1
    );
    let row = json_where(&processor, &readings_path, APPLIED_WITHIN, |rows| {
        rows[0]["quality"] == "actual"
    })
    .await;
    assert_eq!(row[0]["interval_l"], 49_900);
}
