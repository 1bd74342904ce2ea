//! Order-preserving keys of the embedded store's keyspaces. Keys sort byte-wise in
//! fjall, so every part is laid out to make byte order equal logical order, and a
//! range scan over a prefix yields exactly one meter's (or one tenant's) rows.
//!
//! | keyspace       | key                                                         |
//! |----------------|-------------------------------------------------------------|
//! | `readings`     | tenant, `0x00`, meter, `0x00`, the chunk's first ts (8 bytes, [`ordered_ts`]) |
//! | `meter_state`  | tenant, `0x00`, meter                                       |
//! | `dead_letters` | tenant, `0x00`, received_at (8 bytes, [`ordered_ts`]), id (u64 BE) |
//! | `bills`        | tenant, `0x00`, period (`yyyy-mm`), `0x00`, meter            |
//! | `alerts`       | tenant, `0x00`, opened_at (8 bytes, [`ordered_ts`]), meter, `0x00`, kind name |
//! | `district_hourly` | tenant, `0x00`, district, `0x00`, hour start (8 bytes, [`ordered_ts`]) |
//!
//! Invariant the layout relies on: ids never contain `0x00` (they match
//! `[A-Za-z0-9_-]{1,64}`, and the dead-letter tenant may also be `INVALID_TENANT`,
//! `~invalid`). So `tenant 0x00` is a prefix of no other tenant's keys, and
//! `tenant 0x00 meter 0x00` of no other meter's. Strings that are not validated ids
//! (a bill's period, a district name from the tenant config) are checked with
//! [`is_storable`] before a key is built from them: one containing `0x00` could
//! collide with another key, so it is never stored (and never found).
//!
//! A `readings` key names a chunk of readings (`chunks.rs`) by its first `ts`; a
//! single-reading row of an older build has the same shape, its one reading's `ts`.
//! Chunks are disjoint and never cross a UTC day, so a meter's readings from `from`
//! on are in the chunks keyed from the start of `from`'s day on.
//!
//! `alerts` has no day component: DESIGN §5 partitions alerts by the UTC day of
//! `opened_at`, which `opened_at` itself orders the same way, so a reverse scan over
//! `tenant 0x00` yields a tenant's episodes newest `opened_at` first, ties by meter
//! then kind name, both descending (the ScyllaDB table clusters the same way).

use meterflow_model::MeterKey;

/// Separates variable-length ids; sorts below every byte an id may contain.
const SEPARATOR: u8 = 0x00;

/// Bytes of a timestamp or id suffix.
const U64_LEN: usize = 8;

/// A signed epoch-ms timestamp as 8 bytes whose byte order is numeric order: big
/// endian with the sign bit flipped, so negative times sort before positive ones.
pub(crate) fn ordered_ts(ts: i64) -> [u8; U64_LEN] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`ordered_ts`].
fn ts_from_ordered(bytes: [u8; U64_LEN]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// `tenant 0x00 meter` — the `meter_state` key.
pub(crate) fn meter_state_key(key: &MeterKey) -> Vec<u8> {
    let (tenant, meter) = (key.tenant.as_str(), key.meter.as_str());
    let mut out = Vec::with_capacity(tenant.len() + 1 + meter.len());
    out.extend_from_slice(tenant.as_bytes());
    out.push(SEPARATOR);
    out.extend_from_slice(meter.as_bytes());
    out
}

/// The meter a `meter_state` key names ([`meter_state_key`]); `None` when it is not
/// one.
pub(crate) fn meter_of_state_key(key: &[u8]) -> Option<MeterKey> {
    let at = key.iter().position(|&b| b == SEPARATOR)?;
    MeterKey::parse(&key[..at], &key[at + 1..]).ok()
}

/// `tenant 0x00 meter 0x00` — the prefix of every `readings` key of one meter.
pub(crate) fn readings_prefix(key: &MeterKey) -> Vec<u8> {
    let mut out = meter_state_key(key);
    out.reserve(1 + U64_LEN);
    out.push(SEPARATOR);
    out
}

/// The `readings` key of the chunk of the meter with prefix `prefix` whose first
/// reading is at `ts`.
pub(crate) fn reading_key(prefix: &[u8], ts: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + U64_LEN);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&ordered_ts(ts));
    out
}

/// The first `ts` of a `readings` key, or `None` when the key is too short to hold
/// one.
pub(crate) fn reading_ts(key: &[u8]) -> Option<i64> {
    let suffix = key
        .len()
        .checked_sub(U64_LEN)
        .and_then(|at| key.get(at..))?;
    suffix.try_into().ok().map(ts_from_ordered)
}

/// `tenant 0x00` — the prefix of every `dead_letters` key of one tenant.
pub(crate) fn dead_letters_prefix(tenant: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(tenant.len() + 1 + 2 * U64_LEN);
    out.extend_from_slice(tenant.as_bytes());
    out.push(SEPARATOR);
    out
}

/// Whether a string can be a key component: it must not contain the separator.
pub(crate) fn is_storable(part: &str) -> bool {
    !part.as_bytes().contains(&SEPARATOR)
}

/// `tenant 0x00 period 0x00 meter` — the `bills` key of one meter's bill.
pub(crate) fn bill_key(tenant: &str, period: &str, meter: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(tenant.len() + period.len() + meter.len() + 2);
    for (i, part) in [tenant, period, meter].into_iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// `tenant 0x00` — the prefix of every `alerts` key of one tenant.
pub(crate) fn alerts_prefix(tenant: &str) -> Vec<u8> {
    dead_letters_prefix(tenant)
}

/// `tenant 0x00` — the prefix of every `exceptions` key of one tenant.
pub(crate) fn exceptions_prefix(tenant: &str) -> Vec<u8> {
    dead_letters_prefix(tenant)
}

/// `tenant 0x00 meter 0x00 ts` — the `exceptions` key of one read's exception.
pub(crate) fn exception_key(tenant: &str, meter: &str, ts: i64) -> Vec<u8> {
    let mut out = exceptions_prefix(tenant);
    out.reserve(meter.len() + 1 + U64_LEN);
    out.extend_from_slice(meter.as_bytes());
    out.push(SEPARATOR);
    out.extend_from_slice(&ordered_ts(ts));
    out
}

/// `tenant 0x00 opened_at meter 0x00 kind` — the `alerts` key of one episode
/// (`kind` is [`meterflow_model::alert::AlertKind::name`]).
pub(crate) fn alert_key(tenant: &str, opened_at: i64, meter: &str, kind: &str) -> Vec<u8> {
    let mut out = alerts_prefix(tenant);
    out.reserve(U64_LEN + meter.len() + 1 + kind.len());
    out.extend_from_slice(&ordered_ts(opened_at));
    out.extend_from_slice(meter.as_bytes());
    out.push(SEPARATOR);
    out.extend_from_slice(kind.as_bytes());
    out
}

/// `tenant 0x00 district 0x00` — the prefix of every `district_hourly` key of one
/// district.
pub(crate) fn district_hourly_prefix(tenant: &str, district: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(tenant.len() + district.len() + 2 + U64_LEN);
    out.extend_from_slice(tenant.as_bytes());
    out.push(SEPARATOR);
    out.extend_from_slice(district.as_bytes());
    out.push(SEPARATOR);
    out
}

/// The `district_hourly` key of the hour starting at `start_ms`.
pub(crate) fn district_hour_key(prefix: &[u8], start_ms: i64) -> Vec<u8> {
    reading_key(prefix, start_ms)
}

/// The `dead_letters` key of one dead letter.
pub(crate) fn dead_letter_key(tenant: &str, received_at: i64, id: u64) -> Vec<u8> {
    let mut out = dead_letters_prefix(tenant);
    out.extend_from_slice(&ordered_ts(received_at));
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// `(received_at, id)` of a `dead_letters` key, or `None` when the key is too short.
pub(crate) fn dead_letter_received_at_and_id(key: &[u8]) -> Option<(i64, u64)> {
    let at = key.len().checked_sub(2 * U64_LEN)?;
    let received_at = key.get(at..at + U64_LEN)?.try_into().ok()?;
    let id = key.get(at + U64_LEN..)?.try_into().ok()?;
    Some((ts_from_ordered(received_at), u64::from_be_bytes(id)))
}

/// The prefix of `key` up to and including its `ids`-th separator: the series (one
/// tenant's dead letters, one meter's readings, one district's hours) the key belongs
/// to. `None` when the key has fewer separators, which a well-formed key never has.
pub(crate) fn series_prefix(key: &[u8], ids: usize) -> Option<&[u8]> {
    let end = key
        .iter()
        .enumerate()
        .filter(|(_, byte)| **byte == SEPARATOR)
        .nth(ids.checked_sub(1)?)?
        .0;
    Some(&key[..=end])
}

/// The smallest key above every key that starts with `prefix`, which ends with a
/// separator: the same bytes with the separator raised by one. Where a scan of the
/// next series starts.
pub(crate) fn after_series(prefix: &[u8]) -> Vec<u8> {
    debug_assert_eq!(prefix.last(), Some(&SEPARATOR));
    let mut out = prefix.to_vec();
    if let Some(last) = out.last_mut() {
        *last = SEPARATOR + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_model::{MeterId, TenantId};
    use proptest::prelude::*;

    fn meter(tenant: &str, meter: &str) -> MeterKey {
        MeterKey::new(
            TenantId::try_from(tenant).unwrap(),
            MeterId::try_from(meter).unwrap(),
        )
    }

    #[test]
    fn reading_key_layout_is_tenant_meter_flipped_ts() {
        let key = reading_key(&readings_prefix(&meter("t", "m1")), -1);
        assert_eq!(key, b"t\0m1\0\x7f\xff\xff\xff\xff\xff\xff\xff");
        assert_eq!(reading_ts(&key), Some(-1));
    }

    #[test]
    fn a_meter_state_key_names_its_meter_and_nothing_else_does() {
        let key = meter("acme-1", "m_2");
        assert_eq!(meter_of_state_key(&meter_state_key(&key)), Some(key));
        for not_one in [
            &b"acme"[..],
            b"\0m1",
            b"acme\0",
            b"acme\0m1\0x",
            b"ac me\0m1",
        ] {
            assert_eq!(meter_of_state_key(not_one), None, "{not_one:?}");
        }
    }

    #[test]
    fn dead_letter_key_round_trips() {
        let key = dead_letter_key("~invalid", 1_700_000_000_000, 42);
        assert!(key.starts_with(b"~invalid\0"));
        assert_eq!(
            dead_letter_received_at_and_id(&key),
            Some((1_700_000_000_000, 42))
        );
    }

    #[test]
    fn output_key_layouts() {
        assert_eq!(bill_key("t", "2025-11", "m1"), b"t\x002025-11\x00m1");
        assert_eq!(
            alert_key("t", 1, "m1", "leak"),
            b"t\0\x80\0\0\0\0\0\0\x01m1\0leak"
        );
        assert!(alert_key("t", 1, "m", "leak").starts_with(&alerts_prefix("t")));
        assert_eq!(
            district_hour_key(&district_hourly_prefix("t", "north"), 0),
            b"t\0north\0\x80\0\0\0\0\0\0\0"
        );
        assert!(is_storable("north-2"));
        assert!(!is_storable("no\0rth"));
    }

    #[test]
    fn one_district_prefix_matches_no_other_district() {
        let short = district_hourly_prefix("t", "n");
        let longer = district_hour_key(&district_hourly_prefix("t", "n-2"), 0);
        assert!(!longer.starts_with(&short));
        let other_tenant = district_hour_key(&district_hourly_prefix("t-2", "n"), 0);
        assert!(!other_tenant.starts_with(&short));
    }

    #[test]
    fn series_prefixes_end_at_the_last_id() {
        let reading = reading_key(&readings_prefix(&meter("t1", "m1")), -5);
        assert_eq!(series_prefix(&reading, 2), Some(&b"t1\0m1\0"[..]));
        // A dead letter's id may hold 0x00 bytes; only the tenant is the series.
        let letter = dead_letter_key("t1", 0, 0);
        assert_eq!(series_prefix(&letter, 1), Some(&b"t1\0"[..]));
        assert_eq!(series_prefix(b"t1", 1), None);
        assert_eq!(series_prefix(b"t1\0", 0), None);
        assert_eq!(after_series(b"t1\0m1\0"), b"t1\0m1\x01".to_vec());
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(reading_ts(b"short"), None);
        assert_eq!(dead_letter_received_at_and_id(b"too short"), None);
    }

    #[test]
    fn one_meter_prefix_matches_no_other_meter() {
        let short = readings_prefix(&meter("t", "m"));
        let longer = reading_key(&readings_prefix(&meter("t", "m-2")), 0);
        assert!(!longer.starts_with(&short));
        let other_tenant = reading_key(&readings_prefix(&meter("t-2", "m")), 0);
        assert!(!other_tenant.starts_with(&short));
    }

    proptest! {
        #[test]
        fn ordered_ts_preserves_order(a: i64, b: i64) {
            prop_assert_eq!(a.cmp(&b), ordered_ts(a).cmp(&ordered_ts(b)));
            prop_assert_eq!(ts_from_ordered(ordered_ts(a)), a);
        }

        #[test]
        fn dead_letter_keys_sort_by_time_then_id(
            a in (any::<i64>(), any::<u64>()),
            b in (any::<i64>(), any::<u64>()),
        ) {
            let ka = dead_letter_key("t", a.0, a.1);
            let kb = dead_letter_key("t", b.0, b.1);
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
        }

        #[test]
        fn alert_keys_sort_by_opened_at_then_meter_then_kind(
            a in (any::<i64>(), "[a-z0-9-]{1,6}", "[a-z_]{1,8}"),
            b in (any::<i64>(), "[a-z0-9-]{1,6}", "[a-z_]{1,8}"),
        ) {
            let ka = alert_key("t", a.0, &a.1, &a.2);
            let kb = alert_key("t", b.0, &b.1, &b.2);
            prop_assert_eq!(a.cmp(&b), ka.cmp(&kb));
        }

        #[test]
        fn every_key_of_a_series_sorts_below_the_next_series(
            tenant in "[a-z]{1,3}", id_of_meter in "[a-z]{1,3}", ts: i64, id: u64,
        ) {
            let prefix = readings_prefix(&meter(&tenant, &id_of_meter));
            let key = reading_key(&prefix, ts);
            prop_assert!(key < after_series(&prefix));
            let letter = dead_letter_key(&tenant, ts, id);
            let series = series_prefix(&letter, 1).unwrap();
            let tenant_prefix = dead_letters_prefix(&tenant);
            prop_assert_eq!(series, tenant_prefix.as_slice());
            prop_assert!(letter < after_series(series));
        }

        #[test]
        fn district_hour_keys_sort_by_start(a: i64, b: i64) {
            let prefix = district_hourly_prefix("t", "north");
            prop_assert_eq!(
                a.cmp(&b),
                district_hour_key(&prefix, a).cmp(&district_hour_key(&prefix, b))
            );
        }
    }
}
