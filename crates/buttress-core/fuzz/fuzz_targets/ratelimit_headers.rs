//! `ratelimit_headers` for any quota: no panic, and both headers written as
//! a quoted policy name followed by Integer parameters, in printable ASCII.
#![no_main]

use std::time::Duration;

use buttress_core::response::{ratelimit_headers, RATELIMIT, RATELIMIT_POLICY};
use buttress_core::Quota;
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (String, u64, (u64, u32), u64, (u64, u32))| {
    let (policy, limit, (window_s, window_n), remaining, (reset_s, reset_n)) = input;
    let window = Duration::new(window_s, window_n % 1_000_000_000);
    let reset = Duration::new(reset_s, reset_n % 1_000_000_000);
    let quota = Quota::new(policy.as_str().into(), limit, window, remaining, reset);
    let mut headers = HeaderMap::new();
    ratelimit_headers(&quota, &mut headers);
    for name in [RATELIMIT_POLICY, RATELIMIT] {
        let value = headers.get(&name).expect("both headers are always written");
        let text = value.to_str().expect("printable ASCII");
        assert!(text.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{text:?}");
        assert!(text.starts_with('"'), "{text:?}");
        // After the closing quote: `;key=digits` only.
        let close = text[1..]
            .char_indices()
            .scan(false, |escaped, (i, c)| {
                let end = !*escaped && c == '"';
                *escaped = !*escaped && c == '\\';
                Some((i, end))
            })
            .find(|(_, end)| *end)
            .map(|(i, _)| i + 1)
            .expect("a closing quote");
        for param in text[close + 1..].split(';').skip(1) {
            let (key, digits) = param.split_once('=').expect("key=value");
            assert!(matches!(key, "q" | "w" | "r" | "t"), "{text:?}");
            assert!(
                (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()),
                "{text:?}"
            );
        }
    }
});
