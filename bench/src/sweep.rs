//! The throughput scenarios (`single`, `burst24`, `cassandra`): for each system
//! (meterflow, then each peer: Mosquitto, rumqttd) a closed-loop probe and an
//! open-loop rate sweep, one fresh process per system.
//!
//! 1. **Closed loop** ("as fast as acks allow", window 8 per meter): the maximum
//!    throughput, latency unbounded.
//! 2. **Open-loop sweep**: offered rate `start × growth^k`, `start` a fraction of
//!    meterflow's closed-loop rate, each step a bounded number of messages
//!    (`rate × step_secs`) with a deadline, until a step is not sustainable
//!    ([`crate::sustain`]); then one step at the geometric mean of the last good and
//!    the first bad rate refines the answer. The peers run the *same ladder* from the
//!    same start (continuing higher if they can), so all systems have steps at equal
//!    offered rates to compare latency at.
//! 3. **Half step**: one more step at half of meterflow's highest sustainable rate
//!    (every system at the same rate), where latency is judged against its goal.
//! 4. **PUBACK steps** (meterflow, simulators with `--no-ack-topic`): the best and the
//!    half rate again with meters that do not subscribe to the ack topic, so the
//!    durable PUBACK alone settles each message and its latency is exact.
//!
//! What settles a message: in steps 1–3 the ack topic's `{"seq":W}` only
//! (`--puback-not-durable` when the simulator has it), for every system. A simulator
//! settles a message by whichever of the ack and a durable PUBACK comes first and
//! reports the two latencies apart, each over the messages it settled; two such
//! partial histograms cannot be merged, so each measurement takes one path whole.
//!
//! Every step records the service's CPU over the whole step (from `/proc/<pid>/stat`
//! before the simulator starts and after its last ack; for a peer the broker's plus
//! its acker thread's) divided by the messages and readings acked — CPU-µs per
//! message and per reading — and the generator's likewise.
//!
//! Every step uses meters nobody has used before in that process (`first_meter`
//! moves on), so meterflow sees new seqs, never duplicates of an earlier step. The
//! per-meter window is sized so it never throttles an open-loop step (which would
//! turn it closed-loop and hide latency: coordinated omission).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use plotters::style::RGBColor;
use serde::{Deserialize, Serialize};

use crate::loadgen::{self, SimFeatures, SimFleet, SimSettings};
use crate::procfs::{self, ProcSample, Sampler};
use crate::prom::Scrape;
use crate::sustain::{self, Criteria, StepFacts, Verdict};
use crate::targets::{MeterflowOptions, Peer, PeerOptions, Target, TargetKind};

/// Sampling period of CPU and RSS.
const SAMPLE_PERIOD: Duration = Duration::from_millis(250);
/// How often `/metrics` is scraped during a step for queue depths.
const SCRAPE_PERIOD: Duration = Duration::from_millis(500);
/// meterflow's queue depths: uplinks waiting in the shard queues, batches waiting for
/// the sink.
const SHARD_QUEUE_DEPTH: &str = "meterflow_shard_queue_depth";
const SINK_QUEUE_DEPTH: &str = "meterflow_sink_queue_depth";
/// How often, and how long at most, the queues are read before a step while they
/// drain. The shard queues' depth is sampled once a second, so two empty reads this
/// far apart mean empty.
const IDLE_POLL: Duration = Duration::from_millis(1100);
const IDLE_WAIT_LIMIT: Duration = Duration::from_secs(120);
/// Window of the closed-loop probe: the simulator's default, as in the baselines.
const CLOSED_LOOP_WINDOW: usize = 8;
/// Open-loop window: room for this many seconds of a meter's messages in flight, so
/// the window never throttles a step whose latency is below the resend timeout.
const OPEN_LOOP_WINDOW_SECONDS: f64 = 5.0;
/// Resend timeout of the meters (the simulator's default).
const ACK_TIMEOUT_MS: u64 = 5_000;
/// Slack after a step's paced send phase before its deadline: a sustainable step
/// finishes within a second of it; an unsustainable one is cut off here.
const STEP_DEADLINE_SLACK_S: f64 = 10.0;
/// Steps refused below this rate: a sweep that starts failing there has a broken
/// service, not a low capacity.
const MIN_RATE: f64 = 50.0;

/// What a throughput scenario does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SweepSettings {
    pub(crate) readings_per_message: usize,
    pub(crate) meters: usize,
    /// Messages per meter of the closed-loop probe.
    pub(crate) closed_loop_messages_per_meter: u64,
    /// Paced seconds of each open-loop step.
    pub(crate) step_secs: f64,
    /// First offered rate as a fraction of meterflow's closed-loop throughput.
    pub(crate) start_fraction: f64,
    pub(crate) growth: f64,
    /// Most open-loop steps per system (refinement included).
    pub(crate) max_steps: usize,
    /// Simulator processes per step.
    pub(crate) sim_procs: usize,
    pub(crate) binary_payloads: bool,
}

/// One step's measurements.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct StepRecord {
    /// `None` for the closed-loop probe.
    pub(crate) offered_msgs_per_s: Option<f64>,
    pub(crate) meters: usize,
    pub(crate) messages: u64,
    pub(crate) window: usize,
    pub(crate) acked: u64,
    pub(crate) unacked: u64,
    pub(crate) resent: u64,
    /// Open loop: [`sustain::achieved_rate`]; closed loop: the simulator's rate.
    pub(crate) achieved_msgs_per_s: f64,
    pub(crate) achieved_readings_per_s: f64,
    /// Publish→ack latency at the meters (simulator HDR histogram; exact): messages
    /// settled by the ack topic's `{"seq":W}`.
    pub(crate) ack_ms: Latency,
    /// Publish→PUBACK latency of the messages a PUBACK settled (simulators that
    /// report it, meterflow only: a peer's PUBACK settles nothing).
    #[serde(default)]
    pub(crate) puback_ms: Option<Latency>,
    /// What settled messages: `ack topic`, `PUBACK`, or `ack topic or PUBACK` (the
    /// first of the two; `None` in records from before).
    #[serde(default)]
    pub(crate) settled_by: Option<String>,
    /// meterflow's own received→durable histogram over the step (bucket-interpolated,
    /// so coarse); the only p999 available (the simulator reports p50/p99/max).
    pub(crate) service_ms: Option<ServiceLatency>,
    /// Duration of meterflow's durable store writes (one per group of batches) over
    /// the step, same interpolation: what the sink waits on before it acks.
    #[serde(default)]
    pub(crate) store_write_ms: Option<ServiceLatency>,
    /// The system's CPU over the send phase, % of one core (200 % = the machine).
    pub(crate) cpu_pct: f64,
    /// The simulator processes' CPU over their lifetime, % of one core.
    pub(crate) generator_cpu_pct: f64,
    /// CPU seconds of the service over the whole step (simulator start to after its
    /// last ack): meterflow's process, or the peer broker's plus its acker's.
    #[serde(default)]
    pub(crate) service_cpu_s: Option<f64>,
    /// The peer acker's share of `service_cpu_s`.
    #[serde(default)]
    pub(crate) acker_cpu_s: Option<f64>,
    /// Seconds the service process's threads spent runnable but waiting for a CPU
    /// over the step (their `schedstat` run delay, summed over threads, so it can
    /// exceed the step's length): what the other load — other engineers' work, the
    /// generator, and the service's own other threads — cost it. Compare with
    /// `service_cpu_s`.
    #[serde(default)]
    pub(crate) service_cpu_wait_s: Option<f64>,
    /// CPU seconds of the simulator processes.
    #[serde(default)]
    pub(crate) generator_cpu_s: Option<f64>,
    /// `service_cpu_s` ÷ messages acked, µs.
    #[serde(default)]
    pub(crate) cpu_us_per_msg: Option<f64>,
    /// `service_cpu_s` ÷ readings acked, µs.
    #[serde(default)]
    pub(crate) cpu_us_per_reading: Option<f64>,
    /// `generator_cpu_s` ÷ messages acked, µs.
    #[serde(default)]
    pub(crate) generator_cpu_us_per_msg: Option<f64>,
    pub(crate) rss_peak_mib: f64,
    /// Largest summed shard-queue depth seen (meterflow).
    pub(crate) queue_max: Option<f64>,
    pub(crate) queue_growth: Option<f64>,
    pub(crate) sink_growth: Option<f64>,
    /// Shed by the pipeline (meterflow) or lost before the acker (peer).
    pub(crate) skipped: u64,
    /// Messages meterflow counted as stored during the step.
    pub(crate) stored: Option<u64>,
    pub(crate) elapsed_s: f64,
    pub(crate) connect_s: f64,
    pub(crate) verdict: Option<Verdict>,
    /// Seconds waited before the step for meterflow's queues to drain (`None`: a
    /// peer, or a record from before the wait).
    #[serde(default)]
    pub(crate) idle_wait_s: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ServiceLatency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) mean: f64,
}

/// One system's sweep.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct TargetSweep {
    pub(crate) target: String,
    pub(crate) closed_loop: StepRecord,
    pub(crate) steps: Vec<StepRecord>,
    /// The highest sustainable open-loop step.
    pub(crate) best: Option<StepRecord>,
    /// One step at half of meterflow's highest sustainable rate (the same rate for
    /// every system; a peer's own when meterflow had none).
    #[serde(default)]
    pub(crate) half_step: Option<StepRecord>,
    /// meterflow with PUBACKs alone settling (`--no-ack-topic`): at the best rate,
    /// then at the half step's.
    #[serde(default)]
    pub(crate) puback_steps: Vec<StepRecord>,
    /// Peak RSS of the whole run (`VmHWM`).
    pub(crate) rss_hwm_mib: f64,
    /// Bytes the store wrote (meterflow's data directory at the end).
    pub(crate) data_bytes: u64,
}

/// Binaries and knobs shared by every scenario.
#[derive(Clone, Debug)]
pub(crate) struct Env {
    pub(crate) meterflow: MeterflowOptions,
    pub(crate) sim: PathBuf,
    /// What the simulator's flags allow.
    pub(crate) sim_features: SimFeatures,
    /// meterflow's meters do not subscribe to the ack topic (`--no-ack-topic`).
    pub(crate) meterflow_no_ack_topic: bool,
    /// The peer baselines, in order (empty: `--no-peer`).
    pub(crate) peers: Vec<Peer>,
    pub(crate) peer_options: PeerOptions,
    /// Where simulator logs go for this run.
    pub(crate) log_dir: PathBuf,
    pub(crate) criteria: Criteria,
}

impl Env {
    /// Starts a fresh system of `kind` (meterflow with `meterflow`'s options).
    pub(crate) fn start(
        &self,
        kind: TargetKind,
        meterflow: &MeterflowOptions,
    ) -> anyhow::Result<Target> {
        match kind {
            TargetKind::Meterflow => Target::start_meterflow(meterflow),
            peer => Target::start_peer(
                self.peers
                    .iter()
                    .find(|p| p.kind == peer)
                    .with_context(|| format!("{} is not among the peers", peer.name()))?,
                self.peer_options,
            ),
        }
    }

    /// `(--puback-not-durable, --no-ack-topic)` of the simulators against `kind`: the
    /// ack topic alone settles (a peer's PUBACK only means "received"), unless
    /// meterflow's meters are to rely on PUBACKs alone.
    fn ack_flags(&self, kind: TargetKind) -> (bool, bool) {
        if kind == TargetKind::Meterflow && self.meterflow_no_ack_topic {
            (false, true)
        } else {
            (self.sim_features.puback_not_durable, false)
        }
    }

    /// Whether meterflow gets the PUBACK steps.
    fn puback_steps(&self, kind: TargetKind) -> bool {
        kind == TargetKind::Meterflow
            && self.sim_features.no_ack_topic
            && !self.meterflow_no_ack_topic
    }
}

/// The rates of a ladder: `start × growth^k`.
pub(crate) fn ladder_rate(start: f64, growth: f64, k: usize) -> f64 {
    start * growth.powi(i32::try_from(k).unwrap_or(i32::MAX))
}

/// Runs the closed-loop probe, the sweep and the half step on one fresh system.
/// `start` is the ladder's first rate (`None`: derived from this system's closed-loop
/// rate); `half_rate` the half step's (`None`: half this system's best).
pub(crate) fn sweep_target(
    env: &Env,
    kind: TargetKind,
    settings: &SweepSettings,
    start: Option<f64>,
    half_rate: Option<f64>,
) -> anyhow::Result<TargetSweep> {
    let mut target = env.start(kind, &env.meterflow)?;
    let (puback_not_durable, no_ack_topic) = env.ack_flags(kind);
    let sampler = Sampler::start(target.pid(), SAMPLE_PERIOD, None);
    let name = kind.name();
    let mut next_meter = 0usize;

    let closed = SimSettings {
        mqtt: target.mqtt,
        meters: settings.meters,
        first_meter: next_meter,
        messages_per_meter: settings.closed_loop_messages_per_meter,
        readings_per_message: settings.readings_per_message,
        rate: None,
        window: CLOSED_LOOP_WINDOW,
        timeout_s: 60,
        ack_timeout_ms: ACK_TIMEOUT_MS,
        connect_concurrency: 64,
        binary: settings.binary_payloads,
        puback_not_durable,
        no_ack_topic,
    };
    next_meter += settings.meters;
    let closed_loop = run_step(env, &mut target, &sampler, &closed, settings.sim_procs)?;
    println!(
        "[{name}] closed loop: {}",
        describe(&closed_loop, settings.readings_per_message)
    );
    let start = start.unwrap_or_else(|| {
        (closed_loop.achieved_msgs_per_s * settings.start_fraction).max(MIN_RATE)
    });

    let mut steps: Vec<StepRecord> = Vec::new();
    let mut best: Option<StepRecord> = None;
    let mut k = 0usize;
    let mut first_failure: Option<f64> = None;
    let mut refined = false;
    let mut descended = 0;
    while steps.len() < settings.max_steps {
        let rate = match (first_failure, &best) {
            // Refine once between the last good and the first bad rate.
            (Some(bad), Some(good)) if !refined => {
                refined = true;
                (bad * good.offered_msgs_per_s.unwrap_or(bad)).sqrt()
            }
            (Some(_), Some(_)) => break,
            // Nothing sustainable yet: go down the ladder, a few times at most.
            (Some(_), None) => {
                if descended >= 3 {
                    break;
                }
                descended += 1;
                start / ladder_rate(1.0, settings.growth, descended)
            }
            (None, _) => {
                k += 1;
                ladder_rate(start, settings.growth, k - 1)
            }
        };
        if rate < MIN_RATE {
            break;
        }
        let step = open_loop_step(&closed, settings, next_meter, rate);
        next_meter += settings.meters;
        let mut record = run_step(env, &mut target, &sampler, &step, settings.sim_procs)?;
        let verdict = judge(&record, rate, &env.criteria);
        println!(
            "[{name}] step {:>2} offered {:>8.0} msg/s: {} → {}",
            steps.len() + 1,
            rate,
            describe(&record, settings.readings_per_message),
            if verdict.sustainable {
                "sustainable".to_owned()
            } else {
                format!("NOT sustainable ({})", verdict.reasons.join("; "))
            }
        );
        let sustainable = verdict.sustainable;
        record.verdict = Some(verdict);
        if sustainable {
            if best
                .as_ref()
                .is_none_or(|b| b.offered_msgs_per_s < record.offered_msgs_per_s)
            {
                best = Some(record.clone());
            }
            if first_failure.is_some() && descended > 0 {
                // Found the top on the way down.
                steps.push(record);
                break;
            }
        } else {
            first_failure = Some(first_failure.map_or(rate, |f: f64| f.min(rate)));
        }
        steps.push(record);
        if !target.alive() {
            println!("[{name}] the process died; log:\n{}", target.log_tail(20));
            break;
        }
    }
    let half_rate = half_rate.or_else(|| {
        best.as_ref()
            .and_then(|b| b.offered_msgs_per_s)
            .map(|r| r / 2.0)
    });
    let half_step = match half_rate {
        Some(rate) if rate >= MIN_RATE && target.alive() => {
            let step = open_loop_step(&closed, settings, next_meter, rate);
            next_meter += settings.meters;
            let mut record = run_step(env, &mut target, &sampler, &step, settings.sim_procs)?;
            let verdict = judge(&record, rate, &env.criteria);
            println!(
                "[{name}] half step, offered {rate:>8.0} msg/s: {}{}",
                describe(&record, settings.readings_per_message),
                if verdict.sustainable {
                    String::new()
                } else {
                    format!(" (NOT sustainable: {})", verdict.reasons.join("; "))
                }
            );
            record.verdict = Some(verdict);
            Some(record)
        }
        _ => None,
    };
    let mut puback_steps = Vec::new();
    if env.puback_steps(kind) {
        let rates = best
            .as_ref()
            .and_then(|b| b.offered_msgs_per_s)
            .into_iter()
            .chain(half_step.as_ref().and_then(|h| h.offered_msgs_per_s));
        for rate in rates {
            if !target.alive() {
                break;
            }
            let step = SimSettings {
                puback_not_durable: false,
                no_ack_topic: true,
                ..open_loop_step(&closed, settings, next_meter, rate)
            };
            next_meter += settings.meters;
            let mut record = run_step(env, &mut target, &sampler, &step, settings.sim_procs)?;
            let verdict = judge(&record, rate, &env.criteria);
            println!(
                "[{name}] PUBACK step, offered {rate:>8.0} msg/s: {}{}",
                describe(&record, settings.readings_per_message),
                if verdict.sustainable {
                    String::new()
                } else {
                    format!(" (NOT sustainable: {})", verdict.reasons.join("; "))
                }
            );
            record.verdict = Some(verdict);
            puback_steps.push(record);
        }
    }
    let rss_hwm_mib = procfs::memory_kib(target.pid()).map_or(0.0, |(_, hwm)| hwm as f64 / 1024.0);
    sampler.finish();
    let data_bytes = target.stop()?;
    Ok(TargetSweep {
        target: name.to_owned(),
        closed_loop,
        steps,
        best,
        half_step,
        puback_steps,
        rss_hwm_mib,
        data_bytes,
    })
}

/// The open-loop step at `rate` for fresh meters from `first_meter` on: `rate ×
/// step_secs` messages, a window of [`OPEN_LOOP_WINDOW_SECONDS`] of each meter's
/// messages, a deadline of the paced time plus [`STEP_DEADLINE_SLACK_S`].
fn open_loop_step(
    closed: &SimSettings,
    settings: &SweepSettings,
    first_meter: usize,
    rate: f64,
) -> SimSettings {
    let per_meter = loadgen::messages_per_meter(rate, settings.step_secs, settings.meters);
    let window = ((rate / settings.meters as f64) * OPEN_LOOP_WINDOW_SECONDS).ceil() as usize;
    let paced_s = (per_meter * settings.meters as u64) as f64 / rate;
    SimSettings {
        first_meter,
        messages_per_meter: per_meter,
        rate: Some(rate),
        window: window.clamp(16, 4096),
        timeout_s: (paced_s + STEP_DEADLINE_SLACK_S).ceil() as u64,
        ..closed.clone()
    }
}

/// A step's verdict at the offered `rate`.
fn judge(record: &StepRecord, rate: f64, criteria: &Criteria) -> Verdict {
    sustain::judge(
        &StepFacts {
            offered_msgs_per_s: rate,
            achieved_msgs_per_s: record.achieved_msgs_per_s,
            unacked: record.unacked,
            ack_p99_ms: record.settle_ms().p99,
            queue_growth: record.queue_growth,
            sink_growth: record.sink_growth,
            skipped: record.skipped,
        },
        criteria,
    )
}

impl StepRecord {
    /// The latency that settles a message, for the verdict: the ack topic's, the
    /// PUBACK's when only PUBACKs settled, or where both settled some messages the
    /// larger of the two (percentiles of the two parts cannot be merged; the larger
    /// bounds the whole from above).
    pub(crate) fn settle_ms(&self) -> Latency {
        match self.puback_ms {
            Some(p) if self.acked_by_topic() => Latency {
                p50: self.ack_ms.p50.max(p.p50),
                p99: self.ack_ms.p99.max(p.p99),
                max: self.ack_ms.max.max(p.max),
            },
            Some(p) => p,
            None => self.ack_ms,
        }
    }

    /// Whether the ack topic settled any message (an empty histogram reads as 0).
    fn acked_by_topic(&self) -> bool {
        self.ack_ms.max > 0.0
    }
}

/// What settles messages under `settings`, in words.
fn settled_by(settings: &SimSettings, features: SimFeatures) -> &'static str {
    if settings.no_ack_topic {
        "PUBACK"
    } else if settings.puback_not_durable || !features.puback_not_durable {
        "ack topic"
    } else {
        "ack topic or PUBACK"
    }
}

/// One line about a step for the progress output.
pub(crate) fn describe(step: &StepRecord, readings_per_message: usize) -> String {
    let mut text = format!(
        "{:.0} msg/s ({:.0} readings/s), ack ms p50 {:.1} p99 {:.1} max {:.1}, cpu {:.0}% (sim {:.0}%), rss {:.0} MiB",
        step.achieved_msgs_per_s,
        step.achieved_msgs_per_s * readings_per_message as f64,
        step.ack_ms.p50,
        step.ack_ms.p99,
        step.ack_ms.max,
        step.cpu_pct,
        step.generator_cpu_pct,
        step.rss_peak_mib
    );
    if let Some(p) = step.puback_ms {
        text.push_str(&format!(
            ", puback ms p50 {:.1} p99 {:.1} max {:.1}",
            p.p50, p.p99, p.max
        ));
    }
    if let (Some(msg), Some(generator)) = (step.cpu_us_per_msg, step.generator_cpu_us_per_msg) {
        text.push_str(&format!(", cpu µs/msg {msg:.1} (sim {generator:.1})"));
    }
    if let (Some(on), Some(wait)) = (step.service_cpu_s, step.service_cpu_wait_s) {
        text.push_str(&format!(", on cpu {on:.1} s, waited for cpu {wait:.1} s"));
    }
    if let Some(queue) = step.queue_max {
        text.push_str(&format!(", queue max {queue:.0}"));
    }
    if let (Some(service), Some(store)) = (step.service_ms, step.store_write_ms) {
        text.push_str(&format!(
            ", service p99 {:.0} ms, store write p99 {:.0} ms",
            service.p99, store.p99
        ));
    }
    if step.unacked > 0 || step.resent > 0 {
        text.push_str(&format!(
            ", unacked {} resent {}",
            step.unacked, step.resent
        ));
    }
    if let Some(wait) = step.idle_wait_s.filter(|w| *w > 2.5) {
        text.push_str(&format!(", started after {wait:.0} s of draining"));
    }
    text
}

/// Counters read before and after a step.
struct Counters {
    shed: f64,
    stored: f64,
    acker_gaps: u64,
    /// CPU seconds of the target process and of its ackers.
    process_cpu_s: Option<f64>,
    acker_cpu_s: Option<f64>,
    /// Run-queue wait of the target process's threads.
    process_wait_s: Option<f64>,
    scrape: Option<Scrape>,
}

fn counters(target: &Target) -> anyhow::Result<Counters> {
    let scrape = target.scrape()?;
    let (shed, stored) = scrape.as_ref().map_or((0.0, 0.0), |s| {
        (
            s.sum("meterflow_messages_total", &[("outcome", "shed")]),
            s.sum("meterflow_messages_total", &[("outcome", "stored")]),
        )
    });
    let acker_gaps = target
        .ackers
        .iter()
        .map(|a| a.counters.gaps.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    let acker_cpu_s = (!target.ackers.is_empty())
        .then(|| {
            target
                .ackers
                .iter()
                .map(|a| a.counters.cpu_seconds())
                .sum::<Option<f64>>()
        })
        .flatten();
    Ok(Counters {
        shed,
        stored,
        acker_gaps,
        process_cpu_s: procfs::cpu_seconds(target.pid()),
        acker_cpu_s,
        process_wait_s: procfs::runqueue_wait_seconds(target.pid()),
        scrape,
    })
}

/// `(after − before)` of an optional counter.
fn delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some((after? - before?).max(0.0))
}

/// `seconds` per `count`, in µs (`None` for nothing counted).
fn micros_per(seconds: Option<f64>, count: f64) -> Option<f64> {
    (count > 0.0).then_some(seconds? * 1e6 / count)
}

/// Waits until meterflow's shard and sink queues are empty, so that a step measures
/// the service at its own rate, not draining what an overloaded step before it left
/// queued (which also bills that step's CPU to this one). Returns the seconds waited;
/// `None` for a target without metrics (the peers). Gives up after
/// [`IDLE_WAIT_LIMIT`], saying so, and the step runs on what is left; a scrape that
/// fails (a busy or stopped service) counts as not empty.
fn wait_until_idle(target: &mut Target) -> Option<f64> {
    let started = Instant::now();
    let mut empty_reads = 0;
    loop {
        let queued = match target.scrape() {
            Ok(None) => return None,
            Ok(Some(scrape)) => {
                Some(scrape.sum(SHARD_QUEUE_DEPTH, &[]) + scrape.sum(SINK_QUEUE_DEPTH, &[]))
            }
            Err(_) => None,
        };
        empty_reads = if queued == Some(0.0) {
            empty_reads + 1
        } else {
            0
        };
        if empty_reads == 2 || !target.alive() {
            return Some(started.elapsed().as_secs_f64());
        }
        if started.elapsed() >= IDLE_WAIT_LIMIT {
            println!(
                "  (the queues were not empty after {} s; the step starts anyway)",
                IDLE_WAIT_LIMIT.as_secs()
            );
            return Some(started.elapsed().as_secs_f64());
        }
        std::thread::sleep(IDLE_POLL);
    }
}

/// Runs one simulator fleet against the target and measures it.
fn run_step(
    env: &Env,
    target: &mut Target,
    sampler: &Sampler,
    settings: &SimSettings,
    procs: usize,
) -> anyhow::Result<StepRecord> {
    let idle_wait_s = wait_until_idle(target);
    let before = counters(target)?;
    let spawned_at_s = sampler.now_s();
    let mut fleet = SimFleet::spawn(&env.sim, &settings.split(procs), &env.log_dir)?;
    let hard_deadline = Duration::from_secs(settings.timeout_s + 20);
    let until = Instant::now() + hard_deadline;
    let mut queue: Vec<(f64, f64)> = Vec::new();
    let mut sink: Vec<(f64, f64)> = Vec::new();
    while !fleet.finished() && Instant::now() < until {
        fleet.poll_cpu();
        if let Ok(Some(scrape)) = target.scrape() {
            let t = sampler.now_s();
            queue.push((t, scrape.sum(SHARD_QUEUE_DEPTH, &[])));
            sink.push((t, scrape.sum(SINK_QUEUE_DEPTH, &[])));
        }
        std::thread::sleep(SCRAPE_PERIOD);
    }
    let generator_cpu_s = fleet.cpu_seconds();
    let lifetime_s = fleet.started.elapsed().as_secs_f64();
    let outcomes = fleet.wait(Duration::from_secs(5))?;
    let outcome = loadgen::merge(&outcomes);
    let report = &outcome.report;
    // Let the last acks' batches settle before reading the counters.
    std::thread::sleep(Duration::from_millis(300));
    let after = counters(target)?;

    let send_from = spawned_at_s + report.connect_s;
    let send_to = send_from + report.elapsed_s;
    let samples: Vec<ProcSample> = sampler.snapshot();
    let (cpu_pct, _) = procfs::summarize(&samples, send_from, send_to);
    let rss_peak_kib = samples
        .iter()
        .filter(|s| s.t_s >= spawned_at_s)
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let observable = target.http.is_some();
    let histogram_ms = |name: &str| match (&before.scrape, &after.scrape) {
        (Some(b), Some(a)) => a.histogram(name).map(|h| {
            let delta = h.since(b.histogram(name).as_ref());
            let ms = |q: f64| delta.quantile(q).unwrap_or(0.0) * 1000.0;
            ServiceLatency {
                p50: ms(0.5),
                p99: ms(0.99),
                p999: ms(0.999),
                mean: delta.mean().unwrap_or(0.0) * 1000.0,
            }
        }),
        _ => None,
    };
    let service_ms = histogram_ms("meterflow_publish_to_durable_seconds");
    let store_write_ms = histogram_ms("meterflow_store_write_seconds");
    let skipped = (after.shed - before.shed).max(0.0) as u64
        + after.acker_gaps.saturating_sub(before.acker_gaps);
    let puback_ms = outcome.puback_ms.map(|p| Latency {
        p50: p.p50,
        p99: p.p99,
        max: p.max,
    });
    let ack_ms = Latency {
        p50: report.ack_latency_ms.p50,
        p99: report.ack_latency_ms.p99,
        max: report.ack_latency_ms.max,
    };
    let settle_p50 = match puback_ms {
        Some(p) if ack_ms.max > 0.0 => p.p50.max(ack_ms.p50),
        Some(p) => p.p50,
        None => ack_ms.p50,
    };
    let achieved = match settings.rate {
        Some(_) => sustain::achieved_rate(report.acked, report.elapsed_s, settle_p50),
        None => report.msgs_per_s,
    };
    let acker_cpu_s = delta(before.acker_cpu_s, after.acker_cpu_s);
    let service_cpu_s = delta(before.process_cpu_s, after.process_cpu_s)
        .map(|process| process + acker_cpu_s.unwrap_or(0.0));
    let acked = report.acked as f64;
    let readings = acked * settings.readings_per_message as f64;
    Ok(StepRecord {
        offered_msgs_per_s: settings.rate,
        meters: report.meters,
        messages: report.messages,
        window: settings.window,
        acked: report.acked,
        unacked: report.unacked,
        resent: report.resent,
        achieved_msgs_per_s: achieved,
        achieved_readings_per_s: achieved * settings.readings_per_message as f64,
        ack_ms,
        puback_ms,
        settled_by: Some(settled_by(settings, env.sim_features).to_owned()),
        service_ms,
        store_write_ms,
        cpu_pct,
        generator_cpu_pct: if lifetime_s > 0.0 {
            generator_cpu_s / lifetime_s * 100.0
        } else {
            0.0
        },
        service_cpu_s,
        acker_cpu_s,
        service_cpu_wait_s: delta(before.process_wait_s, after.process_wait_s),
        generator_cpu_s: Some(generator_cpu_s),
        cpu_us_per_msg: micros_per(service_cpu_s, acked),
        cpu_us_per_reading: micros_per(service_cpu_s, readings),
        generator_cpu_us_per_msg: micros_per(Some(generator_cpu_s), acked),
        rss_peak_mib: rss_peak_kib as f64 / 1024.0,
        queue_max: observable.then(|| queue.iter().map(|q| q.1).fold(0.0, f64::max)),
        queue_growth: if observable {
            sustain::backlog_growth(&queue, send_from, send_to)
        } else {
            None
        },
        sink_growth: if observable {
            sustain::backlog_growth(&sink, send_from, send_to)
        } else {
            None
        },
        skipped,
        stored: observable.then(|| (after.stored - before.stored).max(0.0) as u64),
        elapsed_s: report.elapsed_s,
        connect_s: report.connect_s,
        verdict: None,
        idle_wait_s,
    })
}

/// meterflow, then every peer on meterflow's ladder and at its half step's rate.
pub(crate) fn run_scenario(
    env: &Env,
    settings: &SweepSettings,
) -> anyhow::Result<(TargetSweep, Vec<TargetSweep>)> {
    let meterflow = sweep_target(env, TargetKind::Meterflow, settings, None, None)?;
    let start = meterflow
        .steps
        .first()
        .and_then(|s| s.offered_msgs_per_s)
        .unwrap_or(MIN_RATE);
    let half_rate = meterflow
        .half_step
        .as_ref()
        .and_then(|s| s.offered_msgs_per_s);
    // The peers' ladders start where meterflow's did, so they share rates.
    let peer_settings = SweepSettings {
        max_steps: settings.max_steps + 2,
        ..settings.clone()
    };
    let mut peers = Vec::with_capacity(env.peers.len());
    for peer in &env.peers {
        peers.push(sweep_target(
            env,
            peer.kind,
            &peer_settings,
            Some(start),
            half_rate,
        )?);
    }
    Ok((meterflow, peers))
}

/// meterflow ÷ one peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Ratios {
    /// Which peer (empty in records from before there were several: Mosquitto).
    #[serde(default)]
    pub(crate) peer: String,
    /// Highest sustainable open-loop rate.
    pub(crate) sustainable_msgs_per_s: Option<f64>,
    /// Closed-loop throughput.
    pub(crate) closed_loop_msgs_per_s: Option<f64>,
    /// The highest offered rate both sustained, where latency is compared.
    pub(crate) common_rate: Option<f64>,
    pub(crate) ack_p50_at_common_rate: Option<f64>,
    pub(crate) ack_p99_at_common_rate: Option<f64>,
    /// CPU per message at the common rate (meterflow CPU % ÷ peer CPU %).
    pub(crate) cpu_at_common_rate: Option<f64>,
    /// Service CPU-µs per message at the common rate.
    #[serde(default)]
    pub(crate) cpu_us_per_msg_at_common_rate: Option<f64>,
    /// Ack p99 at the half step (the same offered rate for both).
    #[serde(default)]
    pub(crate) ack_p99_at_half_rate: Option<f64>,
    /// Service CPU-µs per message at the half step.
    #[serde(default)]
    pub(crate) cpu_us_per_msg_at_half_rate: Option<f64>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// Compares two sweeps (pure).
pub(crate) fn ratios(meterflow: &TargetSweep, peer: &TargetSweep) -> Ratios {
    let best = |s: &TargetSweep| s.best.as_ref().map(|b| b.achieved_msgs_per_s);
    fn sustained(s: &TargetSweep, rate: f64) -> Option<&StepRecord> {
        s.steps.iter().find(|step| {
            step.offered_msgs_per_s
                .is_some_and(|r| (r - rate).abs() <= rate * 1e-6)
                && step.verdict.as_ref().is_some_and(|v| v.sustainable)
        })
    }
    let common = meterflow
        .steps
        .iter()
        .filter(|s| s.verdict.as_ref().is_some_and(|v| v.sustainable))
        .filter_map(|s| s.offered_msgs_per_s)
        .filter(|rate| sustained(peer, *rate).is_some())
        .fold(None, |acc: Option<f64>, r| {
            Some(acc.map_or(r, |a| a.max(r)))
        });
    let pair = common.and_then(|rate| Some((sustained(meterflow, rate)?, sustained(peer, rate)?)));
    let half = meterflow
        .half_step
        .as_ref()
        .zip(peer.half_step.as_ref())
        .filter(|(m, p)| m.offered_msgs_per_s == p.offered_msgs_per_s);
    Ratios {
        peer: peer.target.clone(),
        sustainable_msgs_per_s: best(meterflow)
            .zip(best(peer))
            .and_then(|(a, b)| ratio(a, b)),
        closed_loop_msgs_per_s: ratio(
            meterflow.closed_loop.achieved_msgs_per_s,
            peer.closed_loop.achieved_msgs_per_s,
        ),
        common_rate: common,
        ack_p50_at_common_rate: pair.and_then(|(m, p)| ratio(m.ack_ms.p50, p.ack_ms.p50)),
        ack_p99_at_common_rate: pair.and_then(|(m, p)| ratio(m.ack_ms.p99, p.ack_ms.p99)),
        cpu_at_common_rate: pair.and_then(|(m, p)| ratio(m.cpu_pct, p.cpu_pct)),
        cpu_us_per_msg_at_common_rate: pair
            .and_then(|(m, p)| ratio(m.cpu_us_per_msg?, p.cpu_us_per_msg?)),
        ack_p99_at_half_rate: half.and_then(|(m, p)| ratio(m.settle_ms().p99, p.settle_ms().p99)),
        cpu_us_per_msg_at_half_rate: half
            .and_then(|(m, p)| ratio(m.cpu_us_per_msg?, p.cpu_us_per_msg?)),
    }
}

/// The plot series of a sweep.
pub(crate) fn series(sweep: &TargetSweep, color: RGBColor) -> crate::plot::Series {
    crate::plot::Series {
        name: sweep.target.clone(),
        color,
        points: sweep
            .steps
            .iter()
            .filter_map(|s| {
                Some(crate::plot::Point {
                    offered: s.offered_msgs_per_s?,
                    achieved: s.achieved_msgs_per_s,
                    p99_ms: s.settle_ms().p99,
                    sustainable: s.verdict.as_ref().is_some_and(|v| v.sustainable),
                })
            })
            .collect(),
    }
}

/// Whether `meterflow --help` lists a flag (for features other engineers are adding).
pub(crate) fn meterflow_has_flag(binary: &Path, flag: &str) -> bool {
    std::process::Command::new(binary)
        .args(["run", "--help"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains(flag))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: f64, achieved: f64, p50: f64, p99: f64, ok: bool) -> StepRecord {
        StepRecord {
            offered_msgs_per_s: Some(rate),
            achieved_msgs_per_s: achieved,
            ack_ms: Latency {
                p50,
                p99,
                max: p99 * 2.0,
            },
            cpu_pct: 100.0,
            verdict: Some(Verdict {
                sustainable: ok,
                reasons: Vec::new(),
            }),
            ..StepRecord::default()
        }
    }

    #[test]
    fn ratios_compare_at_the_highest_common_sustained_rate() {
        let meterflow = TargetSweep {
            target: "meterflow".into(),
            closed_loop: StepRecord {
                achieved_msgs_per_s: 30_000.0,
                ..StepRecord::default()
            },
            steps: vec![
                step(10_000.0, 10_000.0, 10.0, 40.0, true),
                step(15_000.0, 15_000.0, 12.0, 60.0, true),
                step(22_500.0, 18_000.0, 500.0, 3000.0, false),
                step(18_371.0, 18_371.0, 20.0, 200.0, true),
            ],
            best: Some(step(18_371.0, 18_371.0, 20.0, 200.0, true)),
            ..TargetSweep::default()
        };
        let peer = TargetSweep {
            target: "mosquitto".into(),
            closed_loop: StepRecord {
                achieved_msgs_per_s: 60_000.0,
                ..StepRecord::default()
            },
            steps: vec![
                step(10_000.0, 10_000.0, 1.0, 4.0, true),
                step(15_000.0, 15_000.0, 2.0, 6.0, true),
                step(22_500.0, 22_500.0, 2.0, 8.0, true),
                step(33_750.0, 33_750.0, 3.0, 10.0, true),
                step(50_625.0, 40_000.0, 900.0, 2000.0, false),
            ],
            best: Some(step(33_750.0, 33_750.0, 3.0, 10.0, true)),
            ..TargetSweep::default()
        };
        let r = ratios(&meterflow, &peer);
        assert_eq!(r.peer, "mosquitto");
        assert!((r.closed_loop_msgs_per_s.unwrap() - 0.5).abs() < 1e-9);
        assert!((r.sustainable_msgs_per_s.unwrap() - 18_371.0 / 33_750.0).abs() < 1e-9);
        // 18,371 is a refinement step the peer never ran: compare at 15,000.
        assert_eq!(r.common_rate, Some(15_000.0));
        assert!((r.ack_p50_at_common_rate.unwrap() - 6.0).abs() < 1e-9);
        assert!((r.ack_p99_at_common_rate.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(r.cpu_at_common_rate, Some(1.0));

        assert_eq!(r.ack_p99_at_half_rate, None, "no half steps");
        let half = |p99| Some(step(9_000.0, 9_000.0, 1.0, p99, true));
        let r = ratios(
            &TargetSweep {
                half_step: half(20.0),
                ..meterflow.clone()
            },
            &TargetSweep {
                half_step: half(5.0),
                ..peer.clone()
            },
        );
        assert_eq!(r.ack_p99_at_half_rate, Some(4.0));

        let empty = ratios(&TargetSweep::default(), &TargetSweep::default());
        assert_eq!(empty, Ratios::default());
    }

    #[test]
    fn settle_latency_bounds_both_acknowledgements() {
        let mut record = step(1000.0, 1000.0, 3.0, 10.0, true);
        assert_eq!(record.settle_ms(), record.ack_ms);
        let puback = Latency {
            p50: 4.0,
            p99: 8.0,
            max: 30.0,
        };
        record.puback_ms = Some(puback);
        assert_eq!(
            record.settle_ms(),
            Latency {
                p50: 4.0,
                p99: 10.0,
                max: 30.0
            }
        );
        // PUBACKs alone: the ack histogram is empty.
        record.ack_ms = Latency::default();
        assert_eq!(record.settle_ms(), puback);

        let features = SimFeatures {
            puback_not_durable: true,
            no_ack_topic: true,
        };
        let sim = SimSettings {
            mqtt: "127.0.0.1:1883".parse().unwrap(),
            meters: 1,
            first_meter: 0,
            messages_per_meter: 1,
            readings_per_message: 1,
            rate: None,
            window: 1,
            timeout_s: 1,
            ack_timeout_ms: 1,
            connect_concurrency: 1,
            binary: false,
            puback_not_durable: true,
            no_ack_topic: false,
        };
        assert_eq!(settled_by(&sim, features), "ack topic");
        let either = SimSettings {
            puback_not_durable: false,
            ..sim.clone()
        };
        assert_eq!(settled_by(&either, features), "ack topic or PUBACK");
        assert_eq!(settled_by(&either, SimFeatures::default()), "ack topic");
        let puback = SimSettings {
            no_ack_topic: true,
            ..either
        };
        assert_eq!(settled_by(&puback, features), "PUBACK");
        assert_eq!(micros_per(Some(2.0), 1e6), Some(2.0));
        assert_eq!(micros_per(Some(2.0), 0.0), None);
        assert_eq!(micros_per(None, 10.0), None);
        assert_eq!(delta(Some(1.0), Some(3.5)), Some(2.5));
        assert_eq!(delta(None, Some(3.5)), None);
    }

    #[test]
    fn ladder_grows_geometrically() {
        assert_eq!(ladder_rate(1000.0, 1.5, 0), 1000.0);
        assert!((ladder_rate(1000.0, 1.5, 3) - 3375.0).abs() < 1e-9);
    }

    #[test]
    fn series_keeps_open_loop_steps_only() {
        let sweep = TargetSweep {
            target: "meterflow".into(),
            closed_loop: StepRecord::default(),
            steps: vec![step(1000.0, 990.0, 1.0, 5.0, true), StepRecord::default()],
            ..TargetSweep::default()
        };
        let s = series(&sweep, plotters::style::BLACK);
        assert_eq!(s.points.len(), 1);
        assert!(s.points[0].sustainable);
    }
}
