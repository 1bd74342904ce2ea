//! Validation exceptions in the embedded store: the `exceptions` keyspace behind the
//! exceptions part of [`ReadingStore::write_outputs`](crate::ReadingStore::write_outputs)
//! and its two readers.
//!
//! | keyspace     | key                                   | value                               |
//! |--------------|---------------------------------------|-------------------------------------|
//! | `exceptions` | tenant `0x00` meter `0x00` ts*         | `encode_record(&ReadException)`     |
//!
//! (`*`: order-preserving, as in `keys.rs`.) One row per suspect read, upserted: the
//! latest word VEE or an operator had on it wins. A tenant's list is a forward scan
//! of its prefix, in (meter, ts) order.

use fjall::OwnedWriteBatch as WriteBatch;
use meterflow_model::codec::binary::encode_record;
use meterflow_model::{ExceptionState, ReadException};

use super::{EXCEPTIONS, EmbeddedStore, keep_last_per_key, keys};
use crate::StoreError;

/// Most rows one list call looks through (on top of the `limit` it returns): a bound
/// on what one request reads when few rows match its state.
pub(crate) const MAX_SCANNED_EXCEPTIONS: usize = 100_000;

impl EmbeddedStore {
    /// Adds the exceptions of `exceptions` to `batch` (the later of two for one read
    /// wins); the caller holds [`Self::lock_writer`] until it commits.
    pub(super) fn stage_exceptions(&self, batch: &mut WriteBatch, exceptions: &[ReadException]) {
        let mut rows = Vec::with_capacity(exceptions.len());
        for exception in exceptions {
            if !keys::is_storable(&exception.tenant) || !keys::is_storable(&exception.meter) {
                tracing::warn!(
                    tenant = exception.tenant.escape_debug().to_string(),
                    meter = exception.meter.escape_debug().to_string(),
                    "exception not stored: an id contains 0x00"
                );
                continue;
            }
            let key = keys::exception_key(&exception.tenant, &exception.meter, exception.ts);
            rows.push((key, exception));
        }
        keep_last_per_key(&mut rows);
        for (key, exception) in rows {
            batch.insert(&self.exceptions, key, encode_record(exception));
        }
    }

    /// [`ReadingStore::exceptions`](crate::ReadingStore::exceptions).
    pub(super) fn stored_exceptions(
        &self,
        tenant: &str,
        state: Option<ExceptionState>,
        limit: usize,
    ) -> Result<Vec<ReadException>, StoreError> {
        if limit == 0 || !keys::is_storable(tenant) {
            return Ok(Vec::new());
        }
        let rows = self.exceptions.prefix(keys::exceptions_prefix(tenant));
        self.collect_records(
            rows.take(MAX_SCANNED_EXCEPTIONS),
            EXCEPTIONS,
            "reading exceptions",
            limit,
            |exception: &ReadException| state.is_none_or(|state| exception.state == state),
        )
    }

    /// [`ReadingStore::exception`](crate::ReadingStore::exception).
    pub(super) fn stored_exception(
        &self,
        tenant: &str,
        meter: &str,
        ts: i64,
    ) -> Result<Option<ReadException>, StoreError> {
        if !keys::is_storable(tenant) || !keys::is_storable(meter) {
            return Ok(None);
        }
        let key = keys::exception_key(tenant, meter, ts);
        self.get_record(&self.exceptions, EXCEPTIONS, &key, "reading an exception")
    }
}
