//! The HTTP preset in an axum router: an open breaker's rejection becomes
//! a marked 503 with a JSON body, and the route stays `Infallible` with
//! `ErrorToResponseLayer` above it.

use std::time::Duration;

use axum::body::Body;
use axum::Router;
use buttress_circuit_breaker::CircuitBreakerLayer;
use buttress_core::response::ErrorToResponseLayer;
use buttress_core::BoxError;
use buttress_fallback::{FallbackLayer, FallbackUsed, FALLBACK_HEADER};
use http::{Request, Response};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn an_axum_route_answers_503_json_while_the_breaker_is_open() {
    let breaker = CircuitBreakerLayer::builder()
        .name("db")
        .window_size(3)
        .minimum_calls(3)
        .wait_in_open(Duration::from_secs(20))
        .build()
        .unwrap();
    let protected = ServiceBuilder::new()
        .layer(ErrorToResponseLayer::new())
        .layer(
            FallbackLayer::http_unavailable::<Body>()
                .name("edge")
                .marker_header(FALLBACK_HEADER)
                .build()
                .unwrap(),
        )
        .layer(breaker.clone())
        .service_fn(|req: Request<Body>| async move {
            if req.uri().path() == "/fail" {
                Err::<Response<Body>, BoxError>("db down".into())
            } else {
                Ok(Response::new(Body::from("rows")))
            }
        });
    let app = Router::new()
        .route_service("/", protected.clone())
        .route_service("/fail", protected);

    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let res = app.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get(FALLBACK_HEADER).is_none());

    // Two failures: each answered by the fallback (reason `error`), and
    // the breaker opens (two failures in three calls).
    for _ in 0..2 {
        let res = app.clone().oneshot(get("/fail")).await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()[FALLBACK_HEADER], "edge; reason=error");
    }
    assert_eq!(
        breaker.handle().state(),
        buttress_circuit_breaker::State::Open
    );

    // Open: even the healthy route is answered by the fallback, with the
    // breaker's wait as Retry-After.
    let res = app.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "20");
    assert_eq!(res.headers()[FALLBACK_HEADER], "edge; reason=circuit_open");
    assert_eq!(
        res.extensions().get::<FallbackUsed>().unwrap().name(),
        "edge"
    );
    let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
    assert_eq!(
        &body[..],
        br#"{"error":"service_unavailable","reason":"circuit_open","retry_after":20}"#
    );
}
