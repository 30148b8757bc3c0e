//! Property-based fuzzing of a `BulkheadConfig` read from text: its
//! humantime durations round trip, any text is a config or an error, and a
//! config that builds is the one its layer's handle reports.
//!
//! Case counts are bounded and inputs are short, so each property ends in
//! well under a second.
#![cfg(feature = "serde")]

use buttress_bulkhead::{BulkheadConfig, MAX_CONCURRENT};
use buttress_test_support::fuzz::durations;
use proptest::prelude::*;

fn cases() -> ProptestConfig {
    ProptestConfig::with_cases(512)
}

fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0),
        Just(MAX_CONCURRENT),
        Just(MAX_CONCURRENT + 1),
        0usize..100,
        any::<usize>()
    ]
}

fn configs() -> impl Strategy<Value = BulkheadConfig> {
    (
        "[ -~]{0,12}",
        sizes(),
        sizes(),
        proptest::option::of(durations()),
        proptest::option::of(durations()),
    )
        .prop_map(
            |(name, max_concurrent, max_queue, max_wait, retry_after)| BulkheadConfig {
                name,
                max_concurrent,
                max_queue,
                max_wait,
                retry_after,
            },
        )
}

fn duration_texts() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{1,22} ?(ns|us|ms|s|m|h|d|w|M|y|sec|min|hours|days|years)?",
        "([0-9]{1,6}[a-z]{1,5} ?){1,4}",
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn a_config_round_trips_through_its_text(config in configs()) {
        let json = serde_json::to_string(&config).unwrap();
        let back: BulkheadConfig = serde_json::from_str(&json)
            .map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
        prop_assert_eq!(back, config);
    }

    #[test]
    fn any_config_text_is_a_layer_or_an_error(
        max_wait in duration_texts(),
        retry_after in duration_texts(),
        max_concurrent in sizes(),
    ) {
        let json = serde_json::json!({
            "max_concurrent": max_concurrent,
            "max_wait": max_wait,
            "retry_after": retry_after,
        });
        let Ok(config) = serde_json::from_value::<BulkheadConfig>(json) else { return Ok(()) };
        let again: BulkheadConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        prop_assert_eq!(&again, &config);
        // Built, the layer runs with exactly these settings.
        if let Ok(layer) = config.build() {
            prop_assert_eq!(layer.handle().config(), config);
        }
    }
}
