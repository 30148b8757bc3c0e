//! Cache keys: the [`CacheKey`] trait and the HTTP key ([`HttpKey`]).

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderName, Method, Uri};

/// What a cache key must be: hashable, comparable, cheap enough to clone,
/// and readable as text.
///
/// The text is what [`CacheHandle::invalidate_prefix`](crate::CacheHandle::invalidate_prefix)
/// matches and what a Redis store's keys end with. It is implemented for
/// strings and integers; implement it for a key type of your own:
///
/// ```
/// use buttress_cache::CacheKey;
/// use std::borrow::Cow;
///
/// #[derive(Debug, Clone, PartialEq, Eq, Hash)]
/// struct UserId(u64);
///
/// impl CacheKey for UserId {
///     fn text(&self) -> Cow<'_, str> {
///         Cow::Owned(format!("user/{}", self.0))
///     }
/// }
/// assert_eq!(UserId(7).text(), "user/7");
/// ```
pub trait CacheKey: Hash + Eq + Clone + fmt::Debug + Send + Sync + 'static {
    /// The key as text.
    fn text(&self) -> Cow<'_, str>;
}

impl CacheKey for String {
    fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl CacheKey for Arc<str> {
    fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl CacheKey for Box<str> {
    fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

impl CacheKey for &'static str {
    fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self)
    }
}

macro_rules! int_keys {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn text(&self) -> Cow<'_, str> {
                Cow::Owned(self.to_string())
            }
        }
    )*};
}
int_keys!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

/// The key of an HTTP response: the method and the URI (path and query,
/// and the authority when the request has one), then the value of each
/// header named by [`HttpCacheBuilder::vary`](crate::HttpCacheBuilder::vary), and,
/// only with [`Credentials::InKey`], a digest of the credentials.
///
/// Its text is `"GET /path?query"` followed by `"\nname: value"` per
/// varying header (an absent header has an empty value), so
/// `invalidate_prefix("GET /users/")` drops every user page whatever its
/// `Accept`.
///
/// ```
/// use buttress_cache::{CacheKey, HttpKey};
///
/// let key = HttpKey::new(&http::Method::GET, &"/users/7?full=1".parse().unwrap());
/// assert_eq!(key.text(), "GET /users/7?full=1");
/// let key = key.with_header("accept", "application/json");
/// assert_eq!(key.text(), "GET /users/7?full=1\naccept: application/json");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HttpKey(Arc<str>);

impl HttpKey {
    /// The key of `method` and `uri`, with no varying header.
    pub fn new(method: &Method, uri: &Uri) -> Self {
        let mut s = String::with_capacity(method.as_str().len() + 1 + uri_len(uri));
        push_target(&mut s, method, uri);
        HttpKey(s.into())
    }

    /// The same key with one more varying header (`name` lower-cased);
    /// for [`warm`](crate::CacheHandle::warm) and
    /// [`invalidate`](crate::CacheHandle::invalidate), the same order as
    /// the builder's [`vary`](crate::HttpCacheBuilder::vary) list.
    pub fn with_header(self, name: &str, value: &str) -> Self {
        let mut s = String::from(&*self.0);
        push_header(&mut s, &name.to_ascii_lowercase(), value.as_bytes());
        HttpKey(s.into())
    }

    /// The method and target part of the text (before any header).
    pub fn target(&self) -> &str {
        self.0.split('\n').next().unwrap_or("")
    }

    pub(crate) fn from_string(s: String) -> Self {
        HttpKey(s.into())
    }
}

impl fmt::Debug for HttpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for HttpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl CacheKey for HttpKey {
    fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.0)
    }
}

fn uri_len(uri: &Uri) -> usize {
    uri.authority().map_or(0, |a| a.as_str().len() + 2)
        + uri.path_and_query().map_or(1, |p| p.as_str().len())
}

fn push_target(s: &mut String, method: &Method, uri: &Uri) {
    s.push_str(method.as_str());
    s.push(' ');
    if let Some(a) = uri.authority() {
        s.push_str("//");
        s.push_str(a.as_str());
    }
    match uri.path_and_query() {
        Some(p) => s.push_str(p.as_str()),
        None => s.push('/'),
    }
}

fn push_header(s: &mut String, name: &str, value: &[u8]) {
    s.push('\n');
    s.push_str(name);
    s.push_str(": ");
    // Header values are visible ASCII in practice; anything else is kept
    // distinct by escaping it rather than dropped.
    for &b in value {
        if b.is_ascii_graphic() || b == b' ' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
}

/// What an HTTP cache does with a request that carries credentials
/// (`Authorization` or `Cookie`).
///
/// A response to such a request may be meant for that user only. The key
/// never holds the credentials themselves (they would end up in Redis
/// keys and in logs).
///
/// ```
/// use buttress_cache::Credentials;
/// assert_eq!(Credentials::default(), Credentials::Bypass);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Credentials {
    /// The request passes through: not served from the cache, its response
    /// not stored (the default, and what RFC 9111 asks of a shared cache
    /// for `Authorization` unless the response says `public`).
    #[default]
    Bypass,
    /// One entry per user: a 128-bit digest of the `Authorization` and
    /// `Cookie` values is part of the key. The digest is SipHash with fixed
    /// keys: stable across the replicas of one build, not a secret.
    InKey,
    /// The credentials are ignored: every user shares the entry. Only for
    /// responses that do not depend on who asks.
    Ignore,
}

impl Credentials {
    /// The name used in configuration (`bypass`, `in_key`, `ignore`).
    pub fn as_str(self) -> &'static str {
        match self {
            Credentials::Bypass => "bypass",
            Credentials::InKey => "in_key",
            Credentials::Ignore => "ignore",
        }
    }
}

/// Builds the key of a request, or `None` when it must pass through.
#[derive(Debug, Clone)]
pub(crate) struct HttpKeyer {
    pub(crate) vary: Arc<[HeaderName]>,
    pub(crate) credentials: Credentials,
}

impl HttpKeyer {
    pub(crate) fn key<B>(&self, req: &http::Request<B>) -> Option<HttpKey> {
        self.key_as(req, req.method())
    }

    /// The key `req` would have with `method` (a `HEAD` request looks up
    /// the `GET` response), or `None` when it must pass through.
    pub(crate) fn key_as<B>(&self, req: &http::Request<B>, method: &Method) -> Option<HttpKey> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return None;
        }
        let headers = req.headers();
        let has_credentials = headers.contains_key(AUTHORIZATION) || headers.contains_key(COOKIE);
        if has_credentials && self.credentials == Credentials::Bypass {
            return None;
        }
        let mut s = String::with_capacity(method.as_str().len() + 1 + uri_len(req.uri()));
        push_target(&mut s, method, req.uri());
        for name in self.vary.iter() {
            let mut value = Vec::new();
            for (i, v) in headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    value.extend_from_slice(b", ");
                }
                value.extend_from_slice(v.as_bytes());
            }
            push_header(&mut s, name.as_str(), &value);
        }
        if has_credentials && self.credentials == Credentials::InKey {
            let digest = credentials_digest(headers);
            s.push_str(&format!("\n~credentials: {digest:032x}"));
        }
        Some(HttpKey::from_string(s))
    }
}

fn credentials_digest(headers: &http::HeaderMap) -> u128 {
    // Two SipHash-1-3 runs with different fixed keys: 128 bits, the same
    // in every replica of one build.
    let mut out = 0u128;
    for seed in [0x6275_7474_7265_7373u64, 0x6361_6368_652d_6b65] {
        let mut h = FixedState(seed).build_hasher();
        for name in [AUTHORIZATION, COOKIE] {
            for v in headers.get_all(&name) {
                name.as_str().hash(&mut h);
                v.as_bytes().hash(&mut h);
            }
        }
        out = (out << 64) | u128::from(h.finish());
    }
    out
}

#[derive(Clone, Copy)]
struct FixedState(u64);

impl BuildHasher for FixedState {
    type Hasher = std::hash::DefaultHasher;

    fn build_hasher(&self) -> Self::Hasher {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(self.0);
        h
    }
}

/// A fast, non-keyed hash for the front table's slot index. Collisions
/// there only cost a lookup in moka (the table has a fixed size), so a
/// key chosen to collide gains an attacker nothing.
#[derive(Default)]
pub(crate) struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub(crate) fn slot_hash<K: Hash>(key: &K) -> u64 {
    let mut h = SlotHasher::default();
    key.hash(&mut h);
    // Mix the high bits down: the slot index takes the low ones.
    let x = h.finish();
    x ^ (x >> 29) ^ (x >> 47)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyer(credentials: Credentials, vary: &[&'static str]) -> HttpKeyer {
        HttpKeyer {
            vary: vary.iter().map(|n| HeaderName::from_static(n)).collect(),
            credentials,
        }
    }

    #[test]
    fn the_key_is_method_uri_and_varying_headers_never_credentials() {
        let req = http::Request::get("/a?b=1")
            .header("accept", "text/html")
            .header("x-other", "ignored")
            .body(())
            .unwrap();
        let k = keyer(Credentials::Bypass, &["accept"]).key(&req).unwrap();
        assert_eq!(k.text(), "GET /a?b=1\naccept: text/html");
        let with_auth = http::Request::get("/a")
            .header("authorization", "Bearer s3cret")
            .body(())
            .unwrap();
        assert!(keyer(Credentials::Bypass, &[]).key(&with_auth).is_none());
        let k = keyer(Credentials::Ignore, &[]).key(&with_auth).unwrap();
        assert_eq!(k.text(), "GET /a");
        let k = keyer(Credentials::InKey, &[]).key(&with_auth).unwrap();
        assert!(k.text().starts_with("GET /a\n~credentials: "));
        assert!(!k.text().contains("s3cret"));
        let other = http::Request::get("/a")
            .header("authorization", "Bearer other")
            .body(())
            .unwrap();
        assert_ne!(keyer(Credentials::InKey, &[]).key(&other).unwrap(), k);
    }

    #[test]
    fn unsafe_methods_have_no_key() {
        let req = http::Request::post("/a").body(()).unwrap();
        assert!(keyer(Credentials::Ignore, &[]).key(&req).is_none());
    }
}
