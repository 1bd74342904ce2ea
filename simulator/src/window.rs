//! A meter's unacked messages: what it must keep until the service says they are
//! durable, and when to send them again. Pure state — time is passed in and sending
//! is a callback — so the reliability rules are unit-tested without a broker.
//!
//! A message is settled by whichever durable acknowledgement reaches it first: the
//! cumulative watermark of the ack topic ([`UnackedWindow::ack`]) or the PUBACK of
//! one of its publications ([`UnackedWindow::puback`], meterflow's endpoint PUBACKs
//! a QoS 1 uplink only once it is durable). A settled message leaves the window, so
//! the other acknowledgement finds nothing and is ignored.
//!
//! Invariants:
//! - entries are keyed by `seq`; messages enter in ascending seq order and leave by a
//!   cumulative ack (from the lowest seq up) or one by one by a PUBACK;
//! - at most `capacity` entries (the meter's window);
//! - every entry was offered to the broker at least once (`first_sent ≤ last_sent`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// One message waiting for its ack.
#[derive(Debug)]
struct Unacked {
    /// Encoded once; every resend shares it.
    payload: Bytes,
    /// Start of the publish→ack latency.
    first_sent: Instant,
    /// Start of the ack timeout.
    last_sent: Instant,
}

#[derive(Debug)]
pub(crate) struct UnackedWindow {
    entries: BTreeMap<u64, Unacked>,
    capacity: usize,
    /// The highest seq ever pushed (seqs only grow, even once their entry is gone).
    last_pushed: Option<u64>,
}

impl UnackedWindow {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            capacity,
            last_pushed: None,
        }
    }

    pub(crate) fn has_room(&self) -> bool {
        self.entries.len() < self.capacity
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a message just sent for the first time.
    pub(crate) fn push(&mut self, seq: u64, payload: Bytes, now: Instant) {
        debug_assert!(self.has_room());
        debug_assert!(self.last_pushed.is_none_or(|last| last < seq));
        self.last_pushed = Some(seq);
        self.entries.insert(
            seq,
            Unacked {
                payload,
                first_sent: now,
                last_sent: now,
            },
        );
    }

    /// Applies the cumulative ack `watermark`: every message with seq ≤ it is done.
    /// `cleared` gets each cleared message's seq, payload and publish→ack time.
    /// Returns how many were cleared.
    pub(crate) fn ack(
        &mut self,
        watermark: u64,
        now: Instant,
        mut cleared: impl FnMut(u64, Bytes, Duration),
    ) -> usize {
        let mut count = 0;
        while let Some(entry) = self.entries.first_entry() {
            if *entry.key() > watermark {
                break;
            }
            let (seq, entry) = entry.remove_entry();
            cleared(
                seq,
                entry.payload,
                now.saturating_duration_since(entry.first_sent),
            );
            count += 1;
        }
        count
    }

    /// Applies the PUBACK of a publication of `seq`, received `at`: the message is
    /// durable. `cleared` gets its payload and publish→PUBACK time. Returns whether it
    /// was still unacked (false: an ack or an earlier PUBACK settled it already).
    pub(crate) fn puback(
        &mut self,
        seq: u64,
        at: Instant,
        cleared: impl FnOnce(Bytes, Duration),
    ) -> bool {
        match self.entries.remove(&seq) {
            Some(entry) => {
                cleared(
                    entry.payload,
                    at.saturating_duration_since(entry.first_sent),
                );
                true
            }
            None => false,
        }
    }

    /// Sends again every message unacked for `timeout` since its last send (with
    /// its seq). Returns how many were resent.
    pub(crate) fn resend_overdue(
        &mut self,
        now: Instant,
        timeout: Duration,
        mut send: impl FnMut(u64, &Bytes),
    ) -> usize {
        let mut resent = 0;
        for (&seq, entry) in &mut self.entries {
            if now.saturating_duration_since(entry.last_sent) >= timeout {
                send(seq, &entry.payload);
                entry.last_sent = now;
                resent += 1;
            }
        }
        resent
    }

    /// Sends every unacked message again (after a reconnect: the new session knows
    /// nothing of them). Returns how many were resent.
    pub(crate) fn resend_all(&mut self, now: Instant, mut send: impl FnMut(u64, &Bytes)) -> usize {
        for (&seq, entry) in &mut self.entries {
            send(seq, &entry.payload);
            entry.last_sent = now;
        }
        self.entries.len()
    }

    /// When the next message becomes overdue, if any is unacked.
    pub(crate) fn next_resend_at(&self, timeout: Duration) -> Option<Instant> {
        self.entries.values().map(|e| e.last_sent + timeout).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(100);

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn window_with(t0: Instant, seqs: impl IntoIterator<Item = u64>) -> UnackedWindow {
        let mut window = UnackedWindow::new(8);
        for seq in seqs {
            window.push(seq, Bytes::from(seq.to_string()), ms(t0, seq));
        }
        window
    }

    #[test]
    fn acks_are_cumulative_and_measure_from_first_send() {
        let t0 = Instant::now();
        let mut window = window_with(t0, 1..=5);
        let mut latencies = Vec::new();
        assert_eq!(window.ack(3, ms(t0, 10), |_, _, d| latencies.push(d)), 3);
        assert_eq!(latencies, [9, 8, 7].map(Duration::from_millis).to_vec());
        // An old or repeated ack clears nothing.
        assert_eq!(
            window.ack(2, ms(t0, 11), |_, _, _| panic!("nothing to clear")),
            0
        );
        assert_eq!(window.len(), 2);
        // An ack beyond everything sent clears all.
        assert_eq!(window.ack(100, ms(t0, 12), |_, _, _| {}), 2);
        assert!(window.is_empty());
    }

    #[test]
    fn a_puback_settles_one_message_and_measures_from_first_send() {
        let t0 = Instant::now();
        let mut window = window_with(t0, 1..=4);
        let mut got = None;
        assert!(window.puback(3, ms(t0, 20), |payload, d| got = Some((payload, d))));
        assert_eq!(got, Some((Bytes::from("3"), Duration::from_millis(17))));
        assert_eq!(window.len(), 3);
        // Its room is free again, although seqs below it are still unacked.
        let mut full = window_with(t0, 1..=8);
        assert!(!full.has_room());
        assert!(full.puback(5, ms(t0, 20), |_, _| {}));
        assert!(full.has_room());
        full.push(9, Bytes::new(), ms(t0, 21));
        assert_eq!(full.next_resend_at(TIMEOUT), Some(ms(t0, 101)));
    }

    #[test]
    fn whichever_acknowledgement_comes_first_settles_the_other_is_ignored() {
        let t0 = Instant::now();
        let mut window = window_with(t0, 1..=4);
        // PUBACK first: the watermark then skips the settled message.
        assert!(window.puback(2, ms(t0, 10), |_, _| {}));
        let mut cleared = Vec::new();
        assert_eq!(window.ack(3, ms(t0, 12), |seq, _, _| cleared.push(seq)), 2);
        assert_eq!(cleared, [1, 3]);
        // Watermark first: a late PUBACK (of a resend, say) finds nothing.
        assert!(!window.puback(1, ms(t0, 13), |_, _| panic!("already acked")));
        assert!(!window.puback(3, ms(t0, 13), |_, _| panic!("already acked")));
        // A second PUBACK of the same message (original and resend) counts once.
        assert!(window.puback(4, ms(t0, 14), |_, _| {}));
        assert!(!window.puback(4, ms(t0, 15), |_, _| panic!("settled once")));
        assert!(window.is_empty());
        // Never sent: nothing to settle.
        assert!(!window.puback(99, ms(t0, 15), |_, _| panic!("never sent")));
    }

    #[test]
    fn resends_skip_what_a_puback_settled() {
        let t0 = Instant::now();
        let mut window = window_with(t0, 1..=3);
        assert!(window.puback(2, ms(t0, 5), |_, _| {}));
        let mut sent = Vec::new();
        assert_eq!(window.resend_all(ms(t0, 50), |seq, _| sent.push(seq)), 2);
        assert_eq!(sent, [1, 3]);
        sent.clear();
        assert_eq!(
            window.resend_overdue(ms(t0, 150), TIMEOUT, |seq, _| sent.push(seq)),
            2
        );
        assert_eq!(sent, [1, 3]);
    }

    #[test]
    fn a_resend_keeps_the_first_send_for_latency() {
        let t0 = Instant::now();
        let mut window = window_with(t0, [1, 2]);
        assert_eq!(window.resend_overdue(ms(t0, 500), TIMEOUT, |_, _| {}), 2);
        let mut latency = Duration::ZERO;
        window.ack(1, ms(t0, 600), |_, _, d| latency = d);
        assert_eq!(latency, Duration::from_millis(599));
        window.puback(2, ms(t0, 600), |_, d| latency = d);
        assert_eq!(latency, Duration::from_millis(598));
    }

    #[test]
    fn only_overdue_messages_are_resent() {
        let t0 = Instant::now();
        let mut window = window_with(t0, 1..=4);
        assert_eq!(window.next_resend_at(TIMEOUT), Some(ms(t0, 101)));
        let mut sent = Vec::new();
        let n = window.resend_overdue(ms(t0, 102), TIMEOUT, |seq, p| sent.push((seq, p.clone())));
        assert_eq!(n, 2);
        assert_eq!(sent, [(1, Bytes::from("1")), (2, Bytes::from("2"))]);
        // Their timers restarted; seq 3 is next.
        assert_eq!(window.next_resend_at(TIMEOUT), Some(ms(t0, 103)));
        assert_eq!(window.resend_overdue(ms(t0, 102), TIMEOUT, |_, _| {}), 0);
    }

    #[test]
    fn reconnect_resends_everything_and_restarts_timers() {
        let t0 = Instant::now();
        let mut window = window_with(t0, 1..=3);
        let mut count = 0;
        assert_eq!(window.resend_all(ms(t0, 50), |_, _| count += 1), 3);
        assert_eq!(count, 3);
        assert_eq!(window.next_resend_at(TIMEOUT), Some(ms(t0, 150)));
    }

    #[test]
    fn the_window_bounds_what_is_outstanding() {
        let t0 = Instant::now();
        let mut window = window_with(t0, 1..=7);
        assert!(window.has_room());
        window.push(8, Bytes::new(), t0);
        assert!(!window.has_room());
        assert!(UnackedWindow::new(1).next_resend_at(TIMEOUT).is_none());
    }
}
