//! Events of the circuit breaker.

use std::sync::Arc;
use std::time::Duration;

use crate::state::State;

/// What a circuit breaker reports to its listeners.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CircuitBreakerEvent {
    /// The breaker changed state; exactly one event per transition.
    StateTransition {
        /// The breaker's name.
        name: Arc<str>,
        /// The state left.
        from: State,
        /// The state entered.
        to: State,
    },
    /// A call was recorded as a success.
    Success {
        /// The breaker's name.
        name: Arc<str>,
    },
    /// A call was recorded as a failure.
    Failure {
        /// The breaker's name.
        name: Arc<str>,
    },
    /// A call was classified as neither and not recorded.
    Ignored {
        /// The breaker's name.
        name: Arc<str>,
    },
    /// A call took longer than the slow-call threshold.
    SlowCall {
        /// The breaker's name.
        name: Arc<str>,
        /// How long it took.
        elapsed: Duration,
    },
    /// A call was rejected because the breaker is open (or half-open with
    /// every probe slot taken).
    NotPermitted {
        /// The breaker's name.
        name: Arc<str>,
    },
    /// The failure rate or the slow-call rate reached its threshold.
    ThresholdExceeded {
        /// The breaker's name.
        name: Arc<str>,
        /// The failure rate, in percent.
        failure_rate: f64,
        /// The slow-call rate, in percent.
        slow_call_rate: f64,
    },
}
