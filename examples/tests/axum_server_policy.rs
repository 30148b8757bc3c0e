//! Runs the `axum_server_policy` example against its server and checks
//! every answer.

// The example itself, compiled into this test; its `main` is unused here.
#[allow(dead_code)]
#[path = "../axum_server_policy.rs"]
mod axum_server_policy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_policy_limits_each_client_sheds_past_the_bulkhead_and_times_out() {
    let lines = axum_server_policy::run().await.expect("the example runs");
    assert_eq!(
        lines,
        [
            "203.0.113.1 GET / -> 200 OK",
            "203.0.113.2 GET / -> 200 OK",
            "203.0.113.2 GET / -> 200 OK",
            "203.0.113.2 GET / -> 200 OK",
            "203.0.113.2 GET / -> 429 Too Many Requests, Retry-After: 1",
            "203.0.113.3 GET / -> 200 OK",
            "203.0.113.10 GET /slow -> 200 OK",
            "203.0.113.11 GET /slow -> 200 OK",
            "203.0.113.12 GET /slow -> 503 Service Unavailable, Retry-After: 1",
            "203.0.113.20 GET /stuck -> 504 Gateway Timeout",
        ]
    );
}
