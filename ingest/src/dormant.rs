//! Meters silent since before a restart, or since before their partition came to
//! this processor. A shard holds a meter's state from the first uplink it sees of it,
//! and the processors' timer rules — a no-communication alert, a bill period closing
//! — run over the states it holds. After a restart it holds none, so without this a
//! meter that fell silent before it (a dead battery, a cut cable: what the
//! no-communication alert is for) would never be alerted on.
//!
//! A listing ([`DormantMeters::list`]) runs the store's
//! [`ReadingStore::stored_meters`] on a thread of its own and hands each meter it
//! keeps to its shard over a bounded channel: every meter once at start in embedded
//! mode, a processor's newly assigned partitions' meters at each assignment. The
//! shard hydrates those it does not hold yet when its queue is empty, a few at a time,
//! so uplinks never wait behind the list (`shard::runner`), and only while the
//! process still owns the meter ([`DormantQueue::next`]): a partition given up
//! meanwhile is skipped. Once hydrated, a meter is swept like any other. A store that
//! fails transiently is listed again from the start after a pause (visiting a meter
//! twice is harmless); a store that refuses the listing is logged, and the timer rules
//! then cover only the meters heard from, as before.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use meterflow_model::MeterKey;
use meterflow_storage::ReadingStore;
use tracing::{error, info, warn};

use crate::endpoint::handoff::shard_of;

/// Which meters: those a listing keeps, those this process owns.
pub type MeterFilter = Arc<dyn Fn(&MeterKey) -> bool + Send + Sync>;

/// Meters waiting per shard. A listing blocks while a shard's is full, so memory
/// stays bounded whatever the fleet.
const QUEUE_PER_SHARD: usize = 4096;

/// Pause before listing again after a transient store error.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How often that pause looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Lists stored meters into the shards' channels.
pub struct DormantMeters {
    store: Arc<dyn ReadingStore>,
    shards: Arc<[Sender<MeterKey>]>,
    stop: Arc<AtomicBool>,
    listings: Mutex<Vec<thread::JoinHandle<()>>>,
}

/// A shard's end: the listed meters, and whether the process still owns one.
pub struct DormantQueue {
    listed: Receiver<MeterKey>,
    owned: MeterFilter,
}

impl DormantMeters {
    /// Channels for `shards` shards; each queue yields only meters `owned` passes when
    /// they are taken. Setting `stop` ends every listing at its next meter.
    pub fn new(
        store: Arc<dyn ReadingStore>,
        shards: usize,
        owned: MeterFilter,
        stop: Arc<AtomicBool>,
    ) -> (DormantMeters, Vec<DormantQueue>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| bounded(QUEUE_PER_SHARD)).unzip();
        let queues = receivers
            .into_iter()
            .map(|listed| DormantQueue {
                listed,
                owned: owned.clone(),
            })
            .collect();
        let meters = DormantMeters {
            store,
            shards: senders.into(),
            stop,
            listings: Mutex::new(Vec::new()),
        };
        (meters, queues)
    }

    /// Lists, on a thread of its own, the stored meters `keep` passes; `what` names
    /// them in the log.
    pub fn list(&self, what: &'static str, keep: MeterFilter) {
        let (store, shards, stop) = (self.store.clone(), self.shards.clone(), self.stop.clone());
        let spawned = thread::Builder::new()
            .name("dormant-meters".into())
            .spawn(move || list(&*store, &shards, &*keep, &stop, what));
        match spawned {
            Ok(listing) => self
                .listings
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(listing),
            Err(e) => {
                error!(error = %e, what, "cannot start listing the stored meters; the timer rules cover only the meters heard from")
            }
        }
    }

    /// Waits for every listing (set the stop flag first).
    pub fn join(&self) {
        let listings =
            std::mem::take(&mut *self.listings.lock().unwrap_or_else(PoisonError::into_inner));
        for listing in listings {
            let _ = listing.join();
        }
    }
}

impl DormantQueue {
    /// Whether no listed meter waits.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// The next listed meter the process still owns, if one waits; those it no
    /// longer owns are dropped on the way.
    pub fn next(&self) -> Option<MeterKey> {
        self.listed.try_iter().find(|meter| (self.owned)(meter))
    }
}

/// Lists the store's meters that `keep` passes into the shards' channels until
/// done, stopped, or refused for good.
fn list(
    store: &dyn ReadingStore,
    shards: &[Sender<MeterKey>],
    keep: &(dyn Fn(&MeterKey) -> bool + Send + Sync),
    stop: &AtomicBool,
    what: &'static str,
) {
    let started = Instant::now();
    loop {
        let mut listed = 0u64;
        let result = store.stored_meters(&mut |meter| {
            if stop.load(Ordering::Relaxed) {
                return ControlFlow::Break(());
            }
            if !keep(&meter) {
                return ControlFlow::Continue(());
            }
            let shard = &shards[shard_of(&meter, shards.len())];
            // A shard that stopped has dropped its receiver: the listing is over.
            if shard.send(meter).is_err() {
                return ControlFlow::Break(());
            }
            listed += 1;
            ControlFlow::Continue(())
        });
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match result {
            Ok(()) => {
                info!(
                    what,
                    meters = listed,
                    seconds = started.elapsed().as_secs_f64(),
                    "stored meters handed to the shards, which watch them from now on"
                );
                return;
            }
            Err(e) if e.is_transient() => {
                warn!(error = %e, what, listed, retry_in_s = RETRY_AFTER.as_secs(), "listing the stored meters failed; listing again");
                let until = Instant::now() + RETRY_AFTER;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    thread::sleep(STOP_CHECK);
                }
            }
            Err(e) => {
                error!(error = %e, what, listed, "listing the stored meters failed; the timer rules (no-communication alerts, bill closing) cover only the meters heard from");
                return;
            }
        }
    }
}
