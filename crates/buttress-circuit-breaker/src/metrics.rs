//! The bridge from [`CircuitBreakerEvent`]s to the [`metrics`] facade
//! (feature `metrics`), switched on by `.metrics()` on the builders or a
//! [`Registry::with_metrics`] registry.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `buttress_circuit_breaker_state` | gauge | `name`, `state` (unkeyed only) |
//! | `buttress_circuit_breaker_transitions_total` | counter | `name`, `from`, `to` |
//! | `buttress_circuit_breaker_calls_total` | counter | `name`, `kind` |
//! | `buttress_circuit_breaker_failure_rate` | gauge | `name` (unkeyed only) |
//! | `buttress_circuit_breaker_slow_call_rate` | gauge | `name` (unkeyed only) |
//!
//! The rate gauges are live: the rates of the window (in percent) as of
//! the last recorded call, set under the breaker's lock, so the last value
//! written is the current one; -1 while fewer calls than the minimum are
//! recorded and after a transition to any state but open (the window starts
//! over), as Resilience4j reports them. An open breaker keeps the rates that
//! opened it; in half-open, the rates of the probes once they all
//! completed. A breaker counting consecutive failures has no rate: -1. A
//! time window's rates are those of its last call: seconds that expire
//! without calls do not change the gauge until the next call.
//!
//! Every handle is resolved once, when the layer is built, against the
//! recorder installed then: install the recorder first.

use std::cell::Cell;

use buttress_core::{Listener, Listeners, Registry};
use metrics::{Counter, Gauge};

use crate::events::CircuitBreakerEvent;
use crate::state::{RateSink, State};

const STATE: &str = "buttress_circuit_breaker_state";
const TRANSITIONS: &str = "buttress_circuit_breaker_transitions_total";
const CALLS: &str = "buttress_circuit_breaker_calls_total";
const FAILURE_RATE: &str = "buttress_circuit_breaker_failure_rate";
const SLOW_CALL_RATE: &str = "buttress_circuit_breaker_slow_call_rate";

/// Every state, in the order of `State as usize`.
const STATES: [State; 6] = [
    State::Closed,
    State::Open,
    State::HalfOpen,
    State::Disabled,
    State::ForcedOpen,
    State::MetricsOnly,
];

thread_local! {
    /// Whether the last outcome reported on this thread was a failure. A
    /// breaker reports a call's `SlowCall` right after its `Success` or
    /// `Failure`, on the same thread, so this tells the two slow kinds
    /// apart.
    static LAST_FAILED: Cell<bool> = const { Cell::new(false) };
}

/// Adds a bridge to `listeners` when `.metrics()` was called or the
/// registry has metrics on. `initial` is the breaker's state for the
/// state gauge; `None` (a keyed breaker) leaves out the state and rate
/// gauges, which one series per instance cannot show for many keys.
/// Returns, for an unkeyed breaker, the sink that keeps its live rate
/// gauges.
pub(crate) fn attach(
    name: &str,
    on: bool,
    registry: Option<&Registry>,
    listeners: &mut Listeners<CircuitBreakerEvent>,
    initial: Option<State>,
) -> Option<RateSink> {
    if !buttress_core::bridge::should_attach(name, on, registry) {
        return None;
    }
    listeners.push(std::sync::Arc::new(MetricsBridge::new(name, initial)));
    initial?;
    metrics::describe_gauge!(
        FAILURE_RATE,
        "A circuit breaker's failure rate over its window, in percent; -1 when unknown."
    );
    metrics::describe_gauge!(
        SLOW_CALL_RATE,
        "A circuit breaker's slow-call rate over its window, in percent; -1 when unknown."
    );
    let failure_rate = metrics::gauge!(FAILURE_RATE, "name" => name.to_owned());
    let slow_call_rate = metrics::gauge!(SLOW_CALL_RATE, "name" => name.to_owned());
    failure_rate.set(-1.0);
    slow_call_rate.set(-1.0);
    Some(Box::new(move |failure, slow| {
        failure_rate.set(failure);
        slow_call_rate.set(slow);
    }))
}

struct Gauges {
    /// One series per state, by `State as usize`.
    state: [Gauge; 6],
}

/// Turns one breaker's events into metrics through handles resolved at
/// build time.
struct MetricsBridge {
    /// By `from as usize * 6 + to as usize`.
    transitions: Vec<Counter>,
    successful: Counter,
    failed: Counter,
    ignored: Counter,
    not_permitted: Counter,
    slow_successful: Counter,
    slow_failed: Counter,
    gauges: Option<Gauges>,
}

impl MetricsBridge {
    fn new(name: &str, initial: Option<State>) -> Self {
        metrics::describe_counter!(TRANSITIONS, "State transitions of a circuit breaker.");
        metrics::describe_counter!(CALLS, "Calls seen by a circuit breaker, by kind.");
        let label = || name.to_owned();
        let transitions = STATES
            .iter()
            .flat_map(|from| STATES.iter().map(move |to| (*from, *to)))
            .map(|(from, to)| {
                metrics::counter!(
                    TRANSITIONS,
                    "name" => label(), "from" => from.as_str(), "to" => to.as_str()
                )
            })
            .collect();
        let calls =
            |kind: &'static str| metrics::counter!(CALLS, "name" => label(), "kind" => kind);
        let gauges = initial.map(|initial| {
            metrics::describe_gauge!(
                STATE,
                "1 for a circuit breaker's current state, 0 for the others."
            );
            let gauges = Gauges {
                state: STATES
                    .map(|s| metrics::gauge!(STATE, "name" => label(), "state" => s.as_str())),
            };
            gauges.set_state(initial);
            gauges
        });
        Self {
            transitions,
            successful: calls("successful"),
            failed: calls("failed"),
            ignored: calls("ignored"),
            not_permitted: calls("not_permitted"),
            slow_successful: calls("slow_successful"),
            slow_failed: calls("slow_failed"),
            gauges,
        }
    }
}

impl Gauges {
    fn set_state(&self, current: State) {
        for (gauge, state) in self.state.iter().zip(STATES) {
            gauge.set(if state == current { 1.0 } else { 0.0 });
        }
    }
}

impl Listener<CircuitBreakerEvent> for MetricsBridge {
    fn on_event(&self, event: &CircuitBreakerEvent) {
        match event {
            CircuitBreakerEvent::Success { .. } => {
                LAST_FAILED.with(|f| f.set(false));
                self.successful.increment(1);
            }
            CircuitBreakerEvent::Failure { .. } => {
                LAST_FAILED.with(|f| f.set(true));
                self.failed.increment(1);
            }
            CircuitBreakerEvent::Ignored { .. } => self.ignored.increment(1),
            CircuitBreakerEvent::SlowCall { .. } => {
                if LAST_FAILED.with(Cell::get) {
                    self.slow_failed.increment(1);
                } else {
                    self.slow_successful.increment(1);
                }
            }
            CircuitBreakerEvent::NotPermitted { .. } => self.not_permitted.increment(1),
            CircuitBreakerEvent::StateTransition { from, to, .. } => {
                self.transitions[*from as usize * STATES.len() + *to as usize].increment(1);
                if let Some(g) = &self.gauges {
                    g.set_state(*to);
                }
            }
            // The rate gauges are kept by the breaker itself (`attach`).
            CircuitBreakerEvent::ThresholdExceeded { .. } | CircuitBreakerEvent::Reset { .. } => {}
        }
    }
}
