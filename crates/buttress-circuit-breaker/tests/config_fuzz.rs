//! Random values for every builder and the config: `build()` returns an
//! error or a working layer, never panics, never hangs, never allocates by
//! the size asked for (counted) (window sizes above 1,000,000 are refused).

use std::alloc::System;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::time::Duration;

use buttress_circuit_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer, MissingKey};
use buttress_core::key::FnKey;
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};

fn durations() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..10_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_nanos),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn floats() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-1.0),
        Just(f64::MAX),
        -10.0f64..200.0,
        any::<f64>(),
    ]
}

fn counts() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(u32::MAX), 0u32..20, any::<u32>()]
}

/// Counts the test binary's allocations, so that `bounded` can check them.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Runs a build that must not allocate by the size asked for (a window or
/// a queue of `u32::MAX` would take gigabytes): at most 64 MiB allocated
/// while it runs, a loose bound since other tests of this binary may
/// allocate at the same time. Counted, not timed: exact on any machine.
fn bounded<T>(f: impl FnOnce() -> T) -> T {
    let region = Region::new(GLOBAL);
    let out = f();
    let allocated = region.change().bytes_allocated;
    assert!(
        allocated < 64 << 20,
        "the build allocated {allocated} bytes"
    );
    out
}

/// Runs `f` on a paused current-thread runtime; it must finish within an
/// hour of paused time.
fn finishes<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(3600), f)
            .await
            .expect("the call hung")
    })
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
