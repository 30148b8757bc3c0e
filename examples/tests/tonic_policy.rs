//! Runs the `tonic_policy` example (two tonic servers and a client on
//! 127.0.0.1) and checks the statuses and the health flip.

// The example itself, compiled into this test; its `main` is unused here.
#[allow(dead_code)]
#[path = "../tonic_policy.rs"]
mod tonic_policy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_mapped_and_health_flips_when_the_critical_breaker_opens() {
    let lines = tonic_policy::run().await.expect("the example runs");
    assert_eq!(
        lines,
        [
            "app health: Serving",
            "payments call 1: Serving",
            // The server's bulkhead says "in a second"...
            r#"payments call 3: Unavailable "service unavailable" from the payments server, pushback 1 s"#,
            r#"payments call 4: Unavailable "service unavailable" from the payments server, pushback 1 s"#,
            // ...the open breaker "in a minute", its time in the open state.
            r#"payments call 5: Unavailable "service unavailable" from the app's breaker, pushback 60 s"#,
            "payments call 2: Serving",
            "app health: NotServing",
        ]
    );
}
