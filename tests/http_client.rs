//! buttress layers around a hyper-util client talking to a real server on
//! 127.0.0.1: typed errors a caller can act on.

use std::time::Duration;

use axum::routing::get as get_route;
use axum::Router;
use buttress::bulkhead::BulkheadLayer;
use buttress::core::error::{kind_of, BulkheadFull};
use buttress::timeout::error::Elapsed;
use buttress::timeout::TimeoutLayer;
use buttress::{ErrorKind, ServiceBuilderExt};
use buttress_integration_tests::{client, TestServer};
use tower::{Service, ServiceBuilder, ServiceExt};

fn slow_server() -> Router {
    Router::new()
        .route(
            "/slow",
            get_route(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        )
        .route("/fast", get_route(|| async { "fast" }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_fails_with_a_typed_elapsed() {
    let server = TestServer::start(slow_server()).await;
    let timeout = TimeoutLayer::builder(Duration::from_millis(50))
        .name("upstream")
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .timeout_with(timeout)
        .service(client());

    let req = http::Request::get(server.url("/slow"))
        .body(String::new())
        .unwrap();
    let err = svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(kind_of(&*err), Some(ErrorKind::Timeout));
    assert_eq!(err.downcast_ref::<Elapsed>().unwrap().name(), "upstream");

    let req = http::Request::get(server.url("/fast"))
        .body(String::new())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_bulkhead_rejects_the_call_beyond_its_limit() {
    let server = TestServer::start(slow_server()).await;
    let bulkhead = BulkheadLayer::builder()
        .name("upstream-pool")
        .max_concurrent(1)
        .build()
        .unwrap();
    let mut first = ServiceBuilder::new()
        .bulkhead_with(bulkhead.clone())
        .call_timeout(Duration::from_secs(5))
        .unwrap()
        .service(client());
    let second = ServiceBuilder::new()
        .bulkhead_with(bulkhead)
        .service(client());

    // The first caller holds the only permit while its slow call runs.
    let slow = http::Request::get(server.url("/slow"))
        .body(String::new())
        .unwrap();
    let in_flight = first.ready().await.unwrap().call(slow);
    let in_flight = tokio::spawn(in_flight);

    let fast = http::Request::get(server.url("/fast"))
        .body(String::new())
        .unwrap();
    let err = second.oneshot(fast).await.unwrap_err();
    let full = err.downcast_ref::<BulkheadFull>().expect("a BulkheadFull");
    assert_eq!(full.name(), "upstream-pool");
    in_flight.abort();
    server.shutdown().await;
}
