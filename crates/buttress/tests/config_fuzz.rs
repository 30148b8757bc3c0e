//! Policy files are untrusted input: any text is an error naming where,
//! or policies that build, never a panic, a hang or a huge allocation.
#![cfg(feature = "config")]
#![allow(missing_docs)]

use buttress::policy::{PolicyErrorKind, PolicySet, PolicySpec};
use buttress::Registry;
use proptest::prelude::*;

/// A slot's value: tables with numbers at and past their edges, strings,
/// booleans, or garbage.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("false".to_owned()),
        Just("true".to_owned()),
        "\"[0-9a-z ]{0,8}\"",
        Just("\"0s\"".to_owned()),
        Just("\"1000000000000000000000h\"".to_owned()),
        Just("\"100/1s\"".to_owned()),
        Just("\"0/1s\"".to_owned()),
    ]
}

fn field() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "max_attempts",
        "max_concurrent",
        "max_queue",
        "max_wait",
        "timeout",
        "failure_rate_threshold",
        "window_size",
        "minimum_calls",
        "wait_in_open",
        "rate",
        "burst",
        "max_delay",
        "percent",
        "nonsense",
    ])
}

fn slot() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "timeout",
        "retry",
        "circuit_breaker",
        "rate_limit",
        "bulkhead",
        "attempt_timeout",
        "per_client",
    ])
}

/// Policy files of the right shape with random contents.
fn file() -> impl Strategy<Value = String> {
    let entry = (
        slot(),
        prop::collection::vec((field(), value()), 0..4),
        any::<bool>(),
    );
    (
        prop::sample::select(vec!["api", "database", "none", "critical", "fast"]),
        prop::collection::vec(entry, 0..4),
    )
        .prop_map(|(preset, entries)| {
            let mut text = format!("[policies.p]\npreset = \"{preset}\"\n");
            for (slot, fields, inline) in entries {
                if inline {
                    text.push_str(&format!("{slot} = false\n"));
                    continue;
                }
                text.push_str(&format!("[policies.p.{slot}]\n"));
                for (f, v) in fields {
                    text.push_str(&format!("{f} = {v}\n"));
                }
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn shaped_files_build_or_name_the_field(text in file()) {
        match PolicySpec::from_toml(&text) {
            Err(e) => {
                prop_assert_eq!(e.kind(), PolicyErrorKind::Parse);
                prop_assert!(e.path().is_empty() || e.path().starts_with("policies"), "{}", e);
            }
            Ok(spec) => match PolicySet::new(spec, &Registry::new()) {
                Ok(_) => {}
                Err(e) => {
                    prop_assert!(e.path().starts_with("policies.p."), "{}", e);
                    prop_assert!(!e.reason().is_empty());
                }
            },
        }
    }

    #[test]
    fn any_text_in_any_format_is_an_error_or_a_spec(text in "\\PC{0,200}") {
        let _ = PolicySpec::from_toml(&text);
        let _ = PolicySpec::from_yaml(&text);
        let _ = PolicySpec::from_json(&text);
    }
}
