//! Retries during an outage stay within the retry budget: no retry storm.
//!
//! A server on 127.0.0.1 in a full outage (a chaos layer fails every
//! request with a 503), called through the real client stack (a total
//! timeout, retry with a budget, a per-attempt timeout, a hyper-util
//! client) by waves of concurrent callers. A middleware in front of the
//! chaos layer counts the attempts of each request (by its
//! `x-request-id`), so the test asserts, exactly: the attempts per
//! request, the retries in all, the budget's deposits, withdrawals and
//! refusals, and that the retries are the allowance the budget's config
//! gives (reserve + percent of the requests in the window), where retries
//! without a budget would have multiplied the upstream's load by
//! `max_attempts`. The clock is paused; nothing is timed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::routing::get;
use axum::Router;
use buttress::core::BoxError;
use buttress::retry::{Backoff, Jitter, ReplayBody, RetryBudget, RetryLayer};
use buttress::timeout::TimeoutLayer;
use buttress::ServiceBuilderExt;
use buttress_chaos::error::is_injected;
use buttress_chaos::{ChaosLayer, FaultKind};
use buttress_integration_tests::TestServer;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};

/// How long the upstream takes to answer (to fail) each attempt.
const UPSTREAM_LATENCY: Duration = Duration::from_millis(50);
/// Attempts per request the retry layer allows.
const MAX_ATTEMPTS: u32 = 4;
/// The budget: 20 % of requests, a floor of 1 retry per second, over 10 s.
const PERCENT: u64 = 20;
const MIN_PER_SEC: u64 = 1;
const TTL: Duration = Duration::from_secs(10);

/// Attempts seen by the upstream, per `x-request-id`.
type Attempts = Arc<Mutex<HashMap<String, u32>>>;

/// The upstream: counts each attempt by request id, waits
/// `UPSTREAM_LATENCY`, then the chaos layer fails it (or, with the chaos
/// switched off, the handler answers and counts a hit).
async fn upstream(chaos: ChaosLayer) -> (TestServer, Attempts, Arc<AtomicU64>) {
    let attempts: Attempts = Arc::default();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let a = attempts.clone();
    let app = Router::new()
        .route(
            "/",
            get(move || {
                h.fetch_add(1, SeqCst);
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
        )
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let a = a.clone();
            async move {
                let id = req.headers()["x-request-id"]
                    .to_str()
                    .expect("an ascii id")
                    .to_owned();
                *a.lock().unwrap().entry(id).or_insert(0) += 1;
                tokio::time::sleep(UPSTREAM_LATENCY).await;
                next.run(req).await
            }
        }));
    (TestServer::start(app).await, attempts, hits)
}

/// The retries a budget allows over one window of its ttl in which
/// `requests` requests were deposited: the reserve (`min_per_sec` × ttl)
/// and `percent` % of the requests, in whole retries.
fn allowance(requests: u64) -> u64 {
    MIN_PER_SEC * TTL.as_secs() + PERCENT * requests / 100
}

/// `n` callers at once, request ids `{wave}-0` .. `{wave}-{n-1}`; returns
/// the statuses they got.
async fn wave<S>(stack: &S, url: &str, wave: &str, n: usize) -> Vec<u16>
where
    S: tower::Service<
            http::Request<Full<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let svc = stack.clone();
            let req = http::Request::get(url)
                .header("x-request-id", format!("{wave}-{i}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            tokio::spawn(async move {
                let res = svc.oneshot(req).await.expect("a response");
                res.status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(n);
    for t in tasks {
        statuses.push(t.await.expect("caller panicked"));
    }
    statuses
}

/// The attempts of the requests of `wave`, as a histogram: attempts ->
/// requests that made that many.
fn histogram(attempts: &Attempts, wave: &str) -> HashMap<u32, usize> {
    let mut h = HashMap::new();
    for (id, n) in attempts.lock().unwrap().iter() {
        if id.starts_with(&format!("{wave}-")) {
            *h.entry(*n).or_insert(0) += 1;
        }
    }
    h
}

/// Two waves of 100 concurrent requests against an upstream that fails
/// every attempt, within one budget window. Every call deposits when it
/// starts (all at the same instant, before any attempt fails, since each
/// attempt takes 50 ms upstream), so every withdrawal sees every deposit
/// of its wave: the first wave's retries are exactly the reserve plus
/// 20 % of 100 (30), the second's exactly 20 % of its 100 (20; the
/// reserve is spent), and no request makes more than two attempts.
/// Without the budget the 200 requests would have made 800 attempts.
/// When the upstream recovers, calls succeed at the first attempt.
#[tokio::test(start_paused = true)]
async fn retries_during_an_outage_stay_within_the_budget() {
    const N: usize = 100;
    let chaos = ChaosLayer::builder()
        .name("outage")
        .seed(18)
        .error_rate(1.0)
        .enabled(true)
        .build()
        .unwrap();
    let chaos_handle = chaos.handle();
    let (server, attempts, hits) = upstream(chaos).await;
    let budget = RetryBudget::builder()
        .percent(PERCENT as f64)
        .min_per_sec(MIN_PER_SEC as u32)
        .ttl(TTL)
        .build()
        .unwrap();
    let retry = RetryLayer::for_http()
        .name("storm")
        .max_attempts(MAX_ATTEMPTS)
        .backoff(Backoff::fixed(Duration::from_millis(100)))
        .jitter(Jitter::None)
        .max_delay(Duration::from_millis(100))
        .budget(budget.clone())
        .build()
        .unwrap();
    let retry_handle = retry.handle();
    let client: Client<_, ReplayBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let stack = ServiceBuilder::new()
        .call_timeout(Duration::from_secs(10))
        .unwrap()
        .retry_with(retry)
        .layer(TimeoutLayer::new(Duration::from_secs(2)).unwrap())
        .service(client);
    let url = format!("http://{}/", server.addr);

    // Wave 1: the reserve (10) and 20 % of 100 (20).
    let statuses = wave(&stack, &url, "a", N).await;
    assert_eq!(statuses, vec![503; N], "every call ends with the 503");
    let retries_a = allowance(N as u64);
    assert_eq!(retries_a, 30);
    let h = histogram(&attempts, "a");
    assert_eq!(
        h,
        HashMap::from([(1, N - retries_a as usize), (2, retries_a as usize)]),
        "attempts per request"
    );
    let r = retry_handle.snapshot();
    assert_eq!(r.retries, retries_a);
    assert_eq!(
        (r.failed_with_retry, r.failed_without_retry),
        (retries_a, N as u64 - retries_a)
    );
    assert_eq!(r.successful_with_retry + r.successful_without_retry, 0);
    let b = budget.snapshot();
    assert_eq!(
        (b.deposits, b.withdrawals, b.available),
        (N as u64, retries_a, 0)
    );
    // Refused: each request's first retry beyond the budget, and the
    // second retry of each retried request.
    assert_eq!(b.refusals, N as u64);

    // Wave 2, in the same window: the reserve is spent, 20 % of 100.
    let statuses = wave(&stack, &url, "b", N).await;
    assert_eq!(statuses, vec![503; N]);
    let retries_b = allowance(2 * N as u64) - retries_a;
    assert_eq!(retries_b, 20);
    let h = histogram(&attempts, "b");
    assert_eq!(
        h,
        HashMap::from([(1, N - retries_b as usize), (2, retries_b as usize)])
    );
    let r = retry_handle.snapshot();
    assert_eq!(r.retries, retries_a + retries_b);
    assert!(r.retries <= allowance(2 * N as u64), "within the allowance");
    let b = budget.snapshot();
    assert_eq!((b.deposits, b.withdrawals), (2 * N as u64, 50));
    assert_eq!(b.refusals, 2 * N as u64);

    // What the upstream saw: 200 requests, 250 attempts (1.25 per
    // request, where the retry layer alone would have allowed 4).
    let total: u32 = attempts.lock().unwrap().values().sum();
    assert_eq!(total, 250);
    let c = chaos_handle.snapshot();
    assert_eq!((c.calls, c.injected(FaultKind::Error)), (250, 250));
    assert_eq!(hits.load(SeqCst), 0);

    // The upstream recovers: every call succeeds at its first attempt.
    chaos_handle.disable();
    let statuses = wave(&stack, &url, "c", 20).await;
    assert_eq!(statuses, vec![200; 20]);
    assert_eq!(histogram(&attempts, "c"), HashMap::from([(1, 20)]));
    assert_eq!(hits.load(SeqCst), 20);
    let r = retry_handle.snapshot();
    assert_eq!((r.retries, r.successful_without_retry), (50, 20));
    server.shutdown().await;
}
