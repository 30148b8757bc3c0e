//! Retries for tower services that never storm.
//!
//! [`RetryLayer`] sends a failed call again, after a delay, until it
//! succeeds, the attempts run out, or something says stop. What it gets
//! right:
//!
//! - **Backoff with jitter that survives the cap** ([`Backoff`],
//!   [`Jitter`]): fixed, linear and exponential delays; full, equal,
//!   decorrelated and `±f` jitter, all of which keep spreading once the
//!   delay reaches `max_delay`, so clients never fall into lockstep.
//!   Randomness is injectable and seedable ([`RandomSource`]).
//! - **Budgets** ([`RetryBudget`]): retries as an exact share of recent
//!   traffic plus a floor, Finagle style, shareable between layers. This is
//!   what keeps a failing dependency from being hit by a multiple of its
//!   normal load.
//! - **Server hints**: `Retry-After` (seconds or HTTP-date), gRPC
//!   `grpc-retry-pushback-ms`, and the `retry_after` of buttress
//!   rejections (an open circuit, a rate limit). The wait is never shorter
//!   than the hint; a hint beyond `max_delay` ends the retries.
//! - **Deadlines**: a retry is not scheduled when its delay would end at or
//!   after the caller's deadline (an outer buttress timeout's
//!   [`Deadline`](buttress_core::deadline::Deadline) or `grpc-timeout`), or
//!   past `max_elapsed`. The wait for the inner service's readiness after
//!   the delay is not bounded here: the outer timeout that set the deadline
//!   bounds it.
//! - **HTTP requests** ([`HttpReplay`]): no `Clone` needed. The body is
//!   buffered up to a limit while the first attempt streams it; a larger one
//!   is sent once. Only idempotent requests (or those with an
//!   `Idempotency-Key`) are retried once they may have reached the server.
//! - **The Service contract**: the response future makes its own service
//!   clone ready before every retry. On the happy path, with
//!   [`CloneRequest`], the layer itself allocates nothing and, until it is
//!   observed, writes no shared state (it reads one generation counter
//!   per call, to see a run-time change); what the request, policy and
//!   service clones cost is theirs (a `u64` request and the presets'
//!   policies cost nothing; a boxed service allocates). [`HttpReplay`]
//!   allocates per request: the kept headers and the body buffer's state.
//! - **Hot reload**: [`RetryHandle::reconfigure`] swaps the attempts,
//!   backoff, jitter and limits of a live layer as one value for the next
//!   calls of every service it made; a retry in progress keeps what it
//!   started with.
//! - **Metrics**: with the `metrics` feature, [`RetryBuilder::metrics`] (or
//!   a [`Registry::with_metrics`](buttress_core::Registry::with_metrics)
//!   registry) publishes the calls by kind and the attempts through the
//!   `metrics` facade, to any recorder; install the recorder before
//!   building the layer (the README's "Metrics" section lists the names).
//!
//! On exhaustion the caller gets the last response as it is (an HTTP 503,
//! say), or the last error wrapped in
//! [`RetryExhausted`](error::RetryExhausted), which says how many attempts
//! were made and keeps the error as its `source()`.
//!
//! **Paths.** Applications depend on the facade crate `buttress`, which
//! re-exports this crate as `buttress::retry` (feature `retry`, on by
//! default); the examples use those paths. Depending on `buttress-retry`
//! directly, the same items are at `buttress_retry::...`, and `buttress::core`
//! is `buttress_core`.
//!
//! ```
//! # mod buttress { pub mod core { pub use buttress_core::*; } pub mod retry { pub use buttress_retry::*; } }
//! use buttress::retry::{RetryBudget, RetryEvent, RetryLayer};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let budget = RetryBudget::builder().percent(20.0).build().unwrap();
//! let layer = RetryLayer::exponential(4, Duration::from_millis(50), Duration::from_secs(1))
//!     .name("catalog")
//!     .budget(budget.clone())
//!     .on_event(|e: &RetryEvent| {
//!         if let RetryEvent::Scheduled { attempt, delay, .. } = e {
//!             eprintln!("attempt {attempt} in {delay:?}");
//!         }
//!     })
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|id: u64| async move { Ok::<_, std::io::Error>(id) });
//! assert_eq!(svc.oneshot(42).await.unwrap(), 42);
//! # }
//! ```
//!
//! # gRPC with tonic
//!
//! A tonic `Channel` is a `Service<http::Request<tonic::body::Body>>`; put
//! [`RetryLayer::for_grpc`] in front of it and box the replayed body back
//! into tonic's body type below the layer:
//!
//! ```text
//! let channel = ServiceBuilder::new()
//!     .layer(RetryLayer::for_grpc().max_attempts(3).build()?)
//!     .map_request(|req: http::Request<ReplayBody<tonic::body::Body>>| {
//!         req.map(tonic::body::Body::new)
//!     })
//!     .service(channel);
//! let client = MyServiceClient::new(channel);
//! ```
//!
//! Errors are `BoxError` (tower's convention); the futures need a tokio
//! runtime with the time driver enabled to wait between attempts.
//!
//! # Tracing
//!
//! The retry layer reports through [`tracing`]. Every event and span has
//! `buttress.pattern = "retry"` and `buttress.name`.
//!
//! - **Spans.** Each retry is a span `buttress.retry.attempt` (level
//!   `info`, fields `retry.attempt`: 2 for the first retry, and
//!   `retry.delay_ms`: the wait before it), a child of the span current
//!   while the response future is polled (the request's span, when the
//!   caller instruments the call), entered while that attempt gets its
//!   service ready, is called and its future is polled, and closed once
//!   its outcome is decided. The **first attempt runs in the caller's
//!   span, without a span of its own**, so that a call that needs no
//!   retry opens no span and pays nothing: the span is made only when a
//!   retry is, and only if a subscriber is interested (otherwise it is a
//!   disabled span, which costs nothing to enter).
//! - **The wait** between attempts is a `debug` event `retry scheduled`
//!   with `retry.attempt` (the attempt to come), `retry.delay_ms` and
//!   `retry.cause` (`response`, `error`, `connect_error`, `rejected`),
//!   emitted in the span of the attempt that failed; in a trace the gap
//!   between two attempt spans is the wait.
//! - `retries exhausted`: `warn`, when the last attempt allowed by
//!   `max_attempts` failed (with `retry.attempt`, the attempts made, and
//!   `retry.cause`). It is one line per failed call, and during an outage
//!   every call fails: raise this crate's level
//!   (`buttress_retry=error`) where the caller logs the error anyway.
//! - `not retried: ...`: `debug`, a failure not retried for a reason
//!   other than the attempts (`retry.reason`: `budget_exhausted`,
//!   `non_idempotent`, `deadline`, `max_elapsed`, `hint_too_long`, ...).
//!   A spent budget is `debug` too: it refuses retries for every call of
//!   an outage, which is its purpose.
//! - `succeeded after retries`: `debug`, with `retry.attempt`.
//! - A call that succeeds at once emits nothing.
//!
//! Events have the target of this crate (`buttress_retry`), so a filter such as
//! `RUST_LOG=info,buttress_retry=debug` shows its per-call decisions. With no
//! subscriber installed (or the level filtered out) an event costs one
//! relaxed atomic load and a branch, and its fields are never computed; the
//! happy path, which emits nothing, stays as fast (the `layers` bench).

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod body;
mod budget;
mod config;
pub mod error;
mod events;
pub mod future;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
pub mod policy;
mod request;
mod rng;
mod service;
mod sync;

pub use backoff::{Backoff, Jitter};
pub use body::ReplayBody;
pub use budget::{BudgetSnapshot, RetryBudget, RetryBudgetBuilder};
pub use config::{BudgetConfig, RetryConfig};
pub use events::{Cause, NotRetried, RetryEvent};
pub use layer::{RetryBuilder, RetryHandle, RetryLayer, RetrySnapshot};
pub use policy::{
    Classified, GrpcRetry, HttpRetry, NetworkErrors, RetryErrors, RetryPolicy, Verdict,
};
pub use request::{
    is_idempotent, CloneRequest, Cloned, HttpReplay, HttpReplayState, Replay, ReplayRequest,
    IDEMPOTENCY_KEY,
};
pub use rng::{RandomSource, SeededRandom};
pub use service::Retry;
