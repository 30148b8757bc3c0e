//! A rate limiter for tower services: exact algorithms (GCRA, token bucket,
//! fixed window, sliding log, sliding window), global or per key, a cost
//! per request, priorities with a reserve, and a bounded wait queue.
//!
//! **Paths.** Applications depend on the facade crate `buttress`, which
//! re-exports this crate as `buttress::rate_limit` (feature `rate-limit`).
//! Depending on `buttress-rate-limit` directly, the same items are at
//! `buttress_rate_limit::...`, and `buttress::core` is `buttress_core`.
//!
//! ```
//! # mod buttress { pub mod core { pub use buttress_core::*; } pub mod rate_limit { pub use buttress_rate_limit::*; } }
//! use buttress::core::RateLimited;
//! use buttress::rate_limit::{Rate, RateLimitLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // 100 calls per second on average, at most 10 at once.
//! let layer = RateLimitLayer::builder(Rate::per_second(100)).burst(10).build().unwrap();
//! let mut svc = ServiceBuilder::new().layer(layer).service_fn(|()| async {
//!     Ok::<_, std::convert::Infallible>("done")
//! });
//! for _ in 0..10 {
//!     svc.ready().await.unwrap().call(()).await.unwrap();
//! }
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! assert!(err.downcast_ref::<RateLimited>().is_some());
//! # }
//! ```
//!
//! How it behaves:
//!
//! - **Unambiguous rates.** [`Rate::per_second(100)`](Rate::per_second)
//!   admits 100 per second; [`Rate::new`] takes any period; the burst is a
//!   setting of its own. Each [`Algorithm`] documents the most it admits in
//!   any interval, and the tests check those bounds on random arrivals.
//! - **Exact under concurrency.** A global GCRA decision is one
//!   compare-and-swap on one word; the other algorithms and the keyed map
//!   decide under a short lock. No decision is batched or cached, so
//!   concurrent callers never pass more than one caller could.
//! - **Exact time by default.** A decision reads tokio's clock, so it
//!   follows a paused clock in tests to the nanosecond and admits exactly
//!   what the algorithm says at that instant. That read is most of the
//!   limiter's cost (about 17 ns of some 38 on a 2-core x86 VM, see
//!   BENCHMARKS.md); [`resolution`](RateLimitBuilder::resolution) trades
//!   it for one atomic load of a coarse clock (about 18 ns in all), at the
//!   price of decisions seeing time in steps of the resolution.
//! - **Shared by clones.** State is created once by the layer: every
//!   service it makes, and every clone, takes from the same limit (one
//!   layer on several axum routes gives one limit).
//! - **How it rejects.** In `call`, where the request's cost, priority and
//!   key are known: the service reports ready and the call fails with
//!   [`RateLimited`] (with `retry_after` and the
//!   quota) without reaching the inner service.
//!   `buttress::core::response::ErrorToResponseLayer` turns it into a 429
//!   with `Retry-After` (whole seconds, rounded up) and the IETF
//!   `RateLimit-Policy` / `RateLimit` headers; the gRPC mapping into
//!   `ResourceExhausted` with the delay in metadata. With
//!   `response_headers()` every response carries the headers.
//! - **Waiting.** With [`max_wait`](RateLimitBuilder::max_wait) and
//!   [`max_queue`](RateLimitBuilder::max_queue), a call may wait for its
//!   permits in a bounded queue, served by priority then in arrival order.
//!   A waiter that is dropped leaves the queue and takes nothing; a call
//!   whose permits would come after `max_wait` is rejected at once.
//! - **Priorities.** [`reserve`](RateLimitBuilder::reserve) keeps part of
//!   the capacity for high priorities, so a flood of low-priority calls
//!   cannot starve them.
//! - **Keys.** [`KeyedRateLimitLayer`] keeps one limit per key (client IP
//!   behind trusted proxies, header, extension, closure) in a bounded map
//!   that only evicts keys back to full, optionally with a global limit.
//! - **Operations.** [`RateLimitHandle`] gives a snapshot and changes the
//!   rate at run time, alone or from a whole config for hot reload
//!   ([`RateLimitHandle::reconfigure`], also on the keyed handle: rate and
//!   burst live, the settings fixed at build refused); builders register it in a
//!   [`Registry`](buttress_core::Registry) and take event listeners.
//! - **Metrics.** With the `metrics` feature,
//!   [`RateLimitBuilder::metrics`] (and the keyed and Redis builders', or a
//!   [`Registry::with_metrics`](buttress_core::Registry::with_metrics)
//!   registry) publishes the decisions through the `metrics` facade, to
//!   any recorder; install the recorder before building the layer (the
//!   README's "Metrics" section lists the names).
//!
//! # Tracing
//!
//! The rate limiter reports through [`tracing`], with
//! `buttress.pattern = "rate_limit"` and `buttress.name` on every event:
//!
//! | event (message) | level | fields |
//! |---|---|---|
//! | `call rejected: rate limited` | `debug`, one per rejected call | `rate_limit.reason` (`exhausted`, `queue_full`, `wait_timed_out`, `over_capacity`, `keys_full`, `backend_unavailable`), `rate_limit.cost`, `rate_limit.retry_after_ms` (when known) |
//! | `call waits for its permits` | `trace` | `rate_limit.priority` |
//!
//! A rejection is deliberately not a `warn`: a limit that is reached
//! rejects every call beyond it, often from one client, and a `warn` per
//! call would flood the log under exactly the load the limit exists for.
//! Count rejections in the registry snapshot or the metrics instead. An
//! admitted call emits nothing. (The Redis backend's outage and recovery
//! are logged once each, at `warn` and `info`.)
//!
//! Events have the target of this crate (`buttress_rate_limit`), so a filter such as
//! `RUST_LOG=info,buttress_rate_limit=debug` shows its per-call decisions. With no
//! subscriber installed (or the level filtered out) an event costs one
//! relaxed atomic load and a branch, and its fields are never computed; the
//! happy path, which emits nothing, stays as fast (the `layers` bench).

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod algorithm;
mod config;
mod decide;
mod events;
pub mod future;
mod headers;
mod keyed;
mod layer;
mod limiter;
#[cfg(feature = "metrics")]
mod metrics;
mod params;
mod queue;
mod rate;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod service;
mod sync;
mod weigh;

#[cfg(all(test, buttress_loom))]
mod loom_models;

/// What a keyed layer does with a request without a key (from
/// `buttress-core`, shared by every keyed layer).
pub use buttress_core::key::MissingKey;
/// The rejection error (from `buttress-core`, shared by every layer).
pub use buttress_core::{Quota, RateLimited};

pub use algorithm::{Algorithm, MAX_SLIDING_LOG_PERMITS};
pub use config::RateLimitConfig;
pub use events::{Backend, RateLimitEvent, RejectReason};
pub use headers::{Headers, NoHeaders, WithHeaders};
pub use keyed::{
    KeyedRateLimit, KeyedRateLimitBuilder, KeyedRateLimitHandle, KeyedRateLimitLayer,
    KeyedRateLimitSnapshot,
};
pub use layer::{RateLimitBuilder, RateLimitHandle, RateLimitLayer, RateLimitSnapshot};
pub use rate::{ParseRateError, Rate, MAX_PERIOD, MAX_PERMITS};
pub use service::RateLimit;
pub use weigh::{Cost, CostFn, Priority, PriorityFn, Unit};

pub(crate) const KIND: &str = "rate_limit";
