//! Random values for the retry builder, its presets and its config:
//! `build()` returns an error or a layer whose call against a service that
//! always fails ends (paused clock), never a panic or a hang.

use std::alloc::System;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use std::time::Duration;

use buttress_core::BoxError;
use buttress_retry::{Backoff, Jitter, RetryBudget, RetryLayer};
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

fn backoffs() -> impl Strategy<Value = Backoff> {
    prop_oneof![
        durations().prop_map(Backoff::fixed),
        (durations(), durations()).prop_map(|(i, s)| Backoff::linear(i, s)),
        (durations(), floats()).prop_map(|(initial, multiplier)| Backoff::Exponential {
            initial,
            multiplier
        }),
    ]
}

fn jitters() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
        floats().prop_map(Jitter::Proportional),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn retry_builder_is_an_error_or_a_layer_that_ends(
        max_attempts in counts(),
        backoff in backoffs(),
        jitter in jitters(),
        max_delay in durations(),
        max_elapsed in proptest::option::of(durations()),
        budget in any::<bool>(),
        unbounded in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut b = RetryLayer::builder()
            .max_attempts(max_attempts)
            .backoff(backoff)
            .jitter(jitter)
            .max_delay(max_delay)
            .seed(seed);
        if let Some(max) = max_elapsed {
            b = b.max_elapsed(max);
        }
        if budget {
            b = b.budget(RetryBudget::builder().build().unwrap());
        }
        if unbounded {
            b = b.unbounded_retries();
        }
        let Ok(layer) = bounded(|| b.build()) else { return Ok(()) };
        prop_assert!(max_delay <= Duration::from_secs(3600));
        prop_assert!(max_attempts <= 10 || budget || max_elapsed.is_some() || unbounded);
        // A service that always fails: the retries end with the attempts
        // or the deadline. A budget bounds the load on the upstream, not
        // one call (its minimum rate refills), so such layers and explicit
        // unbounded ones are only built.
        // Each attempt takes a minute of the paused clock: a clock that only
        // moves when the runtime is idle would never reach `max_elapsed`
        // with delays of zero (the retry yields between attempts, so the
        // runtime is never idle).
        let svc = layer.layer(service_fn(|_: u32| async {
            tokio::time::advance(Duration::from_secs(60)).await;
            Err::<u32, BoxError>("down".into())
        }));
        if max_attempts <= 10 || max_elapsed.is_some() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            // 10 attempts of at most an hour and a minute, or a day of
            // max_elapsed.
            let done = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(12 * 3600 + 86_400), svc.oneshot(1)).await
            });
            prop_assert!(done.is_ok(), "the retries did not end");
            prop_assert!(done.unwrap().is_err());
        }
    }

    #[test]
    fn retry_presets_are_an_error_or_a_working_layer(
        max_attempts in counts(),
        a in durations(),
        b in durations(),
    ) {
        for builder in [RetryLayer::exponential(max_attempts, a, b), RetryLayer::fixed(max_attempts, a)] {
            if let Ok(layer) = bounded(|| builder.build()) {
                let svc = layer.layer(service_fn(|x: u32| async move { Ok::<u32, BoxError>(x) }));
                prop_assert_eq!(finishes(svc.oneshot(3)).unwrap(), 3);
            }
        }
    }
}

/// The input that once hung this suite: as many attempts as a `u32` holds,
/// no delay, and a day of `max_elapsed`. The retries yield between attempts
/// and end by `max_elapsed`, a minute of the paused clock per attempt.
#[test]
fn zero_delay_retries_end_by_max_elapsed_on_a_paused_clock() {
    let layer = RetryLayer::builder()
        .max_attempts(u32::MAX)
        .backoff(Backoff::fixed(Duration::ZERO))
        .max_elapsed(Duration::from_secs(86_400))
        .build()
        .unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = calls.clone();
    let svc = layer.layer(service_fn(move |_: u32| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async {
            tokio::time::advance(Duration::from_secs(60)).await;
            Err::<u32, BoxError>("down".into())
        }
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let done = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(2 * 86_400), svc.oneshot(1)).await
    });
    assert!(done.expect("the retries did not end").is_err());
    // A day of one-minute attempts, give or take the last one.
    let n = calls.load(std::sync::atomic::Ordering::Relaxed);
    assert!((1440..=1441).contains(&n), "{n} attempts");
}

/// A retry without delay gives the other tasks of its runtime a turn
/// between attempts: a task spawned beside it runs before the retries end.
#[test]
fn zero_delay_retries_yield_to_other_tasks() {
    let layer = RetryLayer::builder()
        .max_attempts(10)
        .backoff(Backoff::fixed(Duration::ZERO))
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let order = rt.block_on(async {
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, b) = (order.clone(), order.clone());
        let svc = layer.layer(service_fn(move |_: u32| {
            a.lock().unwrap().push("attempt");
            async { Err::<u32, BoxError>("down".into()) }
        }));
        let other = tokio::spawn(async move { b.lock().unwrap().push("other") });
        let _ = svc.oneshot(1).await;
        other.await.unwrap();
        let order = order.lock().unwrap().clone();
        order
    });
    let other_at = order.iter().position(|s| *s == "other").unwrap();
    assert!(
        other_at < order.len() - 1,
        "the other task ran only after every attempt: {order:?}"
    );
}
