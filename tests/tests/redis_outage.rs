//! Redis killed mid-run, end to end on 127.0.0.1: a real `redis-server`
//! (started on a free loopback port, killed with SIGKILL, restarted on the
//! same port) behind the Redis-backed rate limiter and the Redis-backed
//! HTTP cache of the real client stack (a total timeout, the Redis layer,
//! a hyper-util client to an axum server that counts what reaches it).
//!
//! Redis is a separate process, so the clock runs for real here; the
//! assertions are on counts only (calls admitted, rejected, decided by
//! whom, answered by the upstream), and on one bound: no call ends by the
//! total timeout, so a dead Redis never holds a request.
//!
//! Needs `redis-server` on `PATH` (`bash scripts/test.sh` installs it).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use buttress::core::error::find;
use buttress::core::{BoxError, Elapsed, RateLimited};
use buttress::ServiceBuilderExt;
use buttress_cache::redis::RedisOptions;
use buttress_cache::{CacheEvent, CacheLayer, CacheStatus};
use buttress_integration_tests::TestServer;
use buttress_rate_limit::redis::{OutagePolicy, RedisRateLimitLayer};
use buttress_rate_limit::{Backend, Rate};
use buttress_test_support::redis_server::Server;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};

/// The limit: 5 per hour, so nothing refills during a test.
const BURST: u64 = 5;
/// Calls made while Redis is down.
const DURING: u64 = 12;
/// Every call's total timeout: far above the decision timeout and the
/// connection attempts, so a call that ends by it was held by Redis.
const TOTAL: Duration = Duration::from_secs(5);

/// A server on 127.0.0.1 whose one route counts its hits and answers
/// with the hit's number.
async fn upstream() -> (TestServer, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/hot",
        get(move || {
            let n = h.fetch_add(1, SeqCst) + 1;
            async move { format!("answer {n}") }
        }),
    );
    (TestServer::start(app).await, hits)
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get_req(url: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// What one rate-limited call ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Ok,
    RateLimited,
}

async fn call<S, B>(svc: &mut S, url: &str) -> End
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>, Error = BoxError>,
{
    match svc.ready().await.expect("ready").call(get_req(url)).await {
        Ok(res) => {
            assert_eq!(res.status(), 200);
            End::Ok
        }
        Err(e) if find::<Elapsed>(&*e).is_some() => panic!("a call was held by Redis: {e}"),
        Err(e) if find::<RateLimited>(&*e).is_some() => End::RateLimited,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// The text of a cached call's answer, and whether the cache served it.
async fn fetch<S, B>(svc: &S, url: &str) -> (String, bool)
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<B>, Error = BoxError> + Clone,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let res = svc
        .clone()
        .oneshot(get_req(url))
        .await
        .unwrap_or_else(|e| panic!("never an error: {e}"));
    assert_eq!(res.status(), 200);
    let hit = matches!(
        res.extensions().get::<CacheStatus>(),
        Some(CacheStatus::Hit { .. })
    );
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(bytes.to_vec()).unwrap(), hit)
}

fn oks(ends: &[End]) -> u64 {
    ends.iter().filter(|e| **e == End::Ok).count() as u64
}

/// One run of the limiter under `policy`: Redis decides, is killed, the
/// policy decides every call, Redis comes back and decides again.
async fn limiter_outage_run(policy: OutagePolicy) {
    let mut redis = Server::start();
    let (server, hits) = upstream().await;
    let limiter = RedisRateLimitLayer::builder_url(redis.url(), Rate::per_hour(BURST))
        .name(format!("e2e-{policy}"))
        .outage(policy)
        // A loaded test machine must not turn into an outage.
        .decision_timeout(Duration::from_millis(500))
        .retry_backoff(Duration::from_millis(200))
        // Every decision goes to Redis (no replayed rejections), so the
        // counts below are Redis' own.
        .local_precheck(false)
        .build()
        .unwrap();
    let handle = limiter.handle();
    let mut stack = ServiceBuilder::new()
        .call_timeout(TOTAL)
        .unwrap()
        .layer(limiter)
        .service(client());
    let url = server.url("/hot");

    // Redis up: the burst, then rejections.
    let mut ends = Vec::new();
    for _ in 0..2 * BURST {
        ends.push(call(&mut stack, &url).await);
    }
    assert_eq!(ends[..BURST as usize], [End::Ok; BURST as usize]);
    assert_eq!(oks(&ends), BURST);
    assert_eq!(hits.load(SeqCst), BURST);
    let s = handle.snapshot();
    assert_eq!(
        (s.redis_decisions, s.permitted, s.rejected, s.redis_errors),
        (2 * BURST, BURST, BURST, 0),
        "{s:?}"
    );
    assert_eq!(s.backend, Some(Backend::Redis));

    // Killed: every call is decided by the policy, none reaches Redis,
    // none waits for it.
    redis.kill();
    let mut during = Vec::new();
    for _ in 0..DURING {
        during.push(call(&mut stack, &url).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admitted = match policy {
        // Availability before the limit.
        OutagePolicy::FailOpen => DURING,
        OutagePolicy::FailClosed => 0,
        // A fresh local limit with the same numbers: the burst.
        OutagePolicy::FallbackLocal => BURST,
        other => panic!("no expectation for {other}"),
    };
    assert_eq!(oks(&during), admitted, "{policy}: {during:?}");
    if policy == OutagePolicy::FallbackLocal {
        assert_eq!(during[..BURST as usize], [End::Ok; BURST as usize]);
    }
    assert_eq!(hits.load(SeqCst), BURST + admitted, "{policy}");
    let s = handle.snapshot();
    assert!(!s.redis_available, "{s:?}");
    assert!(s.redis_errors >= 1, "{s:?}");
    assert_eq!(
        s.redis_decisions,
        2 * BURST,
        "no decision came from a dead Redis"
    );
    let by_policy = s.local_fallback_decisions + s.outage_policy_decisions;
    assert_eq!(by_policy, DURING, "{s:?}");
    assert_eq!(
        (s.permitted, s.rejected),
        (BURST + admitted, BURST + DURING - admitted),
        "{s:?}"
    );

    // Restarted, empty: once the backoff ends, one call finds it again
    // (bounded: 200 calls, 50 ms apart).
    redis.restart();
    let mut back = None;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let end = call(&mut stack, &url).await;
        if handle.snapshot().backend == Some(Backend::Redis) {
            back = Some(end);
            break;
        }
    }
    let s = handle.snapshot();
    assert_eq!(back, Some(End::Ok), "decisions back to Redis: {s:?}");
    assert!(s.redis_available);
    assert_eq!(s.redis_decisions, 2 * BURST + 1);
    // The new server's limit is enforced again: the rest of its burst.
    let mut after = Vec::new();
    for _ in 0..2 * BURST {
        after.push(call(&mut stack, &url).await);
    }
    assert_eq!(oks(&after), BURST - 1, "{after:?}");
    let s = handle.snapshot();
    assert_eq!(s.redis_decisions, 4 * BURST + 1);
    assert_eq!(s.backend, Some(Backend::Redis));
    server.shutdown().await;
}

/// The rate limiter's outage policy holds when Redis is killed mid-run:
/// fail open admits every call, fail closed rejects every call, the local
/// fallback admits exactly the limit; decisions return to Redis after its
/// restart, and no call is held by the dead server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_the_rate_limiters_outage_policy_holds() {
    for policy in [
        OutagePolicy::FailOpen,
        OutagePolicy::FailClosed,
        OutagePolicy::FallbackLocal,
    ] {
        limiter_outage_run(policy).await;
    }
}

/// The HTTP cache with a Redis store keeps answering when Redis is killed
/// mid-run: before, one miss then hits; during, every call is answered by
/// the upstream (never an error); after the restart, the cache stores and
/// serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_the_cache_answers_through_the_upstream() {
    const CALLS: u64 = 20;
    let mut redis = Server::start();
    let (server, hits) = upstream().await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let cache = CacheLayer::http()
        .name("e2e-cache")
        .ttl(Duration::from_secs(60))
        .redis(
            RedisOptions::url(redis.url())
                .timeout(Duration::from_millis(500))
                .retry_backoff(Duration::from_millis(200)),
        )
        .on_event(move |ev: &CacheEvent| match ev {
            CacheEvent::StoreUnavailable { .. } => e.lock().unwrap().push("unavailable"),
            CacheEvent::StoreRecovered { .. } => e.lock().unwrap().push("recovered"),
            _ => {}
        })
        .build()
        .unwrap();
    let handle = cache.handle();
    let stack = ServiceBuilder::new()
        .call_timeout(TOTAL)
        .unwrap()
        .layer(cache)
        .service(client());
    let url = server.url("/hot");

    // Redis up: one miss, then hits of the stored answer.
    for i in 0..CALLS {
        let (text, hit) = fetch(&stack, &url).await;
        assert_eq!(text, "answer 1");
        assert_eq!(hit, i > 0);
    }
    assert_eq!(hits.load(SeqCst), 1);
    let s = handle.snapshot();
    assert_eq!((s.misses, s.hits, s.store_errors), (1, CALLS - 1, 0));

    // Killed: every call answered, by the upstream.
    redis.kill();
    for i in 0..CALLS {
        let (text, hit) = fetch(&stack, &url).await;
        assert_eq!(text, format!("answer {}", i + 2));
        assert!(!hit);
    }
    assert_eq!(hits.load(SeqCst), 1 + CALLS);
    assert!(handle.snapshot().store_errors >= 1);
    assert_eq!(*events.lock().unwrap(), ["unavailable"]);

    // Restarted, empty: back after the backoff (bounded: 200 calls, 50 ms
    // apart), then the answer is stored again and served from Redis.
    redis.restart();
    let mut recovered = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        fetch(&stack, &url).await;
        if events.lock().unwrap().contains(&"recovered") {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "{:?}", events.lock().unwrap());
    let before = hits.load(SeqCst);
    let mut served = 0;
    for _ in 0..5 {
        let (_, hit) = fetch(&stack, &url).await;
        served += u64::from(hit);
    }
    // At most one more miss (if the recovering call was not stored).
    assert!(hits.load(SeqCst) <= before + 1);
    assert!(served >= 4, "served {served} of 5 from Redis");
    assert_eq!(*events.lock().unwrap(), ["unavailable", "recovered"]);
    server.shutdown().await;
}
