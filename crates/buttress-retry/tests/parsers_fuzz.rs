//! Property-based fuzzing of what the retry layer reads from servers and
//! from config files: `Retry-After` (delta-seconds and the three HTTP-date
//! forms), `grpc-retry-pushback-ms`, the `Retry-After` that buttress's own
//! error-to-response mapping writes (read back here), and a `RetryConfig`
//! with its humantime durations.
//!
//! Every property runs on arbitrary input (no panic, a documented result)
//! and on generated valid input (the exact documented result, a round trip
//! where there is one). Case counts are bounded and inputs are short, so
//! each property ends in well under a second.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use buttress_core::response::{error_response, retry_after_secs};
use buttress_core::RateLimited;
use buttress_retry::policy::{parse_pushback, parse_retry_after, GRPC_RETRY_PUSHBACK_MS};
use buttress_test_support::fuzz::durations;
use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;

fn cases() -> ProptestConfig {
    ProptestConfig::with_cases(512)
}

/// The last second an HTTP-date can name (9999-12-31T23:59:59Z).
const LAST_HTTP_DATE: u64 = 253_402_300_799;

fn headers(name: http::HeaderName, value: HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(name, value);
    headers
}

fn instants() -> impl Strategy<Value = SystemTime> {
    (0..=LAST_HTTP_DATE, 0u32..1_000_000_000).prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n))
}

/// Civil date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`), for writing the obsolete date forms by hand.
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as u64, m as u64, d as u64)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const LONG_WEEKDAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];

/// `secs` after the epoch in one of RFC 9110's three HTTP-date forms,
/// which a recipient must all accept: IMF-fixdate, RFC 850 (two-digit
/// year) and asctime.
fn http_date(secs: u64, form: usize) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days);
    let (hh, mm, ss) = (rest / 3600, rest / 60 % 60, rest % 60);
    let month = MONTHS[m as usize - 1];
    let weekday = days as usize % 7;
    match form {
        0 => format!(
            "{}, {d:02} {month} {y} {hh:02}:{mm:02}:{ss:02} GMT",
            WEEKDAYS[weekday]
        ),
        1 => format!(
            "{}, {d:02}-{month}-{:02} {hh:02}:{mm:02}:{ss:02} GMT",
            LONG_WEEKDAYS[weekday],
            y % 100
        ),
        _ => format!(
            "{} {month} {d:>2} {hh:02}:{mm:02}:{ss:02} {y}",
            WEEKDAYS[weekday]
        ),
    }
}

fn retry_after_texts() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        "[ \t]?[0-9]{1,24}[ \t]?".prop_map(String::into_bytes),
        "[+-]?[0-9]{0,4}[.e]?[0-9]{0,3}".prop_map(String::into_bytes),
        "[A-Z][a-z]{2}, [0-9]{1,2} [A-Z][a-z]{2} [0-9]{2,5} [0-9:]{5,9} (GMT|UTC|Z)"
            .prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn retry_after_delta_seconds_are_read_exactly(
        secs in prop_oneof![0u64..100_000, any::<u64>()],
        pad in "[ \t]{0,2}",
        now in instants(),
    ) {
        let value = HeaderValue::from_str(&format!("{pad}{secs}{pad}")).unwrap();
        let h = headers(http::header::RETRY_AFTER, value);
        prop_assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(secs)));
    }

    #[test]
    fn retry_after_beyond_u64_seconds_is_the_longest_wait(extra in "[0-9]{1,10}") {
        let text = format!("{}{extra}", u64::MAX);
        let h = headers(http::header::RETRY_AFTER, HeaderValue::from_str(&text).unwrap());
        prop_assert_eq!(parse_retry_after(&h, SystemTime::now()), Some(Duration::MAX));
    }

    #[test]
    fn retry_after_dates_in_every_form_are_the_wait_until_them(
        at in 0..=LAST_HTTP_DATE,
        now in instants(),
        form in 0usize..3,
    ) {
        // RFC 850's two-digit year reads as the one nearest to now
        // (httpdate: 1970 to 2069), so that form stays within that span.
        let at = if form == 1 { at % 3_155_760_000 } else { at };
        let text = http_date(at, form);
        let h = headers(http::header::RETRY_AFTER, HeaderValue::from_str(&text).unwrap());
        let at = UNIX_EPOCH + Duration::from_secs(at);
        // A date in the past is no wait at all.
        let expected = at.duration_since(now).unwrap_or(Duration::ZERO);
        prop_assert_eq!(parse_retry_after(&h, now), Some(expected), "{}", text);
    }

    #[test]
    fn any_retry_after_is_a_wait_or_no_hint(bytes in retry_after_texts(), now in instants()) {
        let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
        let text = value.to_str().ok().map(str::trim).map(str::to_owned);
        let h = headers(http::header::RETRY_AFTER, value);
        let parsed = parse_retry_after(&h, now);
        match text {
            // Not text: no hint.
            None => prop_assert_eq!(parsed, None),
            Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
                let expected = t.parse().map_or(Duration::MAX, Duration::from_secs);
                prop_assert_eq!(parsed, Some(expected));
            }
            Some(t) => {
                let expected = httpdate::parse_http_date(&t)
                    .ok()
                    .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO));
                prop_assert_eq!(parsed, expected, "{:?}", t);
            }
        }
    }

    #[test]
    fn the_retry_after_buttress_writes_reads_back_never_early(wait in durations()) {
        let err = RateLimited::new("api".into(), Some(wait));
        let res = error_response::<()>(&err, StatusCode::GATEWAY_TIMEOUT);
        let read = parse_retry_after(res.headers(), SystemTime::now());
        match retry_after_secs(wait) {
            // A zero wait sends no header, and there is nothing to read.
            None => prop_assert_eq!(read, None),
            Some(secs) => {
                prop_assert_eq!(read, Some(Duration::from_secs(secs)));
                prop_assert!(read.unwrap() >= wait || secs == u64::MAX);
            }
        }
    }

    #[test]
    fn pushback_is_a_wait_a_refusal_or_absent(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24),
            "-?[0-9]{1,22}".prop_map(String::into_bytes),
        ],
    ) {
        let Ok(value) = HeaderValue::from_bytes(&bytes) else { return Ok(()) };
        let text = value.to_str().ok().map(str::to_owned);
        let parsed = parse_pushback(&headers(GRPC_RETRY_PUSHBACK_MS, value));
        // Only a non-negative whole number of milliseconds is a wait; any
        // other value means "do not retry" (gRPC's retry design).
        let expected = text
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_millis)
            .ok_or(());
        prop_assert_eq!(parsed, Some(expected));
    }
}

#[test]
fn no_pushback_header_is_no_pushback() {
    assert_eq!(parse_pushback(&HeaderMap::new()), None);
    assert_eq!(
        parse_retry_after(&HeaderMap::new(), SystemTime::now()),
        None
    );
}

#[cfg(feature = "serde")]
mod config {
    use super::*;
    use buttress_retry::{Backoff, BudgetConfig, Jitter, RetryConfig};

    /// Numbers as a person writes them in a config file (a few significant
    /// digits, exponents within ±20), negative ones included. serde_json,
    /// as built here (without its `float_roundtrip` feature), may read a
    /// 17-digit float or one with a large exponent (`-1e-142`) back one
    /// ulp off, which is serde_json's and not the config's to fix.
    fn finite() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(1000.0),
            (0u32..1_000_000).prop_map(|k| f64::from(k) / 1000.0),
            (-999i32..999, -20i32..20).prop_map(|(m, e)| format!("{m}e{e}").parse().unwrap()),
        ]
    }

    fn configs() -> impl Strategy<Value = RetryConfig> {
        let backoff = prop_oneof![
            durations().prop_map(Backoff::fixed),
            (durations(), durations()).prop_map(|(i, s)| Backoff::linear(i, s)),
            (durations(), finite()).prop_map(|(initial, multiplier)| Backoff::Exponential {
                initial,
                multiplier
            }),
        ];
        let jitter = prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
            finite().prop_map(Jitter::Proportional),
        ];
        let budget = proptest::option::of((finite(), any::<u32>(), durations()).prop_map(
            |(percent, min_per_sec, ttl)| BudgetConfig {
                percent,
                min_per_sec,
                ttl,
            },
        ));
        (
            ("[ -~]{0,12}", any::<u32>(), backoff, jitter),
            (durations(), proptest::option::of(durations()), budget),
            (proptest::option::of(any::<u64>()), any::<bool>()),
        )
            .prop_map(
                |(
                    (name, max_attempts, backoff, jitter),
                    (max_delay, max_elapsed, budget),
                    (seed, unbounded_retries),
                )| RetryConfig {
                    name,
                    max_attempts,
                    backoff,
                    jitter,
                    max_delay,
                    max_elapsed,
                    budget,
                    seed,
                    unbounded_retries,
                },
            )
    }

    proptest! {
        #![proptest_config(cases())]

        #[test]
        fn a_retry_config_round_trips_through_its_text(config in configs()) {
            let json = serde_json::to_string(&config).unwrap();
            let back: RetryConfig = serde_json::from_str(&json)
                .map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
            prop_assert_eq!(back, config);
        }

        #[test]
        fn any_duration_text_in_a_config_is_a_config_or_an_error(
            text in prop_oneof![
                any::<String>(),
                "[0-9]{1,22} ?(ns|us|ms|s|m|h|d|w|M|y|sec|min|hours|days|years)?",
                "([0-9]{1,6}[a-z]{1,5} ?){1,4}",
            ],
        ) {
            let json = serde_json::json!({ "max_delay": text, "budget": { "ttl": text } });
            if let Ok(config) = serde_json::from_value::<RetryConfig>(json) {
                let ttl = config.budget.as_ref().map(|b| b.ttl);
                prop_assert_eq!(ttl, Some(config.max_delay));
                let again: RetryConfig =
                    serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
                prop_assert_eq!(again, config);
            }
        }
    }
}
