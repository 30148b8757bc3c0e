//! Per-call timeouts for tower services.
//!
//! [`TimeoutLayer`] fails a call with [`Elapsed`](error::Elapsed) when its
//! response takes longer than the limit. Compared with `tower::timeout`:
//!
//! - the timer is armed only when the inner future is not ready at its first
//!   poll: a call that completes at once reads no clock and allocates
//!   nothing;
//! - a call that is pending arms a timer inside its response future (no
//!   allocation) and drops it the moment the call ends (see
//!   [Timers](#timers));
//! - per-request limits for HTTP and gRPC ([`TimeoutLayer::for_http`]): a
//!   [`TimeoutOverride`](buttress_core::deadline::TimeoutOverride)
//!   extension, the `grpc-timeout` header (strictly parsed; a malformed
//!   value is ignored), and the [`Deadline`](buttress_core::deadline::Deadline)
//!   extension passed on to inner layers;
//! - optionally, the wait for readiness counts too
//!   ([`TimeoutBuilder::include_ready`]; tower leaves it out);
//! - a name, events, a registry handle and a limit that can be changed at
//!   run time, one setting ([`TimeoutHandle::set_timeout`]) or a whole
//!   config for hot reload ([`TimeoutHandle::reconfigure`]: calls already
//!   made keep their deadline); with the `metrics` feature, [`TimeoutBuilder::metrics`] (or
//!   a [`Registry::with_metrics`](buttress_core::Registry::with_metrics)
//!   registry) counts the time-outs through the `metrics` facade, to any
//!   recorder; install the recorder before building the layer (the
//!   README's "Metrics" section lists the names).
//!
//! The error is a `BoxError` (tower's convention): check it with
//! `err.is::<Elapsed>()` or
//! [`buttress::core::error::kind_of`](buttress_core::error::kind_of).
//!
//! **Paths.** Applications depend on the facade crate `buttress`, which
//! re-exports this crate as `buttress::timeout` (feature `timeout`, on by
//! default); the examples use those paths. Depending on `buttress-timeout`
//! directly, the same items are at `buttress_timeout::...`, and `buttress::core`
//! is `buttress_core`.
//!
//! ```
//! # mod buttress { pub mod core { pub use buttress_core::*; } pub mod timeout { pub use buttress_timeout::*; } }
//! use buttress::timeout::{error::Elapsed, TimeoutEvent, TimeoutLayer};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = TimeoutLayer::builder(Duration::from_millis(100))
//!     .name("inventory")
//!     .on_event(|e: &TimeoutEvent| eprintln!("{e:?}"))
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new().layer(layer).service_fn(|ms: u64| async move {
//!     tokio::time::sleep(Duration::from_millis(ms)).await;
//!     Ok::<_, std::convert::Infallible>(ms)
//! });
//! assert_eq!(svc.clone().oneshot(10).await.unwrap(), 10);
//! let err = svc.oneshot(500).await.unwrap_err();
//! let elapsed = err.downcast_ref::<Elapsed>().unwrap();
//! assert_eq!(elapsed.name(), "inventory");
//! assert_eq!(elapsed.timeout(), Duration::from_millis(100));
//! # }
//! ```
//!
//! The futures need a tokio runtime with the time driver enabled, as
//! `tower::timeout` does.
//!
//! # Timers
//!
//! - A call whose inner future is ready at its first poll arms no timer:
//!   it reads no clock, touches no timer wheel and allocates nothing.
//! - Otherwise, at the first poll that finds the inner future pending, the
//!   response future reads the clock once and arms a `tokio::time::Sleep`
//!   that it holds inline, as `tower::timeout` does: no heap allocation,
//!   one insertion into the runtime's timer wheel under the time driver's
//!   lock, and one removal when the timer is dropped. A deadline known in
//!   advance (per-request deadlines, the readiness budget) is used as is.
//! - The timer belongs to its call alone and never outlives it: when the
//!   call ends (response, error or timeout) the timer is dropped before
//!   the result is returned, and a dropped call drops its timer. So a
//!   finished call leaves nothing in the driver: under
//!   `tokio::time::pause` an idle runtime does not advance its clock to a
//!   finished call's deadline, and no timer keeps a dropped runtime's
//!   driver (or its file descriptors) alive.
//! - Each poll polls the inner future before the timer, so a response
//!   that the inner service produced is returned whatever state the timer
//!   or its runtime is in, shutdown included. Polling a call that is still
//!   pending after its runtime's driver has shut down (from a thread
//!   outside the runtime, through `Handle::block_on`) meets tokio's
//!   shutdown panic, as any tokio timer (`tower::timeout` included) does.
//!
//! # Tracing
//!
//! A timeout that fires is a `debug` event `call timed out` through
//! [`tracing`], with `buttress.pattern = "timeout"`, `buttress.name`,
//! `timeout.elapsed_ms` (the timeout that elapsed) and `timeout.phase`
//! (`call`, or `ready` for the readiness budget of
//! [`include_ready`](TimeoutBuilder::include_ready)). `debug`, not `warn`:
//! it is a per-call decision, a slow dependency times out every call, and
//! the caller gets the [`Elapsed`](error::Elapsed) error to act on or
//! log. A call that completes in time emits nothing.
//!
//! Events have the target of this crate (`buttress_timeout`), so a filter such as
//! `RUST_LOG=info,buttress_timeout=debug` shows its per-call decisions. With no
//! subscriber installed (or the level filtered out) an event costs one
//! relaxed atomic load and a branch, and its fields are never computed; the
//! happy path, which emits nothing, stays as fast (the `layers` bench).

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
pub mod error;
mod events;
pub mod future;
mod layer;
#[cfg(feature = "metrics")]
mod metrics;
mod policy;
mod service;

pub use config::TimeoutConfig;
pub use events::{Phase, TimeoutEvent};
pub use layer::{TimeoutBuilder, TimeoutHandle, TimeoutLayer, TimeoutSnapshot};
pub use policy::{FixedTimeout, HttpDeadlines, Prepared, RequestTimeout};
pub use service::Timeout;
