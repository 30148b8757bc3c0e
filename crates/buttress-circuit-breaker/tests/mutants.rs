//! Tests that pin behaviour which `cargo mutants -p buttress-circuit-breaker`
//! found unchecked in `src/state.rs`: each one fails under at least one
//! mutant that the other tests of the crate let through.

use buttress_circuit_breaker::{CircuitBreakerLayer, State};

#[test]
fn every_state_displays_its_snake_case_name() {
    let names = [
        (State::Closed, "closed"),
        (State::Open, "open"),
        (State::HalfOpen, "half_open"),
        (State::Disabled, "disabled"),
        (State::ForcedOpen, "forced_open"),
        (State::MetricsOnly, "metrics_only"),
    ];
    for (state, name) in names {
        assert_eq!(state.to_string(), name);
        assert_eq!(state.as_str(), name);
    }
}

#[tokio::test(start_paused = true)]
async fn debug_shows_the_name_and_the_state() {
    let layer = CircuitBreakerLayer::builder()
        .name("payments")
        .build()
        .unwrap();
    assert_eq!(
        format!("{:?}", layer.handle()),
        r#"CircuitBreaker { name: "payments", state: Closed, .. }"#
    );
}
