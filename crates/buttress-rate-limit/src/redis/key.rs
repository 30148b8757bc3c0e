//! Keys as Redis key bytes.

use std::fmt::Display;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A request key that can be written into a Redis key.
///
/// The Redis key of a keyed limit is the layer's prefix, `k:`, then these
/// bytes. Implemented for the keys of the extractors in
/// [`buttress_core::key`] (`IpAddr` of `ClientIp` and `PeerAddr`, `Vec<u8>`
/// of `Header`, `String` of `UriAuthority` and `GrpcMethod`), for strings,
/// integers, socket addresses and [`http::HeaderValue`]; implement it for
/// the key type of an `Extension` or a closure extractor. Two different keys
/// must write different bytes, or they share one limit.
///
/// ```
/// use buttress_rate_limit::redis::RedisKey;
/// use std::net::{IpAddr, Ipv4Addr};
///
/// let mut out = Vec::new();
/// IpAddr::V4(Ipv4Addr::LOCALHOST).write_redis_key(&mut out);
/// assert_eq!(out, b"127.0.0.1");
///
/// #[derive(Clone, PartialEq, Eq, Hash, Debug)]
/// struct Tenant(u32);
/// impl RedisKey for Tenant {
///     fn write_redis_key(&self, out: &mut Vec<u8>) {
///         self.0.write_redis_key(out)
///     }
/// }
/// let mut out = Vec::new();
/// Tenant(7).write_redis_key(&mut out);
/// assert_eq!(out, b"7");
/// ```
pub trait RedisKey {
    /// Appends the key's bytes to `out`.
    fn write_redis_key(&self, out: &mut Vec<u8>);
}

impl<T: RedisKey + ?Sized> RedisKey for &T {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        (**self).write_redis_key(out)
    }
}

impl<T: RedisKey + ?Sized> RedisKey for Box<T> {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        (**self).write_redis_key(out)
    }
}

impl<T: RedisKey + ?Sized> RedisKey for Arc<T> {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        (**self).write_redis_key(out)
    }
}

impl RedisKey for str {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes())
    }
}

impl RedisKey for String {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes())
    }
}

impl RedisKey for [u8] {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self)
    }
}

impl RedisKey for Vec<u8> {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self)
    }
}

impl RedisKey for http::HeaderValue {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes())
    }
}

/// The key of a global limit: no bytes (the layer names its one key).
impl RedisKey for () {
    fn write_redis_key(&self, _: &mut Vec<u8>) {}
}

fn display(out: &mut Vec<u8>, v: impl Display) {
    // Writing into a `Vec` cannot fail.
    let _ = write!(out, "{v}");
}

macro_rules! by_display {
    ($($t:ty),*) => {$(
        impl RedisKey for $t {
            fn write_redis_key(&self, out: &mut Vec<u8>) {
                display(out, self)
            }
        }
    )*};
}

by_display!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);
by_display!(IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, http::uri::Authority);

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(k: impl RedisKey) -> Vec<u8> {
        let mut out = Vec::new();
        k.write_redis_key(&mut out);
        out
    }

    #[test]
    fn keys_write_their_text() {
        assert_eq!(bytes("alice"), b"alice");
        assert_eq!(bytes(String::from("bob")), b"bob");
        assert_eq!(bytes(42u64), b"42");
        assert_eq!(bytes(-3i64), b"-3");
        assert_eq!(bytes(IpAddr::V6(Ipv6Addr::LOCALHOST)), b"::1");
        assert_eq!(bytes(vec![1u8, 2]), [1, 2]);
        assert_eq!(bytes(http::HeaderValue::from_static("k1")), b"k1");
        assert_eq!(bytes(()), b"");
    }
}
