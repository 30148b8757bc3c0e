//! The rate limiter's decisions as metrics (feature `metrics`), read back
//! from a local `DebuggingRecorder`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::time::Duration;

use buttress_core::key::FnKey;
use buttress_core::Registry;
use buttress_rate_limit::{KeyedRateLimitLayer, Rate, RateLimitLayer};
use metrics_util::debugging::DebuggingRecorder;
use tower::{ServiceBuilder, ServiceExt};

use buttress_test_support::series::{expect, nonzero, series, V};

fn decision(name: &str, decision: &str, reason: &str) -> String {
    format!(
        "buttress_rate_limit_decisions_total{{backend=local,decision={decision},name={name},reason={reason}}}"
    )
}

#[tokio::test(start_paused = true)]
async fn admissions_and_rejections_with_reasons_and_waits_exact() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let queued = RateLimitLayer::builder(Rate::per_second(1))
        .name("q")
        .max_wait(Duration::from_secs(2))
        .max_queue(1)
        .cost(|r: &u64| *r)
        .metrics()
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(queued)
        .service_fn(|_: u64| async { Ok::<_, Infallible>(()) });
    svc.clone().oneshot(1).await.unwrap();
    let waiting = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    // The queue holds one caller: the next is turned away.
    assert!(svc.clone().oneshot(1).await.is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    waiting.await.unwrap().unwrap();
    // More than the burst can ever give.
    assert!(svc.clone().oneshot(5).await.is_err());

    let plain = RateLimitLayer::builder(Rate::per_second(1))
        .name("p")
        .metrics()
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(plain)
        .service_fn(|_: u64| async { Ok::<_, Infallible>(()) });
    svc.clone().oneshot(1).await.unwrap();
    assert!(svc.oneshot(1).await.is_err());

    let all = series(&snapshotter);
    let mut want = expect([
        (
            "buttress_rate_limit_wait_seconds{name=p}",
            V::Histogram(vec![0.0]),
        ),
        (
            "buttress_rate_limit_wait_seconds{name=q}",
            V::Histogram(vec![0.0, 1.0]),
        ),
    ]);
    want.insert(decision("p", "permitted", "none"), V::Counter(1));
    want.insert(decision("p", "rejected", "exhausted"), V::Counter(1));
    want.insert(decision("q", "permitted", "none"), V::Counter(2));
    want.insert(decision("q", "rejected", "over_capacity"), V::Counter(1));
    want.insert(decision("q", "rejected", "queue_full"), V::Counter(1));
    assert_eq!(nonzero(&all, "buttress_rate_limit_"), want);
    // Every reason is resolved at build, for the local backend only.
    let resolved = all.keys().filter(|k| k.contains("name=q,")).count();
    assert_eq!(resolved, 7, "{all:?}");
    assert!(all.keys().all(|k| !k.contains("backend=redis")));
}

#[tokio::test(start_paused = true)]
async fn a_keyed_limiter_is_labelled_by_its_name_only() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = KeyedRateLimitLayer::builder(FnKey::new(|r: &u32| Some(*r)), Rate::per_second(1))
        .name("clients")
        .metrics()
        .build::<u32>()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: u32| async { Ok::<_, Infallible>(()) });
    for key in [1, 2, 1] {
        let _ = svc.clone().oneshot(key).await;
    }
    let all = series(&snapshotter);
    let mut want = expect([(
        "buttress_rate_limit_wait_seconds{name=clients}",
        V::Histogram(vec![0.0, 0.0]),
    )]);
    want.insert(decision("clients", "permitted", "none"), V::Counter(2));
    want.insert(decision("clients", "rejected", "exhausted"), V::Counter(1));
    assert_eq!(nonzero(&all, "buttress_rate_limit_"), want);
}

#[tokio::test]
async fn a_registry_with_metrics_switches_every_member_on() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let registry = Registry::new().with_metrics();
    for (name, registry) in [("on", registry), ("off", Registry::new())] {
        let layer = RateLimitLayer::builder(Rate::per_second(10))
            .name(name)
            .registry(&registry)
            .build()
            .unwrap();
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_: u32| async { Ok::<_, Infallible>(()) })
            .oneshot(1)
            .await
            .unwrap();
    }
    let all = series(&snapshotter);
    assert_eq!(all[&decision("on", "permitted", "none")], V::Counter(1));
    assert!(all.keys().all(|k| !k.contains("name=off")), "{all:?}");
}
