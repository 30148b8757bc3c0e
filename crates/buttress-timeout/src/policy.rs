//! Per-request timeouts: how a request may change its own time limit.

use std::time::Duration;

use buttress_core::deadline::{parse_grpc_timeout, Deadline, TimeoutOverride, GRPC_TIMEOUT};
use http::Request;
use tokio::time::Instant;

/// What a [`RequestTimeout`] policy decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// The configured timeout, measured from the first poll of the response
    /// future that finds the inner future pending. The clock is not read
    /// unless that happens.
    Configured,
    /// No time limit for this request (a timeout too large to represent).
    Unlimited,
    /// An explicit deadline, already known at `call`.
    Deadline {
        /// When the call must be done.
        at: Instant,
        /// The time limit that `at` stands for, reported in
        /// [`Elapsed`](crate::error::Elapsed).
        timeout: Duration,
    },
}

/// Decides, in `call`, the time limit of one request.
///
/// The layer's type parameter: [`FixedTimeout`] (the default) works for any
/// request type; [`HttpDeadlines`] reads per-request overrides from
/// `http::Request`s.
pub trait RequestTimeout<Req> {
    /// Decides the limit of `req`, which it may annotate (for example with
    /// a [`Deadline`] extension for inner layers).
    fn prepare(&self, req: &mut Req, configured: Duration) -> Prepared;
}

/// Every request gets the configured timeout.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedTimeout;

impl<Req> RequestTimeout<Req> for FixedTimeout {
    #[inline]
    fn prepare(&self, _req: &mut Req, _configured: Duration) -> Prepared {
        Prepared::Configured
    }
}

/// Per-request deadlines for `http::Request`s.
///
/// For each request, in this order:
/// 1. A [`TimeoutOverride`] extension replaces the configured timeout (it is
///    set by the application, so it may be longer or shorter).
/// 2. A `grpc-timeout` header (when enabled; on by default) may only
///    shorten it: the client's deadline, not a way around the server's
///    limit. The value is parsed strictly; a malformed one is ignored with a
///    `tracing` debug event.
/// 3. A [`Deadline`] extension already on the request (set by an outer
///    layer) wins when it is earlier.
///
/// The resulting deadline is written back as a [`Deadline`] extension (when
/// propagation is on; on by default), so inner layers such as a retry know
/// how much time the caller has left. This reads the clock once per call.
///
/// ```
/// use buttress_timeout::{HttpDeadlines, RequestTimeout, Prepared};
/// use buttress_core::deadline::Deadline;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let mut req = http::Request::builder().header("grpc-timeout", "100m").body(()).unwrap();
/// let p = HttpDeadlines::new().prepare(&mut req, Duration::from_secs(1));
/// let Prepared::Deadline { timeout, .. } = p else { unreachable!() };
/// assert_eq!(timeout, Duration::from_millis(100));
/// assert!(req.extensions().get::<Deadline>().is_some());
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HttpDeadlines {
    grpc_timeout: bool,
    propagate: bool,
}

impl Default for HttpDeadlines {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpDeadlines {
    /// Honour `grpc-timeout`, propagate the deadline.
    pub fn new() -> Self {
        Self {
            grpc_timeout: true,
            propagate: true,
        }
    }

    /// Whether to read the `grpc-timeout` header.
    pub fn grpc_timeout(mut self, yes: bool) -> Self {
        self.grpc_timeout = yes;
        self
    }

    /// Whether to insert the [`Deadline`] extension for inner layers.
    pub fn propagate(mut self, yes: bool) -> Self {
        self.propagate = yes;
        self
    }
}

impl<B> RequestTimeout<Request<B>> for HttpDeadlines {
    fn prepare(&self, req: &mut Request<B>, configured: Duration) -> Prepared {
        let mut timeout = req
            .extensions()
            .get::<TimeoutOverride>()
            .map_or(configured, |o| o.0);
        if self.grpc_timeout {
            if let Some(value) = req.headers().get(GRPC_TIMEOUT) {
                match parse_grpc_timeout(value) {
                    Some(client) => timeout = timeout.min(client),
                    None => tracing::debug!(
                        value = ?value,
                        "malformed grpc-timeout header ignored"
                    ),
                }
            }
        }
        let now = Instant::now();
        let own = now.checked_add(timeout).map(Deadline);
        let outer = req.extensions().get::<Deadline>().copied();
        let Some(deadline) = Deadline::earliest(own, outer) else {
            // A timeout too large to represent and no outer deadline.
            return Prepared::Unlimited;
        };
        if self.propagate {
            req.extensions_mut().insert(deadline);
        }
        Prepared::Deadline {
            at: deadline.0,
            timeout: deadline.remaining(now),
        }
    }
}
