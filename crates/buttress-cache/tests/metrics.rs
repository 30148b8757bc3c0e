//! The cache's events as metrics (feature `metrics`), read back from a
//! local `DebuggingRecorder`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::time::Duration;

use buttress_cache::CacheLayer;
use buttress_core::BoxError;
use metrics_util::debugging::DebuggingRecorder;
use tower::{service_fn, Layer, ServiceExt};

use buttress_test_support::series::{expect, nonzero, series, V};

#[tokio::test(start_paused = true)]
async fn hits_misses_stale_stores_and_invalidations_are_counted_exactly() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = CacheLayer::builder(|k: &u32| Some(*k))
        .name("users")
        .ttl(Duration::from_secs(10))
        .max_stale(Duration::from_secs(60))
        .metrics()
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|k: u32| async move {
        if k == 0 {
            Err::<u32, BoxError>("down".into())
        } else {
            Ok(k)
        }
    }));
    svc.clone().oneshot(1).await.unwrap();
    svc.clone().oneshot(1).await.unwrap();
    svc.clone().oneshot(1).await.unwrap();
    assert!(svc.clone().oneshot(0).await.is_err());
    layer.handle().warm([(0, 100)]).await.unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    // Key 0 is stale and its call fails: a miss answered stale.
    assert_eq!(svc.clone().oneshot(0).await.unwrap(), 100);
    layer.handle().invalidate_prefix("1").await.unwrap();

    let all = series(&snapshotter);
    assert_eq!(
        nonzero(&all, "buttress_cache_"),
        expect([
            (
                "buttress_cache_invalidations_total{name=users,scope=prefix}",
                V::Counter(1)
            ),
            (
                "buttress_cache_requests_total{name=users,result=hit}",
                V::Counter(2)
            ),
            (
                "buttress_cache_requests_total{name=users,result=miss}",
                V::Counter(3)
            ),
            (
                "buttress_cache_requests_total{name=users,result=stale}",
                V::Counter(1)
            ),
            (
                "buttress_cache_stores_total{name=users,result=stored}",
                V::Counter(2)
            ),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn coalesced_calls_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let layer = CacheLayer::builder(|k: &u32| Some(*k))
        .name("c")
        .registry(&buttress_core::Registry::new().with_metrics())
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|k: u32| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok::<_, Infallible>(k)
    }));
    let calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(1)))
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    let all = series(&snapshotter);
    assert_eq!(
        nonzero(&all, "buttress_cache_requests"),
        expect([
            (
                "buttress_cache_requests_total{name=c,result=coalesced}",
                V::Counter(2)
            ),
            (
                "buttress_cache_requests_total{name=c,result=miss}",
                V::Counter(1)
            ),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_revalidated_http_entry_is_a_miss_counted_as_revalidated() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let layer = CacheLayer::http()
        .name("pages")
        .max_stale(Duration::from_secs(60))
        .metrics()
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|req: http::Request<()>| async move {
        let conditional = req.headers().contains_key("if-none-match");
        let res = http::Response::builder()
            .status(if conditional { 304 } else { 200 })
            .header("etag", "\"a\"")
            .header("cache-control", "max-age=10")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                if conditional { b"" } else { b"page" },
            )))
            .unwrap();
        Ok::<_, Infallible>(res)
    }));
    let get = || http::Request::get("/p").body(()).unwrap();
    svc.clone().oneshot(get()).await.unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    svc.clone().oneshot(get()).await.unwrap();
    svc.clone().oneshot(get()).await.unwrap();
    let all = series(&snapshotter);
    assert_eq!(
        nonzero(&all, "buttress_cache_"),
        expect([
            (
                "buttress_cache_requests_total{name=pages,result=hit}",
                V::Counter(1)
            ),
            (
                "buttress_cache_requests_total{name=pages,result=miss}",
                V::Counter(2)
            ),
            (
                "buttress_cache_requests_total{name=pages,result=revalidated}",
                V::Counter(1)
            ),
            (
                "buttress_cache_stores_total{name=pages,result=stored}",
                V::Counter(2)
            ),
        ])
    );
}
