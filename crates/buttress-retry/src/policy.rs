//! What is retried: a verdict on each result, with the server's hint.

use std::error::Error as StdError;
use std::io;
use std::time::{Duration, SystemTime};

use buttress_core::error::{chain, kind_of, retry_after};
use buttress_core::outcome::GrpcCode;
use buttress_core::{BoxError, Classifier, ErrorKind, Outcome};
use http::{HeaderMap, HeaderName, Response, StatusCode};

/// The verdict on one result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Give the result to the caller.
    Accept,
    /// A failure worth retrying; `after` is the server's hint (Retry-After,
    /// gRPC pushback, a buttress rejection's `retry_after`): the next
    /// attempt waits at least that long.
    Retry {
        /// The least time to wait, if the server said.
        after: Option<Duration>,
    },
    /// A failure that the server says must not be retried (a negative or
    /// malformed `grpc-retry-pushback-ms`).
    Refuse,
}

impl Verdict {
    /// A retry with no hint.
    pub const RETRY: Verdict = Verdict::Retry { after: None };
}

/// Decides whether a result is retried.
///
/// Errors come as [`BoxError`] (the retry layer converts the inner
/// service's error first). Presets: [`RetryErrors`] (the default),
/// [`NetworkErrors`], [`HttpRetry`], [`GrpcRetry`]; any core
/// [`Classifier`] through [`Classified`]; and closures:
///
/// ```
/// use buttress_retry::{RetryPolicy, Verdict};
///
/// let policy = |res: &Result<u16, buttress_core::BoxError>| match res {
///     Ok(503) => Verdict::RETRY,
///     _ => Verdict::Accept,
/// };
/// assert_eq!(policy.check(&Ok(503)), Verdict::RETRY);
/// ```
pub trait RetryPolicy<Res> {
    /// The verdict on one result.
    fn check(&self, result: &Result<Res, BoxError>) -> Verdict;
}

impl<F, Res> RetryPolicy<Res> for F
where
    F: Fn(&Result<Res, BoxError>) -> Verdict,
{
    fn check(&self, result: &Result<Res, BoxError>) -> Verdict {
        self(result)
    }
}

/// The hint of an error: the `retry_after` of a buttress rejection
/// (`CircuitOpen`, `RateLimited`, `BulkheadFull`) anywhere in its chain.
fn error_verdict(err: &BoxError) -> Verdict {
    Verdict::Retry {
        after: retry_after(&**err),
    }
}

/// The default policy: every error is retried (with the hint of a buttress
/// rejection), every response accepted.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryErrors;

impl<Res> RetryPolicy<Res> for RetryErrors {
    fn check(&self, result: &Result<Res, BoxError>) -> Verdict {
        match result {
            Ok(_) => Verdict::Accept,
            Err(e) => error_verdict(e),
        }
    }
}

/// Retries what a core [`Classifier`] calls a
/// [`Failure`](Outcome::Failure), with the hint of a buttress rejection.
///
/// ```
/// use buttress_core::HttpClassifier;
/// use buttress_retry::{Classified, RetryPolicy, Verdict};
///
/// let policy = Classified(HttpClassifier::new());
/// let res = http::Response::builder().status(500).body(()).unwrap();
/// assert_eq!(policy.check(&Ok(res)), Verdict::RETRY);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Classified<C>(pub C);

impl<C, Res> RetryPolicy<Res> for Classified<C>
where
    C: Classifier<Res, BoxError>,
{
    fn check(&self, result: &Result<Res, BoxError>) -> Verdict {
        match self.0.classify(result) {
            Outcome::Failure => match result {
                Err(e) => error_verdict(e),
                Ok(_) => Verdict::RETRY,
            },
            Outcome::Success | Outcome::Ignored => Verdict::Accept,
        }
    }
}

/// `true` when `err` (or a cause of it) is an I/O error of the network: the
/// connection was refused, reset, aborted or timed out, or the host or
/// network was unreachable.
pub fn is_network_error(err: &(dyn StdError + 'static)) -> bool {
    chain(err).any(|e| {
        e.downcast_ref::<io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::AddrNotAvailable
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::UnexpectedEof
            )
        })
    })
}

/// `true` when `err` (or a cause of it) says the connection was never made,
/// so the request was not sent and retrying it is safe whatever its method.
pub fn is_connect_error(err: &(dyn StdError + 'static)) -> bool {
    chain(err).any(|e| {
        e.downcast_ref::<io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::AddrNotAvailable
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
            )
        })
    })
}

/// `true` when the first buttress rejection in `err`'s chain is one that an
/// inner layer makes before sending anything: an open circuit, a rate
/// limit, a full bulkhead.
pub fn is_local_rejection(err: &(dyn StdError + 'static)) -> bool {
    matches!(
        kind_of(err),
        Some(ErrorKind::CircuitOpen | ErrorKind::RateLimited | ErrorKind::BulkheadFull)
    )
}

/// Retries network errors only ([`is_network_error`]) and buttress
/// rejections that carry a hint; accepts everything else.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetworkErrors;

impl<Res> RetryPolicy<Res> for NetworkErrors {
    fn check(&self, result: &Result<Res, BoxError>) -> Verdict {
        match result {
            Err(e) if is_network_error(&**e) => error_verdict(e),
            Err(e) => match retry_after(&**e) {
                Some(after) => Verdict::Retry { after: Some(after) },
                None => Verdict::Accept,
            },
            Ok(_) => Verdict::Accept,
        }
    }
}

/// The HTTP preset: retries errors (the layer's request rules decide
/// whether a non-idempotent request may be retried) and the responses
/// `502`, `503`, `504` and `429`, waiting at least as long as their
/// `Retry-After` header says (delta-seconds or an HTTP-date).
///
/// ```
/// use buttress_retry::{HttpRetry, RetryPolicy, Verdict};
/// use std::time::Duration;
///
/// let res = http::Response::builder().status(503).header("retry-after", "2").body(()).unwrap();
/// assert_eq!(HttpRetry::new().check(&Ok(res)), Verdict::Retry { after: Some(Duration::from_secs(2)) });
/// let res = http::Response::builder().status(500).body(()).unwrap();
/// assert_eq!(HttpRetry::new().check(&Ok(res)), Verdict::Accept);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HttpRetry {
    /// One bit per status code 0..=1023 (`StatusCode` is 100..=999): `Copy`,
    /// so cloning the policy into each response future allocates nothing.
    statuses: [u64; 16],
}

impl Default for HttpRetry {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpRetry {
    /// Retries 502, 503, 504 and 429.
    pub fn new() -> Self {
        Self::statuses([
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::GATEWAY_TIMEOUT,
            StatusCode::TOO_MANY_REQUESTS,
        ])
    }

    /// Retries only the given statuses (for example just 429 and 503, the
    /// statuses that promise a later success).
    pub fn statuses(statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        statuses
            .into_iter()
            .fold(Self { statuses: [0; 16] }, Self::retry_on)
    }

    /// Retries `status` too.
    pub fn retry_on(mut self, status: StatusCode) -> Self {
        let code = usize::from(status.as_u16());
        self.statuses[code / 64] |= 1 << (code % 64);
        self
    }

    /// Whether responses with `status` are retried.
    #[inline]
    pub fn retries_status(&self, status: StatusCode) -> bool {
        let code = usize::from(status.as_u16());
        self.statuses[code / 64] & (1 << (code % 64)) != 0
    }
}

impl<B> RetryPolicy<Response<B>> for HttpRetry {
    fn check(&self, result: &Result<Response<B>, BoxError>) -> Verdict {
        match result {
            Ok(res) if self.retries_status(res.status()) => Verdict::Retry {
                after: parse_retry_after(res.headers(), SystemTime::now()),
            },
            Ok(_) => Verdict::Accept,
            Err(e) => error_verdict(e),
        }
    }
}

/// `Retry-After`: delta-seconds or an HTTP-date, relative to `now` (a date
/// in the past is a zero wait). A malformed value is no hint.
///
/// ```
/// use buttress_retry::policy::parse_retry_after;
/// use http::HeaderMap;
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
///
/// let mut h = HeaderMap::new();
/// h.insert("retry-after", "120".parse().unwrap());
/// assert_eq!(parse_retry_after(&h, SystemTime::now()), Some(Duration::from_secs(120)));
/// h.insert("retry-after", "Thu, 01 Jan 1970 00:01:40 GMT".parse().unwrap());
/// let now = UNIX_EPOCH + Duration::from_secs(40);
/// assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(60)));
/// ```
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is a wait beyond any max_delay.
        return Some(value.parse().map_or(Duration::MAX, Duration::from_secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `grpc-retry-pushback-ms`.
pub const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// The server's pushback: `Some(Ok(wait))` for a non-negative number of
/// milliseconds, `Some(Err(()))` for "do not retry" (a negative or
/// malformed value, as gRPC's retry design says), `None` without the header.
pub fn parse_pushback(headers: &HeaderMap) -> Option<Result<Duration, ()>> {
    let value = headers.get(GRPC_RETRY_PUSHBACK_MS)?;
    let parsed = value
        .to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok());
    Some(parsed.map(Duration::from_millis).ok_or(()))
}

/// The gRPC preset, on the `http::Response` of a gRPC call: retries
/// `UNAVAILABLE`, and `RESOURCE_EXHAUSTED` only when the server sent a
/// pushback; honours `grpc-retry-pushback-ms` (a negative or malformed
/// value refuses the retry). Errors are retried too, but a gRPC call is a
/// `POST`: with [`RetryLayer::for_grpc`](crate::RetryLayer::for_grpc), an
/// error is retried only when it proves the call never left (a connect
/// error or a local buttress rejection, gRPC's "transparent retry"), since
/// any other may come after the server processed the call.
///
/// The status is read from the response headers: a trailers-only response,
/// which is how servers send an error before any message. Errors inside a
/// stream arrive in the trailers, after the response was given to the
/// caller, and cannot be retried by any layer.
///
/// ```
/// use buttress_retry::{GrpcRetry, RetryPolicy, Verdict};
/// use std::time::Duration;
///
/// let unavailable = http::Response::builder()
///     .header("grpc-status", "14")
///     .header("grpc-retry-pushback-ms", "250")
///     .body(())
///     .unwrap();
/// assert_eq!(
///     GrpcRetry::new().check(&Ok(unavailable)),
///     Verdict::Retry { after: Some(Duration::from_millis(250)) }
/// );
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcRetry {
    /// Retried status codes, one bit per code (0..=16).
    codes: u32,
}

impl GrpcRetry {
    /// Retries `UNAVAILABLE` (and `RESOURCE_EXHAUSTED` with pushback).
    pub fn new() -> Self {
        Self {
            codes: 1 << GrpcCode::Unavailable as u32,
        }
    }

    /// Retries `code` too (for example `DEADLINE_EXCEEDED` for idempotent
    /// methods).
    pub fn retry_on(mut self, code: GrpcCode) -> Self {
        self.codes |= 1 << code as u32;
        self
    }
}

fn grpc_code(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl<B> RetryPolicy<Response<B>> for GrpcRetry {
    fn check(&self, result: &Result<Response<B>, BoxError>) -> Verdict {
        let res = match result {
            Ok(res) => res,
            Err(e) => return error_verdict(e),
        };
        let Some(code) = grpc_code(res.headers()) else {
            return Verdict::Accept;
        };
        if code == GrpcCode::Ok as i32 {
            return Verdict::Accept;
        }
        let listed = u32::try_from(code)
            .ok()
            .filter(|c| *c < 32)
            .is_some_and(|c| self.codes & (1 << c) != 0);
        let exhausted = code == GrpcCode::ResourceExhausted as i32;
        match parse_pushback(res.headers()) {
            Some(Err(())) if listed || exhausted => Verdict::Refuse,
            Some(Ok(after)) if listed || exhausted => Verdict::Retry { after: Some(after) },
            None if listed => Verdict::RETRY,
            _ => Verdict::Accept,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use buttress_core::{CircuitOpen, RateLimited};

    fn resp(status: u16, headers: &[(&str, &str)]) -> Result<Response<()>, BoxError> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        Ok(b.body(()).unwrap())
    }

    #[test]
    fn http_preset_retries_the_transient_statuses_only() {
        let p = HttpRetry::new();
        for s in [502, 503, 504, 429] {
            assert_eq!(p.check(&resp(s, &[])), Verdict::RETRY, "{s}");
        }
        for s in [200, 201, 400, 404, 409, 500, 501] {
            assert_eq!(p.check(&resp(s, &[])), Verdict::Accept, "{s}");
        }
        let only = HttpRetry::statuses([StatusCode::TOO_MANY_REQUESTS]);
        assert_eq!(only.check(&resp(503, &[])), Verdict::Accept);
        assert_eq!(
            only.retry_on(StatusCode::INTERNAL_SERVER_ERROR)
                .check(&resp(500, &[])),
            Verdict::RETRY
        );
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let p = HttpRetry::new();
        assert_eq!(
            p.check(&resp(429, &[("retry-after", "3")])),
            Verdict::Retry {
                after: Some(Duration::from_secs(3))
            }
        );
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("retry-after", v.parse().unwrap());
            m
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after(&h("Sun, 06 Nov 1994 08:49:37 GMT"), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after(&h("Sun, 06 Nov 1994 08:50:07 GMT"), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(&h("Sun, 06 Nov 1994 08:49:00 GMT"), now),
            Some(Duration::ZERO)
        );
        for bad in ["-1", "1.5", "soon", "", "0x10"] {
            assert_eq!(parse_retry_after(&h(bad), now), None, "{bad:?}");
        }
        assert_eq!(
            parse_retry_after(&h("99999999999999999999999"), now),
            Some(Duration::MAX)
        );
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn errors_carry_the_hint_of_buttress_rejections() {
        let open: BoxError = CircuitOpen::new("b".into(), Some(Duration::from_millis(1500))).into();
        assert_eq!(
            RetryErrors.check(&Err::<(), _>(open)),
            Verdict::Retry {
                after: Some(Duration::from_millis(1500))
            }
        );
        let limited: BoxError = RateLimited::new("r".into(), Some(Duration::from_secs(2))).into();
        assert_eq!(
            NetworkErrors.check(&Err::<(), _>(limited)),
            Verdict::Retry {
                after: Some(Duration::from_secs(2))
            }
        );
        let other: BoxError = "parse error".into();
        assert_eq!(NetworkErrors.check(&Err::<(), _>(other)), Verdict::Accept);
        let refused: BoxError = io::Error::from(io::ErrorKind::ConnectionRefused).into();
        assert!(is_connect_error(&*refused));
        assert_eq!(NetworkErrors.check(&Err::<(), _>(refused)), Verdict::RETRY);
        let reset: BoxError = io::Error::from(io::ErrorKind::ConnectionReset).into();
        assert!(is_network_error(&*reset) && !is_connect_error(&*reset));
    }

    #[test]
    fn grpc_preset_follows_codes_and_pushback() {
        let p = GrpcRetry::new();
        let ms = |n| Verdict::Retry {
            after: Some(Duration::from_millis(n)),
        };
        assert_eq!(
            p.check(&resp(200, &[("grpc-status", "14")])),
            Verdict::RETRY
        );
        assert_eq!(
            p.check(&resp(200, &[("grpc-status", "0")])),
            Verdict::Accept
        );
        assert_eq!(p.check(&resp(200, &[])), Verdict::Accept);
        assert_eq!(
            p.check(&resp(200, &[("grpc-status", "5")])),
            Verdict::Accept
        );
        // RESOURCE_EXHAUSTED only with pushback.
        assert_eq!(
            p.check(&resp(200, &[("grpc-status", "8")])),
            Verdict::Accept
        );
        assert_eq!(
            p.check(&resp(
                200,
                &[("grpc-status", "8"), ("grpc-retry-pushback-ms", "40")]
            )),
            ms(40)
        );
        for bad in ["-1", "abc", "", "1.5"] {
            assert_eq!(
                p.check(&resp(
                    200,
                    &[("grpc-status", "14"), ("grpc-retry-pushback-ms", bad)]
                )),
                Verdict::Refuse,
                "{bad:?}"
            );
        }
        let p = p.retry_on(GrpcCode::DeadlineExceeded);
        assert_eq!(p.check(&resp(200, &[("grpc-status", "4")])), Verdict::RETRY);
    }

    #[test]
    fn classifiers_become_policies() {
        let p = Classified(buttress_core::HttpClassifier::new());
        assert_eq!(p.check(&resp(500, &[])), Verdict::RETRY);
        assert_eq!(p.check(&resp(404, &[])), Verdict::Accept);
        let err: BoxError = "x".into();
        assert_eq!(
            RetryPolicy::<Response<()>>::check(&p, &Err(err)),
            Verdict::RETRY
        );
    }
}
