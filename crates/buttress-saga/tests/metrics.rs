//! The metrics bridge: saga and step series, names, labels and values.

use std::time::Duration;

use buttress_saga::{MemoryLog, RetryPolicy, Saga, Step, StepRequest};
use buttress_test_support::series::{expect, nonzero, series, V};
use metrics_util::debugging::DebuggingRecorder;
use tower::{service_fn, ServiceExt};

fn saga() -> Saga<u32> {
    Saga::builder("order", 1)
        .log(MemoryLog::new())
        .metrics()
        .retry(RetryPolicy::backoff(2, Duration::from_millis(100), 1.0))
        .step(
            Step::new(
                "reserve",
                service_fn(|r: StepRequest<u32>| async move { Ok::<_, String>(r.context) }),
            )
            .compensate(service_fn(|_r: StepRequest<u32>| async {
                Ok::<_, String>(())
            })),
        )
        .step(
            Step::new(
                "charge",
                service_fn(|r: StepRequest<u32>| async move {
                    if r.context == 0 {
                        Err("declined".to_owned())
                    } else {
                        Ok(r.context)
                    }
                }),
            )
            .compensate(service_fn(|_r: StepRequest<u32>| async {
                Ok::<_, String>(())
            })),
        )
        .build()
        .unwrap()
}

#[test]
fn sagas_and_steps_are_counted_and_timed() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let saga = metrics::with_local_recorder(&recorder, saga);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        saga.clone().oneshot(1).await.unwrap();
        saga.clone().oneshot(0).await.unwrap_err();
    });
    let all = series(&snapshotter);
    assert_eq!(
        nonzero(&all, "buttress_saga_sagas_total"),
        expect([
            (
                "buttress_saga_sagas_total{name=order,outcome=compensated}",
                V::Counter(1)
            ),
            (
                "buttress_saga_sagas_total{name=order,outcome=completed}",
                V::Counter(1)
            ),
            (
                "buttress_saga_sagas_total{name=order,outcome=started}",
                V::Counter(2)
            ),
        ])
    );
    assert_eq!(
        nonzero(&all, "buttress_saga_steps_total"),
        expect([
            ("buttress_saga_steps_total{kind=action,name=order,outcome=failed,step=charge}", V::Counter(1)),
            ("buttress_saga_steps_total{kind=action,name=order,outcome=succeeded,step=charge}", V::Counter(1)),
            ("buttress_saga_steps_total{kind=action,name=order,outcome=succeeded,step=reserve}", V::Counter(2)),
            ("buttress_saga_steps_total{kind=compensation,name=order,outcome=succeeded,step=reserve}", V::Counter(1)),
        ])
    );
    assert_eq!(
        all["buttress_saga_step_attempts{kind=action,name=order,step=charge}"],
        V::Histogram(vec![1.0, 2.0])
    );
    // The failed charge: two tries 100 ms apart on the paused clock.
    assert_eq!(
        all["buttress_saga_step_duration_seconds{kind=action,name=order,step=charge}"],
        V::Histogram(vec![0.0, 0.1])
    );
}
