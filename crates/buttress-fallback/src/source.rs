//! Where a fallback response comes from: a value, a function, another
//! service, or the ready-made HTTP 503.

use std::fmt;
use std::future::{ready, Future, Ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready as ready_poll, Context, Poll};
use std::time::Duration;

use buttress_core::error::retry_after;
use buttress_core::BoxError;
use http::{HeaderValue, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::marker::FallbackReason;

/// What went wrong with the primary call: handed to the fallback source by
/// reference, and kept by the layer (as the `source()` of a
/// [`FallbackFailed`](crate::error::FallbackFailed) if the fallback fails
/// too).
#[derive(Debug)]
pub enum Failure<Res> {
    /// The primary (or a layer below the fallback) returned an error.
    Error(BoxError),
    /// The primary answered with a response the trigger calls a failure.
    Response(Res),
}

impl<Res> Failure<Res> {
    /// The error, if the primary failed with one.
    pub fn error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            Failure::Error(e) => Some(&**e),
            Failure::Response(_) => None,
        }
    }

    /// The response, if the primary answered with a failed one.
    pub fn response(&self) -> Option<&Res> {
        match self {
            Failure::Response(r) => Some(r),
            Failure::Error(_) => None,
        }
    }

    /// Why the fallback runs.
    pub fn reason(&self) -> FallbackReason {
        FallbackReason::of(self)
    }

    /// The retry hint of the buttress rejection in the error's chain, if
    /// any (an open circuit's time left, a rate limit's wait).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Error(e) => retry_after(&**e),
            Failure::Response(_) => None,
        }
    }
}

/// A source of fallback responses for requests of type `Req`.
///
/// [`keep`](FallbackSource::keep) runs in `call`, before the primary takes
/// the request, for every call: a source that does not need the request
/// keeps `()` and costs nothing there. [`fallback`](FallbackSource::fallback)
/// runs only when the trigger fires.
///
/// The sources of this crate: [`Value`], [`FromError`], [`FromRequest`],
/// [`ToService`], [`WithoutBody`] and [`Unavailable`].
pub trait FallbackSource<Req> {
    /// The response, the same as the primary's.
    type Response;
    /// What is kept of each request until the primary's result is known.
    type Kept;
    /// The fallback's future.
    type Future: Future<Output = Result<Self::Response, BoxError>>;

    /// Keeps what the fallback will need of `req`.
    fn keep(&self, req: &Req) -> Self::Kept;

    /// The fallback for one failed call.
    fn fallback(&self, kept: Self::Kept, failure: &Failure<Self::Response>) -> Self::Future;
}

// ===== Value =====

/// A fixed response, cloned for each fallback (Polly's
/// `FallbackValue`). The request is not kept.
#[derive(Debug, Clone)]
pub struct Value<T>(pub(crate) T);

impl<Req, T: Clone> FallbackSource<Req> for Value<T> {
    type Response = T;
    type Kept = ();
    type Future = Ready<Result<T, BoxError>>;

    #[inline]
    fn keep(&self, _req: &Req) {}

    fn fallback(&self, _kept: (), _failure: &Failure<T>) -> Self::Future {
        ready(Ok(self.0.clone()))
    }
}

// ===== FromError =====

/// A function of the failure (Resilience4j's fallback method taking the
/// exception). The request is not kept. The function may fail: its error
/// is returned wrapped in
/// [`FallbackFailed`](crate::error::FallbackFailed).
pub struct FromError<F, Res> {
    pub(crate) f: F,
    _res: PhantomData<fn() -> Res>,
}

impl<F, Res> FromError<F, Res> {
    pub(crate) fn new(f: F) -> Self {
        Self {
            f,
            _res: PhantomData,
        }
    }
}

impl<F: Clone, Res> Clone for FromError<F, Res> {
    fn clone(&self) -> Self {
        Self::new(self.f.clone())
    }
}

impl<F, Res> fmt::Debug for FromError<F, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromError")
    }
}

impl<Req, F, Res> FallbackSource<Req> for FromError<F, Res>
where
    F: Fn(&Failure<Res>) -> Result<Res, BoxError>,
{
    type Response = Res;
    type Kept = ();
    type Future = Ready<Result<Res, BoxError>>;

    #[inline]
    fn keep(&self, _req: &Req) {}

    fn fallback(&self, _kept: (), failure: &Failure<Res>) -> Self::Future {
        ready((self.f)(failure))
    }
}

// ===== FromRequest =====

/// A function of the request and the failure. Needs `Req: Clone`: the
/// request is cloned before the primary takes it, on every call.
pub struct FromRequest<F, Res> {
    pub(crate) f: F,
    _res: PhantomData<fn() -> Res>,
}

impl<F, Res> FromRequest<F, Res> {
    pub(crate) fn new(f: F) -> Self {
        Self {
            f,
            _res: PhantomData,
        }
    }
}

impl<F: Clone, Res> Clone for FromRequest<F, Res> {
    fn clone(&self) -> Self {
        Self::new(self.f.clone())
    }
}

impl<F, Res> fmt::Debug for FromRequest<F, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromRequest")
    }
}

impl<Req, F, Res> FallbackSource<Req> for FromRequest<F, Res>
where
    Req: Clone,
    F: Fn(Req, &Failure<Res>) -> Result<Res, BoxError>,
{
    type Response = Res;
    type Kept = Req;
    type Future = Ready<Result<Res, BoxError>>;

    #[inline]
    fn keep(&self, req: &Req) -> Req {
        req.clone()
    }

    fn fallback(&self, req: Req, failure: &Failure<Res>) -> Self::Future {
        ready((self.f)(req, failure))
    }
}

// ===== ToService =====

/// Another tower service, a secondary upstream: it gets a clone of the
/// request (so `Req: Clone`, cloned before the primary takes it, on every
/// call). Each fallback call uses a clone of the service, made ready
/// before it is called, as `ServiceExt::oneshot` does.
///
/// For `http::Request<B>` whose body is not `Clone` (a streaming body),
/// see [`WithoutBody`].
#[derive(Debug, Clone)]
pub struct ToService<S>(pub(crate) S);

impl<Req, S> FallbackSource<Req> for ToService<S>
where
    Req: Clone,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Kept = Req;
    type Future = Oneshot<S, Req>;

    #[inline]
    fn keep(&self, req: &Req) -> Req {
        req.clone()
    }

    fn fallback(&self, req: Req, _failure: &Failure<S::Response>) -> Self::Future {
        Oneshot::new(self.0.clone(), req)
    }
}

/// An `http::Request` head (method, URI, version, headers, extensions),
/// kept by [`WithoutBody`].
#[derive(Debug, Clone)]
pub struct Head(http::request::Parts);

/// A secondary HTTP service that gets the request's head and an empty body
/// (`B2::default()`): for `http::Request<B>` whose body cannot be cloned or
/// replayed, as with hyper's `Incoming` or axum's `Body`.
///
/// The head is cloned before the primary takes the request, on every call
/// (the clone of a non-empty header map allocates).
///
/// The body is **not** replayed: the secondary sees the method, the URI,
/// the headers (a `Content-Length` included, which it must not trust) and
/// the extensions, but no body bytes. That suits the usual fallback
/// targets (GETs to a replica, a cache, a static mirror); a secondary that
/// needs the body needs a `Clone` body (`String`, `Bytes`,
/// `http_body_util::Full<Bytes>`) and [`ToService`]. buttress-retry's
/// bounded body replay is not used here: it changes the primary's request
/// type and allocates on every call, which a layer whose fallback runs
/// only in an outage should not cost every healthy call.
pub struct WithoutBody<S, B2> {
    svc: S,
    _body: PhantomData<fn() -> B2>,
}

impl<S, B2> WithoutBody<S, B2> {
    pub(crate) fn new(svc: S) -> Self {
        Self {
            svc,
            _body: PhantomData,
        }
    }
}

impl<S: Clone, B2> Clone for WithoutBody<S, B2> {
    fn clone(&self) -> Self {
        Self::new(self.svc.clone())
    }
}

impl<S: fmt::Debug, B2> fmt::Debug for WithoutBody<S, B2> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WithoutBody").field(&self.svc).finish()
    }
}

impl<B, B2, S> FallbackSource<http::Request<B>> for WithoutBody<S, B2>
where
    B2: Default,
    S: Service<http::Request<B2>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Kept = Head;
    type Future = Oneshot<S, http::Request<B2>>;

    fn keep(&self, req: &http::Request<B>) -> Head {
        let mut head = http::Request::new(());
        *head.method_mut() = req.method().clone();
        *head.uri_mut() = req.uri().clone();
        *head.version_mut() = req.version();
        *head.headers_mut() = req.headers().clone();
        *head.extensions_mut() = req.extensions().clone();
        Head(head.into_parts().0)
    }

    fn fallback(&self, head: Head, _failure: &Failure<S::Response>) -> Self::Future {
        Oneshot::new(
            self.svc.clone(),
            http::Request::from_parts(head.0, B2::default()),
        )
    }
}

pin_project! {
    /// The future of a service fallback: readiness, then the call.
    pub struct Oneshot<S, Req>
    where
        S: Service<Req>,
    {
        svc: S,
        req: Option<Req>,
        #[pin]
        fut: Option<S::Future>,
    }
}

impl<S: Service<Req>, Req> Oneshot<S, Req> {
    fn new(svc: S, req: Req) -> Self {
        Self {
            svc,
            req: Some(req),
            fut: None,
        }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for Oneshot<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oneshot")
            .field("called", &self.req.is_none())
            .finish()
    }
}

impl<S, Req> Future for Oneshot<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(fut) = this.fut.as_mut().as_pin_mut() {
                return fut.poll(cx).map_err(Into::into);
            }
            ready_poll!(this.svc.poll_ready(cx)).map_err(Into::into)?;
            let req = this.req.take().expect("polled after completion");
            this.fut.set(Some(this.svc.call(req)));
        }
    }
}

// ===== Unavailable =====

/// The content type of [`Unavailable`]'s body.
pub const APPLICATION_JSON: &str = "application/json";

/// The ready-made fallback of an HTTP server: `503 Service Unavailable`
/// with a small JSON body saying why, and `Retry-After` (whole seconds,
/// rounded up) when the cause carries a hint: an open circuit's time left,
/// a rate limit's wait, a bulkhead's hint, or the `Retry-After` header of
/// a failed upstream response.
///
/// ```json
/// {"error":"service_unavailable","reason":"circuit_open","retry_after":30}
/// ```
///
/// `retry_after` is left out when unknown. The body never carries the
/// error's text, which may leak internals. The request is not kept. The
/// body type must be buildable from a `String` (axum's `Body`,
/// `Full<Bytes>`, `String`, ...).
pub struct Unavailable<B> {
    status: StatusCode,
    _body: PhantomData<fn() -> B>,
}

impl<B> Unavailable<B> {
    pub(crate) fn new() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            _body: PhantomData,
        }
    }

    pub(crate) fn with_status(status: StatusCode) -> Self {
        Self {
            status,
            _body: PhantomData,
        }
    }

    /// The body and headers for `failure`.
    pub fn response(&self, failure: &Failure<http::Response<B>>) -> http::Response<B>
    where
        B: From<String>,
    {
        let reason = failure.reason();
        let retry_after = match failure {
            Failure::Error(e) => retry_after(&**e)
                .and_then(buttress_core::response::retry_after_secs)
                .map(HeaderValue::from),
            Failure::Response(r) => r.headers().get(http::header::RETRY_AFTER).cloned(),
        };
        let mut json = format!(
            r#"{{"error":"service_unavailable","reason":"{}""#,
            reason.as_str()
        );
        if let Some(secs) = retry_after
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<u64>().ok())
        {
            json.push_str(&format!(r#","retry_after":{secs}"#));
        }
        json.push('}');
        let mut res = http::Response::new(B::from(json));
        *res.status_mut() = self.status;
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(APPLICATION_JSON),
        );
        if let Some(value) = retry_after {
            res.headers_mut().insert(http::header::RETRY_AFTER, value);
        }
        res
    }
}

impl<B> Clone for Unavailable<B> {
    fn clone(&self) -> Self {
        Self::with_status(self.status)
    }
}

impl<B> fmt::Debug for Unavailable<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unavailable")
            .field("status", &self.status)
            .finish()
    }
}

impl<Req, B: From<String>> FallbackSource<Req> for Unavailable<B> {
    type Response = http::Response<B>;
    type Kept = ();
    type Future = Ready<Result<http::Response<B>, BoxError>>;

    #[inline]
    fn keep(&self, _req: &Req) {}

    fn fallback(&self, _kept: (), failure: &Failure<http::Response<B>>) -> Self::Future {
        ready(Ok(self.response(failure)))
    }
}
