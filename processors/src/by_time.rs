//! Finding a time in a meter's window, newest end first.
//!
//! VEE's window of raw reads, alerting's window rows and billing's open reads are
//! kept ascending by `ts` and hold up to a few hundred entries a meter (three days
//! of fifteen-minute reads). Data mostly arrives in order, so a new `ts` mostly
//! lands after the last entry: looking there first spares a binary search through a
//! window that is rarely in the CPU's cache (a shard holds thousands of them), and
//! gives the same answer as the search. The three are deques: entries settle off the
//! front a message's worth at a time, where a `Vec` moved the whole window down for
//! each message.

use std::collections::VecDeque;

/// Items sorted ascending by a time key.
pub(crate) trait ByTime {
    type Item;

    /// Where the item with key `ts` is (`Ok`), or where it would be inserted to keep
    /// the order (`Err`), as `binary_search_by_key` answers; after the last item
    /// without a search.
    fn find_time(&self, ts: i64, key: impl Fn(&Self::Item) -> i64) -> Result<usize, usize>;

    /// How many items have a key below `ts`, as `partition_point` answers; all of
    /// them without a search when the last one does.
    fn count_before(&self, ts: i64, key: impl Fn(&Self::Item) -> i64) -> usize;
}

impl<T> ByTime for [T] {
    type Item = T;

    fn find_time(&self, ts: i64, key: impl Fn(&T) -> i64) -> Result<usize, usize> {
        match self.last() {
            Some(last) if key(last) < ts => Err(self.len()),
            _ => self.binary_search_by_key(&ts, key),
        }
    }

    fn count_before(&self, ts: i64, key: impl Fn(&T) -> i64) -> usize {
        match self.last() {
            Some(last) if key(last) < ts => self.len(),
            _ => self.partition_point(|item| key(item) < ts),
        }
    }
}

impl<T> ByTime for VecDeque<T> {
    type Item = T;

    fn find_time(&self, ts: i64, key: impl Fn(&T) -> i64) -> Result<usize, usize> {
        match self.back() {
            Some(last) if key(last) < ts => Err(self.len()),
            _ => self.binary_search_by_key(&ts, key),
        }
    }

    fn count_before(&self, ts: i64, key: impl Fn(&T) -> i64) -> usize {
        match self.back() {
            Some(last) if key(last) < ts => self.len(),
            _ => self.partition_point(|item| key(item) < ts),
        }
    }
}

/// Inserts `item` at `index` as [`VecDeque::insert`] does, after the last item —
/// where data arriving in order lands — as a plain push (`insert` there still runs
/// its general wrap-around copy).
pub(crate) fn insert_at<T>(items: &mut VecDeque<T>, index: usize, item: T) {
    if index == items.len() {
        items.push_back(item);
    } else {
        items.insert(index, item);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Ascending distinct keys, and the same keys in a deque that dropped its oldest
    /// entries first (wrapped around, as a window that settled some is).
    fn windows() -> impl Strategy<Value = (Vec<i64>, VecDeque<i64>)> {
        (proptest::collection::vec(-50i64..50, 0..40), 0usize..10).prop_map(
            |(mut keys, dropped)| {
                keys.sort_unstable();
                keys.dedup();
                let mut deque: VecDeque<i64> = (0..dropped as i64).map(|k| k - 1000).collect();
                deque.extend(keys.iter().copied());
                deque.drain(..dropped);
                (keys, deque)
            },
        )
    }

    proptest! {
        /// Same answers as the searches they stand for, for a slice and a deque, at a
        /// random time and at every key and its neighbours.
        #[test]
        fn answers_as_the_searches_do((keys, deque) in windows(), ts in -60i64..60) {
            let id = |k: &i64| *k;
            let times = keys.iter().flat_map(|k| [k - 1, *k, k + 1]).chain([ts]);
            for ts in times {
                let (found, before) = (keys.binary_search(&ts), keys.partition_point(|k| *k < ts));
                prop_assert_eq!(keys.find_time(ts, id), found);
                prop_assert_eq!(keys.count_before(ts, id), before);
                prop_assert_eq!(deque.find_time(ts, id), found);
                prop_assert_eq!(deque.count_before(ts, id), before);
            }
        }

        /// Where a time's search puts it, `insert_at` leaves the deque as `insert`
        /// does, wrapped around or not, at the back or anywhere before it.
        #[test]
        fn insert_at_inserts_as_insert_does((_, mut deque) in windows(), ts in -60i64..60) {
            for ts in [ts, 100] {
                let at = deque.find_time(ts, |k| *k).unwrap_or_else(|at| at);
                let mut expected = deque.clone();
                expected.insert(at, ts);
                insert_at(&mut deque, at, ts);
                prop_assert_eq!(&deque, &expected);
            }
        }
    }
}
