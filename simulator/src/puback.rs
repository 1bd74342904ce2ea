//! Which message a PUBACK settles. rumqttc assigns packet ids itself and reports
//! them only as events: `Outgoing::Publish(pkid)` (or `Outgoing::AwaitAck(pkid)`
//! when that id is still taken) for each publish it takes from its request channel,
//! in the order they were queued, and `Incoming::PubAck(pkid)` when the broker
//! answers. The meter logic records what it queues ([`PubackTracker::offered`]),
//! in the same order and under the same lock as the queueing; the connection driver
//! pairs each outgoing event with the oldest record ([`PubackTracker::sent`]) and
//! turns PUBACKs into settled seqs ([`PubackTracker::puback`]) that the logic
//! collects ([`PubackTracker::take_settled`]). Pure: time is passed in.
//!
//! The pairing holds as long as every queued publish yields exactly one outgoing
//! event. rumqttc breaks that only when a connection ends (queued requests are
//! drained into its pending list, events of the dead connection stay buffered), so
//! the driver clears all of those together with [`PubackTracker::reset`], under the
//! lock the logic queues under.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// What a queued publish is: the seq of an uplink whose PUBACK makes it durable, or
/// `None` for a payload whose PUBACK settles nothing (a malformed payload, an
/// injected duplicate of an already acked message).
pub(crate) type Offered = Option<u64>;

#[derive(Debug, Default)]
pub(crate) struct PubackTracker {
    /// Queued to rumqttc, no packet id yet; oldest first.
    offered: VecDeque<Offered>,
    /// Packet id → what it carries, until its PUBACK.
    in_flight: HashMap<u16, Offered>,
    /// A publish that found its packet id taken (`AwaitAck`): rumqttc sends it with
    /// that id once the id's PUBACK arrives.
    collided: Option<(u16, Offered)>,
    /// Seqs PUBACKed since the logic last looked, with when the PUBACK arrived.
    settled: Vec<(u64, Instant)>,
    /// Outgoing events with no queued publish to pair with (never expected).
    unpaired: u64,
}

impl PubackTracker {
    /// The logic queued a publish (right after the request channel took it).
    pub(crate) fn offered(&mut self, what: Offered) {
        self.offered.push_back(what);
    }

    /// rumqttc sent a publish with `pkid` (`Outgoing::Publish`).
    pub(crate) fn sent(&mut self, pkid: u16) {
        let what = match self.collided.take() {
            Some((id, what)) if id == pkid => what,
            other => {
                self.collided = other;
                match self.offered.pop_front() {
                    Some(what) => what,
                    None => {
                        self.unpaired += 1;
                        None
                    }
                }
            }
        };
        self.in_flight.insert(pkid, what);
    }

    /// rumqttc holds the next publish back until `pkid` is free (`Outgoing::AwaitAck`).
    pub(crate) fn await_ack(&mut self, pkid: u16) {
        match self.offered.pop_front() {
            Some(what) => self.collided = Some((pkid, what)),
            None => self.unpaired += 1,
        }
    }

    /// The broker PUBACKed `pkid` at `at`. Returns whether that settles an uplink
    /// (the logic should then be woken).
    pub(crate) fn puback(&mut self, pkid: u16, at: Instant) -> bool {
        match self.in_flight.remove(&pkid) {
            Some(Some(seq)) => {
                self.settled.push((seq, at));
                true
            }
            _ => false,
        }
    }

    /// Whether every publish queued on this connection has had its PUBACK: none
    /// waits to be sent, none is in flight (see `meter`'s module doc for why a
    /// meter disconnects only then).
    pub(crate) fn all_answered(&self) -> bool {
        self.offered.is_empty() && self.in_flight.is_empty() && self.collided.is_none()
    }

    /// Moves the seqs settled so far into `into` (emptied first).
    pub(crate) fn take_settled(&mut self, into: &mut Vec<(u64, Instant)>) {
        into.clear();
        std::mem::swap(into, &mut self.settled);
    }

    /// The connection is gone with everything queued or in flight on it: forget
    /// it all. Settled seqs stay for the logic (their PUBACKs did arrive).
    pub(crate) fn reset(&mut self) {
        self.offered.clear();
        self.in_flight.clear();
        self.collided = None;
    }

    /// Outgoing publish events that had no queued publish to pair with; non-zero
    /// means the pairing broke (a bug, not a broker fault).
    pub(crate) fn unpaired(&self) -> u64 {
        self.unpaired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(tracker: &mut PubackTracker) -> Vec<u64> {
        let mut out = Vec::new();
        tracker.take_settled(&mut out);
        out.into_iter().map(|(seq, _)| seq).collect()
    }

    #[test]
    fn pubacks_map_to_seqs_in_queueing_order() {
        let t = Instant::now();
        let mut tracker = PubackTracker::default();
        // Out of order (5 held back behind 6), a malformed payload, a duplicate.
        for what in [Some(6), Some(5), None, Some(7)] {
            tracker.offered(what);
        }
        for pkid in 1..=4 {
            tracker.sent(pkid);
        }
        assert!(tracker.puback(2, t));
        assert!(
            !tracker.puback(3, t),
            "the malformed payload settles nothing"
        );
        assert!(tracker.puback(1, t));
        assert!(!tracker.puback(1, t), "a PUBACK counts once");
        assert!(!tracker.puback(9, t), "an id never sent");
        assert_eq!(settled(&mut tracker), [5, 6]);
        assert!(!tracker.all_answered(), "the PUBACK of seq 7 is still due");
        assert!(tracker.puback(4, t));
        assert_eq!(settled(&mut tracker), [7]);
        assert!(settled(&mut tracker).is_empty());
        assert_eq!(tracker.unpaired(), 0);
        assert!(tracker.all_answered());
    }

    #[test]
    fn a_publish_that_settles_nothing_is_still_awaited() {
        let t = Instant::now();
        let mut tracker = PubackTracker::default();
        assert!(tracker.all_answered());
        tracker.offered(None);
        assert!(!tracker.all_answered(), "queued, not sent yet");
        tracker.sent(1);
        assert!(!tracker.all_answered(), "sent, its PUBACK not in");
        assert!(!tracker.puback(1, t));
        assert!(tracker.all_answered());
        tracker.offered(Some(1));
        tracker.sent(1);
        tracker.reset();
        assert!(tracker.all_answered(), "a connection gone awaits nothing");
    }

    #[test]
    fn packet_ids_are_reused_after_their_puback() {
        let t = Instant::now();
        let mut tracker = PubackTracker::default();
        tracker.offered(Some(1));
        tracker.sent(1);
        assert!(tracker.puback(1, t));
        tracker.offered(Some(2));
        tracker.sent(1);
        tracker.offered(None);
        tracker.sent(2);
        assert!(tracker.puback(1, t));
        assert_eq!(settled(&mut tracker), [1, 2]);
    }

    #[test]
    fn a_collided_publish_keeps_its_place() {
        let t = Instant::now();
        let mut tracker = PubackTracker::default();
        tracker.offered(Some(1));
        tracker.sent(1);
        tracker.offered(Some(2));
        tracker.sent(2);
        // pkid 2 is acked, 1 is not; the next id (1) is still taken.
        assert!(tracker.puback(2, t));
        tracker.offered(Some(3));
        tracker.offered(Some(4));
        tracker.await_ack(1);
        // The PUBACK of 1 frees the id; rumqttc sends the held publish (seq 3) with it.
        assert!(tracker.puback(1, t));
        tracker.sent(1);
        tracker.sent(2);
        assert!(tracker.puback(1, t));
        assert!(tracker.puback(2, t));
        assert_eq!(settled(&mut tracker), [2, 1, 3, 4]);
        assert_eq!(tracker.unpaired(), 0);
    }

    #[test]
    fn a_reset_forgets_the_connection_but_not_what_was_settled() {
        let t = Instant::now();
        let mut tracker = PubackTracker::default();
        tracker.offered(Some(1));
        tracker.sent(1);
        assert!(tracker.puback(1, t));
        tracker.offered(Some(2));
        tracker.sent(2);
        tracker.offered(Some(3));
        tracker.offered(Some(4));
        tracker.await_ack(3);
        tracker.reset();
        // Stale ids of the old connection settle nothing.
        assert!(!tracker.puback(2, t));
        assert!(!tracker.puback(3, t));
        // The new connection starts pairing afresh.
        tracker.offered(Some(2));
        tracker.sent(1);
        assert!(tracker.puback(1, t));
        assert_eq!(settled(&mut tracker), [1, 2]);
        // An event with nothing queued is counted, not paired with a guess.
        tracker.sent(5);
        assert!(!tracker.puback(5, t));
        assert_eq!(tracker.unpaired(), 1);
    }
}
