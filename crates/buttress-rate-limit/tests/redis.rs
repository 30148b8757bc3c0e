//! The Redis backend against real redis-server processes: each test starts
//! its own on a free loopback port and kills it when done.
//!
//! Run with `cargo test -p buttress-rate-limit --features redis --test redis`
//! (`bash scripts/test.sh` installs redis-server when it is missing).

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buttress_core::error::{BoxError, KeyMissing};
use buttress_core::key::Header;
use buttress_core::RateLimited;
use buttress_rate_limit::redis::{OutagePolicy, RedisRateLimitLayer};
use buttress_rate_limit::{Backend, MissingKey, Rate, RateLimitEvent, RejectReason};
use tower::{Service, ServiceExt};

// ---------------------------------------------------------------------------
// A redis-server of the test's own.

use buttress_test_support::redis_server::Server;

async fn conn(server: &Server) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------
// Helpers.

fn ok_service() -> impl Service<
    http::Request<()>,
    Response = (),
    Error = Infallible,
    Future = impl Future<Output = Result<(), Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|_req: http::Request<()>| async { Ok::<_, Infallible>(()) })
}

fn req() -> http::Request<()> {
    http::Request::new(())
}

fn keyed_req(key: &str) -> http::Request<()> {
    http::Request::builder()
        .header("x-key", key)
        .body(())
        .unwrap()
}

async fn call<S>(svc: &mut S, req: http::Request<()>) -> Result<(), BoxError>
where
    S: Service<http::Request<()>, Response = (), Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

fn limited(e: &BoxError) -> &RateLimited {
    e.downcast_ref::<RateLimited>()
        .unwrap_or_else(|| panic!("not RateLimited: {e}"))
}

fn header() -> Header {
    Header::new(http::HeaderName::from_static("x-key"))
}

type Events = Arc<Mutex<Vec<(Backend, Option<RejectReason>)>>>;

fn recorder() -> (Events, impl Fn(&RateLimitEvent) + Send + Sync + 'static) {
    let events: Events = Arc::default();
    let sink = events.clone();
    let listener = move |e: &RateLimitEvent| {
        let entry = match e {
            RateLimitEvent::Permitted { backend, .. } => (*backend, None),
            RateLimitEvent::Rejected {
                backend, reason, ..
            } => (*backend, Some(*reason)),
            _ => return,
        };
        sink.lock().unwrap().push(entry);
    };
    (events, listener)
}

/// `cmdstat_evalsha` calls on the server.
async fn evalsha_calls(server: &Server) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn(server).await)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn building_needs_no_runtime_and_no_server() {
    let layer = RedisRateLimitLayer::builder_url("redis://127.0.0.1:1/", Rate::per_second(5))
        .build()
        .unwrap();
    let s = layer.handle().snapshot();
    assert_eq!(s.prefix, "buttress:rl:redis_rate_limit:");
    assert_eq!(s.backend, None);
    let err = RedisRateLimitLayer::builder_url("http://nope", Rate::per_second(5))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "url");
}

/// Two replicas (two layers, two connections) on one Redis admit together
/// exactly the limit over a burst of concurrent calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_limit_exactly() {
    let server = Server::start();
    let replica = || {
        RedisRateLimitLayer::builder_url(server.url(), Rate::per_hour(40))
            .name("shared")
            .keyed(header())
            // A loaded test machine must not turn into an outage here.
            .decision_timeout(Duration::from_secs(10))
            .outage(OutagePolicy::FailClosed)
            .build()
            .unwrap()
    };
    let (a, b) = (replica(), replica());
    let mut svc_a = tower::Layer::layer(&a, ok_service());
    let mut svc_b = tower::Layer::layer(&b, ok_service());
    // Both replicas connected (on another key), so that both race for the
    // shared one.
    call(&mut svc_a, keyed_req("warm-a")).await.unwrap();
    call(&mut svc_b, keyed_req("warm-b")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut svc = if i % 2 == 0 {
            svc_a.clone()
        } else {
            svc_b.clone()
        };
        tasks.push(tokio::spawn(async move {
            call(&mut svc, keyed_req("shared")).await.is_ok()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += u32::from(t.await.unwrap());
    }
    let (sa, sb) = (a.handle().snapshot(), b.handle().snapshot());
    assert_eq!(sa.redis_errors + sb.redis_errors, 0, "{sa:?} {sb:?}");
    assert_eq!(
        admitted, 40,
        "two replicas admitted {admitted} of a limit of 40"
    );
    assert_eq!(sa.permitted + sb.permitted, 42, "40 and the warm-ups");
    assert_eq!(sa.rejected + sb.rejected, 160);
    // Every call was decided by Redis, or by the pre-check replaying it:
    // 100 calls and a warm-up on each replica.
    for s in [&sa, &sb] {
        assert_eq!(s.redis_decisions + s.precheck_rejections, 101, "{s:?}");
    }
}

/// The decisions follow the in-memory GCRA: the burst, then a
/// `retry_after` of one emission interval, with the quota.
#[tokio::test]
async fn redis_decisions_follow_gcra() {
    let server = Server::start();
    // T = 1 s, burst 3.
    let layer = RedisRateLimitLayer::builder_url(server.url(), Rate::per_minute(60))
        .burst(3)
        .local_precheck(false)
        .decision_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = tower::Layer::layer(&layer, ok_service());
    for _ in 0..3 {
        call(&mut svc, req()).await.unwrap();
    }
    let err = call(&mut svc, req()).await.unwrap_err();
    let limited = limited(&err);
    let wait = limited.retry_after().unwrap();
    assert!(
        wait <= Duration::from_secs(1) && wait > Duration::from_millis(500),
        "{wait:?}"
    );
    assert_eq!(limited.remaining(), Some(0));
    assert_eq!(limited.limit(), Some(60));
    tokio::time::sleep(wait).await;
    call(&mut svc, req()).await.unwrap();
    let s = layer.handle().snapshot();
    assert_eq!((s.permitted, s.rejected, s.redis_decisions), (4, 1, 5));
    assert_eq!(s.backend, Some(Backend::Redis));
}

/// Kills Redis mid-run, then restarts it on the same port, under `policy`;
/// returns the outcomes of the calls made while it was down.
async fn outage_run(policy: OutagePolicy) -> (Vec<Result<(), BoxError>>, Events) {
    let mut server = Server::start();
    let timeout = Duration::from_millis(200);
    let (events, listener) = recorder();
    let layer = RedisRateLimitLayer::builder_url(server.url(), Rate::per_hour(3))
        .name("outage")
        .outage(policy)
        .decision_timeout(timeout)
        .retry_backoff(Duration::from_millis(300))
        .local_precheck(false)
        .on_event(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = tower::Layer::layer(&layer, ok_service());
    // Redis decides: the burst, then a rejection.
    for _ in 0..3 {
        call(&mut svc, req()).await.unwrap();
    }
    assert!(call(&mut svc, req()).await.is_err());
    assert_eq!(handle.snapshot().backend, Some(Backend::Redis));
    assert_eq!(handle.snapshot().redis_errors, 0);

    server.kill();
    let mut outcomes = Vec::new();
    let mut slowest = Duration::ZERO;
    // 10 calls over about a second: several backoffs, each ending with one
    // call that tries Redis again.
    for _ in 0..10 {
        let started = Instant::now();
        outcomes.push(call(&mut svc, req()).await);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A generous bound: decided by the timeout at worst, never hung.
    assert!(
        slowest < timeout + Duration::from_secs(2),
        "a call took {slowest:?} to be decided"
    );
    let s = handle.snapshot();
    assert!(!s.redis_available);
    assert!(s.redis_errors >= 1, "{s:?}");
    assert_eq!(s.redis_decisions, 4, "no decision reached a dead Redis");

    // Back to Redis once it answers again.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut back = false;
    for _ in 0..200 {
        let started = Instant::now();
        let _ = call(&mut svc, req()).await;
        assert!(started.elapsed() < timeout + Duration::from_secs(2));
        if handle.snapshot().backend == Some(Backend::Redis) {
            back = true;
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = handle.snapshot();
    assert!(back, "decisions did not return to Redis: {s:?}");
    assert!(s.redis_available);
    assert_eq!(s.redis_decisions, 5);
    (outcomes, events)
}

fn during_outage(events: &Events) -> Vec<(Backend, Option<RejectReason>)> {
    // The first 4 events came from Redis before the kill, the last from
    // Redis after the restart.
    let events = events.lock().unwrap();
    events[4..events.len() - 1].to_vec()
}

#[tokio::test]
async fn outage_fail_open_admits_everything() {
    let (outcomes, events) = outage_run(OutagePolicy::FailOpen).await;
    assert!(outcomes.iter().all(Result::is_ok));
    let during = during_outage(&events);
    assert!(during.len() >= 10);
    assert!(during.iter().all(|e| *e == (Backend::OutagePolicy, None)));
}

#[tokio::test]
async fn outage_fail_closed_rejects_everything() {
    let (outcomes, events) = outage_run(OutagePolicy::FailClosed).await;
    for o in &outcomes {
        let err = o.as_ref().unwrap_err();
        let limited = limited(err);
        assert!(limited.retry_after().unwrap() <= Duration::from_millis(300));
    }
    let during = during_outage(&events);
    assert!(during.len() >= 10);
    assert!(during.iter().all(|e| *e
        == (
            Backend::OutagePolicy,
            Some(RejectReason::BackendUnavailable)
        )));
}

#[tokio::test]
async fn outage_fallback_local_limits_with_the_same_numbers() {
    let (outcomes, events) = outage_run(OutagePolicy::FallbackLocal).await;
    // A fresh local GCRA of 3 per hour: the burst, then rejections.
    let admitted = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(admitted, 3);
    assert!(outcomes[..3].iter().all(Result::is_ok));
    for o in &outcomes[3..] {
        assert!(limited(o.as_ref().unwrap_err()).retry_after().is_some());
    }
    let during = during_outage(&events);
    assert!(during.iter().all(|(b, _)| *b == Backend::LocalFallback));
}

/// A Redis that stops answering (SIGSTOP) holds no call longer than the
/// decision timeout; decisions return to it when it resumes.
#[tokio::test]
async fn a_hung_redis_never_hangs_a_request() {
    let server = Server::start();
    let timeout = Duration::from_millis(100);
    let layer = RedisRateLimitLayer::builder_url(server.url(), Rate::per_second(1000))
        .decision_timeout(timeout)
        .retry_backoff(Duration::from_millis(200))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = tower::Layer::layer(&layer, ok_service());
    call(&mut svc, req()).await.unwrap();
    server.signal("-STOP");
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        call(&mut svc, req()).await.unwrap();
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(slowest < timeout + Duration::from_secs(2), "{slowest:?}");
    let s = handle.snapshot();
    assert!(s.redis_timeouts >= 1, "{s:?}");
    assert_eq!(s.backend, Some(Backend::LocalFallback));
    assert!(s.local_fallback_decisions >= 8, "{s:?}");
    server.signal("-CONT");
    let mut back = false;
    for _ in 0..100 {
        call(&mut svc, req()).await.unwrap();
        if handle.snapshot().backend == Some(Backend::Redis) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "{:?}", handle.snapshot());
}

#[tokio::test]
async fn script_flush_mid_run_reloads_the_script() {
    let server = Server::start();
    let layer = RedisRateLimitLayer::builder_url(server.url(), Rate::per_hour(1000))
        .decision_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = tower::Layer::layer(&layer, ok_service());
    for _ in 0..5 {
        call(&mut svc, req()).await.unwrap();
    }
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn(&server).await)
        .await
        .unwrap();
    for _ in 0..5 {
        call(&mut svc, req()).await.unwrap();
    }
    let s = layer.handle().snapshot();
    assert_eq!((s.redis_decisions, s.redis_errors), (10, 0), "{s:?}");
    assert_eq!(s.backend, Some(Backend::Redis));
}

#[tokio::test]
async fn the_key_expires_when_full_again() {
    let server = Server::start();
    // T = 1 s.
    let layer = RedisRateLimitLayer::builder_url(server.url(), Rate::per_minute(60))
        .name("ttl")
        .burst(10)
        .keyed(header())
        .decision_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = tower::Layer::layer(&layer, ok_service());
    let mut conn = conn(&server).await;
    call(&mut svc, keyed_req("alice")).await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg("buttress:rl:ttl:k:alice")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 1000, "PTTL {pttl}");
    call(&mut svc, keyed_req("alice")).await.unwrap();
    call(&mut svc, keyed_req("alice")).await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg("buttress:rl:ttl:k:alice")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 2000 && pttl <= 3000, "PTTL {pttl}");
    let value: String = redis::cmd("GET")
        .arg("buttress:rl:ttl:k:alice")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (s, n) = value.split_once(':').unwrap();
    assert!(s.parse::<u64>().is_ok() && n.parse::<u32>().unwrap() < 1_000_000_000);
}

#[tokio::test]
async fn the_precheck_rejects_without_a_round_trip() {
    let server = Server::start();
    let layer = RedisRateLimitLayer::builder_url(server.url(), Rate::per_hour(2))
        .decision_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = tower::Layer::layer(&layer, ok_service());
    call(&mut svc, req()).await.unwrap();
    call(&mut svc, req()).await.unwrap();
    let first = call(&mut svc, req()).await.unwrap_err();
    let first_wait = limited(&first).retry_after().unwrap();
    let before = evalsha_calls(&server).await;
    for _ in 0..10 {
        let err = call(&mut svc, req()).await.unwrap_err();
        let wait = limited(&err).retry_after().unwrap();
        assert!(wait <= first_wait && wait > first_wait - Duration::from_secs(60));
    }
    assert_eq!(evalsha_calls(&server).await, before, "a call reached Redis");
    let s = layer.handle().snapshot();
    assert_eq!(s.precheck_rejections, 10);
    assert_eq!(s.redis_decisions, 3);
    assert_eq!((s.permitted, s.rejected), (2, 11));
}

#[tokio::test]
async fn keyed_limits_are_independent_and_a_missing_key_is_rejected() {
    let server = Server::start();
    let layer = RedisRateLimitLayer::builder_url(server.url(), Rate::per_hour(2))
        .name("keyed")
        .keyed(header())
        .decision_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = tower::Layer::layer(&layer, ok_service());
    for key in ["a", "b"] {
        call(&mut svc, keyed_req(key)).await.unwrap();
        call(&mut svc, keyed_req(key)).await.unwrap();
        limited(&call(&mut svc, keyed_req(key)).await.unwrap_err());
    }
    call(&mut svc, keyed_req("c")).await.unwrap();
    let err = call(&mut svc, req()).await.unwrap_err();
    assert!(err.downcast_ref::<KeyMissing>().is_some(), "{err}");
    let s = layer.handle().snapshot();
    assert_eq!((s.permitted, s.rejected, s.missing_key), (5, 2, 1));

    // With a shared bucket, requests without a key share one limit.
    let shared = RedisRateLimitLayer::builder_url(server.url(), Rate::per_hour(2))
        .name("keyed-shared")
        .keyed(header())
        .on_missing_key(MissingKey::SharedBucket)
        .decision_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = tower::Layer::layer(&shared, ok_service());
    call(&mut svc, req()).await.unwrap();
    call(&mut svc, req()).await.unwrap();
    limited(&call(&mut svc, req()).await.unwrap_err());
    call(&mut svc, keyed_req("a")).await.unwrap();
    let exists: bool = redis::cmd("EXISTS")
        .arg("buttress:rl:keyed-shared:unkeyed")
        .query_async(&mut conn(&server).await)
        .await
        .unwrap();
    assert!(exists);
}

#[tokio::test]
async fn set_rate_applies_at_the_next_decision_and_clears_the_precheck() {
    let server = Server::start();
    let layer = RedisRateLimitLayer::builder_url(server.url(), Rate::per_hour(2))
        .decision_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = tower::Layer::layer(&layer, ok_service());
    call(&mut svc, req()).await.unwrap();
    call(&mut svc, req()).await.unwrap();
    call(&mut svc, req()).await.unwrap_err();
    // The pre-check now knows the key is exhausted for half an hour; a
    // larger burst must reach Redis, which admits 3 more (2 taken of 5).
    handle.set_rate(Rate::per_hour(2), Some(5)).unwrap();
    let before = evalsha_calls(&server).await;
    for _ in 0..3 {
        call(&mut svc, req()).await.unwrap();
    }
    let err = call(&mut svc, req()).await.unwrap_err();
    assert_eq!(limited(&err).quota().unwrap().remaining(), 0);
    assert_eq!(evalsha_calls(&server).await, before + 4);
    let s = handle.snapshot();
    assert_eq!((s.rate, s.burst), (Rate::per_hour(2), 5));
    assert_eq!((s.permitted, s.rejected, s.precheck_rejections), (5, 2, 0));
}

/// The Redis limiter decides before the service below reserves anything:
/// with a bulkhead of one permit held by a call in flight, a call over the
/// limit is refused without waiting for (or holding) the bulkhead, and an
/// admitted call made ready only after its decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_never_holds_the_service_below() {
    let server = Server::start();
    let limiter = RedisRateLimitLayer::builder_url(server.url(), Rate::per_hour(2))
        .name("below")
        .decision_timeout(Duration::from_secs(10))
        .outage(OutagePolicy::FailClosed)
        .build()
        .unwrap();
    let bulkhead = buttress_bulkhead::BulkheadLayer::builder()
        .max_concurrent(1)
        .build()
        .unwrap();
    let (release, hold) = tokio::sync::oneshot::channel::<()>();
    let hold = Arc::new(tokio::sync::Mutex::new(Some(hold)));
    let inner = tower::service_fn(move |_req: http::Request<()>| {
        let hold = hold.clone();
        async move {
            if let Some(rx) = hold.lock().await.take() {
                rx.await.ok();
            }
            Ok::<_, Infallible>(())
        }
    });
    let svc = tower::Layer::layer(&limiter, tower::Layer::layer(&bulkhead, inner));
    // The first call holds the bulkhead's only permit.
    let mut first = svc.clone();
    let first = tokio::spawn(async move { call(&mut first, req()).await });
    let b = bulkhead.handle();
    for _ in 0..1000 {
        if b.snapshot().active == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.snapshot().active, 1);
    // The second is admitted by Redis but the bulkhead is full: refused
    // by the bulkhead after its decision. The third is over the limit:
    // refused by the limiter, the bulkhead untouched.
    let mut svc2 = svc.clone();
    let err = call(&mut svc2, req()).await.unwrap_err();
    assert!(
        buttress_core::error::find::<buttress_core::BulkheadFull>(&*err).is_some(),
        "{err}"
    );
    let rejected_before = b.snapshot().rejected;
    let mut svc3 = svc.clone();
    let err = call(&mut svc3, req()).await.unwrap_err();
    assert!(
        buttress_core::error::find::<RateLimited>(&*err).is_some(),
        "{err}"
    );
    assert_eq!(
        b.snapshot().rejected,
        rejected_before,
        "the bulkhead was never asked"
    );
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(b.snapshot().active, 0);
}
