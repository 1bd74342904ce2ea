//! A meter's device statuses over its late window, one per reading time, kept as
//! runs: a device reporting at a steady interval with nothing new — nearly every
//! one — makes statuses that differ from the one before by the same time and seq
//! step and say the same, and a run holds any number of those in one entry. So a
//! window costs memory and persisted bytes per change, not per message, and a
//! meter's state stays small whether its window holds 12 statuses or 288.
//!
//! The log is a sequence of [`StatusPoint`]s in ascending `ts`; the runs are how it
//! is held (two logs of the same statuses are equal whatever their runs). Appending
//! a newer status (the usual case) extends the last run or starts one; a status
//! landing inside the log rebuilds it, which is rare and bounded by the window.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

/// What one message said of the device at a reading time — the `ts` of its newest
/// read: its flags and battery level. Alerting keeps the late window's statuses
/// (persisted: statuses are not stored elsewhere) and folds them with the rows in
/// reading time. At one `ts` the message of the greater seq is the device's word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusPoint {
    pub ts: i64,
    /// Seq of the message that said it.
    pub seq: u64,
    /// Its flags, as a [`Flags`](crate::Flags) bitset.
    pub flags: u32,
    /// Battery level, percent, when reported.
    pub battery: Option<u8>,
}

/// Most statuses a persisted log may hold: far above any window (a corrupt record
/// must not expand without bound).
const MAX_PERSISTED: u64 = 4_096;

/// Statuses saying the same, each a fixed step of time and seq after the one before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Run {
    first: StatusPoint,
    step_ts: i64,
    step_seq: u64,
    /// Statuses in the run, at least 1.
    len: u32,
}

impl Run {
    fn of(first: StatusPoint) -> Self {
        Run {
            first,
            step_ts: 0,
            step_seq: 0,
            len: 1,
        }
    }

    /// The run's `i`-th status (`i < len`).
    fn at(&self, i: u32) -> StatusPoint {
        StatusPoint {
            ts: self.first.ts + i64::from(i) * self.step_ts,
            seq: self
                .first
                .seq
                .wrapping_add(u64::from(i).wrapping_mul(self.step_seq)),
            ..self.first
        }
    }

    fn last(&self) -> StatusPoint {
        self.at(self.len - 1)
    }

    /// Takes `next` (newer than the run's last) in when it continues the run.
    fn extend(&mut self, next: &StatusPoint) -> bool {
        let last = self.last();
        if (next.flags, next.battery) != (self.first.flags, self.first.battery) {
            return false;
        }
        let Some(step_ts) = next.ts.checked_sub(last.ts) else {
            return false;
        };
        let step_seq = next.seq.wrapping_sub(last.seq);
        if self.len > 1 && (step_ts, step_seq) != (self.step_ts, self.step_seq) {
            return false;
        }
        (self.step_ts, self.step_seq) = (step_ts, step_seq);
        self.len += 1;
        true
    }

    /// The index of its first status at or after `ts`, if any.
    fn first_from(&self, ts: i64) -> Option<u32> {
        if ts <= self.first.ts {
            return Some(0);
        }
        if self.len == 1 {
            return None;
        }
        // `ts` is after the first status, and the step positive.
        let i = ts
            .abs_diff(self.first.ts)
            .div_ceil(self.step_ts.unsigned_abs());
        u32::try_from(i).ok().filter(|i| *i < self.len)
    }
}

/// A meter's device statuses by `ts`, one per `ts` (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct StatusLog {
    runs: Vec<Run>,
}

impl PartialEq for StatusLog {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for StatusLog {}

impl StatusLog {
    /// Statuses held (a sum over the runs: a window holds a few).
    pub fn len(&self) -> usize {
        self.runs.iter().map(|run| run.len as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The statuses in ascending `ts`.
    pub fn iter(&self) -> impl Iterator<Item = StatusPoint> + '_ {
        self.runs
            .iter()
            .flat_map(|run| (0..run.len).map(move |i| run.at(i)))
    }

    /// The statuses at or after `ts`, ascending.
    pub fn from_ts(&self, ts: i64) -> impl Iterator<Item = StatusPoint> + '_ {
        let start = self.runs.partition_point(|run| run.last().ts < ts);
        let rest = &self.runs[start..];
        let skip = rest.first().and_then(|run| run.first_from(ts)).unwrap_or(0);
        rest.iter().enumerate().flat_map(move |(k, run)| {
            let from = if k == 0 { skip } else { 0 };
            (from..run.len).map(move |i| run.at(i))
        })
    }

    pub fn last(&self) -> Option<StatusPoint> {
        self.runs.last().map(Run::last)
    }

    /// The `index`-th status, ascending.
    pub fn nth(&self, mut index: usize) -> Option<StatusPoint> {
        for run in &self.runs {
            let len = run.len as usize;
            if index < len {
                return Some(run.at(index as u32));
            }
            index -= len;
        }
        None
    }

    /// Takes `status` in at its `ts`: it replaces one there of a lower seq (an older
    /// message's word), and one of a greater seq keeps its place. Returns whether
    /// the log changed.
    pub fn insert(&mut self, status: StatusPoint) -> bool {
        match self.last() {
            None => {}
            Some(last) if last.ts < status.ts => {}
            Some(_) => return self.insert_inside(status),
        }
        self.push(status);
        true
    }

    /// Appends a status newer than every one held.
    fn push(&mut self, status: StatusPoint) {
        if let Some(run) = self.runs.last_mut()
            && run.extend(&status)
        {
            return;
        }
        self.runs.push(Run::of(status));
    }

    /// A status at or before the newest: the log is rebuilt around it (rare: a
    /// late or repeated message).
    fn insert_inside(&mut self, status: StatusPoint) -> bool {
        let mut all: Vec<StatusPoint> = self.iter().collect();
        match all.binary_search_by_key(&status.ts, |s| s.ts) {
            Ok(i) if all[i].seq > status.seq || all[i] == status => return false,
            Ok(i) => all[i] = status,
            Err(i) => all.insert(i, status),
        }
        *self = all.into_iter().collect();
        true
    }

    /// Drops the statuses at or before `ts`.
    pub fn drop_through(&mut self, ts: i64) {
        let gone = self.runs.partition_point(|run| run.last().ts <= ts);
        self.runs.drain(..gone);
        if let Some(run) = self.runs.first_mut()
            && let Some(keep) = run
                .first_from(ts.saturating_add(1))
                .filter(|keep| *keep > 0)
        {
            run.first = run.at(keep);
            run.len -= keep;
        }
    }
}

impl FromIterator<StatusPoint> for StatusLog {
    /// From statuses in strictly ascending `ts`.
    fn from_iter<I: IntoIterator<Item = StatusPoint>>(statuses: I) -> Self {
        let mut log = StatusLog::default();
        for status in statuses {
            log.push(status);
        }
        log
    }
}

impl Serialize for StatusLog {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.runs.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for StatusLog {
    /// Refuses runs that are empty, go back in time, overlap or hold more than a
    /// window could.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let runs = Vec::<Run>::deserialize(deserializer)?;
        let mut total: u64 = 0;
        let mut before: Option<i64> = None;
        for run in &runs {
            total += u64::from(run.len);
            let span = i64::from(run.len.saturating_sub(1)).checked_mul(run.step_ts);
            let end = span.and_then(|span| run.first.ts.checked_add(span));
            let valid = run.len > 0
                && (run.len == 1 || run.step_ts > 0)
                && end.is_some()
                && before.is_none_or(|before| run.first.ts > before);
            if !valid || total > MAX_PERSISTED {
                return Err(D::Error::custom("malformed device status log"));
            }
            before = end;
        }
        Ok(StatusLog { runs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn point(ts: i64, seq: u64, flags: u32, battery: Option<u8>) -> StatusPoint {
        StatusPoint {
            ts,
            seq,
            flags,
            battery,
        }
    }

    /// Three days of hourly clean statuses are one run; a flag and a battery change
    /// add a run each, and the log persists in a few dozen bytes.
    #[test]
    fn a_steady_device_is_one_run() {
        let hourly =
            |hour: i64, flags, battery| point(hour * 3_600_000, 500 + hour as u64, flags, battery);
        let mut log: StatusLog = (0..72).map(|h| hourly(h, 0, Some(87))).collect();
        assert_eq!((log.len(), log.runs.len()), (72, 1));
        log.insert(hourly(72, 8, Some(87)));
        log.insert(hourly(73, 0, Some(86)));
        log.insert(hourly(74, 0, Some(86)));
        assert_eq!((log.len(), log.runs.len()), (75, 3));
        let bytes = crate::codec::binary::encode_record(&log);
        assert!(bytes.len() < 80, "{} bytes", bytes.len());
    }

    /// A late status is placed by its time; at one time the greater seq's word
    /// stands; dropping through a time keeps the rest.
    #[test]
    fn statuses_keep_their_time_order_and_the_newest_word() {
        let mut log: StatusLog = [10, 20, 30, 40]
            .map(|ts| point(ts, ts as u64, 0, None))
            .into_iter()
            .collect();
        assert!(log.insert(point(25, 99, 8, None)));
        assert!(!log.insert(point(30, 1, 8, None)), "an older word at 30");
        assert!(log.insert(point(30, 31, 8, None)), "a newer word at 30");
        let ts: Vec<(i64, u32)> = log.iter().map(|s| (s.ts, s.flags)).collect();
        assert_eq!(ts, [(10, 0), (20, 0), (25, 8), (30, 8), (40, 0)]);
        assert_eq!(log.from_ts(26).map(|s| s.ts).collect::<Vec<_>>(), [30, 40]);
        assert_eq!(log.nth(2).map(|s| s.ts), Some(25));
        log.drop_through(25);
        assert_eq!(log.iter().map(|s| s.ts).collect::<Vec<_>>(), [30, 40]);
        assert_eq!(log.len(), 2);
    }

    /// A persisted log whose runs go back in time or hold no status is refused.
    #[test]
    fn a_malformed_log_is_refused() {
        let decode =
            |runs: &[Run]| crate::codec::binary::decode_body::<StatusLog>(&bincode_body(runs));
        let run = |ts, len, step_ts| Run {
            first: point(ts, 1, 0, None),
            step_ts,
            step_seq: 1,
            len,
        };
        assert!(decode(&[run(0, 3, 10), run(30, 1, 0)]).is_ok());
        assert!(
            decode(&[run(0, 3, 10), run(20, 1, 0)]).is_err(),
            "overlapping"
        );
        assert!(decode(&[run(0, 0, 10)]).is_err(), "empty");
        assert!(decode(&[run(0, 2, 0)]).is_err(), "no step");
        assert!(decode(&[run(0, 5_000, 10)]).is_err(), "too many");
        assert!(
            decode(&[run(i64::MAX - 5, 3, 10)]).is_err(),
            "past the end of time"
        );
    }

    fn bincode_body(runs: &[Run]) -> Vec<u8> {
        crate::codec::binary::encode_record(&runs.to_vec())[1..].to_vec()
    }

    proptest! {
        /// No persisted log makes it panic: any runs decode or are refused, and a
        /// decoded one takes any status, query and drop.
        #[test]
        fn any_persisted_log_is_refused_or_usable(
            runs in proptest::collection::vec(
                (any::<i64>(), any::<u64>(), any::<i64>(), any::<u64>(), 0u32..6),
                0..6,
            ),
            status in (any::<i64>(), any::<u64>(), 0u32..4),
            at in any::<i64>(),
        ) {
            let runs: Vec<Run> = runs
                .into_iter()
                .map(|(ts, seq, step_ts, step_seq, len)| Run {
                    first: point(ts, seq, 0, None),
                    step_ts,
                    step_seq,
                    len,
                })
                .collect();
            let decoded = crate::codec::binary::decode_body::<StatusLog>(&bincode_body(&runs));
            if let Ok(mut log) = decoded {
                prop_assert_eq!(log.iter().count(), log.len());
                let _ = log.from_ts(at).count();
                let _ = log.nth(at.unsigned_abs() as usize % 8);
                log.insert(point(status.0, status.1, status.2, None));
                log.drop_through(at);
                prop_assert_eq!(log.iter().count(), log.len());
            }
        }
    }

    proptest! {
        /// Model: a sorted list, one status per time, the greater seq's. Any
        /// sequence of insertions and drops gives the model's statuses, and the log
        /// reads back from its record as it was.
        #[test]
        fn the_log_is_its_statuses(
            ops in proptest::collection::vec(
                prop_oneof![
                    4 => (0i64..60, 0u64..8, 0u32..3, proptest::option::of(8u8..11)).prop_map(
                        |(t, seq, flags, battery)| (Some(point(t * 10, seq, flags, battery)), 0)
                    ),
                    1 => (0i64..600).prop_map(|ts| (None, ts)),
                ],
                0..80,
            ),
        ) {
            let mut log = StatusLog::default();
            let mut model: Vec<StatusPoint> = Vec::new();
            for (status, drop_ts) in ops {
                match status {
                    Some(status) => {
                        let changed = match model.binary_search_by_key(&status.ts, |s| s.ts) {
                            Ok(i) if model[i].seq > status.seq || model[i] == status => false,
                            Ok(i) => { model[i] = status; true }
                            Err(i) => { model.insert(i, status); true }
                        };
                        prop_assert_eq!(log.insert(status), changed);
                    }
                    None => {
                        model.retain(|s| s.ts > drop_ts);
                        log.drop_through(drop_ts);
                    }
                }
                prop_assert_eq!(log.iter().collect::<Vec<_>>(), model.clone());
                prop_assert_eq!(log.len(), model.len());
                prop_assert_eq!(log.last(), model.last().copied());
                for ts in [0, 55, 300] {
                    let from: Vec<_> = model.iter().copied().filter(|s| s.ts >= ts).collect();
                    prop_assert_eq!(log.from_ts(ts).collect::<Vec<_>>(), from);
                }
                let back: StatusLog = crate::codec::binary::decode_body(
                    &crate::codec::binary::encode_record(&log)[1..],
                ).unwrap();
                prop_assert_eq!(&back, &log);
            }
        }
    }
}
