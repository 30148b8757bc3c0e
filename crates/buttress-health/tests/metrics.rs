//! Check results as metrics (feature `metrics`), read back from a local
//! `DebuggingRecorder`.

use std::time::Duration;

use buttress_core::Registry;
use buttress_health::{Check, CheckResult, HealthRegistry, Status};
use buttress_test_support::series::{expect, nonzero, series, V};
use metrics_util::debugging::DebuggingRecorder;

#[tokio::test(start_paused = true)]
async fn status_gauges_durations_and_readiness_are_published_per_check() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let registry = HealthRegistry::builder()
        .check(Check::new("db", || async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            Status::Healthy
        }))
        .check(Check::new("cache", || async {
            CheckResult::degraded("cold")
        }))
        .check(Check::new("search", || async { Status::Unhealthy }).critical(false))
        .metrics()
        .build()
        .unwrap();
    registry.readiness().await;
    assert_eq!(
        nonzero(&series(&snapshotter), "buttress_health_"),
        expect([
            (
                "buttress_health_check_duration_seconds{check=cache}",
                V::Histogram(vec![0.0])
            ),
            (
                "buttress_health_check_duration_seconds{check=db}",
                V::Histogram(vec![0.25])
            ),
            (
                "buttress_health_check_duration_seconds{check=search}",
                V::Histogram(vec![0.0])
            ),
            ("buttress_health_ready{}", V::Gauge(1.0)),
            ("buttress_health_started{}", V::Gauge(1.0)),
            ("buttress_health_status{check=cache}", V::Gauge(0.5)),
            ("buttress_health_status{check=db}", V::Gauge(1.0)),
            ("buttress_health_status{check=search}", V::Gauge(0.0)),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_metrics_registry_switches_the_bridge_on_and_readiness_drops_to_zero() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let components = Registry::new().with_metrics();
    let registry = HealthRegistry::builder()
        .components(&components)
        .check(Check::new("db", || async { Status::Unhealthy }))
        .build()
        .unwrap();
    registry.readiness().await;
    let all = series(&snapshotter);
    assert_eq!(all["buttress_health_ready{}"], V::Gauge(0.0));
    assert_eq!(all["buttress_health_status{check=db}"], V::Gauge(0.0));
}

#[tokio::test(start_paused = true)]
async fn without_metrics_asked_for_nothing_is_published() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let registry = HealthRegistry::builder()
        .check(Check::new("db", || async { Status::Healthy }))
        .build()
        .unwrap();
    registry.readiness().await;
    assert!(nonzero(&series(&snapshotter), "buttress_health_").is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_started_gauge_is_zero_until_startup_completes_then_one() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let registry = HealthRegistry::builder()
        .check(Check::new("db", || async { Status::Healthy }))
        .manual_startup()
        .metrics()
        .build()
        .unwrap();
    assert_eq!(
        series(&snapshotter)["buttress_health_started{}"],
        V::Gauge(0.0)
    );
    registry.startup().await;
    assert_eq!(
        series(&snapshotter)["buttress_health_started{}"],
        V::Gauge(0.0)
    );
    registry.startup_handle().done();
    assert_eq!(
        series(&snapshotter)["buttress_health_started{}"],
        V::Gauge(1.0)
    );
}
