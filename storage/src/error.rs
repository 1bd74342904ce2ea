//! Storage and cache errors. Each says whether retrying can help, so the sink stage
//! branches on the kind instead of on message text.

/// A reading store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend is unreachable or overloaded; the same call may succeed later.
    #[error(
        "storage unavailable: {0}; the write is retried, check that the store is up and has disk space"
    )]
    Unavailable(String),
    /// Stored data could not be read back: a bug or a newer format.
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The store was opened wrong (path not writable, schema missing): retrying
    /// will not help.
    #[error("storage misconfigured: {0}")]
    Config(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A hot cache failed. Always retryable: the cache is rebuilt from later outputs.
#[derive(Debug, thiserror::Error)]
#[error("cache unavailable: {0}")]
pub struct CacheError(pub String);
