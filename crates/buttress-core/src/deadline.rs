//! Per-request time limits carried in request extensions, and the strict
//! `grpc-timeout` parser.
//!
//! An outer timeout layer inserts a [`Deadline`] into the request, so that
//! inner layers (a retry that should not start an attempt it cannot finish,
//! a nested timeout) see the time the caller has left. A caller may insert a
//! [`TimeoutOverride`] to give one request a different timeout.

use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

/// The instant by which the caller needs the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The time left from `now`, zero once passed.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.0.saturating_duration_since(now)
    }

    /// The earlier of two optional deadlines.
    pub fn earliest(a: Option<Deadline>, b: Option<Deadline>) -> Option<Deadline> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, None) => a,
            (None, b) => b,
        }
    }
}

/// A timeout for this one request, replacing the layer's configured one.
///
/// ```
/// use buttress_core::deadline::TimeoutOverride;
/// use std::time::Duration;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(TimeoutOverride(Duration::from_millis(50)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeoutOverride(pub Duration);

/// The `grpc-timeout` header name.
pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and one unit of
/// `H`, `M`, `S`, `m`, `u`, `n` (the gRPC over HTTP/2 spec). Anything else
/// is `None`.
///
/// ```
/// use buttress_core::deadline::parse_grpc_timeout;
/// use http::HeaderValue;
/// use std::time::Duration;
///
/// assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("250m")), Some(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("1H")), Some(Duration::from_secs(3600)));
/// assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("123456789S")), None);
/// assert_eq!(parse_grpc_timeout(&HeaderValue::from_static("-1S")), None);
/// ```
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_is_parsed_strictly() {
        let p = |s: &str| parse_grpc_timeout(&HeaderValue::from_str(s).unwrap());
        assert_eq!(p("1S"), Some(Duration::from_secs(1)));
        assert_eq!(p("2M"), Some(Duration::from_secs(120)));
        assert_eq!(p("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(p("10u"), Some(Duration::from_micros(10)));
        for bad in [
            "",
            "S",
            "1",
            "1s",
            "1 S",
            " 1S",
            "1.5S",
            "+1S",
            "1SS",
            "١S",
            "999999999m",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn earliest_deadline() {
        let now = Instant::now();
        let a = Deadline(now);
        let b = Deadline(now + Duration::from_secs(1));
        assert_eq!(Deadline::earliest(Some(a), Some(b)), Some(a));
        assert_eq!(Deadline::earliest(None, Some(b)), Some(b));
        assert_eq!(Deadline::earliest(None, None), None);
        assert_eq!(b.remaining(now), Duration::from_secs(1));
        assert_eq!(a.remaining(now + Duration::from_secs(5)), Duration::ZERO);
    }
}
