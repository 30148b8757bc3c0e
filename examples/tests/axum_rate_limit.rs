//! Runs the `axum_rate_limit` example's server and checks what it prints.

// The example itself, compiled into this test; its `main` is unused here.
#[allow(dead_code)]
#[path = "../axum_rate_limit.rs"]
mod axum_rate_limit;

use std::sync::Arc;

use buttress::Registry;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_rate_limit_example_answers_429_past_the_burst_and_again_a_second_later() {
    let lines = axum_rate_limit::run().await.expect("the example runs");
    assert_eq!(
        lines,
        [
            r#"200 OK, RateLimit: "api";r=1;t=1"#,
            r#"200 OK, RateLimit: "api";r=0;t=1"#,
            r#"429 Too Many Requests, RateLimit: "api";r=0;t=1, Retry-After: 1"#,
            r#"200 OK, RateLimit: "api";r=1;t=1"#,
            "per-client limit `api`: 3 admitted, 1 rejected, 1 client",
        ]
    );
}

#[tokio::test]
async fn without_connect_info_a_request_has_no_client_ip_and_is_refused() {
    // Served without `into_make_service_with_connect_info`, no request
    // carries a peer address: the limiter refuses it (500) rather than
    // putting every client in one shared bucket.
    let limit = axum_rate_limit::per_client(&Registry::new(), Arc::default()).unwrap();
    let app = axum_rate_limit::app(limit);
    let req = http::Request::get("/")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 500);
}
