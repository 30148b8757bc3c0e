//! Random configs and builder inputs: validation returns an error or a
//! working layer, never a panic, a hang or a huge allocation.

use std::alloc::System;

use buttress_core::BoxError;
use buttress_fallback::{FallbackConfig, Kinds, Rules};
use buttress_test_support::fuzz;
use proptest::prelude::*;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{service_fn, Layer, ServiceExt};

/// Counts the test binary's allocations, so that `bounded` can check them.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn labels() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("circuit_open".to_owned()),
        Just("timeout".to_owned()),
        Just("elapsed".to_owned()),
        Just("bulkhead_full".to_owned()),
        Just("rate_limited".to_owned()),
        Just("retry_exhausted".to_owned()),
        Just("key_missing".to_owned()),
        Just(String::new()),
        "[a-z_]{0,16}",
        any::<String>(),
    ]
}

fn statuses() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(0),
        Just(99),
        Just(100),
        Just(503),
        Just(999),
        Just(1000),
        Just(u16::MAX),
        any::<u16>()
    ]
}

fn configs() -> impl Strategy<Value = FallbackConfig> {
    (
        prop_oneof![
            Just(String::new()),
            Just("fallback".to_owned()),
            any::<String>()
        ],
        proptest::option::of(proptest::collection::vec(labels(), 0..8)),
        proptest::collection::vec(statuses(), 0..8),
        proptest::option::of(prop_oneof![
            Just("x-fallback".to_owned()),
            Just(String::new()),
            "[a-zA-Z0-9 -]{0,12}",
            any::<String>(),
        ]),
    )
        .prop_map(|(name, kinds, statuses, header)| FallbackConfig {
            name,
            kinds,
            statuses,
            header,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_config_is_an_error_or_a_working_layer(config in configs()) {
        match fuzz::bounded(GLOBAL, || config.http_unavailable::<String>().and_then(|b| b.build())) {
            Ok(layer) => {
                let svc = layer.layer(service_fn(|_: http::Request<()>| async {
                    Err::<http::Response<String>, BoxError>("down".into())
                }));
                let out = fuzz::finishes(svc.oneshot(http::Request::new(())));
                // `kinds` may leave plain errors out; either way, no panic.
                if config.kinds.is_none() {
                    prop_assert_eq!(out.unwrap().status(), 503);
                }
            }
            Err(e) => {
                prop_assert_eq!(e.component(), "fallback");
                prop_assert!(["name", "kinds", "statuses", "header"].contains(&e.field()), "{}", e);
            }
        }
    }

    #[test]
    fn rules_and_kinds_never_panic(labels in proptest::collection::vec(labels(), 0..8), codes in proptest::collection::vec(statuses(), 0..16)) {
        let kinds = labels.iter().filter_map(|l| Kinds::parse(l)).fold(Kinds::none(), Kinds::union);
        let valid = codes.iter().all(|c| (100..=999).contains(c));
        let rules = Rules::new().kinds(kinds).statuses(codes.iter().copied());
        prop_assert_eq!(rules.is_ok(), valid);
    }
}
