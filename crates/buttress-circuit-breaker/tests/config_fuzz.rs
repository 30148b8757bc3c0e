//! Random values for every builder and the config: `build()` returns an
//! error or a working layer, never panics, never hangs, never allocates by
//! the size asked for (counted) (window sizes above 1,000,000 are refused).

use std::alloc::System;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

use buttress_circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer, MissingKey};
use buttress_core::key::FnKey;
use buttress_test_support::fuzz::{self, counts, durations, finishes, floats};
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};

/// Counts the test binary's allocations, so that `bounded` can check them.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// [`fuzz::bounded`] with this binary's counting allocator.
fn bounded<T>(f: impl FnOnce() -> T) -> T {
    fuzz::bounded(GLOBAL, f)
}

prop_compose! {
    fn configs()(
        failure_rate_threshold in floats(),
        slow_call_rate_threshold in floats(),
        slow_call_duration in proptest::option::of(durations()),
        window_size in counts(),
        time_window in proptest::option::of(durations()),
        minimum_calls in counts(),
        consecutive_failures in proptest::option::of(counts()),
        permitted_calls_in_half_open in counts(),
        wait_in_open in durations(),
        open_wait_multiplier in floats(),
        max_wait_in_open in proptest::option::of(durations()),
        open_wait_jitter in floats(),
        automatic_half_open in any::<bool>(),
        max_wait_in_half_open in proptest::option::of(durations()),
        backpressure in any::<bool>(),
        seed in any::<u64>(),
    ) -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            failure_rate_threshold,
            slow_call_rate_threshold,
            slow_call_duration,
            window_size,
            time_window,
            minimum_calls,
            consecutive_failures,
            permitted_calls_in_half_open,
            wait_in_open,
            open_wait_multiplier,
            max_wait_in_open,
            open_wait_jitter,
            automatic_half_open,
            max_wait_in_half_open,
            backpressure,
            seed,
            ..CircuitBreakerConfig::default()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn breaker_config_is_an_error_or_a_working_layer(config in configs(), fail in any::<bool>()) {
        match bounded(|| config.build()) {
            Ok(layer) => {
                prop_assert!(config.window_size <= 1_000_000);
                let svc = layer.layer(service_fn(move |x: u32| async move {
                    if fail { Err::<u32, std::io::Error>(std::io::Error::other("down")) } else { Ok(x) }
                }));
                let out = finishes(svc.oneshot(7));
                prop_assert_eq!(out.is_ok(), !fail);
            }
            Err(e) => prop_assert!(!e.field().is_empty()),
        }
    }

    #[test]
    fn keyed_breaker_builder_is_an_error_or_a_working_layer(
        window_size in counts(),
        minimum_calls in counts(),
        wait_in_open in durations(),
        max_keys in prop_oneof![Just(0usize), Just(usize::MAX), 0usize..100, any::<usize>()],
        idle in durations(),
        shared in any::<bool>(),
        key in proptest::option::of(any::<u8>()),
    ) {
        let policy = if shared { MissingKey::SharedBucket } else { MissingKey::Reject };
        // The full config is fuzzed above; the keyed builder validates it
        // with the same code.
        let config = CircuitBreakerConfig {
            window_size,
            minimum_calls,
            wait_in_open,
            ..CircuitBreakerConfig::default()
        };
        let b = KeyedCircuitBreakerLayer::builder(FnKey::new(|x: &Option<u8>| *x))
            .config(config)
            .max_keys(max_keys)
            .idle_timeout(idle)
            .on_missing_key(policy);
        if let Ok(layer) = bounded(|| b.build::<u8>()) {
            let svc = layer.layer(service_fn(|x: Option<u8>| async move { Ok::<_, std::io::Error>(x) }));
            let out = finishes(svc.oneshot(key));
            prop_assert_eq!(out.is_ok(), key.is_some() || shared);
        }
    }
}
