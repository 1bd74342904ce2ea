//! The `connections` scenario: how many mostly-idle meters one process holds here,
//! and what each costs in resident memory.
//!
//! A fresh target is measured idle, then simulator processes are started one after
//! another (`per_proc` meters each, spaced so connections ramp at about
//! `connect_rate` per second) until `requested` meters are connected. Each meter
//! sends 2 one-reading messages on a slow fleet-wide schedule (the whole fleet sends
//! its first round over longer than the run lasts), so meters stay connected and
//! mostly idle, exchanging keep-alives and the odd uplink and ack, as AMI meters do.
//! The harness counts the established connections on the target's port from
//! `/proc/net/tcp` and samples its RSS; after a hold at the peak it stops the fleet
//! and samples again.
//!
//! RSS per connection = (RSS with N connected − RSS idle) ÷ N, cross-checked by the
//! least-squares slope of RSS over connections during the ramp.
//!
//! Limits: every connection is one descriptor in the target and one in a simulator
//! process; both are capped by the hard open-file limit (20,000 here), which the
//! harness raises the soft limit to. rumqttc cannot bind a client socket to a chosen
//! source address (only to a device), so every meter connects from 127.0.0.1 to
//! 127.0.0.1:port; the ephemeral port range (32768–60999, 28,232 ports per
//! source/destination pair) is above the descriptor limit, so it is not what binds.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::loadgen::{SimFleet, SimSettings};
use crate::procfs::{self, ProcSample, Sampler};
use crate::sweep::Env;
use crate::targets::{MeterflowOptions, TargetKind};

/// Sampling period: `/proc/net/tcp` with 40,000 sockets is ~6 MB of text to read.
const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// Settling time before the idle measurement and after the fleet leaves.
const SETTLE: Duration = Duration::from_secs(3);
/// Longest wait for the last connections after the ramp.
const PLATEAU_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ConnectionsSettings {
    /// Meters to connect.
    pub(crate) requested: usize,
    /// Meters per simulator process.
    pub(crate) per_proc: usize,
    /// Target ramp, connections per second.
    pub(crate) connect_rate: f64,
    /// Seconds at the peak over which RSS is measured.
    pub(crate) hold_secs: f64,
}

/// One target's result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ConnectionsRun {
    pub(crate) target: String,
    /// Which configuration (`default`, or the overrides tried).
    pub(crate) label: String,
    pub(crate) config_toml: String,
    pub(crate) requested: usize,
    /// Median established connections over the hold.
    pub(crate) connected: usize,
    pub(crate) idle_rss_mib: f64,
    pub(crate) idle_fds: usize,
    /// Median RSS over the hold.
    pub(crate) rss_mib: f64,
    pub(crate) fds: usize,
    pub(crate) rss_per_connection_kib: f64,
    /// Least-squares slope of RSS over connections (KiB per connection) and its R².
    pub(crate) slope_kib_per_connection: Option<f64>,
    pub(crate) slope_r2: Option<f64>,
    /// CPU while holding the idle fleet, % of one core.
    pub(crate) hold_cpu_pct: f64,
    pub(crate) ramp_s: f64,
    pub(crate) rss_after_disconnect_mib: f64,
    pub(crate) connection_errors: u64,
    pub(crate) reconnects: u64,
    pub(crate) sim_processes: usize,
}

/// Least-squares line through `(x, y)`: `(slope, intercept, r²)`; `None` with fewer
/// than two distinct x.
pub(crate) fn linear_fit(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = if syy > 0.0 {
        sxy * sxy / (sxx * syy)
    } else {
        1.0
    };
    Some((slope, my - slope * mx, r2))
}

/// The median of `values` (0 when empty).
pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Runs the scenario on one fresh target.
pub(crate) fn run(
    env: &Env,
    kind: TargetKind,
    label: &str,
    meterflow: &MeterflowOptions,
    settings: &ConnectionsSettings,
) -> anyhow::Result<ConnectionsRun> {
    let mut target = env.start(kind, meterflow)?;
    let name = format!("{} {label}", kind.name());
    let port = target.mqtt.port();
    let sampler = Sampler::start(target.pid(), SAMPLE_PERIOD, Some(port));
    std::thread::sleep(SETTLE);
    let idle = sampler.snapshot();
    let idle_rss_kib = median(
        &mut idle
            .iter()
            .rev()
            .take(3)
            .map(|s| s.rss_kib as f64)
            .collect::<Vec<_>>(),
    );
    let idle_fds = procfs::open_fds(target.pid()).unwrap_or(0);
    println!(
        "[{name}] idle: rss {:.1} MiB, {idle_fds} fds",
        idle_rss_kib / 1024.0
    );

    let procs = settings.requested.div_ceil(settings.per_proc.max(1)).max(1);
    let ramp_budget_s = settings.requested as f64 / settings.connect_rate.max(1.0);
    // The fleet's first round of uplinks spans longer than the run, so no meter
    // finishes (and disconnects) before the measurement is over.
    let horizon_s = ramp_budget_s + settings.hold_secs + PLATEAU_TIMEOUT.as_secs_f64() + 60.0;
    let mut fleets = Vec::with_capacity(procs);
    let ramp_from_s = sampler.now_s();
    let ramp_started = Instant::now();
    let mut first_meter = 0;
    for i in 0..procs {
        let meters = settings.per_proc.min(settings.requested - first_meter);
        let part = SimSettings {
            mqtt: target.mqtt,
            meters,
            first_meter,
            messages_per_meter: 2,
            readings_per_message: 1,
            rate: Some(meters as f64 / horizon_s),
            window: 1,
            timeout_s: (horizon_s + 30.0).ceil() as u64,
            ack_timeout_ms: 30_000,
            connect_concurrency: 32,
            binary: false,
            // Against a peer only the acker's ack settles a message (meters never
            // finish early either way: the schedule outlasts the run).
            puback_not_durable: kind != TargetKind::Meterflow
                && env.sim_features.puback_not_durable,
            no_ack_topic: false,
        };
        first_meter += meters;
        fleets.push(SimFleet::spawn(&env.sim, &[part], &env.log_dir)?);
        std::thread::sleep(Duration::from_secs_f64(
            meters as f64 / settings.connect_rate.max(1.0),
        ));
        let now = sampler.snapshot();
        let last = now.last().copied().unwrap_or_default();
        println!(
            "[{name}] ramp {}/{procs}: {first_meter} meters started, {} established, rss {:.1} MiB",
            i + 1,
            last.connections,
            last.rss_kib as f64 / 1024.0
        );
        if !target.alive() {
            anyhow::bail!("{name} died during the ramp; log:\n{}", target.log_tail(20));
        }
    }
    // Wait for the plateau: everything connected, or no progress for 5 s.
    let plateau_deadline = Instant::now() + PLATEAU_TIMEOUT;
    let mut last_count = 0;
    let mut last_change = Instant::now();
    loop {
        let count = procfs::established_connections(port);
        if count >= settings.requested {
            break;
        }
        if count != last_count {
            last_count = count;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(5) {
            break;
        }
        if Instant::now() > plateau_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ramp_s = ramp_started.elapsed().as_secs_f64();
    let hold_from_s = sampler.now_s();
    std::thread::sleep(Duration::from_secs_f64(settings.hold_secs));
    let hold_to_s = sampler.now_s();
    let fds = procfs::open_fds(target.pid()).unwrap_or(0);
    let samples = sampler.snapshot();
    let hold: Vec<&ProcSample> = samples
        .iter()
        .filter(|s| s.t_s >= hold_from_s && s.t_s <= hold_to_s)
        .collect();
    let rss_kib = median(&mut hold.iter().map(|s| s.rss_kib as f64).collect::<Vec<_>>());
    let connected = median(
        &mut hold
            .iter()
            .map(|s| s.connections as f64)
            .collect::<Vec<_>>(),
    ) as usize;
    let (hold_cpu_pct, _) = procfs::summarize(&samples, hold_from_s, hold_to_s);
    let fit = linear_fit(
        &samples
            .iter()
            .filter(|s| s.t_s >= ramp_from_s && s.t_s <= hold_to_s)
            .map(|s| (s.connections as f64, s.rss_kib as f64))
            .collect::<Vec<_>>(),
    );
    println!(
        "[{name}] holding {connected} connections: rss {:.1} MiB, {fds} fds, cpu {hold_cpu_pct:.0}%",
        rss_kib / 1024.0
    );

    for fleet in &fleets {
        fleet.interrupt();
    }
    let mut connection_errors = 0;
    let mut reconnects = 0;
    for fleet in fleets {
        match fleet.wait(Duration::from_secs(30)) {
            Ok(outcomes) => {
                for outcome in outcomes {
                    connection_errors += outcome.report.connection_errors;
                    reconnects += outcome.report.reconnects;
                }
            }
            Err(error) => println!("[{name}] a simulator process failed: {error:#}"),
        }
    }
    std::thread::sleep(SETTLE);
    let rss_after = procfs::memory_kib(target.pid()).map_or(0, |(rss, _)| rss);
    sampler.finish();
    target.stop()?;

    let per_connection = if connected > 0 {
        (rss_kib - idle_rss_kib) / connected as f64
    } else {
        0.0
    };
    let run = ConnectionsRun {
        target: kind.name().to_owned(),
        label: label.to_owned(),
        config_toml: meterflow_config_if(kind, meterflow),
        requested: settings.requested,
        connected,
        idle_rss_mib: idle_rss_kib / 1024.0,
        idle_fds,
        rss_mib: rss_kib / 1024.0,
        fds,
        rss_per_connection_kib: per_connection,
        slope_kib_per_connection: fit.map(|f| f.0),
        slope_r2: fit.map(|f| f.2),
        hold_cpu_pct,
        ramp_s,
        rss_after_disconnect_mib: rss_after as f64 / 1024.0,
        connection_errors,
        reconnects,
        sim_processes: procs,
    };
    println!(
        "[{name}] {:.1} KiB per connection (slope {:.1} KiB, R² {:.3}); after disconnect rss {:.1} MiB",
        run.rss_per_connection_kib,
        run.slope_kib_per_connection.unwrap_or(0.0),
        run.slope_r2.unwrap_or(0.0),
        run.rss_after_disconnect_mib
    );
    Ok(run)
}

fn meterflow_config_if(kind: TargetKind, options: &MeterflowOptions) -> String {
    match kind {
        TargetKind::Meterflow => options.config_toml.clone(),
        TargetKind::Mosquitto | TargetKind::Rumqttd => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_fit_recovers_a_line() {
        let points: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64 * 1000.0, 50_000.0 + 48.0 * i as f64 * 1000.0))
            .collect();
        let (slope, intercept, r2) = linear_fit(&points).unwrap();
        assert!((slope - 48.0).abs() < 1e-9);
        assert!((intercept - 50_000.0).abs() < 1e-6);
        assert!((r2 - 1.0).abs() < 1e-12);
        assert_eq!(linear_fit(&[(1.0, 2.0)]), None);
        assert_eq!(linear_fit(&[(1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
