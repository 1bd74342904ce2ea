//! meterflow's device simulator: a fleet of water meters over MQTT that behaves like
//! the field devices of DESIGN §3 — numbered uplinks at QoS 1, cumulative acks on the
//! ack topic, unacked messages kept and resent, reconnects with backoff — and
//! measures what the service did with them.
//!
//! - [`config`]: [`SimConfig`], its defaults and validation;
//! - [`generator`]: the ground truth, [`meter_messages`] — the exact uplinks of each
//!   meter as a pure function of the resolved config, for tests to compare against;
//! - `window`: a meter's unacked messages and resend rules (pure);
//! - `pacing`: the fleet-wide send schedule and the reconnect backoff (pure);
//! - `meter`: one meter = one rumqttc connection driven by two tokio tasks;
//! - [`report`]: live [`FleetCounters`] and the final [`Report`].
//!
//! [`run`] drives a fleet on the caller's tokio runtime (multi-threaded recommended)
//! and returns when every message is acked, at the deadline, or when stopped
//! ([`run_with`]). Fleet-wide state is atomics only; each meter's state belongs to
//! its task.

pub mod config;
mod error;
pub mod generator;
mod meter;
mod pacing;
pub mod report;
mod window;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

pub use config::{MacKeys, SimConfig, meter_id_string};
pub use error::SimError;
pub use generator::{MeterMessages, encode_payload, meter_messages};
pub use report::{CountersSnapshot, FleetCounters, LatencySummary, Report};

use meter::{CONNECT_PHASE_LIMIT, FleetShared, new_latency_histogram, run_meter};
use pacing::Pacer;

/// Runs a fleet until every message is acked or `config.timeout_s` passes.
pub async fn run(config: SimConfig) -> Result<Report, SimError> {
    run_with(
        config,
        Arc::new(FleetCounters::default()),
        std::future::pending(),
    )
    .await
}

/// [`run`], with live counters the caller can read while it runs (pass fresh ones)
/// and a `stop` future: when it completes, meters stop and the report is built from
/// what was acked so far.
pub async fn run_with(
    config: SimConfig,
    counters: Arc<FleetCounters>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Report, SimError> {
    config.validate()?;
    let config = config.resolved_now();
    let (host, port) =
        config::parse_broker_addr(&config.mqtt).map_err(|p| SimError::InvalidConfig(vec![p]))?;
    let meters = config
        .meter_indices()
        .map(|index| Ok((index, config.meter_key(index)?)))
        .collect::<Result<Vec<_>, SimError>>()?;

    let started = Instant::now();
    let fleet = Arc::new(FleetShared {
        pacer: config.rate.map(Pacer::new),
        connect_gate: Semaphore::new(config.connect_concurrency),
        deadline: started + Duration::from_secs(config.timeout_s),
        refusal_logged: AtomicBool::new(false),
        links: meters.iter().map(|_| Arc::default()).collect(),
        start_gate_open: AtomicBool::new(false),
        opened_at: OnceLock::new(),
        first_connects: AtomicUsize::new(0),
        stop_requested: AtomicBool::new(false),
        counters: Arc::clone(&counters),
        host,
        port,
        config,
    });

    let gate_timer = if fleet.config.connect_first {
        let fleet = Arc::clone(&fleet);
        Some(tokio::spawn(async move {
            tokio::time::sleep(CONNECT_PHASE_LIMIT).await;
            fleet.open_start_gate();
        }))
    } else {
        fleet.open_start_gate();
        None
    };
    let stopper = tokio::spawn({
        let fleet = Arc::clone(&fleet);
        async move {
            stop.await;
            fleet.request_stop();
        }
    });

    let tasks: Vec<_> = meters
        .into_iter()
        .zip(&fleet.links)
        .map(|((index, key), link)| {
            let name = key.to_string();
            let meter = run_meter(index, key, Arc::clone(link), Arc::clone(&fleet));
            (name, tokio::spawn(meter))
        })
        .collect();

    let mut latency_us = new_latency_histogram();
    let mut finished = started;
    let mut failure = None;
    for (meter, task) in tasks {
        match task.await {
            Ok(outcome) => {
                // Both histograms auto-resize, so adding cannot run out of range.
                let _ = latency_us.add(&outcome.latency_us);
                finished = finished.max(outcome.finished);
            }
            Err(error) => {
                failure.get_or_insert(SimError::MeterTaskFailed {
                    meter,
                    reason: error.to_string(),
                });
            }
        }
    }
    stopper.abort();
    if let Some(timer) = gate_timer {
        timer.abort();
    }
    if let Some(error) = failure {
        return Err(error);
    }

    let config = &fleet.config;
    let totals = counters.snapshot();
    let messages = config.total_messages();
    // Never opened (nobody connected before the run ended): no send phase at all.
    let opened = fleet.opened_at.get().copied().unwrap_or(finished);
    let connect_s = opened.saturating_duration_since(started).as_secs_f64();
    let elapsed_s = finished
        .saturating_duration_since(opened)
        .as_secs_f64()
        .max(1e-9);
    Ok(Report {
        meters: config.meters,
        messages,
        sent: totals.sent,
        acked: totals.acked,
        unacked: messages.saturating_sub(totals.acked),
        resent: totals.resent,
        msgs_per_s: totals.acked as f64 / elapsed_s,
        readings_per_s: totals.acked_readings as f64 / elapsed_s,
        elapsed_s,
        connect_s,
        ack_latency_ms: LatencySummary::from_histogram(&latency_us),
        reconnects: totals.reconnects,
        connection_errors: totals.connection_errors,
        bad_acks: totals.bad_acks,
        start_ts_ms: config.start_ts_ms.unwrap_or_default(),
        stopped_early: totals.acked < messages,
    })
}
