//! Validation exceptions in ScyllaDB: the `exceptions` table (migration 4), one row
//! per suspect read, upserted (the latest word VEE or an operator had on it wins):
//!
//! ```text
//! exceptions ((tenant), meter, ts)
//!   reg bigint, reason text, state text, received_at timestamp,
//!   decided_by text, decided_why text, decided_at timestamp
//! ```
//!
//! A tenant's exceptions are one partition in (meter, ts) order; a list filtered by
//! state pages through it, at most [`MAX_SCANNED_EXCEPTIONS`] rows a call.

use std::collections::BTreeMap;

use ::scylla::client::session::Session;
use ::scylla::statement::prepared::PreparedStatement;
use ::scylla::value::CqlTimestamp;
use ::scylla::{DeserializeRow, SerializeRow};
use futures_util::stream::FuturesUnordered;
use meterflow_model::{Decision, ExceptionReason, ExceptionState, ReadException};

use super::{Core, UnitFuture, bigint, cql_limit, drain, prepare_statement, unsigned};
use crate::error::StoreError;

/// Most rows one list call looks through (on top of the `limit` it returns).
const MAX_SCANNED_EXCEPTIONS: usize = 100_000;

pub(super) fn table(ks: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {ks}.exceptions (\
         tenant text, meter text, ts timestamp, reg bigint, reason text, state text, \
         received_at timestamp, decided_by text, decided_why text, decided_at timestamp, \
         PRIMARY KEY ((tenant), meter, ts))"
    )
}

pub(super) struct ExceptionStatements {
    insert: PreparedStatement,
    select_tenant: PreparedStatement,
    select_one: PreparedStatement,
}

const COLUMNS: &str =
    "meter, ts, reg, reason, state, received_at, decided_by, decided_why, decided_at";

impl ExceptionStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let prepare = |cql: String| prepare_statement(session, cql);
        Ok(Self {
            insert: prepare(format!(
                "INSERT INTO {ks}.exceptions (tenant, {COLUMNS}) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            select_tenant: prepare(format!(
                "SELECT {COLUMNS} FROM {ks}.exceptions WHERE tenant = ? LIMIT ?"
            ))
            .await?,
            select_one: prepare(format!(
                "SELECT {COLUMNS} FROM {ks}.exceptions WHERE tenant = ? AND meter = ? AND ts = ?"
            ))
            .await?,
        })
    }
}

/// An `exceptions` row as bound to `insert`.
#[derive(SerializeRow)]
struct ExceptionRow<'a> {
    tenant: &'a str,
    meter: &'a str,
    ts: CqlTimestamp,
    reg: i64,
    reason: &'a str,
    state: &'a str,
    received_at: CqlTimestamp,
    decided_by: Option<&'a str>,
    decided_why: Option<&'a str>,
    decided_at: Option<CqlTimestamp>,
}

/// What the selects return.
#[derive(DeserializeRow)]
struct ExceptionColumns {
    meter: String,
    ts: CqlTimestamp,
    reg: i64,
    reason: String,
    state: String,
    received_at: CqlTimestamp,
    decided_by: Option<String>,
    decided_why: Option<String>,
    decided_at: Option<CqlTimestamp>,
}

fn row(e: &ReadException) -> ExceptionRow<'_> {
    let decision = e.decision.as_ref();
    ExceptionRow {
        tenant: &e.tenant,
        meter: &e.meter,
        ts: CqlTimestamp(e.ts),
        reg: bigint(e.reg),
        reason: e.reason.code(),
        state: e.state.code(),
        received_at: CqlTimestamp(e.received_at),
        decided_by: decision.map(|d| d.by.as_str()),
        decided_why: decision.map(|d| d.why.as_str()),
        decided_at: decision.map(|d| CqlTimestamp(d.at_ms)),
    }
}

fn decode(tenant: &str, c: ExceptionColumns) -> Result<ReadException, StoreError> {
    let corrupt = |what: &str, value: &str| {
        StoreError::Corrupt(format!(
            "exceptions row of {tenant}/{} at {}: {what} {value:?} is not one this build knows",
            c.meter, c.ts.0
        ))
    };
    let reason =
        ExceptionReason::from_code(&c.reason).ok_or_else(|| corrupt("reason", &c.reason))?;
    let state = ExceptionState::from_code(&c.state).ok_or_else(|| corrupt("state", &c.state))?;
    let decision = match (c.decided_by, c.decided_at) {
        (Some(by), Some(at)) => Some(Decision {
            by,
            why: c.decided_why.unwrap_or_default(),
            at_ms: at.0,
        }),
        _ => None,
    };
    Ok(ReadException {
        tenant: tenant.to_owned(),
        meter: c.meter,
        ts: c.ts.0,
        reg: unsigned(c.reg),
        reason,
        state,
        received_at: c.received_at.0,
        decision,
    })
}

impl Core {
    /// Upserts exceptions, each its own statement (they are rare: one per suspect
    /// read); in one call, the later of two for one read is written last.
    pub(super) async fn write_exceptions(
        &self,
        exceptions: &[ReadException],
    ) -> Result<(), StoreError> {
        let latest: BTreeMap<(&str, &str, i64), &ReadException> = exceptions
            .iter()
            .map(|e| ((e.tenant.as_str(), e.meter.as_str(), e.ts), e))
            .collect();
        let statements: FuturesUnordered<UnitFuture<'_>> = FuturesUnordered::new();
        for e in latest.into_values() {
            statements.push(Box::pin(self.execute(
                "writing exceptions failed",
                &self.statements.exceptions.insert,
                row(e),
            )));
        }
        drain(statements).await
    }

    pub(super) async fn exceptions(
        &self,
        tenant: &str,
        state: Option<ExceptionState>,
        limit: usize,
    ) -> Result<Vec<ReadException>, StoreError> {
        if tenant.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let wanted = state.map(ExceptionState::code);
        let rows: Vec<ExceptionColumns> = self
            .select_matching(
                "reading exceptions failed",
                &self.statements.exceptions.select_tenant,
                (tenant, cql_limit(MAX_SCANNED_EXCEPTIONS)),
                limit,
                |row: &ExceptionColumns| wanted.is_none_or(|w| row.state == w),
            )
            .await?;
        rows.into_iter().map(|c| decode(tenant, c)).collect()
    }

    pub(super) async fn exception(
        &self,
        tenant: &str,
        meter: &str,
        ts: i64,
    ) -> Result<Option<ReadException>, StoreError> {
        if tenant.is_empty() {
            return Ok(None);
        }
        let rows: Vec<ExceptionColumns> = self
            .select_all(
                "reading an exception failed",
                &self.statements.exceptions.select_one,
                (tenant, meter, CqlTimestamp(ts)),
                1,
            )
            .await?;
        rows.into_iter()
            .next()
            .map(|c| decode(tenant, c))
            .transpose()
    }
}
