//! Random values for the builder, every run-time setter and every latency
//! shape: an error naming a field, or a layer whose calls finish (on a
//! paused clock), never a panic.

use std::alloc::System;
use std::time::Duration;

use buttress_chaos::{ChaosLayer, Latency, MAX_LATENCY};
use buttress_test_support::fuzz::{self, durations, floats};
use proptest::prelude::*;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{service_fn, ServiceBuilder, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn latencies() -> impl Strategy<Value = Latency> {
    prop_oneof![
        durations().prop_map(Latency::Fixed),
        (durations(), durations()).prop_map(|(min, max)| Latency::Uniform { min, max }),
        durations().prop_map(|mean| Latency::Exponential { mean }),
        (durations(), durations()).prop_map(|(mean, std_dev)| Latency::Normal { mean, std_dev }),
    ]
}

/// Any float, and often a valid rate (the edges included).
fn rates() -> impl Strategy<Value = f64> {
    prop_oneof![floats(), 0.0f64..=1.0, Just(1.0), Just(1.0 + f64::EPSILON)]
}

fn rate_ok(r: f64) -> bool {
    (0.0..=1.0).contains(&r)
}

/// Four calls through `layer` each end on their own (the hang rate is 0
/// here) within 40 days of paused time: the longest exponential delay is
/// about 36.7 times a mean of at most one day.
fn calls_finish(layer: ChaosLayer) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut svc = ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|n: u32| async move {
                Ok::<_, std::convert::Infallible>(n)
            }));
        for i in 0..4 {
            let call = tower::Service::call(svc.ready().await.unwrap(), i);
            let out = tokio::time::timeout(Duration::from_secs(40 * 86_400), call)
                .await
                .expect("the call hung");
            if let Err(e) = out {
                assert!(buttress_chaos::error::is_injected(&*e), "{e}");
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_builder_errs_or_builds_a_working_layer(
        error in rates(),
        latency_rate in rates(),
        latency in latencies(),
        seed in any::<u64>(),
        after in any::<u64>(),
    ) {
        let built = fuzz::bounded(GLOBAL, || {
            ChaosLayer::builder()
                .seed(seed)
                .error_rate(error)
                .latency(latency_rate, latency)
                .body_fault_after(after)
                .enabled(true)
                .build()
        });
        let latency_ok = match latency {
            Latency::Uniform { min, max } => min <= max && max <= MAX_LATENCY,
            Latency::Fixed(d) | Latency::Exponential { mean: d } => d <= MAX_LATENCY,
            Latency::Normal { mean, std_dev } => mean <= MAX_LATENCY && std_dev <= MAX_LATENCY,
        };
        match built {
            Ok(layer) => {
                prop_assert!(rate_ok(error) && rate_ok(latency_rate) && latency_ok);
                calls_finish(layer);
            }
            Err(e) => {
                prop_assert!(!(rate_ok(error) && rate_ok(latency_rate) && latency_ok));
                prop_assert_eq!(e.component(), "chaos");
                prop_assert!(["error_rate", "latency_rate", "latency"].contains(&e.field()), "{}", e);
            }
        }
    }

    #[test]
    fn setters_change_everything_or_nothing(
        error in rates(),
        hang in rates(),
        latency_rate in rates(),
        latency in latencies(),
    ) {
        let handle = ChaosLayer::builder().build_http().unwrap().handle();
        let before = handle.snapshot();
        match handle.set_error_rate(error) {
            Ok(()) => prop_assert_eq!(handle.snapshot().error_rate, error),
            Err(e) => {
                prop_assert_eq!(e.field(), "error_rate");
                prop_assert_eq!(&handle.snapshot(), &before);
            }
        }
        let before = handle.snapshot();
        match handle.set_hang_rate(hang) {
            Ok(()) => {
                prop_assert!(before.error_rate + hang <= 1.0 + 1e-9);
                prop_assert_eq!(handle.snapshot().hang_rate, hang);
            }
            Err(_) => prop_assert_eq!(&handle.snapshot(), &before),
        }
        let before = handle.snapshot();
        match handle.set_latency(latency_rate, latency) {
            Ok(()) => {
                let s = handle.snapshot();
                prop_assert_eq!((s.latency_rate, s.latency), (latency_rate, latency));
            }
            Err(e) => {
                prop_assert!(["latency_rate", "latency"].contains(&e.field()));
                prop_assert_eq!(&handle.snapshot(), &before);
            }
        }
    }
}
