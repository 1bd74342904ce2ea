//! Meters silent since before a restart. A shard holds a meter's state from the
//! first uplink it sees of it, and the processors' timer rules — a no-communication
//! alert, a bill period closing — run over the states it holds. After a restart it
//! holds none, so without this a meter that fell silent before the restart (a dead
//! battery, a cut cable: what the no-communication alert is for) would never be
//! alerted on.
//!
//! At start, when the process owns every meter (embedded mode), one thread lists the
//! store's meters ([`ReadingStore::stored_meters`]) and hands each to its shard over
//! a bounded channel; the shard hydrates those it does not hold yet when its queue is
//! empty, a few at a time, so uplinks never wait behind the list
//! (`shard::runner`). Once hydrated, a meter is swept like any other. A store that
//! fails transiently is listed again from the start after a pause (visiting a meter
//! twice is harmless); a store that refuses the listing is logged, and the timer rules
//! then cover only the meters heard from since start, as before.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use meterflow_model::MeterKey;
use meterflow_storage::ReadingStore;
use tracing::{error, info, warn};

use crate::endpoint::handoff::shard_of;

/// Meters waiting per shard. The listing blocks while a shard's is full, so memory
/// stays bounded whatever the fleet.
const QUEUE_PER_SHARD: usize = 4096;

/// Pause before listing again after a transient store error.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How often that pause looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// The listing thread.
pub struct DormantMeters {
    thread: thread::JoinHandle<()>,
}

impl DormantMeters {
    /// Starts listing `store`'s meters for `shards` shards; returns the thread and
    /// each shard's receiver. Setting `stop` ends the listing at the next meter.
    pub fn spawn(
        store: Arc<dyn ReadingStore>,
        shards: usize,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<(DormantMeters, Vec<Receiver<MeterKey>>)> {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| bounded(QUEUE_PER_SHARD)).unzip();
        let thread = thread::Builder::new()
            .name("dormant-meters".into())
            .spawn(move || list(&*store, &senders, &stop))?;
        Ok((DormantMeters { thread }, receivers))
    }

    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Lists the store's meters into the shards' channels until done, stopped, or
/// refused for good.
fn list(store: &dyn ReadingStore, shards: &[Sender<MeterKey>], stop: &AtomicBool) {
    let started = Instant::now();
    loop {
        let mut listed = 0u64;
        let result = store.stored_meters(&mut |meter| {
            if stop.load(Ordering::Relaxed) {
                return ControlFlow::Break(());
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
                    meters = listed,
                    seconds = started.elapsed().as_secs_f64(),
                    "stored meters handed to the shards, which watch them from now on"
                );
                return;
            }
            Err(e) if e.is_transient() => {
                warn!(error = %e, listed, retry_in_s = RETRY_AFTER.as_secs(), "listing the stored meters failed; listing again");
                let until = Instant::now() + RETRY_AFTER;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    thread::sleep(STOP_CHECK);
                }
            }
            Err(e) => {
                error!(error = %e, listed, "listing the stored meters failed; the timer rules (no-communication alerts, bill closing) cover only the meters heard from since start");
                return;
            }
        }
    }
}
