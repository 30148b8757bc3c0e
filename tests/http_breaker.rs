//! A circuit breaker in a real axum server on 127.0.0.1: a failing handler
//! opens it, the client then gets 503 with `Retry-After` at once, and it
//! closes again when the probes succeed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get as get_route;
use axum::Router;
use buttress::circuit_breaker::{CircuitBreakerLayer, State};
use buttress::core::HttpClassifier;
use buttress::ServiceBuilderExt;
use buttress_integration_tests::{client, get, TestServer};
use tower::ServiceBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_breaker_answers_503_with_retry_after_then_recovers() {
    let breaker = CircuitBreakerLayer::builder()
        .name("handlers")
        .window_size(4)
        .minimum_calls(4)
        .wait_in_open(Duration::from_millis(1_500))
        .permitted_calls_in_half_open(1)
        .classifier(HttpClassifier::new())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let app = Router::new()
        .route(
            "/",
            get_route(move || {
                let h = h.clone();
                async move {
                    if h.load(Ordering::SeqCst) {
                        (StatusCode::OK, "fine")
                    } else {
                        (StatusCode::INTERNAL_SERVER_ERROR, "broken")
                    }
                }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .error_to_response()
                .circuit_breaker(breaker),
        );
    let server = TestServer::start(app).await;
    let http = client();
    let url = server.url("/");

    for _ in 0..4 {
        assert_eq!(get(&http, &url, &[]).await.status, 500);
    }
    assert_eq!(handle.state(), State::Open);
    let shed = get(&http, &url, &[]).await;
    assert_eq!(shed.status, 503);
    // 1.5 s left at most, rounded up to whole seconds: 1 or 2.
    let retry_after: u64 = shed
        .retry_after
        .expect("a Retry-After header")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    assert_eq!(shed.body, "");

    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let probe = get(&http, &url, &[]).await;
    assert_eq!((probe.status, probe.body.as_str()), (200, "fine"));
    assert_eq!(handle.state(), State::Closed);
    server.shutdown().await;
}
