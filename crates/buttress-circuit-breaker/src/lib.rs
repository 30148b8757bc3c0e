//! A circuit breaker for tower services, with Resilience4j's semantics and
//! none of its stuck states.
//!
//! - **Window**: the outcomes of the last `window_size` calls; the breaker
//!   opens when the failure rate or the slow-call rate reaches its threshold
//!   (`>=`) once `minimum_calls` are in the window (clamped to its size). Or
//!   `consecutive_failures`: N failures in a row.
//! - **States**: [`State::Closed`], [`State::Open`], [`State::HalfOpen`],
//!   and the operator states [`State::Disabled`], [`State::ForcedOpen`],
//!   [`State::MetricsOnly`]:
//!
//!   | from | event | to |
//!   |---|---|---|
//!   | closed | a rate reaches its threshold, or N failures in a row | open |
//!   | open | the open wait is over (next call, or timer when `automatic_half_open`) | half-open |
//!   | half-open | the N probes are in and both rates are below the thresholds | closed |
//!   | half-open | the N probes are in and a rate reaches its threshold | open |
//!   | half-open | `max_wait_in_half_open` passes without a verdict | open |
//!   | any | `force_open` / `force_closed` / `disable` / `metrics_only` / `reset` | forced open / closed / disabled / metrics only / closed |
//!
//!   Each transition happens once and emits exactly one event, however
//!   many calls race for it.
//! - **Open wait**: fixed, or growing with each consecutive opening
//!   (`open_wait_multiplier`, capped by `max_wait_in_open`), with a random
//!   share (`open_wait_jitter`) that stays below the cap too, so replicas do
//!   not probe in lockstep.
//! - **Half-open probes** are RAII slots: a probe that is dropped,
//!   cancelled or classified `Ignored` frees its slot for another caller and
//!   is not counted, so the breaker cannot get stuck half-open (Resilience4j
//!   #903, Polly #1979). A result from a call admitted in an earlier state
//!   never decides a later state's verdict (Resilience4j #1432).
//! - **Exactness**: admission is one atomic load while calls pass.
//!   Recording a call, the verdict over the window and the transition it
//!   calls for are one critical section under a short lock, so:
//!   - the count window holds exactly the last `window_size` recorded
//!     calls, in the order their threads recorded them; nothing is batched
//!     or cached per thread;
//!   - the thresholds are checked after every recorded call, success or
//!     failure, as Resilience4j does: the breaker never opens while the
//!     rates of the recorded calls are below both thresholds, and never
//!     stays closed after a call that brings one to its threshold with the
//!     minimum of calls in the window;
//!   - a call is recorded when its response future completes, so a
//!     snapshot taken when no call is in flight counts every completed
//!     call;
//!   - counts are `u64`: no load saturates them or raises a rate;
//!   - the probe slots change together with the state, so one half-open
//!     state never admits more than `permitted_calls_in_half_open` probes
//!     (the largest number in force during it, when
//!     [`CircuitBreakerHandle::reconfigure`] changes it at run time), and a probe from an earlier half-open state never frees or
//!     takes a slot of a later one;
//!   - transition and threshold events are queued under the lock and
//!     delivered in the order of the transitions, one thread at a time,
//!     after the lock is released (a listener may call the handle);
//!     outcome events (`Success`, `Failure`, `Ignored`, `SlowCall`) are
//!     emitted by the completing call before it is recorded.
//!
//!   A time window counts the calls of the last N whole seconds by one
//!   clock: a ticker task publishes the current second (following tokio's
//!   paused clock in tests), and every call and every snapshot reads that
//!   same second, so the window never moves back and never drops a call
//!   of a second it still covers. A call counts in the second the ticker
//!   shows when it completes, at most the ticker's scheduling delay behind
//!   the clock.
//! - **Rejection**: [`CircuitOpen`](error::CircuitOpen) with the time left
//!   until probes are let through, which the HTTP mapping sends as
//!   `Retry-After`; never an error from `poll_ready`.
//! - **Metrics**: with the `metrics` feature,
//!   [`CircuitBreakerBuilder::metrics`] (or a
//!   [`Registry::with_metrics`](buttress_core::Registry::with_metrics)
//!   registry) publishes the events through the `metrics` facade, to any
//!   recorder (Prometheus, StatsD, ...); install the recorder before
//!   building the layer. The README's "Metrics" section lists the names.
//!
//! ```
//! # mod buttress { pub mod core { pub use buttress_core::*; } pub mod circuit_breaker { pub use buttress_circuit_breaker::*; } }
//! use buttress::circuit_breaker::CircuitBreakerLayer;
//! use buttress::core::HttpClassifier;
//! use std::time::Duration;
//!
//! let layer = CircuitBreakerLayer::builder()
//!     .name("payments")
//!     .window_size(50)
//!     .minimum_calls(20)
//!     .slow_call_duration(Duration::from_secs(2))
//!     .wait_in_open(Duration::from_secs(5))
//!     .open_wait_multiplier(2.0)
//!     .max_wait_in_open(Duration::from_secs(120))
//!     .open_wait_jitter(0.2)
//!     .classifier(HttpClassifier::new())
//!     .build()
//!     .unwrap();
//! # let _ = layer;
//! ```
//!
//! # Tracing
//!
//! The breaker reports its decisions through [`tracing`], at levels that
//! keep a healthy service quiet: a closed breaker passing calls emits
//! nothing at all. Every event has `buttress.pattern = "circuit_breaker"`
//! and `buttress.name` (a keyed breaker's name is `name[key]`).
//!
//! | event (message) | level | fields |
//! |---|---|---|
//! | `circuit breaker opened` | `warn` | `circuit.state`, `circuit.from`, `circuit.to` (`open`) |
//! | `circuit breaker closed` | `info` | `circuit.state`, `circuit.from`, `circuit.to` (`closed`) |
//! | `circuit breaker changed state` (half-open, forced open, disabled, metrics-only) | `info` | `circuit.state`, `circuit.from`, `circuit.to` |
//! | `circuit breaker threshold exceeded` | `debug` (the `warn` of the opening follows); `info` in the metrics-only state, once per crossing | `circuit.state`, `circuit.failure_rate`, `circuit.slow_call_rate` |
//! | `half-open probe admitted` | `debug` | `circuit.state`, `circuit.probe` |
//! | `call rejected: circuit open` | `debug`, one per rejected call | `circuit.state` |
//!
//! A rejection is `debug`, not `warn`: an open breaker rejects every call,
//! and a `warn` each would flood the log; the opening itself is the one
//! `warn`. State changes are emitted when they happen, in their order,
//! also when an operator forces them (`info`: a forced opening is no
//! surprise to whoever forced it).
//!
//! Events have the target of this crate (`buttress_circuit_breaker`), so a filter such as
//! `RUST_LOG=info,buttress_circuit_breaker=debug` shows its per-call decisions. With no
//! subscriber installed (or the level filtered out) an event costs one
//! relaxed atomic load and a branch, and its fields are never computed; the
//! happy path, which emits nothing, stays as fast (the `layers` bench).

#![forbid(unsafe_code)]

mod config;
pub mod error;
mod events;
pub mod future;
mod keyed;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
mod service;
mod state;
mod sync;
mod window;

/// What a keyed layer does with a request without a key (from
/// `buttress-core`, shared by every keyed layer).
pub use buttress_core::key::MissingKey;
pub use config::CircuitBreakerConfig;
pub use events::CircuitBreakerEvent;
pub use keyed::{
    KeyedCircuitBreaker, KeyedCircuitBreakerBuilder, KeyedCircuitBreakerHandle,
    KeyedCircuitBreakerLayer, KeyedResponseFuture,
};
pub use layer::{
    CircuitBreakerBuilder, CircuitBreakerHandle, CircuitBreakerLayer, CircuitBreakerSnapshot,
};
pub use service::CircuitBreaker;
pub use state::State;
