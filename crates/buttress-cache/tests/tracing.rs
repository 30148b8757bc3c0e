//! The cache's `tracing`, as the crate docs list it: a hit emits nothing,
//! a stale answer and a response not stored are `debug`, misses `trace`.

use std::convert::Infallible;
use std::time::Duration;

use buttress_cache::CacheLayer;
use buttress_core::BoxError;
use tower::{service_fn, Layer, ServiceExt};
use tracing::Level;

use buttress_test_support::capture::Capture;

#[tokio::test(start_paused = true)]
async fn a_hit_is_silent_a_stale_answer_is_a_debug_event() {
    let (capture, _guard) = Capture::install();
    let layer = CacheLayer::builder(|k: &u32| Some(*k))
        .name("quiet")
        .ttl(Duration::from_secs(1))
        .max_stale(Duration::from_secs(10))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: u32| async {
        Err::<u32, BoxError>("down".into())
    }));
    let ok = layer.layer(service_fn(|k: u32| async move { Ok::<_, Infallible>(k) }));
    ok.clone().oneshot(1).await.unwrap();
    capture.clear();
    ok.oneshot(1).await.unwrap();
    assert!(
        capture.events().is_empty(),
        "a hit emits nothing: {:#?}",
        capture.events()
    );

    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(svc.oneshot(1).await.unwrap(), 1);
    let stale = capture.find("stale entry served");
    assert_eq!(stale.len(), 1, "{:#?}", capture.events());
    assert_eq!(stale[0].level, Level::DEBUG);
    assert_eq!(stale[0].field("buttress.name"), Some("quiet"));
    assert_eq!(stale[0].field("cache.reason"), Some("error"));
    assert_eq!(stale[0].field("cache.age_ms"), Some("2000"));
    let miss = capture.find("cache miss");
    assert_eq!(miss.len(), 1);
    assert_eq!(miss[0].level, Level::TRACE);
    assert!(capture.events().iter().all(|e| e.level >= Level::DEBUG));
}

#[tokio::test(start_paused = true)]
async fn a_response_not_stored_says_why() {
    let (capture, _guard) = Capture::install();
    let layer = CacheLayer::http().name("pages").build().unwrap();
    let svc = layer.layer(service_fn(|_: http::Request<()>| async {
        let res = http::Response::builder()
            .header("cache-control", "no-store")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        Ok::<_, Infallible>(res)
    }));
    svc.oneshot(http::Request::get("/").body(()).unwrap())
        .await
        .unwrap();
    let events = capture.find("response not stored");
    assert_eq!(events.len(), 1, "{:#?}", capture.events());
    assert_eq!(events[0].level, Level::DEBUG);
    assert_eq!(events[0].field("cache.reason"), Some("no_store"));
}
