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
//! - **Concurrency**: admission is one atomic load in the closed state, and
//!   response futures reach the breaker through a per-thread cache
//!   ([`buttress_core::local`]) instead of a reference count per call. With
//!   a count window, successes are counted per thread and reach the window
//!   in batches of `window_size / 8` (1 to 32) with one atomic add: a
//!   success can never trip a breaker, so it may wait. A failure or slow
//!   call moves its thread's batch first (a thread's calls reach the window
//!   in order), a snapshot from the handle moves the calling thread's
//!   batch, and a thread's partial batch moves when the thread exits. So
//!   on one thread the window is exact; across threads it may lack up to
//!   one partial batch of the latest successes per worker thread, and
//!   nothing is lost. Successes from before a state change are dropped, as
//!   late results always are. A time window batches successes the same
//!   way, per second and up to 16: a success of a later second moves the
//!   batch into the bucket of its own second, and a batch whose second
//!   has left the window is dropped. Consecutive-failure mode records
//!   every call at once.
//! - **Rejection**: [`CircuitOpen`](error::CircuitOpen) with the time left
//!   until probes are let through, which the HTTP mapping sends as
//!   `Retry-After`; never an error from `poll_ready`.
//!
//! ```
//! use buttress_circuit_breaker::CircuitBreakerLayer;
//! use buttress_core::HttpClassifier;
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
#![forbid(unsafe_code)]

mod config;
pub mod error;
mod events;
pub mod future;
mod keyed;
mod layer;
mod service;
mod state;
mod sync;
mod window;

pub use config::CircuitBreakerConfig;
pub use events::CircuitBreakerEvent;
pub use keyed::{
    KeyedCircuitBreaker, KeyedCircuitBreakerBuilder, KeyedCircuitBreakerHandle,
    KeyedCircuitBreakerLayer,
};
pub use layer::{
    CircuitBreakerBuilder, CircuitBreakerHandle, CircuitBreakerLayer, CircuitBreakerSnapshot,
};
pub use service::CircuitBreaker;
pub use state::State;
