//! `"<permits>/<period>"` on any text: no panic; a rate that parses is one
//! a limiter accepts, and prints as text that parses back as itself.
#![no_main]

use buttress_rate_limit::{Rate, RateLimitLayer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match text.parse::<Rate>() {
        Ok(rate) => {
            assert!(
                RateLimitLayer::new(rate).is_ok(),
                "{text:?} parsed to {rate:?}"
            );
            assert_eq!(rate.to_string().parse::<Rate>(), Ok(rate), "{text:?}");
        }
        Err(e) => assert!(e.to_string().contains(text), "{e}"),
    }
});
