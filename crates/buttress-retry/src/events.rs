//! Events of the retry layer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What made an attempt fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Cause {
    /// A response that the policy retries (a 503, `UNAVAILABLE`, ...).
    Response,
    /// An error.
    Error,
    /// An error before the connection was made: the request was never
    /// sent, so it may be retried whatever its method.
    ConnectError,
    /// A local buttress rejection (an open circuit, a rate limit, a full
    /// bulkhead) of an inner layer: the request was never sent either.
    Rejected,
}

/// Why a failure that the policy would retry was not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum NotRetried {
    /// A non-idempotent request (`POST`, `PATCH`) without an
    /// `Idempotency-Key` header, which may have reached the server.
    NonIdempotent,
    /// The request body was larger than the buffer limit: it was sent once
    /// and not kept.
    BodyTooLarge,
    /// The previous attempt still held the unread rest of the request body,
    /// or the body failed and its rest is lost.
    BodyInUse,
    /// The next attempt could not start before the caller's deadline.
    Deadline,
    /// The next attempt could not start within `max_elapsed` of the first.
    MaxElapsed,
    /// The server asked for a wait longer than `max_delay`.
    HintTooLong,
    /// The server said not to retry (a negative or malformed
    /// `grpc-retry-pushback-ms`).
    Refused,
    /// The inner service failed while getting ready for the next attempt;
    /// the caller gets that error, wrapped in `RetryExhausted`.
    NotReady,
}

impl fmt::Display for NotRetried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotRetried::NonIdempotent => "the request is not idempotent",
            NotRetried::BodyTooLarge => "the request body is larger than the buffer limit",
            NotRetried::BodyInUse => "the previous attempt still holds the request body",
            NotRetried::Deadline => "the caller's deadline would pass first",
            NotRetried::MaxElapsed => "max_elapsed would pass first",
            NotRetried::HintTooLong => "the server asked for a wait beyond max_delay",
            NotRetried::Refused => "the server refused retries",
            NotRetried::NotReady => "the service failed while getting ready",
        })
    }
}

/// What the retry layer reports to its listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryEvent {
    /// Attempt `attempt` (2 for the first retry) starts after `delay`.
    Scheduled {
        /// The layer's name.
        name: Arc<str>,
        /// The number of the attempt about to be made.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
        /// What made the previous attempt fail.
        cause: Cause,
        /// The server's hint, when it gave one.
        hint: Option<Duration>,
    },
    /// A call succeeded after `retries` retries (at least one).
    Succeeded {
        /// The layer's name.
        name: Arc<str>,
        /// Retries it took.
        retries: u32,
    },
    /// Every allowed attempt failed.
    Exhausted {
        /// The layer's name.
        name: Arc<str>,
        /// Attempts made.
        attempts: u32,
    },
    /// The retry budget was spent: the last result goes back unretried.
    BudgetExhausted {
        /// The layer's name.
        name: Arc<str>,
        /// Attempts made.
        attempts: u32,
    },
    /// A failure was not retried, for `reason`.
    NotRetried {
        /// The layer's name.
        name: Arc<str>,
        /// Attempts made.
        attempts: u32,
        /// Why.
        reason: NotRetried,
    },
    /// A call ended and its caller got the result: once per call that
    /// completes (a call dropped before is not reported), after the
    /// `Exhausted`, `BudgetExhausted` or `NotRetried` event that ended it
    /// and before its `Succeeded`. The four counts of
    /// [`RetrySnapshot`](crate::RetrySnapshot), as events.
    Finished {
        /// The layer's name.
        name: Arc<str>,
        /// Counted as a success, as in [`RetrySnapshot`](crate::RetrySnapshot):
        /// an `Ok` given back as it is (accepted by the policy, or a
        /// response that could not be sent again); `false` for a failure
        /// given back, a retryable response after the last retry included.
        succeeded: bool,
        /// Whether there was at least one retry.
        retried: bool,
        /// Whether the call ended because its attempts ran out (after an
        /// [`Exhausted`](RetryEvent::Exhausted) event).
        exhausted: bool,
    },
}
