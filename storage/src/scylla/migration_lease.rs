//! One replica migrates a keyspace at a time. Replicas that start together against a
//! new keyspace would otherwise run the same migration side by side, and one of them
//! could see another's `ALTER TABLE … ADD` in `system_schema` before the node applied
//! it, skip it, and fail to prepare its statements ("Undefined column name").
//!
//! The lease is one row of `schema_lease`, taken with a lightweight transaction
//! (`INSERT … IF NOT EXISTS`, Paxos: both ScyllaDB and Cassandra have it) and given
//! back when the migrations are done. It carries a TTL, so a replica that dies while
//! migrating holds it no longer than [`LEASE_TTL_S`]; the migrations it left halfway
//! are idempotent and the next holder runs them again. A replica that finds the lease
//! taken waits for it, then migrates in turn — by then usually finding nothing to do.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::scylla::client::session::Session;
use ::scylla::value::{CqlValue, Row};

use super::errors;
use crate::error::StoreError;

/// How long a lease lasts unless given back: far longer than the migrations take.
const LEASE_TTL_S: u32 = 60;
/// Longest wait for another replica's lease: its TTL, twice.
const MAX_WAIT: Duration = Duration::from_secs(2 * LEASE_TTL_S as u64);
/// Pause between attempts to take a taken lease.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// `CREATE TABLE` of the lease's table.
pub(super) fn table_statement(keyspace: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.schema_lease (\
         id int PRIMARY KEY, holder text, taken_at timestamp)"
    )
}

/// A lease this process holds.
pub(super) struct Lease {
    keyspace: String,
    holder: String,
}

impl Lease {
    /// Takes the keyspace's lease, waiting (at most twice its TTL) while another
    /// replica holds it.
    pub(super) async fn take(session: &Session, keyspace: &str) -> Result<Lease, StoreError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let holder = format!("pid {} at {now_ms}", std::process::id());
        let insert = format!(
            "INSERT INTO {keyspace}.schema_lease (id, holder, taken_at) \
             VALUES (0, ?, toTimestamp(now())) IF NOT EXISTS USING TTL {LEASE_TTL_S}"
        );
        let deadline = Instant::now() + MAX_WAIT;
        let mut logged = false;
        loop {
            let result = session
                .query_unpaged(insert.as_str(), (holder.as_str(),))
                .await
                .map_err(|e| errors::execution("taking the schema lease failed", &e))?;
            let rows = result
                .into_rows_result()
                .map_err(|e| errors::type_check("the schema lease returned no rows", &e))?;
            let row: Row = rows
                .first_row()
                .map_err(|e| errors::type_check("the schema lease returned no row", &e))?;
            match row.columns.first() {
                Some(Some(CqlValue::Boolean(true))) => {
                    return Ok(Lease {
                        keyspace: keyspace.to_owned(),
                        holder,
                    });
                }
                Some(Some(CqlValue::Boolean(false))) => {}
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "the schema lease answered {other:?}, not [applied]"
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "another replica has held the schema lease of {keyspace} for over {} s; \
                     is a migration stuck? (the lease is the row of {keyspace}.schema_lease)",
                    MAX_WAIT.as_secs()
                )));
            }
            if !logged {
                tracing::info!(
                    keyspace,
                    "another replica is migrating the schema; waiting for it"
                );
                logged = true;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Gives the lease back (if that fails, its TTL ends it).
    pub(super) async fn release(self, session: &Session) {
        let delete = format!(
            "DELETE FROM {}.schema_lease WHERE id = 0 IF holder = ?",
            self.keyspace
        );
        if let Err(error) = session
            .query_unpaged(delete.as_str(), (self.holder.as_str(),))
            .await
        {
            tracing::warn!(keyspace = %self.keyspace, %error, "giving back the schema lease failed; it ends with its TTL");
        }
    }
}
