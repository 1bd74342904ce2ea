//! Which write of a meter's rows wins on ScyllaDB: the one of the state further
//! along the meter's input, whichever processor sent it and whenever it landed.
//!
//! A meter's readings, its `meter_state` row and its bills are written `USING
//! TIMESTAMP` its state's [`version`](MeterState::version), so the cluster's own
//! last-write-wins keeps the rows of the greater version. A processor that stalled
//! past its consumer-group session and wakes with a batch in hand (a *zombie*
//! owner) writes an older version than the meter's new owner, which folds the same
//! log from the same stored state: its late write loses, row by row, to anything
//! the new owner wrote since (ARCHITECTURE.md, "a meter's rows carry its state's
//! version").
//!
//! On hydration the version read back is at least the row's write time, and a state
//! written before versions existed (read with version 0) starts
//! [`LEGACY_MARGIN_US`] above its row's write time: the bills of that group commit
//! were written just after the state, at wall-clock times a little above it, and
//! the meter's next bill must still replace them.

use ::scylla::value::MaybeUnset;
use meterflow_model::MeterState;

/// How far above its row's write time a state written before versions resumes.
/// A group commit wrote the state, then the outputs, within its attempt timeouts:
/// a minute is far more than that, and far below ScyllaDB's three-day bound on
/// write times ahead of its clock.
pub(super) const LEGACY_MARGIN_US: i64 = 60_000_000;

/// How far ahead of this process's clock a write time may be: a day, well inside
/// ScyllaDB's bound of three days ahead of its own clock (`restrict_future_timestamp`).
pub(super) const MAX_AHEAD_US: i64 = 86_400_000_000;

/// The write time of `state`'s rows: its version, read against the system clock
/// ([`write_time_at`]).
pub(super) fn write_time(state: &MeterState) -> MaybeUnset<i64> {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    write_time_at(state, now_us)
}

/// The write time of `state`'s rows at `now_us`: its version. A state that never
/// took an uplink or an order (built by hand, as tools and tests do) has none: its
/// rows leave the marker unset and are written at the driver's clock, as every row
/// was before versions. A version more than [`MAX_AHEAD_US`] ahead of `now_us` —
/// an endpoint whose clock ran days ahead stamped the uplinks it counts — is
/// written at that bound instead, which ScyllaDB takes: the meter's writes go on
/// (still rising with the clock) rather than being refused until the clock catches
/// up.
pub(super) fn write_time_at(state: &MeterState, now_us: i64) -> MaybeUnset<i64> {
    if state.version > 0 {
        MaybeUnset::Set(state.version.min(now_us.saturating_add(MAX_AHEAD_US)))
    } else {
        MaybeUnset::Unset
    }
}

/// The version a state resumes from when read back with its row's write time
/// `written` (µs): see the module doc.
pub(super) fn hydrated_version(stored: i64, written: i64) -> i64 {
    if stored > 0 {
        stored.max(written)
    } else {
        written.saturating_add(LEGACY_MARGIN_US)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_versioned_state_resumes_from_its_own_version() {
        assert_eq!(
            hydrated_version(1_700_000_000_000_123, 1_700_000_000_000_123),
            1_700_000_000_000_123
        );
        // A row written later than its version says (by a writer that did not
        // know versions) is not undercut.
        assert_eq!(hydrated_version(10, 25), 25);
    }

    #[test]
    fn a_state_from_before_versions_resumes_above_its_commit() {
        assert_eq!(
            hydrated_version(0, 1_700_000_000_000_000),
            1_700_000_000_000_000 + LEGACY_MARGIN_US
        );
    }

    #[test]
    fn a_state_that_took_input_is_written_at_its_version() {
        let mut state = MeterState::default();
        state.advance_version(1_700_000_000_000);
        assert!(matches!(
            write_time_at(&state, 1_700_000_000_000_000),
            MaybeUnset::Set(1_700_000_000_000_000)
        ));
        assert!(matches!(
            write_time(&MeterState::default()),
            MaybeUnset::Unset
        ));
    }

    #[test]
    fn a_version_days_ahead_of_the_clock_is_written_at_the_bound() {
        let now_us = 1_700_000_000_000_000;
        let mut state = MeterState::default();
        // Uplinks stamped a week ahead (an endpoint's clock gone wrong).
        state.advance_version(1_700_000_000_000 + 7 * 86_400_000);
        for now in [now_us, now_us + 1] {
            assert!(matches!(
                write_time_at(&state, now),
                MaybeUnset::Set(t) if t == now + MAX_AHEAD_US
            ));
        }
    }
}
