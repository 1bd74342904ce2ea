//! Retention of the embedded store: a sweep at an injected `now` deletes exactly the
//! rows older than each table's retention, seen through the public read API, in
//! write batches no larger than the chunk it is given.

use meterflow_model::analytics::{DistrictUsage, Resolution};
use meterflow_model::{Outputs, Quality};
use meterflow_storage::ReadingStore;
use meterflow_storage::embedded::retention::{Retention, SWEEP_CHUNK};

use crate::utils::{
    dead_letter, meter_batch, meter_key, meter_state, open, sealed_batch, stored_reading,
};

const DAY_MS: i64 = 86_400_000;
/// The injected "now" of every sweep here.
const NOW: i64 = 1_760_000_000_000;

fn hour(tenant: &str, district: &str, start_ms: i64) -> DistrictUsage {
    let mut row = DistrictUsage::new(tenant, district, Resolution::Hour, start_ms);
    row.usage_l = 10;
    row.meters = 1;
    row.refresh_derived();
    row
}

#[test]
fn a_sweep_deletes_exactly_the_expired_rows_in_bounded_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let retention = Retention {
        readings_days: 30,
        dead_letters_days: 14,
        district_hourly_days: 60,
    };
    let readings_cutoff = NOW - 30 * DAY_MS;
    let letters_cutoff = NOW - 14 * DAY_MS;
    let hours_cutoff = NOW - 60 * DAY_MS;

    // Three meters over two tenants; one day of readings an hour apart each, spread
    // so the cutoff falls inside the series (a minute off the hour, so no time
    // repeats), plus rows right at the cutoff (kept) and one millisecond before it
    // (expired).
    let meters = [("t1", "m1"), ("t1", "m2"), ("t2", "m1")];
    let mut reading_times = vec![readings_cutoff - 1, readings_cutoff, i64::MIN + 1, NOW];
    reading_times
        .extend((0..48).map(|h| readings_cutoff - 24 * 3_600_000 + h * 3_600_000 + 60_000));
    let batches: Vec<_> = meters
        .iter()
        .enumerate()
        .map(|(i, (tenant, meter))| {
            let readings = reading_times
                .iter()
                .map(|ts| stored_reading(*ts, 100 + i as u64, Quality::Actual))
                .collect();
            meter_batch(meter_key(tenant, meter), readings, meter_state(1, 0))
        })
        .collect();
    let mut letters = Vec::new();
    for (tenant, base) in [("t1", 0u64), ("t2", 1_000), ("~invalid", 2_000)] {
        for (i, at) in [
            letters_cutoff - 20 * DAY_MS,
            letters_cutoff - 1,
            letters_cutoff,
            letters_cutoff + 1,
            NOW,
        ]
        .into_iter()
        .enumerate()
        {
            letters.push(dead_letter(tenant, at, base + i as u64));
        }
        // Ids whose bytes hold 0x00 and 0xFF around the cutoff.
        letters.push(dead_letter(tenant, letters_cutoff - 1, base + 0xFF00));
        letters.push(dead_letter(tenant, letters_cutoff, base + 0xFF01));
    }
    store
        .write(&[sealed_batch(1, batches, letters.clone())])
        .unwrap();
    let hour_starts = [hours_cutoff - 3_600_000, hours_cutoff, NOW - 3_600_000];
    let hours: Vec<DistrictUsage> = ["north", "south"]
        .iter()
        .flat_map(|d| hour_starts.iter().map(|s| hour("t1", d, *s)))
        .collect();
    store
        .write_outputs(&Outputs {
            districts: hours,
            ..Outputs::default()
        })
        .unwrap();

    let chunk = 7;
    let report = store.expire(NOW, &retention, chunk).unwrap();

    let expired_readings = reading_times
        .iter()
        .filter(|ts| **ts < readings_cutoff)
        .count();
    for (tenant, meter) in meters {
        let left: Vec<i64> = store
            .readings(&meter_key(tenant, meter), i64::MIN, i64::MAX, usize::MAX)
            .unwrap()
            .iter()
            .map(|s| s.reading.ts)
            .collect();
        let mut want: Vec<i64> = reading_times
            .iter()
            .copied()
            .filter(|ts| *ts >= readings_cutoff)
            .collect();
        want.sort();
        assert_eq!(left, want, "{tenant}/{meter}");
    }
    let mut expired_letters = 0;
    for tenant in ["t1", "t2", "~invalid"] {
        let mut left: Vec<(i64, u64)> = store
            .dead_letters(tenant, 1_000)
            .unwrap()
            .iter()
            .map(|d| (d.received_at, d.id))
            .collect();
        left.sort();
        let of_tenant: Vec<_> = letters.iter().filter(|d| d.tenant == tenant).collect();
        let mut want: Vec<(i64, u64)> = of_tenant
            .iter()
            .filter(|d| d.received_at >= letters_cutoff)
            .map(|d| (d.received_at, d.id))
            .collect();
        want.sort();
        expired_letters += of_tenant.len() - want.len();
        assert_eq!(left, want, "dead letters of {tenant}");
    }
    for district in ["north", "south"] {
        let left: Vec<i64> = store
            .district_hourly("t1", district, i64::MIN, i64::MAX)
            .unwrap()
            .iter()
            .map(|h| h.start_ms)
            .collect();
        assert_eq!(left, [hours_cutoff, NOW - 3_600_000], "{district}");
    }

    assert_eq!(
        report.expired,
        [
            ("readings", (expired_readings * meters.len()) as u64),
            ("dead_letters", expired_letters as u64),
            ("district_hourly", 2),
        ]
    );
    assert!(report.largest_batch <= chunk, "{report:?}");
    // Readings are stored in chunks of one UTC day: the 26 expired readings of a
    // meter are in 3 chunks (i64::MIN + 1's, the day before the cutoff's, and the
    // cutoff's day, rewritten without its expired readings), one batch per meter;
    // 3 dead letters per tenant and 1 hour per district one batch each.
    assert_eq!(report.batches, 3 + 3 + 2, "{report:?}");
    assert_eq!(report.largest_batch, 3, "{report:?}");

    // A second sweep at the same time finds nothing; the window is untouched.
    let again = store.expire(NOW, &retention, SWEEP_CHUNK).unwrap();
    assert_eq!(again.rows(), 0, "{again:?}");
    assert_eq!(again.batches, 0);
}

#[test]
fn zero_keeps_a_table_forever() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let key = meter_key("t1", "m1");
    store
        .write(&[sealed_batch(
            1,
            vec![meter_batch(
                key.clone(),
                vec![stored_reading(0, 1, Quality::Actual)],
                meter_state(1, 0),
            )],
            vec![dead_letter("t1", 0, 1)],
        )])
        .unwrap();
    let keep_readings = Retention {
        readings_days: 0,
        dead_letters_days: 1,
        district_hourly_days: 0,
    };
    let report = store.expire(NOW, &keep_readings, SWEEP_CHUNK).unwrap();
    assert_eq!(report.expired, [("dead_letters", 1)]);
    assert_eq!(
        store.readings(&key, i64::MIN, i64::MAX, 10).unwrap().len(),
        1
    );
    assert!(store.dead_letters("t1", 10).unwrap().is_empty());
}
