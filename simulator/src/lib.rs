//! meterflow's device simulator: a fleet of water meters over MQTT that behaves like
//! the field devices of DESIGN §3 — numbered uplinks at QoS 1, settled by a durable
//! PUBACK or by the cumulative ack on the ack topic (whichever comes first), unacked
//! messages kept and resent, reconnects with backoff — and measures what the service
//! did with them.
//!
//! - [`config`]: [`SimConfig`], its defaults and validation;
//! - [`fleet`]: a fleet file — several tenants, their districts, sizes and
//!   credentials — and the meterflow registry that goes with it;
//! - `profile`, [`scenario`], `faults`: who each meter is, what goes wrong with it,
//!   and which faults it injects into its traffic;
//! - [`generator`]: the ground truth, [`meter_messages`] — the exact uplinks of each
//!   meter as a pure function of the resolved config, for tests to compare against;
//! - [`truth`]: the per-meter summary of it (usage, faults, expected alerts);
//! - `rng`: the fixed random streams everything above draws from;
//! - `window`: a meter's unacked messages and resend rules (pure);
//! - `puback`: which message a PUBACK settles, from rumqttc's packet-id events (pure);
//! - `pacing`: the fleet-wide send schedule and the reconnect backoff (pure);
//! - `meter`: one meter = one rumqttc connection driven by two tokio tasks;
//! - [`report`]: live [`FleetCounters`] and the final [`Report`].
//!
//! [`run`] drives a fleet on the caller's tokio runtime (multi-threaded recommended)
//! and returns when every message is acked, at the deadline, or when stopped
//! ([`run_with`]; [`run_fleet`] for several tenants at once). Reconnect storms
//! ([`ScenarioRates::storm_every_s`]) are timed here, on the fleet's clock. Fleet-wide state is atomics only; each meter's state belongs to
//! its task.

pub mod config;
mod error;
mod faults;
pub mod fleet;
pub mod generator;
mod meter;
mod pacing;
pub mod profile;
mod puback;
pub mod report;
mod rng;
pub mod scenario;
pub mod truth;
mod window;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

pub use config::{MacKeys, SimConfig, meter_id_string};
pub use error::SimError;
pub use faults::{Malformed, MessageFaults};
pub use fleet::FleetFile;
pub use generator::{MeterMessages, encode_payload, meter_messages};
pub use profile::MeterProfile;
pub use report::{CountersSnapshot, FleetCounters, LatencySummary, Report};
pub use scenario::{Scenario, ScenarioRates};
pub use truth::{GroundTruth, MeterTruth, ground_truth, meter_truth};

use meter::{CONNECT_PHASE_LIMIT, FleetShared, new_latency_histogram, run_meter};
use pacing::Pacer;
use rng::{SplitMix64, mix64};

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
    run_fleet(vec![config], counters, stop).await
}

/// Runs several parts of one fleet at once (one per tenant, see [`FleetFile`]):
/// every part's meters, with the fleet-wide settings — broker, rate, window,
/// timeouts, connect ramp, storms — of the first part. Unresolved parts are resolved
/// against one clock reading.
pub async fn run_fleet(
    parts: Vec<SimConfig>,
    counters: Arc<FleetCounters>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Report, SimError> {
    let Some(first) = parts.first() else {
        return Err(SimError::InvalidConfig(vec![
            "a fleet needs at least one part".to_owned(),
        ]));
    };
    let (host, port) =
        config::parse_broker_addr(&first.mqtt).map_err(|p| SimError::InvalidConfig(vec![p]))?;
    for part in &parts {
        part.validate()?;
    }
    let now = config::now_epoch_ms();
    let parts: Vec<SimConfig> = parts.into_iter().map(|p| p.resolved(now)).collect();
    let messages = parts.iter().map(SimConfig::total_messages).sum();
    let mut meters = Vec::new();
    for (part, config) in parts.iter().enumerate() {
        for index in config.meter_indices() {
            meters.push((part, index, config.meter_key(index)?));
        }
    }

    let started = Instant::now();
    let settings = &parts[0];
    let fleet = Arc::new(FleetShared {
        pacer: settings.rate.map(Pacer::new),
        connect_gate: Semaphore::new(settings.connect_concurrency),
        connect_pacer: settings.connect_rate.map(Pacer::new),
        deadline: started + Duration::from_secs(settings.timeout_s),
        refusal_logged: AtomicBool::new(false),
        links: meters.iter().map(|_| Arc::default()).collect(),
        start_gate_open: AtomicBool::new(false),
        opened_at: OnceLock::new(),
        first_connects: AtomicUsize::new(0),
        stop_requested: AtomicBool::new(false),
        counters: Arc::clone(&counters),
        host,
        port,
        meters: meters.len(),
        parts,
    });

    let gate_timer = if fleet.settings().connect_first {
        let fleet = Arc::clone(&fleet);
        Some(tokio::spawn(async move {
            // A paced ramp gets the time it needs on top.
            let ramp = fleet
                .settings()
                .connect_rate
                .map_or(Duration::ZERO, |rate| {
                    Duration::from_secs_f64(fleet.meters as f64 / rate)
                });
            tokio::time::sleep(CONNECT_PHASE_LIMIT + ramp).await;
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
    let storms_done = Arc::new(AtomicUsize::new(0));
    let storms = fleet
        .settings()
        .scenarios
        .storms()
        .then(|| tokio::spawn(run_storms(Arc::clone(&fleet), Arc::clone(&storms_done))));

    let tasks: Vec<_> = meters
        .into_iter()
        .zip(&fleet.links)
        .map(|((part, index, key), link)| {
            let name = key.to_string();
            let meter = run_meter(part, index, key, Arc::clone(link), Arc::clone(&fleet));
            (name, tokio::spawn(meter))
        })
        .collect();

    let mut latency_us = new_latency_histogram();
    let mut puback_latency_us = new_latency_histogram();
    let mut finished = started;
    let mut failure = None;
    for (meter, task) in tasks {
        match task.await {
            Ok(outcome) => {
                // Both histograms auto-resize, so adding cannot run out of range.
                let _ = latency_us.add(&outcome.latency_us);
                let _ = puback_latency_us.add(&outcome.puback_latency_us);
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
    for task in gate_timer.into_iter().chain(storms) {
        task.abort();
    }
    if let Some(error) = failure {
        return Err(error);
    }

    let totals = counters.snapshot();
    // Never opened (nobody connected before the run ended): no send phase at all.
    let opened = fleet.opened_at.get().copied().unwrap_or(finished);
    let connect_s = opened.saturating_duration_since(started).as_secs_f64();
    let elapsed_s = finished
        .saturating_duration_since(opened)
        .as_secs_f64()
        .max(1e-9);
    Ok(Report {
        meters: fleet.meters,
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
        puback_latency_ms: LatencySummary::from_histogram(&puback_latency_us),
        reconnects: totals.reconnects,
        connection_errors: totals.connection_errors,
        bad_acks: totals.bad_acks,
        duplicates: totals.duplicates,
        out_of_order: totals.out_of_order,
        malformed: totals.malformed,
        storms: storms_done.load(Ordering::Relaxed) as u64,
        storm_disconnects: totals.storm_disconnects,
        start_ts_ms: fleet.settings().start_ts_ms.unwrap_or_default(),
        stopped_early: totals.acked < messages,
    })
}

/// Every `storm_every_s` of the send phase, drops the connections of
/// `storm_meters` percent of the fleet at once; which meters is drawn from the seed
/// and the storm's number.
async fn run_storms(fleet: Arc<FleetShared>, done: Arc<AtomicUsize>) {
    let rates = &fleet.settings().scenarios;
    let every = Duration::from_secs_f64(rates.storm_every_s);
    while !fleet.start_gate_open.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for storm in 1u64.. {
        tokio::time::sleep(every).await;
        let mut rng = SplitMix64::new(fleet.settings().seed ^ mix64(storm));
        let hit: Vec<usize> = (0..fleet.meters)
            .filter(|_| rng.chance_percent(rates.storm_meters))
            .collect();
        tracing::info!(storm, meters = hit.len(), "reconnect storm");
        fleet.storm(hit.into_iter());
        done.fetch_add(1, Ordering::Relaxed);
    }
}
