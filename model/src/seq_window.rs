//! Per-meter message dedupe and the ack watermark (DESIGN §3).
//!
//! W — the watermark — is the highest seq such that every seq from the first one seen
//! up to W has been accepted (or deliberately skipped, see below). Messages may arrive
//! out of order: those above W+1 wait in `ahead` until the gap below them fills, and W
//! only moves over a contiguous run.
//!
//! - A message with seq ≤ W, or already waiting in `ahead`, is a duplicate.
//! - A gap that stays open longer than the resend window is skipped: W moves past it
//!   and the caller counts and logs the skipped range. Without this rule one lost
//!   device counter would stall a meter's acks forever.
//! - `ahead` is bounded ([`MAX_AHEAD`]): a meter that runs further ahead than that has
//!   its oldest gap skipped at once, so a misbehaving device cannot grow memory.
//!
//! The window only says which seqs were *accepted*; the shard worker acks a W only once
//! the batch that carries it is durable. It is persisted in `meter_state` with the
//! readings it reflects, so after a restart a resend is recognised as a duplicate.
//! Where W starts for a meter seen for the first time: a device counts from seq 1, so
//! a first seq of at most [`FRESH_DEVICE_MAX_SEQ`] is a new device whose first
//! messages were overtaken (a gateway or a reconnect reordered them). W starts at 0
//! and the seqs below it are an ordinary gap: acks wait for them (or for the resend
//! window), so an ack never covers a message that was not stored. A larger first seq
//! is a device with a history elsewhere (a migration): W starts at it, and anything
//! older is taken as delivered before meterflow knew the meter.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Most out-of-order messages remembered per meter. Meters send a few messages an
/// hour; 64 covers days of reordering while keeping a meter's state a few hundred
/// bytes.
pub const MAX_AHEAD: usize = 64;

/// Highest first seq that still counts as a new device (see the module docs): as
/// many as `ahead` can hold, so the gap below it never overflows at once.
pub const FRESH_DEVICE_MAX_SEQ: u64 = MAX_AHEAD as u64;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqWindow {
    /// The watermark W; `None` until the first message.
    watermark: Option<u64>,
    /// Accepted seqs above W+1, waiting for the gap below them to fill.
    ahead: BTreeSet<u64>,
    /// When (epoch ms, service clock) the current gap was first seen.
    gap_since_ms: Option<i64>,
}

/// What [`SeqWindow::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A seq not seen before: process and store it.
    New,
    /// Already accepted: answer with the watermark, do not process again.
    Duplicate,
}

/// A range of seqs `first..=last` given up on and skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SkippedGap {
    pub first: u64,
    pub last: u64,
}

impl SkippedGap {
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl SeqWindow {
    pub fn watermark(&self) -> Option<u64> {
        self.watermark
    }

    /// Highest seq accepted so far (above W when messages wait in `ahead`).
    pub fn highest(&self) -> Option<u64> {
        self.ahead.last().copied().or(self.watermark)
    }

    /// Whether a gap is open (messages wait above a missing seq).
    pub fn has_gap(&self) -> bool {
        !self.ahead.is_empty()
    }

    /// Decides whether `seq` is new, and advances W when it can. Gaps skipped because
    /// `ahead` was full are pushed onto `skipped`.
    pub fn admit(&mut self, seq: u64, now_ms: i64, skipped: &mut Vec<SkippedGap>) -> Admission {
        let Some(w) = self.watermark else {
            if (2..=FRESH_DEVICE_MAX_SEQ).contains(&seq) {
                self.watermark = Some(0);
                self.ahead.insert(seq);
                self.gap_since_ms = Some(now_ms);
            } else {
                self.watermark = Some(seq);
            }
            return Admission::New;
        };
        if seq <= w || self.ahead.contains(&seq) {
            return Admission::Duplicate;
        }
        if seq == w + 1 {
            self.watermark = Some(seq);
            self.absorb_contiguous(now_ms);
        } else {
            self.ahead.insert(seq);
            self.gap_since_ms.get_or_insert(now_ms);
            if self.ahead.len() > MAX_AHEAD {
                skipped.extend(self.skip_gap(now_ms));
            }
        }
        Admission::New
    }

    /// Skips the lowest gap when it has been open longer than `resend_window_ms`.
    pub fn expire_gap(&mut self, now_ms: i64, resend_window_ms: i64) -> Option<SkippedGap> {
        let since = self.gap_since_ms?;
        if now_ms.saturating_sub(since) < resend_window_ms {
            return None;
        }
        self.skip_gap(now_ms)
    }

    fn skip_gap(&mut self, now_ms: i64) -> Option<SkippedGap> {
        let w = self.watermark?;
        let next = *self.ahead.first()?;
        self.watermark = Some(next - 1);
        self.absorb_contiguous(now_ms);
        Some(SkippedGap {
            first: w + 1,
            last: next - 1,
        })
    }

    /// Moves W over every seq in `ahead` that is now contiguous with it.
    fn absorb_contiguous(&mut self, now_ms: i64) {
        let mut w = self.watermark.unwrap_or(0);
        while self.ahead.first() == Some(&(w + 1)) {
            self.ahead.pop_first();
            w += 1;
        }
        self.watermark = Some(w);
        // A new gap (if any) starts being timed now.
        self.gap_since_ms = if self.ahead.is_empty() {
            None
        } else {
            Some(now_ms)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet as Set;

    fn admit(w: &mut SeqWindow, seq: u64) -> Admission {
        w.admit(seq, 0, &mut Vec::new())
    }

    #[test]
    fn in_order_moves_the_watermark() {
        let mut w = SeqWindow::default();
        for s in 100..110 {
            assert_eq!(admit(&mut w, s), Admission::New);
        }
        assert_eq!(w.watermark(), Some(109));
        assert_eq!(admit(&mut w, 105), Admission::Duplicate);
        // A device with a history: what came before its first message is not awaited.
        assert_eq!(admit(&mut w, 99), Admission::Duplicate);
    }

    #[test]
    fn a_new_device_overtaken_by_its_second_message_waits_for_the_first() {
        let mut w = SeqWindow::default();
        assert_eq!(admit(&mut w, 2), Admission::New);
        assert_eq!(
            w.watermark(),
            Some(0),
            "seq 1 is not stored: no ack may cover it"
        );
        assert!(w.has_gap());
        assert_eq!(admit(&mut w, 1), Admission::New);
        assert_eq!(w.watermark(), Some(2));
        assert!(!w.has_gap());
        // If seq 1 never comes, the gap is skipped after the resend window.
        let mut lost = SeqWindow::default();
        lost.admit(FRESH_DEVICE_MAX_SEQ, 1_000, &mut Vec::new());
        assert_eq!(
            lost.expire_gap(601_000, 600_000),
            Some(SkippedGap {
                first: 1,
                last: FRESH_DEVICE_MAX_SEQ - 1
            })
        );
        assert_eq!(lost.watermark(), Some(FRESH_DEVICE_MAX_SEQ));
    }

    #[test]
    fn out_of_order_waits_for_the_gap() {
        let mut w = SeqWindow::default();
        admit(&mut w, 1);
        assert_eq!(admit(&mut w, 3), Admission::New);
        assert_eq!(w.watermark(), Some(1));
        assert_eq!(admit(&mut w, 3), Admission::Duplicate);
        assert_eq!(admit(&mut w, 2), Admission::New);
        assert_eq!(w.watermark(), Some(3));
        assert!(!w.has_gap());
    }

    #[test]
    fn a_gap_is_skipped_after_the_resend_window() {
        let mut w = SeqWindow::default();
        w.admit(1, 0, &mut Vec::new());
        w.admit(5, 1_000, &mut Vec::new());
        assert_eq!(w.expire_gap(500_000, 600_000), None);
        assert_eq!(
            w.expire_gap(601_000, 600_000),
            Some(SkippedGap { first: 2, last: 4 })
        );
        assert_eq!(w.watermark(), Some(5));
        // The late arrival of a skipped seq is now a duplicate.
        assert_eq!(admit(&mut w, 3), Admission::Duplicate);
    }

    #[test]
    fn ahead_is_bounded() {
        let mut w = SeqWindow::default();
        admit(&mut w, 0);
        let mut skipped = Vec::new();
        for s in 0..(MAX_AHEAD as u64 + 1) {
            w.admit(2 + 2 * s, 0, &mut skipped);
        }
        assert_eq!(skipped, vec![SkippedGap { first: 1, last: 1 }]);
        assert!(w.ahead.len() <= MAX_AHEAD);
    }

    proptest! {
        /// Model: without expiry and without overflowing `ahead`, W is the end of the
        /// contiguous run from where the window starts (0 for a new device, else the
        /// first seq), and a seq is new exactly once.
        #[test]
        fn matches_the_contiguous_run_model(
            first in 0u64..1000,
            offsets in proptest::collection::vec(0u64..40, 1..120),
        ) {
            let mut w = SeqWindow::default();
            let mut seen: Set<u64> = Set::new();
            let mut skipped = Vec::new();
            let mut first_seen = None;
            for off in offsets {
                let seq = first + off;
                let base = *first_seen.get_or_insert(
                    if (2..=FRESH_DEVICE_MAX_SEQ).contains(&seq) { 0 } else { seq },
                );
                let expected_new = seen.is_empty()
                    || (!seen.contains(&seq) && seq > model_watermark(base, &seen));
                let got = w.admit(seq, 0, &mut skipped);
                prop_assert_eq!(got == Admission::New, expected_new);
                if expected_new {
                    seen.insert(seq);
                }
                prop_assert_eq!(w.watermark(), Some(model_watermark(base, &seen)));
            }
            prop_assert!(skipped.is_empty());
        }
    }

    fn model_watermark(first: u64, seen: &Set<u64>) -> u64 {
        let mut w = first;
        while seen.contains(&(w + 1)) {
            w += 1;
        }
        w
    }
}
