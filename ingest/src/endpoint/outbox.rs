//! What reaches a connection from outside its task: PUBACKs once uplinks are durable,
//! the meter's ack-topic watermark, alert events for subscribers, and orders to close.
//!
//! Memory is bounded by construction, not by the queue: every [`Outgoing::PubAck`] /
//! [`Outgoing::Done`] answers one uplink the connection counted as in flight (capped per
//! connection, and the slot is freed only when the connection has written the answer),
//! a watermark is sent at most once per uplink-carrying group, and alert events are
//! capped per connection ([`MAX_QUEUED_ALERTS`]; beyond it they are dropped and
//! counted, as the notifier's own queue does).
//!
//! The queue is a mutex-guarded `VecDeque` with a `Notify`, not a channel: an idle
//! connection's queue holds no allocation (a channel would keep a block of slots per
//! connection, a large share of an idle meter's memory), and it is released again
//! once drained.
//!
//! A [`Completion`] dropped without being completed (the pipeline stopped before the
//! uplink was durable) tells the connection to close, so the meter reconnects and
//! resends instead of waiting forever for a PUBACK. In distributed mode a processor's
//! completions answer the log instead ([`Completion::for_log`]): durable offsets may
//! be committed, abandoned ones never are.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use meterflow_model::MeterKey;
use tokio::sync::{Notify, oneshot};

use crate::kafka::offsets::LogPosition;

/// Alert events waiting on one connection. Alerts for one meter or tenant are rare
/// (the notifier rate-limits them per tenant), so a connection this far behind is not
/// reading its socket.
pub const MAX_QUEUED_ALERTS: usize = 64;

/// Something for a connection to write or do.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// The QoS 1 uplink with this packet id is durable: PUBACK it (`refused`: it was
    /// kept as a dead letter the session refused, which MQTT 5 can say).
    PubAck { pkid: u16, refused: bool },
    /// A QoS 0 uplink is durable (nothing to write; frees its in-flight slot).
    Done,
    /// The meter's durable watermark, for its ack-topic subscription.
    Watermark(u64),
    /// An alert event for a subscription of this connection.
    Alert { topic: Arc<str>, payload: Bytes },
    /// An uplink of this connection will never be durable from here (the pipeline
    /// stopped): close, so the meter resends elsewhere or later.
    Abandoned,
    /// Another connection authenticated as the same client: close.
    TakenOver,
}

/// The shared handle of one connection.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<Queue>,
    /// Wakes the connection when something is queued.
    wake: Notify,
    /// The meter this connection authenticated as (None for integrations).
    meter: Option<MeterKey>,
    /// Whether the meter subscribed to its own ack topic.
    ack_subscribed: AtomicBool,
    alerts_queued: AtomicUsize,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outgoing>,
    /// The connection has gone: nothing more is queued.
    closed: bool,
}

/// Nothing is queued now.
#[derive(Debug, PartialEq, Eq)]
pub struct Empty;

/// The connection's end of its outbox; closes it when dropped.
#[derive(Debug)]
pub struct OutboxReceiver {
    outbox: Arc<Outbox>,
}

impl OutboxReceiver {
    /// The next item, waiting for one.
    pub async fn recv(&mut self) -> Outgoing {
        loop {
            if let Ok(item) = self.try_recv() {
                return item;
            }
            // A notification sent since the check above is kept as a permit, so none
            // is lost between the check and the wait.
            self.outbox.wake.notified().await;
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Result<Outgoing, Empty> {
        let mut queue = self.outbox.lock();
        let item = queue.items.pop_front().ok_or(Empty)?;
        if queue.items.is_empty() && queue.items.capacity() > 0 {
            queue.items = VecDeque::new();
        }
        Ok(item)
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let mut queue = self.outbox.lock();
        queue.closed = true;
        queue.items = VecDeque::new();
    }
}

impl Outbox {
    pub fn new(meter: Option<MeterKey>) -> (Arc<Outbox>, OutboxReceiver) {
        let outbox = Arc::new(Outbox {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            meter,
            ack_subscribed: AtomicBool::new(false),
            alerts_queued: AtomicUsize::new(0),
        });
        (outbox.clone(), OutboxReceiver { outbox })
    }

    /// The queue; a poisoned lock is used as it is (every operation on it is one
    /// push or pop).
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` unless the connection has gone.
    fn send(&self, item: Outgoing) -> bool {
        {
            let mut queue = self.lock();
            if queue.closed {
                return false;
            }
            queue.items.push_back(item);
        }
        self.wake.notify_one();
        true
    }

    pub fn meter(&self) -> Option<&MeterKey> {
        self.meter.as_ref()
    }

    pub fn subscribe_acks(&self) {
        self.ack_subscribed.store(true, Ordering::Relaxed);
    }

    pub fn unsubscribe_acks(&self) {
        self.ack_subscribed.store(false, Ordering::Relaxed);
    }

    /// Sends the meter's watermark when it subscribed to its ack topic.
    pub fn deliver_watermark(&self, seq: u64) -> bool {
        self.ack_subscribed.load(Ordering::Relaxed) && self.send(Outgoing::Watermark(seq))
    }

    /// Queues an alert event; false when the connection is gone or too far behind.
    pub fn deliver_alert(&self, topic: Arc<str>, payload: Bytes) -> bool {
        if self.alerts_queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_ALERTS {
            self.alerts_queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        if !self.send(Outgoing::Alert { topic, payload }) {
            self.alerts_queued.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Called by the connection when it has taken an alert off its queue.
    pub fn alert_taken(&self) {
        self.alerts_queued.fetch_sub(1, Ordering::Relaxed);
    }

    /// Tells the connection to close: another one took its client id over.
    pub fn take_over(&self) {
        self.send(Outgoing::TakenOver);
    }
}

/// The promise to answer one uplink once it is durable: to the meter's connection
/// (PUBACK), or, for an uplink a processor read from the log, to the
/// [`OffsetBook`](crate::kafka::offsets::OffsetBook)
/// that decides which offsets may be committed.
#[derive(Debug)]
pub struct Completion {
    to: AnswerTo,
    done: bool,
}

#[derive(Debug)]
enum AnswerTo {
    Meter {
        outbox: Arc<Outbox>,
        /// Packet id of a QoS 1 publish; `None` for QoS 0.
        pkid: Option<u16>,
        /// The session refused the publish (kept as a dead letter).
        refused: bool,
    },
    Log(LogPosition),
    /// An operator's order from the HTTP API: told whether it is durable, or why it
    /// was refused (dropped unanswered: the pipeline stopped).
    Request(Option<oneshot::Sender<Result<(), String>>>),
}

impl Completion {
    /// The completion of an operator's order; `answer` hears how it ended.
    pub fn for_request(answer: oneshot::Sender<Result<(), String>>) -> Completion {
        Completion {
            to: AnswerTo::Request(Some(answer)),
            done: false,
        }
    }

    /// An operator's order could not apply: say why. (Uplinks are never refused
    /// this way; one would count as answered.)
    pub fn refuse(mut self, why: String) {
        if let AnswerTo::Request(answer) = &mut self.to
            && let Some(answer) = answer.take()
        {
            self.done = true;
            let _ = answer.send(Err(why));
            return;
        }
        self.complete();
    }

    pub fn new(outbox: Arc<Outbox>, pkid: Option<u16>, refused: bool) -> Completion {
        Completion {
            to: AnswerTo::Meter {
                outbox,
                pkid,
                refused,
            },
            done: false,
        }
    }

    /// The completion of an uplink read from the log at `position`.
    pub fn for_log(position: LogPosition) -> Completion {
        Completion {
            to: AnswerTo::Log(position),
            done: false,
        }
    }

    /// The connection to answer, when the uplink came from one.
    pub fn outbox(&self) -> Option<&Arc<Outbox>> {
        match &self.to {
            AnswerTo::Meter { outbox, .. } => Some(outbox),
            AnswerTo::Log(_) | AnswerTo::Request(_) => None,
        }
    }

    /// The uplink is durable (stored, dead-lettered, or a duplicate of a durable one):
    /// PUBACK it (a connection that has gone meanwhile simply never sees it; its meter
    /// resends and is answered as a duplicate), or mark its log offset committable.
    pub fn complete(mut self) {
        self.done = true;
        match &mut self.to {
            AnswerTo::Meter {
                outbox,
                pkid,
                refused,
            } => {
                let answer = match pkid {
                    Some(pkid) => Outgoing::PubAck {
                        pkid: *pkid,
                        refused: *refused,
                    },
                    None => Outgoing::Done,
                };
                outbox.send(answer);
            }
            AnswerTo::Log(log) => log.book.completed(log.at),
            AnswerTo::Request(answer) => {
                if let Some(answer) = answer.take() {
                    let _ = answer.send(Ok(()));
                }
            }
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match &self.to {
            AnswerTo::Meter { outbox, .. } => {
                outbox.send(Outgoing::Abandoned);
            }
            AnswerTo::Log(log) => log.book.abandoned(log.at),
            // Dropping the sender tells the caller the order was not made durable.
            AnswerTo::Request(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completing_answers_with_the_packet_id_and_dropping_abandons() {
        let (outbox, mut rx) = Outbox::new(None);
        Completion::new(outbox.clone(), Some(7), false).complete();
        Completion::new(outbox.clone(), None, false).complete();
        drop(Completion::new(outbox.clone(), Some(8), true));
        assert_eq!(
            rx.try_recv(),
            Ok(Outgoing::PubAck {
                pkid: 7,
                refused: false
            })
        );
        assert_eq!(rx.try_recv(), Ok(Outgoing::Done));
        assert_eq!(rx.try_recv(), Ok(Outgoing::Abandoned));
        assert_eq!(rx.try_recv(), Err(Empty));
        drop(rx);
        assert!(
            !outbox.deliver_alert(Arc::from("t"), Bytes::new()),
            "closed with its connection"
        );
    }

    #[test]
    fn watermarks_only_reach_subscribed_meters_and_alerts_are_capped() {
        let (outbox, mut rx) = Outbox::new(None);
        assert!(!outbox.deliver_watermark(3));
        outbox.subscribe_acks();
        assert!(outbox.deliver_watermark(4));
        assert_eq!(rx.try_recv(), Ok(Outgoing::Watermark(4)));
        let topic: Arc<str> = Arc::from("alerts/demo/m1");
        for _ in 0..MAX_QUEUED_ALERTS {
            assert!(outbox.deliver_alert(topic.clone(), Bytes::from_static(b"{}")));
        }
        assert!(!outbox.deliver_alert(topic.clone(), Bytes::from_static(b"{}")));
        outbox.alert_taken();
        assert!(outbox.deliver_alert(topic, Bytes::from_static(b"{}")));
    }
}
