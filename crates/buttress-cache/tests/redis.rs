//! The Redis store against a real redis-server on 127.0.0.1: a round trip,
//! entries shared by two replicas, invalidation, and an outage (the server
//! killed mid-run, then restarted) during which every call still succeeds
//! through the inner service.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_cache::redis::RedisOptions;
use buttress_cache::{CacheEvent, CacheLayer, CacheStatus};
use buttress_test_support::redis_server::Server;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};

fn options(server: &Server) -> RedisOptions {
    RedisOptions::url(server.url())
        .timeout(Duration::from_millis(500))
        .retry_backoff(Duration::from_millis(100))
}

fn page_server(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<()>,
    Response = http::Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<http::Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    service_fn(move |req: Request<()>| {
        let n = calls.fetch_add(1, SeqCst) + 1;
        let res = http::Response::builder()
            .header("content-type", "text/plain")
            .header("x-many", "1")
            .header("x-many", "2")
            .body(Full::new(Bytes::from(format!("{n} {}", req.uri()))))
            .unwrap();
        async move { Ok::<_, Infallible>(res) }
    })
}

async fn text(res: http::Response<buttress_cache::CacheBody<Full<Bytes>>>) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_response_round_trips_and_is_shared_by_replicas() {
    let server = Server::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let replica = || {
        CacheLayer::http()
            .name("pages")
            .ttl(Duration::from_secs(30))
            .redis(options(&server))
            .build()
            .unwrap()
    };
    let (a, b) = (replica(), replica());
    let svc_a = a.layer(page_server(calls.clone()));
    let svc_b = b.layer(page_server(calls.clone()));
    let first = svc_a.clone().oneshot(get("/p?q=1")).await.unwrap();
    assert_eq!(
        first.extensions().get::<CacheStatus>(),
        Some(&CacheStatus::Miss)
    );
    assert_eq!(text(first).await, "1 /p?q=1");
    // The other replica answers from Redis: status, headers (repeated ones
    // included) and body.
    let res = svc_b.clone().oneshot(get("/p?q=1")).await.unwrap();
    assert!(matches!(
        res.extensions().get::<CacheStatus>(),
        Some(CacheStatus::Hit { .. })
    ));
    assert_eq!(res.headers()["content-type"], "text/plain");
    let many: Vec<_> = res.headers().get_all("x-many").iter().collect();
    assert_eq!(many, ["1", "2"]);
    assert_eq!(text(res).await, "1 /p?q=1");
    assert_eq!(calls.load(SeqCst), 1);
    let s = b.handle().snapshot();
    assert_eq!(
        (s.backend, s.hits, s.misses, s.entries),
        ("redis", 1, 0, None)
    );

    // An invalidation by one replica is seen by the other.
    a.handle().invalidate_prefix("GET /p").await.unwrap();
    assert_eq!(
        text(svc_b.oneshot(get("/p?q=1")).await.unwrap()).await,
        "2 /p?q=1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_values_with_ttl_in_redis() {
    let server = Server::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let layer = CacheLayer::builder(|k: &String| Some(k.clone()))
        .name("names")
        // Long enough that a loaded machine makes the next calls (and reads
        // the key's TTL) well within it.
        .ttl(Duration::from_secs(2))
        .redis(options(&server))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(move |k: String| {
        let n = c.fetch_add(1, SeqCst) + 1;
        async move { Ok::<_, Infallible>(format!("{k}#{n}")) }
    }));
    assert_eq!(svc.clone().oneshot("a".into()).await.unwrap(), "a#1");
    assert_eq!(svc.clone().oneshot("a".into()).await.unwrap(), "a#1");
    // Redis drops the key at its end of life (ttl + max_stale).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(svc.clone().oneshot("a".into()).await.unwrap(), "a#2");
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("buttress:cache:names:a")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 2_000, "{ttl}");
    layer
        .handle()
        .warm([("w".to_owned(), "warm".to_owned())])
        .await
        .unwrap();
    assert_eq!(svc.clone().oneshot("w".into()).await.unwrap(), "warm");
    layer.handle().invalidate_all().await.unwrap();
    assert_eq!(svc.oneshot("w".into()).await.unwrap(), "w#3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_calls_succeed_through_the_inner_service_then_recover() {
    let mut server = Server::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let layer = CacheLayer::http()
        .name("outage")
        .ttl(Duration::from_secs(60))
        .redis(options(&server))
        .on_event(move |ev: &CacheEvent| match ev {
            CacheEvent::StoreUnavailable { .. } => e.lock().unwrap().push("unavailable"),
            CacheEvent::StoreRecovered { .. } => e.lock().unwrap().push("recovered"),
            _ => {}
        })
        .build()
        .unwrap();
    let svc = layer.layer(page_server(calls.clone()));
    // A steady stream of calls; Redis dies in the middle of it.
    let mut answered = 0;
    for i in 0..60 {
        if i == 20 {
            server.kill();
        }
        let res = svc
            .clone()
            .oneshot(get("/hot"))
            .await
            .expect("never an error");
        assert!(text(res).await.ends_with(" /hot"));
        answered += 1;
    }
    assert_eq!(answered, 60);
    // Before the kill: one miss, then hits. After it: every call went to
    // the inner service.
    assert_eq!(calls.load(SeqCst), 1 + 40);
    assert!(layer.handle().snapshot().store_errors >= 1);
    assert!(layer.handle().invalidate_all().await.is_err());

    server.restart();
    // After the backoff, the cache uses the (empty) server again.
    let mut recovered = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        svc.clone().oneshot(get("/hot")).await.unwrap();
        if events.lock().unwrap().contains(&"recovered") {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "{:?}", events.lock().unwrap());
    let before = calls.load(SeqCst);
    svc.clone().oneshot(get("/hot")).await.unwrap();
    svc.oneshot(get("/hot")).await.unwrap();
    assert!(
        calls.load(SeqCst) <= before + 1,
        "stored again after the restart"
    );
    assert_eq!(events.lock().unwrap()[0], "unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_conditional_requests_and_revalidation_work_from_redis() {
    let server = Server::start();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let origin = service_fn(move |req: Request<()>| {
        s.lock().unwrap().push((
            req.method().clone(),
            req.headers().get("if-none-match").cloned(),
        ));
        let not_modified = req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"e1\"");
        let res = http::Response::builder()
            .status(if not_modified { 304 } else { 200 })
            .header("etag", "\"e1\"")
            .header("cache-control", "max-age=1")
            .header("x-gen", if not_modified { "2" } else { "1" })
            .body(Full::new(Bytes::from_static(if not_modified {
                b""
            } else {
                b"page"
            })))
            .unwrap();
        async move { Ok::<_, Infallible>(res) }
    });
    let layer = CacheLayer::http()
        .name("cond")
        .max_stale(Duration::from_secs(60))
        .redis(options(&server))
        .build()
        .unwrap();
    let svc = layer.layer(origin);
    assert_eq!(
        text(svc.clone().oneshot(get("/c")).await.unwrap()).await,
        "page"
    );
    // HEAD and a conditional GET, from the stored GET response.
    let res = svc
        .clone()
        .oneshot(Request::head("/c").body(()).unwrap())
        .await
        .unwrap();
    assert!(matches!(
        res.extensions().get::<CacheStatus>(),
        Some(CacheStatus::Hit { .. })
    ));
    assert_eq!(res.headers()["etag"], "\"e1\"");
    assert_eq!(text(res).await, "");
    let res = svc
        .clone()
        .oneshot(
            Request::get("/c")
                .header("if-none-match", "\"e1\"")
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::NOT_MODIFIED);
    assert_eq!(seen.lock().unwrap().len(), 1);
    // Stale (max-age=1): revalidated with the stored ETag.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let res = svc.clone().oneshot(get("/c")).await.unwrap();
    assert_eq!(
        res.extensions().get::<CacheStatus>(),
        Some(&CacheStatus::Revalidated)
    );
    assert_eq!(res.status(), http::StatusCode::OK);
    assert_eq!(res.headers()["x-gen"], "2");
    assert_eq!(text(res).await, "page");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].0, http::Method::GET);
    assert_eq!(seen[1].1.as_ref().unwrap(), "\"e1\"");
}
