//! The metrics bridge: `buttress_fallback_calls_total{name,kind}` counts
//! the calls answered by the primary, by the fallback, and failed in both.

use buttress_core::{BoxError, Registry};
use buttress_fallback::{Failure, FallbackLayer};
use buttress_test_support::series::{expect, nonzero, series, V};
use metrics_util::debugging::DebuggingRecorder;
use tower::{service_fn, Layer, ServiceExt};

fn run(f: impl FnOnce()) -> std::collections::BTreeMap<String, V> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, f);
    nonzero(&series(&snapshotter), "buttress_fallback")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn calls_are_counted_by_kind() {
    let all = run(|| {
        let layer = FallbackLayer::from_error(|f: &Failure<u64>| match f.error() {
            Some(e) if e.to_string() == "twice" => Err("no fallback either".into()),
            _ => Ok(0),
        })
        .name("quotes")
        .metrics()
        .build()
        .unwrap();
        let svc = layer.layer(service_fn(|x: u64| async move {
            match x {
                0 => Err::<u64, BoxError>("down".into()),
                1 => Err("twice".into()),
                x => Ok(x),
            }
        }));
        block_on(async {
            for x in [2, 3, 4, 0, 0, 1] {
                let _ = svc.clone().oneshot(x).await;
            }
        });
    });
    assert_eq!(
        all,
        expect([
            (
                "buttress_fallback_calls_total{kind=fallback_failed,name=quotes}",
                V::Counter(1)
            ),
            (
                "buttress_fallback_calls_total{kind=fallback_used,name=quotes}",
                V::Counter(2)
            ),
            (
                "buttress_fallback_calls_total{kind=primary,name=quotes}",
                V::Counter(3)
            ),
        ])
    );
}

#[test]
fn a_metrics_registry_switches_the_bridge_on() {
    let all = run(|| {
        let registry = Registry::new().with_metrics();
        let layer = FallbackLayer::value(1u64)
            .name("reg")
            .registry(&registry)
            .build()
            .unwrap();
        let svc = layer.layer(service_fn(|_: ()| async {
            Err::<u64, BoxError>("down".into())
        }));
        assert_eq!(block_on(svc.oneshot(())).unwrap(), 1);
    });
    assert_eq!(
        all,
        expect([(
            "buttress_fallback_calls_total{kind=fallback_used,name=reg}",
            V::Counter(1)
        )])
    );
}

#[test]
fn no_bridge_without_asking() {
    let all = run(|| {
        let layer = FallbackLayer::value(1u64).name("quiet").build().unwrap();
        let svc = layer.layer(service_fn(|_: ()| async {
            Err::<u64, BoxError>("down".into())
        }));
        assert_eq!(block_on(svc.oneshot(())).unwrap(), 1);
    });
    assert!(all.is_empty(), "{all:?}");
}
