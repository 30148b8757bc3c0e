//! Fault scenarios end to end on 127.0.0.1 (upstream errors, upstream
//! hangs): a server whose handlers sit behind a chaos layer, called
//! through the real client stack (a total timeout, retry, circuit breaker,
//! a per-attempt timeout and a hyper-util client). Every assertion is on
//! counts (admitted, rejected, retried, faults injected, requests that
//! reached the handler), never on wall-clock timings: the runtime's clock
//! is paused, and the waits (backoff, timeouts, the breaker's open wait)
//! pass on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use buttress::circuit_breaker::{CircuitBreakerLayer, State};
use buttress::core::error::find;
use buttress::core::{BoxError, CircuitOpen, Elapsed, HttpClassifier};
use buttress::retry::{Backoff, Jitter, ReplayBody, RetryLayer};
use buttress::timeout::TimeoutLayer;
use buttress::ServiceBuilderExt;
use buttress_chaos::error::is_injected;
use buttress_chaos::{ChaosLayer, FaultKind};
use buttress_integration_tests::TestServer;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The breaker's open wait.
const OPEN_WAIT: Duration = Duration::from_secs(5);

/// A server on 127.0.0.1 whose one route counts the requests that reach
/// it; a chaos layer in front of the route turns injected errors into
/// 503s (an upstream in trouble).
async fn upstream(chaos: ChaosLayer) -> (TestServer, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/",
            get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|err: BoxError| async move {
                    assert!(is_injected(&*err), "only chaos fails here: {err}");
                    StatusCode::SERVICE_UNAVAILABLE
                }))
                .layer(chaos),
        );
    (TestServer::start(app).await, hits)
}

/// What one client call ended with.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Status(u16),
    CircuitOpen,
}

#[tokio::test(start_paused = true)]
async fn upstream_errors_open_the_breaker_within_its_window_and_it_recovers_after_its_wait() {
    let chaos = ChaosLayer::builder()
        .name("upstream-chaos")
        .seed(18)
        .error_rate(1.0)
        .build()
        .unwrap();
    let chaos_handle = chaos.handle();
    let (server, hits) = upstream(chaos).await;

    let breaker = CircuitBreakerLayer::builder()
        .name("upstream")
        .window_size(4)
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .wait_in_open(OPEN_WAIT)
        .permitted_calls_in_half_open(1)
        .classifier(HttpClassifier::new())
        .build()
        .unwrap();
    let breaker_handle = breaker.handle();
    // Two attempts, 100 ms apart; a hint longer than that (an open
    // breaker's remaining wait) is not waited for.
    let retry = RetryLayer::for_http()
        .name("upstream-retry")
        .max_attempts(2)
        .backoff(Backoff::fixed(Duration::from_millis(100)))
        .jitter(Jitter::None)
        .max_delay(Duration::from_millis(100))
        .build()
        .unwrap();
    let retry_handle = retry.handle();
    let client: Client<_, ReplayBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut stack = ServiceBuilder::new()
        .call_timeout(Duration::from_secs(10))
        .unwrap()
        .retry_with(retry)
        .circuit_breaker(breaker)
        .layer(TimeoutLayer::new(Duration::from_secs(2)).unwrap())
        .service(client);
    let url = server.url("/");
    let mut call = async || {
        let req = http::Request::get(&url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        match stack.ready().await.unwrap().call(req).await {
            Ok(res) => End::Status(res.status().as_u16()),
            Err(e) if find::<CircuitOpen>(&*e).is_some() => End::CircuitOpen,
            Err(e) => panic!("unexpected error: {e}"),
        }
    };

    // Off by default: the upstream answers.
    assert_eq!(call().await, End::Status(200));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(chaos_handle.snapshot().calls, 0);

    // The outage. The breaker's window of 4 was one success; the next two
    // calls make four attempts between them (each 503 retried once): at
    // the third failure of the window (3 of 4 = 75 % >= 50 %) it opens,
    // so the second call's retry is rejected by the breaker.
    chaos_handle.enable();
    assert_eq!(call().await, End::Status(503));
    assert_eq!(breaker_handle.state(), State::Closed);
    assert_eq!(call().await, End::CircuitOpen);
    assert_eq!(breaker_handle.state(), State::Open);
    // While open, nothing is sent and nothing is retried (the remaining
    // wait is longer than the retry's longest delay).
    for _ in 0..5 {
        assert_eq!(call().await, End::CircuitOpen);
    }
    let chaos_stats = chaos_handle.snapshot();
    assert_eq!(chaos_stats.injected(FaultKind::Error), 3);
    assert_eq!(chaos_stats.calls, 3);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "no failed call reached the handler"
    );
    let b = breaker_handle.snapshot();
    assert_eq!(b.not_permitted_calls, 6);
    let r = retry_handle.snapshot();
    assert_eq!(
        (
            r.retries,
            r.successful_without_retry,
            r.failed_with_retry,
            r.failed_without_retry
        ),
        (2, 1, 2, 5)
    );

    // The upstream recovers; the breaker still waits out its open time.
    chaos_handle.disable();
    tokio::time::sleep(OPEN_WAIT - Duration::from_secs(1)).await;
    assert_eq!(call().await, End::CircuitOpen);
    assert_eq!(breaker_handle.snapshot().not_permitted_calls, 7);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // After the wait, one probe is let through, succeeds, and closes it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(call().await, End::Status(200));
    assert_eq!(breaker_handle.state(), State::Closed);
    for _ in 0..3 {
        assert_eq!(call().await, End::Status(200));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 5);
    assert_eq!(breaker_handle.snapshot().not_permitted_calls, 7);
    let chaos_stats = chaos_handle.snapshot();
    assert_eq!(
        (chaos_stats.calls, chaos_stats.injected(FaultKind::Error)),
        (3, 3)
    );
    let r = retry_handle.snapshot();
    assert_eq!(
        (
            r.retries,
            r.successful_without_retry,
            r.failed_with_retry,
            r.failed_without_retry
        ),
        (2, 5, 2, 6)
    );
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn upstream_hangs_end_every_request_by_its_timeout() {
    const REQUESTS: u64 = 5;
    let chaos = ChaosLayer::builder()
        .name("hanging-upstream")
        .hang_rate(1.0)
        .enabled(true)
        .build()
        .unwrap();
    let chaos_handle = chaos.handle();
    let (server, hits) = upstream(chaos).await;

    // Two attempts of at most 2 s each, 100 ms apart, within a total of
    // 10 s: every request ends with its per-attempt timeout, retried once.
    let retry = RetryLayer::for_http()
        .name("hang-retry")
        .max_attempts(2)
        .backoff(Backoff::fixed(Duration::from_millis(100)))
        .jitter(Jitter::None)
        .max_delay(Duration::from_millis(100))
        .build()
        .unwrap();
    let retry_handle = retry.handle();
    let client: Client<_, ReplayBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut stack = ServiceBuilder::new()
        .call_timeout(Duration::from_secs(10))
        .unwrap()
        .retry_with(retry)
        .layer(TimeoutLayer::new(Duration::from_secs(2)).unwrap())
        .service(client);
    let url = server.url("/");
    for _ in 0..REQUESTS {
        let req = http::Request::get(&url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let err = stack.ready().await.unwrap().call(req).await.unwrap_err();
        let elapsed = find::<Elapsed>(&*err).unwrap_or_else(|| panic!("not a timeout: {err}"));
        assert_eq!(
            elapsed.timeout(),
            Duration::from_secs(2),
            "the per-attempt timeout"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let c = chaos_handle.snapshot();
    assert_eq!(
        (c.calls, c.injected(FaultKind::Hang)),
        (2 * REQUESTS, 2 * REQUESTS)
    );
    let r = retry_handle.snapshot();
    assert_eq!((r.retries, r.failed_with_retry), (REQUESTS, REQUESTS));
    assert_eq!(r.successful_without_retry + r.successful_with_retry, 0);
    server.shutdown().await;
}
