//! The timeout layer's events as metrics (feature `metrics`), read back
//! from a local `DebuggingRecorder`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::time::Duration;

use buttress_core::Registry;
use buttress_timeout::TimeoutLayer;
use metrics_util::debugging::DebuggingRecorder;
use tower::{ServiceBuilder, ServiceExt};

use std::collections::BTreeMap;

use metrics_util::debugging::{DebugValue, Snapshotter};
use metrics_util::MetricKind;

/// A series' value: the kind and what the recorder holds.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

/// Every series as `"name{label=value,...}"` (labels sorted) to its value.
/// Taking it drains the recorder (counters and gauges to 0), so take one
/// per scenario.
fn series(snapshotter: &Snapshotter) -> BTreeMap<String, V> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _unit, _desc, value)| {
            let mut labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let value = match (key.kind(), value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => V::Counter(n),
                (MetricKind::Gauge, DebugValue::Gauge(g)) => V::Gauge(g.into_inner()),
                (MetricKind::Histogram, DebugValue::Histogram(h)) => {
                    V::Histogram(h.into_iter().map(|v| v.into_inner()).collect())
                }
                (kind, value) => panic!("{kind:?} with {value:?}"),
            };
            (
                format!("{}{{{}}}", key.key().name(), labels.join(",")),
                value,
            )
        })
        .collect()
}

/// The series whose name starts with `prefix`, zero counters left out.
fn nonzero(all: &BTreeMap<String, V>, prefix: &str) -> BTreeMap<String, V> {
    all.iter()
        .filter(|(k, v)| k.starts_with(prefix) && **v != V::Counter(0))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `[(key, value)]` as a map, for comparisons.
fn expect<const N: usize>(pairs: [(&str, V); N]) -> BTreeMap<String, V> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

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
