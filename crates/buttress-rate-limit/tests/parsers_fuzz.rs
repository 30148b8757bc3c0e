//! Property-based fuzzing of what the rate limiter reads from config files
//! and writes to clients: the `"100/1s"` rate syntax, a `RateLimitConfig`
//! with its humantime durations, and the quota a rejection advertises
//! (the `RateLimit-Policy` header's `q` and `w`).
//!
//! Every property runs on arbitrary input (no panic, a documented result)
//! and on generated valid input (the exact documented result, a round trip
//! where there is one). Case counts are bounded and inputs are short, so
//! each property ends in well under a second.

use std::convert::Infallible;
use std::time::Duration;

use buttress_core::RateLimited;
use buttress_rate_limit::{Rate, RateLimitLayer, MAX_PERIOD, MAX_PERMITS};
use buttress_test_support::fuzz::finishes;
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};

fn cases() -> ProptestConfig {
    ProptestConfig::with_cases(512)
}

const MAX_PERIOD_NANOS: u64 = MAX_PERIOD.as_secs() * 1_000_000_000;

/// Every rate a limiter accepts: 1 to 2^32 permits per period of up to a
/// year, and at most one permit per nanosecond.
fn valid_rates() -> impl Strategy<Value = Rate> {
    let permits = prop_oneof![Just(1), Just(MAX_PERMITS), 1u64..1000, 1u64..=MAX_PERMITS];
    permits.prop_flat_map(|permits| {
        let period = prop_oneof![
            Just(permits),
            Just(MAX_PERIOD_NANOS),
            // Whole units, as people write them.
            (
                1u64..1000,
                prop::sample::select(
                    &[
                        1_000_000u64,
                        1_000_000_000,
                        60_000_000_000,
                        3_600_000_000_000
                    ][..]
                )
            )
                .prop_map(|(n, unit)| n * unit),
            permits..=MAX_PERIOD_NANOS,
        ]
        .prop_filter("a valid rate", move |p| {
            (permits..=MAX_PERIOD_NANOS).contains(p)
        });
        period.prop_map(move |nanos| Rate::new(permits, Duration::from_nanos(nanos)))
    })
}

/// Whether the limiter accepts `rate`, as its docs state the bounds.
fn is_valid(rate: Rate) -> bool {
    (1..=MAX_PERMITS).contains(&rate.permits())
        && !rate.period().is_zero()
        && rate.period() <= MAX_PERIOD
        && rate.period().as_nanos() >= u128::from(rate.permits())
}

fn rate_texts() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,12}/[0-9]{0,12}(ns|us|ms|s|m|h|d|w|M|y|sec|min|hour|days|years)?",
        "[ +-]?[0-9]{1,22} ?/ ?[a-z]{0,6}",
        "[0-9]{1,4}/([0-9]{1,4}[a-z]{1,3} ?){1,3}",
        "[0-9/ .a-z]{0,16}",
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn a_rate_prints_and_parses_back_as_itself(rate in valid_rates()) {
        let text = rate.to_string();
        prop_assert_eq!(text.parse::<Rate>(), Ok(rate), "{}", text);
    }

    #[test]
    fn a_bare_unit_is_one_of_it(
        permits in 1u64..1_000_000,
        (unit, period) in prop::sample::select(&[
            ("s", 1u64), ("sec", 1), ("min", 60), ("m", 60), ("h", 3600), ("hour", 3600), ("d", 86_400),
        ][..]),
        spaces in "[ ]{0,2}",
    ) {
        let text = format!("{spaces}{permits}{spaces}/{spaces}{unit}{spaces}");
        prop_assert_eq!(
            text.parse::<Rate>(),
            Ok(Rate::new(permits, Duration::from_secs(period))),
            "{:?}", text
        );
    }

    #[test]
    fn any_rate_text_is_a_valid_rate_or_an_error_naming_it(text in rate_texts()) {
        match text.parse::<Rate>() {
            Ok(rate) => {
                prop_assert!(is_valid(rate), "{text:?} parsed to the invalid {rate:?}");
                // What was read prints as text that reads back the same.
                prop_assert_eq!(rate.to_string().parse::<Rate>(), Ok(rate));
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.contains(&format!("`{text}`")), "{}", message);
            }
        }
    }

    #[test]
    fn any_rate_is_a_layer_or_an_error(permits in any::<u64>(), nanos in any::<u64>(), secs in prop_oneof![Just(0u64), any::<u64>()]) {
        let rate = Rate::new(permits, Duration::new(secs, 0) + Duration::from_nanos(nanos % 1_000_000_000));
        prop_assert_eq!(RateLimitLayer::new(rate).is_ok(), is_valid(rate), "{:?}", rate);
    }

    #[test]
    fn the_advertised_quota_is_never_more_than_the_rate(rate in valid_rates()) {
        let layer = RateLimitLayer::builder(rate).burst(1).build().unwrap();
        let svc = layer.layer(service_fn(|()| async { Ok::<_, Infallible>(()) }));
        let err = finishes(async move {
            svc.clone().oneshot(()).await.expect("the first call has the burst");
            svc.oneshot(()).await.expect_err("a burst of one is spent")
        });
        let limited = err.downcast_ref::<RateLimited>().expect("a rate-limit rejection");
        let quota = limited.quota().expect("rejections carry the quota");
        let (q, w) = (u128::from(quota.limit()), quota.window().as_nanos());
        let (permits, period) = (u128::from(rate.permits()), rate.period().as_nanos());
        // `w` is the period rounded up to whole seconds, and `q` the
        // permits in `w` rounded down: never more than the real rate, and
        // the most that is not.
        prop_assert_eq!(w, period.div_ceil(1_000_000_000).max(1) * 1_000_000_000);
        prop_assert!(q * period <= permits * w, "{q}/{w}ns advertised for {rate}");
        prop_assert!((q + 1) * period > permits * w, "{q}/{w}ns understates {rate}");
    }
}

#[cfg(feature = "serde")]
mod config {
    use super::*;
    use buttress_rate_limit::{Algorithm, RateLimitConfig};
    use buttress_test_support::fuzz::durations;

    fn configs() -> impl Strategy<Value = RateLimitConfig> {
        let algorithm = prop::sample::select(
            &[
                Algorithm::Gcra,
                Algorithm::TokenBucket,
                Algorithm::FixedWindow,
                Algorithm::SlidingLog,
                Algorithm::SlidingWindow,
            ][..],
        );
        (
            "[ -~]{0,12}",
            algorithm,
            valid_rates(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(durations()),
            any::<usize>(),
            proptest::option::of(durations()),
        )
            .prop_map(
                |(name, algorithm, rate, burst, max_wait, max_queue, resolution)| RateLimitConfig {
                    name,
                    algorithm,
                    rate,
                    burst,
                    max_wait,
                    max_queue,
                    resolution,
                },
            )
    }

    proptest! {
        #![proptest_config(cases())]

        #[test]
        fn a_config_round_trips_through_its_text(config in configs()) {
            let json = serde_json::to_string(&config).unwrap();
            let back: RateLimitConfig = serde_json::from_str(&json)
                .map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
            prop_assert_eq!(back, config);
        }

        #[test]
        fn any_config_text_is_a_config_or_an_error(
            rate in rate_texts(),
            duration in prop_oneof![
                any::<String>(),
                "[0-9]{1,22} ?(ns|us|ms|s|m|h|d|w|M|y|sec|min|hours|days|years)?",
            ],
        ) {
            let json = serde_json::json!({ "rate": rate, "max_wait": duration, "resolution": duration });
            if let Ok(config) = serde_json::from_value::<RateLimitConfig>(json) {
                prop_assert!(is_valid(config.rate));
                prop_assert_eq!(config.max_wait, config.resolution);
                let again: RateLimitConfig =
                    serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
                prop_assert_eq!(again, config);
            }
        }
    }
}
