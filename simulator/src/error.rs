//! The simulator library's one error type. A run that merely fails to get every
//! message acked is not an error: that is a [`crate::Report`] with `unacked > 0`.

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The config breaks one or more rules; every broken rule is listed.
    #[error("invalid simulator config: {}; fix these and run again", .0.join("; "))]
    InvalidConfig(Vec<String>),
    /// A meter task panicked: a simulator bug, the report would be wrong.
    #[error("meter task {meter} failed: {reason}; this is a simulator bug, please report it")]
    MeterTaskFailed { meter: String, reason: String },
}
