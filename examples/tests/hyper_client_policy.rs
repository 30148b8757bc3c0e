//! Runs the `hyper_client_policy` example against its flaky price service
//! and checks each step.

// The example itself, compiled into this test; its `main` is unused here.
#[allow(dead_code)]
#[path = "../hyper_client_policy.rs"]
mod hyper_client_policy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_recover_the_breaker_opens_and_the_fallback_answers_while_open() {
    let lines = hyper_client_policy::run().await.expect("the example runs");
    assert_eq!(
        lines,
        [
            r#"transient: 200 OK "42", 3 call(s) to the price service"#,
            r#"hung: 200 OK "42", 2 call(s) to the price service"#,
            r#"outage: 503 Service Unavailable "down\n", 3 call(s) to the price service"#,
            "breaker `policy.circuit_breaker`: Open",
            r#"while open: 200 OK "40 (last known)", x-fallback: last-known-price; reason=circuit_open, 0 call(s) to the price service"#,
            r#"while open: 200 OK "40 (last known)", x-fallback: last-known-price; reason=circuit_open, 0 call(s) to the price service"#,
            r#"while open: 200 OK "40 (last known)", x-fallback: last-known-price; reason=circuit_open, 0 call(s) to the price service"#,
        ]
    );
}
