//! One simulated meter: an MQTT v3.1.1 connection of its own (client id
//! `{tenant}.{meter}`, clean session) that publishes its ground-truth uplinks at QoS 1
//! to `meters/{t}/{m}/up`, listens at QoS 0 on `meters/{t}/{m}/ack` (unless
//! `ack_topic` is off), keeps every message until it is acknowledged as durable — by
//! the PUBACK of one of its publications (`puback_durable`) or by an ack covering it,
//! whichever comes first — and resends.
//!
//! Each meter is two tokio tasks joined by a [`MeterLink`] (atomics + a `Notify`;
//! the fleet also wakes meters through it, so no waiter list is shared fleet-wide):
//! - the **connection driver** owns the rumqttc `EventLoop` and does nothing but poll
//!   it: it is never cancelled mid-poll (rumqttc's `poll` is not cancel-safe — a
//!   dropped poll can lose a publish that its state already counts as in flight, which
//!   stalls the connection on a packet-id collision). It re-subscribes on every
//!   ConnAck, folds acks into the link's watermark, pairs rumqttc's packet ids with
//!   seqs so a PUBACK settles its message ([`PubackTracker`]), and backs off between
//!   failed connects;
//! - the **meter logic** owns the [`UnackedWindow`], the generator and the latency
//!   histogram; it wakes on an ack, a reconnect, a resend timer, a pacing slot, the
//!   start gate (the fleet connects before anyone sends, by default), the deadline or
//!   a stop request, and only ever *offers* publishes to the driver without waiting
//!   (see [`offer_publish`]).
//!
//! Acks are cumulative, so they need no queue: the driver keeps the highest seq seen
//! (`fetch_max`) and the logic clears everything at or below it. PUBACKs settle one
//! message each: the driver queues their seqs in the link's tracker, the logic takes
//! them from there. A reconnect bumps the link's epoch; the logic then resends every
//! unacked message, because a clean session means the broker forgot them — and the
//! driver has dropped everything rumqttc still held of the old connection (requests
//! not yet sent, in-flight copies, buffered events) together with the packet ids the
//! tracker knew, so no PUBACK is ever paired with the wrong message.
//!
//! A meter is done when nothing is left to send or settle and, with PUBACKs tracked,
//! every publish it queued has had its PUBACK — an injected duplicate or a malformed
//! payload too, and a message an ack settled first. Only then does it disconnect:
//! closing a socket with answers still unread resets the connection, and the kernel
//! drops what it had not yet sent of the last publishes, which the broker would then
//! never see.

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use meterflow_model::limits::DEFAULT_MAX_PAYLOAD_BYTES;
use meterflow_model::{MeterKey, Uplink, ack, topic};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions,
    NetworkOptions, Outgoing, QoS, Request, Subscribe, SubscribeReasonCode,
};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, warn};

use crate::config::SimConfig;
use crate::generator::{encode_payload, meter_messages};
use crate::pacing::{Backoff, Pacer};
use crate::puback::{Offered, PubackTracker};
use crate::report::FleetCounters;
use crate::window::UnackedWindow;

/// MQTT keep-alive. A broker that vanishes without closing the socket (host down,
/// network partition) is noticed after at most two of these; a killed broker process
/// is noticed at once because its kernel resets the connections.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Largest packet a meter sends: the wire's payload limit plus room for the topic and
/// the fixed header. rumqttc's default (10 KiB) is smaller than a 256-reading JSON
/// uplink and fails the whole connection when exceeded.
const MAX_OUTGOING_PACKET: usize = DEFAULT_MAX_PAYLOAD_BYTES + 1024;
/// Largest packet a meter accepts: acks are `{"seq":N}`, a few dozen bytes.
const MAX_INCOMING_PACKET: usize = 4 * 1024;
/// How long a finished meter waits for its DISCONNECT to go out before it drops the
/// connection anyway.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);

/// Latencies above an hour are recorded as an hour: a run never lasts that long, and
/// the clamp bounds each histogram's growth.
const MAX_RECORDED_LATENCY_US: u64 = 3_600 * 1_000_000;

/// Longest connect phase with `connect_first` (plus the paced ramp's own length,
/// with `connect_rate`): a fleet that cannot fully connect in this time (a refused meter, a broker at its connection limit) starts sending with
/// the meters it has, so the run still measures something.
pub(crate) const CONNECT_PHASE_LIMIT: Duration = Duration::from_secs(30);

/// What every meter task shares: read-only settings and fleet-wide atomics. Nothing
/// here has a lock or a waiter list that all meters touch: fleet-wide events (the
/// start gate, a stop request) set a flag and then wake each meter through its own
/// [`MeterLink`].
#[derive(Debug)]
pub(crate) struct FleetShared {
    /// The fleet's parts (one per tenant); fleet-wide settings (broker, rate,
    /// window, timeouts, connect ramp) are the first part's.
    pub(crate) parts: Vec<SimConfig>,
    /// Meters over all parts.
    pub(crate) meters: usize,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) counters: Arc<FleetCounters>,
    pub(crate) pacer: Option<Pacer>,
    /// Bounds connection attempts in flight (the connect ramp).
    pub(crate) connect_gate: Semaphore,
    /// Paces first connections (`SimConfig::connect_rate`).
    pub(crate) connect_pacer: Option<Pacer>,
    pub(crate) deadline: Instant,
    /// Set once the first refused CONNECT was logged, so 1,000 meters with bad
    /// credentials log one warning, not 1,000.
    pub(crate) refusal_logged: AtomicBool,
    /// One per meter: each part's `meter_indices()`, part after part.
    pub(crate) links: Vec<Arc<MeterLink>>,
    /// Meters may send (see [`SimConfig::connect_first`]).
    pub(crate) start_gate_open: AtomicBool,
    /// When the start gate opened.
    pub(crate) opened_at: OnceLock<Instant>,
    /// Meters that have connected at least once.
    pub(crate) first_connects: AtomicUsize,
    /// The caller asked the run to stop.
    pub(crate) stop_requested: AtomicBool,
}

impl FleetShared {
    /// Fleet-wide settings.
    pub(crate) fn settings(&self) -> &SimConfig {
        &self.parts[0]
    }

    /// Drops the connections of `links` at once (a reconnect storm).
    pub(crate) fn storm(&self, links: impl Iterator<Item = usize>) {
        for index in links {
            if let Some(link) = self.links.get(index) {
                link.storm.notify_one();
            }
        }
    }

    /// Lets every meter send; the first call fixes `opened_at`.
    pub(crate) fn open_start_gate(&self) {
        let _ = self.opened_at.set(Instant::now());
        self.start_gate_open.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Makes every meter stop at its next wake-up, which is now.
    pub(crate) fn request_stop(&self) {
        self.stop_requested.store(true, Ordering::Release);
        self.wake_all();
    }

    fn wake_all(&self) {
        for link in &self.links {
            link.wake.notify_one();
        }
    }
}

/// Signals into one meter's logic task: from its connection driver (acks, PUBACKs,
/// connection changes) and from the fleet (start gate, stop).
#[derive(Debug, Default)]
pub(crate) struct MeterLink {
    /// Highest seq any ack named (cumulative).
    acked: AtomicU64,
    /// Packet ids ↔ seqs, and the seqs PUBACKed (only with `puback_durable`). Two
    /// tasks of one meter share it: the logic queues publishes under this lock, the
    /// driver pairs and clears under it.
    pubacks: Mutex<PubackTracker>,
    /// Incremented on every ConnAck.
    epoch: AtomicU64,
    connected: AtomicBool,
    /// Wakes the logic after any change above or a fleet-wide event. A `Notify`
    /// keeps one permit, so a wake-up sent while the logic is busy is not lost.
    wake: Notify,
    /// Tells the connection driver to drop its connection (a reconnect storm).
    storm: Notify,
}

/// What a meter task hands back when it ends.
#[derive(Debug)]
pub(crate) struct MeterOutcome {
    /// Publish→ack (ack topic) latencies of the messages the ack topic settled.
    pub(crate) latency_us: Histogram<u64>,
    /// Publish→PUBACK latencies of the messages a PUBACK settled.
    pub(crate) puback_latency_us: Histogram<u64>,
    /// When the meter's last ack arrived or it gave up.
    pub(crate) finished: Instant,
}

/// A new per-meter latency histogram: 2 significant digits (1 % resolution) and
/// auto-resizing, which keeps it to a few KiB per meter for latencies up to minutes.
pub(crate) fn new_latency_histogram() -> Histogram<u64> {
    // 2 significant digits is within hdrhistogram's 0..=5, so this cannot fail.
    Histogram::new(2).expect("2 significant digits is a valid precision")
}

fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    // `record` (not `saturating_record`, which never resizes and would clamp
    // everything to the initial 2 µs range); values up to the clamp fit an
    // auto-resizing histogram, so this cannot fail.
    let _ = histogram.record(us.min(MAX_RECORDED_LATENCY_US));
}

/// The tracker, also after a panic elsewhere (its state is plain data; the meter
/// then at worst resends).
fn tracker(link: &MeterLink) -> MutexGuard<'_, PubackTracker> {
    link.pubacks.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs meter `index` to completion, the deadline, or a stop request.
pub(crate) async fn run_meter(
    part: usize,
    index: usize,
    key: MeterKey,
    link: Arc<MeterLink>,
    fleet: Arc<FleetShared>,
) -> MeterOutcome {
    let config = &fleet.parts[part];
    let counters = &fleet.counters;
    let uplink_topic = topic::uplink_topic(&key);
    let ack_topic = config.ack_topic.then(|| topic::ack_topic(&key));
    let track_pubacks = config.puback_durable;

    // Requests a meter can have queued: a window of new messages, a window of
    // resends, plus subscribe/disconnect. The channel should never fill; if it does
    // (the broker stopped taking publishes) the offer is dropped and the ack timeout
    // resends it.
    let capacity = config.window * 2 + 8;
    let mut options = MqttOptions::new(topic::client_id(&key), fleet.host.clone(), fleet.port);
    options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
        .set_request_channel_capacity(capacity)
        // Resends can overlap their originals at the broker: twice the window keeps
        // rumqttc's in-flight limit from ever being what throttles a meter.
        .set_inflight(u16::try_from(config.window * 2 + 2).unwrap_or(u16::MAX));
    if let Some((user, password)) = config.login(&key) {
        options.set_credentials(user, password);
    }
    // rumqttc sizes the channel from this argument, not from the options field.
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    let mut network = NetworkOptions::new();
    // Small QoS 1 publishes and acks: without NODELAY, Nagle plus delayed ACKs add
    // up to 40 ms to every round trip.
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);

    let backoff = Backoff::new(SmallRng::seed_from_u64(
        config.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ));
    let mut driver = tokio::spawn(drive_connection(
        eventloop,
        Arc::clone(&link),
        ack_topic,
        track_pubacks,
        Arc::clone(&fleet),
        backoff,
        key.clone(),
    ));

    let readings_per_message = config.readings_per_message as u64;
    let ack_timeout = config.ack_timeout();
    let mut generator = meter_messages(config, index);
    let mut uplink = Uplink::new(0, Vec::with_capacity(config.readings_per_message));
    let mut window = UnackedWindow::new(config.window);
    let mut latency_us = new_latency_histogram();
    let mut puback_latency_us = new_latency_histogram();
    let mut pubacked: Vec<(u64, Instant)> = Vec::new();
    // Out-of-order: a held-back message (seq, payload) goes out right after its
    // successor.
    let mut held: Option<(u64, Bytes)> = None;
    // Seqs to publish once more after their ack (a lost ack), and those acked. A
    // set: PUBACKs settle messages in any order.
    let mut duplicate_seqs: HashSet<u64> = HashSet::new();
    let mut duplicates_due: Vec<Bytes> = Vec::new();
    let mut seen_epoch = 0;
    let mut claimed_slot: Option<Instant> = None;
    let mut finished = Instant::now();
    let mut may_send = false;
    let mut timer_at = fleet.deadline;
    let timer = tokio::time::sleep_until(timer_at.into());
    let mut timer = pin!(timer);

    loop {
        let now = Instant::now();
        let mut cleared = 0u64;
        if track_pubacks {
            // PUBACKs first (each carries its arrival time), then the watermark:
            // whichever settles a message first, the other finds nothing.
            tracker(&link).take_settled(&mut pubacked);
            for &(seq, at) in &pubacked {
                let settled = window.puback(seq, at, |payload, latency| {
                    record_latency(&mut puback_latency_us, latency);
                    if duplicate_seqs.remove(&seq) {
                        duplicates_due.push(payload);
                    }
                });
                cleared += u64::from(settled);
            }
        }
        let acked = link.acked.load(Ordering::Acquire);
        cleared += window.ack(acked, now, |seq, payload, latency| {
            record_latency(&mut latency_us, latency);
            if duplicate_seqs.remove(&seq) {
                duplicates_due.push(payload);
            }
        }) as u64;
        if cleared > 0 {
            finished = now;
            FleetCounters::add(&counters.acked, cleared);
            FleetCounters::add(&counters.acked_readings, cleared * readings_per_message);
        }
        if window.is_empty()
            && generator.remaining() == 0
            && duplicates_due.is_empty()
            && (!track_pubacks || tracker(&link).all_answered())
        {
            break;
        }
        if now >= fleet.deadline || fleet.stop_requested.load(Ordering::Acquire) {
            finished = now;
            break;
        }

        if !may_send {
            may_send = fleet.start_gate_open.load(Ordering::Acquire);
        }
        let mut resent = 0;
        let connected = may_send && link.connected.load(Ordering::Acquire);
        if connected {
            // With PUBACK tracking, what a publish is gets recorded under the
            // tracker's lock together with queueing it, so the driver pairs rumqttc's
            // packet ids with queueing order.
            let offer = |payload: &Bytes, what: Offered| {
                if track_pubacks {
                    let mut tracker = tracker(&link);
                    if offer_publish(&client, &uplink_topic, payload.clone()) {
                        tracker.offered(what);
                    }
                } else {
                    offer_publish(&client, &uplink_topic, payload.clone());
                }
            };
            let epoch = link.epoch.load(Ordering::Acquire);
            if epoch != seen_epoch {
                // A new session: the broker and rumqttc forgot what was in flight.
                // A held-back message goes out with the rest.
                seen_epoch = epoch;
                held = None;
                resent += window.resend_all(now, |seq, payload| offer(payload, Some(seq)));
            }
            resent += window.resend_overdue(now, ack_timeout, |seq, payload| {
                offer(payload, Some(seq));
            });
            for payload in duplicates_due.drain(..) {
                // Already acked: its PUBACK settles nothing.
                offer(&payload, None);
                FleetCounters::add(&counters.duplicates, 1);
            }

            let mut sent = 0;
            while window.has_room() && generator.remaining() > 0 {
                if let Some(pacer) = &fleet.pacer {
                    let due = *claimed_slot.get_or_insert_with(|| pacer.claim(now));
                    if due > now {
                        break;
                    }
                    claimed_slot = None;
                }
                let Some(faults) = generator.fill_next(&mut uplink) else {
                    break;
                };
                let payload = Bytes::from(encode_payload(&uplink, config.binary));
                if faults.held_back {
                    held = Some((uplink.seq, payload.clone()));
                    FleetCounters::add(&counters.out_of_order, 1);
                } else {
                    offer(&payload, Some(uplink.seq));
                    if let Some((seq, earlier)) = held.take() {
                        offer(&earlier, Some(seq));
                    }
                }
                if faults.duplicate {
                    duplicate_seqs.insert(uplink.seq);
                }
                if let Some(kind) = faults.malformed {
                    offer(&Bytes::from(kind.payload(&uplink)), None);
                    FleetCounters::add(&counters.malformed, 1);
                }
                window.push(uplink.seq, payload, now);
                sent += 1;
            }
            FleetCounters::add(&counters.sent, sent);
        }
        FleetCounters::add(&counters.resent, resent as u64);

        let mut wake_at = fleet.deadline;
        if connected {
            if let Some(at) = window.next_resend_at(ack_timeout) {
                wake_at = wake_at.min(at);
            }
            if let Some(due) = claimed_slot.filter(|_| window.has_room()) {
                wake_at = wake_at.min(due);
            }
        }
        if wake_at != timer_at {
            // Re-arming a timer touches the runtime's timer wheel: only when it moved.
            timer_at = wake_at;
            timer.as_mut().reset(wake_at.into());
        }
        tokio::select! {
            () = link.wake.notified() => {}
            () = &mut timer => {}
        }
    }

    // Say goodbye when connected; otherwise there is nothing to wait for. Either way
    // the driver is gone before the gauge is fixed, so it cannot race us.
    let said_goodbye = link.connected.load(Ordering::Acquire)
        && client.try_disconnect().is_ok()
        && tokio::time::timeout(DISCONNECT_GRACE, &mut driver)
            .await
            .is_ok();
    if !said_goodbye {
        driver.abort();
        let _ = driver.await;
    }
    if link.connected.swap(false, Ordering::AcqRel) {
        counters.connected.fetch_sub(1, Ordering::Relaxed);
    }
    let unpaired = tracker(&link).unpaired();
    if unpaired > 0 {
        FleetCounters::add(&counters.pubacks_unpaired, unpaired);
        warn!(meter = %key, unpaired, "publishes rumqttc sent without a queued message to pair them with: some PUBACKs were not counted");
    }
    MeterOutcome {
        latency_us,
        puback_latency_us,
        finished,
    }
}

/// Queues a QoS 1 publish without waiting. rumqttc has no non-blocking publish that
/// takes `Bytes`, so this polls `publish_bytes` once: a request channel with room
/// accepts at once; a full one (the broker stopped reading) leaves the message to the
/// ack timeout. Either way the caller treats the message as sent — exactly as if the
/// network had lost it. Returns whether the channel took it (a dropped pending send
/// leaves nothing in the channel).
fn offer_publish(client: &AsyncClient, topic: &str, payload: Bytes) -> bool {
    let publish = client.publish_bytes(topic, QoS::AtLeastOnce, false, payload);
    let mut publish = pin!(publish);
    let mut cx = Context::from_waker(Waker::noop());
    match publish.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(())) => true,
        Poll::Ready(Err(error)) => {
            debug!(topic, %error, "publish not queued");
            false
        }
        Poll::Pending => {
            debug!(
                topic,
                "request channel full, publish left to the ack timeout"
            );
            false
        }
    }
}

/// Drops everything rumqttc still holds of a connection that ended (or is being
/// dropped): requests queued but not sent, in-flight publishes, events buffered from
/// it, a publish waiting on a packet-id collision. The new session is clean, and the
/// meter logic resends every unacked message on it; keeping any of this would send
/// stale copies and break the pairing of packet ids with seqs. Done under the
/// tracker's lock, so no publish is queued halfway through.
fn forget_connection(eventloop: &mut EventLoop, link: &MeterLink) {
    let mut tracker = tracker(link);
    // Drains the request channel (and in-flight state) into `pending`.
    eventloop.clean();
    eventloop.pending.clear();
    eventloop.state.events.clear();
    eventloop.state.collision = None;
    tracker.reset();
}

/// Polls one meter's event loop until the meter logic disconnects or aborts it.
async fn drive_connection(
    mut eventloop: EventLoop,
    link: Arc<MeterLink>,
    ack_topic: Option<String>,
    track_pubacks: bool,
    fleet: Arc<FleetShared>,
    mut backoff: Backoff,
    key: MeterKey,
) {
    let counters = &fleet.counters;
    let mut connections = 0u64;
    loop {
        // A meter's first connection waits for its slot in the ramp.
        if connections == 0
            && eventloop.network.is_none()
            && let Some(pacer) = &fleet.connect_pacer
        {
            tokio::time::sleep_until(pacer.claim(Instant::now()).into()).await;
        }
        // Connection attempts go through the fleet's gate; an established connection
        // does not hold a permit.
        let permit = if eventloop.network.is_none() {
            fleet.connect_gate.acquire().await.ok()
        } else {
            None
        };
        // A storm drops the connection wherever the poll is: rumqttc's poll is not
        // cancel-safe, but `forget_connection` discards the connection and its
        // in-flight state, and the meter logic resends everything unacked on the new
        // session.
        let event = tokio::select! {
            biased;
            () = link.storm.notified() => {
                if eventloop.network.is_some() {
                    forget_connection(&mut eventloop, &link);
                    if link.connected.swap(false, Ordering::AcqRel) {
                        counters.connected.fetch_sub(1, Ordering::Relaxed);
                    }
                    counters.storm_disconnects.fetch_add(1, Ordering::Relaxed);
                    link.wake.notify_one();
                }
                continue;
            }
            event = eventloop.poll() => event,
        };
        drop(permit);
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                // First in line on the new connection, ahead of any publish: the ack
                // subscription does not survive a clean session.
                if let Some(ack_topic) = &ack_topic {
                    eventloop
                        .pending
                        .push_front(Request::Subscribe(Subscribe::new(
                            ack_topic.as_str(),
                            QoS::AtMostOnce,
                        )));
                }
                connections += 1;
                if connections > 1 {
                    counters.reconnects.fetch_add(1, Ordering::Relaxed);
                } else if fleet.first_connects.fetch_add(1, Ordering::AcqRel) + 1 == fleet.meters {
                    fleet.open_start_gate();
                }
                if !link.connected.swap(true, Ordering::AcqRel) {
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                }
                link.epoch.fetch_add(1, Ordering::AcqRel);
                link.wake.notify_one();
                backoff.reset();
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) if track_pubacks => {
                tracker(&link).sent(pkid);
            }
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) if track_pubacks => {
                tracker(&link).await_ack(pkid);
            }
            Ok(Event::Incoming(Incoming::PubAck(puback))) if track_pubacks => {
                let mut tracker = tracker(&link);
                if tracker.puback(puback.pkid, Instant::now()) || tracker.all_answered() {
                    link.wake.notify_one();
                }
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                if ack_topic.as_deref() != Some(publish.topic.as_str()) {
                    continue;
                }
                match ack::decode(&publish.payload) {
                    Some(seq) => {
                        link.acked.fetch_max(seq, Ordering::AcqRel);
                        link.wake.notify_one();
                    }
                    None => {
                        counters.bad_acks.fetch_add(1, Ordering::Relaxed);
                        debug!(meter = %key, len = publish.payload.len(), "ack is not {{\"seq\":N}}");
                    }
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(suback))) => {
                if suback
                    .return_codes
                    .iter()
                    .any(|code| matches!(code, SubscribeReasonCode::Failure))
                {
                    if track_pubacks {
                        warn!(meter = %key, "broker refused the ack subscription: messages settle by PUBACK only");
                    } else {
                        warn!(meter = %key, "broker refused the ack subscription: no acks will arrive, messages will be resent until the deadline");
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(error) => {
                forget_connection(&mut eventloop, &link);
                if link.connected.swap(false, Ordering::AcqRel) {
                    counters.connected.fetch_sub(1, Ordering::Relaxed);
                    link.wake.notify_one();
                }
                counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                log_connection_error(&fleet, &key, &error);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

fn log_connection_error(fleet: &FleetShared, key: &MeterKey, error: &ConnectionError) {
    if let ConnectionError::ConnectionRefused(code) = error {
        if !fleet.refusal_logged.swap(true, Ordering::Relaxed) {
            let hint = match code {
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                    "check --username/--password (or --meter-secret) and that the tenant and meters are configured"
                }
                ConnectReturnCode::BadClientId => {
                    "the broker refused the client id {tenant}.{meter}: check the tenant"
                }
                _ => "check the broker's logs",
            };
            warn!(meter = %key, ?code, "broker refused the connection (logged once for the fleet); {hint}");
        }
    } else {
        debug!(meter = %key, %error, "connection failed, retrying after backoff");
    }
}
