//! The bulkhead's events as metrics (feature `metrics`), read back from a
//! local `DebuggingRecorder`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_bulkhead::{BulkheadLayer, KeyedBulkheadLayer};
use buttress_core::key::FnKey;
use buttress_core::Registry;
use metrics_util::debugging::DebuggingRecorder;
use tokio::sync::oneshot;
use tower::{ServiceBuilder, ServiceExt};

use buttress_test_support::series::{expect, nonzero, series, V};

#[tokio::test(start_paused = true)]
async fn a_rejection_counts_gauges_and_held_times_exact() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = BulkheadLayer::builder()
        .name("db")
        .max_concurrent(1)
        .metrics()
        .build()
        .unwrap();
    let (release, held) = oneshot::channel::<()>();
    let held = Arc::new(Mutex::new(Some(held)));
    let svc = ServiceBuilder::new().layer(layer).service_fn(move |_: ()| {
        let held = held.lock().unwrap().take();
        async move {
            if let Some(held) = held {
                let _ = held.await;
            }
            Ok::<_, Infallible>(())
        }
    });
    let first = tokio::spawn(svc.clone().oneshot(()));
    tokio::task::yield_now().await;
    // The permit is taken: a second call is rejected at once.
    assert!(svc.clone().oneshot(()).await.is_err());
    tokio::time::advance(Duration::from_secs(2)).await;
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    svc.oneshot(()).await.unwrap();

    let all = series(&snapshotter);
    assert_eq!(
        nonzero(&all, "buttress_bulkhead_"),
        expect([
            (
                "buttress_bulkhead_available_permits{name=db}",
                V::Gauge(1.0)
            ),
            (
                "buttress_bulkhead_call_duration_seconds{name=db}",
                V::Histogram(vec![2.0, 0.0])
            ),
            (
                "buttress_bulkhead_calls_total{kind=finished,name=db}",
                V::Counter(2)
            ),
            (
                "buttress_bulkhead_calls_total{kind=permitted,name=db}",
                V::Counter(2)
            ),
            (
                "buttress_bulkhead_calls_total{kind=rejected,name=db}",
                V::Counter(1)
            ),
            ("buttress_bulkhead_queue_depth{name=db}", V::Gauge(0.0)),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn the_queue_depth_gauge_follows_the_queue() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = BulkheadLayer::builder()
        .name("q")
        .max_concurrent(1)
        .max_queue(1)
        .metrics()
        .build()
        .unwrap();
    let (release, held) = oneshot::channel::<()>();
    let held = Arc::new(Mutex::new(Some(held)));
    let svc = ServiceBuilder::new().layer(layer).service_fn(move |_: ()| {
        let held = held.lock().unwrap().take();
        async move {
            if let Some(held) = held {
                let _ = held.await;
            }
            Ok::<_, Infallible>(())
        }
    });
    let first = tokio::spawn(svc.clone().oneshot(()));
    tokio::task::yield_now().await;
    let queued = tokio::spawn(svc.clone().oneshot(()));
    tokio::task::yield_now().await;
    let all = series(&snapshotter);
    assert_eq!(all["buttress_bulkhead_queue_depth{name=q}"], V::Gauge(1.0));
    assert_eq!(
        all["buttress_bulkhead_available_permits{name=q}"],
        V::Gauge(0.0)
    );
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    queued.await.unwrap().unwrap();
    let all = series(&snapshotter);
    assert_eq!(all["buttress_bulkhead_queue_depth{name=q}"], V::Gauge(0.0));
    assert_eq!(
        all["buttress_bulkhead_available_permits{name=q}"],
        V::Gauge(1.0)
    );
    assert_eq!(
        all["buttress_bulkhead_calls_total{kind=permitted,name=q}"],
        V::Counter(1)
    );
    assert_eq!(
        all["buttress_bulkhead_calls_total{kind=finished,name=q}"],
        V::Counter(2)
    );
}

#[tokio::test]
async fn a_keyed_bulkhead_is_labelled_by_its_name_only() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = KeyedBulkheadLayer::builder(FnKey::new(|r: &u32| Some(*r)))
        .name("tenants")
        .max_concurrent(1)
        .metrics()
        .build::<u32>()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: u32| async { Ok::<_, Infallible>(()) });
    for key in [1, 2, 3] {
        svc.clone().oneshot(key).await.unwrap();
    }
    let all = series(&snapshotter);
    let mine = nonzero(&all, "buttress_bulkhead_");
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        [
            "buttress_bulkhead_call_duration_seconds{name=tenants}",
            "buttress_bulkhead_calls_total{kind=finished,name=tenants}",
            "buttress_bulkhead_calls_total{kind=permitted,name=tenants}",
        ]
    );
    assert_eq!(
        mine["buttress_bulkhead_calls_total{kind=permitted,name=tenants}"],
        V::Counter(3)
    );
}

#[tokio::test]
async fn a_registry_with_metrics_switches_every_member_on() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let registry = Registry::new().with_metrics();
    let on = BulkheadLayer::builder()
        .name("on")
        .registry(&registry)
        .build()
        .unwrap();
    let off = BulkheadLayer::builder()
        .name("off")
        .registry(&Registry::new())
        .build()
        .unwrap();
    for layer in [on, off] {
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_: ()| async { Ok::<_, Infallible>(()) })
            .oneshot(())
            .await
            .unwrap();
    }
    let all = series(&snapshotter);
    assert_eq!(
        all["buttress_bulkhead_calls_total{kind=permitted,name=on}"],
        V::Counter(1)
    );
    assert!(all.keys().all(|k| !k.contains("name=off")), "{all:?}");
}

/// Calls on two worker threads, tasks moving between them: once every
/// call is over, the gauges say what an idle bulkhead is (all permits
/// free, nobody queued), whichever thread refreshed them last, and the
/// counters add up exactly.
#[test]
fn the_gauges_end_exact_after_concurrent_calls() {
    const TASKS: u64 = 8;
    const CALLS: u64 = 400;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Handles are resolved at build, against this recorder; they are then
    // used from the runtime's worker threads.
    let layer = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder()
            .name("mt")
            .max_concurrent(3)
            .max_queue(64)
            .max_wait(Duration::from_secs(10))
            .metrics()
            .build()
            .unwrap()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let svc = ServiceBuilder::new()
                .layer(layer.clone())
                .service_fn(|()| async {
                    tokio::task::yield_now().await;
                    Ok::<_, Infallible>(())
                });
            tasks.push(tokio::spawn(async move {
                for _ in 0..CALLS {
                    svc.clone().oneshot(()).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let all = series(&snapshotter);
    assert_eq!(
        all["buttress_bulkhead_available_permits{name=mt}"],
        V::Gauge(3.0)
    );
    assert_eq!(all["buttress_bulkhead_queue_depth{name=mt}"], V::Gauge(0.0));
    let n = TASKS * CALLS;
    assert_eq!(
        nonzero(&all, "buttress_bulkhead_calls_total"),
        expect([
            (
                "buttress_bulkhead_calls_total{kind=finished,name=mt}",
                V::Counter(n)
            ),
            (
                "buttress_bulkhead_calls_total{kind=permitted,name=mt}",
                V::Counter(n)
            ),
        ])
    );
}
