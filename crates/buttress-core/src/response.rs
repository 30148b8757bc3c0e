//! Turning rejections into HTTP responses, for servers that need an
//! `Infallible` service (axum).
//!
//! | error in the chain | status | headers |
//! |---|---|---|
//! | [`BulkheadFull`] | 503 Service Unavailable | `Retry-After` when known |
//! | [`CircuitOpen`] | 503 Service Unavailable | `Retry-After` when known |
//! | [`RateLimited`] | 429 Too Many Requests | `Retry-After`, `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` when known |
//! | [`Elapsed`] | 504 Gateway Timeout (configurable, e.g. 408) | |
//! | anything else | 500 Internal Server Error | |
//!
//! A [`RetryExhausted`](crate::error::RetryExhausted) is mapped by the
//! rejection that ended its last attempt. The body is empty and never
//! contains the error text, which may leak internals; the error is logged
//! through `tracing` instead.
//!
//! ```
//! use buttress_core::response::ErrorToResponseLayer;
//! use buttress_core::error::{BoxError, BulkheadFull, BulkheadFullReason};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(ErrorToResponseLayer::new())
//!     .service_fn(|_req: http::Request<()>| async {
//!         Err::<http::Response<String>, BoxError>(
//!             BulkheadFull::new("db".into(), BulkheadFullReason::QueueFull).into(),
//!         )
//!     });
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 503);
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{chain, BoxError, BulkheadFull, CircuitOpen, Elapsed, RateLimited};

/// `Retry-After` in whole seconds, rounded up, so a client never comes back
/// early; `None` when no wait remains.
///
/// ```
/// use buttress_core::response::retry_after_secs;
/// use std::time::Duration;
///
/// assert_eq!(retry_after_secs(Duration::from_millis(1)), Some(1));
/// assert_eq!(retry_after_secs(Duration::from_millis(2000)), Some(2));
/// assert_eq!(retry_after_secs(Duration::from_millis(2001)), Some(3));
/// assert_eq!(retry_after_secs(Duration::ZERO), None);
/// ```
pub fn retry_after_secs(wait: Duration) -> Option<u64> {
    if wait.is_zero() {
        None
    } else {
        Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
    }
}

/// Builds the response for an error, as described in the [module
/// docs](self). `timeout_status` is the status for [`Elapsed`].
pub fn error_response<B: Default>(
    err: &(dyn std::error::Error + 'static),
    timeout_status: StatusCode,
) -> Response<B> {
    let mut res = Response::new(B::default());
    let (status, retry_after) = classify(err, timeout_status, res.headers_mut());
    *res.status_mut() = status;
    if let Some(secs) = retry_after.and_then(retry_after_secs) {
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

fn classify(
    err: &(dyn std::error::Error + 'static),
    timeout_status: StatusCode,
    headers: &mut http::HeaderMap,
) -> (StatusCode, Option<Duration>) {
    for e in chain(err) {
        if let Some(e) = e.downcast_ref::<BulkheadFull>() {
            return (StatusCode::SERVICE_UNAVAILABLE, e.retry_after());
        }
        if let Some(e) = e.downcast_ref::<CircuitOpen>() {
            return (StatusCode::SERVICE_UNAVAILABLE, e.retry_after());
        }
        if let Some(e) = e.downcast_ref::<RateLimited>() {
            if let Some(limit) = e.limit() {
                headers.insert("ratelimit-limit", HeaderValue::from(limit));
            }
            if let Some(remaining) = e.remaining() {
                headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
            }
            if let Some(reset) = e.reset() {
                let secs = retry_after_secs(reset).unwrap_or(0);
                headers.insert("ratelimit-reset", HeaderValue::from(secs));
            }
            return (StatusCode::TOO_MANY_REQUESTS, e.retry_after());
        }
        if e.is::<Elapsed>() {
            return (timeout_status, None);
        }
    }
    tracing::error!(error = %err, "unhandled error turned into 500");
    (StatusCode::INTERNAL_SERVER_ERROR, None)
}

/// Layer that turns errors into responses; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct ErrorToResponseLayer {
    timeout_status: StatusCode,
}

impl Default for ErrorToResponseLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ErrorToResponseLayer {
    /// The mapping of the module docs.
    pub fn new() -> Self {
        Self {
            timeout_status: StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The status sent for a timeout (default 504; a server timing out its
    /// own handlers may prefer 503, tower-http uses 408).
    pub fn timeout_status(mut self, status: StatusCode) -> Self {
        self.timeout_status = status;
        self
    }
}

impl<S> Layer<S> for ErrorToResponseLayer {
    type Service = ErrorToResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorToResponse {
            inner,
            timeout_status: self.timeout_status,
            broken: false,
        }
    }
}

/// Service that turns errors into responses; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ErrorToResponse<S> {
    inner: S,
    timeout_status: StatusCode,
    /// Set when the inner service failed in `poll_ready`: it must not be
    /// called any more, so every call is answered with a 500.
    broken: bool,
}

impl<S> ErrorToResponse<S> {
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

impl<S, Req, B> Service<Req> for ErrorToResponse<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Default,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = ErrorToResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.broken {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                let err: BoxError = e.into();
                tracing::error!(error = %err, "inner service failed in poll_ready; answering 500");
                self.broken = true;
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if self.broken {
            let mut res = Response::new(());
            *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return ErrorToResponseFuture {
                kind: Kind::Answered { res: Some(res) },
            };
        }
        ErrorToResponseFuture {
            kind: Kind::Inner {
                inner: self.inner.call(req),
                timeout_status: self.timeout_status,
            },
        }
    }
}

pin_project! {
    /// Response future of [`ErrorToResponse`].
    pub struct ErrorToResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] inner: F, timeout_status: StatusCode },
        Answered { res: Option<Response<()>> },
    }
}

impl<F> fmt::Debug for ErrorToResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorToResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ErrorToResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Default,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner {
                inner,
                timeout_status,
            } => Poll::Ready(Ok(match ready!(inner.poll(cx)) {
                Ok(res) => res,
                Err(e) => {
                    let err: BoxError = e.into();
                    error_response(&*err, *timeout_status)
                }
            })),
            KindProj::Answered { res } => {
                let res = res.take().expect("polled after completion");
                Poll::Ready(Ok(res.map(|()| B::default())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{BulkheadFullReason, RetryExhausted};

    fn resp(err: BoxError) -> Response<()> {
        error_response(&*err, StatusCode::GATEWAY_TIMEOUT)
    }

    #[test]
    fn maps_each_rejection() {
        let r = resp(BulkheadFull::new("b".into(), BulkheadFullReason::QueueFull).into());
        assert_eq!(r.status(), 503);
        assert!(r.headers().get("retry-after").is_none());

        let r = resp(CircuitOpen::new("c".into(), Some(Duration::from_millis(1500))).into());
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "2");

        let r = resp(
            RateLimited::new("r".into(), Some(Duration::from_millis(10)))
                .with_quota(100, 0, Duration::from_secs(30))
                .into(),
        );
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(r.headers()["ratelimit-limit"], "100");
        assert_eq!(r.headers()["ratelimit-remaining"], "0");
        assert_eq!(r.headers()["ratelimit-reset"], "30");

        let r = resp(Elapsed::new("t".into(), Duration::from_secs(1)).into());
        assert_eq!(r.status(), 504);

        let r = resp(std::io::Error::other("secret db password in message").into());
        assert_eq!(r.status(), 500);

        let last: BoxError = CircuitOpen::new("c".into(), Some(Duration::from_secs(4))).into();
        let r = resp(RetryExhausted::new("retry".into(), 3, last).into());
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "4");
    }

    #[test]
    fn timeout_status_is_configurable() {
        let err: BoxError = Elapsed::new("t".into(), Duration::from_secs(1)).into();
        let r: Response<()> = error_response(&*err, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(r.status(), 408);
    }
}
