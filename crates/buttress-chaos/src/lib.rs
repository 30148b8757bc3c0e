//! Fault injection for tower services: errors, latency, hangs and broken
//! HTTP bodies, seeded and switchable at run time. Use it to show that
//! the rest of a stack (timeouts, retries, breakers, fallbacks) holds
//! when a dependency misbehaves.
//!
//! **Paths.** Applications depend on the facade crate `buttress`, which
//! re-exports this crate as `buttress::chaos` (feature `chaos`); the
//! examples use those paths. Depending on `buttress-chaos` directly, the
//! same items are at `buttress_chaos::...`.
//!
//! ```
//! # mod buttress { pub mod core { pub use buttress_core::*; } pub mod chaos { pub use buttress_chaos::*; } }
//! use buttress::chaos::{error::InjectedFault, ChaosLayer, FaultKind, Latency};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let chaos = ChaosLayer::builder()
//!     .name("inventory")
//!     .seed(42)
//!     .error_rate(0.2)
//!     .latency(0.5, Latency::Exponential { mean: Duration::from_millis(30) })
//!     .enabled(true)
//!     .build()
//!     .unwrap();
//! let mut svc = ServiceBuilder::new()
//!     .layer(chaos.clone())
//!     .service_fn(|id: u32| async move { Ok::<_, std::convert::Infallible>(id) });
//!
//! let mut failures = Vec::new();
//! for id in 0..100 {
//!     if let Err(e) = svc.ready().await.unwrap().call(id).await {
//!         assert!(e.is::<InjectedFault>());
//!         failures.push(id);
//!     }
//! }
//! assert_eq!(chaos.handle().snapshot().injected(FaultKind::Error), failures.len() as u64);
//!
//! // Seeded: started over, the same calls fail again.
//! chaos.handle().reset();
//! let mut again = Vec::new();
//! for id in 0..100 {
//!     if svc.ready().await.unwrap().call(id).await.is_err() {
//!         again.push(id);
//!     }
//! }
//! assert_eq!(again, failures);
//!
//! // Off: every call passes.
//! chaos.handle().disable();
//! assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), 7);
//! # }
//! ```
//!
//! # The faults
//!
//! | fault | what the caller sees | rate |
//! |---|---|---|
//! | [`FaultKind::Error`] | the call fails with [`InjectedFault`](error::InjectedFault) (the inner service is not called) | [`error_rate`](ChaosBuilder::error_rate) |
//! | [`FaultKind::Latency`] | the call is delayed on tokio's clock: [`Latency::Fixed`], [`Uniform`](Latency::Uniform), [`Exponential`](Latency::Exponential) or (approximately) [`Normal`](Latency::Normal) | [`latency`](ChaosBuilder::latency) |
//! | [`FaultKind::Hang`] | the call never completes until dropped | [`hang_rate`](ChaosBuilder::hang_rate) |
//! | [`FaultKind::AbortedBody`] | HTTP: the response body fails after some bytes | [`abort_body_rate`](ChaosBuilder::abort_body_rate) |
//! | [`FaultKind::TruncatedBody`] | HTTP: the response body ends early | [`truncate_body_rate`](ChaosBuilder::truncate_body_rate) |
//!
//! For each selected call, one draw picks at most one of error, hang,
//! aborted body and truncated body (their rates add up to at most 1), and
//! a second draw decides a delay, which comes first: a call can be slow
//! *and* fail, as real calls are. Body faults need an HTTP layer
//! ([`ChaosBuilder::build_http`], [`HttpChaosLayer`]).
//!
//! # Switching and selection
//!
//! - **Off by default.** A layer injects nothing until switched on
//!   ([`ChaosBuilder::enabled`], [`ChaosHandle::enable`]) with a rate
//!   above zero.
//! - **At run time.** [`ChaosHandle`] switches the layer and changes every
//!   rate and the latency without rebuilding; builders register it in a
//!   [`Registry`](buttress_core::Registry), where operators find it with
//!   `registry.get::<ChaosHandle>(name)`.
//! - **Selection.** [`select`] faults only some requests: HTTP
//!   [`Routes`](select::Routes) (method and path), [`Keys`](select::Keys)
//!   (any `buttress_core` key extractor: a header, the client IP, a
//!   tenant extension, the upstream host, the gRPC method), or a closure.
//!
//! # Seeding
//!
//! The draws come from SplitMix64 (see the `rng` module's source), a
//! small, well-studied generator with no dependency. Each instance has a
//! seed ([`ChaosBuilder::seed`]; by default one derived from its name)
//! and numbers the calls it rolls for; call `n` draws from its own stream
//! seeded by the seed and `n`. So the same seed and the same order of
//! calls give the same faults and the same delays, whichever threads make
//! them. [`ChaosHandle::reseed`] and [`ChaosHandle::reset`] start the
//! sequence over. Calls made while the layer is off, or not selected,
//! draw nothing and do not shift the sequence.
//!
//! # Where it goes
//!
//! Innermost, next to the service it makes misbehave: in a client stack
//! below the per-attempt timeout, the breaker and the retry, so that they
//! see the faults as they would see a failing dependency (Polly's advice
//! for its chaos strategies too: after the regular ones). In a server, in
//! front of the handlers, to make a whole service misbehave for its
//! callers.
//!
//! # Design
//!
//! Polly's chaos strategies (Simmy, part of Polly since 8.3) set the
//! shape: separate fault kinds (fault, latency, outcome, behaviour) each
//! with an injection rate in [0, 1], a switch, and a replaceable random
//! source. The differences, on purpose:
//!
//! - Off by default. Simmy's strategies are enabled, with a rate of 0.1 %,
//!   as soon as they are added; here a layer left in a production stack
//!   does nothing until someone switches it on.
//! - Simmy decides per execution through optional generators
//!   (`EnabledGenerator`, `InjectionRateGenerator`); here the switch and
//!   the rates are plain values changed through the handle, and the
//!   per-request choice is a [`Selector`](select::Selector), which costs
//!   nothing while the layer is off.
//! - Reproducible by construction: each instance has its own seed and
//!   numbers its calls (see Seeding), where Simmy takes a `Randomizer` delegate.
//!
//! Unlike tower-resilience's chaos layer, faults are decided in `call`
//! without a lock or a boxed future, the inner service is never cloned,
//! and a layer that is off costs one relaxed atomic load and no
//! allocation (the `layers` bench, `chaos/*` cases; tower-resilience's
//! takes a mutex and boxes a future on every call, rates at 0 or not).
//!
//! # Errors
//!
//! The layer returns `BoxError` (and needs `S::Error: Into<BoxError>`).
//! An injected error is an [`InjectedFault`](error::InjectedFault): it is
//! not a buttress rejection (`buttress_core::error::kind_of` returns
//! `None` for it) because it stands for a failure of the dependency;
//! breakers and retries treat it as any other error.
//!
//! # Tracing
//!
//! With `buttress.pattern = "chaos"` and `buttress.name` on every event:
//!
//! | event (message) | level | fields |
//! |---|---|---|
//! | `fault injected` | `debug`, one per fault | `chaos.kind`, `chaos.delay_ms` |
//! | `chaos switched on` / `chaos switched off` | `info`, when the handle switches it | |
//!
//! A fault is deliberately not a `warn`: faults are what was asked for,
//! and at a high rate a `warn` per call would flood the log.
//!
//! # Metrics
//!
//! With the `metrics` feature, [`ChaosBuilder::metrics`] (or a
//! [`Registry::with_metrics`](buttress_core::Registry::with_metrics)
//! registry) counts the faults in `buttress_chaos_faults_total{name,kind}`.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
mod config;
pub mod error;
mod events;
pub mod future;
mod latency;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
mod rng;
pub mod select;
mod service;
mod state;

pub use config::{ChaosConfig, RouteConfig};
pub use events::{ChaosEvent, FaultKind};
pub use latency::{Latency, MAX_LATENCY};
pub use layer::{ChaosBuilder, ChaosHandle, ChaosLayer, ChaosSnapshot, HttpChaosLayer};
pub use service::{Chaos, HttpChaos};
