//! A bulkhead for tower services: at most `max_concurrent` calls at once,
//! an optional bounded FIFO wait queue with a queue timeout, and rejection
//! with [`BulkheadFull`](error::BulkheadFull) beyond that.
//!
//! **Paths.** Applications depend on the facade crate `buttress`, which
//! re-exports this crate as `buttress::bulkhead` (feature `bulkhead`, on by
//! default); the examples use those paths. Depending on `buttress-bulkhead`
//! directly, the same items are at `buttress_bulkhead::...`, and `buttress::core`
//! is `buttress_core`.
//!
//! ```
//! # mod buttress { pub mod core { pub use buttress_core::*; } pub mod bulkhead { pub use buttress_bulkhead::*; } }
//! use buttress::bulkhead::{error::BulkheadFull, BulkheadLayer};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = BulkheadLayer::builder()
//!     .name("search")
//!     .max_concurrent(1)
//!     .build()
//!     .unwrap();
//! let mut svc = ServiceBuilder::new().layer(layer).service_fn(|()| async {
//!     Ok::<_, std::convert::Infallible>("done")
//! });
//!
//! // The first call holds the only permit until its future finishes...
//! let first = svc.ready().await.unwrap().call(());
//! // ...so a second one is rejected: ready, then a failing call.
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! assert_eq!(err.downcast_ref::<BulkheadFull>().unwrap().name(), "search");
//! assert_eq!(first.await.unwrap(), "done");
//! # }
//! ```
//!
//! How it behaves:
//!
//! - **Where it waits.** [`Bulkhead`] takes its permit in `poll_ready`
//!   (like tower's `ConcurrencyLimit`) and moves it into the response
//!   future in `call`. Clones start without a permit.
//! - **How it rejects.** Never with an error from `poll_ready`: the service
//!   reports ready and the call fails at once without reaching the inner
//!   service, so the service stays usable (tower's `LoadShed` pattern).
//!   `buttress::core::response::ErrorToResponseLayer` (or `error_to_response()`
//!   on a `ServiceBuilder`) turns the rejection
//!   into a 503.
//! - **RAII.** A permit is released when the response future completes or
//!   is dropped, when a service holding one is dropped, and on inner
//!   errors. A queued caller that is dropped or times out leaves the queue
//!   at once and never takes a permit afterwards; a permit granted to it in
//!   the same instant is passed on.
//! - **Cost.** A free permit costs one compare-and-swap to take and one
//!   atomic add to give back; no lock, no allocation. The queue (a mutex
//!   and a small allocation per waiter) is only touched when the bulkhead
//!   is full.
//! - **Operations.** [`BulkheadHandle`] gives a snapshot (active, queued,
//!   available, completed, rejected) and changes the limits at run time
//!   without touching calls in flight, one by one or a whole config for
//!   hot reload ([`BulkheadHandle::reconfigure`], also on the keyed
//!   handle); builders register it in a
//!   [`Registry`](buttress_core::Registry) and take event listeners.
//! - **Keyed.** [`KeyedBulkheadLayer`] keeps one bulkhead per key in a
//!   bounded map. A request whose key cannot be extracted is rejected
//!   with [`KeyMissing`](buttress_core::error::KeyMissing) by default
//!   ([`MissingKey`]); a `ClientIp` key behind axum needs
//!   `into_make_service_with_connect_info::<SocketAddr>()` and buttress's
//!   `axum` feature.
//! - **Validation.** Every constructor and run-time setter validates as
//!   the builder does and returns a `ConfigError` rather than panicking
//!   or accepting a limit of 0.
//! - **Metrics.** With the `metrics` feature, [`BulkheadBuilder::metrics`]
//!   (or a [`Registry::with_metrics`](buttress_core::Registry::with_metrics)
//!   registry) publishes the events through the `metrics` facade, to any
//!   recorder (Prometheus, StatsD, ...); install the recorder before
//!   building the layer. The README's "Metrics" section lists the names.
//!
//! # Tracing
//!
//! The bulkhead reports through [`tracing`], with
//! `buttress.pattern = "bulkhead"` and `buttress.name` on every event:
//!
//! | event (message) | level | fields |
//! |---|---|---|
//! | `call rejected: bulkhead full` | `debug`, one per rejected call | `bulkhead.queued` (calls waiting then), `bulkhead.reason` (`queue_full`, `wait_timed_out`) |
//! | `every key is in use; request rejected` (keyed) | `debug` | `bulkhead.reason` (`keys_full`) |
//! | `call queued` | `trace` | `bulkhead.queued` |
//!
//! A rejection is deliberately not a `warn`: a full bulkhead rejects every
//! call beyond its limit, so a `warn` per call would flood the log (and
//! cost the most) exactly when the service is busiest. Alert on the
//! rejection count of the registry snapshot or the metrics instead. A call
//! that gets a permit at once emits nothing.
//!
//! Events have the target of this crate (`buttress_bulkhead`), so a filter such as
//! `RUST_LOG=info,buttress_bulkhead=debug` shows its per-call decisions. With no
//! subscriber installed (or the level filtered out) an event costs one
//! relaxed atomic load and a branch, and its fields are never computed; the
//! happy path, which emits nothing, stays as fast (the `layers` bench).

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

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

#[cfg(all(test, buttress_loom))]
mod loom_models;

/// What a keyed layer does with a request without a key (from
/// `buttress-core`, shared by every keyed layer).
pub use buttress_core::key::MissingKey;
pub use config::BulkheadConfig;
pub use events::BulkheadEvent;
pub use keyed::{
    KeyedBulkhead, KeyedBulkheadBuilder, KeyedBulkheadHandle, KeyedBulkheadLayer,
    KeyedResponseFuture,
};
pub use layer::{BulkheadBuilder, BulkheadHandle, BulkheadLayer};
pub use service::Bulkhead;
pub use state::BulkheadSnapshot;

/// The largest `max_concurrent` a bulkhead accepts (2<sup>30</sup>), in
/// the builder, [`BulkheadLayer::new`] and
/// [`BulkheadHandle::set_max_concurrent`] alike.
pub const MAX_CONCURRENT: usize = state::MAX_PERMITS;
