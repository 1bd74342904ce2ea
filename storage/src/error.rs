//! Storage and cache errors. A [`StoreError`] says whether the same call may succeed
//! later ([`StoreError::is_transient`]), so callers branch on the kind instead of on
//! message text: the sink retries a group commit only while its error is transient
//! (see `resilience` for who retries what).

/// A reading store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend is unreachable, overloaded or timed out; the same call may
    /// succeed later.
    #[error(
        "storage unavailable: {0}; the write is retried, check that the store is up and has disk space"
    )]
    Unavailable(String),
    /// Stored data could not be read back: a bug or a newer format.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The store was opened wrong (path not writable, schema missing) or refused the
    /// statement (permissions, schema, a value it does not take): retrying will not
    /// help.
    #[error("storage misconfigured: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether retrying the same call can help: only [`StoreError::Unavailable`]. Only
    /// transient errors are retried, and only they count against a circuit breaker.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A hot cache failed. Callers never need its kind: a failed update is held and
/// applied again with the next one (the cache holds absolute values), and a failed
/// read is a 503. Retrying transient Redis errors happens inside the cache, on the
/// driver's typed error.
#[derive(Debug, thiserror::Error)]
#[error("cache unavailable: {0}")]
pub struct CacheError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_transient() {
        assert!(StoreError::Unavailable("timeout".into()).is_transient());
        assert!(!StoreError::Corrupt("bad row".into()).is_transient());
        assert!(!StoreError::Config("rejected".into()).is_transient());
    }
}
