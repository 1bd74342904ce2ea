//! Which offsets of the uplink log a processor may commit: only those below the first
//! uplink that is not yet durable (DESIGN §9, "offsets are committed after the store
//! write"). Uplinks of one partition are handed to the shards in offset order but
//! become durable in any order (they go to different shards, whose batches the sink
//! commits as they come); the commit point of a partition is the offset after the
//! longest run of durable uplinks from the first one dispatched.
//!
//! [`Book`] is the bookkeeping as a plain state machine; [`OffsetBook`] shares it
//! between the consumer thread (dispatch, commit, rebalance) and the sink (each
//! [`Completion`](crate::endpoint::outbox::Completion) of a log uplink marks its offset
//! done when its batch is durable, or abandoned when the pipeline stopped before).
//! An abandoned offset is never passed: the partition's next owner replays from it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A partition of the uplink log (Kafka's `i32`).
pub type Partition = i32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Pending,
    Done,
    Abandoned,
}

#[derive(Debug, Default)]
struct PartitionBook {
    /// Dispatched offsets not yet passed by the commit point, ascending.
    open: VecDeque<(i64, Mark)>,
    /// Offsets still waiting for their batch.
    pending: usize,
    /// The offset to commit (the next one to read), once one is known.
    commit_point: Option<i64>,
    /// The commit point last handed out by [`Book::take_commits`].
    taken: Option<i64>,
    /// Which ownership of the partition this is: a completion from an earlier one
    /// (released while its batch was still on its way) must not mark a replayed
    /// offset of this one.
    epoch: u64,
}

impl PartitionBook {
    fn mark(&mut self, offset: i64, mark: Mark) {
        let Ok(at) = self.open.binary_search_by_key(&offset, |(o, _)| *o) else {
            return;
        };
        if self.open[at].1 != Mark::Pending {
            return;
        }
        self.open[at].1 = mark;
        self.pending -= 1;
        while let Some(&(offset, Mark::Done)) = self.open.front() {
            self.open.pop_front();
            self.commit_point = Some(offset + 1);
        }
    }
}

/// Per partition, the dispatched offsets and how far they are durable.
#[derive(Debug, Default)]
pub struct Book {
    partitions: BTreeMap<Partition, PartitionBook>,
    epochs: u64,
}

impl Book {
    /// `offset` of `partition` is to be handed to a shard: the epoch its completion
    /// must name. Offsets of a partition arrive in increasing order; one at or below
    /// an earlier one (a replay after a seek) is `None` — that earlier one is already
    /// accounted for, so the uplink need not be dispatched again.
    pub fn dispatched(&mut self, partition: Partition, offset: i64) -> Option<u64> {
        let epochs = &mut self.epochs;
        let book = self.partitions.entry(partition).or_insert_with(|| {
            *epochs += 1;
            PartitionBook {
                epoch: *epochs,
                ..PartitionBook::default()
            }
        });
        let newest = book
            .open
            .back()
            .map(|(o, _)| *o)
            .or(book.commit_point.map(|c| c - 1));
        if newest.is_some_and(|newest| offset <= newest) {
            return None;
        }
        if book.open.is_empty() && book.commit_point.is_none() {
            // Everything before the first uplink read was committed by an earlier owner.
            book.commit_point = Some(offset);
        }
        book.open.push_back((offset, Mark::Pending));
        book.pending += 1;
        Some(book.epoch)
    }

    /// The uplink at `offset` is durable (stored, dead-lettered or a duplicate).
    pub fn completed(&mut self, at: Position) {
        self.mark(at, Mark::Done);
    }

    /// The uplink at `offset` will not be made durable here: the commit point stays
    /// below it for good.
    pub fn abandoned(&mut self, at: Position) {
        self.mark(at, Mark::Abandoned);
    }

    fn mark(&mut self, at: Position, mark: Mark) {
        if let Some(book) = self.partitions.get_mut(&at.partition)
            && book.epoch == at.epoch
        {
            book.mark(at.offset, mark);
        }
    }

    /// Uplinks of `partitions` still waiting for their batch.
    pub fn pending(&self, partitions: &[Partition]) -> usize {
        partitions
            .iter()
            .filter_map(|p| self.partitions.get(p))
            .map(|book| book.pending)
            .sum()
    }

    /// Commit points that moved since the last call, to commit now.
    pub fn take_commits(&mut self) -> Vec<(Partition, i64)> {
        self.partitions
            .iter_mut()
            .filter_map(|(partition, book)| {
                let point = book.commit_point?;
                (book.taken != Some(point)).then(|| {
                    book.taken = Some(point);
                    (*partition, point)
                })
            })
            .collect()
    }

    /// Forgets `partitions` (revoked), returning their final commit points.
    pub fn release(&mut self, partitions: &[Partition]) -> Vec<(Partition, i64)> {
        partitions
            .iter()
            .filter_map(|p| Some((*p, self.partitions.remove(p)?.commit_point?)))
            .collect()
    }

    /// Forgets every partition (shutdown), returning their final commit points.
    pub fn release_all(&mut self) -> Vec<(Partition, i64)> {
        let all: Vec<Partition> = self.partitions.keys().copied().collect();
        self.release(&all)
    }
}

/// The [`Book`] shared by the consumer thread and the sink.
#[derive(Debug, Default)]
pub struct OffsetBook {
    book: Mutex<Book>,
    /// Signalled whenever an offset is completed or abandoned.
    settled: Condvar,
}

impl OffsetBook {
    /// The book; a poisoned lock is used as it is (each operation leaves it whole).
    pub fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn completed(&self, at: Position) {
        self.lock().completed(at);
        self.settled.notify_all();
    }

    pub fn abandoned(&self, at: Position) {
        self.lock().abandoned(at);
        self.settled.notify_all();
    }

    /// Waits until no uplink of `partitions` waits for its batch, at most `timeout`;
    /// how many still wait.
    pub fn wait_drained(&self, partitions: &[Partition], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut book = self.lock();
        loop {
            let pending = book.pending(partitions);
            let left = deadline.saturating_duration_since(Instant::now());
            if pending == 0 || left.is_zero() {
                return pending;
            }
            book = self
                .settled
                .wait_timeout(book, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// One dispatched uplink of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub partition: Partition,
    pub offset: i64,
    /// From [`Book::dispatched`].
    pub epoch: u64,
}

/// Where a log uplink sits, so its completion can mark it.
#[derive(Debug)]
pub struct LogPosition {
    pub book: std::sync::Arc<OffsetBook>,
    pub at: Position,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(partition: Partition, offset: i64) -> Position {
        Position {
            partition,
            offset,
            epoch: 1,
        }
    }

    #[test]
    fn the_commit_point_stops_at_the_first_offset_not_durable() {
        let mut book = Book::default();
        for offset in 10..15 {
            assert_eq!(book.dispatched(0, offset), Some(1));
        }
        assert_eq!(book.take_commits(), vec![(0, 10)], "nothing durable yet");
        book.completed(at(0, 12));
        book.completed(at(0, 10));
        assert_eq!(book.take_commits(), vec![(0, 11)]);
        assert_eq!(book.take_commits(), vec![], "unchanged");
        book.completed(at(0, 11));
        book.abandoned(at(0, 13));
        book.completed(at(0, 14));
        assert_eq!(
            book.take_commits(),
            vec![(0, 13)],
            "never past an abandoned one"
        );
        assert_eq!(book.pending(&[0]), 0);
        assert_eq!(book.release(&[0]), vec![(0, 13)]);
        assert_eq!(book.take_commits(), vec![]);
    }

    #[test]
    fn replayed_offsets_and_unknown_partitions_change_nothing() {
        let mut book = Book::default();
        assert_eq!(book.dispatched(3, 5), Some(1));
        assert_eq!(book.dispatched(3, 5), None);
        assert_eq!(book.dispatched(3, 4), None);
        assert_eq!(book.pending(&[3]), 1);
        book.completed(at(7, 5));
        book.completed(at(3, 99));
        book.completed(at(3, 5));
        book.completed(at(3, 5));
        assert_eq!(book.pending(&[3, 7]), 0);
        assert_eq!(book.take_commits(), vec![(3, 6)]);
        assert_eq!(
            book.dispatched(3, 5),
            None,
            "below the commit point: already durable"
        );
        assert_eq!(book.release(&[3]), vec![(3, 6)]);
        assert_eq!(book.dispatched(3, 6), Some(2), "owned again: a new epoch");
        book.completed(at(3, 6));
        assert_eq!(
            book.pending(&[3]),
            1,
            "a completion of the earlier ownership"
        );
    }

    #[test]
    fn waiting_for_a_drain_ends_when_the_sink_completes_or_the_time_is_up() {
        let book = std::sync::Arc::new(OffsetBook::default());
        book.lock().dispatched(1, 0);
        assert_eq!(book.wait_drained(&[1], Duration::from_millis(20)), 1);
        let sink = book.clone();
        let done = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            sink.completed(at(1, 0));
        });
        assert_eq!(book.wait_drained(&[1], Duration::from_secs(10)), 0);
        done.join().unwrap();
    }

    proptest! {
        /// Whatever order offsets become durable or abandoned in, the commit point is
        /// exactly the first offset that is not durable, and never moves back.
        #[test]
        fn the_commit_point_is_the_first_offset_not_durable(
            count in 1usize..60,
            order in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..10), 0..80),
        ) {
            let mut book = Book::default();
            for offset in 100..100 + count as i64 {
                book.dispatched(2, offset);
            }
            let mut done = vec![false; count];
            let mut abandoned = vec![false; count];
            let mut last = 100;
            for (index, kind) in order {
                let i = index.index(count);
                if kind == 0 {
                    book.abandoned(at(2, 100 + i as i64));
                    abandoned[i] |= !done[i];
                } else {
                    book.completed(at(2, 100 + i as i64));
                    done[i] |= !abandoned[i];
                }
                let expected = 100 + done.iter().take_while(|d| **d).count() as i64;
                if let Some((_, point)) = book.take_commits().pop() {
                    prop_assert_eq!(point, expected);
                    prop_assert!(point >= last);
                    last = point;
                }
                let pending = (0..count).filter(|i| !done[*i] && !abandoned[*i]).count();
                prop_assert_eq!(book.pending(&[2]), pending);
            }
        }
    }
}
