//! The circuit breaker's events as metrics (feature `metrics`), read back
//! from a local `DebuggingRecorder`.
#![allow(missing_docs)]

use std::time::Duration;

use buttress_circuit_breaker::{CircuitBreakerLayer, KeyedCircuitBreakerLayer, State};
use buttress_core::key::FnKey;
use buttress_core::Registry;
use metrics_util::debugging::DebuggingRecorder;
use tower::{ServiceBuilder, ServiceExt};

use std::collections::BTreeMap;

use buttress_test_support::series::{expect, nonzero, series, V};

const STATES: [&str; 6] = [
    "closed",
    "disabled",
    "forced_open",
    "half_open",
    "metrics_only",
    "open",
];

fn state_gauges(name: &str, current: &str) -> Vec<(String, V)> {
    STATES
        .iter()
        .map(|s| {
            (
                format!("buttress_circuit_breaker_state{{name={name},state={s}}}"),
                V::Gauge(if *s == current { 1.0 } else { 0.0 }),
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_and_closes_exact_series() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = CircuitBreakerLayer::builder()
        .name("inv")
        .window_size(4)
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .slow_call_duration(Duration::from_secs(1))
        .wait_in_open(Duration::from_secs(10))
        .permitted_calls_in_half_open(1)
        .metrics()
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|(ok, ms): (bool, u64)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if ok {
                Ok(())
            } else {
                Err("down")
            }
        });

    // At build: closed, rates unknown.
    let all = series(&snapshotter);
    let mut want: BTreeMap<String, V> = state_gauges("inv", "closed").into_iter().collect();
    want.insert(
        "buttress_circuit_breaker_failure_rate{name=inv}".into(),
        V::Gauge(-1.0),
    );
    want.insert(
        "buttress_circuit_breaker_slow_call_rate{name=inv}".into(),
        V::Gauge(-1.0),
    );
    assert_eq!(nonzero(&all, "buttress_circuit_breaker_"), want);

    // Two failures in four calls, one of each slow: 50 % opens it.
    for call in [(true, 0), (false, 2000), (true, 2000), (false, 0)] {
        let _ = svc.clone().oneshot(call).await;
    }
    assert_eq!(handle.state(), State::Open);
    assert!(svc.clone().oneshot((true, 0)).await.is_err());

    let all = series(&snapshotter);
    let mut want: BTreeMap<String, V> = state_gauges("inv", "open").into_iter().collect();
    want.extend(expect([
        (
            "buttress_circuit_breaker_calls_total{kind=failed,name=inv}",
            V::Counter(2),
        ),
        (
            "buttress_circuit_breaker_calls_total{kind=not_permitted,name=inv}",
            V::Counter(1),
        ),
        (
            "buttress_circuit_breaker_calls_total{kind=slow_failed,name=inv}",
            V::Counter(1),
        ),
        (
            "buttress_circuit_breaker_calls_total{kind=slow_successful,name=inv}",
            V::Counter(1),
        ),
        (
            "buttress_circuit_breaker_calls_total{kind=successful,name=inv}",
            V::Counter(2),
        ),
        (
            "buttress_circuit_breaker_failure_rate{name=inv}",
            V::Gauge(50.0),
        ),
        (
            "buttress_circuit_breaker_slow_call_rate{name=inv}",
            V::Gauge(50.0),
        ),
        (
            "buttress_circuit_breaker_transitions_total{from=closed,name=inv,to=open}",
            V::Counter(1),
        ),
    ]));
    assert_eq!(nonzero(&all, "buttress_circuit_breaker_"), want);

    // After the wait, one good probe closes it (the snapshot above
    // drained the counters: these are the calls since).
    tokio::time::advance(Duration::from_secs(10)).await;
    svc.clone().oneshot((true, 0)).await.unwrap();
    assert_eq!(handle.state(), State::Closed);

    let all = series(&snapshotter);
    let mut want: BTreeMap<String, V> = state_gauges("inv", "closed").into_iter().collect();
    want.extend(expect([
        (
            "buttress_circuit_breaker_calls_total{kind=successful,name=inv}",
            V::Counter(1),
        ),
        (
            "buttress_circuit_breaker_failure_rate{name=inv}",
            V::Gauge(-1.0),
        ),
        (
            "buttress_circuit_breaker_slow_call_rate{name=inv}",
            V::Gauge(-1.0),
        ),
        (
            "buttress_circuit_breaker_transitions_total{from=half_open,name=inv,to=closed}",
            V::Counter(1),
        ),
        (
            "buttress_circuit_breaker_transitions_total{from=open,name=inv,to=half_open}",
            V::Counter(1),
        ),
    ]));
    assert_eq!(nonzero(&all, "buttress_circuit_breaker_"), want);
    // One counter per pair of states and per kind, resolved at build.
    let transitions = all
        .keys()
        .filter(|k| k.contains("transitions_total"))
        .count();
    assert_eq!(transitions, 36);
    let kinds = all.keys().filter(|k| k.contains("calls_total")).count();
    assert_eq!(kinds, 6);
}

#[tokio::test]
async fn forced_states_move_the_state_gauge() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let handle = CircuitBreakerLayer::builder()
        .name("ops")
        .metrics()
        .build()
        .unwrap()
        .handle();
    handle.force_open();
    handle.disable();
    let all = series(&snapshotter);
    let mut want: BTreeMap<String, V> = state_gauges("ops", "disabled").into_iter().collect();
    want.extend(expect([
        (
            "buttress_circuit_breaker_failure_rate{name=ops}",
            V::Gauge(-1.0),
        ),
        (
            "buttress_circuit_breaker_slow_call_rate{name=ops}",
            V::Gauge(-1.0),
        ),
        (
            "buttress_circuit_breaker_transitions_total{from=closed,name=ops,to=forced_open}",
            V::Counter(1),
        ),
        (
            "buttress_circuit_breaker_transitions_total{from=forced_open,name=ops,to=disabled}",
            V::Counter(1),
        ),
    ]));
    assert_eq!(nonzero(&all, "buttress_circuit_breaker_"), want);
}

#[tokio::test]
async fn a_keyed_breaker_is_labelled_by_its_name_only() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = KeyedCircuitBreakerLayer::builder(FnKey::new(|r: &u32| Some(*r)))
        .name("hosts")
        .metrics()
        .build::<u32>()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|r: u32| async move {
            if r.is_multiple_of(2) {
                Ok(())
            } else {
                Err("down")
            }
        });
    for key in [1, 2, 3] {
        let _ = svc.clone().oneshot(key).await;
    }
    let all = series(&snapshotter);
    assert_eq!(
        nonzero(&all, "buttress_circuit_breaker_"),
        expect([
            (
                "buttress_circuit_breaker_calls_total{kind=failed,name=hosts}",
                V::Counter(2)
            ),
            (
                "buttress_circuit_breaker_calls_total{kind=successful,name=hosts}",
                V::Counter(1)
            ),
        ])
    );
    assert!(all
        .keys()
        .all(|k| !k.contains("_state{") && !k.contains("_rate{")));
}

#[tokio::test]
async fn a_registry_with_metrics_switches_every_member_on() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let registry = Registry::new().with_metrics();
    let _on = CircuitBreakerLayer::builder()
        .name("on")
        .registry(&registry)
        .build()
        .unwrap();
    let _off = CircuitBreakerLayer::builder()
        .name("off")
        .registry(&Registry::new())
        .build()
        .unwrap();
    registry
        .get::<buttress_circuit_breaker::CircuitBreakerHandle>("on")
        .unwrap()
        .force_open();
    let all = series(&snapshotter);
    assert_eq!(
        all["buttress_circuit_breaker_state{name=on,state=forced_open}"],
        V::Gauge(1.0)
    );
    assert!(all.keys().all(|k| !k.contains("name=off")), "{all:?}");
}

fn rates(all: &BTreeMap<String, V>, name: &str) -> (V, V) {
    (
        all[&format!("buttress_circuit_breaker_failure_rate{{name={name}}}")].clone(),
        all[&format!("buttress_circuit_breaker_slow_call_rate{{name={name}}}")].clone(),
    )
}

#[tokio::test(start_paused = true)]
async fn the_rate_gauges_follow_every_recorded_call() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let layer = CircuitBreakerLayer::builder()
        .name("live")
        .window_size(10)
        .minimum_calls(4)
        .failure_rate_threshold(60.0)
        .slow_call_duration(Duration::from_secs(1))
        .metrics()
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|(ok, ms): (bool, u64)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if ok {
                Ok(())
            } else {
                Err("down")
            }
        });

    // Below the minimum: unknown, whatever was recorded.
    for call in [(false, 0), (true, 2000), (true, 0)] {
        let _ = svc.clone().oneshot(call).await;
        assert_eq!(
            rates(&series(&snapshotter), "live"),
            (V::Gauge(-1.0), V::Gauge(-1.0))
        );
    }
    // From the minimum on, the window's rates after each call, successes
    // included (a success lowers the failure rate).
    let expected = [
        ((false, 0), 50.0, 25.0),
        ((true, 0), 40.0, 20.0),
        ((true, 1500), 100.0 / 3.0, 100.0 / 3.0),
    ];
    for (call, failure, slow) in expected {
        let _ = svc.clone().oneshot(call).await;
        let (f, s) = rates(&series(&snapshotter), "live");
        let snapshot = handle.snapshot();
        assert_eq!(f, V::Gauge(failure));
        assert_eq!(s, V::Gauge(slow));
        assert_eq!(snapshot.failure_rate, Some(failure));
        assert_eq!(snapshot.slow_call_rate, Some(slow));
    }
    // A reset starts a new window: unknown again.
    handle.reset();
    assert_eq!(
        rates(&series(&snapshotter), "live"),
        (V::Gauge(-1.0), V::Gauge(-1.0))
    );
}

/// Calls recorded from many tasks on a multi-thread runtime: once they
/// have all completed, the gauges hold the window's rates exactly (each is
/// written under the breaker's lock, so the last write is the last call's).
#[test]
fn the_rate_gauges_are_exact_after_concurrent_calls() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let layer = CircuitBreakerLayer::builder()
        .name("many")
        .window_size(1000)
        .minimum_calls(10)
        .failure_rate_threshold(100.0)
        .metrics()
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|i: u64| async move {
            tokio::task::yield_now().await;
            if i.is_multiple_of(3) {
                Err("down")
            } else {
                Ok(())
            }
        });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    for i in 0..300u64 {
                        let _ = svc.clone().oneshot(t * 300 + i).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.buffered_calls, 1000);
    let (f, _) = rates(&series(&snapshotter), "many");
    assert_eq!(f, V::Gauge(snapshot.failure_rate.unwrap()));
}
