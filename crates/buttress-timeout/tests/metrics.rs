//! The timeout layer's events as metrics (feature `metrics`), read back
//! from a local `DebuggingRecorder`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::time::Duration;

use buttress_core::Registry;
use buttress_timeout::TimeoutLayer;
use metrics_util::debugging::DebuggingRecorder;
use tower::{ServiceBuilder, ServiceExt};

use buttress_test_support::series::{expect, nonzero, series, V};

async fn call(layer: TimeoutLayer, ms: u64) -> bool {
    ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |_: ()| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Infallible>(())
        })
        .oneshot(())
        .await
        .is_ok()
}

#[tokio::test(start_paused = true)]
async fn a_time_out_is_counted_exactly() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = TimeoutLayer::builder(Duration::from_millis(100))
        .name("upstream")
        .metrics()
        .build()
        .unwrap();
    assert!(call(layer.clone(), 10).await);
    assert!(!call(layer.clone(), 500).await);
    assert!(!call(layer, 500).await);
    let all = series(&snapshotter);
    assert_eq!(
        nonzero(&all, "buttress_timeout_"),
        expect([(
            "buttress_timeout_calls_total{kind=timed_out,name=upstream}",
            V::Counter(2)
        )])
    );
}

#[tokio::test(start_paused = true)]
async fn a_registry_with_metrics_switches_every_member_on() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let registry = Registry::new().with_metrics();
    let on = TimeoutLayer::builder(Duration::from_millis(100))
        .name("on")
        .registry(&registry)
        .build()
        .unwrap();
    let off = TimeoutLayer::builder(Duration::from_millis(100))
        .name("off")
        .registry(&Registry::new())
        .build()
        .unwrap();
    assert!(!call(on, 500).await);
    assert!(!call(off, 500).await);
    let all = series(&snapshotter);
    assert_eq!(
        all["buttress_timeout_calls_total{kind=timed_out,name=on}"],
        V::Counter(1)
    );
    assert!(all.keys().all(|k| !k.contains("name=off")), "{all:?}");
}
