//! HTTP: the stored response, the response body, the markers and the
//! `Cache-Control` rules.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_core::{BoxError, HttpClassifier};
use bytes::{Buf, Bytes};
use http::header::{AGE, CACHE_CONTROL, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::events::{NotStored, StaleReason};

/// How the cache answered a call: a response extension on every HTTP
/// response that passes the layer, and the argument of a generic
/// cache's [`mark`](crate::CacheBuilder::mark) hook.
///
/// ```
/// use buttress_cache::{CacheStatus, StaleReason};
/// use std::time::Duration;
///
/// let stale = CacheStatus::Stale { age: Duration::from_secs(90), reason: StaleReason::Error };
/// assert_eq!(stale.as_str(), "stale");
/// assert!(stale.is_stale());
/// assert_eq!(stale.age(), Some(Duration::from_secs(90)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheStatus {
    /// A fresh entry; `age` since it was stored.
    Hit {
        /// Time since the entry was stored.
        age: Duration,
    },
    /// This call called the inner service.
    Miss,
    /// This call waited for another call's result (single-flight).
    Coalesced,
    /// A stale entry (past its ttl, within `max_stale`).
    Stale {
        /// Time since the entry was stored.
        age: Duration,
        /// Why it was served.
        reason: StaleReason,
    },
    /// The request had no key (an unsafe method, credentials): not
    /// looked up, not stored.
    Bypass,
    /// A stale entry was revalidated: the inner service answered `304
    /// Not Modified` to the conditional request this call sent
    /// (`If-None-Match` with the stored `ETag`, else `If-Modified-Since`
    /// with its `Last-Modified`), and the stored response, its headers
    /// updated with the 304's, answers and is stored again.
    Revalidated,
}

impl CacheStatus {
    /// `hit`, `miss`, `coalesced`, `stale`, `bypass` or `revalidated`.
    ///
    /// ```
    /// use buttress_cache::CacheStatus;
    /// assert_eq!(CacheStatus::Revalidated.as_str(), "revalidated");
    /// assert_eq!(CacheStatus::Revalidated.age(), None);
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit { .. } => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Stale { .. } => "stale",
            CacheStatus::Bypass => "bypass",
            CacheStatus::Revalidated => "revalidated",
        }
    }

    /// The age of the entry served (hits and stale answers).
    pub fn age(self) -> Option<Duration> {
        match self {
            CacheStatus::Hit { age } | CacheStatus::Stale { age, .. } => Some(age),
            _ => None,
        }
    }

    /// `true` for [`CacheStatus::Stale`].
    pub fn is_stale(self) -> bool {
        matches!(self, CacheStatus::Stale { .. })
    }
}

/// A stored HTTP response: status, headers and the whole body. Cloning it
/// is a reference count.
///
/// ```
/// use buttress_cache::CachedResponse;
/// use http::{HeaderMap, StatusCode};
///
/// let r = CachedResponse::new(StatusCode::OK, HeaderMap::new(), "hello".into());
/// assert_eq!(r.status(), StatusCode::OK);
/// assert_eq!(&r.body()[..], b"hello");
/// ```
#[derive(Clone)]
pub struct CachedResponse(Arc<Stored>);

struct Stored {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl fmt::Debug for CachedResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedResponse")
            .field("status", &self.0.status)
            .field("headers", &self.0.headers.len())
            .field("body", &self.0.body.len())
            .finish()
    }
}

impl CachedResponse {
    /// A response to store (for [`CacheHandle::warm`](crate::CacheHandle::warm)).
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes) -> Self {
        Self::with_version(status, Version::HTTP_11, headers, body)
    }

    pub(crate) fn with_version(
        status: StatusCode,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
    ) -> Self {
        CachedResponse(Arc::new(Stored {
            status,
            version,
            headers,
            body,
        }))
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.0.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.0.body
    }

    /// The weight charged for it: body, headers and a fixed overhead.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .0
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 16)
            .sum();
        self.0.body.len() + headers + 64
    }

    /// A response from the stored parts, marked with `status` (and `Age`
    /// and `Warning` headers when asked).
    pub(crate) fn to_response<B>(
        &self,
        status: CacheStatus,
        markers: Markers,
    ) -> Response<CacheBody<B>> {
        let mut res = Response::new(CacheBody::full(self.0.body.clone()));
        *res.status_mut() = self.0.status;
        *res.version_mut() = self.0.version;
        *res.headers_mut() = self.0.headers.clone();
        markers.apply(&mut res, status);
        res
    }

    /// The answer to a `HEAD` request from a stored `GET` response: its
    /// status and headers (`Content-Length` included), no body.
    pub(crate) fn to_head_response<B>(
        &self,
        status: CacheStatus,
        markers: Markers,
    ) -> Response<CacheBody<B>> {
        let mut res = Response::new(CacheBody::full(Bytes::new()));
        *res.status_mut() = self.0.status;
        *res.version_mut() = self.0.version;
        *res.headers_mut() = self.0.headers.clone();
        markers.apply(&mut res, status);
        res
    }

    /// A `304 Not Modified` answering a conditional request that the
    /// stored response satisfies: its validators and caching headers, no
    /// body.
    pub(crate) fn to_not_modified<B>(
        &self,
        status: CacheStatus,
        markers: Markers,
    ) -> Response<CacheBody<B>> {
        let mut res = Response::new(CacheBody::full(Bytes::new()));
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        *res.version_mut() = self.0.version;
        *res.headers_mut() = crate::validate::not_modified_headers(&self.0.headers);
        markers.apply(&mut res, status);
        res
    }

    /// The stored response with its headers updated by those of a `304
    /// Not Modified`; the status and body stay.
    pub(crate) fn updated(&self, not_modified: &HeaderMap) -> CachedResponse {
        CachedResponse::with_version(
            self.0.status,
            self.0.version,
            crate::validate::updated_headers(&self.0.headers, not_modified),
            self.0.body.clone(),
        )
    }

    #[cfg(feature = "redis")]
    pub(crate) fn parts(&self) -> (StatusCode, &HeaderMap, &Bytes) {
        (self.0.status, &self.0.headers, &self.0.body)
    }
}

/// Which headers mark a response served from the cache.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Markers {
    pub(crate) age: bool,
    pub(crate) warning: bool,
}

impl Markers {
    pub(crate) fn apply<B>(self, res: &mut Response<B>, status: CacheStatus) {
        res.extensions_mut().insert(status);
        let age = status.age();
        if self.age {
            if let Some(age) = age {
                res.headers_mut()
                    .insert(AGE, HeaderValue::from(age.as_secs()));
            }
        }
        if self.warning {
            if let CacheStatus::Stale { reason, .. } = status {
                let text: &'static str = match reason {
                    StaleReason::Error => "111 - \"Revalidation Failed\"",
                    StaleReason::Revalidating => "110 - \"Response is Stale\"",
                };
                res.headers_mut()
                    .append(http::header::WARNING, HeaderValue::from_static(text));
            }
        }
    }
}

pin_project! {
    /// The body of a response that passed an HTTP cache: a stored body, or
    /// the inner body, streamed untouched (after the part already read,
    /// when it was too large to store).
    pub struct CacheBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyProj]
    enum BodyKind<B> {
        Full { data: Option<Bytes> },
        Streaming { pending: VecDeque<Frame<Bytes>>, #[pin] rest: B },
    }
}

impl<B> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BodyKind::Full { data } => f
                .debug_struct("CacheBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            BodyKind::Streaming { pending, .. } => f
                .debug_struct("CacheBody::Streaming")
                .field("pending", &pending.len())
                .finish_non_exhaustive(),
        }
    }
}

impl<B> CacheBody<B> {
    /// A whole body.
    pub fn full(data: Bytes) -> Self {
        CacheBody {
            kind: BodyKind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// The inner body, untouched.
    pub fn inner(body: B) -> Self {
        Self::streaming(VecDeque::new(), body)
    }

    pub(crate) fn streaming(pending: VecDeque<Frame<Bytes>>, rest: B) -> Self {
        CacheBody {
            kind: BodyKind::Streaming { pending, rest },
        }
    }

    /// `true` when the body is a stored (or fully read) one, `false` when
    /// it streams the inner body.
    pub fn is_full(&self) -> bool {
        matches!(self.kind, BodyKind::Full { .. })
    }
}

/// An empty body: what error-to-response layers build their answers with.
impl<B> Default for CacheBody<B> {
    fn default() -> Self {
        CacheBody::full(Bytes::new())
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            BodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyProj::Streaming { pending, rest } => {
                if let Some(frame) = pending.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                match rest.poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(to_bytes_frame(frame)))),
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Full { data } => data.is_none(),
            BodyKind::Streaming { pending, rest } => pending.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            BodyKind::Streaming { pending, rest } => {
                let extra: u64 = pending
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

fn to_bytes_frame<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    match frame.into_data() {
        Ok(mut d) => Frame::data(d.copy_to_bytes(d.remaining())),
        Err(frame) => match frame.into_trailers() {
            Ok(t) => Frame::trailers(t),
            // http-body 1 has data and trailers frames only.
            Err(_) => Frame::data(Bytes::new()),
        },
    }
}

/// What the headers of a response allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Store for this long (once the body is collected).
    Store(Duration),
    /// Collect and share with the waiters, but do not store.
    Share(NotStored),
    /// For its own caller only: stream it through.
    Own(NotStored),
}

/// The parsed `Cache-Control` directives that matter here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Directives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
}

pub(crate) fn directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives::default();
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else {
            // Unreadable: be safe.
            d.no_store = true;
            continue;
        };
        for part in value.split(',') {
            let part = part.trim();
            let (name, arg) = match part.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (part, None),
            };
            let seconds = || arg.and_then(|a| a.parse::<u64>().ok());
            if name.eq_ignore_ascii_case("no-store") {
                d.no_store = true;
            } else if name.eq_ignore_ascii_case("no-cache") {
                d.no_cache = true;
            } else if name.eq_ignore_ascii_case("private") {
                d.private = true;
            } else if name.eq_ignore_ascii_case("max-age") {
                // A malformed max-age makes the response stale at once
                // (RFC 9111 §4.2.1).
                d.max_age = Some(seconds().unwrap_or(0));
            } else if name.eq_ignore_ascii_case("s-maxage") {
                d.s_maxage = Some(seconds().unwrap_or(0));
            }
        }
    }
    d
}

/// Statuses a shared cache may store without explicit freshness (RFC
/// 9111 §4.2.2's heuristically cacheable statuses, less 206 Partial
/// Content, which needs range handling, and 501, a failure).
pub(crate) fn cacheable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414
    )
}

/// The rules of an HTTP cache.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) classifier: HttpClassifier,
    pub(crate) vary: Arc<[HeaderName]>,
    pub(crate) respect_max_age: bool,
    pub(crate) ttl: Duration,
}

impl Rules {
    pub(crate) fn verdict(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        self.verdict_at(status, headers, std::time::SystemTime::now())
    }

    /// The verdict on a response received at `now` (the wall clock, which
    /// `Expires` is read against when the response has no `Date`).
    pub(crate) fn verdict_at(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        now: std::time::SystemTime,
    ) -> Verdict {
        let d = directives(headers);
        if d.no_store || d.no_cache {
            return Verdict::Own(NotStored::NoStore);
        }
        if d.private {
            return Verdict::Own(NotStored::Private);
        }
        if headers.contains_key(SET_COOKIE) {
            return Verdict::Own(NotStored::SetCookie);
        }
        for value in headers.get_all(VARY) {
            let Ok(value) = value.to_str() else {
                return Verdict::Own(NotStored::Vary);
            };
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if name == "*"
                    || !self
                        .vary
                        .iter()
                        .any(|v| v.as_str().eq_ignore_ascii_case(name))
                {
                    return Verdict::Own(NotStored::Vary);
                }
            }
        }
        if self.classifier.classify_status(status).is_failure() {
            return Verdict::Share(NotStored::Failure);
        }
        if !cacheable_status(status) {
            return Verdict::Share(NotStored::Status);
        }
        let ttl = if self.respect_max_age {
            // s-maxage, else max-age, else Expires (RFC 9111 §4.2.1).
            match d.s_maxage.or(d.max_age) {
                Some(seconds) => Duration::from_secs(seconds),
                None => crate::validate::expires_lifetime(headers, now).unwrap_or(self.ttl),
            }
        } else {
            self.ttl
        };
        if ttl.is_zero() {
            return Verdict::Own(NotStored::ZeroTtl);
        }
        Verdict::Store(ttl)
    }
}

/// The body read up to a limit.
pub(crate) enum Collected<B> {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// Too large, or with trailers: what was read, and the rest.
    Partial(VecDeque<Frame<Bytes>>, B, NotStored),
}

/// Reads `body` until its end or until more than `limit` bytes were read.
pub(crate) async fn collect<B>(mut body: B, limit: usize) -> Result<Collected<B>, BoxError>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;

    if body.size_hint().lower() > limit as u64 {
        return Ok(Collected::Partial(
            VecDeque::new(),
            body,
            NotStored::TooLarge,
        ));
    }
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut len = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(frame)) => {
                let frame = to_bytes_frame(frame);
                match frame.data_ref() {
                    Some(d) => {
                        len = len.saturating_add(d.len());
                        frames.push_back(frame);
                        if len > limit {
                            return Ok(Collected::Partial(frames, body, NotStored::TooLarge));
                        }
                    }
                    None => {
                        frames.push_back(frame);
                        return Ok(Collected::Partial(frames, body, NotStored::Trailers));
                    }
                }
            }
        }
    }
    let mut out = bytes::BytesMut::with_capacity(len);
    if frames.len() == 1 {
        if let Some(Ok(d)) = frames.pop_front().map(Frame::into_data) {
            return Ok(Collected::Whole(d));
        }
    }
    for f in frames {
        if let Ok(d) = f.into_data() {
            out.extend_from_slice(&d);
        }
    }
    Ok(Collected::Whole(out.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            classifier: HttpClassifier::new(),
            vary: Arc::from([HeaderName::from_static("accept")]),
            respect_max_age: true,
            ttl: Duration::from_secs(60),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cache_control_decides() {
        let r = rules();
        let ok = StatusCode::OK;
        assert_eq!(
            r.verdict(ok, &headers(&[])),
            Verdict::Store(Duration::from_secs(60))
        );
        assert_eq!(
            r.verdict(ok, &headers(&[("cache-control", "public, max-age=5")])),
            Verdict::Store(Duration::from_secs(5))
        );
        assert_eq!(
            r.verdict(ok, &headers(&[("cache-control", "max-age=5, s-maxage=9")])),
            Verdict::Store(Duration::from_secs(9))
        );
        assert_eq!(
            r.verdict(ok, &headers(&[("cache-control", "No-Store")])),
            Verdict::Own(NotStored::NoStore)
        );
        assert_eq!(
            r.verdict(ok, &headers(&[("cache-control", "private=\"x\"")])),
            Verdict::Own(NotStored::Private)
        );
        assert_eq!(
            r.verdict(ok, &headers(&[("cache-control", "max-age=0")])),
            Verdict::Own(NotStored::ZeroTtl)
        );
        assert_eq!(
            r.verdict(ok, &headers(&[("cache-control", "max-age=soon")])),
            Verdict::Own(NotStored::ZeroTtl)
        );
        assert_eq!(
            r.verdict(ok, &headers(&[("vary", "Accept")])),
            Verdict::Store(Duration::from_secs(60))
        );
        assert_eq!(
            r.verdict(ok, &headers(&[("vary", "accept, cookie")])),
            Verdict::Own(NotStored::Vary)
        );
        assert_eq!(
            r.verdict(ok, &headers(&[("vary", "*")])),
            Verdict::Own(NotStored::Vary)
        );
        assert_eq!(
            r.verdict(ok, &headers(&[("set-cookie", "a=b")])),
            Verdict::Own(NotStored::SetCookie)
        );
        assert_eq!(
            r.verdict(StatusCode::BAD_GATEWAY, &headers(&[])),
            Verdict::Share(NotStored::Failure)
        );
        assert_eq!(
            r.verdict(StatusCode::CREATED, &headers(&[])),
            Verdict::Share(NotStored::Status)
        );
    }

    #[test]
    fn expires_sets_the_ttl_without_max_age_and_invalid_is_expired() {
        let r = rules();
        let ok = StatusCode::OK;
        let now = std::time::SystemTime::UNIX_EPOCH;
        let dated = |expires: &'static str| {
            headers(&[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("expires", expires),
            ])
        };
        assert_eq!(
            r.verdict_at(ok, &dated("Sun, 06 Nov 1994 08:51:37 GMT"), now),
            Verdict::Store(Duration::from_secs(120))
        );
        assert_eq!(
            r.verdict_at(ok, &dated("0"), now),
            Verdict::Own(NotStored::ZeroTtl)
        );
        assert_eq!(
            r.verdict_at(ok, &dated("Sun, 06 Nov 1994 08:00:00 GMT"), now),
            Verdict::Own(NotStored::ZeroTtl)
        );
        // max-age wins over Expires, even an invalid one.
        let mut h = dated("0");
        h.insert("cache-control", HeaderValue::from_static("max-age=5"));
        assert_eq!(
            r.verdict_at(ok, &h, now),
            Verdict::Store(Duration::from_secs(5))
        );
        // Not read when max-age is not respected.
        let r = Rules {
            respect_max_age: false,
            ..rules()
        };
        assert_eq!(
            r.verdict_at(ok, &dated("0"), now),
            Verdict::Store(Duration::from_secs(60))
        );
    }
}
