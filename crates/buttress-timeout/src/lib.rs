//! Per-call timeouts for tower services.
//!
//! [`TimeoutLayer`] fails a call with [`Elapsed`](error::Elapsed) when its
//! response takes longer than the limit. Compared with `tower::timeout`:
//!
//! - the timer is armed only when the inner future is not ready at its first
//!   poll: a call that completes at once reads no clock and allocates
//!   nothing;
//! - per-request limits for HTTP and gRPC ([`TimeoutLayer::for_http`]): a
//!   [`TimeoutOverride`](buttress_core::deadline::TimeoutOverride)
//!   extension, the `grpc-timeout` header (strictly parsed; a malformed
//!   value is ignored), and the [`Deadline`](buttress_core::deadline::Deadline)
//!   extension passed on to inner layers;
//! - optionally, the wait for readiness counts too
//!   ([`TimeoutBuilder::include_ready`]; tower leaves it out);
//! - a name, events, a registry handle and a limit that can be changed at
//!   run time.
//!
//! The error is a `BoxError` (tower's convention): check it with
//! `err.is::<Elapsed>()` or [`buttress_core::error::kind_of`].
//!
//! ```
//! use buttress_timeout::{error::Elapsed, TimeoutLayer};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = TimeoutLayer::builder(Duration::from_millis(100))
//!     .name("inventory")
//!     .on_event(|e: &buttress_timeout::TimeoutEvent| eprintln!("{e:?}"))
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
#![forbid(unsafe_code)]

mod config;
pub mod error;
mod events;
pub mod future;
mod layer;
mod policy;
mod service;

pub use config::TimeoutConfig;
pub use events::{Phase, TimeoutEvent};
pub use layer::{TimeoutBuilder, TimeoutHandle, TimeoutLayer, TimeoutSnapshot};
pub use policy::{FixedTimeout, HttpDeadlines, Prepared, RequestTimeout};
pub use service::Timeout;
