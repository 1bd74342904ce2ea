//! What processors derived, in the embedded store: the `bills`, `alerts` and
//! `district_hourly` keyspaces behind [`ReadingStore::write_outputs`](crate::ReadingStore::write_outputs) and its three
//! readers (keys in `keys.rs`):
//!
//! | keyspace          | key                                              | value                            |
//! |-------------------|--------------------------------------------------|----------------------------------|
//! | `bills`           | tenant `0x00` period `0x00` meter                | `encode_record(&BillLine)`       |
//! | `alerts`          | tenant `0x00` opened_at* meter `0x00` kind name  | `encode_record(&AlertEvent)`: the episode's latest event |
//! | `district_hourly` | tenant `0x00` district `0x00` hour start*        | `encode_record(&DistrictUsage)` (an `Hour` row) |
//!
//! (`*`: the i64 as big-endian u64 with the sign bit flipped, so byte order is time
//! order.) Values are whole model records, [`encode_record`]-versioned; the key repeats
//! what the reads scan by.
//!
//! Invariants:
//! - **One fsync per call.** Everything one [`ReadingStore::write_outputs`](crate::ReadingStore::write_outputs) stores goes
//!   into ONE fjall write batch over the three keyspaces, committed with
//!   `PersistMode::SyncData`: all of it is durable when `Ok` returns, or none of it is
//!   visible. Outputs with nothing durable (no bills, no alert events, no `Hour` district
//!   rows — minute and day rows are cache-only) write nothing and sync nothing.
//! - **Upserts on natural keys.** A bill line replaces the stored line of its
//!   (tenant, period, meter), an hour row the stored row of its (tenant, district,
//!   hour); within one call, the later occurrence wins. Writing the same outputs
//!   twice leaves the same rows.
//! - **One row per alert episode, holding its latest event.** An episode is
//!   (tenant, meter, kind, opened_at). "Latest" is by event order — `at`, then the
//!   lifecycle (opened < updated < cleared) for events at the same instant — not by
//!   write order, so a replayed older event never reopens a cleared episode. Only an
//!   event of exactly the same order replaces the stored one (the later write wins).
//!   This is a read-modify-write; the store's writer lock serialises it between callers.
//! - **Unstorable ids are skipped.** A tenant, period, meter or district containing
//!   `0x00` could collide with another key; such a row is dropped with a warning (ids
//!   are validated upstream, so this is a bug guard), and readers asked for such an id
//!   find nothing.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use fjall::OwnedWriteBatch as WriteBatch;
use meterflow_model::Outputs;
use meterflow_model::alert::AlertEvent;
use meterflow_model::analytics::{DistrictUsage, Resolution};
use meterflow_model::billing::BillLine;
use meterflow_model::codec::binary::{decode_record, encode_record};

use super::{ALERTS, BILLS, DISTRICT_HOURLY, EmbeddedStore, keep_last_per_key, keys};
use crate::StoreError;

/// Whether outputs hold anything this store keeps.
fn has_durable_rows(outputs: &Outputs) -> bool {
    !outputs.bills.is_empty()
        || !outputs.alerts.is_empty()
        || !outputs.exceptions.is_empty()
        || outputs
            .districts
            .iter()
            .any(|row| row.resolution == Resolution::Hour)
}

impl EmbeddedStore {
    /// [`ReadingStore::write_outputs`](crate::ReadingStore::write_outputs): see the module doc.
    pub(super) fn store_outputs(&self, outputs: &Outputs) -> Result<(), StoreError> {
        if !has_durable_rows(outputs) {
            return Ok(());
        }
        let _writer = self.lock_writer();
        let mut batch = self.durable_batch();
        self.stage_outputs(&mut batch, outputs)?;
        batch
            .commit()
            .map_err(|e| self.fjall_error("writing bills, alerts and district hours", e))
    }

    /// Adds the bills, alert episodes and hourly district rows of `outputs` to
    /// `batch`; the caller holds [`Self::lock_writer`] until it commits.
    pub(super) fn stage_outputs(
        &self,
        batch: &mut WriteBatch,
        outputs: &Outputs,
    ) -> Result<(), StoreError> {
        let mut bills = Vec::with_capacity(outputs.bills.len());
        for bill in &outputs.bills {
            if !all_storable(&[&bill.tenant, &bill.period, &bill.meter]) {
                tracing::warn!(
                    tenant = bill.tenant.escape_debug().to_string(),
                    meter = bill.meter.escape_debug().to_string(),
                    "bill not stored: an id contains 0x00"
                );
                continue;
            }
            bills.push((
                keys::bill_key(&bill.tenant, &bill.period, &bill.meter),
                bill,
            ));
        }
        keep_last_per_key(&mut bills);

        let mut hours = Vec::new();
        for row in &outputs.districts {
            if row.resolution != Resolution::Hour {
                continue;
            }
            if !all_storable(&[&row.tenant, &row.district]) {
                tracing::warn!(
                    tenant = row.tenant.escape_debug().to_string(),
                    district = row.district.escape_debug().to_string(),
                    "district hour not stored: an id contains 0x00"
                );
                continue;
            }
            let prefix = keys::district_hourly_prefix(&row.tenant, &row.district);
            hours.push((keys::district_hour_key(&prefix, row.start_ms), row));
        }
        keep_last_per_key(&mut hours);

        // The latest event of each episode in this call; ties: the later one.
        let mut episodes: BTreeMap<Vec<u8>, &AlertEvent> = BTreeMap::new();
        for event in &outputs.alerts {
            if !all_storable(&[&event.tenant, &event.meter]) {
                tracing::warn!(
                    tenant = event.tenant.escape_debug().to_string(),
                    meter = event.meter.escape_debug().to_string(),
                    "alert event not stored: an id contains 0x00"
                );
                continue;
            }
            let key = keys::alert_key(
                &event.tenant,
                event.opened_at,
                &event.meter,
                event.kind.name(),
            );
            match episodes.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(event);
                }
                Entry::Occupied(mut slot) => {
                    if event.revision >= slot.get().revision {
                        slot.insert(event);
                    }
                }
            }
        }

        for (key, event) in &episodes {
            if let Some(stored) = self.stored_episode(key)?
                && stored.revision > event.revision
            {
                continue;
            }
            batch.insert(&self.alerts, key.as_slice(), encode_record(*event));
        }
        // Superseded bill lines and hour rows were dropped above, before encoding:
        // a group holds one per meter (or district) per sealed batch.
        for (key, bill) in &bills {
            batch.insert(&self.bills, key.as_slice(), encode_record(*bill));
        }
        for (key, row) in &hours {
            batch.insert(&self.district_hourly, key.as_slice(), encode_record(*row));
        }
        self.stage_exceptions(batch, &outputs.exceptions);
        Ok(())
    }

    /// The stored latest event of an episode. A row that does not decode is reported
    /// and then treated as absent, so that the new event replaces it: refusing the
    /// write would stall every later output behind one bad row.
    fn stored_episode(&self, key: &[u8]) -> Result<Option<AlertEvent>, StoreError> {
        let Some(value) = self
            .alerts
            .get(key)
            .map_err(|e| self.fjall_error("reading an alert episode", e))?
        else {
            return Ok(None);
        };
        match decode_record(&value) {
            Ok(event) => Ok(Some(event)),
            Err(e) => {
                tracing::warn!(
                    key = %key.escape_ascii(),
                    error = %e,
                    "unreadable alert episode row is replaced by the new event"
                );
                Ok(None)
            }
        }
    }

    /// [`ReadingStore::bill`](crate::ReadingStore::bill).
    pub(super) fn stored_bill(
        &self,
        tenant: &str,
        period: &str,
        meter: &str,
    ) -> Result<Option<BillLine>, StoreError> {
        if !all_storable(&[tenant, period, meter]) {
            return Ok(None);
        }
        let key = keys::bill_key(tenant, period, meter);
        self.get_record(&self.bills, BILLS, &key, "reading a bill")
    }

    /// [`ReadingStore::alerts`](crate::ReadingStore::alerts): a reverse scan over the tenant's episodes.
    pub(super) fn stored_alerts(
        &self,
        tenant: &str,
        open_only: bool,
        limit: usize,
    ) -> Result<Vec<AlertEvent>, StoreError> {
        if limit == 0 || !keys::is_storable(tenant) {
            return Ok(Vec::new());
        }
        self.collect_records(
            self.alerts.prefix(keys::alerts_prefix(tenant)).rev(),
            ALERTS,
            "reading alerts",
            limit,
            |event: &AlertEvent| !open_only || event.state.is_open(),
        )
    }

    /// [`ReadingStore::district_hourly`](crate::ReadingStore::district_hourly): a range scan over the district's hours.
    pub(super) fn stored_district_hours(
        &self,
        tenant: &str,
        district: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<DistrictUsage>, StoreError> {
        if from_ms >= to_ms || !all_storable(&[tenant, district]) {
            return Ok(Vec::new());
        }
        let prefix = keys::district_hourly_prefix(tenant, district);
        let range =
            keys::district_hour_key(&prefix, from_ms)..keys::district_hour_key(&prefix, to_ms);
        let mut out = Vec::new();
        for entry in self.district_hourly.range(range) {
            let (key, value) = entry
                .into_inner()
                .map_err(|e| self.fjall_error("reading district hours", e))?;
            let row =
                decode_record(&value).map_err(|e| self.corrupt_row(DISTRICT_HOURLY, &key, e))?;
            out.push(row);
        }
        Ok(out)
    }
}

fn all_storable(parts: &[&str]) -> bool {
    parts.iter().all(|part| keys::is_storable(part))
}

#[cfg(test)]
mod tests {
    use meterflow_model::alert::{AlertKind, EpisodeState, Priority};

    use super::*;
    use crate::ReadingStore;

    fn event(state: EpisodeState, at: i64) -> AlertEvent {
        AlertEvent {
            tenant: "t".into(),
            meter: "m".into(),
            kind: AlertKind::Leak,
            priority: Priority::High,
            state,
            opened_at: 0,
            at,
            detail: String::new(),
            revision: AlertEvent::first_revision(at, state),
        }
    }

    fn write_alerts(store: &EmbeddedStore, alerts: Vec<AlertEvent>) {
        store
            .write_outputs(&Outputs {
                alerts,
                ..Outputs::default()
            })
            .unwrap();
    }

    #[test]
    fn first_revisions_order_by_time_then_lifecycle() {
        let opened = event(EpisodeState::Opened, 5);
        let updated = event(EpisodeState::Updated, 5);
        let cleared = event(EpisodeState::Cleared, 5);
        assert!(opened.revision < updated.revision);
        assert!(updated.revision < cleared.revision);
        assert!(cleared.revision < event(EpisodeState::Updated, 6).revision);
    }

    /// A later word on an episode wins even when its `at` is earlier: a clearing
    /// that a late read moved back, then the episode withdrawn.
    #[test]
    fn the_highest_revision_is_the_episode_s_word() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let write = |events| write_alerts(&store, events);
        let cleared_at_9 = event(EpisodeState::Cleared, 9);
        write(vec![event(EpisodeState::Opened, 1), cleared_at_9.clone()]);
        let cleared_at_4 = AlertEvent {
            revision: cleared_at_9.revision + 1,
            ..event(EpisodeState::Cleared, 4)
        };
        write(vec![cleared_at_4.clone()]);
        assert_eq!(
            store.alerts("t", false, 10).unwrap(),
            std::slice::from_ref(&cleared_at_4)
        );
        let withdrawn = AlertEvent {
            revision: cleared_at_4.revision + 1,
            ..event(EpisodeState::Withdrawn, 4)
        };
        write(vec![withdrawn.clone()]);
        assert_eq!(store.alerts("t", false, 10).unwrap(), [withdrawn]);
        assert!(store.alerts("t", true, 10).unwrap().is_empty());
    }

    #[test]
    fn only_hour_rows_bills_and_alerts_are_durable() {
        let mut outputs = Outputs::default();
        assert!(!has_durable_rows(&outputs));
        outputs
            .districts
            .push(DistrictUsage::new("t", "d", Resolution::Minute, 0));
        outputs
            .districts
            .push(DistrictUsage::new("t", "d", Resolution::Day, 0));
        assert!(!has_durable_rows(&outputs));
        outputs
            .districts
            .push(DistrictUsage::new("t", "d", Resolution::Hour, 0));
        assert!(has_durable_rows(&outputs));
        let alerts_only = Outputs {
            alerts: vec![event(EpisodeState::Opened, 1)],
            ..Outputs::default()
        };
        assert!(has_durable_rows(&alerts_only));
    }

    #[test]
    fn a_replayed_older_event_does_not_reopen_an_episode() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let write = |events| write_alerts(&store, events);
        write(vec![event(EpisodeState::Cleared, 9)]);
        write(vec![
            event(EpisodeState::Opened, 1),
            event(EpisodeState::Updated, 5),
        ]);
        let stored = store.alerts("t", false, 10).unwrap();
        assert_eq!(stored, [event(EpisodeState::Cleared, 9)]);
        assert!(store.alerts("t", true, 10).unwrap().is_empty());
    }

    #[test]
    fn rows_with_unstorable_ids_are_skipped_and_never_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut row = DistrictUsage::new("t", "no\0rth", Resolution::Hour, 0);
        row.usage_l = 5;
        store
            .write_outputs(&Outputs {
                districts: vec![row],
                ..Outputs::default()
            })
            .unwrap();
        assert!(
            store
                .district_hourly("t", "no\0rth", i64::MIN, i64::MAX)
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .district_hourly("t", "no", i64::MIN, i64::MAX)
                .unwrap()
                .is_empty()
        );
    }
}
