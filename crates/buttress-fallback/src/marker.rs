//! What a fallback response says about itself: the [`FallbackUsed`]
//! extension, an optional header, and how a layer puts them on a response
//! ([`Mark`]).

use std::fmt;
use std::sync::Arc;

use buttress_core::error::{kind_of, root_kind_of};
use buttress_core::ErrorKind;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::source::Failure;

/// Why a fallback ran.
///
/// ```
/// use buttress_fallback::FallbackReason;
/// use buttress_core::ErrorKind;
///
/// assert_eq!(FallbackReason::Rejected(ErrorKind::CircuitOpen).as_str(), "circuit_open");
/// assert_eq!(FallbackReason::Error.as_str(), "error");
/// assert_eq!(FallbackReason::Response.to_string(), "response");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FallbackReason {
    /// A buttress rejection: an open circuit, a timeout, a full bulkhead, a
    /// rate limit... The kind is the one that stopped the call: behind a
    /// `RetryExhausted`, the rejection of the last attempt, if any.
    Rejected(ErrorKind),
    /// Any other error.
    Error,
    /// A response the trigger calls a failure (an HTTP 503 from upstream).
    Response,
}

impl FallbackReason {
    /// The reason of a failure.
    pub fn of<Res>(failure: &Failure<Res>) -> Self {
        match failure {
            Failure::Error(err) => match root_kind_of(&**err).or_else(|| kind_of(&**err)) {
                Some(kind) => FallbackReason::Rejected(kind),
                None => FallbackReason::Error,
            },
            Failure::Response(_) => FallbackReason::Response,
        }
    }

    /// A short snake_case label, used in the marker header, events, logs
    /// and metrics: `circuit_open`, `timeout`, `bulkhead_full`,
    /// `rate_limited`, `retry_exhausted`, `key_missing`, `rejected` (a
    /// rejection kind newer than this crate), `error`, `response`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FallbackReason::Rejected(kind) => kind_label(*kind),
            FallbackReason::Error => "error",
            FallbackReason::Response => "response",
        }
    }
}

pub(crate) fn kind_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::CircuitOpen => "circuit_open",
        ErrorKind::Timeout => "timeout",
        ErrorKind::BulkheadFull => "bulkhead_full",
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::RetryExhausted => "retry_exhausted",
        ErrorKind::KeyMissing => "key_missing",
        _ => "rejected",
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The marker of a fallback response: which fallback answered, and why.
/// An HTTP marker ([`HttpMarker`]) puts it in the response's extensions,
/// where an outer layer or the handler finds it:
///
/// ```
/// use buttress_fallback::{FallbackLayer, FallbackUsed, HttpMarker};
/// use buttress_core::{BoxError, RateLimited};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cached = http::Response::new(String::from("[]"));
/// let layer = FallbackLayer::value(cached).name("feed").mark(HttpMarker::new()).build().unwrap();
/// let svc = layer.layer(service_fn(|_: http::Request<()>| async {
///     Err::<http::Response<String>, BoxError>(RateLimited::new("feed".into(), None).into())
/// }));
/// let res = svc.oneshot(http::Request::new(())).await.unwrap();
/// let used = res.extensions().get::<FallbackUsed>().unwrap();
/// assert_eq!(used.name(), "feed");
/// assert_eq!(used.reason().as_str(), "rate_limited");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackUsed {
    name: Arc<str>,
    reason: FallbackReason,
}

impl FallbackUsed {
    /// The fallback `name` answered, for `reason`.
    pub fn new(name: Arc<str>, reason: FallbackReason) -> Self {
        Self { name, reason }
    }

    /// The name of the fallback layer that answered.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why the fallback ran.
    pub fn reason(&self) -> FallbackReason {
        self.reason
    }
}

/// Puts the marker on a fallback response.
///
/// A generic response (a `u64`, a struct) has nowhere to carry it, so the
/// default is [`NoMark`]; the events, the `tracing` events and the
/// counters still report every fallback. HTTP responses take
/// [`HttpMarker`]. Any `Fn(&mut Res, &FallbackUsed)` is a marker too:
///
/// ```
/// use buttress_fallback::{FallbackLayer, FallbackUsed};
///
/// #[derive(Clone)]
/// struct Quote { price: u64, stale: bool }
///
/// let layer = FallbackLayer::value(Quote { price: 100, stale: false })
///     .mark(|q: &mut Quote, _: &FallbackUsed| q.stale = true)
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
pub trait Mark<Res> {
    /// Marks `res`, the fallback's response.
    fn mark(&self, res: &mut Res, used: &FallbackUsed);

    /// The HTTP status of a primary response that triggered the fallback,
    /// for [`UnhealthyResponse`](crate::error::UnhealthyResponse); `None`
    /// when the response type has none.
    fn status(&self, res: &Res) -> Option<StatusCode> {
        let _ = res;
        None
    }

    /// Whether a clone of this marker is a plain copy: no allocation, no
    /// reference count. An unobserved layer whose source, trigger and
    /// marker are plain copies gives each response future its own copies
    /// instead of a reference count on the layer. The default answers from
    /// the type: no drop glue and at most 32 bytes.
    #[inline]
    fn clone_is_plain(&self) -> bool
    where
        Self: Sized,
    {
        crate::layer::is_plain::<Self>()
    }
}

/// Leaves fallback responses as they are (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMark;

impl<Res> Mark<Res> for NoMark {
    #[inline]
    fn mark(&self, _res: &mut Res, _used: &FallbackUsed) {}
}

impl<Res, F> Mark<Res> for F
where
    F: Fn(&mut Res, &FallbackUsed),
{
    fn mark(&self, res: &mut Res, used: &FallbackUsed) {
        self(res, used)
    }
}

/// The header [`HttpMarker::with_header`] uses unless told otherwise.
pub const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-fallback");

/// Marks an `http::Response`: always the [`FallbackUsed`] extension, and a
/// header when asked for ([`with_header`](Self::with_header)), whose value
/// is `<reason>` or, for a named layer, `<name>; reason=<reason>`.
///
/// The header is off by default: it tells clients (and anyone watching
/// them) that the service is degraded and why, which a public API may not
/// want to say. The extension is for the server's own layers.
///
/// ```
/// use buttress_fallback::{HttpMarker, FALLBACK_HEADER};
///
/// let marker = HttpMarker::new().with_header(FALLBACK_HEADER);
/// # let _ = marker;
/// ```
#[derive(Debug, Clone, Default)]
pub struct HttpMarker {
    // Behind an `Arc`: a marker without a header is one null word, which
    // a quiet response future carries at no cost.
    header: Option<Arc<HeaderName>>,
}

impl HttpMarker {
    /// The extension only.
    pub fn new() -> Self {
        Self { header: None }
    }

    /// The extension and the header `name`
    /// ([`FALLBACK_HEADER`], `x-fallback`, is the usual one).
    pub fn with_header(mut self, name: HeaderName) -> Self {
        self.header = Some(Arc::new(name));
        self
    }

    /// The header it sets, if any.
    pub fn header(&self) -> Option<&HeaderName> {
        self.header.as_deref()
    }
}

impl<B> Mark<http::Response<B>> for HttpMarker {
    fn mark(&self, res: &mut http::Response<B>, used: &FallbackUsed) {
        if let Some(header) = &self.header {
            let text = if used.name.is_empty() || &*used.name == crate::layer::KIND {
                used.reason.as_str().to_owned()
            } else {
                format!("{}; reason={}", used.name, used.reason)
            };
            // A name that is not a valid header value (a control
            // character) leaves the name out rather than the header.
            let value = HeaderValue::try_from(text)
                .unwrap_or_else(|_| HeaderValue::from_static(used.reason.as_str()));
            res.headers_mut().insert(HeaderName::clone(header), value);
        }
        res.extensions_mut().insert(used.clone());
    }

    fn status(&self, res: &http::Response<B>) -> Option<StatusCode> {
        Some(res.status())
    }

    /// Without a header, a copy is plain; a header name may own shared
    /// bytes, so a marker with one is reached through the layer instead.
    #[inline]
    fn clone_is_plain(&self) -> bool {
        self.header.is_none()
    }
}
