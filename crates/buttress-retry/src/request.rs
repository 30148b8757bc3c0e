//! How a request is kept for the next attempt.

use std::fmt;

use buttress_core::deadline::{parse_grpc_timeout, Deadline, GRPC_TIMEOUT};
use buttress_core::BoxError;
use http::{HeaderName, Method, Request};
use tokio::time::Instant;

use crate::body::{tee, BodyReplay, NotReplayable, ReplayBody};
use crate::events::{Cause, NotRetried};

/// Keeps what a retry needs to send a request again.
///
/// The retry layer calls [`first`](ReplayRequest::first) with each request,
/// sends the request it returns and keeps the [`Replay`]; for each retry it
/// asks the replay for the next request. Two implementations:
/// [`CloneRequest`] for any `Req: Clone`, and [`HttpReplay`] for
/// `http::Request<B>` with a streaming body.
pub trait ReplayRequest<Req> {
    /// What the inner service receives.
    type Request;
    /// What is kept for the next attempts.
    type Replay: Replay<Request = Self::Request>;

    /// The first attempt's request, and what to keep for retries, or why
    /// this request must never be retried (it is still sent once).
    fn first(&self, req: Req) -> (Self::Request, Result<Self::Replay, NotRetried>);

    /// The request of a call that is never retried (a pass-through
    /// retry): by default the first attempt's, with what was kept
    /// dropped. [`CloneRequest`] hands the request over without cloning
    /// it.
    #[inline]
    fn only(&self, req: Req) -> Self::Request {
        self.first(req).0
    }

    /// The caller's deadline, if the request carries one; read before
    /// [`first`](ReplayRequest::first). No retry starts after it.
    fn deadline(&self, req: &Req) -> Option<Instant> {
        let _ = req;
        None
    }
}

/// What a [`ReplayRequest`] keeps of one request.
pub trait Replay {
    /// What the inner service receives.
    type Request;

    /// The next attempt's request, after an attempt failed with `cause`, or
    /// why there is none.
    fn next(&mut self, cause: Cause) -> Result<Self::Request, NotRetried>;

    /// Whether the request can be sent again after an attempt that failed
    /// with `cause`, without taking anything from what is kept: `Err` with
    /// the reason when it cannot. The retry layer asks this first, before
    /// its policy, its budget or its backoff: the result of a request that
    /// cannot be sent again goes back as it is (see
    /// [`RetryLayer`](crate::RetryLayer)). The default says it can;
    /// [`next`](Replay::next) may still fail (a body still held by the
    /// previous attempt).
    #[inline]
    fn replayable(&self, cause: Cause) -> Result<(), NotRetried> {
        let _ = cause;
        Ok(())
    }
}

/// Retries `Req: Clone` requests: each attempt gets a clone.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneRequest;

/// What [`CloneRequest`] keeps: the request itself.
#[derive(Debug, Clone)]
pub struct Cloned<Req>(pub Req);

impl<Req: Clone> ReplayRequest<Req> for CloneRequest {
    type Request = Req;
    type Replay = Cloned<Req>;

    #[inline]
    fn first(&self, req: Req) -> (Req, Result<Cloned<Req>, NotRetried>) {
        (req.clone(), Ok(Cloned(req)))
    }

    #[inline]
    fn only(&self, req: Req) -> Req {
        req
    }
}

impl<Req: Clone> Replay for Cloned<Req> {
    type Request = Req;

    fn next(&mut self, _cause: Cause) -> Result<Req, NotRetried> {
        Ok(self.0.clone())
    }
}

/// The `Idempotency-Key` header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Retries `http::Request<B>` whose body is a stream.
///
/// - The body is buffered, up to `body_limit` bytes, while the first
///   attempt streams it ([`ReplayBody`]); a retry sends the buffered bytes
///   (and the rest, if the first attempt did not read it all). A larger
///   body is sent once and not retried
///   ([`NotRetried::BodyTooLarge`]).
/// - With `idempotent_only` (the default), only idempotent methods (`GET`,
///   `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`) and requests carrying an
///   `Idempotency-Key` header are retried after they may have reached the
///   server; any request is retried after a connect error or a local
///   buttress rejection (an open circuit, say), which prove it never left.
/// - The caller's deadline is the [`Deadline`] extension (set by an outer
///   `buttress-timeout` layer), or else the `grpc-timeout` header.
///
/// ```
/// use buttress_retry::{HttpReplay, ReplayRequest};
///
/// use buttress_retry::{Cause, NotRetried, Replay};
///
/// let replay = HttpReplay::new().body_limit(1 << 20);
/// let req = http::Request::post("/orders").body(String::from("{}")).unwrap();
/// let (first, keep) = replay.first(req);
/// assert_eq!(first.method(), http::Method::POST);
/// let mut keep = keep.unwrap();
/// // A POST without Idempotency-Key may have reached the server...
/// assert_eq!(keep.next(Cause::Error).unwrap_err(), NotRetried::NonIdempotent);
/// // ...unless the connection was never made.
/// drop(first);
/// assert!(keep.next(Cause::ConnectError).is_ok());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HttpReplay {
    body_limit: usize,
    idempotent_only: bool,
    responses_any_method: bool,
    grpc_timeout: bool,
}

impl Default for HttpReplay {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpReplay {
    /// A body limit of 64 KiB, idempotent requests only, `grpc-timeout`
    /// honoured.
    pub const fn new() -> Self {
        Self {
            body_limit: 64 * 1024,
            idempotent_only: true,
            responses_any_method: false,
            grpc_timeout: true,
        }
    }

    /// The most body bytes kept for a retry.
    pub const fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Whether only idempotent requests are retried once they may have
    /// reached the server (default `true`). `false` retries any method:
    /// only for servers known to deduplicate.
    pub const fn idempotent_only(mut self, yes: bool) -> Self {
        self.idempotent_only = yes;
        self
    }

    /// Whether a retryable *response* allows a retry whatever the method
    /// (default `false`). The gRPC preset turns this on: gRPC calls are all
    /// `POST`s, and `UNAVAILABLE` (or a pushback) says the call was not
    /// processed. Errors still follow the idempotency rule.
    pub const fn responses_any_method(mut self, yes: bool) -> Self {
        self.responses_any_method = yes;
        self
    }

    /// Whether a `grpc-timeout` header sets the deadline (default `true`).
    pub const fn grpc_timeout(mut self, yes: bool) -> Self {
        self.grpc_timeout = yes;
        self
    }

    /// The configured body limit.
    pub fn limit(&self) -> usize {
        self.body_limit
    }
}

/// Whether `req` may be sent twice: an idempotent method (RFC 9110) or an
/// `Idempotency-Key` header.
pub fn is_idempotent<B>(req: &Request<B>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || req.headers().contains_key(IDEMPOTENCY_KEY)
}

impl<B> Replay for HttpReplayState<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Request = Request<ReplayBody<B>>;

    fn next(&mut self, cause: Cause) -> Result<Self::Request, NotRetried> {
        self.allows(cause)?;
        let body = self.body.replay().map_err(|e| match e {
            NotReplayable::TooLarge => NotRetried::BodyTooLarge,
            NotReplayable::InUse => NotRetried::BodyInUse,
        })?;
        Ok(Request::from_parts(self.parts.clone(), body))
    }

    #[inline]
    fn replayable(&self, cause: Cause) -> Result<(), NotRetried> {
        self.allows(cause)?;
        match self.body.lost() {
            None => Ok(()),
            Some(NotReplayable::TooLarge) => Err(NotRetried::BodyTooLarge),
            Some(NotReplayable::InUse) => Err(NotRetried::BodyInUse),
        }
    }
}

impl<B> HttpReplayState<B> {
    /// The method rule: a request that may have reached the server is sent
    /// again only if it is idempotent (or the response vouches for it).
    #[inline]
    fn allows(&self, cause: Cause) -> Result<(), NotRetried> {
        let never_sent = matches!(cause, Cause::ConnectError | Cause::Rejected);
        let vouched = cause == Cause::Response && self.responses_any_method;
        if self.idempotent || never_sent || vouched {
            Ok(())
        } else {
            Err(NotRetried::NonIdempotent)
        }
    }
}

/// What [`HttpReplay`] keeps of a request.
pub struct HttpReplayState<B> {
    parts: http::request::Parts,
    body: BodyReplay<B>,
    idempotent: bool,
    responses_any_method: bool,
}

impl<B> fmt::Debug for HttpReplayState<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpReplayState")
            .field("method", &self.parts.method)
            .field("uri", &self.parts.uri)
            .field("idempotent", &self.idempotent)
            .finish_non_exhaustive()
    }
}

impl<B> ReplayRequest<Request<B>> for HttpReplay
where
    B: http_body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Request = Request<ReplayBody<B>>;
    type Replay = HttpReplayState<B>;

    fn first(&self, req: Request<B>) -> (Self::Request, Result<Self::Replay, NotRetried>) {
        let idempotent = !self.idempotent_only || is_idempotent(&req);
        let responses_any_method = self.responses_any_method;
        let (parts, body) = req.into_parts();
        let (body, replay) = tee(body, self.body_limit);
        let keep = HttpReplayState {
            parts: parts.clone(),
            body: replay,
            idempotent,
            responses_any_method,
        };
        (Request::from_parts(parts, body), Ok(keep))
    }

    fn deadline(&self, req: &Request<B>) -> Option<Instant> {
        if let Some(d) = req.extensions().get::<Deadline>() {
            return Some(d.0);
        }
        if self.grpc_timeout {
            let timeout = parse_grpc_timeout(req.headers().get(GRPC_TIMEOUT)?)?;
            return Instant::now().checked_add(timeout);
        }
        None
    }
}
