//! The newest chunk of each meter, kept in memory beside the `readings` keyspace, so
//! that the common write — a meter's next message, readings newer than any it
//! stored — goes after that chunk without reading the store: appended to it, or as a
//! chunk of its own when it is full or the readings begin a later day (the range
//! read of a merge was ~11 % of a group commit's instructions and, once the chunk's
//! day is flushed out of the memtables, a block decode too).
//!
//! A [`Tail`] is exactly the stored chunk: the meter's newest chunk (no chunk of the
//! meter has a later key), under the same key, with the same bytes. It is kept so by
//! whoever holds the writer lock, which guards [`Tails`]:
//! - a write stages its updates ([`TailUpdate`]) and applies them only once its batch
//!   has committed (a failed commit leaves the tails as the store is);
//! - a write that goes after the tail hands on the last chunk it staged; one that
//!   merged hands on the last chunk it staged or kept only when no chunk of the meter
//!   lies beyond its newest edit (one more seek) — when one does, it did not touch
//!   the tail, and when it left its day empty the meter is forgotten if that day was
//!   the tail's;
//! - the retention sweep forgets every meter whose chunks it rewrites;
//! - a reopened store starts with none.
//!
//! At most [`MAX_TAILS`] meters are held (~1–2 KiB each: a chunk of a day's
//! fifteen-minute reads, so up to ~130 MiB); past that, a meter not held is written the
//! reading way. The first meters written keep their places (no eviction): a tail is
//! only given up when its meter's chunks change under it.

use fjall::{UserKey, UserValue};
use foldhash::HashMap;

/// Most meters whose tail is held.
pub(super) const MAX_TAILS: usize = 65_536;

/// A chunk as stored: its key, its first `ts` (from the key) and its value.
#[derive(Clone, Debug)]
pub(super) struct StoredChunk {
    pub(super) key: UserKey,
    pub(super) first: i64,
    pub(super) value: UserValue,
}

/// The newest chunk of a meter, in `day` (a [`super::chunks::bucket`]).
#[derive(Clone, Debug)]
pub(super) struct Tail {
    pub(super) day: i64,
    pub(super) chunk: StoredChunk,
}

/// What a staged write does to its meter's tail, once committed.
#[derive(Debug)]
pub(super) enum TailUpdate {
    /// The write left the meter's newest chunk alone (not staged).
    Keep,
    /// The meter's newest chunk is now this.
    Set(Tail),
    /// The write left `day` without chunks, and none beyond: the meter's newest
    /// chunk, if any, is of an earlier day.
    Forget { day: i64 },
}

/// A write's staged tail updates, in staging order: the meter's `readings` key
/// prefix and what becomes of its tail.
pub(super) type TailUpdates = Vec<(Box<[u8]>, TailUpdate)>;

/// The held tails, by the meter's `readings` key prefix.
#[derive(Default)]
pub(super) struct Tails {
    by_meter: HashMap<Box<[u8]>, Tail>,
}

impl Tails {
    /// The newest chunk of the meter with `prefix`, if held.
    pub(super) fn newest(&self, prefix: &[u8]) -> Option<&Tail> {
        self.by_meter.get(prefix)
    }

    /// Forgets the meter's tail (its chunks are being rewritten).
    pub(super) fn forget(&mut self, prefix: &[u8]) {
        self.by_meter.remove(prefix);
    }

    /// Applies a committed write's updates, in the order staged (a write staged
    /// them day by day, oldest first). A forget of a later day than the tail's
    /// leaves it: that day had no chunk before and has none now. (A tail of an
    /// earlier day than the one held does not replace it.)
    pub(super) fn apply(&mut self, updates: TailUpdates) {
        for (prefix, update) in updates {
            match update {
                TailUpdate::Keep => {}
                TailUpdate::Forget { day } => {
                    if self.by_meter.get(&prefix).is_some_and(|t| t.day == day) {
                        self.by_meter.remove(&prefix);
                    }
                }
                TailUpdate::Set(tail) => {
                    let room = self.by_meter.len() < MAX_TAILS;
                    match self.by_meter.get_mut(&prefix) {
                        Some(held) if held.day <= tail.day => *held = tail,
                        Some(_) => {}
                        None if room => {
                            self.by_meter.insert(prefix, tail);
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// Meters whose tail is held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_meter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(day: i64, first: i64) -> Tail {
        Tail {
            day,
            chunk: StoredChunk {
                key: UserKey::from(first.to_be_bytes().as_slice()),
                first,
                value: UserValue::from(b"chunk".as_slice()),
            },
        }
    }

    fn prefix(name: &str) -> Box<[u8]> {
        name.as_bytes().into()
    }

    #[test]
    fn a_later_day_replaces_an_earlier_one_and_not_the_other_way() {
        let mut tails = Tails::default();
        tails.apply(vec![(prefix("m1"), TailUpdate::Set(tail(10, 100)))]);
        tails.apply(vec![(prefix("m1"), TailUpdate::Set(tail(9, 90)))]);
        let newest = |tails: &Tails| tails.newest(b"m1").map(|t| (t.day, t.chunk.first));
        assert_eq!(newest(&tails), Some((10, 100)));
        tails.apply(vec![(prefix("m1"), TailUpdate::Set(tail(11, 110)))]);
        assert_eq!(newest(&tails), Some((11, 110)), "one chunk per meter");
    }

    #[test]
    fn a_forget_takes_out_only_the_day_it_names() {
        let mut tails = Tails::default();
        tails.apply(vec![
            (prefix("m1"), TailUpdate::Set(tail(10, 100))),
            (prefix("m2"), TailUpdate::Set(tail(10, 100))),
        ]);
        tails.apply(vec![
            (prefix("m1"), TailUpdate::Forget { day: 9 }),
            (prefix("m2"), TailUpdate::Forget { day: 10 }),
            (prefix("m1"), TailUpdate::Keep),
        ]);
        assert!(tails.newest(b"m1").is_some());
        assert!(tails.newest(b"m2").is_none());
        tails.forget(b"m1");
        assert_eq!(tails.len(), 0);
    }

    #[test]
    fn no_more_than_the_cap_is_held() {
        let mut tails = Tails::default();
        let updates = (0..MAX_TAILS + 10)
            .map(|i| (prefix(&format!("m{i}")), TailUpdate::Set(tail(1, 1))))
            .collect();
        tails.apply(updates);
        assert_eq!(tails.len(), MAX_TAILS);
        // A held meter still moves on.
        tails.apply(vec![(prefix("m0"), TailUpdate::Set(tail(2, 5)))]);
        assert_eq!(tails.newest(b"m0").map(|t| t.chunk.first), Some(5));
    }
}
