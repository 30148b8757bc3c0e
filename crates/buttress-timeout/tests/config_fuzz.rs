//! Random values for the timeout's constructors, builder and run-time
//! setter: an error or a working layer, never a panic or a hang.

use std::alloc::System;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use std::time::Duration;

use buttress_test_support::fuzz::{self, durations, finishes};
use buttress_timeout::TimeoutLayer;
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};

/// Counts the test binary's allocations, so that `bounded` can check them.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// [`fuzz::bounded`] with this binary's counting allocator.
fn bounded<T>(f: impl FnOnce() -> T) -> T {
    fuzz::bounded(GLOBAL, f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn timeout_constructors_and_setter_are_an_error_or_a_working_layer(
        timeout in durations(),
        later in durations(),
        include_ready in any::<bool>(),
    ) {
        let built = bounded(|| TimeoutLayer::builder(timeout).include_ready(include_ready).build());
        let new = TimeoutLayer::new(timeout);
        prop_assert_eq!(built.is_ok(), !timeout.is_zero());
        prop_assert_eq!(new.is_ok(), !timeout.is_zero());
        if let (Ok(layer), Ok(_)) = (built, new) {
            let handle = layer.handle();
            let res = handle.set_timeout(later);
            prop_assert_eq!(res.is_ok(), !later.is_zero());
            let expected = if later.is_zero() { timeout } else { later };
            let snap = handle.snapshot().timeout;
            prop_assert!(snap == expected || snap.as_nanos() == u128::from(u64::MAX));
            // A ready call passes; a call that sleeps past the limit ends.
            let svc = layer.layer(service_fn(|x: u32| async move {
                if x == 1 {
                    tokio::time::sleep(Duration::from_secs(7200)).await;
                }
                Ok::<_, std::convert::Infallible>(x)
            }));
            prop_assert_eq!(finishes(svc.clone().oneshot(0)).unwrap(), 0);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            // Within ten hours of paused time: the sleep or the limit ends it.
            let done = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(36_000), svc.oneshot(1)).await
            });
            prop_assert!(done.is_ok(), "the call hung");
        }
    }
}
