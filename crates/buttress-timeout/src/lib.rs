//! Per-call timeouts for tower services.
//!
//! [`TimeoutLayer`] fails a call with [`Elapsed`](error::Elapsed) when its
//! response takes longer than the limit. Compared with `tower::timeout`:
//!
//! - the timer is armed only when the inner future is not ready at its first
//!   poll: a call that completes at once reads no clock and allocates
//!   nothing;
//! - a call that is pending reuses a timer that a completed call on the
//!   same thread handed back, so it pays neither a timer-wheel insertion
//!   nor a removal (see [Timers](#timers));
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
//!
//! # Timers
//!
//! A fresh `tokio::time::Sleep` per call costs an insertion into the time
//! driver's wheel and a removal, each under the driver's lock, and two
//! clones of the runtime handle. Most calls that arm a timer complete long
//! before it would fire, so a call that completes in time hands its boxed
//! timer to a small pool of the thread it completes on (at most 64 per
//! thread), still registered. The next call on that thread that needs a
//! timer resets it: tokio moves a registered deadline later with one
//! compare-and-swap, with no lock and no wheel operation. Once a thread has
//! pooled as many timers as it has calls pending at once, its calls
//! allocate nothing.
//!
//! What this means for you:
//! - A pooled timer keeps no waker: it is polled once with a no-op waker
//!   before it enters the pool, so if its old deadline passes there, it
//!   wakes nobody, and no finished task is kept alive by it.
//! - A timer that fired, or whose call was dropped before completing, is
//!   dropped, never pooled.
//! - A pool holds timers of one runtime, the one current when they were
//!   made; it is emptied when the thread arms a timer in another runtime. A
//!   pooled timer that has fired (its runtime's shutdown fires them all) is
//!   dropped when found, never reset. The timers of a dropped runtime, and
//!   with them its driver, are freed then or when the thread exits.
//! - Under `tokio::time::pause`, an idle runtime advances its clock to the
//!   next timer's deadline, and a pooled timer's deadline counts. A test
//!   that waits for something other than a timer (real I/O, another
//!   thread) and checks how far the clock moved can turn reuse off with
//!   [`TimeoutBuilder::reuse_timers`].

#![forbid(unsafe_code)]

mod config;
pub mod error;
mod events;
pub mod future;
mod layer;
mod policy;
mod service;
mod timer;

pub use config::TimeoutConfig;
pub use events::{Phase, TimeoutEvent};
pub use layer::{TimeoutBuilder, TimeoutHandle, TimeoutLayer, TimeoutSnapshot};
pub use policy::{FixedTimeout, HttpDeadlines, Prepared, RequestTimeout};
pub use service::Timeout;
