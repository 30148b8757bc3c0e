//! Malformed config and bad input never panic: random settings, random
//! JSON configs, random dependency graphs, random URLs and thresholds give
//! an error naming the field or a registry whose probe finishes.

use std::alloc::System;
use std::time::Duration;

use buttress_core::Registry;
use buttress_health::{
    BulkheadsCheck, Check, CheckConfig, HealthConfig, HealthRegistry, RateLimitersCheck,
    RegisterError, Status,
};
use buttress_test_support::fuzz::{self, counts, durations, floats};
use proptest::prelude::*;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

/// Counts the test binary's allocations, so that `bounded` can check them.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const FIELDS: [&str; 4] = ["timeout", "interval", "retries", "retry_delay"];

fn check_config() -> impl Strategy<Value = CheckConfig> {
    (
        proptest::option::of(durations()),
        proptest::option::of(durations()),
        proptest::option::of(counts()),
        proptest::option::of(durations()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(
            |(timeout, interval, retries, retry_delay, critical, startup)| CheckConfig {
                timeout,
                interval,
                retries,
                retry_delay,
                critical,
                startup,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_settings_build_or_name_the_field_and_the_probe_finishes(
        own in check_config(),
        defaults in check_config(),
        named in check_config(),
    ) {
        let config = HealthConfig {
            defaults,
            checks: [("db".to_owned(), named)].into_iter().collect(),
        };
        let mut check = Check::new("db", || async { Status::Healthy });
        if let Some(t) = own.timeout { check = check.timeout(t); }
        if let Some(i) = own.interval { check = check.interval(i); }
        if let Some(r) = own.retries { check = check.retries(r); }
        if let Some(d) = own.retry_delay { check = check.retry_delay(d); }
        if let Some(c) = own.critical { check = check.critical(c); }
        if own.startup == Some(true) { check = check.startup(); }
        let built = fuzz::bounded(GLOBAL, || {
            HealthRegistry::builder().config(config).check(check).build()
        });
        match built {
            Err(e) => prop_assert!(FIELDS.contains(&e.field()), "{e}"),
            Ok(registry) => {
                let report = fuzz::finishes(registry.readiness());
                prop_assert_eq!(report.status, Status::Healthy);
                // A healthy check: whichever rule picks the startup checks,
                // startup has completed.
                let startup = fuzz::finishes(registry.startup());
                prop_assert_eq!(startup.status, Status::Healthy);
            }
        }
    }

    #[test]
    fn random_json_configs_parse_or_fail_and_never_panic(json in "\\PC{0,200}") {
        if let Ok(config) = serde_json::from_str::<HealthConfig>(&json) {
            let _ = config.validate();
        }
    }

    #[test]
    fn random_json_values_in_the_config_shape_never_panic(
        timeout in prop_oneof![Just("\"1s\"".to_owned()), Just("\"-1s\"".to_owned()), Just("null".to_owned()), Just("12".to_owned()), "\"[0-9a-z ]{0,12}\""],
        retries in prop_oneof![Just("3".to_owned()), Just("-1".to_owned()), Just("1e99".to_owned()), Just("\"x\"".to_owned()), Just("4294967296".to_owned())],
        name in "[a-z]{0,4}",
    ) {
        let json = format!(
            r#"{{"defaults": {{"timeout": {timeout}}}, "checks": {{"{name}": {{"retries": {retries}}}}}}}"#
        );
        if let Ok(config) = serde_json::from_str::<HealthConfig>(&json) {
            let built = HealthRegistry::builder()
                .config(config)
                .check(Check::new("db", || async { Status::Healthy }))
                .build();
            if let Err(e) = built {
                prop_assert!(["timeout", "retries", "checks"].contains(&e.field()), "{e}");
            }
        }
    }

    #[test]
    fn random_dependency_graphs_register_or_name_a_cycle_and_reports_follow_the_order(
        edges in proptest::collection::vec(proptest::collection::vec(0usize..8, 0..4), 1..8),
    ) {
        let registry = HealthRegistry::new();
        for (i, deps) in edges.iter().enumerate() {
            let mut check = Check::new(format!("c{i}"), || async { Status::Healthy });
            for d in deps {
                check = check.depends_on(format!("c{d}"));
            }
            match registry.register(check) {
                Ok(()) => {}
                Err(RegisterError::Cycle { cycle }) => {
                    prop_assert!(cycle.len() >= 2);
                    prop_assert_eq!(cycle.first(), cycle.last());
                    prop_assert_eq!(cycle[0].clone(), format!("c{i}"));
                    // Each name depends on the next.
                    for w in cycle.windows(2) {
                        let from: usize = w[0][1..].parse().unwrap();
                        let to: usize = w[1][1..].parse().unwrap();
                        prop_assert!(edges[from].contains(&to), "{:?}", cycle);
                    }
                }
                Err(other) => prop_assert!(false, "{other}"),
            }
        }
        let names = registry.names();
        let report = fuzz::finishes(registry.readiness());
        let reported: Vec<String> = report.checks.iter().map(|c| c.name.clone()).collect();
        prop_assert_eq!(&reported, &names);
        // Every registered dependency comes before its dependent.
        for (pos, c) in report.checks.iter().enumerate() {
            for d in &c.depends_on {
                if let Some(dpos) = names.iter().position(|n| n == d) {
                    prop_assert!(dpos < pos, "{d} after {}", c.name);
                }
            }
        }
    }

    #[test]
    fn random_thresholds_are_refused_or_accepted_never_panic(t in floats()) {
        let components = Registry::new();
        let ok = t.is_finite() && t > 0.0 && t <= 1.0;
        prop_assert_eq!(BulkheadsCheck::new(&components, t).is_ok(), ok);
        prop_assert_eq!(RateLimitersCheck::new(&components, t).is_ok(), ok);
    }
}

#[test]
fn empty_names_and_duplicates_are_refused() {
    let registry = HealthRegistry::new();
    let ok = || async { Status::Healthy };
    match registry.register(Check::new("", ok)).unwrap_err() {
        RegisterError::Config(e) => assert_eq!(e.field(), "name"),
        other => panic!("{other}"),
    }
    registry.register(Check::new("db", ok)).unwrap();
    assert_eq!(
        registry.register(Check::new("db", ok)).unwrap_err(),
        RegisterError::Duplicate { name: "db".into() }
    );
    let err = HealthRegistry::builder()
        .check(Check::new("db", ok))
        .check(Check::new("db", ok))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "name");
    let err = HealthRegistry::builder()
        .config(HealthConfig {
            checks: [("dbb".to_owned(), CheckConfig::default())]
                .into_iter()
                .collect(),
            ..HealthConfig::default()
        })
        .check(Check::new("db", ok))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "checks");
    assert_eq!(
        err.reason(),
        "the config names `dbb`, but no check has that name"
    );
}

#[test]
fn the_limits_are_inclusive_and_one_past_them_is_refused() {
    let ok = || async { Status::Healthy };
    let build = |c: Check| HealthRegistry::builder().check(c).build().map(drop);
    assert!(build(Check::new("a", ok).timeout(Duration::from_secs(3600))).is_ok());
    assert_eq!(
        build(Check::new("a", ok).timeout(Duration::from_secs(3601)))
            .unwrap_err()
            .field(),
        "timeout"
    );
    assert_eq!(
        build(Check::new("a", ok).timeout(Duration::ZERO))
            .unwrap_err()
            .field(),
        "timeout"
    );
    assert_eq!(
        build(Check::new("a", ok).interval(Duration::ZERO))
            .unwrap_err()
            .field(),
        "interval"
    );
    assert!(build(Check::new("a", ok).retries(10)).is_ok());
    assert_eq!(
        build(Check::new("a", ok).retries(11)).unwrap_err().field(),
        "retries"
    );
    assert_eq!(
        build(Check::new("a", ok).retry_delay(Duration::from_secs(61)))
            .unwrap_err()
            .field(),
        "retry_delay"
    );
}
