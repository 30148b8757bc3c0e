//! Resilience middleware for [tower]: every pattern is a [`Layer`], so it
//! stacks in a [`ServiceBuilder`] in front of axum, hyper and tonic servers
//! and clients.
//!
//! | pattern | module | feature |
//! |---|---|---|
//! | per-call timeout, per-request deadlines | [`timeout`] | `timeout` (default) |
//! | bulkhead: concurrency limit, bounded queue, queue timeout | [`bulkhead`] | `bulkhead` (default) |
//! | circuit breaker: rate windows, slow calls, RAII half-open probes | [`circuit_breaker`] | `circuit-breaker` (default) |
//! | retry: backoff with jitter, budgets, Retry-After, HTTP body replay | [`retry`] | `retry` (default) |
//! | classification, events, registry, keys, errors to responses | [`core`] | always |
//!
//! Every layer:
//! - keeps its state in the layer's `Arc`, so axum's per-route `layer()`
//!   calls and service clones share one instance;
//! - allocates nothing and takes no lock on the happy path (a retry's
//!   HTTP body replay allocates its buffer's state per request, and a retry
//!   budget takes a short lock once per 32 requests);
//! - rejects through the response future with a small error struct that
//!   [`core::response::ErrorToResponseLayer`] turns into 503/504/429
//!   (servers) and callers can downcast (clients), never through an error
//!   from `poll_ready`;
//! - has a name, events (`.on_event`), a handle with a serde snapshot and
//!   run-time controls, and an optional [`Registry`] entry.
//!
//! # Protecting an axum server
//!
//! ```
//! use buttress::ServiceBuilderExt;
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//!
//! let registry = buttress::Registry::new();
//! let bulkhead = buttress::bulkhead::BulkheadLayer::builder()
//!     .name("api")
//!     .max_concurrent(64)
//!     .max_queue(128)
//!     .max_wait(Duration::from_millis(100))
//!     .registry(&registry)
//!     .build()
//!     .expect("valid bulkhead config");
//!
//! let app: axum::Router = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .layer(
//!         ServiceBuilder::new()
//!             .error_to_response()
//!             .bulkhead_with(bulkhead)
//!             .call_timeout(Duration::from_secs(5)),
//!     );
//! # let _ = app;
//! ```
//!
//! [tower]: https://docs.rs/tower
//! [`Layer`]: tower_layer::Layer
//! [`ServiceBuilder`]: tower::ServiceBuilder
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub use buttress_core as core;
pub use buttress_core::{
    BoxError, Classifier, ConfigError, ErrorKind, Listener, Outcome, Registry,
};

/// Per-call timeouts; see [`buttress_timeout`].
#[cfg(feature = "timeout")]
pub mod timeout {
    pub use buttress_timeout::*;
}

/// Bulkheads; see [`buttress_bulkhead`].
#[cfg(feature = "bulkhead")]
pub mod bulkhead {
    pub use buttress_bulkhead::*;
}

/// Circuit breakers; see [`buttress_circuit_breaker`].
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker {
    pub use buttress_circuit_breaker::*;
}

/// Retries; see [`buttress_retry`].
#[cfg(feature = "retry")]
pub mod retry {
    pub use buttress_retry::*;
}

mod builder;
pub use builder::ServiceBuilderExt;
