//! Fallbacks for tower services: when the service below fails, is
//! rejected (an open circuit, a timeout, a full bulkhead, a rate limit) or
//! answers with a response its classifier calls a failure (an HTTP 503),
//! answer from somewhere else, and say so.
//!
//! **Paths.** Applications depend on the facade crate `buttress`, which
//! re-exports this crate as `buttress::fallback` (feature `fallback`); the
//! examples use those paths. Depending on `buttress-fallback` directly, the
//! same items are at `buttress_fallback::...`, and `buttress::core` is
//! `buttress_core`.
//!
//! ```
//! # mod buttress { pub mod core { pub use buttress_core::*; } pub mod fallback { pub use buttress_fallback::*; } }
//! use buttress::core::{BoxError, ErrorKind};
//! use buttress::fallback::{FallbackEvent, FallbackLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Graceful degradation: personalised recommendations, else a popular
//! // list from another service, else a static default.
//! let popular = service_fn(|_user: u64| async { Ok::<_, BoxError>(vec!["popular"]) });
//! let svc = ServiceBuilder::new()
//!     .layer(FallbackLayer::value(vec!["static"]).name("static-default").build().unwrap())
//!     .layer(
//!         FallbackLayer::service(popular)
//!             .name("popular")
//!             .on_event(|e: &FallbackEvent| eprintln!("{e:?}"))
//!             .build()
//!             .unwrap(),
//!     )
//!     .service_fn(|_user: u64| async {
//!         Err::<Vec<&str>, BoxError>("the ML service is down".into())
//!     });
//! assert_eq!(svc.oneshot(42).await.unwrap(), vec!["popular"]);
//! # }
//! ```
//!
//! # Sources
//!
//! | constructor | answers with | keeps the request? |
//! |---|---|---|
//! | [`FallbackLayer::value`] | a clone of a fixed value | no |
//! | [`FallbackLayer::from_error`] | `f(&failure)` | no |
//! | [`FallbackLayer::from_request`] | `f(request, &failure)` | yes: `Req: Clone` |
//! | [`FallbackLayer::service`] | another tower service (a secondary upstream) | yes: `Req: Clone` |
//! | [`FallbackLayer::service_without_body`] | another HTTP service, given the request's head and an empty body | the head only |
//! | [`FallbackLayer::http_unavailable`] | `503` + small JSON body + `Retry-After` | no |
//! | [`FallbackLayer::builder`] | any [`FallbackSource`] | its choice |
//!
//! A source that needs the request keeps it before the primary takes it,
//! on every call: `Req: Clone` is required only by those sources, and the
//! cost of the clone is the request's (a `u64` costs nothing, an
//! `http::Request`'s headers allocate). The others keep `()`.
//!
//! **HTTP bodies are not replayed.** An `http::Request<B>` whose body is
//! a stream (hyper's `Incoming`, axum's `Body`) is not `Clone`; the
//! primary consumes it. [`FallbackLayer::service_without_body`] sends the
//! secondary the head (method, URI, headers, extensions) with an empty
//! body, which fits the usual fallback targets (GETs to a replica, a
//! cache, a static mirror). A secondary that needs the body needs a
//! `Clone` body (`String`, `Bytes`, `Full<Bytes>`) and
//! [`FallbackLayer::service`]. buttress-retry's bounded body replay is not
//! used: it changes the primary's request type and allocates on every
//! call, which a healthy call should not pay for a fallback that runs in
//! outages.
//!
//! # Triggers
//!
//! Any error by default ([`AnyError`]). [`FallbackBuilder::on_kinds`]: only
//! buttress rejections of some kinds ([`Kinds`], read anywhere in the
//! error's `source()` chain, so an open circuit behind `RetryExhausted`
//! counts); [`FallbackBuilder::when`]: a predicate on the error;
//! [`FallbackBuilder::classify`]: what a `buttress_core::Classifier` calls a
//! failure, responses included (the HTTP preset: errors, `5xx`, `429`);
//! [`Rules`]: kinds and HTTP statuses as data ([`FallbackConfig`]);
//! [`FallbackBuilder::on`]: any [`Trigger`], closures included. What does
//! not trigger goes back to the caller as it is (an error boxed into
//! [`BoxError`](buttress_core::BoxError)).
//!
//! # Chains
//!
//! A chain is layers nested, outermost last: primary, then a secondary
//! service, then a static default, as in the example above. An inner
//! fallback that fails returns [`FallbackFailed`](error::FallbackFailed),
//! which the outer one's trigger sees (its `source()` chain still holds
//! the primary's rejection, so `on_kinds` works at every level). A failed
//! *response* of the secondary (a 503) reaches the outer layer as a
//! response, marked as a fallback, where a classifier trigger catches it.
//!
//! # Never silent
//!
//! - **The marker**: an [`HttpMarker`] puts a [`FallbackUsed`] extension
//!   (name and [`FallbackReason`]) on every fallback response and, if asked,
//!   a header (`x-fallback: catalog; reason=circuit_open`). Generic
//!   responses have nowhere to carry it: [`NoMark`] is the default, and any
//!   closure can mark (set a `stale` flag, say).
//! - **Events** ([`FallbackEvent`]): `Primary`, `Used`, `Failed`, one per
//!   call, to `.on_event` listeners and the metrics bridge.
//! - **The fallback's own failure** is returned as
//!   [`FallbackFailed`](error::FallbackFailed): its error, with the
//!   original failure as its `source()`.
//! - **Counters**: [`FallbackHandle::snapshot`] (calls, primary, fallbacks
//!   used, fallback failures), also through a
//!   [`Registry`](buttress_core::Registry).
//! - **Metrics** (feature `metrics`): [`FallbackBuilder::metrics`] (or a
//!   `Registry::with_metrics()` registry) publishes
//!   `buttress_fallback_calls_total{name,kind}`, `kind` = `primary`,
//!   `fallback_used`, `fallback_failed`. Install the recorder before
//!   building the layer.
//!
//! # Cost
//!
//! A call the trigger lets through costs what the source keeps of the
//! request (nothing for a value, a function of the error or the
//! ready-made 503), the trigger's check, and the response future's way
//! back to the layer; no allocation, no lock. That way is one of two:
//!
//! - **quiet**: the layer is not observed (no listener, registry, metrics
//!   or handle), its name is a `&'static str`, and its source, trigger and
//!   marker are plain copies (no drop glue, at most 32 bytes: a `u64`
//!   value, a non-capturing closure, [`Unavailable`], [`Kinds`], the HTTP
//!   classifier, [`HttpMarker`] without a header). The future carries its
//!   own copies and touches no shared state.
//! - **observed**, otherwise: one reference count on the layer's shared
//!   state per call (about 10 ns here), and, once observed, one relaxed
//!   atomic add for the `primary` counter.
//!
//! A value that owns memory (a `String`, a response) is not a plain copy;
//! a non-capturing closure that builds it,
//! `from_error(|_| Ok(String::from("n/a")))`, is, and allocates only when
//! the fallback runs.
//!
//! The fallback path allocates what it needs (its future, boxed so that a
//! healthy call's future is the primary's and a few words; the boxed
//! errors; the event; the marker's name).
//!
//! # Tracing
//!
//! Every event has `buttress.pattern = "fallback"`, `buttress.name` and
//! `fallback.reason` (the [`FallbackReason`] label):
//!
//! | event (message) | level | fields |
//! |---|---|---|
//! | `fallback used` | `debug`, one per call answered by the fallback | |
//! | `fallback failed` | `warn`, one per call whose fallback failed too | `error` (the fallback's error) |
//!
//! A fallback used is `debug`, not `warn`: during an outage every call
//! takes it, by design, so a `warn` per call would flood the log exactly
//! when the service is degraded; alert on the `fallback_used` count
//! instead. A failed fallback is a `warn`: the caller gets an error despite
//! the fallback (raise this crate's level to `error` where the caller logs
//! the error anyway). A call answered by the primary emits nothing.
//!
//! Events have the target of this crate (`buttress_fallback`), so a filter
//! such as `RUST_LOG=info,buttress_fallback=debug` shows every fallback.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
pub mod error;
mod events;
pub mod future;
mod layer;
mod marker;
#[cfg(feature = "metrics")]
mod metrics;
mod service;
mod source;
mod trigger;

pub use config::FallbackConfig;
pub use events::FallbackEvent;
pub use layer::{FallbackBuilder, FallbackHandle, FallbackLayer, FallbackSnapshot};
pub use marker::{FallbackReason, FallbackUsed, HttpMarker, Mark, NoMark, FALLBACK_HEADER};
pub use service::Fallback;
pub use source::{
    Failure, FallbackSource, FromError, FromRequest, Head, Oneshot, ToService, Unavailable, Value,
    WithoutBody, APPLICATION_JSON,
};
pub use trigger::{AnyError, Classified, Kinds, Predicate, Rules, Trigger};
