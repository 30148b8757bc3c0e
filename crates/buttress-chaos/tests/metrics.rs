//! The `metrics` bridge: `buttress_chaos_faults_total{name,kind}`.

use buttress_chaos::{ChaosLayer, Latency};
use buttress_core::Registry;
use buttress_test_support::series::{expect, nonzero, series, V};
use metrics_util::debugging::DebuggingRecorder;
use std::time::Duration;
use tower::{Service, ServiceExt};

async fn drive<S>(svc: &mut S, calls: u32)
where
    S: Service<u32, Response = u32, Error = buttress_core::BoxError>,
{
    for i in 0..calls {
        let _ = svc.ready().await.unwrap().call(i).await;
    }
}

#[tokio::test(start_paused = true)]
async fn every_injected_fault_is_counted_by_kind() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        ChaosLayer::builder()
            .name("upstream")
            .seed(3)
            .error_rate(0.25)
            .latency(0.5, Latency::Fixed(Duration::from_millis(1)))
            .enabled(true)
            .metrics()
            .build()
            .unwrap()
    });
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) });
    drive(&mut svc, 200).await;
    let s = layer.handle().snapshot();
    let errors = s.injected(buttress_chaos::FaultKind::Error);
    let delays = s.injected(buttress_chaos::FaultKind::Latency);
    assert!(errors > 0 && delays > 0);
    assert_eq!(
        nonzero(&series(&snapshotter), "buttress_chaos"),
        expect([
            (
                "buttress_chaos_faults_total{kind=error,name=upstream}",
                V::Counter(errors)
            ),
            (
                "buttress_chaos_faults_total{kind=latency,name=upstream}",
                V::Counter(delays)
            ),
        ])
    );
}

#[tokio::test]
async fn a_metrics_registry_switches_the_bridge_on() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let registry = Registry::new().with_metrics();
    let layer = metrics::with_local_recorder(&recorder, || {
        ChaosLayer::builder()
            .name("reg")
            .error_rate(1.0)
            .enabled(true)
            .registry(&registry)
            .build()
            .unwrap()
    });
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) });
    drive(&mut svc, 3).await;
    assert_eq!(
        nonzero(&series(&snapshotter), "buttress_chaos"),
        expect([(
            "buttress_chaos_faults_total{kind=error,name=reg}",
            V::Counter(3)
        )])
    );
}

#[tokio::test]
async fn without_a_recorder_nothing_is_attached_and_calls_still_work() {
    let layer = ChaosLayer::builder()
        .error_rate(1.0)
        .enabled(true)
        .metrics()
        .build()
        .unwrap();
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) });
    drive(&mut svc, 2).await;
    assert_eq!(
        layer
            .handle()
            .snapshot()
            .injected(buttress_chaos::FaultKind::Error),
        2
    );
}
