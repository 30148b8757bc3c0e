//! Turning rejections into HTTP responses, for servers that need an
//! `Infallible` service (axum).
//!
//! | error in the chain | status | headers |
//! |---|---|---|
//! | [`BulkheadFull`] | 503 Service Unavailable | `Retry-After` when known |
//! | [`CircuitOpen`] | 503 Service Unavailable | `Retry-After` when known |
//! | [`RateLimited`] | 429 Too Many Requests | `Retry-After` when known; `RateLimit-Policy` and `RateLimit` when a [`Quota`] is attached |
//! | [`Elapsed`] | 504 Gateway Timeout (configurable, e.g. 408) | |
//! | anything else | 500 Internal Server Error | |
//!
//! A [`RetryExhausted`](crate::error::RetryExhausted) is mapped by the
//! rejection that ended its last attempt. `Retry-After` is in whole
//! seconds, rounded up, and present whenever the rejection carries a retry
//! hint (a bulkhead's only when the bulkhead sets one).
//!
//! **Rate-limit headers.** A [`RateLimited`] that carries a [`Quota`]
//! (see [`RateLimited::with_quota`]) adds the two fields of
//! draft-ietf-httpapi-ratelimit-headers (versions 08 to 10), written by
//! [`ratelimit_headers`], which a rate limiter can also call on the
//! responses it lets through:
//!
//! ```text
//! RateLimit-Policy: "api";q=100;w=60
//! RateLimit: "api";r=0;t=30
//! ```
//!
//! **Bodies.** By default the body is empty, with no content type, and
//! never contains the error text, which may leak internals; an unknown
//! error is logged through `tracing` instead.
//! [`ErrorToResponseLayer::problem_json`] sends an RFC 9457
//! `application/problem+json` body instead:
//!
//! ```json
//! {"type":"about:blank","title":"Service Unavailable","status":503}
//! ```
//!
//! `title` is the status' reason phrase, as RFC 9457 asks of
//! `about:blank`. With [`ErrorToResponseLayer::detailed`] a rejection's own
//! text (instance name and reason) is added as `detail`, for internal
//! services, as in `` "detail":"bulkhead `orders` is full: no free permit and no room to wait" ``.
//! The text of an unknown error is never sent. Another format is one
//! [`ErrorBody`] impl away.
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

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{
    chain, BoxError, BulkheadFull, CircuitOpen, Elapsed, ErrorKind, Quota, RateLimited,
};

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
        Some(ceil_secs(wait))
    }
}

/// Whole seconds, rounded up; saturates instead of overflowing on
/// `Duration::MAX`.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

// ===== rate-limit headers =====

/// The `RateLimit-Policy` header name (draft-ietf-httpapi-ratelimit-headers):
/// the quota policy, `"name";q=<limit>;w=<window>`. See
/// [`ratelimit_headers`].
///
/// ```
/// use buttress_core::response::RATELIMIT_POLICY;
///
/// assert_eq!(RATELIMIT_POLICY, "ratelimit-policy");
/// ```
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The `RateLimit` header name (draft-ietf-httpapi-ratelimit-headers): the
/// current service limit, `"name";r=<remaining>;t=<reset>`. See
/// [`ratelimit_headers`].
///
/// ```
/// use buttress_core::response::RATELIMIT;
///
/// assert_eq!(RATELIMIT, "ratelimit");
/// ```
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The largest Integer a Structured Field can carry (15 digits).
const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

/// Inserts the `RateLimit-Policy` and `RateLimit` headers of
/// draft-ietf-httpapi-ratelimit-headers (versions 08 to 10) for `quota`,
/// replacing any already in `headers`.
///
/// The error-to-response mapping calls it for a [`RateLimited`] that
/// carries a quota; a rate limiter calls it to advertise its quota on the
/// responses it admits.
///
/// Each header is a Structured Field List of one Item, the policy name as
/// a String, with Integer parameters:
///
/// - `RateLimit-Policy`: `q` is [`Quota::limit`]; `w` is
///   [`Quota::window`] in whole seconds, rounded up (the draft has no
///   sub-second windows), and left out when the window is zero, which the
///   draft does not allow.
/// - `RateLimit`: `r` is [`Quota::remaining`]; `t` is [`Quota::reset`] in
///   whole seconds, rounded up so a client never comes back early (`0`
///   when nothing is left to wait).
/// - The name is quoted, with `"` and `\` escaped by a backslash. Every
///   byte outside printable ASCII (`0x20` to `0x7E`), which a String cannot
///   carry, is replaced by `_`, one per byte (`café` becomes `"caf__"`):
///   replaced rather than rejected, so that a name never costs a response
///   its headers nor makes an invalid one.
/// - A number above the largest Structured Field Integer
///   (999,999,999,999,999) is sent as that largest value.
///
/// ```
/// use buttress_core::response::{ratelimit_headers, RATELIMIT, RATELIMIT_POLICY};
/// use buttress_core::Quota;
/// use std::time::Duration;
///
/// let quota = Quota::new("api".into(), 100, Duration::from_secs(60), 0, Duration::from_secs(30));
/// let mut headers = http::HeaderMap::new();
/// ratelimit_headers(&quota, &mut headers);
/// assert_eq!(headers[RATELIMIT_POLICY], r#""api";q=100;w=60"#);
/// assert_eq!(headers[RATELIMIT], r#""api";r=0;t=30"#);
/// ```
pub fn ratelimit_headers(quota: &Quota, headers: &mut HeaderMap) {
    // Only printable ASCII is written, which every header value accepts.
    if let Ok(value) = HeaderValue::try_from(ratelimit_policy_text(quota)) {
        headers.insert(RATELIMIT_POLICY, value);
    }
    if let Ok(value) = HeaderValue::try_from(ratelimit_text(quota)) {
        headers.insert(RATELIMIT, value);
    }
}

/// The `RateLimit-Policy` field value for `quota`; also sent as gRPC
/// metadata.
pub(crate) fn ratelimit_policy_text(quota: &Quota) -> String {
    let mut text = String::with_capacity(quota.policy().len() + 48);
    push_sf_string(&mut text, quota.policy());
    push_sf_integer_param(&mut text, "q", quota.limit());
    let window = ceil_secs(quota.window());
    if window > 0 {
        push_sf_integer_param(&mut text, "w", window);
    }
    text
}

/// The `RateLimit` field value for `quota`; also sent as gRPC metadata.
pub(crate) fn ratelimit_text(quota: &Quota) -> String {
    let mut text = String::with_capacity(quota.policy().len() + 48);
    push_sf_string(&mut text, quota.policy());
    push_sf_integer_param(&mut text, "r", quota.remaining());
    push_sf_integer_param(&mut text, "t", ceil_secs(quota.reset()));
    text
}

/// Appends `s` as a Structured Field String; see [`ratelimit_headers`] for
/// the bytes it cannot carry.
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push('_'),
        }
    }
    out.push('"');
}

/// Appends `;key=value`, the value clamped to a Structured Field Integer.
fn push_sf_integer_param(out: &mut String, key: &str, value: u64) {
    use std::fmt::Write as _;
    // Writing to a `String` cannot fail.
    let _ = write!(out, ";{key}={}", value.min(SF_INTEGER_MAX));
}

/// Builds the response for an error, as described in the [module
/// docs](self), with an empty body. `timeout_status` is the status for
/// [`Elapsed`].
pub fn error_response<B: Default>(
    err: &(dyn std::error::Error + 'static),
    timeout_status: StatusCode,
) -> Response<B> {
    render(err, timeout_status, false, &EmptyBody)
}

fn render<B, Fmt: ErrorBody<B>>(
    err: &(dyn std::error::Error + 'static),
    timeout_status: StatusCode,
    detailed: bool,
    format: &Fmt,
) -> Response<B> {
    let mut headers = HeaderMap::new();
    let (status, retry_after, rejection) = classify(err, timeout_status, &mut headers);
    if let Some(secs) = retry_after.and_then(retry_after_secs) {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    let detail = match rejection {
        Some(rejection) if detailed => Some(rejection.to_string()),
        _ => None,
    };
    let problem = Problem {
        status,
        kind: rejection.and_then(crate::error::kind_of),
        detail: detail.as_deref(),
        retry_after,
    };
    let body = format.body(&problem, &mut headers);
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().extend(headers);
    res
}

/// The status, the retry hint and the rejection that decided them.
fn classify<'a>(
    err: &'a (dyn std::error::Error + 'static),
    timeout_status: StatusCode,
    headers: &mut HeaderMap,
) -> (
    StatusCode,
    Option<Duration>,
    Option<&'a (dyn std::error::Error + 'static)>,
) {
    for e in chain(err) {
        if let Some(r) = e.downcast_ref::<BulkheadFull>() {
            return (StatusCode::SERVICE_UNAVAILABLE, r.retry_after(), Some(e));
        }
        if let Some(r) = e.downcast_ref::<CircuitOpen>() {
            return (StatusCode::SERVICE_UNAVAILABLE, r.retry_after(), Some(e));
        }
        if let Some(r) = e.downcast_ref::<RateLimited>() {
            if let Some(quota) = r.quota() {
                ratelimit_headers(quota, headers);
            }
            return (StatusCode::TOO_MANY_REQUESTS, r.retry_after(), Some(e));
        }
        if e.is::<Elapsed>() {
            return (timeout_status, None, Some(e));
        }
    }
    tracing::error!(error = %err, "unhandled error turned into 500");
    (StatusCode::INTERNAL_SERVER_ERROR, None, None)
}

// ===== bodies =====

/// What an error response says, handed to an [`ErrorBody`].
#[derive(Debug, Clone, Copy)]
pub struct Problem<'a> {
    status: StatusCode,
    kind: Option<ErrorKind>,
    detail: Option<&'a str>,
    retry_after: Option<Duration>,
}

impl<'a> Problem<'a> {
    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The rejection that decided the status; `None` for an unknown error
    /// (a 500).
    pub fn kind(&self) -> Option<ErrorKind> {
        self.kind
    }

    /// The rejection's own text, only when the layer is
    /// [`detailed`](ErrorToResponseLayer::detailed).
    pub fn detail(&self) -> Option<&'a str> {
        self.detail
    }

    /// The retry hint, already sent as `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// How [`ErrorToResponseLayer`] makes the body of an error response of body
/// type `B`; it may add headers (a content type).
///
/// ```
/// use buttress_core::response::{ErrorBody, Problem};
///
/// /// A plain-text body: "503 Service Unavailable".
/// #[derive(Debug, Clone, Copy)]
/// struct PlainText;
///
/// impl ErrorBody<String> for PlainText {
///     fn body(&self, problem: &Problem<'_>, headers: &mut http::HeaderMap) -> String {
///         headers.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
///         problem.status().to_string()
///     }
/// }
/// ```
pub trait ErrorBody<B> {
    /// The body for `problem`.
    fn body(&self, problem: &Problem<'_>, headers: &mut HeaderMap) -> B;
}

/// The default [`ErrorBody`]: an empty body (`B::default()`), no content
/// type.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmptyBody;

impl<B: Default> ErrorBody<B> for EmptyBody {
    fn body(&self, _problem: &Problem<'_>, _headers: &mut HeaderMap) -> B {
        B::default()
    }
}

/// An RFC 9457 `application/problem+json` body; see the [module
/// docs](self). The body type must be buildable from a `String` (axum's
/// `Body`, `Full<Bytes>`, `String`, `Bytes`...).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemJson;

/// The content type of [`ProblemJson`] bodies.
pub const APPLICATION_PROBLEM_JSON: &str = "application/problem+json";

impl<B: From<String>> ErrorBody<B> for ProblemJson {
    fn body(&self, problem: &Problem<'_>, headers: &mut HeaderMap) -> B {
        // Written by hand to keep RFC 9457's member order whatever
        // serde_json features the build enables.
        let quoted = |s: &str| serde_json::Value::from(s).to_string();
        let title = problem.status.canonical_reason().unwrap_or("");
        let mut json = format!(
            r#"{{"type":"about:blank","title":{},"status":{}"#,
            quoted(title),
            problem.status.as_u16()
        );
        if let Some(detail) = problem.detail {
            json.push_str(r#","detail":"#);
            json.push_str(&quoted(detail));
        }
        json.push('}');
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(APPLICATION_PROBLEM_JSON),
        );
        B::from(json)
    }
}

// ===== impl ErrorToResponseLayer =====

/// Layer that turns errors into responses; see the [module docs](self).
///
/// `Fmt` makes the body: [`EmptyBody`] (the default) or, after
/// [`problem_json`](ErrorToResponseLayer::problem_json), [`ProblemJson`].
///
/// ```
/// use buttress_core::error::{BoxError, CircuitOpen};
/// use buttress_core::response::ErrorToResponseLayer;
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(ErrorToResponseLayer::new().problem_json())
///     .service_fn(|_req: http::Request<()>| async {
///         let open = CircuitOpen::new("db".into(), Some(Duration::from_millis(1500)));
///         Err::<http::Response<String>, BoxError>(open.into())
///     });
/// let res = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 503);
/// assert_eq!(res.headers()["retry-after"], "2");
/// assert_eq!(res.headers()["content-type"], "application/problem+json");
/// assert_eq!(
///     res.body(),
///     r#"{"type":"about:blank","title":"Service Unavailable","status":503}"#
/// );
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ErrorToResponseLayer<Fmt = EmptyBody> {
    timeout_status: StatusCode,
    detailed: bool,
    format: Fmt,
}

impl Default for ErrorToResponseLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ErrorToResponseLayer {
    /// The mapping of the module docs, with empty bodies.
    pub fn new() -> Self {
        Self {
            timeout_status: StatusCode::GATEWAY_TIMEOUT,
            detailed: false,
            format: EmptyBody,
        }
    }
}

impl<Fmt> ErrorToResponseLayer<Fmt> {
    /// The status sent for a timeout (default 504; a server timing out its
    /// own handlers may prefer 503, tower-http uses 408).
    pub fn timeout_status(mut self, status: StatusCode) -> Self {
        self.timeout_status = status;
        self
    }

    /// Send RFC 9457 `application/problem+json` bodies ([`ProblemJson`])
    /// instead of empty ones.
    pub fn problem_json(self) -> ErrorToResponseLayer<ProblemJson> {
        self.body(ProblemJson)
    }

    /// Make bodies with `format`.
    pub fn body<Fmt2>(self, format: Fmt2) -> ErrorToResponseLayer<Fmt2> {
        ErrorToResponseLayer {
            timeout_status: self.timeout_status,
            detailed: self.detailed,
            format,
        }
    }

    /// Hand the rejection's own text (instance name and reason) to the body
    /// as [`Problem::detail`] (the `detail` member of a problem+json body),
    /// for internal services. Off by default; an empty body ignores it, and
    /// the text of an unknown error is never passed on.
    pub fn detailed(mut self, detailed: bool) -> Self {
        self.detailed = detailed;
        self
    }

    /// The response this layer answers `err` with: for an axum
    /// `HandleErrorLayer`, or a handler of your own.
    ///
    /// ```
    /// use buttress_core::error::{BoxError, Elapsed};
    /// use buttress_core::response::ErrorToResponseLayer;
    /// use std::time::Duration;
    ///
    /// let err: BoxError = Elapsed::new("db".into(), Duration::from_secs(1)).into();
    /// let layer = ErrorToResponseLayer::new().problem_json().detailed(true);
    /// let res: http::Response<String> = layer.response(&*err);
    /// assert_eq!(res.status(), 504);
    /// assert!(res.body().contains(r#""detail":"request timed out after 1s (timeout `db`)""#));
    /// ```
    pub fn response<B>(&self, err: &(dyn std::error::Error + 'static)) -> Response<B>
    where
        Fmt: ErrorBody<B>,
    {
        render(err, self.timeout_status, self.detailed, &self.format)
    }
}

impl<S, Fmt: Clone> Layer<S> for ErrorToResponseLayer<Fmt> {
    type Service = ErrorToResponse<S, Fmt>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorToResponse {
            inner,
            config: self.clone(),
            broken: false,
        }
    }
}

/// Service that turns errors into responses; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct ErrorToResponse<S, Fmt = EmptyBody> {
    inner: S,
    config: ErrorToResponseLayer<Fmt>,
    /// Set when the inner service failed in `poll_ready`: it must not be
    /// called any more, so every call is answered with a 500.
    broken: bool,
}

impl<S, Fmt> ErrorToResponse<S, Fmt> {
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

impl<S, Req, B, Fmt> Service<Req> for ErrorToResponse<S, Fmt>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    Fmt: ErrorBody<B> + Clone,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = ErrorToResponseFuture<S::Future, Fmt>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        poll_ready_or_break(&mut self.inner, cx, &mut self.broken, "500")
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if self.broken {
            return ErrorToResponseFuture {
                kind: Kind::Broken {
                    config: Some(self.config.clone()),
                },
            };
        }
        ErrorToResponseFuture {
            kind: Kind::Inner {
                inner: self.inner.call(req),
                config: Some(self.config.clone()),
            },
        }
    }
}

/// `poll_ready` of a layer that answers every error itself: an error of
/// the inner service's `poll_ready` is logged once and marks the service
/// `broken`, so that its calls are answered with an error response
/// (`answer` names it in the log) instead of failing readiness.
pub(crate) fn poll_ready_or_break<S, Req>(
    inner: &mut S,
    cx: &mut Context<'_>,
    broken: &mut bool,
    answer: &str,
) -> Poll<Result<(), Infallible>>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    if *broken {
        return Poll::Ready(Ok(()));
    }
    match inner.poll_ready(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
        Poll::Ready(Err(e)) => {
            let err: BoxError = e.into();
            tracing::error!(error = %err, "inner service failed in poll_ready; answering {answer}");
            *broken = true;
            Poll::Ready(Ok(()))
        }
    }
}

pin_project! {
    /// Response future of [`ErrorToResponse`].
    pub struct ErrorToResponseFuture<F, Fmt = EmptyBody> {
        #[pin]
        kind: Kind<F, Fmt>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, Fmt> {
        Inner { #[pin] inner: F, config: Option<ErrorToResponseLayer<Fmt>> },
        Broken { config: Option<ErrorToResponseLayer<Fmt>> },
    }
}

impl<F, Fmt> fmt::Debug for ErrorToResponseFuture<F, Fmt> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorToResponseFuture")
            .finish_non_exhaustive()
    }
}

/// Stands for the failure of an inner service's `poll_ready`, which was
/// logged when it happened.
#[derive(Debug)]
struct InnerNotReady;

impl fmt::Display for InnerNotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("inner service failed in poll_ready")
    }
}

impl std::error::Error for InnerNotReady {}

impl<F, B, E, Fmt> Future for ErrorToResponseFuture<F, Fmt>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    Fmt: ErrorBody<B>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { inner, config } => {
                let result = ready!(inner.poll(cx));
                let config = config.take().expect("polled after completion");
                Poll::Ready(Ok(match result {
                    Ok(res) => res,
                    Err(e) => {
                        let err: BoxError = e.into();
                        config.response(&*err)
                    }
                }))
            }
            KindProj::Broken { config } => {
                let config = config.take().expect("polled after completion");
                Poll::Ready(Ok(config.response(&InnerNotReady)))
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

    fn quota(policy: &str, limit: u64, window_ms: u64, remaining: u64, reset_ms: u64) -> Quota {
        Quota::new(
            policy.into(),
            limit,
            Duration::from_millis(window_ms),
            remaining,
            Duration::from_millis(reset_ms),
        )
    }

    /// The two header values `ratelimit_headers` writes for `quota`.
    fn fields(quota: &Quota) -> (String, String) {
        let mut headers = HeaderMap::new();
        ratelimit_headers(quota, &mut headers);
        assert_eq!(headers.len(), 2);
        let text = |name| headers[name].to_str().unwrap().to_owned();
        (text(RATELIMIT_POLICY), text(RATELIMIT))
    }

    #[test]
    fn ratelimit_headers_write_the_draft_fields_exactly() {
        let (policy, limit) = fields(&quota("api", 100, 60_000, 0, 30_000));
        assert_eq!(policy, r#""api";q=100;w=60"#);
        assert_eq!(limit, r#""api";r=0;t=30"#);

        let (policy, limit) = fields(&quota("per-client", 5, 1000, 4, 200));
        assert_eq!(policy, r#""per-client";q=5;w=1"#);
        assert_eq!(limit, r#""per-client";r=4;t=1"#);
    }

    #[test]
    fn ratelimit_headers_escape_quote_and_backslash_in_the_name() {
        let (policy, limit) = fields(&quota(r#"a"b\c"#, 1, 1000, 0, 0));
        assert_eq!(policy, r#""a\"b\\c";q=1;w=1"#);
        assert_eq!(limit, r#""a\"b\\c";r=0;t=0"#);
    }

    #[test]
    fn ratelimit_headers_replace_each_non_printable_ascii_byte() {
        // "é" (two bytes in UTF-8), tab, newline, DEL.
        let (policy, limit) = fields(&quota("caf\u{e9}\t\n\u{7f}x", 1, 1000, 1, 0));
        assert_eq!(policy, r#""caf_____x";q=1;w=1"#);
        assert_eq!(limit, r#""caf_____x";r=1;t=0"#);
        let (policy, _) = fields(&quota("", 1, 1000, 1, 0));
        assert_eq!(policy, r#""";q=1;w=1"#);
    }

    #[test]
    fn ratelimit_reset_is_rounded_up_to_whole_seconds() {
        assert_eq!(fields(&quota("p", 1, 1000, 0, 1500)).1, r#""p";r=0;t=2"#);
        assert_eq!(fields(&quota("p", 1, 1000, 0, 0)).1, r#""p";r=0;t=0"#);
        assert_eq!(fields(&quota("p", 1, 1000, 0, 1)).1, r#""p";r=0;t=1"#);
        assert_eq!(fields(&quota("p", 1, 1000, 0, 2000)).1, r#""p";r=0;t=2"#);
    }

    #[test]
    fn ratelimit_window_is_in_whole_seconds() {
        assert_eq!(fields(&quota("p", 10, 1000, 9, 0)).0, r#""p";q=10;w=1"#);
        assert_eq!(fields(&quota("p", 10, 60_000, 9, 0)).0, r#""p";q=10;w=60"#);
        // The draft has no sub-second windows: rounded up, never to zero.
        assert_eq!(fields(&quota("p", 10, 500, 9, 0)).0, r#""p";q=10;w=1"#);
        assert_eq!(fields(&quota("p", 10, 1500, 9, 0)).0, r#""p";q=10;w=2"#);
        // The draft does not allow a zero window: `w` is left out.
        assert_eq!(fields(&quota("p", 10, 0, 9, 0)).0, r#""p";q=10"#);
    }

    #[test]
    fn ratelimit_numbers_are_clamped_to_structured_field_integers() {
        let huge = Quota::new("p".into(), u64::MAX, Duration::MAX, u64::MAX, Duration::MAX);
        let (policy, limit) = fields(&huge);
        assert_eq!(policy, r#""p";q=999999999999999;w=999999999999999"#);
        assert_eq!(limit, r#""p";r=999999999999999;t=999999999999999"#);
        assert_eq!(retry_after_secs(Duration::MAX), Some(u64::MAX));
    }

    #[test]
    fn ratelimit_headers_replace_earlier_values() {
        let mut headers = HeaderMap::new();
        ratelimit_headers(&quota("a", 1, 1000, 1, 0), &mut headers);
        ratelimit_headers(&quota("b", 2, 1000, 0, 500), &mut headers);
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[RATELIMIT_POLICY], r#""b";q=2;w=1"#);
        assert_eq!(headers[RATELIMIT], r#""b";r=0;t=1"#);
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
            RateLimited::new("r".into(), Some(Duration::from_secs(30)))
                .with_quota(quota("api", 100, 60_000, 0, 30_000))
                .into(),
        );
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "30");
        assert_eq!(r.headers()["ratelimit-policy"], r#""api";q=100;w=60"#);
        assert_eq!(r.headers()["ratelimit"], r#""api";r=0;t=30"#);
        assert!(r.headers().get("ratelimit-limit").is_none());
        assert!(r.headers().get("ratelimit-remaining").is_none());
        assert!(r.headers().get("ratelimit-reset").is_none());

        let r = resp(RateLimited::new("r".into(), Some(Duration::from_millis(10))).into());
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert!(r.headers().get(RATELIMIT_POLICY).is_none());
        assert!(r.headers().get(RATELIMIT).is_none());

        let r = resp(Elapsed::new("t".into(), Duration::from_secs(1)).into());
        assert_eq!(r.status(), 504);

        let r = resp(std::io::Error::other("secret db password in message").into());
        assert_eq!(r.status(), 500);

        let last: BoxError = CircuitOpen::new("c".into(), Some(Duration::from_secs(4))).into();
        let r = resp(RetryExhausted::new("retry".into(), 3, last).into());
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "4");
    }

    fn problem(layer: ErrorToResponseLayer<ProblemJson>, err: BoxError) -> Response<String> {
        layer.response(&*err)
    }

    fn json(res: &Response<String>) -> serde_json::Value {
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        serde_json::from_str(res.body()).expect("a JSON body")
    }

    #[test]
    fn empty_body_by_default_without_content_type() {
        let err: BoxError = CircuitOpen::new("c".into(), None).into();
        let res: Response<String> = ErrorToResponseLayer::new().detailed(true).response(&*err);
        assert_eq!(res.status(), 503);
        assert_eq!(res.body(), "");
        assert!(res.headers().get("content-type").is_none());
    }

    #[test]
    fn problem_json_for_each_rejection() {
        let layer = ErrorToResponseLayer::new().problem_json();

        let full = BulkheadFull::new("orders".into(), BulkheadFullReason::QueueFull)
            .with_retry_after(Duration::from_millis(100));
        let r = problem(layer, full.into());
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(
            json(&r),
            serde_json::json!({"type": "about:blank", "title": "Service Unavailable", "status": 503})
        );

        let r = problem(
            layer,
            CircuitOpen::new("c".into(), Some(Duration::from_millis(2001))).into(),
        );
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "3");
        assert_eq!(json(&r)["title"], "Service Unavailable");

        let limited = RateLimited::new("api".into(), Some(Duration::from_millis(1500)))
            .with_quota(quota("api", 10, 10_000, 0, 1500));
        let r = problem(layer, limited.into());
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["ratelimit-policy"], r#""api";q=10;w=10"#);
        assert_eq!(r.headers()["ratelimit"], r#""api";r=0;t=2"#);
        assert_eq!(
            json(&r),
            serde_json::json!({"type": "about:blank", "title": "Too Many Requests", "status": 429})
        );

        let r = problem(
            layer,
            Elapsed::new("t".into(), Duration::from_secs(1)).into(),
        );
        assert_eq!(r.status(), 504);
        assert!(r.headers().get("retry-after").is_none());
        assert_eq!(json(&r)["title"], "Gateway Timeout");

        let r = problem(
            layer.timeout_status(StatusCode::REQUEST_TIMEOUT),
            Elapsed::new("t".into(), Duration::from_secs(1)).into(),
        );
        assert_eq!(r.status(), 408);
        assert_eq!(json(&r)["status"], 408);

        let r = problem(layer, std::io::Error::other("db password=hunter2").into());
        assert_eq!(r.status(), 500);
        assert_eq!(
            json(&r),
            serde_json::json!({"type": "about:blank", "title": "Internal Server Error", "status": 500})
        );
    }

    #[test]
    fn problem_json_detail_only_when_detailed() {
        let layer = ErrorToResponseLayer::new().problem_json().detailed(true);
        let r = problem(
            layer,
            BulkheadFull::new("orders".into(), BulkheadFullReason::QueueFull).into(),
        );
        assert_eq!(
            json(&r)["detail"],
            "bulkhead `orders` is full: no free permit and no room to wait"
        );

        let last: BoxError = CircuitOpen::new("circuit_breaker".into(), None).into();
        let r = problem(layer, RetryExhausted::new("retry".into(), 3, last).into());
        assert_eq!(json(&r)["detail"], "circuit breaker is open");

        // An unknown error's text is never sent, detailed or not.
        let r = problem(layer, std::io::Error::other("db password=hunter2").into());
        assert!(json(&r).get("detail").is_none());
        assert!(!r.body().contains("hunter2"));

        let r = problem(
            ErrorToResponseLayer::new().problem_json(),
            BulkheadFull::new("orders".into(), BulkheadFullReason::QueueFull).into(),
        );
        assert!(json(&r).get("detail").is_none());
    }

    #[test]
    fn bulkhead_retry_hint_becomes_retry_after() {
        let full = BulkheadFull::new("b".into(), BulkheadFullReason::WaitTimedOut)
            .with_retry_after(Duration::from_millis(1200));
        let r = resp(full.into());
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "2");
    }

    #[tokio::test]
    async fn layer_answers_problem_json_and_passes_responses_through() {
        use tower::{ServiceBuilder, ServiceExt};

        let svc = ServiceBuilder::new()
            .layer(ErrorToResponseLayer::new().problem_json())
            .service_fn(|fail: bool| async move {
                if fail {
                    let quota = Quota::new(
                        "api".into(),
                        100,
                        Duration::from_secs(60),
                        0,
                        Duration::from_secs(1),
                    );
                    Err::<Response<String>, BoxError>(
                        RateLimited::new("api".into(), Some(Duration::from_secs(1)))
                            .with_quota(quota)
                            .into(),
                    )
                } else {
                    Ok(Response::new("ok".to_owned()))
                }
            });
        let r = svc.clone().oneshot(true).await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(json(&r)["status"], 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(r.headers()["ratelimit-policy"], r#""api";q=100;w=60"#);
        assert_eq!(r.headers()["ratelimit"], r#""api";r=0;t=1"#);
        let r = svc.oneshot(false).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), "ok");
        assert!(r.headers().get("content-type").is_none());
        assert!(r.headers().get(RATELIMIT).is_none());
    }

    #[tokio::test]
    async fn a_failed_poll_ready_is_answered_with_a_500_body() {
        use tower::ServiceExt;

        #[derive(Clone)]
        struct NeverReady;
        impl Service<()> for NeverReady {
            type Response = Response<String>;
            type Error = BoxError;
            type Future = std::future::Ready<Result<Response<String>, BoxError>>;
            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
                Poll::Ready(Err("gone".into()))
            }
            fn call(&mut self, _req: ()) -> Self::Future {
                unreachable!("never ready")
            }
        }
        let svc = ErrorToResponseLayer::new().problem_json().layer(NeverReady);
        let r = svc.oneshot(()).await.unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(json(&r)["title"], "Internal Server Error");
    }

    #[test]
    fn timeout_status_is_configurable() {
        let err: BoxError = Elapsed::new("t".into(), Duration::from_secs(1)).into();
        let r: Response<()> = error_response(&*err, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(r.status(), 408);
    }
}
