//! `ChaosConfig`: serde shapes, defaults and validation with typed errors.
#![cfg(feature = "serde")]

use std::time::Duration;

use buttress_chaos::{ChaosConfig, Latency, RouteConfig};

fn parse(json: &str) -> ChaosConfig {
    serde_json::from_str(json).unwrap()
}

#[test]
fn defaults_build_a_layer_that_is_off() {
    let config = parse("{}");
    assert_eq!(config, ChaosConfig::default());
    let s = config.build().unwrap().handle().snapshot();
    assert!(!s.enabled);
    assert_eq!((s.error_rate, s.latency_rate, s.hang_rate), (0.0, 0.0, 0.0));
}

#[test]
fn every_latency_shape_parses_with_humantime_durations() {
    let cases = [
        (
            r#"{ "fixed": "1s 500ms" }"#,
            Latency::Fixed(Duration::from_millis(1500)),
        ),
        (
            r#"{ "uniform": { "min": "5ms", "max": "1m" } }"#,
            Latency::Uniform {
                min: Duration::from_millis(5),
                max: Duration::from_secs(60),
            },
        ),
        (
            r#"{ "exponential": { "mean": "20ms" } }"#,
            Latency::Exponential {
                mean: Duration::from_millis(20),
            },
        ),
        (
            r#"{ "normal": { "mean": "50ms", "std_dev": "5ms" } }"#,
            Latency::Normal {
                mean: Duration::from_millis(50),
                std_dev: Duration::from_millis(5),
            },
        ),
    ];
    for (json, expected) in cases {
        let config = parse(&format!(r#"{{ "latency_rate": 0.5, "latency": {json} }}"#));
        assert_eq!(config.latency, expected);
        assert_eq!(
            config.build().unwrap().handle().snapshot().latency,
            expected
        );
        // And back.
        let again: ChaosConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
    }
}

#[test]
fn bad_values_are_typed_errors_naming_the_field() {
    let field = |json: &str| {
        let e = parse(json).build().unwrap_err();
        assert_eq!(e.component(), "chaos");
        e.field()
    };
    assert_eq!(field(r#"{ "error_rate": 1.5 }"#), "error_rate");
    assert_eq!(field(r#"{ "error_rate": -0.5 }"#), "error_rate");
    assert_eq!(field(r#"{ "latency_rate": 2 }"#), "latency_rate");
    assert_eq!(field(r#"{ "hang_rate": 1.1 }"#), "hang_rate");
    assert_eq!(
        field(r#"{ "error_rate": 0.7, "hang_rate": 0.7 }"#),
        "error_rate"
    );
    assert_eq!(field(r#"{ "name": "" }"#), "name");
    assert_eq!(field(r#"{ "abort_body_rate": 0.1 }"#), "abort_body_rate");
    assert_eq!(
        field(r#"{ "routes": [{ "path": "/a" }] }"#),
        "routes",
        "routes need build_http"
    );
    assert_eq!(
        field(r#"{ "latency": { "uniform": { "min": "2s", "max": "1s" } } }"#),
        "latency"
    );
    assert_eq!(field(r#"{ "latency": { "fixed": "2days" } }"#), "latency");

    let http = |json: &str| parse(json).build_http().unwrap_err().field();
    assert_eq!(http(r#"{ "routes": [{ "path": "no-slash" }] }"#), "routes");
    assert_eq!(
        http(r#"{ "routes": [{ "method": "GE T", "path": "/" }] }"#),
        "routes"
    );
    assert_eq!(http(r#"{ "truncate_body_rate": 3 }"#), "truncate_body_rate");
}

#[test]
fn malformed_documents_are_serde_errors_not_panics() {
    for json in [
        r#"{ "error_rate": "high" }"#,
        r#"{ "latency": { "fixed": "soon" } }"#,
        r#"{ "latency": { "gamma": { "mean": "1s" } } }"#,
        r#"{ "unknown": 1 }"#,
        r#"{ "routes": [{ "path": "/", "host": "x" }] }"#,
        r#"{ "seed": -1 }"#,
    ] {
        assert!(serde_json::from_str::<ChaosConfig>(json).is_err(), "{json}");
    }
}

#[test]
fn routes_from_a_config_select_by_method_and_prefix() {
    let config = ChaosConfig {
        routes: vec![
            RouteConfig {
                method: Some("GET".into()),
                path: "/api/*".into(),
            },
            RouteConfig {
                method: None,
                path: "/pay".into(),
            },
        ],
        ..ChaosConfig::default()
    };
    assert_eq!(config.routes().unwrap().len(), 2);
    config.build_http().unwrap();
}
