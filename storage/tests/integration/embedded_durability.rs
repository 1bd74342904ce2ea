//! What the embedded store acknowledged is there after a restart: after a clean drop,
//! and after the process is aborted with no destructor run (the `kill -9` case).

use std::process::Command;

use meterflow_model::batch::INVALID_TENANT;
use meterflow_model::{Quality, SealedBatch};
use meterflow_storage::ReadingStore;
use meterflow_storage::embedded::EmbeddedStore;

use crate::utils::{
    dead_letter, meter_batch, meter_key, meter_state, open, sealed_batch, stored_reading,
};

/// Set for the child process of [`acknowledged_writes_survive_an_abort`]: the
/// directory it writes to before aborting.
const ABORT_CHILD_DIR: &str = "MF_STORAGE_TEST_ABORT_CHILD_DIR";

const METERS: u64 = 20;
const READINGS_PER_METER: i64 = 30;

/// Two sealed batches over [`METERS`] meters of two tenants, plus dead letters.
fn batches() -> Vec<SealedBatch> {
    (0..2)
        .map(|number| {
            let meters = (0..METERS)
                .map(|m| {
                    let tenant = if m % 2 == 0 { "acme" } else { "other" };
                    let readings = (0..READINGS_PER_METER)
                        .map(|i| {
                            let ts = number as i64 * READINGS_PER_METER + i;
                            stored_reading(ts, m * 1_000 + ts as u64, Quality::Actual)
                        })
                        .collect();
                    meter_batch(
                        meter_key(tenant, &format!("m{m}")),
                        readings,
                        meter_state(number + 1, m),
                    )
                })
                .collect();
            let letters = vec![
                dead_letter("acme", number as i64, number),
                dead_letter(INVALID_TENANT, number as i64, number),
            ];
            sealed_batch(number, meters, letters)
        })
        .collect()
}

fn assert_everything_is_there(store: &EmbeddedStore) {
    for m in 0..METERS {
        let tenant = if m % 2 == 0 { "acme" } else { "other" };
        let key = meter_key(tenant, &format!("m{m}"));
        let readings = store.readings(&key, i64::MIN, i64::MAX, 1_000).unwrap();
        let expected: Vec<_> = (0..2 * READINGS_PER_METER)
            .map(|ts| stored_reading(ts, m * 1_000 + ts as u64, Quality::Actual))
            .collect();
        assert_eq!(readings, expected, "{key}");
        assert_eq!(store.meter_state(&key).unwrap(), Some(meter_state(2, m)));
    }
    for tenant in ["acme", INVALID_TENANT] {
        let letters = store.dead_letters(tenant, 10).unwrap();
        assert_eq!(
            letters,
            [dead_letter(tenant, 1, 1), dead_letter(tenant, 0, 0)]
        );
    }
}

#[test]
fn everything_written_is_there_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        store.write(&batches()).unwrap();
    }
    let store = open(&dir);
    assert_everything_is_there(&store);
    assert!(store.is_ready());
}

/// Runs this test binary again as a child that writes and then aborts (no drop, no
/// flush on exit), then reopens the directory.
#[test]
fn acknowledged_writes_survive_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "embedded_durability::abort_child_writes_then_aborts",
            "--nocapture",
        ])
        .env(ABORT_CHILD_DIR, dir.path())
        .status()
        .unwrap();
    assert!(!status.success(), "the child should have aborted");
    let store = open(&dir);
    assert_everything_is_there(&store);
}

/// The child half of [`acknowledged_writes_survive_an_abort`]; does nothing in a
/// normal run.
#[test]
fn abort_child_writes_then_aborts() {
    let Some(dir) = std::env::var_os(ABORT_CHILD_DIR) else {
        return;
    };
    let store = EmbeddedStore::open(std::path::Path::new(&dir)).unwrap();
    for batch in batches() {
        store.write(&[batch]).unwrap();
    }
    std::process::abort();
}
