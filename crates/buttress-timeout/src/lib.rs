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
//! thread, shared by the layers of that thread), still registered. The
//! next call on that thread that needs a timer resets it. When the new
//! deadline is later than the pooled one, the usual case with one limit,
//! tokio moves it with one compare-and-swap, with no lock and no wheel
//! operation; the driver moves the timer once, under its lock, when the old
//! deadline comes due. An earlier deadline (a shorter limit, a per-request
//! deadline) re-registers the timer under the lock, as a new one would be.
//! Under steady load, once a thread has pooled as many timers as it has
//! calls pending at once, its calls allocate nothing; a call allocates a
//! timer when its thread's pool is empty (at first, after timeouts, after
//! an idle spell longer than the limit, or when work-stealing moved
//! timers to other threads).
//!
//! What this means for you:
//! - A pooled timer keeps no waker: it is polled once with a no-op waker
//!   before it enters the pool, so if its old deadline passes there, it
//!   wakes no task, and no finished task is kept alive by it. The driver
//!   itself still wakes up at that deadline (at most 64 times per thread
//!   per idle spell).
//! - A timer that fired, or whose call was dropped before completing, is
//!   dropped, never pooled.
//! - A pool holds timers of one runtime, the one current when they were
//!   made; it is emptied when the thread arms a timer, through a layer
//!   that reuses timers, in another runtime. A pooled timer that has fired
//!   (its runtime's shutdown fires them all) is dropped when found, never
//!   reset. A dropped runtime's pooled timers keep its driver, file
//!   descriptors included, until the thread arms such a timer again or
//!   exits.
//! - Under `tokio::time::pause`, an idle runtime advances its clock to the
//!   next timer's deadline, and a pooled timer's deadline counts: while a
//!   test waits for something other than a timer (real I/O, another
//!   thread), whatever reads the clock may see it jump. Turn reuse off with
//!   [`TimeoutBuilder::reuse_timers`] there.
//! - Tokio panics when a timer is polled while its runtime's driver is
//!   shutting down. The poll that lets go of the waker is such a poll: a
//!   call that completes on a thread outside its runtime's workers (through
//!   `Handle::block_on`) during that runtime's shutdown meets the same
//!   panic a pending call polled at that moment meets with any tokio
//!   timer.

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
