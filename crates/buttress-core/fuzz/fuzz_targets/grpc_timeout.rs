//! `parse_grpc_timeout` on any bytes a header value can hold: no panic, and
//! a value only for 1 to 8 ASCII digits and one of the units `HMSmun`.
#![no_main]

use std::time::Duration;

use buttress_core::deadline::parse_grpc_timeout;
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    if let Some(timeout) = parse_grpc_timeout(&value) {
        let (unit, digits) = data.split_last().expect("a value has a unit");
        assert!((1..=8).contains(&digits.len()), "{data:?}");
        assert!(digits.iter().all(u8::is_ascii_digit), "{data:?}");
        assert!(b"HMSmun".contains(unit), "{data:?}");
        assert!(timeout <= Duration::from_secs(99_999_999 * 3600));
    }
});
