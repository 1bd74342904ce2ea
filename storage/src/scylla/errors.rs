//! Turns the driver's errors into [`StoreError`]s with the right kind: `Unavailable`
//! (transient, retrying can help: connection lost, timeout, overloaded, not enough
//! replicas up) or `Config` (the cluster rejected the statement: wrong schema, no
//! permission, syntax, a value it does not take) or `Corrupt` (rows that do not
//! decode). Only `Unavailable` is retried (by the caller of the store) and counted by
//! the circuit breaker.

use ::scylla::errors::{
    DbError, ExecutionError, NewSessionError, NextPageError, NextRowError, PagerExecutionError,
    PrepareError, RequestAttemptError, RequestError,
};

use crate::error::StoreError;

/// What an error says about the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Unreachable, overloaded or short of replicas: may work later.
    Transient,
    /// The cluster answered "no" to this statement: will not work later either.
    Rejected,
    /// The answer did not decode.
    Corrupt,
}

fn make(kind: Kind, context: &str, error: &dyn std::fmt::Display) -> StoreError {
    match kind {
        Kind::Transient => StoreError::Unavailable(format!("{context}: {error}")),
        Kind::Rejected => StoreError::Config(format!(
            "{context}: the cluster rejected the statement ({error}); check the keyspace, its schema migrations and the user's permissions"
        )),
        Kind::Corrupt => StoreError::Corrupt(format!("{context}: {error}")),
    }
}

fn db_error(error: &DbError) -> Kind {
    match error {
        DbError::Unavailable { .. }
        | DbError::Overloaded
        | DbError::IsBootstrapping
        | DbError::ReadTimeout { .. }
        | DbError::WriteTimeout { .. }
        | DbError::ReadFailure { .. }
        | DbError::WriteFailure { .. }
        | DbError::ServerError
        | DbError::TruncateError
        | DbError::RateLimitReached { .. }
        | DbError::Unprepared { .. } => Kind::Transient,
        _ => Kind::Rejected,
    }
}

fn attempt(error: &RequestAttemptError) -> Kind {
    match error {
        RequestAttemptError::DbError(db, _) => db_error(db),
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_) => Kind::Rejected,
        RequestAttemptError::CqlResultParseError(_)
        | RequestAttemptError::CqlErrorParseError(_)
        | RequestAttemptError::BodyExtensionsParseError(_)
        | RequestAttemptError::UnexpectedResponse(_)
        | RequestAttemptError::NonfinishedPagingState => Kind::Corrupt,
        // Broken connections, no free stream ids, re-preparation races.
        _ => Kind::Transient,
    }
}

fn prepare(error: &PrepareError) -> Kind {
    match error {
        PrepareError::AllAttemptsFailed { first_attempt } => attempt(first_attempt),
        _ => Kind::Transient,
    }
}

fn request(error: &RequestError) -> Kind {
    match error {
        RequestError::LastAttemptError(a) => attempt(a),
        _ => Kind::Transient,
    }
}

fn execution_kind(error: &ExecutionError) -> Kind {
    match error {
        ExecutionError::BadQuery(_) => Kind::Rejected,
        ExecutionError::LastAttemptError(a) => attempt(a),
        ExecutionError::PrepareError(p) => prepare(p),
        // Empty plans (no node up), pool errors, timeouts, schema agreement and
        // metadata troubles are all about reaching the cluster.
        _ => Kind::Transient,
    }
}

fn next_page(error: &NextPageError) -> Kind {
    match error {
        NextPageError::RequestFailure(r) => request(r),
        NextPageError::PartitionKeyError(_) => Kind::Rejected,
        _ => Kind::Corrupt,
    }
}

pub(crate) fn execution(context: &str, error: &ExecutionError) -> StoreError {
    let kind = execution_kind(error);
    let mut store_error = make(kind, context, error);
    if let (
        StoreError::Unavailable(message),
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Unavailable { .. },
            _,
        )),
    ) = (&mut store_error, error)
    {
        message.push_str(
            " (fewer replicas are up than the consistency level needs: is the keyspace's replication factor above the number of nodes?)",
        );
    }
    store_error
}

pub(crate) fn prepare_error(context: &str, error: &PrepareError) -> StoreError {
    make(prepare(error), context, error)
}

pub(crate) fn pager(context: &str, error: &PagerExecutionError) -> StoreError {
    let kind = match error {
        PagerExecutionError::PrepareError(p) => prepare(p),
        PagerExecutionError::SerializationError(_) => Kind::Rejected,
        PagerExecutionError::NextPageError(n) => next_page(n),
        _ => Kind::Transient,
    };
    make(kind, context, error)
}

pub(crate) fn next_row(context: &str, error: &NextRowError) -> StoreError {
    let kind = match error {
        NextRowError::NextPageError(n) => next_page(n),
        _ => Kind::Corrupt,
    };
    make(kind, context, error)
}

pub(crate) fn type_check(context: &str, error: &dyn std::fmt::Display) -> StoreError {
    make(Kind::Corrupt, context, error)
}

pub(crate) fn new_session(error: &NewSessionError) -> StoreError {
    match error {
        NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => {
            StoreError::Config(format!("cannot configure the CQL session: {error}"))
        }
        // Unresolvable names (DNS not ready yet in a fresh deployment) and
        // unreachable nodes both heal by themselves.
        _ => StoreError::Unavailable(format!(
            "cannot connect to the CQL cluster: {error}; check the contact points and that the cluster is up"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ::scylla::errors::{BadQuery, WriteType};
    use ::scylla::statement::Consistency;

    use super::*;

    fn db(error: DbError) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(error, "test".into()))
    }

    #[test]
    fn unreachable_overloaded_and_timed_out_are_transient() {
        let transient = [
            db(DbError::Overloaded),
            db(DbError::IsBootstrapping),
            db(DbError::Unavailable {
                consistency: Consistency::LocalQuorum,
                required: 2,
                alive: 1,
            }),
            db(DbError::WriteTimeout {
                consistency: Consistency::LocalQuorum,
                received: 1,
                required: 2,
                write_type: WriteType::UnloggedBatch,
            }),
            db(DbError::ReadTimeout {
                consistency: Consistency::LocalQuorum,
                received: 1,
                required: 2,
                data_present: false,
            }),
            ExecutionError::RequestTimeout(Duration::from_secs(5)),
            ExecutionError::EmptyPlan,
            ExecutionError::LastAttemptError(RequestAttemptError::UnableToAllocStreamId),
        ];
        for error in &transient {
            let kind = execution("writing readings failed", error);
            assert!(
                matches!(kind, StoreError::Unavailable(_)),
                "{error}: {kind}"
            );
            assert!(kind.is_transient());
        }
    }

    #[test]
    fn a_rejected_statement_or_value_is_not_transient() {
        let rejected = [
            db(DbError::Invalid),
            db(DbError::SyntaxError),
            db(DbError::Unauthorized),
            ExecutionError::BadQuery(BadQuery::ValuesTooLongForKey(70_000, 65_535)),
        ];
        for error in &rejected {
            let kind = execution("writing readings failed", error);
            assert!(matches!(kind, StoreError::Config(_)), "{error}: {kind}");
            assert!(!kind.is_transient());
        }
        let unreadable =
            ExecutionError::LastAttemptError(RequestAttemptError::NonfinishedPagingState);
        assert!(matches!(
            execution("reading readings failed", &unreadable),
            StoreError::Corrupt(_)
        ));
    }

    #[test]
    fn too_few_replicas_names_the_replication_factor() {
        let error = execution(
            "writing readings failed",
            &db(DbError::Unavailable {
                consistency: Consistency::LocalQuorum,
                required: 2,
                alive: 1,
            }),
        );
        assert!(error.to_string().contains("replication factor"), "{error}");
    }

    #[test]
    fn session_errors() {
        assert!(!new_session(&NewSessionError::EmptyKnownNodesList).is_transient());
        assert!(
            new_session(&NewSessionError::FailedToResolveAnyHostname(vec![
                "scylla:9042".into()
            ]))
            .is_transient()
        );
    }
}
