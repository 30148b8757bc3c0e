//! `parse_retry_after` and `parse_pushback` on any header value: no panic;
//! delta-seconds read exactly, and a pushback is a wait only for a whole
//! number of milliseconds.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use buttress_retry::policy::{parse_pushback, parse_retry_after, GRPC_RETRY_PUSHBACK_MS};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u64, &[u8])| {
    let (now_secs, data) = input;
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let now = UNIX_EPOCH + Duration::from_secs(now_secs % 253_402_300_800);
    let text = value.to_str().ok().map(str::trim).map(str::to_owned);
    let digits = text
        .as_deref()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));

    let mut headers = HeaderMap::new();
    headers.insert(http::header::RETRY_AFTER, value.clone());
    let wait = parse_retry_after(&headers, now);
    if let Some(digits) = digits {
        let expected = digits.parse().map_or(Duration::MAX, Duration::from_secs);
        assert_eq!(wait, Some(expected), "{digits:?}");
    }
    if let Some(wait) = wait {
        // A date is at most the span of HTTP-dates away.
        assert!(digits.is_some() || wait <= Duration::from_secs(253_402_300_800));
    }

    let mut headers = HeaderMap::new();
    headers.insert(GRPC_RETRY_PUSHBACK_MS, value.clone());
    let pushback = parse_pushback(&headers).expect("the header is there");
    let whole_ms = value
        .to_str()
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u64>().ok());
    assert_eq!(pushback.ok(), whole_ms.map(Duration::from_millis));
});
