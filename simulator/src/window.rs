//! A meter's unacked messages: what it must keep until the service says they are
//! durable, and when to send them again. Pure state — time is passed in and sending
//! is a callback — so the reliability rules are unit-tested without a broker.
//!
//! Invariants:
//! - entries are in ascending `seq` (messages enter in seq order and only leave from
//!   the front, by a cumulative ack);
//! - at most `capacity` entries (the meter's window);
//! - every entry was offered to the broker at least once (`first_sent ≤ last_sent`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// One message waiting for its ack.
#[derive(Debug)]
struct Unacked {
    seq: u64,
    /// Encoded once; every resend shares it.
    payload: Bytes,
    /// Start of the publish→ack latency.
    first_sent: Instant,
    /// Start of the ack timeout.
    last_sent: Instant,
}

#[derive(Debug)]
pub(crate) struct UnackedWindow {
    entries: VecDeque<Unacked>,
    capacity: usize,
}

impl UnackedWindow {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity),
            capacity,
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
        debug_assert!(self.entries.back().is_none_or(|last| last.seq < seq));
        self.entries.push_back(Unacked {
            seq,
            payload,
            first_sent: now,
            last_sent: now,
        });
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
        while self
            .entries
            .front()
            .is_some_and(|front| front.seq <= watermark)
        {
            if let Some(entry) = self.entries.pop_front() {
                let latency = now.saturating_duration_since(entry.first_sent);
                cleared(entry.seq, entry.payload, latency);
                count += 1;
            }
        }
        count
    }

    /// Sends again every message unacked for `timeout` since its last send. Returns
    /// how many were resent.
    pub(crate) fn resend_overdue(
        &mut self,
        now: Instant,
        timeout: Duration,
        mut send: impl FnMut(&Bytes),
    ) -> usize {
        let mut resent = 0;
        for entry in &mut self.entries {
            if now.saturating_duration_since(entry.last_sent) >= timeout {
                send(&entry.payload);
                entry.last_sent = now;
                resent += 1;
            }
        }
        resent
    }

    /// Sends every unacked message again (after a reconnect: the new session knows
    /// nothing of them). Returns how many were resent.
    pub(crate) fn resend_all(&mut self, now: Instant, mut send: impl FnMut(&Bytes)) -> usize {
        for entry in &mut self.entries {
            send(&entry.payload);
            entry.last_sent = now;
        }
        self.entries.len()
    }

    /// When the next message becomes overdue, if any is unacked.
    pub(crate) fn next_resend_at(&self, timeout: Duration) -> Option<Instant> {
        self.entries.iter().map(|e| e.last_sent + timeout).min()
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
    fn a_resend_keeps_the_first_send_for_latency() {
        let t0 = Instant::now();
        let mut window = window_with(t0, [1]);
        assert_eq!(window.resend_overdue(ms(t0, 500), TIMEOUT, |_| {}), 1);
        let mut latency = Duration::ZERO;
        window.ack(1, ms(t0, 600), |_, _, d| latency = d);
        assert_eq!(latency, Duration::from_millis(599));
    }

    #[test]
    fn only_overdue_messages_are_resent() {
        let t0 = Instant::now();
        let mut window = window_with(t0, 1..=4);
        assert_eq!(window.next_resend_at(TIMEOUT), Some(ms(t0, 101)));
        let mut sent = Vec::new();
        let n = window.resend_overdue(ms(t0, 102), TIMEOUT, |p| sent.push(p.clone()));
        assert_eq!(n, 2);
        assert_eq!(sent, [Bytes::from("1"), Bytes::from("2")]);
        // Their timers restarted; seq 3 is next.
        assert_eq!(window.next_resend_at(TIMEOUT), Some(ms(t0, 103)));
        assert_eq!(window.resend_overdue(ms(t0, 102), TIMEOUT, |_| {}), 0);
    }

    #[test]
    fn reconnect_resends_everything_and_restarts_timers() {
        let t0 = Instant::now();
        let mut window = window_with(t0, 1..=3);
        let mut count = 0;
        assert_eq!(window.resend_all(ms(t0, 50), |_| count += 1), 3);
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
