//! Random values for every builder and run-time setter: `build()` and the
//! setters return an error or a working layer, never panic, never hang,
//! never allocate by the size asked for.

use std::alloc::System;

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use std::time::Duration;

use buttress_bulkhead::{BulkheadLayer, KeyedBulkheadLayer, MissingKey, MAX_CONCURRENT};
use buttress_core::key::FnKey;
use buttress_test_support::fuzz::{self, durations};
use proptest::prelude::*;
use tower::{service_fn, Layer, ServiceExt};

fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(usize::MAX),
        Just(MAX_CONCURRENT),
        Just(MAX_CONCURRENT + 1),
        0usize..100,
        any::<usize>(),
    ]
}

/// Counts the test binary's allocations, so that `bounded` can check them.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// [`fuzz::bounded`] with this binary's counting allocator.
fn bounded<T>(f: impl FnOnce() -> T) -> T {
    fuzz::bounded(GLOBAL, f)
}

/// One call through `layer` finishes under a paused clock.
fn one_call_finishes<L>(layer: L)
where
    L: Layer<
        tower::util::ServiceFn<
            fn(u32) -> std::future::Ready<Result<u32, std::convert::Infallible>>,
        >,
    >,
    L::Service: tower::Service<u32, Response = u32> + Send + 'static,
    <L::Service as tower::Service<u32>>::Error: std::fmt::Debug,
    <L::Service as tower::Service<u32>>::Future: Send,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(
        (|x| std::future::ready(Ok(x)))
            as fn(u32) -> std::future::Ready<Result<u32, std::convert::Infallible>>,
    ));
    rt.block_on(async {
        let out = tokio::time::timeout(Duration::from_secs(3600), svc.oneshot(7))
            .await
            .expect("the call hung");
        // The bulkhead is empty: the call is admitted.
        assert_eq!(out.unwrap(), 7);
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn bulkhead_builder_is_an_error_or_a_working_layer(
        max_concurrent in sizes(),
        max_queue in sizes(),
        max_wait in proptest::option::of(durations()),
    ) {
        let mut b = BulkheadLayer::builder().max_concurrent(max_concurrent).max_queue(max_queue);
        if let Some(w) = max_wait {
            b = b.max_wait(w);
        }
        match bounded(|| b.build()) {
            Ok(layer) => {
                prop_assert!((1..=MAX_CONCURRENT).contains(&max_concurrent));
                one_call_finishes(layer);
            }
            Err(e) => prop_assert!(!e.field().is_empty()),
        }
        match BulkheadLayer::new(max_concurrent) {
            Ok(layer) => one_call_finishes(layer),
            Err(e) => prop_assert_eq!(e.field(), "max_concurrent"),
        }
    }

    #[test]
    fn bulkhead_setters_are_an_error_or_leave_a_working_layer(
        sets in proptest::collection::vec((0u8..3, sizes(), proptest::option::of(durations())), 1..6),
    ) {
        let layer = BulkheadLayer::builder().max_concurrent(4).max_queue(2).build().unwrap();
        let h = layer.handle();
        for (which, n, wait) in sets {
            let before = h.snapshot().max_concurrent;
            let res = match which {
                0 => h.set_max_concurrent(n),
                1 => h.set_max_queue(n),
                _ => h.set_max_wait(wait),
            };
            if which == 0 && res.is_err() {
                prop_assert_eq!(h.snapshot().max_concurrent, before);
            }
            if which == 0 && res.is_ok() {
                prop_assert_eq!(h.snapshot().max_concurrent, n);
            }
        }
        one_call_finishes(layer);
    }

    #[test]
    fn keyed_bulkhead_builder_is_an_error_or_a_working_layer(
        max_concurrent in sizes(),
        max_queue in sizes(),
        max_keys in sizes(),
        idle in durations(),
        shared in any::<bool>(),
    ) {
        let policy = if shared { MissingKey::SharedBucket } else { MissingKey::Reject };
        let b = KeyedBulkheadLayer::builder(FnKey::new(|x: &u32| Some(*x)))
            .max_concurrent(max_concurrent)
            .max_queue(max_queue)
            .max_keys(max_keys)
            .idle_timeout(idle)
            .on_missing_key(policy);
        if let Ok(layer) = bounded(|| b.build::<u32>()) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let svc = layer.layer(service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x) }));
            rt.block_on(async {
                let out = tokio::time::timeout(Duration::from_secs(3600), svc.oneshot(7))
                    .await
                    .expect("the call hung");
                assert_eq!(out.unwrap(), 7);
            });
        }
    }
}
