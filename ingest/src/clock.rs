//! The service clock, read in one place: processors and the model never read a clock,
//! the runtime stamps what it receives.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
