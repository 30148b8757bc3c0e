//! Events of the circuit breaker.

use std::sync::Arc;
use std::time::Duration;

use crate::state::State;

/// What a circuit breaker reports to its listeners.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CircuitBreakerEvent {
    /// The breaker changed state: exactly one event per transition,
    /// delivered in the order of the transitions.
    StateTransition {
        /// The breaker's name.
        name: Arc<str>,
        /// The state left.
        from: State,
        /// The state entered.
        to: State,
    },
    /// A call completed as a success. Reported for every call admitted
    /// while the breaker was not disabled, recorded or not (a call admitted
    /// before a state change is reported but not recorded).
    Success {
        /// The breaker's name.
        name: Arc<str>,
    },
    /// A call completed as a failure (reported as `Success` is).
    Failure {
        /// The breaker's name.
        name: Arc<str>,
    },
    /// A call was classified as neither and not recorded (reported as
    /// `Success` is).
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
    /// The breaker was reset by an operator: back to closed (after a
    /// `StateTransition` event if it was in another state), with an empty
    /// window.
    Reset {
        /// The breaker's name.
        name: Arc<str>,
    },
    /// The failure rate or the slow-call rate reached its threshold: once
    /// per opening in the closed state, once per verdict in the half-open
    /// state, and once per crossing in the metrics-only state.
    ThresholdExceeded {
        /// The breaker's name.
        name: Arc<str>,
        /// The failure rate, in percent.
        failure_rate: f64,
        /// The slow-call rate, in percent.
        slow_call_rate: f64,
    },
}
