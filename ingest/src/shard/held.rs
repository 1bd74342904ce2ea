//! The meters a shard keeps in memory, and those it lets rest in the store.
//!
//! A held meter's state carries its windows (tens of KiB at five-minute reads), so a
//! shard holds at most `limit` of them ([`HeldMeters::rest`], `pipeline.held_meters`
//! split over the shards). Past that, the least recently batched meters rest: their
//! state is dropped from memory and read back from the store on their next uplink, as
//! after a restart. A meter may rest only when that read gives back exactly what was
//! dropped — its last batch is durable (`durable`, the sink's watermark for the
//! shard), it is not in the open batch, and it has no open seq gap — so resting
//! changes no bill, alert or ack.
//!
//! The timer rules must still cover a resting meter: it rests with the time its sweep
//! could next act ([`ProcessorChain::sweep_due`], a state that does not change while
//! it rests gives the same answer until then). The first timer sweep at or after that
//! time wakes it ([`HeldMeters::wake_due`]); the runner reads it back and the core
//! sweeps it at once (`ShardCore::woken`), as that sweep would have had it been held.
//! A meter whose sweep is due does not rest; once swept, its new state is batched and
//! it may rest again when that batch is durable — so even when a whole fleet's bills
//! close at once, the meters held stay near the limit.

use std::collections::hash_map::Entry;

use foldhash::{HashMap, HashMapExt};
use meterflow_model::{MeterKey, MeterState};
use meterflow_processors::ProcessorChain;

/// A held meter: its whole state, and the last batch it was sealed in (0: none since
/// it was hydrated), which orders meters by how recently they were active.
struct Held {
    state: MeterState,
    last_batch: u64,
}

/// The shard's meters: held with their state, or resting with when to wake them.
pub(super) struct HeldMeters {
    held: HashMap<MeterKey, Held>,
    /// Resting meters and the time (ms since the epoch) their sweep is next due;
    /// `None`: no time is.
    resting: HashMap<MeterKey, Option<i64>>,
    limit: usize,
}

/// What one [`HeldMeters::rest`] did.
#[derive(Default)]
pub(super) struct Rested {
    pub(super) rested: usize,
    /// Meters over the limit that could not rest yet (last batch not durable, in the
    /// open batch, an open gap, a sweep due soon).
    pub(super) kept: usize,
}

impl HeldMeters {
    /// Holds at most `limit` meters (at least one).
    pub(super) fn new(limit: usize) -> Self {
        Self {
            held: HashMap::new(),
            resting: HashMap::new(),
            limit: limit.max(1),
        }
    }

    pub(super) fn held(&self) -> usize {
        self.held.len()
    }

    pub(super) fn resting(&self) -> usize {
        self.resting.len()
    }

    /// Whether the held meters are past the limit by a sixteenth of it (at least 16):
    /// worth a [`Self::rest`] now rather than at the next second, without a pass over
    /// every held meter for each one read back.
    pub(super) fn well_over_limit(&self) -> bool {
        self.held.len() > self.limit + (self.limit / 16).max(16)
    }

    /// Whether the shard watches `key`: held, or resting until its sweep is due.
    pub(super) fn watches(&self, key: &MeterKey) -> bool {
        self.held.contains_key(key) || self.resting.contains_key(key)
    }

    #[cfg(test)]
    pub(super) fn get(&self, key: &MeterKey) -> Option<&MeterState> {
        self.held.get(key).map(|held| &held.state)
    }

    pub(super) fn get_mut(&mut self, key: &MeterKey) -> Option<&mut MeterState> {
        self.held.get_mut(key).map(|held| &mut held.state)
    }

    /// Holds `key` with `state` just read from the store, unless it is held already
    /// (what the shard holds is newer than the store's); `rebuild` puts back what the
    /// store does not persist. A resting meter is held again.
    pub(super) fn hydrated(
        &mut self,
        key: MeterKey,
        mut state: MeterState,
        rebuild: impl FnOnce(&MeterKey, &mut MeterState),
    ) {
        if let Entry::Vacant(slot) = self.held.entry(key) {
            self.resting.remove(slot.key());
            rebuild(slot.key(), &mut state);
            slot.insert(Held {
                state,
                last_batch: 0,
            });
        }
    }

    /// Takes `key`'s state out for batch number `batch` (the default state when it is
    /// not held); `ShardCore::process` puts it back once the processors ran.
    pub(super) fn take_for_batch(&mut self, key: &MeterKey, batch: u64) -> MeterState {
        match self.held.get_mut(key) {
            Some(held) => {
                held.last_batch = batch;
                std::mem::take(&mut held.state)
            }
            None => MeterState::default(),
        }
    }

    /// Every held meter, for the timer sweep.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&MeterKey, &mut MeterState)> {
        self.held
            .iter_mut()
            .map(|(key, held)| (key, &mut held.state))
    }

    /// Drops the meters `which` names, held or resting.
    pub(super) fn forget(&mut self, which: &dyn Fn(&MeterKey) -> bool) {
        self.held.retain(|key, _| !which(key));
        self.resting.retain(|key, _| !which(key));
    }

    /// Lets the least recently batched meters over the limit rest, of those that
    /// may: last batch at or below `durable`, not `busy` (in the open batch, an open
    /// gap), and no sweep due at `now_ms` (ms since the epoch).
    pub(super) fn rest(
        &mut self,
        durable: u64,
        busy: impl Fn(&MeterKey) -> bool,
        now_ms: i64,
        processors: &mut ProcessorChain,
    ) -> Rested {
        let Some(excess) = self.held.len().checked_sub(self.limit).filter(|&n| n > 0) else {
            return Rested::default();
        };
        let mut candidates: Vec<(u64, &MeterKey)> = self
            .held
            .iter()
            .filter(|(key, held)| held.last_batch <= durable && !busy(key))
            .map(|(key, held)| (held.last_batch, key))
            .collect();
        if candidates.len() > excess {
            candidates.select_nth_unstable(excess);
            candidates.truncate(excess);
        }
        let chosen: Vec<MeterKey> = candidates.into_iter().map(|(_, key)| key.clone()).collect();
        let mut rested = 0;
        for key in chosen {
            let due = processors.sweep_due(&key, &self.held[&key].state);
            if due.is_some_and(|due| due <= now_ms) {
                continue;
            }
            self.held.remove(&key);
            self.resting.insert(key, due);
            rested += 1;
        }
        Rested {
            rested,
            kept: excess - rested,
        }
    }

    /// Resting meters whose sweep is due at `now_ms` (ms since the epoch): no longer
    /// resting, for the runner to read back.
    pub(super) fn wake_due(&mut self, now_ms: i64) -> Vec<MeterKey> {
        let mut due = Vec::new();
        self.resting.retain(|key, at| {
            let wake = at.is_some_and(|at| at <= now_ms);
            if wake {
                due.push(key.clone());
            }
            !wake
        });
        due
    }
}
