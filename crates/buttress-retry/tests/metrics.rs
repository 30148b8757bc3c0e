//! The retry layer's events as metrics (feature `metrics`), read back from
//! a local `DebuggingRecorder`.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buttress_core::{BoxError, Registry};
use buttress_retry::policy::Verdict;
use buttress_retry::RetryLayer;
use metrics_util::debugging::DebuggingRecorder;
use tower::{ServiceBuilder, ServiceExt};

use buttress_test_support::series::{expect, nonzero, series, V};

/// A request: an id and what each of its attempts returns.
type Req = (u32, &'static [&'static str]);
type Policy = fn(&Result<(), BoxError>) -> Verdict;

fn policy(r: &Result<(), BoxError>) -> Verdict {
    match r {
        Err(e) if e.to_string() == "down" => Verdict::RETRY,
        _ => Verdict::Accept,
    }
}

async fn run(layer: RetryLayer<Policy>, calls: &[Req]) {
    let seen: Arc<Mutex<HashMap<u32, usize>>> = Arc::default();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |(id, script): Req| {
            let seen = seen.clone();
            async move {
                let mut seen = seen.lock().unwrap();
                let n = seen.entry(id).or_insert(0);
                let out = script[*n];
                *n += 1;
                if out == "ok" {
                    Ok(())
                } else {
                    Err(BoxError::from(out))
                }
            }
        });
    for call in calls {
        let _ = svc.clone().oneshot(*call).await;
    }
}

#[tokio::test(start_paused = true)]
async fn every_kind_and_attempt_is_counted_exactly() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = RetryLayer::fixed(3, Duration::from_millis(10))
        .name("api")
        .policy(policy as Policy)
        .metrics()
        .build()
        .unwrap();
    run(
        layer,
        &[
            (1, &["ok"]),
            (2, &["down", "ok"]),
            (3, &["down", "down", "down"]),
            (4, &["down", "fatal"]),
            (5, &["fatal"]),
        ],
    )
    .await;
    let all = series(&snapshotter);
    assert_eq!(
        nonzero(&all, "buttress_retry_"),
        expect([
            ("buttress_retry_attempts_total{name=api}", V::Counter(9)),
            (
                "buttress_retry_calls_total{kind=exhausted,name=api}",
                V::Counter(1)
            ),
            (
                "buttress_retry_calls_total{kind=failed_with_retry,name=api}",
                V::Counter(1)
            ),
            (
                "buttress_retry_calls_total{kind=failed_without_retry,name=api}",
                V::Counter(1)
            ),
            (
                "buttress_retry_calls_total{kind=successful_with_retry,name=api}",
                V::Counter(1)
            ),
            (
                "buttress_retry_calls_total{kind=successful_without_retry,name=api}",
                V::Counter(1)
            ),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_registry_with_metrics_switches_every_member_on() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let registry = Registry::new().with_metrics();
    for (name, registry) in [("on", registry), ("off", Registry::new())] {
        let layer = RetryLayer::fixed(2, Duration::from_millis(10))
            .name(name)
            .policy(policy as Policy)
            .registry(&registry)
            .build()
            .unwrap();
        run(layer, &[(1, &["down", "down"])]).await;
    }
    let all = series(&snapshotter);
    assert_eq!(
        nonzero(&all, "buttress_retry_"),
        expect([
            ("buttress_retry_attempts_total{name=on}", V::Counter(2)),
            (
                "buttress_retry_calls_total{kind=exhausted,name=on}",
                V::Counter(1)
            ),
        ])
    );
    assert!(all.keys().all(|k| !k.contains("name=off")), "{all:?}");
}
