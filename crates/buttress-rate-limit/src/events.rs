//! Events of the rate limiter.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Which store made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Backend {
    /// This process's memory.
    Local,
    /// The shared Redis server.
    Redis,
    /// This process's memory, standing in for a Redis server that cannot
    /// be reached (outage policy `FallbackLocal`).
    LocalFallback,
    /// No store: Redis could not be reached and the outage policy decided
    /// (fail open or fail closed).
    OutagePolicy,
}

impl Backend {
    /// The name in snake case, as in snapshots.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Redis => "redis",
            Backend::LocalFallback => "local_fallback",
            Backend::OutagePolicy => "outage_policy",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum RejectReason {
    /// Not enough permits, and waiting was not allowed or would take longer
    /// than `max_wait`.
    Exhausted,
    /// Not enough permits and the wait queue was full.
    QueueFull,
    /// The call waited `max_wait` without getting its permits.
    WaitTimedOut,
    /// The call costs more permits than the limiter can ever give at once
    /// (more than its burst, less any reserve): it would never pass.
    OverCapacity,
    /// A keyed limiter had no room for a new key: every key held is still
    /// limited.
    KeysFull,
    /// The shared store could not be reached and the outage policy is to
    /// fail closed.
    BackendUnavailable,
}

impl RejectReason {
    /// The name in snake case, as in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Exhausted => "exhausted",
            RejectReason::QueueFull => "queue_full",
            RejectReason::WaitTimedOut => "wait_timed_out",
            RejectReason::OverCapacity => "over_capacity",
            RejectReason::KeysFull => "keys_full",
            RejectReason::BackendUnavailable => "backend_unavailable",
        }
    }
}

/// What a rate limiter reports to its listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitEvent {
    /// A call got its permits, after `waited` in the queue (zero when they
    /// were there at once).
    Permitted {
        /// The limiter's name.
        name: Arc<str>,
        /// Permits taken.
        cost: u64,
        /// Time spent waiting.
        waited: Duration,
        /// Who decided.
        backend: Backend,
    },
    /// A call joined the wait queue.
    Queued {
        /// The limiter's name.
        name: Arc<str>,
        /// Callers waiting, this one included.
        queued: usize,
        /// The call's priority.
        priority: u8,
    },
    /// A call was rejected.
    Rejected {
        /// The limiter's name.
        name: Arc<str>,
        /// Permits asked for.
        cost: u64,
        /// Why.
        reason: RejectReason,
        /// When the same call would be admitted, if known.
        retry_after: Option<Duration>,
        /// Who decided.
        backend: Backend,
    },
}
