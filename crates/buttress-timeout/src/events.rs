//! Events of the timeout layer.

use std::sync::Arc;
use std::time::Duration;

/// Where the time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Waiting for the inner service to become ready (only with
    /// [`TimeoutBuilder::include_ready`](crate::TimeoutBuilder::include_ready)).
    Ready,
    /// Waiting for the response.
    Call,
}

/// What the timeout layer reports to its listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutEvent {
    /// A call (or the wait for readiness) ran out of time.
    TimedOut {
        /// The layer's name.
        name: Arc<str>,
        /// The timeout that applied to this call.
        timeout: Duration,
        /// Where the time ran out.
        phase: Phase,
    },
}
