//! Random values for every builder setting and the config struct: `build()`
//! returns an error or a working layer, never panics, never hangs, never
//! allocates by the size asked for.

use std::alloc::System;
use std::convert::Infallible;

use buttress_cache::{CacheConfig, CacheLayer, Credentials};
use buttress_test_support::fuzz::{self, durations};
use proptest::prelude::*;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{service_fn, Layer, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn sizes() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(1), Just(u64::MAX), 0u64..100, any::<u64>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn keyed_builder_is_an_error_or_a_working_layer(
        ttl in durations(),
        max_stale in durations(),
        revalidate in any::<bool>(),
        max_entries in proptest::option::of(sizes()),
        max_weight in proptest::option::of(sizes()),
    ) {
        let mut b = CacheLayer::builder(|k: &u32| Some(*k))
            .ttl(ttl)
            .max_stale(max_stale)
            .stale_while_revalidate(revalidate);
        if let Some(n) = max_entries {
            b = b.max_entries(n);
        }
        if let Some(w) = max_weight {
            b = b.max_weight(w);
        }
        match fuzz::bounded(GLOBAL, || b.build()) {
            Ok(layer) => {
                prop_assert!(!ttl.is_zero());
                let svc = layer.layer(service_fn(|k: u32| async move { Ok::<_, Infallible>(k) }));
                let out = fuzz::finishes(async move {
                    let a = svc.clone().oneshot(3).await.unwrap();
                    let b = svc.oneshot(3).await.unwrap();
                    (a, b)
                });
                prop_assert_eq!(out, (3, 3));
            }
            Err(e) => prop_assert!(
                ["ttl", "max_entries", "max_weight", "stale_while_revalidate"].contains(&e.field()),
                "{}", e
            ),
        }
    }

    #[test]
    fn config_struct_is_an_error_or_a_working_http_layer(
        ttl in durations(),
        max_stale in durations(),
        max_entries in proptest::option::of(sizes()),
        max_weight in proptest::option::of(sizes()),
        max_body in prop_oneof![Just(0usize), Just(usize::MAX), 0usize..100_000],
        vary in proptest::collection::vec("[a-z\\- ]{0,12}", 0..3),
        credentials in prop_oneof![Just(Credentials::Bypass), Just(Credentials::InKey), Just(Credentials::Ignore)],
    ) {
        let config = CacheConfig {
            ttl,
            max_stale,
            max_entries,
            max_weight,
            max_body,
            vary,
            credentials,
            ..CacheConfig::default()
        };
        match fuzz::bounded(GLOBAL, || config.build_http()) {
            Ok(layer) => {
                let svc = layer.layer(service_fn(|_: http::Request<()>| async {
                    Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok"))))
                }));
                let status = fuzz::finishes(async move {
                    svc.oneshot(http::Request::get("/").body(()).unwrap()).await.unwrap().status()
                });
                prop_assert_eq!(status, http::StatusCode::OK);
            }
            Err(e) => prop_assert!(
                ["ttl", "max_entries", "max_weight", "vary"].contains(&e.field()),
                "{}", e
            ),
        }
    }
}

#[cfg(feature = "serde")]
#[test]
fn the_config_reads_humantime_durations_and_round_trips() {
    let config: CacheConfig = serde_json::from_str(
        r#"{ "name": "pages", "ttl": "1m 30s", "max_stale": "10m", "stale_while_revalidate": true,
             "max_entries": 100, "credentials": "in_key" }"#,
    )
    .unwrap();
    assert_eq!(config.ttl, std::time::Duration::from_secs(90));
    assert_eq!(config.credentials, Credentials::InKey);
    let back: CacheConfig = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
    assert_eq!(back, config);
    assert!(serde_json::from_str::<CacheConfig>(r#"{ "tll": "1s" }"#).is_err());
    let layer = config.builder(|k: &u32| Some(*k)).build().unwrap();
    let _: &buttress_cache::CacheLayer<buttress_cache::ByKey<_, u32, u32>> = &layer;
}
