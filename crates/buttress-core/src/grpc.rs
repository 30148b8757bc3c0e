//! Mapping rejections to `tonic::Status` (feature `tonic`), on servers and
//! on clients.
//!
//! | error in the chain | code | message | metadata |
//! |---|---|---|---|
//! | [`BulkheadFull`] | `Unavailable` | `service unavailable` | `grpc-retry-pushback-ms` when known |
//! | [`CircuitOpen`] | `Unavailable` | `service unavailable` | `grpc-retry-pushback-ms` when known |
//! | [`RateLimited`] | `ResourceExhausted` | `rate limit exceeded` | `grpc-retry-pushback-ms` when known; `ratelimit-policy` and `ratelimit` when a [`Quota`] is attached |
//! | [`Elapsed`] | `DeadlineExceeded` | `deadline exceeded` | |
//! | a `tonic::Status` | itself | its own | its own |
//! | anything else | `Internal` | `internal error` | |
//!
//! A [`RetryExhausted`](crate::error::RetryExhausted) is mapped by what
//! ended its last attempt. The messages are generic by default, as the HTTP
//! mapping sends an empty body: a rejection's own text names instances and
//! reasons ("bulkhead `orders-db` is full: no free permit and no room to wait") that callers
//! outside the service should not see. `detailed(true)` on the layers (or
//! [`detailed_status_from_error`]) sends that text instead, for internal
//! services. The text of an unknown error is never sent; it is logged
//! through `tracing`.
//!
//! `grpc-retry-pushback-ms` is gRPC's pushback convention: how long a
//! client should wait before retrying, in whole milliseconds, rounded up.
//! `ratelimit-policy` and `ratelimit` are ASCII metadata with the same text
//! as the HTTP headers of draft-ietf-httpapi-ratelimit-headers (see
//! [`ratelimit_headers`](crate::response::ratelimit_headers)), e.g.
//! `"api";q=100;w=60` and `"api";r=0;t=30`.
//!
//! - **Servers**: [`ErrorToStatusLayer`] goes outermost in
//!   `tonic::transport::Server::builder().layer(...)`. Without it, tonic
//!   cannot turn a buttress rejection into a status and resets the stream,
//!   so the client sees a transport error instead of `Unavailable`.
//! - **Clients**: [`RejectionToStatusLayer`] goes outermost in a stack of
//!   buttress layers around a `tonic::transport::Channel`, so a call that a
//!   local breaker, bulkhead, limiter or timeout rejects reaches tonic's
//!   generated client as a `Status` with the right code, instead of
//!   `Unknown`. Other errors (transport errors) pass through for tonic to
//!   map. The rejection stays reachable as the status' `source()`.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{chain, BoxError, BulkheadFull, CircuitOpen, Elapsed, Quota, RateLimited};

/// The metadata key of gRPC's retry pushback, in milliseconds.
pub const RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// The `tonic::Status` for an error, with generic messages; see the
/// [module docs](self).
///
/// ```
/// use buttress_core::error::{BoxError, CircuitOpen};
/// use buttress_core::grpc::status_from_error;
/// use std::time::Duration;
///
/// let err: BoxError = CircuitOpen::new("db".into(), Some(Duration::from_millis(1500))).into();
/// let status = status_from_error(&*err);
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// assert_eq!(status.message(), "service unavailable");
/// assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "1500");
/// ```
pub fn status_from_error(err: &(dyn StdError + 'static)) -> Status {
    status_for(err, false)
}

/// Like [`status_from_error`], but the message is the rejection's own text,
/// which names the instance and the reason: for internal services.
///
/// ```
/// use buttress_core::error::{BoxError, BulkheadFull, BulkheadFullReason};
/// use buttress_core::grpc::detailed_status_from_error;
///
/// let err: BoxError = BulkheadFull::new("db".into(), BulkheadFullReason::QueueFull).into();
/// let status = detailed_status_from_error(&*err);
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// assert_eq!(status.message(), "bulkhead `db` is full: no free permit and no room to wait");
/// ```
pub fn detailed_status_from_error(err: &(dyn StdError + 'static)) -> Status {
    status_for(err, true)
}

fn status_for(err: &(dyn StdError + 'static), detailed: bool) -> Status {
    match find_status(err, detailed) {
        Some(status) => status,
        None => {
            tracing::error!(error = %err, "unhandled error turned into Internal");
            Status::new(Code::Internal, "internal error")
        }
    }
}

/// The status of the first rejection or `Status` in the chain; `None` when
/// there is neither.
fn find_status(err: &(dyn StdError + 'static), detailed: bool) -> Option<Status> {
    let message = |generic: &str, e: &dyn fmt::Display| -> String {
        if detailed {
            e.to_string()
        } else {
            generic.to_owned()
        }
    };
    for e in chain(err) {
        if let Some(s) = e.downcast_ref::<Status>() {
            return Some(s.clone());
        }
        if let Some(e) = e.downcast_ref::<BulkheadFull>() {
            let status = Status::unavailable(message("service unavailable", e));
            return Some(with_pushback(status, e.retry_after()));
        }
        if let Some(e) = e.downcast_ref::<CircuitOpen>() {
            let status = Status::unavailable(message("service unavailable", e));
            return Some(with_pushback(status, e.retry_after()));
        }
        if let Some(e) = e.downcast_ref::<RateLimited>() {
            let mut status = Status::resource_exhausted(message("rate limit exceeded", e));
            if let Some(quota) = e.quota() {
                with_quota(&mut status, quota);
            }
            return Some(with_pushback(status, e.retry_after()));
        }
        if let Some(e) = e.downcast_ref::<Elapsed>() {
            return Some(Status::deadline_exceeded(message("deadline exceeded", e)));
        }
    }
    None
}

/// Adds the quota as `ratelimit-policy` and `ratelimit` metadata.
fn with_quota(status: &mut Status, quota: &Quota) {
    // Only printable ASCII is written, which ASCII metadata accepts.
    let fields = [
        (
            "ratelimit-policy",
            crate::response::ratelimit_policy_text(quota),
        ),
        ("ratelimit", crate::response::ratelimit_text(quota)),
    ];
    for (key, text) in fields {
        if let Ok(value) = MetadataValue::try_from(text) {
            status.metadata_mut().insert(key, value);
        }
    }
}

fn with_pushback(mut status: Status, retry_after: Option<Duration>) -> Status {
    if let Some(wait) = retry_after {
        let ms = wait.as_millis() + u128::from(wait.subsec_nanos() % 1_000_000 != 0);
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        status
            .metadata_mut()
            .insert(RETRY_PUSHBACK_MS, MetadataValue::from(ms));
    }
    status
}

// ===== impl ErrorToStatusLayer =====

/// Server-side layer that answers every error of the inner service with a
/// gRPC status (a trailers-only response, HTTP 200 with `grpc-status`), so
/// tonic never sees a buttress rejection as an error; see the [module
/// docs](self) for the mapping.
///
/// Put it outermost, above the buttress layers:
///
/// ```
/// use buttress_core::grpc::ErrorToStatusLayer;
/// use buttress_core::error::{BoxError, BulkheadFull, BulkheadFullReason};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // In a server: `Server::builder().layer(ErrorToStatusLayer::new()).layer(bulkhead)...`
/// let svc = ServiceBuilder::new()
///     .layer(ErrorToStatusLayer::new())
///     .service_fn(|_req: http::Request<()>| async {
///         Err::<http::Response<tonic::body::Body>, BoxError>(
///             BulkheadFull::new("db".into(), BulkheadFullReason::QueueFull).into(),
///         )
///     });
/// let res = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 200);
/// assert_eq!(res.headers()["grpc-status"], "14"); // Unavailable
/// assert_eq!(res.headers()["grpc-message"], "service%20unavailable");
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorToStatusLayer {
    detailed: bool,
}

impl ErrorToStatusLayer {
    /// Generic messages, as in the [module docs](self).
    pub fn new() -> Self {
        Self { detailed: false }
    }

    /// Send the rejection's own text (instance name and reason) as the
    /// status message, for internal services. The text of errors that are
    /// not buttress rejections is never sent.
    pub fn detailed(mut self, detailed: bool) -> Self {
        self.detailed = detailed;
        self
    }

    /// The status this layer answers `err` with.
    pub fn status(&self, err: &(dyn StdError + 'static)) -> Status {
        status_for(err, self.detailed)
    }
}

impl<S> Layer<S> for ErrorToStatusLayer {
    type Service = ErrorToStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorToStatus {
            inner,
            detailed: self.detailed,
            broken: false,
        }
    }
}

/// Service of [`ErrorToStatusLayer`].
#[derive(Debug, Clone)]
pub struct ErrorToStatus<S> {
    inner: S,
    detailed: bool,
    /// Set when the inner service failed in `poll_ready`: it must not be
    /// called any more, so every call is answered with `Internal`.
    broken: bool,
}

impl<S> ErrorToStatus<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, B> Service<Req> for ErrorToStatus<S>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: Default,
{
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = ErrorToStatusFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        crate::response::poll_ready_or_break(&mut self.inner, cx, &mut self.broken, "Internal")
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if self.broken {
            return ErrorToStatusFuture {
                kind: StatusKind::Answered {
                    status: Some(Status::new(Code::Internal, "internal error")),
                },
            };
        }
        ErrorToStatusFuture {
            kind: StatusKind::Inner {
                inner: self.inner.call(req),
                detailed: self.detailed,
            },
        }
    }
}

pin_project! {
    /// Response future of [`ErrorToStatus`].
    pub struct ErrorToStatusFuture<F> {
        #[pin]
        kind: StatusKind<F>,
    }
}

pin_project! {
    #[project = StatusKindProj]
    enum StatusKind<F> {
        Inner { #[pin] inner: F, detailed: bool },
        Answered { status: Option<Status> },
    }
}

impl<F> fmt::Debug for ErrorToStatusFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorToStatusFuture")
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ErrorToStatusFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: Default,
{
    type Output = Result<http::Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            StatusKindProj::Inner { inner, detailed } => {
                Poll::Ready(Ok(match ready!(inner.poll(cx)) {
                    Ok(res) => res,
                    Err(e) => {
                        let err: BoxError = e.into();
                        status_for(&*err, *detailed).into_http()
                    }
                }))
            }
            StatusKindProj::Answered { status } => {
                let status = status.take().expect("polled after completion");
                Poll::Ready(Ok(status.into_http()))
            }
        }
    }
}

// ===== impl RejectionToStatusLayer =====

/// Client-side layer that turns the buttress rejections of the layers
/// below it into a boxed `tonic::Status`, which tonic's generated clients
/// return as is; other errors pass through unchanged. See the [module
/// docs](self).
///
/// The status keeps the rejection as its `source()`, so code that wants to
/// know which layer refused can still ask
/// [`kind_of`](crate::error::kind_of) or [`find`](crate::error::find).
///
/// ```
/// use buttress_core::error::{find, BoxError, CircuitOpen};
/// use buttress_core::grpc::RejectionToStatusLayer;
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // In a client: `RejectionToStatusLayer` above the breaker, around a `Channel`.
/// let svc = ServiceBuilder::new()
///     .layer(RejectionToStatusLayer::new())
///     .service_fn(|_req: ()| async {
///         Err::<(), BoxError>(CircuitOpen::new("db".into(), Some(Duration::from_secs(2))).into())
///     });
/// let err = svc.oneshot(()).await.unwrap_err();
/// let status = err.downcast_ref::<tonic::Status>().unwrap();
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "2000");
/// assert_eq!(find::<CircuitOpen>(status).unwrap().name(), "db");
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RejectionToStatusLayer {
    detailed: bool,
}

impl RejectionToStatusLayer {
    /// Generic messages, as in the [module docs](self).
    pub fn new() -> Self {
        Self { detailed: false }
    }

    /// Use the rejection's own text as the status message. Off by default,
    /// since a status is easily passed on to another caller; the rejection
    /// is always reachable as the status' `source()`.
    pub fn detailed(mut self, detailed: bool) -> Self {
        self.detailed = detailed;
        self
    }

    /// The error this layer returns for `err`: a boxed `Status` when `err`
    /// is a buttress rejection, `err` itself otherwise.
    pub fn map_error(&self, err: BoxError) -> BoxError {
        map_rejection(err, self.detailed)
    }
}

fn map_rejection(err: BoxError, detailed: bool) -> BoxError {
    if err.is::<Status>() {
        return err;
    }
    // A `Status` further down the chain (a server's answer wrapped by a
    // retry) is found by tonic itself; only rejections need a status.
    if crate::error::root_kind_of(&*err).is_none() {
        return err;
    }
    match find_status(&*err, detailed) {
        Some(mut status) => {
            status.set_source(Arc::from(err));
            Box::new(status)
        }
        None => err,
    }
}

impl<S> Layer<S> for RejectionToStatusLayer {
    type Service = RejectionToStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RejectionToStatus {
            inner,
            detailed: self.detailed,
        }
    }
}

/// Service of [`RejectionToStatusLayer`].
#[derive(Debug, Clone)]
pub struct RejectionToStatus<S> {
    inner: S,
    detailed: bool,
}

impl<S> RejectionToStatus<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for RejectionToStatus<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RejectionToStatusFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let detailed = self.detailed;
        self.inner
            .poll_ready(cx)
            .map_err(|e| map_rejection(e.into(), detailed))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        RejectionToStatusFuture {
            inner: self.inner.call(req),
            detailed: self.detailed,
        }
    }
}

pin_project! {
    /// Response future of [`RejectionToStatus`].
    pub struct RejectionToStatusFuture<F> {
        #[pin]
        inner: F,
        detailed: bool,
    }
}

impl<F> fmt::Debug for RejectionToStatusFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RejectionToStatusFuture")
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for RejectionToStatusFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let detailed = *this.detailed;
        Poll::Ready(ready!(this.inner.poll(cx)).map_err(|e| map_rejection(e.into(), detailed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{find, kind_of, BulkheadFullReason, ErrorKind, RetryExhausted};

    #[test]
    fn maps_each_rejection_to_a_code_and_a_generic_message() {
        let e: BoxError = BulkheadFull::new("b".into(), BulkheadFullReason::QueueFull).into();
        let s = status_from_error(&*e);
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "service unavailable");
        assert!(s.metadata().get(RETRY_PUSHBACK_MS).is_none());

        let e: BoxError = CircuitOpen::new("payments".into(), Some(Duration::from_secs(3))).into();
        let s = status_from_error(&*e);
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "service unavailable");
        assert_eq!(s.metadata().get(RETRY_PUSHBACK_MS).unwrap(), "3000");

        let e: BoxError = RateLimited::new("r".into(), Some(Duration::from_micros(1500))).into();
        let s = status_from_error(&*e);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "rate limit exceeded");
        assert_eq!(s.metadata().get(RETRY_PUSHBACK_MS).unwrap(), "2");

        let e: BoxError = Elapsed::new("t".into(), Duration::from_secs(1)).into();
        let s = status_from_error(&*e);
        assert_eq!(s.code(), Code::DeadlineExceeded);
        assert_eq!(s.message(), "deadline exceeded");

        let e: BoxError = RetryExhausted::new("r".into(), 2, Status::not_found("x").into()).into();
        assert_eq!(status_from_error(&*e).code(), Code::NotFound);

        let e: BoxError = "password=hunter2".into();
        let s = status_from_error(&*e);
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), "internal error");
        assert!(!detailed_status_from_error(&*e)
            .message()
            .contains("hunter2"));
    }

    #[test]
    fn rate_limited_quota_becomes_ratelimit_metadata() {
        let quota = Quota::new(
            r#"api "v1""#.into(),
            100,
            Duration::from_secs(60),
            0,
            Duration::from_millis(29_001),
        );
        let e: BoxError = RateLimited::new("api".into(), Some(Duration::from_secs(30)))
            .with_quota(quota)
            .into();
        for s in [
            status_from_error(&*e),
            detailed_status_from_error(&*e),
            RejectionToStatusLayer::new()
                .map_error(RateLimited::clone(find(&*e).unwrap()).into())
                .downcast_ref::<Status>()
                .unwrap()
                .clone(),
        ] {
            assert_eq!(s.code(), Code::ResourceExhausted);
            assert_eq!(s.metadata().get(RETRY_PUSHBACK_MS).unwrap(), "30000");
            assert_eq!(
                s.metadata().get("ratelimit-policy").unwrap(),
                r#""api \"v1\"";q=100;w=60"#
            );
            assert_eq!(
                s.metadata().get("ratelimit").unwrap(),
                r#""api \"v1\"";r=0;t=30"#
            );
        }

        // Without a quota, only the pushback.
        let e: BoxError = RateLimited::new("api".into(), Some(Duration::from_secs(1))).into();
        let s = status_from_error(&*e);
        assert!(s.metadata().get("ratelimit-policy").is_none());
        assert!(s.metadata().get("ratelimit").is_none());
        assert_eq!(s.metadata().get(RETRY_PUSHBACK_MS).unwrap(), "1000");
    }

    #[test]
    fn bulkhead_pushback_comes_from_its_retry_hint() {
        let e: BoxError = BulkheadFull::new("b".into(), BulkheadFullReason::WaitTimedOut)
            .with_retry_after(Duration::from_millis(250))
            .into();
        let s = status_from_error(&*e);
        assert_eq!(s.metadata().get(RETRY_PUSHBACK_MS).unwrap(), "250");
    }

    #[test]
    fn detailed_keeps_the_rejection_text() {
        let e: BoxError = BulkheadFull::new("orders".into(), BulkheadFullReason::QueueFull).into();
        let s = detailed_status_from_error(&*e);
        assert_eq!(
            s.message(),
            "bulkhead `orders` is full: no free permit and no room to wait"
        );
        let s = ErrorToStatusLayer::new().detailed(true).status(&*e);
        assert_eq!(
            s.message(),
            "bulkhead `orders` is full: no free permit and no room to wait"
        );
        let e: BoxError = Elapsed::new("timeout".into(), Duration::from_millis(200)).into();
        let s = detailed_status_from_error(&*e);
        assert_eq!(s.message(), "request timed out after 200ms");
    }

    #[test]
    fn rejection_to_status_keeps_the_rejection_as_source() {
        let e: BoxError = RateLimited::new("api".into(), Some(Duration::from_secs(1))).into();
        let mapped = RejectionToStatusLayer::new().map_error(e);
        let status = mapped.downcast_ref::<Status>().expect("a status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "rate limit exceeded");
        assert_eq!(status.metadata().get(RETRY_PUSHBACK_MS).unwrap(), "1000");
        assert_eq!(kind_of(status), Some(ErrorKind::RateLimited));
        assert_eq!(find::<RateLimited>(status).unwrap().name(), "api");
    }

    #[test]
    fn rejection_to_status_passes_other_errors_through() {
        let io: BoxError = std::io::Error::other("connection refused").into();
        let mapped = RejectionToStatusLayer::new().map_error(io);
        assert!(mapped.is::<std::io::Error>());

        // A retry that gave up on transport errors is left for tonic, which
        // maps what it recognises in the source chain.
        let io: BoxError = std::io::Error::other("reset").into();
        let exhausted: BoxError = RetryExhausted::new("retry".into(), 3, io).into();
        let mapped = RejectionToStatusLayer::new().map_error(exhausted);
        assert!(mapped.is::<RetryExhausted>());

        let status: BoxError = Status::not_found("gone").into();
        let mapped = RejectionToStatusLayer::new().map_error(status);
        assert_eq!(
            mapped.downcast_ref::<Status>().unwrap().code(),
            Code::NotFound
        );
    }

    #[test]
    fn rejection_to_status_maps_a_retry_that_ended_on_a_rejection() {
        let open: BoxError = CircuitOpen::new("c".into(), None).into();
        let exhausted: BoxError = RetryExhausted::new("retry".into(), 2, open).into();
        let mapped = RejectionToStatusLayer::new()
            .detailed(true)
            .map_error(exhausted);
        let status = mapped.downcast_ref::<Status>().unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "circuit `c` is open");
    }
}
