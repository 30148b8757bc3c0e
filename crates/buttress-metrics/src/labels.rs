//! The fixed label values, as `&'static str` so that building a series'
//! labels copies no string, and the small codes a series is keyed by.

use buttress_core::{ErrorKind, Outcome};
use http::Method;

/// `http.request.method` values; the last one is every other method
/// (OpenTelemetry's `_OTHER`), so a client cannot add series by sending
/// made-up methods.
pub(crate) const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "_OTHER",
];

/// The index of `method` in [`METHODS`].
pub(crate) fn method_code(method: &Method) -> u8 {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

/// `http.response.status_class` values, indexed by `status / 100 - 1`.
pub(crate) const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// No status: the call ended with an error before a response.
pub(crate) const NO_STATUS: u8 = u8::MAX;

/// The code of an HTTP status' class.
pub(crate) fn status_class_code(status: http::StatusCode) -> u8 {
    // `StatusCode` is always within 100..=999; 6xx..9xx are folded into 5xx.
    (status.as_u16() / 100).clamp(1, 5) as u8 - 1
}

/// `rpc.grpc.status_code` values, the numeric codes as gRPC sends them,
/// then `_OTHER` for a status that is missing or not a known code.
pub(crate) const GRPC_CODES: [&str; 18] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "_OTHER",
];

/// The index of `_OTHER` in [`GRPC_CODES`].
pub(crate) const GRPC_OTHER: u8 = 17;

/// The code of a `grpc-status` header value.
pub(crate) fn grpc_code_of(value: &[u8]) -> u8 {
    match value {
        [d @ b'0'..=b'9'] => d - b'0',
        [b'1', d @ b'0'..=b'6'] => 10 + (d - b'0'),
        _ => GRPC_OTHER,
    }
}

/// The outcome of a gRPC code, by the table of
/// [`GrpcClassifier`](buttress_core::GrpcClassifier): `Unknown`,
/// `DeadlineExceeded`, `ResourceExhausted`, `Internal`, `Unavailable` and
/// `DataLoss` are failures; a missing status is a failure too.
pub(crate) fn grpc_outcome(code: u8) -> Outcome {
    match code {
        2 | 4 | 8 | 13 | 14 | 15 | GRPC_OTHER => Outcome::Failure,
        _ => Outcome::Success,
    }
}

/// `outcome` values, indexed by [`outcome_code`].
pub(crate) const OUTCOMES: [&str; 3] = ["success", "failure", "ignored"];

/// The index of `outcome` in [`OUTCOMES`].
pub(crate) fn outcome_code(outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Success => 0,
        Outcome::Failure => 1,
        Outcome::Ignored => 2,
    }
}

/// `error.type` values; index 0 is "no error" and has no label.
pub(crate) const ERROR_TYPES: [&str; 9] = [
    "",
    "timeout",
    "bulkhead_full",
    "circuit_open",
    "rate_limited",
    "retry_exhausted",
    "key_missing",
    "_OTHER",
    "body",
];

/// No error.
pub(crate) const NO_ERROR: u8 = 0;
/// An error that is not a buttress rejection.
pub(crate) const OTHER_ERROR: u8 = 7;
/// The response body failed.
pub(crate) const BODY_ERROR: u8 = 8;

/// The `error.type` code of an error's buttress kind (`None`: not a
/// buttress rejection).
pub(crate) fn error_code(kind: Option<ErrorKind>) -> u8 {
    match kind {
        Some(ErrorKind::Timeout) => 1,
        Some(ErrorKind::BulkheadFull) => 2,
        Some(ErrorKind::CircuitOpen) => 3,
        Some(ErrorKind::RateLimited) => 4,
        Some(ErrorKind::RetryExhausted) => 5,
        Some(ErrorKind::KeyMissing) => 6,
        _ => OTHER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_parse_exactly() {
        for code in 0..=16u8 {
            let text = code.to_string();
            assert_eq!(grpc_code_of(text.as_bytes()), code);
            assert_eq!(GRPC_CODES[usize::from(code)], text);
        }
        for bad in ["", "17", "-1", "01x", "100", "a"] {
            assert_eq!(grpc_code_of(bad.as_bytes()), GRPC_OTHER, "{bad:?}");
        }
    }

    #[test]
    fn unknown_methods_are_other() {
        let m = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(METHODS[usize::from(method_code(&m))], "_OTHER");
        assert_eq!(METHODS[usize::from(method_code(&Method::PATCH))], "PATCH");
    }

    #[test]
    fn status_classes() {
        let class = |s: u16| STATUS_CLASSES[usize::from(status_class_code(s.try_into().unwrap()))];
        assert_eq!(class(101), "1xx");
        assert_eq!(class(204), "2xx");
        assert_eq!(class(308), "3xx");
        assert_eq!(class(429), "4xx");
        assert_eq!(class(503), "5xx");
        assert_eq!(class(999), "5xx");
    }
}
