//! Key extractors: which bucket a request belongs to, for keyed rate
//! limiters, breakers and bulkheads.
//!
//! An extractor returns `None` when the request has no key. The keyed
//! bulkhead and the keyed breaker then reject the request with
//! [`KeyMissing`](crate::error::KeyMissing) by default (or, opted in,
//! share one explicit bucket), count it, and log a warning the first time.
//!
//! [`PeerAddr`] and [`ClientIp`] need the peer address in the request.
//! With axum, serve with
//! `axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())`
//! and enable the `axum` feature (of buttress or buttress-core): plain
//! `axum::serve(listener, app)`, or the feature off, gives no request a key.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, FORWARDED};
use http::{HeaderMap, Request};

mod bounded_map;
mod missing;

pub use bounded_map::BoundedMap;
pub use missing::{MissingKey, MissingKeys};

/// Extracts a key from a request.
pub trait KeyExtractor<Req>: Send + Sync + 'static {
    /// The key type.
    type Key: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static;

    /// The key of `req`, if it has one.
    fn extract(&self, req: &Req) -> Option<Self::Key>;
}

/// A closure as a key extractor.
///
/// ```
/// use buttress_core::key::{FnKey, KeyExtractor};
///
/// let by_len = FnKey::new(|s: &String| Some(s.len()));
/// assert_eq!(by_len.extract(&"abc".to_string()), Some(3));
/// ```
pub struct FnKey<F, Req> {
    f: F,
    _req: PhantomData<fn(&Req)>,
}

impl<F: Clone, Req> Clone for FnKey<F, Req> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _req: PhantomData,
        }
    }
}

impl<F, Req> fmt::Debug for FnKey<F, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnKey").finish_non_exhaustive()
    }
}

impl<F, Req> FnKey<F, Req> {
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        Self {
            f,
            _req: PhantomData,
        }
    }
}

impl<F, Req, K> KeyExtractor<Req> for FnKey<F, Req>
where
    F: Fn(&Req) -> Option<K> + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
    Req: 'static,
{
    type Key = K;

    fn extract(&self, req: &Req) -> Option<K> {
        (self.f)(req)
    }
}

/// The peer's socket address, from the request extensions.
///
/// Reads a `SocketAddr` extension (put there by your accept loop) or, with
/// the `axum` feature, axum's `ConnectInfo<SocketAddr>`, which axum sets
/// only for an app served with
/// `into_make_service_with_connect_info::<SocketAddr>()`. Without either,
/// no request has a key.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerAddr;

/// The peer address of a request, as [`PeerAddr`] finds it.
pub fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    if let Some(addr) = ext.get::<SocketAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    if let Some(info) = ext.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0);
    }
    None
}

impl<B> KeyExtractor<Request<B>> for PeerAddr {
    type Key = IpAddr;

    fn extract(&self, req: &Request<B>) -> Option<IpAddr> {
        peer_addr(req).map(|a| a.ip())
    }
}

/// Which forwarding header [`ClientIp`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// The client IP behind `trusted_proxies` reverse proxies.
///
/// The hops are the addresses listed in the forwarding header, in order,
/// followed by the peer address. Each trusted proxy appends the address it
/// received the request from, so the client is the hop `trusted_proxies`
/// places from the right, where the peer is place 0: the right-most address
/// that no trusted proxy stands for. The left-most entry is never used
/// blindly: any client can write it.
///
/// With `trusted_proxies = 0` the header is ignored and the peer address is
/// the key. The peer address comes from the request as [`PeerAddr`] finds
/// it: behind axum, serve with
/// `into_make_service_with_connect_info::<SocketAddr>()` and enable the
/// `axum` feature, or no request has a key. A header that does not parse, or that lists fewer hops than there
/// are trusted proxies, falls back to the peer address (the request did not
/// come through the proxy chain you described) and emits a `tracing` debug
/// event; it never panics.
///
/// ```
/// use buttress_core::key::{ClientIp, KeyExtractor};
/// use std::net::SocketAddr;
///
/// let ip = ClientIp::new(1);
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert("10.0.0.2:443".parse::<SocketAddr>().unwrap());
/// req.headers_mut().insert("x-forwarded-for", "6.6.6.6, 203.0.113.9".parse().unwrap());
/// // The load balancer (the peer, trusted) saw 203.0.113.9; 6.6.6.6 is forgeable.
/// assert_eq!(ip.extract(&req), Some("203.0.113.9".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ClientIp {
    trusted_proxies: usize,
    header: ForwardedHeader,
}

impl ClientIp {
    /// Reads `X-Forwarded-For` behind `trusted_proxies` proxies.
    pub fn new(trusted_proxies: usize) -> Self {
        Self {
            trusted_proxies,
            header: ForwardedHeader::XForwardedFor,
        }
    }

    /// Reads the given header instead.
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The client IP for a peer address and request headers.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        if self.trusted_proxies == 0 {
            return peer;
        }
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => parse_x_forwarded_for(headers),
            ForwardedHeader::Forwarded => parse_forwarded(headers),
        };
        let Some(mut hops) = hops else {
            tracing::debug!("malformed forwarding header; using the peer address");
            return peer;
        };
        let Some(peer) = peer else {
            // Without the peer we cannot anchor the chain: no key.
            return None;
        };
        hops.push(peer);
        if hops.len() <= self.trusted_proxies {
            tracing::debug!(
                hops = hops.len(),
                trusted = self.trusted_proxies,
                "fewer forwarding hops than trusted proxies; using the peer address"
            );
            return Some(peer);
        }
        Some(hops[hops.len() - 1 - self.trusted_proxies])
    }
}

impl<B> KeyExtractor<Request<B>> for ClientIp {
    type Key = IpAddr;

    fn extract(&self, req: &Request<B>) -> Option<IpAddr> {
        self.client_ip(peer_addr(req).map(|a| a.ip()), req.headers())
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Every address of every `X-Forwarded-For` header, in order; `None` if any
/// entry is not an IP address (with an optional port).
fn parse_x_forwarded_for(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        let value = value.to_str().ok()?;
        for entry in value.split(',') {
            hops.push(parse_node(entry.trim())?);
        }
    }
    Some(hops)
}

/// Every `for=` node of every `Forwarded` header, in order; `None` if a node
/// is obfuscated, unknown or malformed.
fn parse_forwarded(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(FORWARDED) {
        let value = value.to_str().ok()?;
        for element in value.split(',') {
            let mut found = None;
            for pair in element.split(';') {
                let (key, val) = pair.trim().split_once('=')?;
                if key.trim().eq_ignore_ascii_case("for") {
                    let val = val.trim();
                    let val = val
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(val);
                    found = Some(parse_node(val)?);
                }
            }
            // An element without `for=` says nothing about the hop.
            hops.push(found?);
        }
    }
    Some(hops)
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = s.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The value of a request header, as bytes.
///
/// ```
/// use buttress_core::key::{Header, KeyExtractor};
///
/// let by_tenant = Header::new(http::HeaderName::from_static("x-tenant"));
/// let req = http::Request::builder().header("x-tenant", "acme").body(()).unwrap();
/// assert_eq!(by_tenant.extract(&req).as_deref(), Some(&b"acme"[..]));
/// ```
#[derive(Debug, Clone)]
pub struct Header {
    name: HeaderName,
}

impl Header {
    /// Keys by the header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self { name }
    }
}

impl<B> KeyExtractor<Request<B>> for Header {
    type Key = Vec<u8>;

    fn extract(&self, req: &Request<B>) -> Option<Vec<u8>> {
        req.headers().get(&self.name).map(|v| v.as_bytes().to_vec())
    }
}

/// A request extension of type `T` (for example an authenticated user id
/// inserted by an auth layer).
///
/// ```
/// use buttress_core::key::{Extension, KeyExtractor};
///
/// #[derive(Clone, Debug, PartialEq, Eq, Hash)]
/// struct UserId(u64);
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(UserId(7));
/// assert_eq!(Extension::<UserId>::new().extract(&req), Some(UserId(7)));
/// ```
pub struct Extension<T> {
    _t: PhantomData<fn() -> T>,
}

impl<T> Extension<T> {
    /// Keys by the extension `T`.
    pub fn new() -> Self {
        Self { _t: PhantomData }
    }
}

impl<T> Default for Extension<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Extension<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for Extension<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extension")
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<B, T> KeyExtractor<Request<B>> for Extension<T>
where
    T: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
{
    type Key = T;

    fn extract(&self, req: &Request<B>) -> Option<T> {
        req.extensions().get::<T>().cloned()
    }
}

/// The authority of the request URI (`host:port`), or the `Host` header when
/// the URI has none: one key per upstream, for client-side layers.
///
/// ```
/// use buttress_core::key::{KeyExtractor, UriAuthority};
///
/// let req = http::Request::get("http://api.example.com:8080/x").body(()).unwrap();
/// assert_eq!(UriAuthority.extract(&req).as_deref(), Some("api.example.com:8080"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct UriAuthority;

impl<B> KeyExtractor<Request<B>> for UriAuthority {
    type Key = String;

    fn extract(&self, req: &Request<B>) -> Option<String> {
        if let Some(a) = req.uri().authority() {
            return Some(a.as_str().to_ascii_lowercase());
        }
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase)
    }
}

/// The gRPC method, that is the request path (`/package.Service/Method`).
///
/// ```
/// use buttress_core::key::{GrpcMethod, KeyExtractor};
///
/// let req = http::Request::post("/echo.Echo/Say").body(()).unwrap();
/// assert_eq!(GrpcMethod.extract(&req).as_deref(), Some("/echo.Echo/Say"));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMethod;

impl<B> KeyExtractor<Request<B>> for GrpcMethod {
    type Key = String;

    fn extract(&self, req: &Request<B>) -> Option<String> {
        Some(req.uri().path().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut r = b.body(()).unwrap();
        r.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        r
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn client_ip_takes_right_most_untrusted_hop_not_left_most() {
        let r = req(
            "10.0.0.1:1000",
            &[("x-forwarded-for", "1.1.1.1, 2.2.2.2, 10.0.0.9")],
        );
        assert_eq!(ClientIp::new(0).extract(&r), ip("10.0.0.1"));
        assert_eq!(ClientIp::new(1).extract(&r), ip("10.0.0.9"));
        assert_eq!(ClientIp::new(2).extract(&r), ip("2.2.2.2"));
        assert_eq!(ClientIp::new(3).extract(&r), ip("1.1.1.1"));
    }

    #[test]
    fn client_ip_reads_multiple_header_lines_in_order() {
        let r = req(
            "10.0.0.1:1000",
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2:55, [2001:db8::1]:8080"),
            ],
        );
        assert_eq!(ClientIp::new(1).extract(&r), ip("2001:db8::1"));
        assert_eq!(ClientIp::new(2).extract(&r), ip("2.2.2.2"));
    }

    #[test]
    fn client_ip_falls_back_to_peer_on_malformed_or_short_chain() {
        let peer = ip("10.0.0.1");
        for bad in ["not-an-ip", "1.1.1.1,,2.2.2.2", "", "1.1.1.1, 999.0.0.1"] {
            let r = req("10.0.0.1:1", &[("x-forwarded-for", bad)]);
            assert_eq!(ClientIp::new(1).extract(&r), peer, "header {bad:?}");
        }
        let mut r = req("10.0.0.1:1", &[]);
        r.headers_mut().insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(ClientIp::new(1).extract(&r), peer);
        // Only one hop plus the peer, three proxies trusted.
        let r = req("10.0.0.1:1", &[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(ClientIp::new(3).extract(&r), peer);
        // No header at all: the peer is the client.
        let r = req("10.0.0.1:1", &[]);
        assert_eq!(ClientIp::new(1).extract(&r), peer);
    }

    #[test]
    fn client_ip_parses_rfc7239_forwarded() {
        let r = req(
            "10.0.0.1:1",
            &[(
                "forwarded",
                "for=192.0.2.60;proto=http;by=203.0.113.43, for=\"[2001:db8:cafe::17]:4711\"",
            )],
        );
        let c = ClientIp::new(1).header(ForwardedHeader::Forwarded);
        assert_eq!(c.extract(&r), ip("2001:db8:cafe::17"));
        let c = ClientIp::new(2).header(ForwardedHeader::Forwarded);
        assert_eq!(c.extract(&r), ip("192.0.2.60"));
        let r = req("10.0.0.1:1", &[("forwarded", "for=unknown")]);
        assert_eq!(c.extract(&r), ip("10.0.0.1"));
        let r = req("10.0.0.1:1", &[("forwarded", "for=_hidden, for=1.2.3.4")]);
        assert_eq!(c.extract(&r), ip("10.0.0.1"));
        let r = req("10.0.0.1:1", &[("forwarded", "proto=https")]);
        assert_eq!(c.extract(&r), ip("10.0.0.1"));
    }

    #[test]
    fn header_extension_authority_extractors() {
        let r = req("10.0.0.1:1", &[("host", "Example.COM")]);
        assert_eq!(UriAuthority.extract(&r).as_deref(), Some("example.com"));
        assert_eq!(
            Header::new(HeaderName::from_static("x-api-key")).extract(&r),
            None
        );
        assert_eq!(PeerAddr.extract(&r), ip("10.0.0.1"));
        let bare = Request::new(());
        assert_eq!(PeerAddr.extract(&bare), None);
        assert_eq!(ClientIp::new(1).extract(&bare), None);
    }
}
