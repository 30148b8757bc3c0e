//! buttress protecting a real axum server on 127.0.0.1: statuses, headers
//! and shared state as a client sees them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get as get_route;
use axum::Router;
use buttress::bulkhead::{BulkheadHandle, BulkheadLayer, BulkheadSnapshot};
use buttress::timeout::TimeoutLayer;
use buttress::ServiceBuilderExt;
use buttress_integration_tests::{client, get, TestServer};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;

/// Waits (bounded) until the bulkhead's snapshot satisfies `what`.
async fn until(handle: &BulkheadHandle, what: &str, test: impl Fn(&BulkheadSnapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !test(&handle.snapshot()) {
        assert!(Instant::now() < deadline, "bulkhead never reached: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn until_active(handle: &BulkheadHandle, active: usize) {
    until(handle, "active calls", |s| s.active == active).await;
}

/// A router whose `/hold` handler waits for the gate; `/fast` answers.
fn gated_app(gate: Arc<Semaphore>) -> Router {
    Router::new()
        .route(
            "/hold",
            get_route(move || {
                let gate = gate.clone();
                async move {
                    gate.acquire().await.expect("gate open").forget();
                    "released"
                }
            }),
        )
        .route("/fast", get_route(|| async { "fast" }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_bulkhead_sheds_with_503_and_recovers() {
    let bulkhead = BulkheadLayer::builder()
        .name("api")
        .max_concurrent(2)
        .build()
        .unwrap();
    let handle = bulkhead.handle();
    let gate = Arc::new(Semaphore::new(0));
    let app = gated_app(gate.clone()).layer(
        ServiceBuilder::new()
            .error_to_response()
            .bulkhead_with(bulkhead)
            .call_timeout(Duration::from_secs(5))
            .unwrap(),
    );
    let server = TestServer::start(app).await;
    let http = client();

    let held: Vec<_> = (0..2)
        .map(|_| {
            let http = http.clone();
            let url = server.url("/hold");
            tokio::spawn(async move { get(&http, &url, &[]).await })
        })
        .collect();
    until_active(&handle, 2).await;

    let shed = get(&http, &server.url("/fast"), &[]).await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.retry_after.as_deref(), Some("1"), "the default hint");
    assert_eq!(shed.body, "", "no error text leaks to the client");
    assert_eq!(handle.snapshot().rejected, 1);

    gate.add_permits(2);
    for h in held {
        let reply = h.await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (200, "released"));
    }
    until_active(&handle, 0).await;
    assert_eq!(get(&http, &server.url("/fast"), &[]).await.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_request_that_waits_too_long_gets_503() {
    let bulkhead = BulkheadLayer::builder()
        .name("queue")
        .max_concurrent(1)
        .max_queue(1)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let handle = bulkhead.handle();
    let gate = Arc::new(Semaphore::new(0));
    let app = gated_app(gate.clone()).layer(
        ServiceBuilder::new()
            .error_to_response()
            .bulkhead_with(bulkhead),
    );
    let server = TestServer::start(app).await;
    let http = client();

    let holder = {
        let (http, url) = (http.clone(), server.url("/hold"));
        tokio::spawn(async move { get(&http, &url, &[]).await })
    };
    until_active(&handle, 1).await;

    let started = Instant::now();
    let waited = get(&http, &server.url("/fast"), &[]).await;
    assert_eq!(waited.status, 503);
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "waited in the queue first"
    );
    until(&handle, "empty queue", |s| s.queued == 0).await;

    gate.add_permits(1);
    assert_eq!(holder.await.unwrap().status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_times_out_with_504() {
    let app = Router::new()
        .route(
            "/slow",
            get_route(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        )
        .layer(
            ServiceBuilder::new()
                .error_to_response()
                .call_timeout(Duration::from_millis(50))
                .unwrap(),
        );
    let server = TestServer::start(app).await;
    let started = Instant::now();
    let reply = get(&client(), &server.url("/slow"), &[]).await;
    assert_eq!(reply.status, 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_header_shortens_the_server_timeout() {
    let timeout = TimeoutLayer::builder(Duration::from_secs(5))
        .name("handlers")
        .build()
        .unwrap()
        .for_http();
    let app = Router::new()
        .route(
            "/slow",
            get_route(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "late"
            }),
        )
        .layer(
            ServiceBuilder::new()
                .error_to_response()
                .timeout_with(timeout),
        );
    let server = TestServer::start(app).await;
    let http = client();

    let started = Instant::now();
    let reply = get(&http, &server.url("/slow"), &[("grpc-timeout", "40m")]).await;
    assert_eq!(reply.status, 504);
    assert!(started.elapsed() < Duration::from_millis(550));

    // A malformed value is ignored: the configured 5 s applies.
    let reply = get(&http, &server.url("/slow"), &[("grpc-timeout", "soon")]).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "late"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bulkhead_is_shared_by_every_route_it_is_applied_to() {
    // axum calls `layer()` once per route: the permits must still be shared.
    let bulkhead = BulkheadLayer::builder()
        .name("shared")
        .max_concurrent(1)
        .build()
        .unwrap();
    let handle = bulkhead.handle();
    let gate = Arc::new(Semaphore::new(0));
    let stack = ServiceBuilder::new()
        .error_to_response()
        .bulkhead_with(bulkhead);
    let g = gate.clone();
    let app = Router::new()
        .route(
            "/a",
            get_route(move || {
                let g = g.clone();
                async move {
                    g.acquire().await.unwrap().forget();
                    "a"
                }
            })
            .layer(stack.clone()),
        )
        .route("/b", get_route(|| async { "b" }).layer(stack));
    let server = TestServer::start(app).await;
    let http = client();

    let a = {
        let (http, url) = (http.clone(), server.url("/a"));
        tokio::spawn(async move { get(&http, &url, &[]).await })
    };
    until_active(&handle, 1).await;
    assert_eq!(get(&http, &server.url("/b"), &[]).await.status, 503);
    gate.add_permits(1);
    assert_eq!(a.await.unwrap().status, 200);
    until_active(&handle, 0).await;
    assert_eq!(get(&http, &server.url("/b"), &[]).await.status, 200);
    server.shutdown().await;
}
